#include "daemon/policy_observer.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "common/unique_fd.h"
#include "proxy/message_decoder.h"
#include "proxy/rpc.h"

namespace cordon {
namespace {

int64_t epoch_us(std::chrono::system_clock::time_point t)
{
	return std::chrono::duration_cast<std::chrono::microseconds>(t.time_since_epoch()).count();
}

constexpr size_t kExcerptBytes = 400;
// Decoded messages nested deeper than this are not walked (the walk recurses): their raw bytes
// are searched instead.
constexpr int kMaxContentDepth = 128;

// Whether JSON text nests deeper than `limit`, by one scan (strings and escapes skipped).
bool json_depth_exceeds(std::string_view text, int limit)
{
	int depth = 0;
	bool in_string = false;
	for (size_t i = 0; i < text.size(); i++) {
		const char c = text[i];
		if (in_string) {
			if (c == '\\')
				i++;
			else if (c == '"')
				in_string = false;
		} else if (c == '"') {
			in_string = true;
		} else if (c == '[' || c == '{') {
			if (++depth > limit)
				return true;
		} else if (c == ']' || c == '}') {
			depth--;
		}
	}
	return false;
}
constexpr size_t kMaxCredentialBytes = 4096;

std::string base64(std::string_view in)
{
	std::string out(4 * ((in.size() + 2) / 3), '\0');
	int n = EVP_EncodeBlock(reinterpret_cast<unsigned char *>(out.data()),
	                        reinterpret_cast<const unsigned char *>(in.data()), static_cast<int>(in.size()));
	out.resize(n > 0 ? static_cast<size_t>(n) : 0);
	return out;
}

std::string what_of(const proxy::RequestInfo &r)
{
	return r.rpc.empty() ? r.method + " " + r.path.substr(0, r.path.find('?')) : r.rpc.full();
}

} // namespace

Result<InjectedCredential> load_credential(const policy::InjectSpec &spec)
{
	// O_NONBLOCK: a FIFO planted at the path must not stall the event loop (it is refused below).
	UniqueFd fd(::open(spec.credential_file.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK));
	if (!fd)
		return system_error("open " + spec.credential_file);
	struct stat st;
	if (::fstat(fd.get(), &st) != 0)
		return system_error("stat " + spec.credential_file);
	// The key is what a job must never hold: refuse a file anyone but root could read or swap.
	if (!S_ISREG(st.st_mode) || st.st_uid != 0 || (st.st_mode & 077) != 0)
		return plain_error(spec.credential_file +
		                   " must be a regular file owned by root with mode 0600 or stricter");
	std::string key(kMaxCredentialBytes + 1, '\0');
	ssize_t n = ::read(fd.get(), key.data(), key.size());
	if (n < 0)
		return system_error("read " + spec.credential_file);
	key.resize(static_cast<size_t>(n));
	if (key.size() > kMaxCredentialBytes)
		return plain_error(spec.credential_file + " is larger than a credential");
	while (!key.empty() && (key.back() == '\n' || key.back() == '\r' || key.back() == ' '))
		key.pop_back();
	if (key.empty() || key.find_first_of("\r\n") != std::string::npos)
		return plain_error(spec.credential_file + " must hold one line: the credential");
	if (spec.basic && key.find(':') == std::string::npos)
		return plain_error(spec.credential_file + " must hold user:password for basic");
	return InjectedCredential{spec.basic ? "Basic " + base64(key) : "Bearer " + key, key};
}

proxy::Verdict PolicyObserver::refuse(const policy::Decision &d) const
{
	std::string reason = "cordon: blocked by policy rule '" + d.rule + "'";
	if (!d.message.empty())
		reason += ": " + d.message;
	return proxy::Verdict::refuse("permission_denied", reason);
}

PolicyObserver::Exchange &PolicyObserver::plan(const proxy::RequestInfo &request)
{
	auto [it, fresh] = exchanges_.try_emplace(request.number);
	if (fresh) {
		it->second.plan = rules_->plan(caller_, request);
		it->second.decided = it->second.plan.decision;
		it->second.decided.decided_us = epoch_us(std::chrono::system_clock::now());
	}
	return it->second;
}

proxy::Verdict PolicyObserver::hold(Exchange &e, const proxy::RequestInfo &request, proxy::Direction direction,
                                    std::string excerpt)
{
	if (!approvals_) {
		e.decided.approval = "denied";
		return proxy::Verdict::refuse("permission_denied", "cordon: policy rule '" + e.decided.rule +
		                                                       "' needs an approval and none can be asked for");
	}
	ApprovalSubject s = who_;
	s.host = request.host;
	s.what = what_of(request);
	s.direction = proxy::to_string(direction);
	s.rule = e.decided.rule;
	s.rule_message = e.decided.message;
	if (excerpt.size() > kExcerptBytes)
		excerpt = excerpt.substr(0, kExcerptBytes) + "...";
	s.excerpt = std::move(excerpt);
	e.approval = approvals_->open(std::move(s));
	e.decided.approval_id = e.approval->id();
	if (auto decided = e.approval->poll())
		return *decided; // a standing grant, or too many waiting
	return proxy::Verdict::defer(e.approval);
}

proxy::Verdict PolicyObserver::on_headers(const proxy::RequestInfo &request, proxy::Direction direction, bool trailers,
                                          proxy::Headers &headers)
{
	if (direction != proxy::Direction::Request || trailers)
		return proxy::Verdict::forward();
	Exchange &e = plan(request);
	if (e.decided.action != policy::Action::Inject || !e.decided.inject)
		return proxy::Verdict::forward();
	auto credential = load_credential(*e.decided.inject);
	if (!credential)
		return proxy::Verdict::refuse("unavailable",
		                              "cordon: policy rule '" + e.decided.rule +
		                                  "' cannot inject its credential: " + credential.error().message());
	for (const auto &name : e.decided.inject->strip_headers)
		proxy::remove_header(headers, name);
	proxy::set_header(headers, "authorization", credential->header_value);
	e.credential = std::move(credential->key);
	e.inject = e.decided.inject; // kept: a content rule may replace e.decided later
	return proxy::Verdict::forward();
}

proxy::Verdict PolicyObserver::on_request(const proxy::RequestInfo &request)
{
	Exchange &e = plan(request);
	if (e.decided.action == policy::Action::Block)
		return refuse(e.decided);
	if (e.decided.action == policy::Action::Approve)
		return hold(e, request, proxy::Direction::Request, request.method + " " + request.path);
	return proxy::Verdict::forward();
}

proxy::Verdict PolicyObserver::on_message(const proxy::RequestInfo &request, const proxy::Message &message)
{
	auto it = exchanges_.find(request.number);
	if (it == exchanges_.end())
		return proxy::Verdict::forward();
	Exchange &e = it->second;
	// Content rules first: a message an inject exchange carries is judged like any other.
	if (auto verdict = judge(e, request, message); verdict.kind != proxy::Verdict::Kind::Forward)
		return verdict;
	if (!e.credential.empty() && e.inject && !e.inject->basic && message.direction == proxy::Direction::Request) {
		// A key sent in the body ({"apiKey": ...}, as some CLIs do for exchange_user_api_key) is
		// replaced too: the held key is what Cursor sees.
		nlohmann::json body = nlohmann::json::parse(message.payload, nullptr, false);
		if (body.is_object() && body.contains("apiKey") && body["apiKey"].is_string()) {
			body["apiKey"] = e.credential;
			return proxy::Verdict::replace(body.dump());
		}
	}
	return proxy::Verdict::forward();
}

proxy::Verdict PolicyObserver::judge(Exchange &e, const proxy::RequestInfo &request, const proxy::Message &message)
{
	if (e.plan.content_rules.empty())
		return proxy::Verdict::forward();
	// Content rules read the message as `cordonctl watch` shows it: decoded, with field names.
	const bool json_codec = message.end_of_stream || request.content_type.find("json") != std::string::npos;
	std::string text =
	    decoder_ ? decoder_->to_json(request.rpc, message.direction, message.payload, json_codec) : std::string();
	// Parts the decoder could not show (past its output limit, or as hex), or nesting too deep
	// to walk safely, are searched raw.
	const bool too_deep = json_depth_exceeds(text, kMaxContentDepth);
	nlohmann::json decoded = too_deep ? nlohmann::json() : nlohmann::json::parse(text, nullptr, false);
	if (too_deep || decoded.is_discarded())
		decoded = nlohmann::json(std::string()); // nothing decoded: only the raw bytes below
	const bool partial = too_deep || text.find("\"#truncated\":true") != std::string::npos ||
	                     text.find("\"#hex\"") != std::string::npos ||
	                     text.find("\"#raw_hex\"") != std::string::npos || text.empty();
	auto d = rules_->decide_message(e.plan, message.direction, decoded,
	                                partial ? std::string_view(message.payload) : std::string_view());
	if (!d)
		return proxy::Verdict::forward();
	if (d->action == policy::Action::Block || d->action == policy::Action::Approve) {
		e.decided = *d;
		e.decided.decided_us = epoch_us(std::chrono::system_clock::now());
		e.decided.on_message = true;
		e.decided.response = message.direction == proxy::Direction::Response;
		e.decided.message_index = message.index;
	}
	if (d->action == policy::Action::Block)
		return refuse(*d);
	if (d->action == policy::Action::Approve) {
		return hold(e, request, message.direction, too_deep ? message.payload.substr(0, kExcerptBytes) : text);
	}
	return proxy::Verdict::forward();
}

policy::Decision PolicyObserver::take(uint64_t number)
{
	auto it = exchanges_.find(number);
	if (it == exchanges_.end())
		return {};
	policy::Decision d = std::move(it->second.decided);
	if (const auto &a = it->second.approval) {
		d.approval = a->state_name();
		d.approver = a->approver();
		if (a->answered_at().time_since_epoch().count() != 0)
			d.answered_us = epoch_us(a->answered_at());
	}
	exchanges_.erase(it);
	return d;
}

} // namespace cordon
