// cordonctl commands about who is calling and what waits for a person: enroll (run inside a
// job), identities, approvals, approve, deny.
#pragma once

#include <string>
#include <vector>

namespace cordon {

struct WorkloadCommandOptions {
	std::string socket;
	bool json = false;
	std::string token_file, token_env; // enroll
	std::string for_duration;          // approve --for: "90s", "10m", "2h", "1d"
};

// Exit codes: 0 done, 1 refused or failed, 2 usage, 3 cordond not reachable.
int run_workload_command(const std::string &command, const std::vector<std::string> &args,
                         const WorkloadCommandOptions &options);
bool is_workload_command(const std::string &command);

// "90s", "10m", "2h", "1d" (or plain seconds) -> seconds; -1 when malformed.
long parse_duration_seconds(const std::string &text);

} // namespace cordon
