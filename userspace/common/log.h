// Diagnostic logging to stderr (under systemd, stderr is the journal). Audit events do not go
// through here; they go through the structured Journal.
#pragma once

#include <string>
#include <string_view>

#include "common/result.h"

namespace cordon::log {

enum class Level { debug = 0, info = 1, warning = 2, error = 3 };

Result<Level> parse_level(std::string_view name);
void set_level(Level level);
Level level();
bool enabled(Level level);
void write(Level level, std::string_view message);

inline void debug(std::string_view m)
{
	if (enabled(Level::debug))
		write(Level::debug, m);
}
inline void info(std::string_view m)
{
	write(Level::info, m);
}
inline void warning(std::string_view m)
{
	write(Level::warning, m);
}
inline void error(std::string_view m)
{
	write(Level::error, m);
}

} // namespace cordon::log
