// cordond: the cordon daemon. See README.md.
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <boost/program_options.hpp>
#include <fstream>
#include <iostream>

#include "common/log.h"
#include "config/policy.h"
#include "daemon/daemon.h"

namespace po = boost::program_options;
using namespace cordon;

namespace {

// Command-line overrides become a YAML overlay, so they pass the same validation as the file.
std::string overrides_yaml(const po::variables_map &vm)
{
	YAML::Emitter out;
	out << YAML::BeginMap;
	if (vm.count("enforce-cgroup") || vm.count("exempt-cgroup")) {
		out << YAML::Key << "enforce" << YAML::Value << YAML::BeginMap;
		if (vm.count("enforce-cgroup"))
			out << YAML::Key << "cgroups" << YAML::Value
			    << vm["enforce-cgroup"].as<std::vector<std::string>>();
		if (vm.count("exempt-cgroup"))
			out << YAML::Key << "exempt_cgroups" << YAML::Value
			    << vm["exempt-cgroup"].as<std::vector<std::string>>();
		out << YAML::EndMap;
	}
	if (vm.count("target") || vm.count("host")) {
		out << YAML::Key << "capture" << YAML::Value << YAML::BeginMap;
		if (vm.count("target"))
			out << YAML::Key << "cidrs" << YAML::Value << vm["target"].as<std::vector<std::string>>();
		if (vm.count("host"))
			out << YAML::Key << "hosts" << YAML::Value << vm["host"].as<std::vector<std::string>>();
		out << YAML::EndMap;
	}
	if (vm.count("upstream-ca") || vm.count("descriptors")) {
		out << YAML::Key << "tls" << YAML::Value << YAML::BeginMap;
		if (vm.count("upstream-ca"))
			out << YAML::Key << "upstream_ca_file" << YAML::Value << vm["upstream-ca"].as<std::string>();
		if (vm.count("descriptors"))
			out << YAML::Key << "descriptors" << YAML::Value << vm["descriptors"].as<std::string>();
		out << YAML::EndMap;
	}
	out << YAML::Key << "daemon" << YAML::Value << YAML::BeginMap;
	if (vm.count("listen"))
		out << YAML::Key << "listen_port" << YAML::Value << vm["listen"].as<std::string>();
	if (vm.count("pin-dir"))
		out << YAML::Key << "pin_dir" << YAML::Value << vm["pin-dir"].as<std::string>();
	if (vm.count("control-socket"))
		out << YAML::Key << "control_socket" << YAML::Value << vm["control-socket"].as<std::string>();
	if (vm.count("state-dir"))
		out << YAML::Key << "state_dir" << YAML::Value << vm["state-dir"].as<std::string>();
	if (vm.count("metrics-listen"))
		out << YAML::Key << "metrics_listen" << YAML::Value << vm["metrics-listen"].as<std::string>();
	if (vm.count("netns-listen"))
		out << YAML::Key << "netns_listen" << YAML::Value << vm["netns-listen"].as<std::string>();
	out << YAML::EndMap << YAML::EndMap;
	return out.c_str();
}

} // namespace

int main(int argc, char **argv)
{
	po::options_description opts("cordond — transparent gateway for Cursor traffic\n\nOptions");
	// clang-format off
	opts.add_options()
		("help,h", "show this help")
		("version", "print the version")
		("config,c", po::value<std::string>(), "policy file (default /etc/cordon/policy.yaml; the embedded default policy when that file does not exist)")
		("check-config", "validate the policy, print the effective policy and exit")
		("listen,l", po::value<std::string>(), "loopback port for redirected connections (daemon.listen_port)")
		("enforce-cgroup", po::value<std::vector<std::string>>(), "enforce this cgroup subtree, relative to the cgroup2 mount; repeatable (enforce.cgroups)")
		("exempt-cgroup", po::value<std::vector<std::string>>(), "leave this subtree alone; repeatable (enforce.exempt_cgroups)")
		("target", po::value<std::vector<std::string>>(), "capture this address or CIDR; repeatable, replaces capture.cidrs")
		("host", po::value<std::vector<std::string>>(), "capture this host name or *.pattern; repeatable, replaces capture.hosts")
		("cgroup", po::value<std::string>()->default_value(""), "cgroup cordond moves itself into (default: where started, or /cordond when that is enforced)")
		("pin-dir", po::value<std::string>(), "bpffs directory for pinned programs and maps (daemon.pin_dir)")
		("control-socket", po::value<std::string>(), "control socket path (daemon.control_socket)")
		("state-dir", po::value<std::string>(), "root-only state: the host CA (daemon.state_dir)")
		("metrics-listen", po::value<std::string>(), "Prometheus metrics at unix:/PATH or IP:PORT; \"\" for none (daemon.metrics_listen)")
		("netns-listen", po::value<std::string>(), "host IPv4:PORT (privileged port) for jobs in other network namespaces; \"\" refuses them (daemon.netns_listen)")
		("upstream-ca", po::value<std::string>(), "verify Cursor against this PEM bundle instead of the system store (tls.upstream_ca_file)")
		("descriptors", po::value<std::string>(), "Cursor's message descriptor set, for decoding (tls.descriptors)")
		("log-level", po::value<std::string>()->default_value("info"), "debug, info, warning or error");
	// clang-format on
	po::variables_map vm;
	try {
		po::store(po::parse_command_line(argc, argv, opts), vm);
		po::notify(vm);
	} catch (const po::error &e) {
		std::cerr << "cordond: " << e.what() << "\n\n" << opts << "\n";
		return 2;
	}
	if (vm.count("help")) {
		std::cout << opts << "\n";
		return 0;
	}
	if (vm.count("version")) {
		std::cout << "cordond " << kCordonVersion << "\n";
		return 0;
	}
	auto level = log::parse_level(vm["log-level"].as<std::string>());
	if (!level) {
		std::cerr << "cordond: " << level.error().message() << "\n";
		return 2;
	}
	log::set_level(*level);

	DaemonOptions options;
	std::string path = vm.count("config") ? vm["config"].as<std::string>() : kDefaultPolicyPath;
	if (!vm.count("config") && ::access(path.c_str(), F_OK) != 0) {
		options.policy = default_policy();
		options.policy_source = "<embedded default policy>";
	} else {
		auto loaded = load_policy_file(path);
		if (!loaded) {
			std::cerr << "cordond: " << loaded.error().message() << "\n";
			return 2;
		}
		options.policy = *loaded;
		options.policy_source = path;
	}
	options.overrides_yaml = overrides_yaml(vm);
	if (Status st = apply_policy_yaml(options.policy, options.overrides_yaml, "command line"); !st) {
		std::cerr << "cordond: " << st.error().message() << "\n";
		return 2;
	}
	if (vm.count("check-config")) {
		std::cout << "# effective policy (from " << options.policy_source << " and the command line)\n"
		          << policy_to_yaml(options.policy);
		return 0;
	}
	options.own_cgroup = vm["cgroup"].as<std::string>();
	if (::geteuid() != 0) {
		std::cerr << "cordond: must run as root (it loads BPF programs and marks sockets)\n";
		return 1;
	}
	Status st = run_daemon(options);
	if (!st) {
		log::error("cordond: " + st.error().message());
		return 1;
	}
	return 0;
}
