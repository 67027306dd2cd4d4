// HTTP/1.1 on both sides, parsed with Boost.Beast's incremental parser (no buffering of bodies
// beyond what the message engine holds): one exchange at a time, keep-alive between them.
// Streaming bodies (Cursor's text/event-stream fallback carrying binary Connect envelopes) are
// forwarded piece by piece as they arrive, re-chunked toward the job.
#include <algorithm>
#include <boost/beast/http/basic_parser.hpp>
#include <boost/beast/http/error.hpp>
#include <chrono>
#include <functional>
#include <limits>
#include <optional>

#include "proxy/byte_queue.h"
#include "proxy/http_bridge.h"

namespace cordon::proxy {
namespace {

namespace http = boost::beast::http;
using error_code = boost::beast::error_code;
using string_view = boost::beast::string_view;
using Clock = std::chrono::steady_clock;

std::string lower(string_view s)
{
	std::string out(s.data(), s.size());
	std::transform(out.begin(), out.end(), out.begin(), [](unsigned char c) { return std::tolower(c); });
	return out;
}

// Beast parser events, delivered to the bridge.
struct ParserEvents {
	std::function<void(string_view method, string_view target, int version)> request_line;
	std::function<void(int status, string_view reason, int version)> status_line;
	std::function<void(string_view name, string_view value)> field;
	std::function<void()> header_done;
	std::function<void(std::span<const uint8_t>)> body;
	std::function<void()> finish;
};

template <bool IsRequest> class EventParser : public http::basic_parser<IsRequest> {
public:
	EventParser(ParserEvents &events, size_t header_limit) : events_(events)
	{
		this->header_limit(static_cast<std::uint32_t>(header_limit));
		// Bodies stream through; the message engine bounds them. Not boost::none: Boost 1.74
		// compares `content_length > body_limit_` against the empty optional, which is always true.
		this->body_limit(std::numeric_limits<std::uint64_t>::max());

		this->eager(true);
	}

	// put(), except that a fragment Beast asked more for is not given back to it under 5 bytes:
	// Boost 1.74 asserts n >= 5 when a first, final chunk ("0\r\n") it asked more for comes
	// back with 4 (boostorg/beast#2861; found by tests/fuzz/h1_bridge), and cordond keeps its
	// asserts. A fragment Beast asked more for never completes a message under 5 bytes (the
	// shortest end, "0\r\n\r\n", has 5), so holding it back delays nothing that could finish.
	size_t feed(std::string_view data, error_code &ec)
	{
		if (asked_more_ && data.size() < 5) {
			ec = http::error::need_more;
			return 0;
		}
		const size_t n = this->put(boost::asio::const_buffer(data.data(), data.size()), ec);
		asked_more_ = ec == http::error::need_more;
		return n;
	}

private:
	void on_request_impl(http::verb, string_view method, string_view target, int version, error_code &) override
	{
		events_.request_line(method, target, version);
	}
	void on_response_impl(int status, string_view reason, int version, error_code &) override
	{
		events_.status_line(status, reason, version);
	}
	void on_field_impl(http::field, string_view name, string_view value, error_code &) override
	{
		events_.field(name, value);
	}
	void on_header_impl(error_code &) override { events_.header_done(); }
	void on_body_init_impl(boost::optional<std::uint64_t> const &, error_code &) override {}
	std::size_t on_body_impl(string_view body, error_code &) override
	{
		events_.body({reinterpret_cast<const uint8_t *>(body.data()), body.size()});
		return body.size();
	}
	void on_chunk_header_impl(std::uint64_t, string_view, error_code &) override {}
	std::size_t on_chunk_body_impl(std::uint64_t, string_view body, error_code &) override
	{
		events_.body({reinterpret_cast<const uint8_t *>(body.data()), body.size()});
		return body.size();
	}
	void on_finish_impl(error_code &) override { events_.finish(); }

	ParserEvents &events_;
	bool asked_more_ = false;
};

// How a body is framed on the way out.
enum class Framing { None, Length, Chunked, UntilClose };

class H1Bridge final : public HttpBridge {
public:
	explicit H1Bridge(BridgeSettings settings) : settings_(std::move(settings))
	{
		req_events_.request_line = [this](string_view m, string_view t, int v) { request_line(m, t, v); };
		// Fields after the head are chunked trailers: never headers (they would reach Cursor as
		// headers nobody inspected). HTTP/1.1 trailers carry nothing Cursor uses: dropped.
		req_events_.field = [this](string_view n, string_view v) {
			if (!ex_->request_head_parsed)
				ex_->request_fields.emplace_back(std::string(n), std::string(v));
		};
		req_events_.header_done = [this] { request_head_done(); };
		req_events_.body = [this](std::span<const uint8_t> d) { request_body(d); };
		req_events_.finish = [this] { request_finished(); };
		resp_events_.status_line = [this](int s, string_view r, int v) { status_line(s, r, v); };
		resp_events_.field = [this](string_view n, string_view v) {
			if (!ex_->response_head_parsed)
				ex_->response_fields.emplace_back(std::string(n), std::string(v));
		};
		resp_events_.header_done = [this] { response_head_done(); };
		resp_events_.body = [this](std::span<const uint8_t> d) { response_body(d); };
		resp_events_.finish = [this] { response_finished(); };
	}

	Status on_client_data(std::span<const uint8_t> data) override
	{
		client_in_.append({reinterpret_cast<const char *>(data.data()), data.size()});
		Status st = parse_client();
		settle();
		return st.ok() ? take_error() : st;
	}

	Status on_upstream_data(std::span<const uint8_t> data) override
	{
		upstream_in_.append({reinterpret_cast<const char *>(data.data()), data.size()});
		Status st = parse_upstream();
		settle();
		return st.ok() ? take_error() : st;
	}

	void on_client_eof() override
	{
		client_eof_ = true;
		if (ex_ && !ex_->response_done && ex_->result == "ok")
			ex_->result = "client_closed";
		closing_ = true;
	}

	void on_upstream_eof(bool clean) override
	{
		upstream_eof_ = true;
		if (ex_ && resp_parser_ && ex_->response_started && !ex_->response_done) {
			if (!clean) {
				// TCP closed without TLS close_notify: a truncation, not the end of the body.
				fail_response(
				    "upstream connection cut without a TLS close_notify (truncated response)");
			} else {
				// A body delimited by the end of the connection ends here.
				error_code ec;
				resp_parser_->put_eof(ec);
				if (ec && !ex_->response_done)
					fail_response("upstream closed the connection in the middle of a response");
			}
		} else if (ex_ && !ex_->response_done) {
			// Nothing answered (the request may still be arriving): say so rather than hang.
			ex_->keep_alive = false;
			local_response(
			    *ex_, 502,
			    "{\"error\":" +
			        rpc::connect_unary_error_body(
			            "unavailable", "cordon: upstream closed the connection before answering") +
			        "}",
			    "application/json");
		}
		closing_ = true;
		settle();
	}

	Status produce_client_output(std::string &out, size_t budget) override
	{
		move(client_out_, out, budget);
		return take_error();
	}
	Status produce_upstream_output(std::string &out, size_t budget) override
	{
		move(upstream_out_, out, budget);
		return take_error();
	}

	// The request body keeps flowing; only the next request waits for this response.
	bool wants_client_data() const override { return !client_eof_ && !closing_ && (!ex_ || !ex_->request_done); }

	bool wants_upstream_data() const override { return !upstream_eof_; }
	bool done() const override { return closing_ && client_out_.empty() && (!ex_ || ex_->response_done); }
	std::string protocol() const override { return "http/1.1"; }
	uint64_t exchanges() const override { return exchanges_; }

	std::optional<Clock::time_point> hold_deadline() const override
	{
		if (!ex_ || ex_->refused)
			return std::nullopt;
		std::optional<Clock::time_point> earliest;
		for (const auto *pipe : {ex_->request_pipe.get(), ex_->response_pipe.get()})
			if (auto due = pipe ? pipe->hold_deadline() : std::nullopt;
			    due && (!earliest || *due < *earliest))
				earliest = due;
		return earliest;
	}

	Status release_held(Clock::time_point now) override
	{
		if (!ex_ || ex_->refused)
			return take_error();
		Exchange &e = *ex_;
		if (e.request_pipe && !e.request_ended &&
		    (e.request_pipe->waiting() || (!e.request_done && !e.request_pipe->holds_whole_body()))) {
			std::string out;
			Status st = e.request_pipe->release_held(now, out);
			if (!st)
				bad_input(e, Direction::Request, st.error().message());
			else if (e.request_pipe->refusal())
				refuse(e, *e.request_pipe->refusal());
			else if (e.request_pipe->waiting())
				append_request_body(e, out);
			else if (e.request_done)
				end_request_body(e, out); // approved after the body ended
			else
				append_request_body(e, out);
		}
		if (!e.refused && e.response_pipe && !e.response_ended &&
		    (e.response_pipe->waiting() || (!e.response_done && !e.response_pipe->holds_whole_body()))) {
			std::string out;
			Status st = e.response_pipe->release_held(now, out);
			if (!st)
				bad_input(e, Direction::Response, st.error().message());
			else if (e.response_pipe->refusal())
				refuse(e, *e.response_pipe->refusal());
			else if (!e.response_pipe->waiting() && e.response_end_pending)
				end_response_body(e, out);
			else
				append_body(client_out_, e.response_framing, out);
		}
		settle();
		return take_error();
	}

private:
	struct Exchange {
		// Declared, so that clang (the fuzz build, tests/fuzz/h1_bridge) sees a default
		// constructor for ex_.emplace() before it has read the member initializers below.
		Exchange() {}
		RequestInfo request;
		std::vector<std::pair<std::string, std::string>> request_fields, response_fields; // as received
		Headers request_headers, response_headers;                                        // lower-case names
		std::string target;
		int version = 11;
		std::unique_ptr<BodyPipe> request_pipe, response_pipe;
		std::string request_held; // a held (unary) body, transformed
		Framing request_framing = Framing::None, response_framing = Framing::None;
		bool request_forwarded = false, request_done = false;
		// The body has been passed on in full (request_done: only received in full: a message
		// may still wait for approval).
		bool request_ended = false, response_ended = false;
		bool response_end_pending = false; // the response ended while a message waited
		bool request_head_parsed = false, response_head_parsed = false; // later fields are trailers
		int status = 0;
		std::string reason;
		int response_version = 11;
		ResponseInfo response;
		bool response_started = false, response_head_sent = false, response_done = false;
		bool refused = false;
		bool head_request = false;
		bool keep_alive = true;
		Clock::time_point first_response_byte{};
		std::string result = "ok", error;
	};

	// --- request side ------------------------------------------------------------------

	Status parse_client()
	{
		while (!client_in_.empty() && !ex_done_waiting()) {
			if (!req_parser_) {
				if (ex_)
					break; // one exchange at a time: the next request waits for this response
				req_parser_ =
				    std::make_unique<EventParser<true>>(req_events_, settings_.limits.max_header_bytes);
			}
			error_code ec;
			auto view = client_in_.view();
			size_t n = req_parser_->feed(view, ec);
			client_in_.consume(n);
			if (ec == http::error::need_more)
				break;
			if (ec == http::error::header_limit) {
				bad_request("the request head is over tls.max_header_bytes (" +
				                std::to_string(settings_.limits.max_header_bytes) + ")",
				            431);
				break;
			}
			if (ec) {
				bad_request(ec.message());
				break;
			}
			if (req_parser_->is_done())
				req_parser_.reset();
			if (n == 0)
				break;
		}
		return take_error();
	}

	bool ex_done_waiting() const { return ex_ && ex_->request_done; }

	void request_line(string_view method, string_view target, int version)
	{
		ex_.emplace();
		ex_->request.connection = settings_.connection;
		ex_->request.number = ++exchanges_;
		ex_->request.http = "1.1";
		ex_->request.started = Clock::now();
		ex_->request.method = std::string(method);
		ex_->target = std::string(target);
		ex_->request.path = ex_->target;
		ex_->version = version;
		ex_->head_request = method == "HEAD";
	}

	void request_head_done()
	{
		Exchange &e = *ex_;
		e.request_head_parsed = true;
		size_t hosts = 0, codings = 0;
		for (auto &[name, value] : e.request_fields) {
			e.request_headers.push_back({lower(name), value});
			hosts += e.request_headers.back().name == "host";
			codings += e.request_headers.back().name == "transfer-encoding";
		}
		RequestInfo &r = e.request;
		std::string host = lower(header_value(e.request_headers, "host"));
		if (auto colon = host.rfind(':'); colon != std::string::npos && host.find(']') == std::string::npos)
			host.resize(colon);
		while (!host.empty() && host.back() == '.')
			host.pop_back();
		r.host = host;
		r.content_type = header_value(e.request_headers, "content-type");
		r.content_encoding = header_value(e.request_headers, "content-encoding");
		r.stream_encoding = header_value(e.request_headers, "connect-content-encoding");
		auto normalized = rpc::normalize_path(r.path);
		r.rpc = normalized ? rpc::parse_rpc_path(*normalized) : rpc::RpcName{};
		r.protocol = rpc::classify_request(r.method, normalized ? *normalized : r.path, r.content_type);
		const std::string te = lower(header_value(e.request_headers, "transfer-encoding"));
		// Each of these would let cordon and Cursor read the request differently.
		if (hosts != 1)
			return bad_request(hosts == 0 ? "no Host header" : "more than one Host header");
		// Judged on every Transfer-Encoding line: Beast reads the body as chunked from the last,
		// the forwarded framing came from the first, so "Transfer-Encoding:" then
		// "Transfer-Encoding: chunked" sent the body upstream unframed, where it would be read
		// as requests nobody inspected (found by tests/fuzz/h1_bridge).
		if (codings > 1 || (codings == 1 && te != "chunked"))
			return bad_request("Transfer-Encoding other than one \"chunked\"");
		if (!normalized)
			return bad_request(normalized.error().message());
		if (r.host != settings_.default_host)
			return refuse(e, Verdict::refuse("permission_denied", "cordon: request for " + r.host +
			                                                          " on a connection for " +
			                                                          settings_.default_host));
		const std::string connection = lower(header_value(e.request_headers, "connection"));
		e.keep_alive = e.version >= 11 ? connection.find("close") == std::string::npos
		                               : connection.find("keep-alive") != std::string::npos;
		if (!settings_.upstream_unavailable.empty())
			return refuse(e, Verdict::refuse("unavailable", settings_.upstream_unavailable));
		if (r.method == "CONNECT" || has_header(e.request_headers, "upgrade"))
			return refuse(
			    e, Verdict::refuse("permission_denied",
			                       "cordon: protocol upgrades and tunnels are not allowed to Cursor"));
		if (Verdict v = inspect_head(e, Direction::Request); v.kind == Verdict::Kind::Refuse)
			return refuse(e, v);
		std::shared_ptr<Deferred> held;
		for (ExchangeObserver *o : settings_.observers) {
			Verdict v = o->on_request(r);
			if (v.kind == Verdict::Kind::Refuse)
				return refuse(e, v);
			if (v.kind == Verdict::Kind::Defer && !held)
				held = std::move(v.deferred);
		}
		e.request_pipe =
		    std::make_unique<BodyPipe>(Direction::Request, r, r.protocol, r.content_encoding, r.stream_encoding,
		                               settings_.observers, settings_.limits, r.content_type);
		if (held)
			e.request_pipe->hold_until(std::move(held)); // nothing goes upstream until decided
		if (!e.request_pipe->holds_whole_body() && !e.request_pipe->waiting())
			forward_request_head(e, std::nullopt);
	}

	// Lets observers rewrite header values (and the request target, as ":path"); what they changed
	// is what gets forwarded.
	Verdict inspect_head(Exchange &e, Direction d)
	{
		const bool request = d == Direction::Request;
		Headers &lowered = request ? e.request_headers : e.response_headers;
		auto &fields = request ? e.request_fields : e.response_fields;
		Headers inspected;
		if (request)
			inspected.push_back({":path", e.target});
		inspected.insert(inspected.end(), lowered.begin(), lowered.end());
		Verdict v = inspect_headers(settings_.observers, e.request, d, false, inspected);
		if (v.kind == Verdict::Kind::Refuse)
			return v;
		const size_t skip = request ? 1 : 0;
		if (request) {
			if (inspected.empty() || inspected[0].name != ":path")
				return Verdict::refuse("internal", "cordon: header inspection lost the request target");
			e.target = inspected[0].value;
			e.request.path = e.target;
		}
		bool same_names = inspected.size() == lowered.size() + skip;
		for (size_t i = 0; same_names && i < lowered.size(); i++)
			same_names = inspected[i + skip].name == lowered[i].name;
		if (!same_names) {
			// An observer added or removed headers (inject): forward what it left, in its order.
			lowered.assign(inspected.begin() + static_cast<std::ptrdiff_t>(skip), inspected.end());
			fields.clear();
			for (const auto &h : lowered)
				fields.emplace_back(h.name, h.value);
			return Verdict::forward();
		}
		for (size_t i = 0; i < lowered.size(); i++) {
			if (inspected[i + skip].value == lowered[i].value)
				continue;
			lowered[i].value = inspected[i + skip].value;
			fields[i].second = lowered[i].value; // fields[i] is where lowered[i] came from
		}
		return Verdict::forward();
	}

	// Sends the request line and headers upstream. `length`: the final body length when known
	// (a held body); otherwise the original framing is kept where the body cannot change.
	void forward_request_head(Exchange &e, std::optional<size_t> length)
	{
		const bool had_length = has_header(e.request_headers, "content-length");
		const bool had_chunked = lower(header_value(e.request_headers, "transfer-encoding")) == "chunked";
		if (length)
			e.request_framing = (*length > 0 || had_length) ? Framing::Length : Framing::None;
		else if (had_chunked || (had_length && rpc::is_enveloped(e.request.protocol)))
			e.request_framing = Framing::Chunked; // envelopes may be rewritten: lengths are ours
		else if (had_length)
			e.request_framing = Framing::Length;
		else
			e.request_framing = Framing::None;
		std::string head = e.request.method + " " + e.target + " HTTP/1.1\r\n";
		for (auto &[name, value] : e.request_fields) {
			std::string n = lower(name);
			if (n == "content-length" || n == "transfer-encoding")
				continue;
			head += name + ": " + value + "\r\n";
		}
		if (e.request_framing == Framing::Length)
			head += "Content-Length: " +
			        std::to_string(
			            length ? *length : std::stoull(header_value(e.request_headers, "content-length"))) +
			        "\r\n";
		else if (e.request_framing == Framing::Chunked)
			head += "Transfer-Encoding: chunked\r\n";
		head += "\r\n";
		upstream_out_.append(head);
		e.request_forwarded = true;
		// The answer may come before the body ends (an early 413, 100-continue): read it.
		if (!resp_parser_) {
			resp_parser_ =
			    std::make_unique<EventParser<false>>(resp_events_, settings_.limits.max_header_bytes);
			if (e.head_request)
				resp_parser_->skip(true);
		}
	}

	void append_body(ByteQueue &out, Framing framing, std::string_view data)
	{
		if (data.empty())
			return;
		if (framing == Framing::Chunked) {
			char size[20];
			std::snprintf(size, sizeof(size), "%zx\r\n", data.size());
			out.append(size);
			out.append(data);
			out.append("\r\n");
		} else {
			out.append(data);
		}
	}

	void request_body(std::span<const uint8_t> data)
	{
		Exchange &e = *ex_;
		if (e.refused || !e.request_pipe)
			return;
		std::string out;
		Status st = e.request_pipe->write(data, out);
		if (!st)
			return bad_input(e, Direction::Request, st.error().message());
		if (e.request_pipe->refusal())
			return refuse(e, *e.request_pipe->refusal());
		append_request_body(e, out);
	}

	// Body bytes free to go upstream. Before the head went (a held body, or a request waiting
	// for approval) they wait in request_held.
	void append_request_body(Exchange &e, std::string_view out)
	{
		if (!e.request_forwarded && !e.request_pipe->holds_whole_body() && !e.request_pipe->waiting()) {
			forward_request_head(e, std::nullopt); // approved: the head goes first
			append_body(upstream_out_, e.request_framing, e.request_held);
			e.request_held.clear();
		}
		if (e.request_forwarded)
			append_body(upstream_out_, e.request_framing, out);
		else
			e.request_held += out;
	}

	void request_finished()
	{
		Exchange &e = *ex_;
		e.request_done = true;
		if (e.refused || !e.request_pipe)
			return;
		std::string out;
		Status st = e.request_pipe->finish(out);
		if (!st)
			return bad_input(e, Direction::Request, st.error().message());
		if (e.request_pipe->refusal())
			return refuse(e, *e.request_pipe->refusal());
		if (e.request_pipe->waiting()) {
			e.request_held += out; // release_held() ends it once decided
			return;
		}
		end_request_body(e, out);
	}

	// The whole request body is in and decided: the rest goes, then its end.
	void end_request_body(Exchange &e, std::string_view out)
	{
		e.request_ended = true;
		if (e.request_pipe->holds_whole_body()) {
			e.request_held += out;
			forward_request_head(e, e.request_held.size());
			upstream_out_.append(e.request_held);
			e.request_held.clear();
		} else {
			append_request_body(e, out);
			if (e.request_framing == Framing::Chunked)
				upstream_out_.append("0\r\n\r\n");
		}
	}

	// --- response side -----------------------------------------------------------------

	Status parse_upstream()
	{
		// A response that ended while a message waits for approval (response_end_pending) leaves
		// its parser done but the exchange open: Beast must not be fed past a message's end (it
		// asserts, found by tests/fuzz/h1_bridge); what follows waits in upstream_in_.
		while (!upstream_in_.empty() && resp_parser_ && !resp_parser_->is_done()) {
			error_code ec;
			auto view = upstream_in_.view();
			size_t n = resp_parser_->feed(view, ec);
			upstream_in_.consume(n);
			// Parsers are replaced or dropped here, never inside their own callbacks.
			if (replace_response_parser_) {
				replace_response_parser_ = false;
				resp_parser_ = std::make_unique<EventParser<false>>(resp_events_,
				                                                    settings_.limits.max_header_bytes);
				continue;
			}
			if (ex_ && ex_->response_done) {
				resp_parser_.reset();
				break;
			}
			if (ec == http::error::need_more)
				break;
			if (ec) {
				fail_response("malformed response from upstream: " + ec.message());
				break;
			}
			if (n == 0)
				break;
		}
		if (resp_parser_ && ex_ && ex_->response_done)
			resp_parser_.reset();
		return take_error();
	}

	void status_line(int status, string_view reason, int version)
	{
		Exchange &e = *ex_;
		e.status = status;
		e.reason = std::string(reason);
		e.response_version = version;
		e.response_fields.clear();
	}

	void response_head_done()
	{
		Exchange &e = *ex_;
		// Beast takes any three digits: "020" would go on to the job as "HTTP/1.1 20", which is
		// no status line at all (found by tests/fuzz/h1_bridge).
		if (e.status < 100)
			return fail_response("malformed response from upstream: status " + std::to_string(e.status));
		if (e.status >= 100 && e.status < 200) {
			// 100 Continue and friends: pass on, keep waiting for the final response.
			std::string head = "HTTP/1.1 " + std::to_string(e.status) + " " + e.reason + "\r\n";
			for (auto &[name, value] : e.response_fields)
				head += name + ": " + value + "\r\n";
			client_out_.append(head + "\r\n");
			pending_informational_ = true;
			return;
		}
		e.response_started = true;
		e.response_head_parsed = true;
		e.first_response_byte = Clock::now();
		for (auto &[name, value] : e.response_fields)
			e.response_headers.push_back({lower(name), value});
		ResponseInfo &r = e.response;
		r.status = e.status;
		r.content_type = header_value(e.response_headers, "content-type");
		r.content_encoding = header_value(e.response_headers, "content-encoding");
		r.stream_encoding = header_value(e.response_headers, "connect-content-encoding");
		r.protocol = rpc::classify_response(e.request.protocol, r.status, r.content_type);
		if (lower(header_value(e.response_headers, "connection")).find("close") != std::string::npos ||
		    e.response_version < 11)
			e.keep_alive = false;
		if (Verdict v = inspect_head(e, Direction::Response); v.kind == Verdict::Kind::Refuse)
			return refuse(e, v);
		for (ExchangeObserver *o : settings_.observers)
			o->on_response(e.request, r);
		if (e.refused)
			return;
		e.response_pipe = std::make_unique<BodyPipe>(Direction::Response, e.request, r.protocol,
		                                             r.content_encoding, r.stream_encoding, settings_.observers,
		                                             settings_.limits, r.content_type);
		if (!e.response_pipe->holds_whole_body())
			send_response_head(e, std::nullopt);
	}

	void send_response_head(Exchange &e, std::optional<size_t> length)
	{
		const bool no_body = e.head_request || e.status == 204 || e.status == 304;
		const bool had_length = has_header(e.response_headers, "content-length");
		if (no_body)
			e.response_framing = Framing::None;
		else if (length)
			e.response_framing = Framing::Length;
		else if (had_length && !rpc::is_enveloped(e.response.protocol))
			e.response_framing = Framing::Length;
		else if (e.version >= 11)
			e.response_framing = Framing::Chunked;
		else
			e.response_framing = Framing::UntilClose;
		if (e.response_framing == Framing::UntilClose)
			e.keep_alive = false;
		std::string head = "HTTP/1.1 " + std::to_string(e.status) + " " + e.reason + "\r\n";
		for (auto &[name, value] : e.response_fields) {
			std::string n = lower(name);
			if (n == "transfer-encoding" || (n == "content-length" && !no_body))
				continue;
			head += name + ": " + value + "\r\n";
		}
		if (e.response_framing == Framing::Length)
			head +=
			    "Content-Length: " +
			    std::to_string(length ? *length
			                          : std::stoull(header_value(e.response_headers, "content-length"))) +
			    "\r\n";
		else if (e.response_framing == Framing::Chunked)
			head += "Transfer-Encoding: chunked\r\n";
		head += "\r\n";
		client_out_.append(head);
		e.response_head_sent = true;
	}

	void response_body(std::span<const uint8_t> data)
	{
		Exchange &e = *ex_;
		if (e.refused || !e.response_pipe)
			return;
		std::string out;
		Status st = e.response_pipe->write(data, out);
		if (!st)
			return bad_input(e, Direction::Response, st.error().message());
		if (e.response_pipe->refusal())
			return refuse(e, *e.response_pipe->refusal());
		if (e.response_pipe->holds_whole_body())
			response_held_ += out;
		else
			append_body(client_out_, e.response_framing, out);
	}

	void response_finished()
	{
		if (pending_informational_) {
			pending_informational_ = false;
			replace_response_parser_ = true; // the final response follows on a fresh parser
			return;
		}
		Exchange &e = *ex_;
		if (!e.refused && e.response_pipe) {
			std::string out;
			Status st = e.response_pipe->finish(out);
			if (!st)
				return bad_input(e, Direction::Response, st.error().message());
			if (e.response_pipe->refusal())
				return refuse(e, *e.response_pipe->refusal());
			if (e.response_pipe->waiting()) {
				// A message waits for approval: the response ends once it is decided.
				if (e.response_pipe->holds_whole_body())
					response_held_ += out;
				else
					append_body(client_out_, e.response_framing, out);
				e.response_end_pending = true;
				return;
			}
			return end_response_body(e, out);
		}
		complete(e);
	}

	void end_response_body(Exchange &e, std::string_view out)
	{
		e.response_end_pending = false;
		e.response_ended = true;
		if (e.response_pipe->holds_whole_body()) {
			response_held_ += out;
			send_response_head(e, response_held_.size());
			client_out_.append(response_held_);
			response_held_.clear();
		} else {
			append_body(client_out_, e.response_framing, out);
			if (e.response_framing == Framing::Chunked)
				client_out_.append("0\r\n\r\n");
		}
		complete(e);
	}

	// May run inside a parser callback: only marks; settle() moves on to the next exchange.
	void complete(Exchange &e)
	{
		e.response_done = true;
		report(e);
		// A request body still held (waiting for approval) never reaches the upstream whole: the
		// connection cannot carry another request after it.
		const bool request_unfinished = e.request_pipe && !e.request_ended;
		if (!e.keep_alive || e.refused || e.response_framing == Framing::UntilClose || request_unfinished)
			closing_ = true; // the upstream connection's state after a refusal is unknown
	}

	// Called at the end of every public entry point, outside any parser callback: retires a
	// finished exchange and starts on a request that may already be waiting (pipelining).
	void settle()
	{
		while (ex_ && ex_->response_done && ex_->request_done) {
			ex_.reset();
			response_held_.clear();
			resp_parser_.reset();
			if (closing_)
				return;
			Status st = parse_client();
			if (!st)
				error_ = st.error().message();
		}
	}

	void report(Exchange &e)
	{
		ExchangeSummary sum;
		sum.response = e.response;
		if (!sum.response.status)
			sum.response.status = e.status;
		sum.request_bytes = e.request_pipe ? e.request_pipe->bytes_in() : 0;
		sum.response_bytes = e.response_pipe ? e.response_pipe->bytes_in() : 0;
		sum.request_messages = e.request_pipe ? e.request_pipe->messages() : 0;
		sum.response_messages = e.response_pipe ? e.response_pipe->messages() : 0;
		auto now = Clock::now();
		sum.duration = std::chrono::duration_cast<std::chrono::microseconds>(now - e.request.started);
		if (e.first_response_byte != Clock::time_point{})
			sum.first_response_byte = std::chrono::duration_cast<std::chrono::microseconds>(
			    e.first_response_byte - e.request.started);
		sum.result = e.result;
		sum.error = e.error;
		for (ExchangeObserver *o : settings_.observers)
			o->on_complete(e.request, sum);
	}

	// --- endings -----------------------------------------------------------------------

	// An answer cordon gives itself (refusals, upstream failures).
	void local_response(Exchange &e, int status, const std::string &body, const std::string &content_type)
	{
		std::string head = "HTTP/1.1 " + std::to_string(status) + " " +
		                   (status == 403   ? "Forbidden"
		                    : status == 502 ? "Bad Gateway"
		                                    : "Error") +
		                   "\r\n";
		head += "Content-Type: " + content_type + "\r\nContent-Length: " + std::to_string(body.size()) + "\r\n";
		if (!e.keep_alive)
			head += "Connection: close\r\n";
		client_out_.append(head + "\r\n" + body);
		e.response_head_sent = true;
		e.status = status;
		e.response.status = status;
		complete(e);
	}

	void refuse(Exchange &e, const Verdict &v, const char *result = "refused")
	{
		if (e.refused)
			return;
		e.refused = true;
		e.result = v.bad_input ? "bad_input" : result;
		e.error = v.reason;
		const rpc::Protocol protocol = e.response_started ? e.response.protocol : e.request.protocol;
		Refusal r = render_refusal(protocol, v.code, v.reason, e.response_head_sent);
		if (e.response_head_sent) {
			// A body framed by Content-Length (or none) takes no more: bytes past its length would
			// be read as another response. Cut short, the connection's end says it failed.
			if (e.response_framing != Framing::Length && e.response_framing != Framing::None)
				append_body(client_out_, e.response_framing, r.body);
			if (e.response_framing == Framing::Chunked)
				client_out_.append("0\r\n\r\n");
			e.keep_alive = false;
			complete(e);
			return;
		}
		std::string head = "HTTP/1.1 " + std::to_string(r.status) + " Refused\r\n";
		for (const auto &h : r.headers)
			head += h.name + ": " + h.value + "\r\n";
		for (const auto &h : r.trailers) // HTTP/1.1 gRPC is not a thing; keep the status visible
			head += h.name + ": " + h.value + "\r\n";
		head += "Content-Length: " + std::to_string(r.body.size()) + "\r\n";
		// The request may be half sent upstream: this connection cannot be reused.
		head += "Connection: close\r\n\r\n";
		e.keep_alive = false;
		e.status = r.status;
		e.response.status = r.status;
		client_out_.append(head + r.body);
		e.response_head_sent = true;
		if (!e.request_done)
			closing_ = true; // stop reading the rest of the request
		complete(e);
	}

	void bad_input(Exchange &e, Direction d, const std::string &why)
	{
		refuse(e,
		       Verdict::refuse(d == Direction::Request ? "invalid_argument" : "internal",
		                       std::string("cordon: cannot decode the ") + to_string(d) + ": " + why),
		       "bad_input");
	}

	void bad_request(const std::string &why, int status = 400)
	{
		// The answer to this request has begun (a streamed body): a whole 400 response written
		// into it would leave the job reading garbage. It ends the protocol's way instead, as a
		// refusal does (found by tests/fuzz/h1_bridge).
		if (ex_ && ex_->response_head_sent && !ex_->response_done) {
			refuse(*ex_, Verdict::refuse("invalid_argument", "bad HTTP/1.1 request: " + why),
			       "bad_request");
			closing_ = true;
			return;
		}
		const std::string body =
		    "{\"error\":" + rpc::connect_unary_error_body("invalid_argument", "bad HTTP/1.1 request: " + why) +
		    "}";
		const char *status_text = status == 431 ? "431 Request Header Fields Too Large" : "400 Bad Request";
		client_out_.append("HTTP/1.1 " + std::string(status_text) +
		                   "\r\nContent-Type: application/json\r\nContent-Length: " +
		                   std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" + body);
		closing_ = true;
		if (ex_) {
			ex_->result = "bad_request";
			ex_->error = why;
			ex_->response_done = true;
			ex_->status = status;
			report(*ex_);
		}
	}

	void fail_response(const std::string &why)
	{
		Exchange &e = *ex_;
		e.result = "upstream_error";
		e.error = why;
		if (!e.response_head_sent) {
			local_response(e, 502,
			               "{\"error\":" + rpc::connect_unary_error_body("unavailable", "cordon: " + why) +
			                   "}",
			               "application/json");
		} else {
			e.response_done = true;
			report(e);
		}
		closing_ = true;
	}

	void move(ByteQueue &from, std::string &out, size_t budget)
	{
		if (out.size() >= budget || from.empty())
			return;
		size_t n = std::min(from.size(), budget - out.size());
		out.append(from.view().substr(0, n));
		from.consume(n);
	}

	Status take_error()
	{
		if (error_.empty())
			return {};
		return plain_error(std::exchange(error_, ""));
	}

	BridgeSettings settings_;
	ParserEvents req_events_, resp_events_;
	std::unique_ptr<EventParser<true>> req_parser_;
	std::unique_ptr<EventParser<false>> resp_parser_;
	std::optional<Exchange> ex_;
	std::string response_held_;
	ByteQueue client_in_, upstream_in_, client_out_, upstream_out_;
	bool client_eof_ = false, upstream_eof_ = false, closing_ = false;
	bool pending_informational_ = false;
	bool replace_response_parser_ = false;
	uint64_t exchanges_ = 0;
	std::string error_;
};

} // namespace

std::unique_ptr<HttpBridge> make_h1_bridge(BridgeSettings settings)
{
	return std::make_unique<H1Bridge>(std::move(settings));
}

} // namespace cordon::proxy
