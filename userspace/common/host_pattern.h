// Host names and "*.suffix" patterns, matched case-insensitively. "*.cursor.sh" matches
// "api2.cursor.sh" and "a.b.cursor.sh", but not "cursor.sh" itself (list it separately).
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

namespace cordon {

class HostPattern {
public:
	static Result<HostPattern> parse(std::string_view text);

	bool matches(std::string_view host) const;
	bool is_wildcard() const { return wildcard_; }
	// The exact name, or the suffix without "*." for a wildcard.
	const std::string &name() const { return name_; }
	std::string to_string() const { return wildcard_ ? "*." + name_ : name_; }

private:
	std::string name_;
	bool wildcard_ = false;
};

Result<std::string> normalize_host_name(std::string_view text);
bool any_matches(const std::vector<HostPattern> &patterns, std::string_view host);

} // namespace cordon
