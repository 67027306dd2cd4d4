#include "ctl/mask_command.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>
#include <sstream>

#include "config/mask_rules.h"
#include "config/policy.h"
#include "mask/scanner.h"

namespace cordon {

const char *const kMaskUsage =
    R"(usage: cordonctl mask [--config POLICY] [FILE]           FILE (or stdin) masked to stdout
       cordonctl mask [--config POLICY] --list            one rule id per line
       cordonctl mask [--config POLICY] --explain [FILE]  each finding as `rule offset length`, never the secret
Without --config: the built-in rules and the embedded default policy. With it: that policy's
mask section (its own rules, disabled rules, allowlists and replacement), as cordond would use it.
)";

namespace {

bool read_all(const std::string &path, std::istream &in, std::string &data, std::ostream &err)
{
	if (path.empty() || path == "-") {
		data.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
		if (in.bad()) {
			err << "cordonctl: mask: reading stdin failed\n";
			return false;
		}
		return true;
	}
	std::ifstream file(path, std::ios::binary);
	if (!file) {
		err << "cordonctl: mask: cannot open " << path << ": " << std::strerror(errno) << "\n";
		return false;
	}
	std::ostringstream buffer;
	buffer << file.rdbuf();
	if (file.bad()) {
		err << "cordonctl: mask: reading " << path << " failed\n";
		return false;
	}
	data = std::move(buffer).str();
	return true;
}

} // namespace

int run_mask_command(const std::vector<std::string> &args, std::istream &in, std::ostream &out, std::ostream &err)
{
	bool list = false, explain = false;
	std::string path, policy_path;
	for (size_t i = 0; i < args.size(); ++i) {
		const std::string &a = args[i];
		if (a == "--config") {
			if (i + 1 == args.size()) {
				err << "cordonctl: mask: --config needs a file\n" << kMaskUsage;
				return 2;
			}
			policy_path = args[++i];
		} else if (a.rfind("--config=", 0) == 0) {
			policy_path = a.substr(9);
		} else if (a == "--list") {
			list = true;
		} else if (a == "--explain") {
			explain = true;
		} else if (a == "--help" || a == "-h") {
			out << kMaskUsage;
			return 0;
		} else if (a.size() > 1 && a[0] == '-') {
			err << "cordonctl: mask: unknown option '" << a << "'\n" << kMaskUsage;
			return 2;
		} else if (path.empty()) {
			path = a;
		} else {
			err << "cordonctl: mask: one FILE at most\n" << kMaskUsage;
			return 2;
		}
	}
	if (list && (explain || !path.empty())) {
		err << "cordonctl: mask: --list takes nothing else\n" << kMaskUsage;
		return 2;
	}
	auto policy = policy_path.empty() ? Result<config::Policy>(default_policy()) : load_policy_file(policy_path);
	if (!policy) {
		err << "cordonctl: mask: " << policy.error().message() << "\n";
		return 1;
	}
	if (list) {
		auto specs = mask_rules_from_policy(policy->mask());
		if (!specs) {
			err << "cordonctl: mask: " << specs.error().message() << "\n";
			return 1;
		}
		for (const auto &rule : *specs)
			out << rule.id << "\n";
		return 0;
	}

	// Read first: a missing file is reported before a second of compiling.
	std::string data;
	if (!read_all(path, in, data, err))
		return 1;
	auto rules = compile_mask_policy(policy->mask());
	if (!rules) {
		err << "cordonctl: mask: " << rules.error().message() << "\n";
		return 1;
	}
	mask::Scanner scanner(*rules);
	if (!scanner.ok()) {
		err << "cordonctl: mask: " << scanner.error().message() << "\n";
		return 1;
	}
	std::vector<mask::Finding> findings;
	const std::string masked = scanner.mask(data, mask::Direction::Both, &findings);
	if (explain) {
		for (const auto &f : findings)
			out << f.rule << " " << f.offset << " " << f.length << "\n";
	} else {
		out << masked;
	}
	out.flush();
	return out ? 0 : 1;
}

} // namespace cordon
