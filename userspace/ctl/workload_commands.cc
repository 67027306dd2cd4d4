#include "ctl/workload_commands.h"

#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "common/strings.h"
#include "ctl/control_client.h"
#include "ctl/printable.h"

namespace cordon {
namespace {

using nlohmann::json;

constexpr int kExitNotRunning = 3;
// cordond answers "retry" while it fetches an issuer's keys; enrollment waits this long for them.
constexpr auto kEnrollPatience = std::chrono::seconds(15);

std::string age(int64_t unix_seconds)
{
	const int64_t d = unix_seconds - static_cast<int64_t>(std::time(nullptr));
	const int64_t a = d < 0 ? -d : d;
	std::string n = a >= 3600 ? std::to_string(a / 3600) + "h" + std::to_string(a % 3600 / 60) + "m"
	                : a >= 60 ? std::to_string(a / 60) + "m" + std::to_string(a % 60) + "s"
	                          : std::to_string(a) + "s";
	return d < 0 ? n + " ago" : "in " + n;
}

int failed(const json &reply, bool as_json)
{
	if (as_json)
		std::cout << reply.dump(2) << "\n";
	else
		std::cerr << "cordonctl: " << reply.value("error", std::string("request failed")) << "\n";
	return 1;
}

Result<std::string> read_token(const WorkloadCommandOptions &o)
{
	if (!o.token_file.empty() && !o.token_env.empty())
		return plain_error("give --token-file or --token-env, not both");
	if (!o.token_env.empty()) {
		const char *v = std::getenv(o.token_env.c_str());
		if (!v || !*v)
			return plain_error("environment variable " + o.token_env + " is empty or unset");
		return std::string(trim(v));
	}
	if (o.token_file.empty())
		return plain_error("give the job's OIDC token with --token-file FILE or --token-env VAR");
	std::ifstream in(o.token_file == "-" ? "/dev/stdin" : o.token_file);
	if (!in)
		return system_error("open " + o.token_file);
	std::stringstream ss;
	ss << in.rdbuf();
	std::string token(trim(ss.str()));
	if (token.empty())
		return plain_error(o.token_file + " is empty");
	return token;
}

int enroll(const WorkloadCommandOptions &o)
{
	auto token = read_token(o);
	if (!token) {
		std::cerr << "cordonctl enroll: " << token.error().message() << "\n";
		return 2;
	}
	const auto give_up = std::chrono::steady_clock::now() + kEnrollPatience;
	for (;;) {
		auto reply = control_request(o.socket, json{{"command", "enroll"}, {"token", *token}});
		if (!reply) {
			std::cerr << "cordonctl enroll: cordond is not reachable at " << o.socket << ": "
			          << reply.error().message() << "\n";
			return kExitNotRunning;
		}
		if (reply->value("ok", false)) {
			if (o.json)
				std::cout << reply->dump(2) << "\n";
			else
				std::cout << "enrolled as " << printable((*reply)["identity"]) << " for cgroup "
				          << printable((*reply)["cgroup"]) << " until "
				          << age(reply->value("expires_at", int64_t{0})) << "\n";
			return 0;
		}
		if (!reply->value("retry", false) || std::chrono::steady_clock::now() > give_up)
			return failed(*reply, o.json);
		std::this_thread::sleep_for(std::chrono::milliseconds(250));
	}
}

int unenroll(const WorkloadCommandOptions &o)
{
	auto reply = control_request(o.socket, json{{"command", "unenroll"}});
	if (!reply) {
		std::cerr << "cordonctl unenroll: cordond is not reachable at " << o.socket << ": "
		          << reply.error().message() << "\n";
		return kExitNotRunning;
	}
	if (!reply->value("ok", false))
		return failed(*reply, o.json);
	if (o.json)
		std::cout << reply->dump(2) << "\n";
	else if (const std::string identity = reply->value("identity", ""); !identity.empty())
		std::cout << "unenrolled " << printable(identity) << " from cgroup " << printable((*reply)["cgroup"])
		          << "\n";
	else
		std::cout << "cgroup " << printable((*reply)["cgroup"]) << " was not enrolled\n";
	return 0;
}

int simple(const WorkloadCommandOptions &o, const json &request, json &reply)
{
	auto r = control_request(o.socket, request);
	if (!r) {
		std::cerr << "cordonctl: cordond is not reachable at " << o.socket << ": " << r.error().message()
		          << "\n";
		return kExitNotRunning;
	}
	reply = std::move(*r);
	if (!reply.value("ok", false))
		return failed(reply, o.json);
	return 0;
}

int identities(const WorkloadCommandOptions &o)
{
	json reply;
	if (int rc = simple(o, json{{"command", "identities"}}, reply); rc != 0)
		return rc;
	if (o.json) {
		std::cout << reply.dump(2) << "\n";
		return 0;
	}
	const json &list = reply["identities"];
	std::cout << list.size() << " enrolled\n";
	for (const auto &e : list)
		std::cout << "  " << printable(e["identity"]) << "\n    cgroup " << printable(e["cgroup"])
		          << ", expires " << age(e.value("expires_at", int64_t{0})) << ", claims "
		          << printable(e["claims"]) << "\n";
	return 0;
}

int approvals(const WorkloadCommandOptions &o)
{
	json reply;
	if (int rc = simple(o, json{{"command", "approvals"}}, reply); rc != 0)
		return rc;
	if (o.json) {
		std::cout << reply.dump(2) << "\n";
		return 0;
	}
	const json &pending = reply["pending"];
	std::cout << pending.size() << " pending\n";
	for (const auto &a : pending) {
		std::cout << "  " << printable(a["id"]) << "  rule " << printable(a["rule"]) << ", "
		          << printable(a["identity"]) << " (" << printable(a["exe"]) << ", cgroup "
		          << printable(a["cgroup"]) << ")\n"
		          << "      " << printable(a["direction"]) << " " << printable(a["host"]) << " "
		          << printable(a["rpc"]) << ", denied " << age(a.value("expires_at", int64_t{0}))
		          << " without an answer\n"
		          << "      " << printable(a["excerpt"]) << "\n";
	}
	const json &grants = reply["grants"];
	if (!grants.empty())
		std::cout << grants.size() << " grants\n";
	for (const auto &g : grants)
		std::cout << "  " << printable(g["identity"]) << " may " << printable(g["rpc"]) << " (rule "
		          << printable(g["rule"]) << ") until " << age(g.value("until", int64_t{0})) << ", granted by "
		          << printable(g["approver"]) << "\n";
	return 0;
}

int answer(const WorkloadCommandOptions &o, const std::string &command, const std::vector<std::string> &args)
{
	if (args.size() != 1) {
		std::cerr << "usage: cordonctl " << command << " ID"
		          << (command == "approve" ? " [--for DURATION]" : "") << "\n";
		return 2;
	}
	json request{{"command", command}, {"id", args[0]}};
	if (!o.for_duration.empty()) {
		if (command != "approve") {
			std::cerr << "cordonctl: --for goes with approve\n";
			return 2;
		}
		long seconds = parse_duration_seconds(o.for_duration);
		if (seconds <= 0) {
			std::cerr << "cordonctl: --for takes a duration such as 90s, 10m, 2h or 1d\n";
			return 2;
		}
		request["for_seconds"] = seconds;
	}
	json reply;
	if (int rc = simple(o, request, reply); rc != 0)
		return rc;
	if (o.json)
		std::cout << reply.dump(2) << "\n";
	else
		std::cout << printable(reply.value("message", std::string("done"))) << "\n";
	return 0;
}

} // namespace

long parse_duration_seconds(const std::string &text)
{
	if (text.empty())
		return -1;
	size_t used = 0;
	long n = 0;
	try {
		n = std::stol(text, &used);
	} catch (...) {
		return -1;
	}
	if (n <= 0)
		return -1;
	const std::string unit = text.substr(used);
	const long scale = unit.empty() || unit == "s" ? 1
	                   : unit == "m"               ? 60
	                   : unit == "h"               ? 3600
	                   : unit == "d"               ? 86400
	                                               : 0;
	if (scale == 0 || n > 365L * 86400 / scale)
		return -1;
	return n * scale;
}

bool is_workload_command(const std::string &command)
{
	return command == "enroll" || command == "unenroll" || command == "identities" || command == "approvals" ||
	       command == "approve" || command == "deny";
}

int run_workload_command(const std::string &command, const std::vector<std::string> &args,
                         const WorkloadCommandOptions &options)
{
	if (command == "approve" || command == "deny")
		return answer(options, command, args);
	if (!args.empty()) {
		std::cerr << "cordonctl: unexpected argument '" << args[0] << "'\n";
		return 2;
	}
	if (command == "enroll")
		return enroll(options);
	if (command == "unenroll")
		return unenroll(options);
	if (command == "identities")
		return identities(options);
	return approvals(options);
}

} // namespace cordon
