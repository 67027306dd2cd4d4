#include "proxy/http_host.h"

#include <algorithm>
#include <cctype>

namespace cordon::proxy {
namespace {

bool is_token_char(char c)
{
	return std::isalnum(static_cast<unsigned char>(c)) ||
	       std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

// "GET /path HTTP/1.1": a method token, a target, the version. Judged on what has arrived, so
// a request line still coming in is not called "not HTTP" too early.
bool could_be_request_line(std::string_view line, bool whole)
{
	size_t i = 0;
	while (i < line.size() && is_token_char(line[i]))
		i++;
	if (i == line.size())
		return !whole && i > 0 && i <= 20;
	if (i == 0 || line[i] != ' ')
		return false;
	const size_t target_end = line.find(' ', i + 1);
	if (target_end == std::string_view::npos)
		return !whole;
	const std::string_view version = line.substr(target_end + 1);
	constexpr std::string_view kHttp = "HTTP/1.";
	if (!whole)
		return kHttp.substr(0, std::min(version.size(), kHttp.size())) == version.substr(0, kHttp.size());
	return version.size() == 8 && version.substr(0, 7) == kHttp && (version[7] == '0' || version[7] == '1');
}

std::string host_name(std::string_view value)
{
	while (!value.empty() && (value.front() == ' ' || value.front() == '\t'))
		value.remove_prefix(1);
	while (!value.empty() && (value.back() == ' ' || value.back() == '\t'))
		value.remove_suffix(1);
	if (!value.empty() && value.front() == '[') { // [v6]:port
		const size_t close = value.find(']');
		value = value.substr(1, close == std::string_view::npos ? std::string_view::npos : close - 1);
	} else if (const size_t colon = value.rfind(':'); colon != std::string_view::npos) {
		value = value.substr(0, colon);
	}
	while (!value.empty() && value.back() == '.') // "api2.cursor.sh." is the same name
		value.remove_suffix(1);
	std::string out(value);
	std::transform(out.begin(), out.end(), out.begin(), [](unsigned char c) { return std::tolower(c); });
	return out;
}

} // namespace

HttpHeadStatus parse_http_host(std::string_view data, std::string &host, size_t limit)
{
	host.clear();
	constexpr std::string_view kPreface = "PRI * HTTP/2.0\r\n";
	if (data.substr(0, kPreface.size()) == kPreface.substr(0, std::min(data.size(), kPreface.size())))
		return data.size() >= kPreface.size() ? HttpHeadStatus::Http2 : HttpHeadStatus::NeedMore;
	const size_t first_eol = data.find("\r\n");
	if (!could_be_request_line(data.substr(0, first_eol), first_eol != std::string_view::npos))
		return HttpHeadStatus::NotHttp;
	const size_t end = data.find("\r\n\r\n");
	if (end == std::string_view::npos)
		return data.size() >= limit ? HttpHeadStatus::TooLarge : HttpHeadStatus::NeedMore;
	if (end + 4 > limit)
		return HttpHeadStatus::TooLarge;
	// An absolute-form target ("GET http://api2.cursor.sh/ HTTP/1.1") names the host a server
	// uses, whatever the Host header says.
	const std::string_view line = data.substr(0, first_eol);
	const size_t target_at = line.find(' ') + 1;
	std::string_view target = line.substr(target_at, line.find(' ', target_at) - target_at);
	bool seen = false;
	for (std::string_view scheme : {"http://", "https://"}) {
		if (target.size() > scheme.size() &&
		    std::equal(scheme.begin(), scheme.end(), target.begin(),
		               [](char a, char b) { return a == std::tolower(static_cast<unsigned char>(b)); })) {
			target.remove_prefix(scheme.size());
			std::string_view authority = target.substr(0, target.find_first_of("/?#"));
			if (const size_t at = authority.rfind('@'); at != std::string_view::npos)
				authority.remove_prefix(at + 1);
			host = host_name(authority);
			seen = true;
		}
	}
	size_t pos = first_eol + 2;
	while (pos < end + 2) {
		const size_t eol = data.find("\r\n", pos);
		const std::string_view header = data.substr(pos, eol - pos);
		pos = eol + 2;
		const size_t colon = header.find(':');
		if (colon == std::string_view::npos || colon != 4)
			continue;
		std::string name(header.substr(0, 4));
		std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::tolower(c); });
		if (name != "host")
			continue;
		// Two Host headers: a server may pick either; the check must see the one that matters.
		const std::string value = host_name(header.substr(colon + 1));
		if (seen && value != host)
			return HttpHeadStatus::Ambiguous;
		host = value;
		seen = true;
	}
	return HttpHeadStatus::Complete;
}

} // namespace cordon::proxy
