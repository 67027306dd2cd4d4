// Small string helpers shared by parsers and the CLI.
#pragma once

#include <cctype>
#include <string_view>

namespace cordon {

// Without leading and trailing whitespace (spaces, tabs, CR, LF, ...).
inline std::string_view trim(std::string_view s)
{
	while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front())))
		s.remove_prefix(1);
	while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back())))
		s.remove_suffix(1);
	return s;
}

} // namespace cordon
