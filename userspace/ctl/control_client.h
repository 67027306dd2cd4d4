// Client side of the control socket protocol: one JSON line each way.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "common/result.h"

namespace cordon {

Result<nlohmann::json> control_request(const std::string &socket_path, const nlohmann::json &request);

} // namespace cordon
