// Held for a person: a Deferred verdict stops a direction of an exchange (BodyPipe and the
// HTTP/1.1 bridge) until it is decided; the approvals registry (answers, grants, timeouts, the
// cap); the policy observer's approve and inject actions; workload enrollment bindings.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "config/policy.h"
#include "daemon/approvals.h"
#include "daemon/journal.h"
#include "daemon/policy_observer.h"
#include "identity/enrollment.h"
#include "policy/rules.h"
#include "proxy/http_bridge.h"

using namespace cordon;
using namespace cordon::proxy;

namespace {

std::span<const uint8_t> bytes(const std::string &s)
{
	return {reinterpret_cast<const uint8_t *>(s.data()), s.size()};
}

struct Switch : Deferred {
	std::optional<Verdict> answer;
	std::optional<Verdict> poll() override { return answer; }
};

// Defers the first message matching `hold_if`; counts what it saw.
struct Holder : ExchangeObserver {
	std::shared_ptr<Switch> gate = std::make_shared<Switch>();
	std::function<bool(const Message &)> hold_if = [](const Message &) { return false; };
	bool held_request = false;
	std::vector<std::string> seen;
	Verdict on_request(const RequestInfo &) override
	{
		return held_request ? Verdict::defer(gate) : Verdict::forward();
	}
	Verdict on_message(const RequestInfo &, const Message &m) override
	{
		seen.push_back(m.payload);
		if (hold_if(m)) {
			hold_if = [](const Message &) { return false; };
			return Verdict::defer(gate);
		}
		return Verdict::forward();
	}
};

struct After : ExchangeObserver {
	std::vector<std::string> seen;
	Verdict on_message(const RequestInfo &, const Message &m) override
	{
		seen.push_back(m.payload);
		return Verdict::forward();
	}
};

RequestInfo stream_request()
{
	RequestInfo r;
	r.rpc = rpc::parse_rpc_path("/agent.v1.AgentService/Run");
	r.protocol = rpc::Protocol::ConnectStream;
	return r;
}

std::string envelopes(std::initializer_list<const char *> payloads)
{
	std::string out;
	for (const char *p : payloads)
		out += rpc::encode_envelope(0, p);
	return out;
}

} // namespace

TEST(Gate, AHeldMessageAndEverythingAfterItWaitInOrderUntilApproved)
{
	Holder holder;
	After after;
	holder.hold_if = [](const Message &m) { return m.payload == "rm -rf /"; };
	RequestInfo r = stream_request();
	BodyPipe pipe(Direction::Response, r, rpc::Protocol::ConnectStream, "", "", {&holder, &after}, Limits{});
	std::string out;
	ASSERT_TRUE(pipe.write(bytes(envelopes({"hello", "rm -rf /", "after"})), out));
	EXPECT_EQ(out, envelopes({"hello"}));
	EXPECT_TRUE(pipe.waiting());
	ASSERT_TRUE(pipe.finish(out)); // the body ended while waiting: nothing more leaves
	EXPECT_EQ(out, envelopes({"hello"}));
	EXPECT_EQ(after.seen, std::vector<std::string>{"hello"}) << "later observers wait too";
	ASSERT_TRUE(pipe.hold_deadline());
	ASSERT_TRUE(pipe.release_held(Clock::now(), out)); // still undecided
	EXPECT_EQ(out, envelopes({"hello"}));

	holder.gate->answer = Verdict::forward();
	ASSERT_TRUE(pipe.release_held(Clock::now(), out));
	EXPECT_FALSE(pipe.waiting());
	EXPECT_EQ(out, envelopes({"hello", "rm -rf /", "after"}));
	EXPECT_EQ(after.seen, (std::vector<std::string>{"hello", "rm -rf /", "after"}));
	EXPECT_FALSE(pipe.refusal());
}

TEST(Gate, ADenialEndsTheExchangeAndDropsWhatWaited)
{
	Holder holder;
	holder.hold_if = [](const Message &m) { return m.payload == "rm -rf /"; };
	RequestInfo r = stream_request();
	BodyPipe pipe(Direction::Response, r, rpc::Protocol::ConnectStream, "", "", {&holder}, Limits{});
	std::string out;
	ASSERT_TRUE(pipe.write(bytes(envelopes({"rm -rf /", "after"})), out));
	holder.gate->answer = Verdict::refuse("permission_denied", "denied by root");
	ASSERT_TRUE(pipe.release_held(Clock::now(), out));
	EXPECT_EQ(out, "");
	ASSERT_TRUE(pipe.refusal());
	EXPECT_EQ(pipe.refusal()->reason, "denied by root");
}

TEST(Gate, WaitingIsBoundedByTheMessageLimit)
{
	Holder holder;
	holder.hold_if = [](const Message &) { return true; };
	RequestInfo r = stream_request();
	Limits limits;
	limits.max_message = 64;
	BodyPipe pipe(Direction::Response, r, rpc::Protocol::ConnectStream, "", "", {&holder}, limits);
	std::string out;
	ASSERT_TRUE(pipe.write(bytes(envelopes({"first"})), out));
	const std::string more = rpc::encode_envelope(0, std::string(40, 'x'));
	Status st = pipe.write(bytes(more + more), out);
	ASSERT_FALSE(st);
	EXPECT_NE(st.error().message().find("waiting for approval"), std::string::npos);
}

namespace {
// An HTTP/1.1 bridge for api.cursor.com whose only observer holds every request.
std::unique_ptr<HttpBridge> held_h1(Holder &holder)
{
	holder.held_request = true;
	BridgeSettings s;
	s.connection = "test";
	s.default_host = "api.cursor.com";
	s.observers.push_back(&holder);
	return make_h1_bridge(std::move(s));
}
} // namespace

TEST(Gate, AHeldHttp1RequestSendsNothingUpstreamUntilApproved)
{
	Holder holder;
	auto bridge = held_h1(holder);
	ASSERT_TRUE(bridge->on_client_data(bytes("POST /v0/agents HTTP/1.1\r\nHost: api.cursor.com\r\n"
	                                         "Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")));
	std::string up;
	ASSERT_TRUE(bridge->produce_upstream_output(up, 1 << 20));
	EXPECT_EQ(up, "") << "nothing, not even the head, before the approval";
	ASSERT_TRUE(bridge->hold_deadline());
	holder.gate->answer = Verdict::forward();
	ASSERT_TRUE(bridge->release_held(Clock::now()));
	ASSERT_TRUE(bridge->produce_upstream_output(up, 1 << 20));
	EXPECT_NE(up.find("POST /v0/agents HTTP/1.1\r\n"), std::string::npos);
	EXPECT_EQ(up.substr(up.size() - 2), "{}");
}

TEST(Gate, ADeniedHttp1RequestGetsTheRefusalAndUpstreamNothing)
{
	Holder holder;
	auto bridge = held_h1(holder);
	ASSERT_TRUE(bridge->on_client_data(bytes("GET /v0/me HTTP/1.1\r\nHost: api.cursor.com\r\n\r\n")));
	holder.gate->answer = Verdict::refuse("permission_denied", "denied by root");
	ASSERT_TRUE(bridge->release_held(Clock::now()));
	std::string up, down;
	ASSERT_TRUE(bridge->produce_upstream_output(up, 1 << 20));
	ASSERT_TRUE(bridge->produce_client_output(down, 1 << 20));
	EXPECT_EQ(up, "");
	EXPECT_EQ(down.rfind("HTTP/1.1 403", 0), 0u) << down;
	EXPECT_NE(down.find("denied by root"), std::string::npos);
}

// --- the registry ---------------------------------------------------------------------------------

namespace {
ApprovalSubject subject(const std::string &identity = "ci:repo:acme/app")
{
	ApprovalSubject s;
	s.identity = identity;
	s.cgroup = "/runner/job";
	s.host = "agentn.api5.cursor.sh";
	s.what = "agent.v1.AgentService/Run";
	s.direction = "response";
	s.rule = "approve-rm";
	s.rule_message = "destructive";
	s.excerpt = "rm -rf /";
	return s;
}
} // namespace

TEST(Approvals, AnsweredOnceThenGone)
{
	Journal journal; // not started: entries fall back to stderr
	Approvals approvals(journal);
	auto a = approvals.open(subject());
	EXPECT_FALSE(a->poll());
	auto listed = approvals.list();
	ASSERT_EQ(listed["pending"].size(), 1u);
	EXPECT_EQ(listed["pending"][0]["excerpt"], "rm -rf /");
	auto r = approvals.answer(a->id(), false, "root", 0);
	ASSERT_TRUE(r) << r.error().message();
	auto v = a->poll();
	ASSERT_TRUE(v);
	EXPECT_EQ(v->kind, Verdict::Kind::Refuse);
	EXPECT_NE(v->reason.find("denied by root"), std::string::npos);
	EXPECT_NE(v->reason.find("approve-rm"), std::string::npos);
	EXPECT_FALSE(approvals.answer(a->id(), true, "root", 0)) << "answered already";
	EXPECT_EQ(approvals.list()["pending"].size(), 0u);
}

TEST(Approvals, AGrantCoversTheSameIdentityRuleAndRpcOnly)
{
	Journal journal;
	Approvals approvals(journal);
	auto first = approvals.open(subject());
	ASSERT_TRUE(approvals.answer(first->id(), true, "root", 600));
	EXPECT_EQ(first->state_name(), "approved");
	auto again = approvals.open(subject());
	EXPECT_EQ(again->state_name(), "granted");
	EXPECT_EQ(again->poll()->kind, Verdict::Kind::Forward);
	auto other = approvals.open(subject("ci:repo:evil/app"));
	EXPECT_EQ(other->state_name(), "pending");
	ASSERT_EQ(approvals.list()["grants"].size(), 1u);
}

TEST(Approvals, AGrantToAnUnenrolledCallerHoldsForItsCgroupOnly)
{
	Journal journal;
	Approvals approvals(journal);
	auto first = approvals.open(subject("unenrolled"));
	ASSERT_TRUE(approvals.answer(first->id(), true, "root", 600));
	EXPECT_EQ(approvals.open(subject("unenrolled"))->state_name(), "granted");
	ApprovalSubject elsewhere = subject("unenrolled");
	elsewhere.cgroup = "/user.slice/user-1000.slice";
	EXPECT_EQ(approvals.open(elsewhere)->state_name(), "pending");
}

TEST(Approvals, UnansweredTimesOutAndTheCapDeniesAtOnce)
{
	Journal journal;
	Approvals approvals(journal);
	approvals.configure(std::chrono::seconds(0), 20);
	auto a = approvals.open(subject());
	auto b = approvals.open(subject());
	auto c = approvals.open(subject());
	EXPECT_EQ(c->state_name(), "denied") << "one caller may hold a tenth of the slots";
	std::vector<std::shared_ptr<PendingApproval>> others;
	for (int i = 0; i < 18; i++)
		others.push_back(approvals.open(subject("ci:repo:other-" + std::to_string(i))));
	EXPECT_EQ(others[17]->state_name(), "pending");
	EXPECT_EQ(approvals.open(subject("ci:repo:one-more"))->state_name(), "denied") << "twenty already wait";
	approvals.tick();
	EXPECT_EQ(a->state_name(), "timed_out");
	ASSERT_TRUE(a->poll());
	EXPECT_NE(a->poll()->reason.find("no approval within 0 s"), std::string::npos);
}

TEST(Approvals, AClosedConnectionWithdrawsItsApproval)
{
	Journal journal;
	Approvals approvals(journal);
	std::string id;
	{
		auto a = approvals.open(subject());
		id = a->id();
	}
	EXPECT_EQ(approvals.list()["pending"].size(), 0u);
	EXPECT_FALSE(approvals.answer(id, true, "root", 0));
}

// --- the policy observer ----------------------------------------------------------------------------

namespace {
std::shared_ptr<const policy::Rules> rules(const std::string &yaml)
{
	auto p = load_policy_text(yaml, "policy.yaml");
	EXPECT_TRUE(p) << p.error().message();
	auto r = policy::Rules::compile(*p);
	EXPECT_TRUE(r) << r.error().message();
	return *r;
}

RequestInfo request(const std::string &path, uint64_t number = 1)
{
	RequestInfo r;
	r.host = "api2.cursor.sh";
	r.method = "POST";
	r.path = path;
	r.rpc = rpc::parse_rpc_path(path);
	r.number = number;
	return r;
}

const std::string kIdentityYaml = R"(
identity:
  issuers:
    - name: gh
      issuer: https://token.actions.githubusercontent.com
      audiences: [cordon]
rules:
  - name: main-may
    match:
      issuers: [gh]
      claims: {repository: "acme/*", ref: refs/heads/main}
    action: allow
  - name: others-need-approval
    match:
      enrollment: enrolled
    action: approve
unenrolled_action: block
default_action: allow
)";
} // namespace

TEST(PolicyRules, ClaimsEnrollmentAndTheUnenrolledDefault)
{
	auto r = rules(kIdentityYaml);
	policy::Caller main{"/job", "runner", 1001, "/usr/bin/node"};
	main.enrolled = true;
	main.issuer = "gh";
	main.claims = {{"repository", "acme/app"}, {"ref", "refs/heads/main"}};
	EXPECT_EQ(r->plan(main, request("/x.v1.S/M")).decision.rule, "main-may");
	policy::Caller branch = main;
	branch.claims["ref"] = "refs/heads/feature";
	auto d = r->plan(branch, request("/x.v1.S/M")).decision;
	EXPECT_EQ(d.rule, "others-need-approval");
	EXPECT_EQ(d.action, policy::Action::Approve);
	policy::Caller other_issuer = main;
	other_issuer.issuer = "gitlab";
	EXPECT_EQ(r->plan(other_issuer, request("/x.v1.S/M")).decision.rule, "others-need-approval");
	policy::Caller plain{"/job", "runner", 1001, "/usr/bin/node"};
	d = r->plan(plain, request("/x.v1.S/M")).decision;
	EXPECT_EQ(d.rule, "unenrolled");
	EXPECT_EQ(d.action, policy::Action::Block);
}

TEST(PolicyObserver, ApproveHoldsTheRequestAndJournalsTheAnswer)
{
	Journal journal;
	Approvals approvals(journal);
	auto r = rules(kIdentityYaml);
	policy::Caller branch{"/job", "runner", 1001, "/usr/bin/node"};
	branch.enrolled = true;
	branch.issuer = "gh";
	branch.claims = {{"repository", "acme/app"}, {"ref", "refs/heads/x"}};
	ApprovalSubject who;
	who.identity = "gh:repo:acme/app:ref:refs/heads/x";
	PolicyObserver observer(r, branch, nullptr, &approvals, who);
	Verdict v = observer.on_request(request("/agent.v1.AgentService/Run"));
	ASSERT_EQ(v.kind, Verdict::Kind::Defer);
	auto pending = approvals.list()["pending"];
	ASSERT_EQ(pending.size(), 1u);
	EXPECT_EQ(pending[0]["identity"], who.identity);
	EXPECT_EQ(pending[0]["rpc"], "agent.v1.AgentService/Run");
	ASSERT_TRUE(approvals.answer(pending[0]["id"], true, "alice", 0));
	EXPECT_EQ(v.deferred->poll()->kind, Verdict::Kind::Forward);
	auto d = observer.take(1);
	EXPECT_EQ(d.approval, "approved");
	EXPECT_EQ(d.approver, "alice");
	EXPECT_EQ(d.approval_id, pending[0]["id"]);
}

TEST(PolicyObserver, ApproveWithoutARegistryDenies)
{
	auto r = rules("rules: [{name: ask, action: approve}]\n");
	PolicyObserver observer(r, policy::Caller{"/job", "", 0, ""}, nullptr);
	Verdict v = observer.on_request(request("/x.v1.S/M"));
	EXPECT_EQ(v.kind, Verdict::Kind::Refuse);
}

namespace {
struct TempFile {
	std::string path;
	explicit TempFile(const std::string &content, mode_t mode)
	{
		char name[] = "/tmp/cordon-credential-XXXXXX";
		int fd = ::mkstemp(name);
		EXPECT_GE(fd, 0);
		EXPECT_EQ(::write(fd, content.data(), content.size()), static_cast<ssize_t>(content.size()));
		::close(fd);
		path = name;
		::chmod(name, mode);
	}
	~TempFile() { ::unlink(path.c_str()); }
};
} // namespace

TEST(PolicyObserver, InjectReplacesTheClientsCredentialHeaders)
{
	ASSERT_EQ(::geteuid(), 0u) << "the credential file must be root's; run the unit tests as root";
	TempFile key("crsr_held\n", 0600);
	auto r = rules("rules:\n  - name: held\n    action: inject\n    inject:\n      credential_file: " + key.path +
	               "\n      strip_headers: [authorization, x-api-key, x-cursor-key]\n");
	PolicyObserver observer(r, policy::Caller{"/job", "", 0, ""}, nullptr);
	Headers headers{
	    {":path", "/v0/me"}, {"authorization", "Bearer placeholder"}, {"x-api-key", "p"}, {"accept", "*/*"}};
	auto req = request("/v0/me");
	ASSERT_EQ(observer.on_headers(req, Direction::Request, false, headers).kind, Verdict::Kind::Forward);
	EXPECT_EQ(header_value(headers, "authorization"), "Bearer crsr_held");
	EXPECT_FALSE(has_header(headers, "x-api-key"));
	EXPECT_EQ(header_value(headers, "accept"), "*/*");
	// A key in the body is replaced as well.
	Message m;
	m.direction = Direction::Request;
	m.payload = R"({"apiKey":"crsr_placeholder"})";
	Verdict v = observer.on_message(req, m);
	ASSERT_EQ(v.kind, Verdict::Kind::Replace);
	EXPECT_EQ(nlohmann::json::parse(v.replacement)["apiKey"], "crsr_held");
	EXPECT_EQ(observer.take(1).action, policy::Action::Inject);
}

TEST(PolicyObserver, InjectRefusesAKeyFileOthersCanRead)
{
	TempFile key("crsr_held\n", 0644);
	auto r =
	    rules("rules:\n  - name: held\n    action: inject\n    inject:\n      credential_file: " + key.path + "\n");
	PolicyObserver observer(r, policy::Caller{"/job", "", 0, ""}, nullptr);
	Headers headers{{":path", "/v0/me"}, {"authorization", "Bearer placeholder"}};
	Verdict v = observer.on_headers(request("/v0/me"), Direction::Request, false, headers);
	ASSERT_EQ(v.kind, Verdict::Kind::Refuse);
	EXPECT_NE(v.reason.find("mode 0600"), std::string::npos);
	EXPECT_EQ(header_value(headers, "authorization"), "Bearer placeholder");
}

TEST(PolicyObserver, BasicInjectionEncodesUserAndPassword)
{
	TempFile key("crsr_user:\n", 0600);
	policy::InjectSpec spec{key.path, true, {}};
	auto c = load_credential(spec);
	ASSERT_TRUE(c) << c.error().message();
	EXPECT_EQ(c->header_value, "Basic Y3Jzcl91c2VyOg==");
}

// --- enrollment bindings ----------------------------------------------------------------------------

namespace {
identity::Enrolled enrolled(const std::string &cgroup, const std::string &fingerprint, int64_t expires)
{
	identity::Enrolled e;
	e.issuer = "gh";
	e.subject = "repo:acme/app";
	e.cgroup = cgroup;
	e.fingerprint = fingerprint;
	e.expires_at = expires;
	return e;
}
} // namespace

TEST(Enrollments, ATokenBindsToOneCgroupAndCoversItsChildren)
{
	identity::Enrollments e;
	ASSERT_TRUE(e.bind(enrolled("/runner/job", "t1", 1000), 100));
	EXPECT_FALSE(e.bind(enrolled("/runner/other", "t1", 1000), 101)) << "same token, another cgroup";
	EXPECT_TRUE(e.bind(enrolled("/runner/job", "t1", 1000), 102)) << "the same cgroup may enroll again";
	ASSERT_TRUE(e.lookup("/runner/job", 200));
	ASSERT_TRUE(e.lookup("/runner/job/docker-1.scope", 200)) << "a job's container";
	EXPECT_FALSE(e.lookup("/runner", 200));
	EXPECT_FALSE(e.lookup("/runner/jobs", 200)) << "a prefix that is not a parent";
	EXPECT_FALSE(e.lookup("/runner/job", 1000)) << "expired";
	ASSERT_TRUE(e.bind(enrolled("/", "t9", 1000), 100));
	EXPECT_FALSE(e.lookup("/elsewhere", 200)) << "the root's binding covers nobody";
}

TEST(Enrollments, BindingsEndWithTheTokenOrTheCgroup)
{
	identity::Enrollments e;
	ASSERT_TRUE(e.bind(enrolled("/a", "t1", 1000), 100));
	ASSERT_TRUE(e.bind(enrolled("/b", "t2", 150), 100));
	auto ended = e.sweep(200, [](const std::string &cgroup) { return cgroup != "/a"; });
	ASSERT_EQ(ended.size(), 2u);
	EXPECT_EQ(e.size(), 0u);
	// t1's binding ended with its cgroup, but the token stays tied to /a until it expires.
	EXPECT_FALSE(e.bind(enrolled("/c", "t1", 1000), 300));
	EXPECT_FALSE(e.bind(enrolled("/c", "t3", 100), 300)) << "expired token";
}

TEST(Enrollments, UnbindEndsOnlyThatCgroupsBindingAndTheTokenStaysSpent)
{
	identity::Enrollments e;
	ASSERT_TRUE(e.bind(enrolled("/runner", "t1", 1000), 100));
	ASSERT_TRUE(e.bind(enrolled("/other", "t2", 1000), 100));
	EXPECT_FALSE(e.unbind("/runner/job")) << "only the exact cgroup, not a child of it";
	auto ended = e.unbind("/runner");
	ASSERT_TRUE(ended);
	EXPECT_EQ(ended->fingerprint, "t1");
	EXPECT_FALSE(e.lookup("/runner", 200)) << "the next job on the runner is unenrolled";
	EXPECT_TRUE(e.lookup("/other", 200));
	EXPECT_FALSE(e.unbind("/runner")) << "nothing left to end";
	EXPECT_FALSE(e.bind(enrolled("/elsewhere", "t1", 1000), 300)) << "the token cannot move on";
}

TEST(PolicyObserver, AnApprovalOnAnInjectExchangeKeepsTheInjectionAndChecksEveryMessage)
{
	ASSERT_EQ(::geteuid(), 0u) << "the credential file must be root's; run the unit tests as root";
	TempFile key("crsr_held\n", 0600);
	Journal journal;
	Approvals approvals(journal);
	auto r = rules("rules:\n"
	               "  - name: ask-about-deletes\n"
	               "    match:\n"
	               "      content: [{field: \"\", regex: 'rm -rf'}]\n"
	               "    action: approve\n"
	               "  - name: held\n"
	               "    action: inject\n"
	               "    inject:\n"
	               "      credential_file: " +
	               key.path + "\n");
	PolicyObserver observer(r, policy::Caller{"/job", "", 0, ""}, nullptr, &approvals);
	Headers headers{{":path", "/v0/agents"}, {"authorization", "Bearer placeholder"}};
	auto req = request("/v0/agents");
	req.content_type = "application/json";
	ASSERT_EQ(observer.on_headers(req, Direction::Request, false, headers).kind, Verdict::Kind::Forward);
	ASSERT_EQ(observer.on_request(req).kind, Verdict::Kind::Forward);
	// An apiKey in the body does not let a message past the content rules.
	Message m;
	m.direction = Direction::Request;
	m.payload = R"({"apiKey":"x","prompt":"rm -rf /"})";
	Verdict v = observer.on_message(req, m);
	ASSERT_EQ(v.kind, Verdict::Kind::Defer);
	ASSERT_TRUE(approvals.answer(approvals.list()["pending"][0]["id"], true, "root", 0));
	// After the approval the exchange still injects (no crash on the approve decision).
	m.index = 1;
	m.payload = R"({"apiKey":"x","prompt":"fine"})";
	v = observer.on_message(req, m);
	ASSERT_EQ(v.kind, Verdict::Kind::Replace);
	EXPECT_EQ(nlohmann::json::parse(v.replacement)["apiKey"], "crsr_held");
}

TEST(PolicyObserver, DeeplyNestedJsonIsSearchedRawNotWalked)
{
	auto r = rules("rules:\n  - name: no-rm\n    match:\n      content: [{field: \"\", regex: 'rm -rf /'}]\n"
	               "    action: block\n");
	PolicyObserver observer(r, policy::Caller{"/job", "", 0, ""}, nullptr);
	auto req = request("/v0/agents");
	req.content_type = "application/json";
	ASSERT_EQ(observer.on_request(req).kind, Verdict::Kind::Forward);
	Message m;
	m.direction = Direction::Request;
	const size_t depth = 200000;
	m.payload = std::string(depth, '[') + "\"rm -rf /\"" + std::string(depth, ']');
	EXPECT_EQ(observer.on_message(req, m).kind, Verdict::Kind::Refuse);
}

TEST(Gate, APlainBodyWaitingForApprovalIsBoundedToo)
{
	Holder holder;
	holder.held_request = true;
	RequestInfo r;
	r.protocol = rpc::Protocol::Other;
	Limits limits;
	limits.max_message = 1024;
	BodyPipe pipe(Direction::Request, r, rpc::Protocol::Other, "", "", {&holder}, limits);
	pipe.hold_until(holder.gate);
	std::string out;
	ASSERT_TRUE(pipe.write(bytes(std::string(1000, 'a')), out));
	EXPECT_EQ(out, "");
	EXPECT_EQ(pipe.held_bytes(), 1000u) << "counted against the connection's budget";
	EXPECT_FALSE(pipe.write(bytes(std::string(100, 'a')), out));
}
