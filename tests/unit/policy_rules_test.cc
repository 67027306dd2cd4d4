// Policy rules: first match wins, identity / host / RPC / path conditions, content conditions on
// decoded messages, and the loader's checks.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "config/policy.h"
#include "daemon/policy_observer.h"
#include "policy/rules.h"
#include "proxy/message_decoder.h"

using namespace cordon;
using policy::Action;

namespace {

std::shared_ptr<const policy::Rules> rules(const std::string &yaml)
{
	auto p = load_policy_text(yaml, "policy.yaml");
	EXPECT_TRUE(p) << p.error().message();
	if (!p)
		return nullptr;
	auto r = policy::Rules::compile(*p);
	EXPECT_TRUE(r) << r.error().message();
	return r ? *r : nullptr;
}

proxy::RequestInfo request(const std::string &host, const std::string &path)
{
	proxy::RequestInfo r;
	r.host = host;
	r.path = path;
	r.rpc = rpc::parse_rpc_path(path);
	return r;
}

const policy::Caller kJob{"/system.slice/runner.service/job-7", "runner", 1001, "/usr/bin/node"};
const policy::Caller kOther{"/user.slice/user-1000.slice/session-2.scope", "alice", 1000, "/usr/bin/curl"};

const std::string kPolicy = R"(
rules:
  - name: no-agents-for-jobs
    match:
      cgroups: ["/system.slice/runner.service/*"]
      rpcs: ["agent.v1.AgentService/*"]
    action: block
    message: CI jobs may not run agents
  - name: no-rm-rf
    match:
      content:
        - field: exec_server_message.shell_args.command
          regex: 'rm\s+-rf\s+/'
    action: block
  - name: chat-from-node
    match:
      exes: ["*/node"]
      hosts: ["*.cursor.sh"]
    action: allow
  - name: alice-rest
    match:
      users: [alice]
      paths: ["/v0/agents*"]
    action: block
  - name: numeric-uid
    match:
      users: ["1000"]
      rpcs: ["aiserver.v1.ChatService/*"]
    action: block
default_action: allow
)";

} // namespace

TEST(PolicyRules, FirstMatchWinsWithTheDefaultLast)
{
	auto r = rules(kPolicy);
	ASSERT_TRUE(r);
	auto agent = r->plan(kJob, request("api2.cursor.sh", "/agent.v1.AgentService/Run"));
	EXPECT_EQ(agent.decision.rule, "no-agents-for-jobs");
	EXPECT_EQ(agent.decision.action, Action::Block);
	EXPECT_EQ(agent.decision.message, "CI jobs may not run agents");

	// The same RPC from outside the runner's cgroup: the agent rule does not match; nor does any
	// later request rule (curl, and no path match), so the default decides.
	auto outside = r->plan(kOther, request("api2.cursor.sh", "/agent.v1.AgentService/Run"));
	EXPECT_EQ(outside.decision.rule, "default");
	EXPECT_EQ(outside.decision.action, Action::Allow);
}

TEST(PolicyRules, IdentityHostRpcAndPathConditions)
{
	auto r = rules(kPolicy);
	ASSERT_TRUE(r);
	EXPECT_EQ(r->plan(kJob, request("api2.cursor.sh", "/aiserver.v1.ChatService/StreamUnifiedChatWithTools"))
	              .decision.rule,
	          "chat-from-node");
	EXPECT_EQ(r->plan(kJob, request("cursor.com", "/aiserver.v1.ChatService/X")).decision.rule, "default")
	    << "host pattern *.cursor.sh does not cover cursor.com";
	EXPECT_EQ(r->plan(kOther, request("api.cursor.com", "/v0/agents/abc?x=1")).decision.rule, "alice-rest")
	    << "paths match without the query";
	EXPECT_EQ(r->plan(kOther, request("api2.cursor.sh", "/aiserver.v1.ChatService/X")).decision.rule,
	          "numeric-uid");
	policy::Caller unknown_exe = kJob;
	unknown_exe.exe.clear();
	EXPECT_EQ(r->plan(unknown_exe, request("api2.cursor.sh", "/aiserver.v1.ChatService/X")).decision.rule,
	          "default")
	    << "an unknown executable matches no exe condition";
}

TEST(PolicyRules, ContentRulesBeforeTheDecidingRuleJudgeEachMessage)
{
	auto r = rules(kPolicy);
	ASSERT_TRUE(r);
	auto plan = r->plan(kJob, request("api2.cursor.sh", "/aiserver.v1.ChatService/StreamUnifiedChatWithTools"));
	ASSERT_EQ(plan.decision.rule, "chat-from-node");
	ASSERT_EQ(plan.content_rules.size(), 1u);
	auto rm = nlohmann::json::parse(
	    R"({"exec_server_message":{"shell_args":{"command":"rm -rf / --no-preserve-root"}}})");
	auto d = r->decide_message(plan, proxy::Direction::Response, rm);
	ASSERT_TRUE(d);
	EXPECT_EQ(d->rule, "no-rm-rf");
	EXPECT_EQ(d->action, Action::Block);
	auto ls = nlohmann::json::parse(R"({"exec_server_message":{"shell_args":{"command":"ls -la"}}})");
	EXPECT_FALSE(r->decide_message(plan, proxy::Direction::Response, ls));
	auto elsewhere = nlohmann::json::parse(R"({"text":"rm -rf / is dangerous"})");
	EXPECT_FALSE(r->decide_message(plan, proxy::Direction::Response, elsewhere)) << "another field";

	// The agent RPC is decided by a rule before the content rule: it never applies there.
	auto blocked = r->plan(kJob, request("api2.cursor.sh", "/agent.v1.AgentService/Run"));
	EXPECT_TRUE(blocked.content_rules.empty());
}

TEST(PolicyRules, ContentDirectionAndAnyString)
{
	auto r = rules(R"(
rules:
  - name: no-secrets-words-up
    match:
      direction: request
      content: [{regex: "(?i)confidential"}]
    action: block
default_action: allow
)");
	ASSERT_TRUE(r);
	auto plan = r->plan(kJob, request("api2.cursor.sh", "/aiserver.v1.ChatService/X"));
	auto msg = nlohmann::json::parse(R"({"conversation":[{"text":"hi"},{"text":"this is CONFIDENTIAL"}]})");
	EXPECT_TRUE(r->decide_message(plan, proxy::Direction::Request, msg));
	EXPECT_FALSE(r->decide_message(plan, proxy::Direction::Response, msg)) << "requests only";
}

TEST(PolicyRules, StringsAtAFieldPath)
{
	auto m = nlohmann::json::parse(R"({"a":{"b":[{"c":"x"},{"c":"y"},{"d":"z"}],"n":3},"s":"top"})");
	EXPECT_EQ(policy::strings_at(m, "a.b.c"), (std::vector<std::string>{"x", "y"}));
	EXPECT_EQ(policy::strings_at(m, "a.n"), (std::vector<std::string>{"3"}));
	EXPECT_TRUE(policy::strings_at(m, "a.missing").empty());
	EXPECT_EQ(policy::strings_at(m, ""), (std::vector<std::string>{"x", "y", "z", "3", "top"}));
}

TEST(PolicyRules, BrokenRulesAreErrorsWithTheirLine)
{
	const auto error_of = [](const std::string &yaml) {
		auto p = load_policy_text(yaml, "policy.yaml");
		return p ? std::string() : p.error().message();
	};
	std::string e =
	    error_of("rules:\n  - name: a\n    action: block\n    match:\n      content: [{regex: '(x'}]\n");
	EXPECT_NE(e.find("policy.yaml:5:"), std::string::npos) << e;
	e = error_of("rules:\n  - name: a\n    action: nuke\n");
	EXPECT_NE(e.find("policy.yaml:3:"), std::string::npos) << e;
	EXPECT_NE(e.find("allow, block"), std::string::npos) << e;
	e = error_of("rules:\n  - name: a\n    action: block\n    match:\n      hostz: [x]\n");
	EXPECT_NE(e.find("policy.yaml:5:"), std::string::npos) << e;
	e = error_of("rules:\n  - name: a\n    action: block\n  - name: a\n    action: allow\n");
	EXPECT_NE(e.find("two rules are named 'a'"), std::string::npos) << e;
	e = error_of("rules:\n  - name: a\n");
	EXPECT_NE(e.find("needs an action"), std::string::npos) << e;
	e = error_of("rules:\n  - name: a\n    action: block\n    match:\n      cgroups: [relative/path]\n");
	EXPECT_NE(e.find("policy.yaml:5:"), std::string::npos) << e;
	e = error_of("rules:\n  - name: a\n    action: block\n    match:\n      users: ['bad user']\n");
	EXPECT_NE(e.find("policy.yaml:5:"), std::string::npos) << e;
}

TEST(PolicyObserver, RefusesByNameAndRemembersWhatDecided)
{
	auto r = rules(R"(
rules:
  - name: no-agents
    match: {rpcs: ["agent.v1.AgentService/*"]}
    action: block
    message: not here
  - name: no-passwords-up
    match:
      direction: request
      content: [{regex: "hunter2"}]
    action: block
default_action: allow
)");
	ASSERT_TRUE(r);
	PolicyObserver observer(r, kJob, nullptr);
	auto agent = request("api2.cursor.sh", "/agent.v1.AgentService/Run");
	agent.number = 1;
	auto v = observer.on_request(agent);
	EXPECT_EQ(v.kind, proxy::Verdict::Kind::Refuse);
	EXPECT_EQ(v.code, "permission_denied");
	EXPECT_EQ(v.reason, "cordon: blocked by policy rule 'no-agents': not here");
	EXPECT_EQ(observer.take(1).rule, "no-agents");
	EXPECT_EQ(observer.take(1).rule, "default") << "taken once";

	auto chat = request("api2.cursor.sh", "/aiserver.v1.ChatService/X");
	chat.number = 2;
	EXPECT_EQ(observer.on_request(chat).kind, proxy::Verdict::Kind::Forward);
	proxy::Message m;
	m.direction = proxy::Direction::Request;
	m.payload = "my password is hunter2"; // no decoder: the raw bytes are the one string
	auto mv = observer.on_message(chat, m);
	EXPECT_EQ(mv.kind, proxy::Verdict::Kind::Refuse);
	EXPECT_EQ(mv.reason, "cordon: blocked by policy rule 'no-passwords-up'");
	m.direction = proxy::Direction::Response;
	EXPECT_EQ(observer.on_message(chat, m).kind, proxy::Verdict::Kind::Forward) << "requests only";
	const auto d = observer.take(2);
	EXPECT_EQ(d.rule, "no-passwords-up");
	EXPECT_EQ(d.action, Action::Block);
}

TEST(PolicyRules, ContentConditionsAcrossFieldsAndRulesKeepFirstMatchOrder)
{
	// Conditions are evaluated as one RE2::Set per field; the decision must still be the first
	// rule in policy order whose every condition some string satisfies.
	auto r = rules(R"(
rules:
  - name: both-fields
    match:
      content:
        - {field: a.cmd, regex: 'rm'}
        - {field: a.dir, regex: '^/$'}
    action: block
  - name: any-string
    match:
      content: [{field: "", regex: 'rm -rf'}]
    action: approve
  - name: same-field-later
    match:
      content: [{field: a.cmd, regex: 'rm'}]
    action: block
default_action: allow
)");
	ASSERT_TRUE(r);
	auto plan = r->plan(kJob, request("api2.cursor.sh", "/agent.v1.AgentService/Run"));
	ASSERT_EQ(plan.content_rules.size(), 3u);
	auto decide = [&](const char *json) {
		auto d = r->decide_message(plan, proxy::Direction::Response, nlohmann::json::parse(json));
		return d ? d->rule : std::string("none");
	};
	EXPECT_EQ(decide(R"({"a": {"cmd": "rm -rf x", "dir": "/"}})"), "both-fields");
	EXPECT_EQ(decide(R"({"a": {"cmd": "rm -rf x", "dir": "/tmp"}})"), "any-string");
	EXPECT_EQ(decide(R"({"a": {"cmd": "rm x", "dir": "/tmp"}})"), "same-field-later");
	EXPECT_EQ(decide(R"({"a": {"cmd": "ls", "dir": "/"}, "b": ["rm -rf y"]})"), "any-string");
	EXPECT_EQ(decide(R"({"a": {"cmd": "ls", "dir": "/"}})"), "none");
}

TEST(PolicyObserver, ACommandBeyondTheDecodersOutputLimitIsStillSeen)
{
	// A message so large its decoded JSON is cut: the part past the cut is searched raw.
	auto r = rules("rules:\n  - name: no-rm\n    match:\n      content: [{field: \"\", regex: 'rm -rf /'}]\n"
	               "    action: block\ndefault_action: allow\n");
	auto decoder = proxy::MessageDecoder::generic_only();
	PolicyObserver observer(r, kJob, decoder.get());
	proxy::RequestInfo req = request("api2.cursor.sh", "/agent.v1.AgentService/Run");
	ASSERT_EQ(observer.on_request(req).kind, proxy::Verdict::Kind::Forward);
	// Field 1: (decoder limit + 1 KiB) of spaces, then the command.
	std::string text(proxy::kDecoderMaxOutput + 1024, ' ');
	text += "rm -rf /";
	std::string payload;
	payload.push_back(0x0a);
	for (size_t n = text.size();; n >>= 7) {
		payload.push_back(static_cast<char>((n & 0x7f) | (n > 0x7f ? 0x80 : 0)));
		if (n <= 0x7f)
			break;
	}
	payload += text;
	proxy::Message m;
	m.direction = proxy::Direction::Response;
	m.payload = payload;
	EXPECT_EQ(observer.on_message(req, m).kind, proxy::Verdict::Kind::Refuse);
}
