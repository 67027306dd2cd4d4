// Strings from jobs (process names, cgroup names, SNI, commands) must not drive root's terminal:
// control characters, including the C1 range that UTF-8 encodes as C2 80..9F, are shown escaped.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

namespace cordon {

std::string printable(const std::string &s);
// A JSON string as its text; anything else as compact JSON.
std::string printable(const nlohmann::json &v);

} // namespace cordon
