// `cordonctl ca ...`: the host CA (create, show) and its place in the host trust stores.
#pragma once

#include <ostream>
#include <string>
#include <vector>

namespace cordon {

// `args` are the words after `ca`: init | show | install | uninstall | issue HOST.
// Returns the exit code: 0 done, 1 failed, 2 usage. Every subcommand is root-only.
int run_ca_command(const std::vector<std::string> &args, const std::string &state_dir, std::ostream &out,
                   std::ostream &err);

extern const char *const kCaUsage;

} // namespace cordon
