#include "common/host_pattern.h"

#include <algorithm>
#include <cctype>

namespace cordon {

Result<std::string> normalize_host_name(std::string_view text)
{
	std::string name(text);
	if (!name.empty() && name.back() == '.')
		name.pop_back(); // fully-qualified form
	if (name.empty() || name.size() > 253)
		return plain_error("'" + std::string(text) + "' is not a valid host name");
	size_t label = 0;
	for (char &c : name) {
		c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
		if (c == '.') {
			if (label == 0)
				return plain_error("'" + std::string(text) + "' has an empty label");
			label = 0;
			continue;
		}
		if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_'))
			return plain_error("'" + std::string(text) + "' has a character not allowed in host names");
		if (++label > 63)
			return plain_error("'" + std::string(text) + "' has a label longer than 63 characters");
	}
	if (label == 0)
		return plain_error("'" + std::string(text) + "' has an empty label");
	return name;
}

Result<HostPattern> HostPattern::parse(std::string_view text)
{
	HostPattern p;
	std::string_view rest = text;
	if (rest.substr(0, 2) == "*.") {
		p.wildcard_ = true;
		rest.remove_prefix(2);
	}
	if (rest.find('*') != std::string_view::npos)
		return plain_error("'" + std::string(text) +
		                   "': '*' is only allowed as a whole first label (\"*.example.com\")");
	auto name = normalize_host_name(rest);
	if (!name)
		return name.error();
	p.name_ = *name;
	return p;
}

bool HostPattern::matches(std::string_view host) const
{
	std::string h(host);
	if (!h.empty() && h.back() == '.')
		h.pop_back();
	std::transform(h.begin(), h.end(), h.begin(), [](unsigned char c) { return std::tolower(c); });
	if (!wildcard_)
		return h == name_;
	return h.size() > name_.size() + 1 && h.compare(h.size() - name_.size(), name_.size(), name_) == 0 &&
	       h[h.size() - name_.size() - 1] == '.';
}

bool any_matches(const std::vector<HostPattern> &patterns, std::string_view host)
{
	return std::any_of(patterns.begin(), patterns.end(), [&](const HostPattern &p) { return p.matches(host); });
}

} // namespace cordon
