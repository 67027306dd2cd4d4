// Client side of the control socket protocol: one JSON line each way.
#pragma once

#include <chrono>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>

#include "common/result.h"

namespace cordon {

// One request, one answer; an error if none comes within `timeout`.
Result<nlohmann::json> control_request(const std::string &socket_path, const nlohmann::json &request,
                                       std::chrono::seconds timeout = std::chrono::seconds(10));

// Sends `request` and hands every line that follows to `on_line` until it returns false, the
// daemon closes the session, or `seconds` pass (0: no limit).
Status control_stream(const std::string &socket_path, const nlohmann::json &request,
                      const std::function<bool(const nlohmann::json &)> &on_line, int seconds);

} // namespace cordon
