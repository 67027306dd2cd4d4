// libFuzzer target for the policy loader (config/policy.h): every input is YAML text, loaded as the
// policy file (load_policy_text) and applied as a command-line override on top of the default
// (apply_policy_yaml). Besides crashes, leaks, hangs and undefined behaviour under the sanitizers
// (and any exception escaping: yaml-cpp's, protobuf's, std::stoul's), it checks:
// - a rejected file is an Error that names the source; a rejected override leaves the policy it was
//   applied to exactly as it was (nothing half-applied);
// - what loads prints (policy_to_yaml: --check-config, and the digest in each recording's policy
//   version) as YAML that loads back to the same policy, and the same policy, copied or printed
//   and loaded again, prints the same text.
//
// The seed corpus (tests/fuzz/corpus/policy) holds the embedded default policy, the README's
// examples, one per section, and cordon-runner-setup's enforce block (docs/runners.md).
#include "config/policy.h"

#include <google/protobuf/util/message_differencer.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

using namespace cordon;

namespace {

constexpr const char *kSource = "fuzz.yaml";

void check(bool ok, const char *what, std::string_view detail = {})
{
	if (!ok) {
		std::fprintf(stderr, "invariant violated: %s\n%.4000s\n", what, std::string(detail).c_str());
		std::abort();
	}
}

bool same(const config::Policy &a, const config::Policy &b, std::string *diff = nullptr)
{
	google::protobuf::util::MessageDifferencer d;
	if (diff)
		d.ReportDifferencesToString(diff);
	return d.Compare(a, b);
}

const config::Policy &defaults()
{
	static const config::Policy p = default_policy();
	return p;
}

} // namespace

// Undefined behaviour is a finding, not a warning: FUZZ_FLAGS lets UBSan recover and go on.
extern "C" const char *__ubsan_default_options()
{
	return "halt_on_error=1:print_stacktrace=1";
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	// Policy files are small; yaml-cpp's cost grows with nesting, which a larger input only
	// repeats.
	if (size > 64 * 1024)
		return 0;
	const std::string yaml(reinterpret_cast<const char *>(data), size);

	// As the policy file.
	auto loaded = load_policy_text(yaml, kSource);
	if (!loaded) {
		check(loaded.error().message().find(kSource) != std::string::npos, "errors name the source",
		      loaded.error().message());
	} else {
		const std::string printed = policy_to_yaml(*loaded);
		config::Policy copy = *loaded;
		check(policy_to_yaml(copy) == printed, "the same policy prints the same text", printed);
		auto again = load_policy_text(printed, "printed");
		check(again.ok(), "the printed effective policy loads",
		      (again ? std::string() : again.error().message()) + "\n---\n" + printed);
		std::string diff;
		check(same(*loaded, *again, &diff), "the printed effective policy is the same policy",
		      diff + "\n---\n" + printed);
		check(policy_to_yaml(*again) == printed, "printing is a fixed point", printed);
	}

	// As a command-line override on top of the default: all or nothing.
	config::Policy policy = defaults();
	Status applied = apply_policy_yaml(policy, yaml, kSource);
	if (!applied)
		check(same(policy, defaults()), "a rejected override changes nothing", applied.error().message());
	else if (loaded)
		// The file and the override apply the same rules to the same default.
		check(same(policy, *loaded), "override and file agree", yaml);
	return 0;
}
