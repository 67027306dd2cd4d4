#include "ctl/printable.h"

#include <cstdio>

namespace cordon {

std::string printable(const std::string &s)
{
	std::string out;
	for (size_t i = 0; i < s.size(); i++) {
		const unsigned char c = static_cast<unsigned char>(s[i]);
		const bool c1 = c == 0xc2 && i + 1 < s.size() && static_cast<unsigned char>(s[i + 1]) >= 0x80 &&
		                static_cast<unsigned char>(s[i + 1]) <= 0x9f;
		if (c < 0x20 || c == 0x7f || c1) {
			char buf[8];
			std::snprintf(buf, sizeof(buf), "\\x%02x", c1 ? static_cast<unsigned char>(s[++i]) : c);
			out += buf;
		} else {
			out.push_back(static_cast<char>(c));
		}
	}
	return out;
}

std::string printable(const nlohmann::json &v)
{
	return printable(v.is_string() ? v.get<std::string>()
	                               : v.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
}

} // namespace cordon
