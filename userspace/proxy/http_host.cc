#include "proxy/http_host.h"

#include <algorithm>
#include <cctype>
#include <vector>

namespace cordon::proxy {
namespace {

bool is_token_char(char c)
{
	return std::isalnum(static_cast<unsigned char>(c)) ||
	       std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

bool is_space(char c)
{
	return c == ' ' || c == '\t';
}

std::string lower(std::string_view s)
{
	std::string out(s);
	std::transform(out.begin(), out.end(), out.begin(), [](unsigned char c) { return std::tolower(c); });
	return out;
}

std::string_view trim(std::string_view v)
{
	while (!v.empty() && (is_space(v.front()) || v.front() == '\r'))
		v.remove_prefix(1);
	while (!v.empty() && (is_space(v.back()) || v.back() == '\r'))
		v.remove_suffix(1);
	return v;
}

// The lines of `data`, split on LF with a CR before it dropped.
std::vector<std::string_view> lines_of(std::string_view data)
{
	std::vector<std::string_view> out;
	size_t pos = 0;
	while (pos <= data.size()) {
		size_t eol = data.find('\n', pos);
		if (eol == std::string_view::npos)
			eol = data.size();
		std::string_view line = data.substr(pos, eol - pos);
		if (!line.empty() && line.back() == '\r')
			line.remove_suffix(1);
		out.push_back(line);
		pos = eol + 1;
	}
	return out;
}

// "GET /path HTTP/1.1", tokens apart by runs of spaces. Judged on what has arrived (`whole`:
// the line is complete), so a request line still coming in is not called "not HTTP" too early.
bool could_be_request_line(std::string_view line, bool whole)
{
	size_t i = 0;
	while (i < line.size() && is_token_char(line[i]))
		i++;
	// A method is at most 20 characters, complete or not: with the bound on a line in progress
	// only, a long method sent alone was NotHttp while the same bytes in one piece were a request
	// (found by tests/fuzz/http_head), so the verdict depended on how the client split its writes.
	// Nothing yet but blanks (trimmed away, as before a whole line) may still become a request.
	if (i == line.size())
		return !whole && i <= 20;
	if (i == 0 || i > 20 || !is_space(line[i]))
		return false;
	while (i < line.size() && is_space(line[i]))
		i++;
	const size_t target_end = line.find_first_of(" \t", i);
	if (target_end == std::string_view::npos)
		return !whole;
	size_t v = target_end;
	while (v < line.size() && is_space(line[v]))
		v++;
	const std::string_view version = trim(line.substr(v));
	constexpr std::string_view kHttp = "HTTP/1.";
	if (!whole)
		return kHttp.substr(0, std::min(version.size(), kHttp.size())) == version.substr(0, kHttp.size());
	return version.size() == 8 && version.substr(0, 7) == kHttp && (version[7] == '0' || version[7] == '1');
}

std::string host_name(std::string_view value)
{
	value = trim(value);
	if (!value.empty() && value.front() == '[') { // [v6]:port
		const size_t close = value.find(']');
		value = value.substr(1, close == std::string_view::npos ? std::string_view::npos : close - 1);
	} else if (const size_t colon = value.rfind(':'); colon != std::string_view::npos) {
		value = value.substr(0, colon);
	}
	while (!value.empty() && value.back() == '.') // "api2.cursor.sh." is the same name
		value.remove_suffix(1);
	return lower(value);
}

} // namespace

HttpHeadStatus parse_http_head(std::string_view data, HttpHead &head, size_t limit)
{
	head = {};
	// Servers skip empty lines before a request (RFC 9112, 2.2).
	while (!data.empty() && (data.front() == '\r' || data.front() == '\n'))
		data.remove_prefix(1);
	constexpr std::string_view kPreface = "PRI * HTTP/2.0\r\n";
	if (data.substr(0, kPreface.size()) == kPreface.substr(0, std::min(data.size(), kPreface.size()))) {
		if (data.size() >= kPreface.size() && kPreface.size() <= limit)
			return HttpHeadStatus::Http2;
		// A limit shorter than the preface is reached by its first bytes: NeedMore is only ever
		// under the limit (found by tests/fuzz/http_head).
		return data.size() >= limit ? HttpHeadStatus::TooLarge : HttpHeadStatus::NeedMore;
	}
	// A first line that does not end within `limit` is judged on its first `limit` bytes, as a
	// line still coming in: otherwise a long line was TooLarge when it came in pieces (the
	// verdict given at the limit) but NotHttp when it came whole (found by tests/fuzz/http_head).
	const size_t first_eol = data.find('\n');
	const bool first_whole = first_eol != std::string_view::npos && first_eol < limit;
	if (!could_be_request_line(trim(data.substr(0, first_whole ? first_eol : limit)), first_whole))
		return HttpHeadStatus::NotHttp;
	// The head ends at the first empty line, whatever ends the lines.
	size_t end = std::string_view::npos;
	for (size_t pos = first_eol; pos != std::string_view::npos && pos < data.size();
	     pos = data.find('\n', pos + 1)) {
		const size_t next = pos + 1 < data.size() && data[pos + 1] == '\r' ? pos + 2 : pos + 1;
		if (next < data.size() && data[next] == '\n') {
			end = next + 1;
			break;
		}
	}
	if (end == std::string_view::npos)
		return data.size() >= limit ? HttpHeadStatus::TooLarge : HttpHeadStatus::NeedMore;
	if (end > limit)
		return HttpHeadStatus::TooLarge;
	const auto lines = lines_of(data.substr(0, end));

	// An absolute-form target ("GET http://api2.cursor.sh/ HTTP/1.1") names the host a server
	// uses, whatever the Host header says.
	const std::string_view request_line = trim(lines[0]);
	size_t target_at = request_line.find_first_of(" \t");
	while (target_at < request_line.size() && is_space(request_line[target_at]))
		target_at++;
	std::string_view target = request_line.substr(target_at);
	target = target.substr(0, target.find_first_of(" \t"));
	bool seen = false;
	for (std::string_view scheme : {"http://", "https://"})
		if (target.size() > scheme.size() && lower(target.substr(0, scheme.size())) == scheme) {
			std::string_view authority = target.substr(scheme.size());
			authority = authority.substr(0, authority.find_first_of("/?#"));
			if (const size_t at = authority.rfind('@'); at != std::string_view::npos)
				authority.remove_prefix(at + 1);
			head.host = host_name(authority);
			seen = true;
		}

	for (size_t i = 1; i < lines.size(); i++) {
		const std::string_view line = lines[i];
		if (line.empty())
			break;
		if (is_space(line.front()))
			return HttpHeadStatus::Ambiguous; // obs-fold: joined to the line before, or not
		const size_t colon = line.find(':');
		if (colon == std::string_view::npos)
			continue;
		const std::string name = lower(trim(line.substr(0, colon)));
		if (name == "upgrade")
			head.upgrade = true;
		if (name != "host")
			continue;
		// Two Host headers: a server may pick either; the check must see the one that matters.
		const std::string value = host_name(line.substr(colon + 1));
		if (seen && value != head.host)
			return HttpHeadStatus::Ambiguous;
		head.host = value;
		seen = true;
	}
	return HttpHeadStatus::Complete;
}

} // namespace cordon::proxy
