// Policy evaluation per request (issue #5): the plan for one request against N rules, where
// the request matches only the last one (the worst case: every rule is tried), and a content
// check of one decoded message against rules listed before the deciding one.
// Run: build/cordon-microbench --benchmark_filter=Policy
#include <benchmark/benchmark.h>

#include <nlohmann/json.hpp>

#include "config/policy.h"
#include "policy/rules.h"

using namespace cordon;

namespace {

// N-1 rules, then one that matches. Without `content`: the N-1 do not match the request
// (another cgroup, RPC or executable), so every one is tried. With `content`: the N-1 all
// apply to the request and only a message can tell, so each message is checked against all.
std::shared_ptr<const policy::Rules> rules(int n, bool content)
{
	std::string yaml = "rules:\n";
	for (int i = 0; i < n - 1; i++) {
		const std::string id = std::to_string(i);
		yaml += "  - name: r" + id + "\n    action: block\n    match:\n";
		if (content)
			yaml += "      hosts: [\"*.cursor.sh\"]\n      content: [{field: "
			        "exec_server_message.shell_args.command, "
			        "regex: 'rm\\s+-rf\\s+/" +
			        id + "'}]\n";
		else if (i % 3 == 0)
			yaml += "      cgroups: [\"/system.slice/runner-" + id + ".service/*\"]\n";
		else if (i % 3 == 1)
			yaml += "      rpcs: [\"agent.v1.AgentService/Method" + id + "\"]\n";
		else
			yaml += "      exes: [\"/opt/tool-" + id + "/*\"]\n      hosts: [\"*.cursor.sh\"]\n";
	}
	yaml += "  - name: last\n    action: allow\n    match: {hosts: [\"*.cursor.sh\"]}\ndefault_action: block\n";
	auto p = load_policy_text(yaml, "bench.yaml");
	if (!p)
		std::abort();
	auto r = policy::Rules::compile(*p);
	if (!r)
		std::abort();
	return *r;
}

const policy::Caller kCaller{"/system.slice/runner.service/job-7", "runner", 1001, "/usr/bin/node"};

proxy::RequestInfo request()
{
	proxy::RequestInfo r;
	r.host = "api2.cursor.sh";
	r.path = "/aiserver.v1.ChatService/StreamUnifiedChatWithTools";
	r.rpc = rpc::parse_rpc_path(r.path);
	return r;
}

void BM_PolicyPlan(benchmark::State &state)
{
	auto r = rules(static_cast<int>(state.range(0)), false);
	const auto req = request();
	for (auto _ : state) {
		auto plan = r->plan(kCaller, req);
		benchmark::DoNotOptimize(plan);
	}
	state.counters["rules"] = static_cast<double>(r->size());
}
BENCHMARK(BM_PolicyPlan)->Arg(10)->Arg(100)->Arg(1000)->Unit(benchmark::kMicrosecond);

// Each message against N-1 content rules (none matches).
void BM_PolicyMessage(benchmark::State &state)
{
	auto r = rules(static_cast<int>(state.range(0)), true);
	const auto req = request();
	auto plan = r->plan(kCaller, req);
	const auto message =
	    nlohmann::json::parse(R"({"exec_server_message":{"id":1,"shell_args":{"command":"ls -la /workspace"}}})");
	for (auto _ : state) {
		auto d = r->decide_message(plan, proxy::Direction::Response, message);
		benchmark::DoNotOptimize(d);
	}
	state.counters["content_rules_checked"] = static_cast<double>(plan.content_rules.size());
}
BENCHMARK(BM_PolicyMessage)->Arg(10)->Arg(100)->Arg(1000)->Unit(benchmark::kMicrosecond);

} // namespace
