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
