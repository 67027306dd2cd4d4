// cordond as a whole: takes a validated policy, attaches the kernel programs, runs the relay,
// the control socket and the resolver on one io_uring loop until SIGTERM/SIGINT.
#pragma once

#include <memory>
#include <string>

#include "common/result.h"
#include "cordon/config.pb.h"

namespace cordon {

inline constexpr const char *kCordonVersion = "0.1.0";

struct DaemonOptions {
	config::Policy policy;
	std::string policy_source;  // file path, or "<embedded default policy>"
	std::string overrides_yaml; // command-line settings laid over the file, again at each reload
	// cgroup (relative to the cgroup2 mount) cordond moves itself into; created if missing and
	// removed at exit if cordond created it. Empty: stay where started unless that would put
	// cordond inside an enforced subtree, then use /cordond.
	std::string own_cgroup;
};

// Runs until a stop signal; returns the error that ended it early, if any.
Status run_daemon(const DaemonOptions &options);

} // namespace cordon
