#include "common/log.h"

#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <string>

namespace cordon::log {
namespace {
std::atomic<Level> current_level{Level::info};

// sd-daemon priority prefixes, so journald files stderr lines at the right priority.
const char *prefix(Level level)
{
	switch (level) {
	case Level::debug:
		return "<7>";
	case Level::info:
		return "<6>";
	case Level::warning:
		return "<4>";
	case Level::error:
		return "<3>";
	}
	return "<6>";
}
} // namespace

Result<Level> parse_level(std::string_view name)
{
	if (name == "debug")
		return Level::debug;
	if (name == "info")
		return Level::info;
	if (name == "warning" || name == "warn")
		return Level::warning;
	if (name == "error")
		return Level::error;
	return plain_error("unknown log level '" + std::string(name) + "' (debug, info, warning, error)");
}

void set_level(Level level)
{
	current_level.store(level);
}
Level level()
{
	return current_level.load();
}
bool enabled(Level level)
{
	return static_cast<int>(level) >= static_cast<int>(current_level.load());
}

void write(Level level, std::string_view message)
{
	if (!enabled(level))
		return;
	std::string line = prefix(level);
	line.append(message);
	line.push_back('\n');
	// One write() per line so concurrent threads never interleave within a line.
	ssize_t rc = ::write(STDERR_FILENO, line.data(), line.size());
	(void)rc; // nowhere left to report a failing stderr
}

} // namespace cordon::log
