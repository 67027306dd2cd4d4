#include <gtest/gtest.h>

#include "config/policy.h"

using namespace cordon;

namespace {
std::string error_of(const std::string &yaml)
{
	auto p = load_policy_text(yaml, "policy.yaml");
	return p ? "" : p.error().message();
}
} // namespace

TEST(Policy, EmbeddedDefaultIsValidAndMatchesTheProduct)
{
	auto p = load_policy_text("", "<default>");
	ASSERT_TRUE(p) << p.error().message();
	std::vector<std::string> hosts(p->capture().hosts().begin(), p->capture().hosts().end());
	for (const char *h : {"*.cursor.sh", "*.cursor-cdn.com", "*.cursorapi.com", "cursor.com", "*.cursor.com"})
		EXPECT_NE(std::find(hosts.begin(), hosts.end(), h), hosts.end()) << h;
	EXPECT_EQ(std::vector<uint32_t>(p->capture().ports().begin(), p->capture().ports().end()),
	          (std::vector<uint32_t>{443, 80}));
	EXPECT_EQ(p->enforce().cgroups(0), "/");
	EXPECT_EQ(p->daemon().failure_mode(), config::CLOSED);
	EXPECT_EQ(p->daemon().upstream_mark(), 0xc0d0u);
	EXPECT_EQ(p->daemon().pin_dir(), "/sys/fs/bpf/cordon");
	EXPECT_EQ(p->daemon().control_socket(), "/run/cordon/control.sock");
}

TEST(Policy, FileReplacesWhatItNamesAndKeepsTheRest)
{
	auto p = load_policy_text("capture:\n  ports: [8443]\n  cidrs: [\"10.9.0.0/16\"]\n", "policy.yaml");
	ASSERT_TRUE(p) << p.error().message();
	ASSERT_EQ(p->capture().ports_size(), 1);
	EXPECT_EQ(p->capture().ports(0), 8443u);
	EXPECT_EQ(p->capture().cidrs(0), "10.9.0.0/16");
	EXPECT_GT(p->capture().hosts_size(), 5); // untouched default
	EXPECT_EQ(p->daemon().listen_port(), 15443u);
}

TEST(Policy, UnknownKeyNamesFileLineAndTheChoices)
{
	std::string e = error_of("capture:\n  ports: [443]\n  hostz: [a.b]\n");
	EXPECT_NE(e.find("policy.yaml:3:3"), std::string::npos) << e;
	EXPECT_NE(e.find("unknown key 'hostz'"), std::string::npos) << e;
	EXPECT_NE(e.find("hosts"), std::string::npos) << e;
}

TEST(Policy, UnknownTopLevelSection)
{
	std::string e = error_of("capture: {}\nrulez: []\n");
	EXPECT_NE(e.find("policy.yaml:2:1"), std::string::npos) << e;
}

TEST(Policy, BadValuesPointAtTheirLine)
{
	std::string e = error_of("capture:\n  cidrs:\n    - 10.0.0.0/8\n    - 10.1.2.3/8\n");
	EXPECT_NE(e.find("policy.yaml:4:7"), std::string::npos) << e;
	EXPECT_NE(e.find("host bits"), std::string::npos) << e;

	e = error_of("capture:\n  ports: [443, 70000]\n");
	EXPECT_NE(e.find("policy.yaml:2:16"), std::string::npos) << e;
	e = error_of("capture:\n  ports: [four]\n");
	EXPECT_NE(e.find("non-negative integer"), std::string::npos) << e;
	e = error_of("capture:\n  hosts: [\"api.*.cursor.sh\"]\n");
	EXPECT_NE(e.find("policy.yaml:2:11"), std::string::npos) << e;
	e = error_of("enforce:\n  cgroups: [\"relative/path\"]\n");
	EXPECT_NE(e.find("must start with '/'"), std::string::npos) << e;
	e = error_of("daemon:\n  failure_mode: sideways\n");
	EXPECT_NE(e.find("closed, open"), std::string::npos) << e;
	e = error_of("daemon:\n  buffer_count: 1000\n");
	EXPECT_NE(e.find("power of two"), std::string::npos) << e;
	e = error_of("daemon:\n  upstream_mark: 0\n");
	EXPECT_NE(e.find("must not be 0"), std::string::npos) << e;
	e = error_of("daemon:\n  listen_ipv4: 10.0.0.1\n");
	EXPECT_NE(e.find("loopback"), std::string::npos) << e;
}

TEST(Policy, TypeMismatches)
{
	EXPECT_NE(error_of("capture: [1, 2]\n").find("expected a mapping"), std::string::npos);
	EXPECT_NE(error_of("capture:\n  ports: 443\n").find("must be a list"), std::string::npos);
	EXPECT_NE(error_of("daemon:\n  listen_port: [1]\n").find("single value"), std::string::npos);
}

TEST(Policy, DuplicateKeysAreRejected)
{
	std::string e = error_of("daemon:\n  listen_port: 1000\n  listen_port: 2000\n");
	EXPECT_NE(e.find("duplicate key"), std::string::npos) << e;
}

TEST(Policy, SyntaxErrorsHaveALine)
{
	std::string e = error_of("capture:\n  ports: [443\n");
	EXPECT_NE(e.find("policy.yaml:"), std::string::npos) << e;
}

TEST(Policy, WholePolicyChecks)
{
	EXPECT_NE(error_of("enforce:\n  cgroups: []\n").find("nothing would be enforced"), std::string::npos);
	EXPECT_NE(error_of("capture:\n  refresh_min_seconds: 100\n  refresh_max_seconds: 10\n").find("exceeds"),
	          std::string::npos);
}

TEST(Policy, ValuesAreNormalized)
{
	auto p = load_policy_text("capture:\n  hosts: [\"API2.Cursor.SH\"]\nenforce:\n  cgroups: [\"//a//b/\"]\n"
	                          "daemon:\n  upstream_mark: 0x10\n  failure_mode: open\n",
	                          "policy.yaml");
	ASSERT_TRUE(p) << p.error().message();
	EXPECT_EQ(p->capture().hosts(0), "api2.cursor.sh");
	EXPECT_EQ(p->enforce().cgroups(0), "/a/b");
	EXPECT_EQ(p->daemon().upstream_mark(), 16u);
	EXPECT_EQ(p->daemon().failure_mode(), config::OPEN);
}

TEST(Policy, OverlayValidatesAndLeavesPolicyUntouchedOnError)
{
	config::Policy p = default_policy();
	Status st = apply_policy_yaml(p, "daemon:\n  listen_port: 0\n", "command line");
	ASSERT_FALSE(st);
	EXPECT_NE(st.error().message().find("command line:2"), std::string::npos);
	EXPECT_EQ(p.daemon().listen_port(), 15443u);
	ASSERT_TRUE(apply_policy_yaml(p, "daemon:\n  listen_port: 16000\n", "command line"));
	EXPECT_EQ(p.daemon().listen_port(), 16000u);
}

TEST(Policy, EffectivePolicyPrintsAsLoadableYaml)
{
	config::Policy p = default_policy();
	std::string yaml = policy_to_yaml(p);
	auto again = load_policy_text(yaml, "printed");
	ASSERT_TRUE(again) << again.error().message() << "\n" << yaml;
	EXPECT_EQ(again->SerializeAsString(), p.SerializeAsString());
}

// Found by tests/fuzz/policy.cc: rules printed an empty inject section, and an inject rule an empty
// scheme, which the loader refuses; and a claims map printed in the order of whichever copy of the
// policy was printed.
TEST(Policy, EffectivePolicyWithRulesAndClaimsPrintsTheSameLoadableYaml)
{
	auto p = load_policy_text(
	    "identity:\n  issuers:\n    - {name: gh, issuer: \"https://i.example\", audiences: [cordon]}\n"
	    "rules:\n  - name: r\n    match: {issuers: [gh], claims: {z: \"1\", a: \"2\", m: \"3\", "
	    "b: \"4\"}}\n    action: allow\n"
	    "  - name: i\n    match: {paths: [\"/v1/*\"]}\n    action: inject\n"
	    "    inject: {credential_file: /etc/cordon/key}\n",
	    "policy.yaml");
	ASSERT_TRUE(p) << p.error().message();
	const std::string yaml = policy_to_yaml(*p);
	for (int i = 0; i < 8; i++) {
		config::Policy copy = *p;
		EXPECT_EQ(policy_to_yaml(copy), yaml);
	}
	EXPECT_NE(yaml.find(R"({"a": "2", "b": "4", "m": "3", "z": "1"})"), std::string::npos) << yaml;
	EXPECT_EQ(yaml.find("inject:"), yaml.rfind("inject:")) << yaml; // only rule i's
	EXPECT_EQ(yaml.find("scheme"), std::string::npos) << yaml;
	auto again = load_policy_text(yaml, "printed");
	ASSERT_TRUE(again) << again.error().message() << "\n" << yaml;
	EXPECT_EQ(policy_to_yaml(*again), yaml);
}

TEST(Policy, StringsThatAreNotUtf8AreRefused)
{
	std::string e = error_of("enforce:\n  cgroups: [\"/job-\xff\"]\n");
	EXPECT_NE(e.find("policy.yaml:2:13: 'cgroups' is not valid UTF-8"), std::string::npos) << e;
	EXPECT_EQ(error_of("enforce:\n  cgroups: [\"/job-\xc3\xa9\"]\n"), "");
}

TEST(Policy, ASecondYamlDocumentIsRefusedNotIgnored)
{
	std::string e = error_of("capture:\n  ports: [443]\n---\nenforce:\n  cgroups: [\"/x\"]\n");
	EXPECT_NE(e.find("2 YAML documents"), std::string::npos) << e;
}

TEST(Policy, APathBothEnforcedAndExemptIsRefused)
{
	std::string e = error_of("enforce:\n  cgroups: [\"/\"]\n  exempt_cgroups: [\"/\"]\n");
	EXPECT_NE(e.find("both enforced and exempt"), std::string::npos) << e;
	EXPECT_EQ(error_of("enforce:\n  cgroups: [\"/\"]\n  exempt_cgroups: [\"/ok\"]\n"), "");
}

TEST(Policy, RetainIsBounded)
{
	EXPECT_NE(error_of("capture:\n  retain_seconds: 0\n").find("out of range"), std::string::npos);
}

TEST(Policy, DefaultMasksWithTheBuiltInRulesAndBlocksWhatCannotBeInspected)
{
	auto p = load_policy_text("", "<default>");
	ASSERT_TRUE(p) << p.error().message();
	EXPECT_TRUE(p->mask().enabled());
	EXPECT_EQ(p->mask().replacement(), "[MASKED:{rule}]");
	EXPECT_EQ(p->mask().unscannable(), config::BLOCK);
	EXPECT_EQ(p->mask().hold_ms(), 200u);
	std::vector<std::string> exempt(p->mask().request_headers_exempt().begin(),
	                                p->mask().request_headers_exempt().end());
	EXPECT_NE(std::find(exempt.begin(), exempt.end(), "authorization"), exempt.end());
}

TEST(Policy, MaskSectionLoads)
{
	auto p = load_policy_text(R"(mask:
  disable: [generic-password]
  allowlist: ["^AKIA.*EXAMPLE$"]
  unscannable: pass
  hold_ms: 50
  rules:
    - id: build-ticket
      regex: 'TICKET-([0-9]{6})'
      secret_group: 1
      keywords: [ticket]
      min_entropy: 2.5
      direction: request
)",
	                          "policy.yaml");
	ASSERT_TRUE(p) << p.error().message();
	ASSERT_EQ(p->mask().rules_size(), 1);
	EXPECT_EQ(p->mask().rules(0).secret_group(), 1u);
	EXPECT_DOUBLE_EQ(p->mask().rules(0).min_entropy(), 2.5);
	EXPECT_EQ(p->mask().rules(0).direction(), config::REQUEST);
	EXPECT_EQ(p->mask().unscannable(), config::PASS);
}

TEST(Policy, MaskErrorsNameTheirLine)
{
	// A regex neither engine accepts, at its own line.
	std::string e = error_of("mask:\n  rules:\n    - id: bad\n      regex: '(open'\n");
	EXPECT_NE(e.find("policy.yaml:4:"), std::string::npos) << e;
	// Backreferences are not in vectorscan's subset.
	e = error_of("mask:\n  rules:\n    - id: backref\n      regex: '(a)\\1'\n");
	EXPECT_NE(e.find("policy.yaml:4:"), std::string::npos) << e;
	e = error_of("mask:\n  disable: [no-such-rule]\n");
	EXPECT_NE(e.find("policy.yaml:2:"), std::string::npos) << e;
	EXPECT_NE(e.find("no-such-rule"), std::string::npos) << e;
	e = error_of("mask:\n  hold_ms: 0\n");
	EXPECT_NE(e.find("policy.yaml:2:"), std::string::npos) << e;
	e = error_of("mask:\n  allowlist: ['(x']\n");
	EXPECT_NE(e.find("policy.yaml:2:"), std::string::npos) << e;
	e = error_of("mask:\n  rules:\n    - id: Bad_Id\n      regex: 'x{3}'\n");
	EXPECT_NE(e.find("policy.yaml:3:"), std::string::npos) << e;
}

TEST(Policy, MaskRulesAsAWholeAreChecked)
{
	// An id the built-in rules already use.
	std::string e = error_of("mask:\n  rules:\n    - id: github-pat\n      regex: 'gh[0-9]{8}'\n");
	EXPECT_NE(e.find("'github-pat' is taken"), std::string::npos) << e;
	// ... unless that built-in rule is turned off.
	e = error_of("mask:\n  disable: [github-pat]\n  rules:\n    - id: github-pat\n      regex: 'gh[0-9]{8}'\n");
	EXPECT_EQ(e, "");
	// A capture group the regex does not have.
	e = error_of("mask:\n  rules:\n    - id: ticket\n      regex: 'T-[0-9]{6}'\n      secret_group: 2\n");
	EXPECT_NE(e.find("secret_group"), std::string::npos) << e;
	// Two rules with one id.
	e = error_of("mask:\n  rules:\n    - id: t\n      regex: 'a{3}'\n    - id: t\n      regex: 'b{3}'\n");
	EXPECT_NE(e.find("'t' is taken"), std::string::npos) << e;
}

TEST(Policy, LimitsHaveDefaultsAndBounds)
{
	auto p = load_policy_text("", "<default>");
	ASSERT_TRUE(p) << p.error().message();
	EXPECT_EQ(p->tls().max_header_bytes(), 65536u);
	EXPECT_EQ(p->tls().max_streams_per_connection(), 256u);
	EXPECT_EQ(p->recording().max_queue_mb(), 64u);
	EXPECT_EQ(p->daemon().memory_limit_mb(), 0u);
	EXPECT_EQ(p->daemon().shed_memory_percent(), 90u);
	EXPECT_EQ(p->daemon().max_connections(), 20000u);
	EXPECT_EQ(p->approvals().max_pending(), 1000u);

	EXPECT_NE(error_of("tls:\n  max_header_bytes: 10\n").find("out of range 1024.."), std::string::npos);
	EXPECT_NE(error_of("tls:\n  max_streams_per_connection: 0\n").find("out of range"), std::string::npos);
	EXPECT_NE(error_of("recording:\n  max_queue_mb: 0\n").find("out of range"), std::string::npos);
	std::string early = error_of("daemon:\n  shed_memory_percent: 20\n");
	EXPECT_NE(early.find("sheds too early"), std::string::npos) << early;
	EXPECT_NE(early.find(":2:"), std::string::npos) << early; // file:line
	EXPECT_EQ(error_of("daemon:\n  shed_memory_percent: 0\n  memory_limit_mb: 512\n"), "");
}
