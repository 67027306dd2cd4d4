// `cordonctl mask ...`: the masking engine on a file, for policy authors and tests.
#pragma once

#include <istream>
#include <ostream>
#include <string>
#include <vector>

namespace cordon {

// `args` are the words after `mask`; `--config POLICY` takes the rules from that policy file
// instead of the embedded default:
//   [FILE]            FILE (or stdin when absent or "-") masked to `out`, every rule, both directions
//   --list            one rule id per line
//   --explain [FILE]  one finding per line: `rule offset length` (never the secret)
// Returns the exit code: 0 done, 1 failed (unreadable file, broken policy), 2 usage.
int run_mask_command(const std::vector<std::string> &args, std::istream &in, std::ostream &out, std::ostream &err);

extern const char *const kMaskUsage;

} // namespace cordon
