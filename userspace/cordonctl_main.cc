// cordonctl: control CLI for cordond. See README.md.
#include <unistd.h>

#include <boost/program_options.hpp>
#include <cstdio>
#include <cstdlib>
#include <iomanip>
#include <iostream>
#include <sstream>

#include "bpf/kernel_programs.h"
#include "config/policy.h"
#include "ctl/ca_command.h"
#include "ctl/control_client.h"
#include "ctl/mask_command.h"
#include "ctl/printable.h"
#include "ctl/recording_commands.h"
#include "ctl/workload_commands.h"
#include "daemon/daemon.h"
#include "policy/rules.h"

namespace po = boost::program_options;
using nlohmann::json;
using namespace cordon;

namespace {

constexpr int kExitNotRunning = 3;

const char *kUsage = R"(usage: cordonctl [--socket PATH] [--pin-dir DIR] [--state-dir DIR] COMMAND [--json]

commands:
  status     what cordond is doing: programs, listeners, counters, live connections
  watch      every intercepted request and message, decoded, as it happens (root only)
             --json: one JSON event per line; --count N: stop after N messages; --seconds S
  metrics    cordond's metrics in the Prometheus text format, as its metrics endpoint serves
             them (root only)
  reload     read the policy file again: its rules and masking apply to new connections (root
             only; SIGHUP does the same)
  detach     detach and unpin cordon's BPF programs (root only); traffic then flows unseen
  version    print the version
  ca init | show | install | uninstall | issue HOST
             the host CA in DIR/ca and the host trust stores (root only; `cordonctl ca` for more)
  enroll --token-file F | --token-env VAR
             run inside a job: bind its CI's OIDC token (audience for cordon) to the job's cgroup
  unenroll   run inside a job: end its cgroup's binding (job-started hooks do, before enrolling)
  identities enrolled workloads and their claims (root only)
  approvals  requests and messages held for a person's approval, and standing grants (root only)
  approve ID [--for DURATION]
             let the held request or message go; --for 10m also grants that identity the same
             RPC under the same rule for that long (root only)
  deny ID    refuse it; the job gets the rule's error (root only)
  policy check FILE
             validate a policy file as cordond would load it (errors name file:line)
  mask [FILE] | --list | --explain [FILE]
             FILE (or stdin) with its secrets masked; the rule ids; the findings (`cordonctl mask --help`)
  verify [ID | --all]
             check the session recordings' chain and checkpoints (DIR/recordings, key
             DIR/recording.key); with ID, also that the session is there. Exit 1: tampered
  sessions [--identity GLOB] [--host GLOB] [--rpc GLOB] [--action GLOB] [--since T] [--until T]
             recorded sessions, one a line; T: 2026-11-29T17:00:00Z or ago: 10m, 2h, 1d
  replay ID  a recorded session as a transcript: requests, decoded messages, decisions
  export ID [--format json]
             a recorded session as one JSON document
)";

std::string join(const json &array, const char *sep = ", ")

{
	std::string out;
	for (const auto &v : array)
		out += (out.empty() ? "" : sep) + printable(v);
	return out;
}

void print_status(const json &s)
{
	std::cout << "cordond " << s["version"].get<std::string>() << " (pid " << s["pid"] << "), policy "
	          << s["policy"].get<std::string>() << "\n";
	const json &pr = s["programs"];
	std::cout << "programs:    " << join(pr["attached"], " ") << "\n"
	          << "             attached at " << pr["cgroup_root"].get<std::string>() << ", pinned in "
	          << pr["pin_dir"].get<std::string>()
	          << (pr["adopted"].get<bool>() ? " (adopted from a previous cordond)" : "") << "\n";
	std::cout << "listeners:   " << join(s["listeners"]) << "\n";
	const json &en = s["enforce"];
	std::cout << "enforced:    " << join(en["cgroups"]);
	if (!en["exempt"].empty())
		std::cout << " (exempt: " << join(en["exempt"]) << ")";
	std::cout << "; cordond runs in " << en["own_cgroup"].get<std::string>() << "\n";
	const json &cap = s["capture"];
	std::cout << "capture:     tcp ports " << join(cap["ports"]) << "; udp refused " << join(cap["quic_ports"])
	          << "; " << cap["targets"].size() << " target prefixes\n";
	for (const auto &t : cap["targets"])
		std::cout << "             " << t["cidr"].get<std::string>() << " (" << t["source"].get<std::string>()
		          << ")\n";
	std::cout << "counters:   ";
	for (auto it = s["counters"].begin(); it != s["counters"].end(); ++it)
		std::cout << " " << it.key() << "=" << it.value();
	std::cout << "\n";
	if (s.contains("dns")) {
		const json &d = s["dns"];
		std::cout << "dns proxy:   " << join(d["listen"]) << " -> " << d["upstream"].get<std::string>() << "; "
		          << d["udp_queries"] << " udp + " << d["tcp_queries"] << " tcp queries, "
		          << d["captured_answers"] << " captured answers (" << d["added_addresses"]
		          << " addresses added), " << d["servfail"] << " servfail, " << d["timeouts"] << " timeouts\n";
	} else {
		std::cout << "dns proxy:   off (capture.dns_proxy: false)\n";
	}
	const json &r = s["relay"];
	std::cout << "relay:       " << r["active"] << " active, " << r["accepted"] << " accepted, " << r["closed"]
	          << " closed, " << r["lookup_missed"] << " without origin, " << r["upstream_failed"]
	          << " upstream failures; buffers " << r["buffers_in_use"] << "/" << r["buffers"]
	          << "; origin map entries " << s.value("origin_entries", json(0)) << "\n";
	std::cout << "journal:     " << s["journal"]["written"] << " written, " << s["journal"]["dropped"]
	          << " dropped, " << s["journal"]["fell_back"] << " to stderr\n";
	const json &conns = s["connections"];
	std::cout << "connections: " << conns.size() << "\n";
	if (conns.empty())
		return;
	std::cout << "  " << std::left << std::setw(20) << "ID" << std::setw(8) << "PID" << std::setw(7) << "UID"
	          << std::setw(16) << "COMM" << std::setw(28) << "CGROUP" << std::setw(24) << "DESTINATION"
	          << std::setw(11) << "UP" << std::setw(11) << "DOWN"
	          << "STATE\n";
	for (const auto &c : conns)
		std::cout << "  " << std::left << std::setw(20) << printable(c["id"]) << std::setw(8) << c["pid"]
		          << std::setw(7) << c["uid"] << std::setw(16) << printable(c["comm"]) << std::setw(28)
		          << printable(c["cgroup"]) << std::setw(24) << printable(c["destination"]) << std::setw(11)
		          << c["bytes_up"] << std::setw(11) << c["bytes_down"] << printable(c["state"]) << "\n";
}

// One line per event, the JSON of a message cut to a screenful.
void print_watch_event(const json &e)
{
	const std::string event = e.value("event", "");
	if (event == "watching") {
		std::cout << "watching cordond (pid " << e.value("pid", 0) << "); Ctrl-C to stop" << std::endl;
		return;
	}
	if (event == "dropped") {
		std::cout << "  ... " << e.value("count", 0) << " events dropped (this terminal fell behind)"
		          << std::endl;
		return;
	}
	const std::string tag =
	    printable(e.value("conn", std::string("?"))) + "#" + std::to_string(e.value("request", 0));
	if (event == "request") {
		std::cout << tag << "  " << printable(e.value("comm", std::string())) << "[" << e.value("pid", 0)
		          << "] " << printable(e.value("host", std::string())) << " "
		          << printable(e.value("rpc", std::string())) << "  (" << e.value("protocol", std::string())
		          << ", HTTP/" << e.value("http", std::string()) << ")" << std::endl;
	} else if (event == "message") {
		std::string body =
		    e.contains("json") ? e["json"].dump(-1, ' ', false, json::error_handler_t::replace) : "";
		if (body.size() > 400)
			body = body.substr(0, 400) + "...";
		const bool request = e.value("direction", "") == "request";
		std::cout << tag << "  " << (request ? "-> " : "<- ") << (e.value("end_of_stream", false) ? "end " : "")
		          << "#" << e.value("index", 0) << " " << e.value("size", 0) << " B "
		          << printable(e.value("type", std::string())) << " " << printable(body) << std::endl;
	} else if (event == "complete") {
		std::cout << tag << "  done: " << e.value("status", 0) << " " << e.value("result", std::string())
		          << (e.contains("error") ? " (" + printable(e["error"]) + ")" : "") << ", "
		          << e.value("duration_us", 0) / 1000 << " ms" << std::endl;
	}
}

// cordond is not answering: say what the kernel side is doing without it.
int report_not_running(const std::string &socket, const std::string &pin_dir, const std::string &why, bool as_json)
{
	auto pinned = read_pinned_state(pin_dir);
	json j{{"ok", false}, {"running", false}, {"error", why}};
	if (pinned && pinned->present) {
		j["pinned_links"] = pinned->links;
		if (pinned->counters) {
			json c;
			for (int i = 0; i < CORDON_CTR__COUNT; i++)
				c[counter_name(i)] = (*pinned->counters)[i];
			j["counters"] = c;
		}
	}
	if (as_json) {
		std::cout << j.dump(2) << "\n";
		return kExitNotRunning;
	}
	std::cerr << "cordonctl: cordond is not running (" << why << ")\n";
	if (!pinned) {
		std::cerr << "cordonctl: cannot read " << pin_dir << ": " << pinned.error().message() << "\n";
	} else if (pinned->present && !pinned->links.empty()) {
		std::cerr << "programs still attached from " << pin_dir << ": " << join(j["pinned_links"], " ")
		          << "\ncaptured connections are refused until cordond returns (fail closed); "
		             "`cordonctl detach` removes them\n";
	} else {
		std::cerr << "no cordon programs are attached (" << pin_dir << " holds none)\n";
	}
	(void)socket;
	return kExitNotRunning;
}

} // namespace

// `cordonctl policy check FILE`: the file loaded and compiled as cordond would, without a daemon.
static int run_policy_check(const std::vector<std::string> &args)
{
	if (args.size() != 2 || args[0] != "check") {
		std::cerr << "usage: cordonctl policy check FILE\n";
		return 2;
	}
	auto policy = load_policy_file(args[1]);
	if (!policy) {
		std::cerr << "cordonctl: " << policy.error().message() << "\n";
		return 1;
	}
	auto rules = policy::Rules::compile(*policy);
	if (!rules) {
		std::cerr << "cordonctl: " << args[1] << ": " << rules.error().message() << "\n";
		return 1;
	}
	std::cout << args[1] << ": ok: " << (*rules)->size() << " rules, default action "
	          << (policy->default_action() == config::Rule::BLOCK ? "block" : "allow") << ", masking "
	          << (policy->mask().enabled() ? "on" : "off") << "\n";
	return 0;
}

// `cordonctl mask` has flags of its own (--list, --explain), so it is dispatched before the global
// parser would reject them. Global options may come first; those taking a value skip it.
static int find_mask_command(int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		const std::string a = argv[i];
		if (a == "--socket" || a == "--pin-dir" || a == "--state-dir" || a == "--count" || a == "--seconds" ||
		    a == "--recordings" || a == "--descriptors" || a == "--format" || a == "--identity" ||
		    a == "--host" || a == "--rpc" || a == "--action" || a == "--since" || a == "--until") {
			i++;
			continue;
		}
		if (!a.empty() && a[0] == '-')
			continue;
		return a == "mask" ? i : 0;
	}
	return 0;
}

int main(int argc, char **argv)
{
	if (const int at = find_mask_command(argc, argv))
		return run_mask_command(std::vector<std::string>(argv + at + 1, argv + argc), std::cin, std::cout,
		                        std::cerr);
	const config::Policy defaults = default_policy();
	// Jobs in containers may see the socket elsewhere (a bind mount): the runner hooks say where.
	const char *socket_env = std::getenv("CORDON_CONTROL_SOCKET");
	const std::string default_socket =
	    socket_env && *socket_env ? std::string(socket_env) : defaults.daemon().control_socket();
	po::options_description opts("options");
	// clang-format off
	opts.add_options()
		("help,h", "show this help")
		("json", "machine-readable output")
		("socket", po::value<std::string>()->default_value(default_socket), "control socket (also $CORDON_CONTROL_SOCKET)")
		("pin-dir", po::value<std::string>()->default_value(defaults.daemon().pin_dir()), "bpffs pin directory")
		("state-dir", po::value<std::string>()->default_value(defaults.daemon().state_dir()), "state directory (the CA)")
		("count", po::value<long>()->default_value(0), "watch: stop after this many messages")
		("seconds", po::value<int>()->default_value(0), "watch: stop after this many seconds")
		("token-file", po::value<std::string>()->default_value(""), "enroll: file holding the job's OIDC token (- for stdin)")
		("token-env", po::value<std::string>()->default_value(""), "enroll: environment variable holding it")
		("for", po::value<std::string>()->default_value(""), "approve: also grant the same for this long (90s, 10m, 2h, 1d)")
		("recordings", po::value<std::string>(), "verify, sessions, replay, export: the recording store (default <state-dir>/recordings)")
		("descriptors", po::value<std::string>()->default_value("/usr/share/cordon/cursor.desc"), "replay, export: Cursor's message shapes (generic decoding without)")
		("format", po::value<std::string>()->default_value("json"), "export: the format (json)")
		("identity", po::value<std::string>()->default_value(""), "sessions: the caller's identity matches this glob")
		("host", po::value<std::string>()->default_value(""), "sessions: a request's host matches this glob")
		("rpc", po::value<std::string>()->default_value(""), "sessions: a request's RPC matches this glob")
		("action", po::value<std::string>()->default_value(""), "sessions: a decision's action (allow, block, approve)")
		("since", po::value<std::string>()->default_value(""), "sessions: active at or after (2026-11-29T17:00:00Z, 2h)")
		("until", po::value<std::string>()->default_value(""), "sessions: begun at or before")
		("all", "verify: the whole store (the default)")
		("no-journal", "verify, export: do not hold the store against the journal's record of its segments")
		("command", po::value<std::string>(), "command");
	po::options_description hidden;
	hidden.add_options()
		("args", po::value<std::vector<std::string>>()->default_value({}, ""), "the command's arguments");
	// clang-format on
	po::options_description all;
	all.add(opts).add(hidden);
	po::positional_options_description positional;
	positional.add("command", 1).add("args", -1);
	po::variables_map vm;
	try {
		po::store(po::command_line_parser(argc, argv).options(all).positional(positional).run(), vm);
		po::notify(vm);
	} catch (const po::error &e) {
		std::cerr << "cordonctl: " << e.what() << "\n" << kUsage;
		return 2;
	}
	if (vm.count("help") || !vm.count("command")) {
		std::cout << kUsage << "\n" << opts << "\n";
		return vm.count("help") ? 0 : 2;
	}
	const std::string command = vm["command"].as<std::string>();
	const std::string socket = vm["socket"].as<std::string>();
	const std::string pin_dir = vm["pin-dir"].as<std::string>();
	const bool as_json = vm.count("json") > 0;
	const auto args = vm["args"].as<std::vector<std::string>>();

	if (command == "ca")
		return run_ca_command(args, vm["state-dir"].as<std::string>(), std::cout, std::cerr);
	if (command == "policy")
		return run_policy_check(args);
	if (is_workload_command(command)) {
		WorkloadCommandOptions o{socket, as_json, vm["token-file"].as<std::string>(),
		                         vm["token-env"].as<std::string>(), vm["for"].as<std::string>()};
		return run_workload_command(command, args, o);
	}
	if (is_recording_command(command)) {
		const std::string state_dir = vm["state-dir"].as<std::string>();
		RecordingCommandOptions o;
		o.recordings = vm.count("recordings") ? vm["recordings"].as<std::string>() : state_dir + "/recordings";
		o.key_file = state_dir + "/recording.key";
		o.descriptors = vm["descriptors"].as<std::string>();
		o.json = as_json;
		o.all = vm.count("all") > 0;
		o.journal = vm.count("no-journal") == 0;
		o.journal_result = command == "verify";
		o.format = vm["format"].as<std::string>();
		o.identity = vm["identity"].as<std::string>();
		o.host = vm["host"].as<std::string>();
		o.rpc = vm["rpc"].as<std::string>();
		o.action = vm["action"].as<std::string>();
		o.since = vm["since"].as<std::string>();
		o.until = vm["until"].as<std::string>();
		return run_recording_command(command, args, o, std::cout, std::cerr);
	}
	if (!args.empty()) {
		std::cerr << "cordonctl: unexpected argument '" << args[0] << "'\n" << kUsage;
		return 2;
	}

	if (command == "version") {
		std::cout << "cordonctl " << kCordonVersion << "\n";
		return 0;
	}
	if (command == "status") {
		auto reply = control_request(socket, json{{"command", "status"}});
		if (!reply)
			return report_not_running(socket, pin_dir, reply.error().message(), as_json);
		if (!reply->value("ok", false)) {
			if (as_json)
				std::cout << reply->dump(2) << "\n";
			else
				std::cerr << "cordonctl: " << reply->value("error", std::string("request failed"))
				          << "\n";
			return 1;
		}
		if (as_json)
			std::cout << reply->dump(2) << "\n";
		else
			print_status(*reply);
		return 0;
	}
	if (command == "metrics") {
		auto reply = control_request(socket, json{{"command", "metrics"}});
		if (!reply)
			return report_not_running(socket, pin_dir, reply.error().message(), as_json);
		if (!reply->value("ok", false)) {
			std::cerr << "cordonctl: " << reply->value("error", std::string("request failed")) << "\n";
			return 1;
		}
		if (as_json)
			std::cout << reply->dump(2) << "\n";
		else
			std::cout << reply->value("text", std::string());
		return 0;
	}
	if (command == "reload") {
		// A reload compiles the policy and its masking rules: seconds on a loaded runner (9.5 s
		// seen under TSan), so it gets longer than the 10 s other commands do.
		auto reply = control_request(socket, json{{"command", "reload"}}, std::chrono::seconds(120));
		if (!reply)
			return report_not_running(socket, pin_dir, reply.error().message(), as_json);
		if (as_json) {
			std::cout << reply->dump(2) << "\n";
		} else if (reply->value("ok", false)) {
			std::cout << reply->value("message", std::string("reloaded")) << ": "
			          << reply->value("rules", 0) << " rules, masking "
			          << (reply->value("masking", false) ? "on" : "off") << "\n";
			for (const auto &section : reply->value("needs_restart", json::array()))
				std::cout
				    << "  " << section.get<std::string>()
				    << ": changed, but takes a restart (`systemctl restart cordon`); not applied\n";
		} else {
			std::cerr << "cordonctl: reload failed, the running policy stays: "
			          << reply->value("error", std::string("request failed")) << "\n";
		}
		return reply->value("ok", false) ? 0 : 1;
	}
	if (command == "watch") {
		const long count = vm["count"].as<long>();
		long messages = 0;
		bool refused = false;
		Status st = control_stream(
		    socket, json{{"command", "watch"}},
		    [&](const json &e) {
			    if (e.contains("ok") && !e.value("ok", false)) {
				    std::cerr << "cordonctl: " << e.value("error", std::string("refused")) << "\n";
				    refused = true;
				    return false;
			    }
			    if (as_json)
				    std::cout << e.dump(-1, ' ', false, json::error_handler_t::replace) << std::endl;
			    else
				    print_watch_event(e);
			    if (e.value("event", "") == "message")
				    messages++;
			    return count <= 0 || messages < count;
		    },
		    vm["seconds"].as<int>());
		if (!st) {
			std::cerr << "cordonctl: " << st.error().message() << "\n";
			return 1;
		}
		return refused ? 1 : 0;
	}
	if (command == "detach") {
		if (::geteuid() != 0) {
			std::cerr << "cordonctl: detach is for root\n";
			return 1;
		}
		Status st = detach_pinned(pin_dir);
		if (!st) {
			std::cerr << "cordonctl: " << st.error().message() << "\n";
			return 1;
		}
		std::cout << "detached cordon's programs and removed " << pin_dir << "\n";
		return 0;
	}
	std::cerr << "cordonctl: unknown command '" << command << "'\n" << kUsage;
	return 2;
}
