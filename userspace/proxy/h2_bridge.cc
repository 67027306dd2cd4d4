// HTTP/2 on both sides with nghttp2: a server session toward the job, a client session toward
// Cursor, one upstream stream per job stream. Requests and responses are forwarded frame by
// frame as they arrive (a bidi stream whose request never ends just keeps flowing).
//
// Flow control is manual: a side's window is reopened (nghttp2_session_consume) only once the
// other side has taken the bytes, so a slow reader on one end closes the window of the writer on
// the other, and no queue here grows beyond a window.
#include <nghttp2/nghttp2.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <unordered_map>

#include "common/log.h"
#include "proxy/byte_queue.h"
#include "proxy/http_bridge.h"

namespace cordon::proxy {
namespace {

using Clock = std::chrono::steady_clock;

constexpr int32_t kStreamWindow = 1 << 20;      // per stream, both sides
constexpr int32_t kConnectionWindow = 16 << 20; // per connection, both sides
// After a refusal, how much of the job's body, and for how long, is read and dropped before
// the stream is reset.
constexpr size_t kDrainBytes = 64 * 1024;
constexpr auto kDrainTime = std::chrono::seconds(1);
// See on_stream_close: how long a job that ended its body after its refusal may take to close.
constexpr auto kWakeDelay = std::chrono::milliseconds(300);
// Reopen the source's window once the forwarding queue is below this.
constexpr size_t kLowWater = 256 * 1024;

bool is_connection_specific(const Header &h)
{
	const std::string_view name = h.name;
	// te is allowed in HTTP/2 only as "trailers", which gRPC servers insist on.
	if (name == "te")
		return h.value != "trailers";
	return name == "connection" || name == "keep-alive" || name == "proxy-connection" ||
	       name == "transfer-encoding" || name == "upgrade";
}

// "API2.Cursor.sh:443" -> "api2.cursor.sh"
std::string host_of_authority(std::string_view authority)
{
	std::string host;
	if (!authority.empty() && authority.front() == '[') {
		auto close = authority.find(']');
		host = std::string(authority.substr(0, close == std::string_view::npos ? authority.size() : close + 1));
	} else {
		host = std::string(authority.substr(0, authority.rfind(':')));
	}
	while (!host.empty() && host.back() == '.')
		host.pop_back();
	std::transform(host.begin(), host.end(), host.begin(), [](unsigned char c) { return std::tolower(c); });
	return host;
}

// Header list for nghttp2. It stores pointers, not copies: every name and value must outlive the
// submit call, so names are either strings owned by the caller or literals (the overload below;
// a literal bound to `const std::string &` would point into a temporary).
struct Nv {
	std::vector<nghttp2_nv> list;
	void add(const std::string &name, const std::string &value) { add(name.data(), name.size(), value); }
	template <size_t N> void add(const char (&literal)[N], const std::string &value) { add(literal, N - 1, value); }

private:
	void add(const char *name, size_t name_len, const std::string &value)
	{
		list.push_back(nghttp2_nv{reinterpret_cast<uint8_t *>(const_cast<char *>(name)),
		                          reinterpret_cast<uint8_t *>(const_cast<char *>(value.data())), name_len,
		                          value.size(), NGHTTP2_NV_FLAG_NONE});
	}
};

class H2Bridge final : public HttpBridge {
public:
	explicit H2Bridge(BridgeSettings settings) : settings_(std::move(settings)) {}

	~H2Bridge() override
	{
		if (down_)
			nghttp2_session_del(down_);
		if (up_)
			nghttp2_session_del(up_);
	}

	Status init()
	{
		nghttp2_session_callbacks *cb = nullptr;
		if (nghttp2_session_callbacks_new(&cb) != 0)
			return plain_error("nghttp2: out of memory");
		nghttp2_session_callbacks_set_on_begin_headers_callback(cb, on_begin_headers);
		nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
		nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
		nghttp2_session_callbacks_set_on_frame_send_callback(cb, on_frame_send);
		nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data_chunk_recv);
		nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
		nghttp2_option *opt = nullptr;
		nghttp2_option_new(&opt);
		nghttp2_option_set_no_auto_window_update(opt, 1);
		int rc = nghttp2_session_server_new2(&down_, cb, this, opt);
		if (rc == 0)
			rc = nghttp2_session_client_new2(&up_, cb, this, opt);
		nghttp2_option_del(opt);
		nghttp2_session_callbacks_del(cb);
		if (rc != 0)
			return plain_error(std::string("nghttp2 session: ") + nghttp2_strerror(rc));
		const auto header_list = static_cast<uint32_t>(settings_.limits.max_header_bytes);
		nghttp2_settings_entry down_settings[] = {
		    {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, settings_.limits.max_streams},
		    {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, kStreamWindow},
		    {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, header_list}};
		nghttp2_settings_entry up_settings[] = {{NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
		                                        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, kStreamWindow},
		                                        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, header_list}};
		if (nghttp2_submit_settings(down_, NGHTTP2_FLAG_NONE, down_settings, 3) != 0 ||
		    nghttp2_submit_settings(up_, NGHTTP2_FLAG_NONE, up_settings, 3) != 0 ||
		    nghttp2_session_set_local_window_size(down_, NGHTTP2_FLAG_NONE, 0, kConnectionWindow) != 0 ||
		    nghttp2_session_set_local_window_size(up_, NGHTTP2_FLAG_NONE, 0, kConnectionWindow) != 0)
			return plain_error("nghttp2: initial settings");
		return {};
	}

	Status on_client_data(std::span<const uint8_t> data) override
	{
		ssize_t n = nghttp2_session_mem_recv(down_, data.data(), data.size());
		if (n < 0)
			return plain_error(std::string("HTTP/2 from the client: ") +
			                   nghttp2_strerror(static_cast<int>(n)));
		return take_error();
	}

	Status on_upstream_data(std::span<const uint8_t> data) override
	{
		ssize_t n = nghttp2_session_mem_recv(up_, data.data(), data.size());
		if (n < 0)
			return plain_error(std::string("HTTP/2 from upstream: ") +
			                   nghttp2_strerror(static_cast<int>(n)));
		return take_error();
	}

	void on_client_eof() override
	{
		client_eof_ = true;
		// The job went away: nothing it started needs to continue upstream.
		for (auto &[id, s] : streams_)
			reset_upstream(*s);
		nghttp2_submit_goaway(up_, NGHTTP2_FLAG_NONE, 0, NGHTTP2_NO_ERROR, nullptr, 0);
	}

	void on_upstream_eof(bool) override
	{
		upstream_eof_ = true;
		for (auto &[id, s] : streams_)
			if (!s->down_closed && !s->response_done)
				nghttp2_submit_rst_stream(down_, NGHTTP2_FLAG_NONE, s->down, NGHTTP2_INTERNAL_ERROR);
		goaway_client();
	}

	Status produce_client_output(std::string &out, size_t budget) override { return produce(down_, out, budget); }
	Status produce_upstream_output(std::string &out, size_t budget) override
	{
		if (upstream_eof_ || !settings_.upstream_unavailable.empty())
			return {};
		return produce(up_, out, budget);
	}

	bool wants_client_data() const override { return !client_eof_; }
	bool wants_upstream_data() const override { return !upstream_eof_; }

	bool done() const override
	{
		if (client_eof_)
			return true;
		// The job's session has said and heard everything (GOAWAY both ways, nothing pending).
		return !nghttp2_session_want_read(down_) && !nghttp2_session_want_write(down_);
	}

	std::string protocol() const override { return "h2"; }
	uint64_t exchanges() const override { return exchanges_; }

	std::optional<Clock::time_point> hold_deadline() const override
	{
		std::optional<Clock::time_point> earliest;
		auto consider = [&](const std::unique_ptr<BodyPipe> &pipe) {
			if (auto due = pipe ? pipe->hold_deadline() : std::nullopt;
			    due && (!earliest || *due < *earliest))
				earliest = due;
		};
		for (const auto &[id, d] : draining_)
			if (!earliest || d.until < *earliest)
				earliest = d.until;
		for (const auto &[id, s] : streams_) {
			if (s->refused)
				continue;
			consider(s->request_pipe);
			consider(s->response_pipe);
		}
		return earliest;
	}

	Status release_held(Clock::time_point now) override
	{
		std::vector<int32_t> drained;
		for (const auto &[id, d] : draining_)
			if (d.until <= now)
				drained.push_back(id);
		for (int32_t id : drained)
			stop_draining(id);
		std::vector<Stream *> due;
		for (auto &[id, s] : streams_)
			if (!s->refused)
				due.push_back(s.get());
		for (Stream *s : due) {
			if (s->request_pipe && !s->request_eof) {
				std::string out;
				Status st = s->request_pipe->release_held(now, out);
				s->request_out.append(out);
				if (!st) {
					fail_bad_input(*s, Direction::Request, st.error().message());
					continue;
				}
				if (s->request_pipe->refusal()) {
					refuse(*s, *s->request_pipe->refusal());
					continue;
				}
				if (!s->request_pipe->waiting()) {
					// Approved: what waited goes now (the headers too, if they were held).
					if (s->request_end_pending) {
						s->request_end_pending = false;
						s->request_eof = true;
					}
					if (!s->request_submitted &&
					    (s->request_eof || !s->request_pipe->holds_whole_body()))
						submit_request(*s);
					else if (s->request_submitted && (!out.empty() || s->request_eof))
						resume(up_, s->up, s->up_deferred);
				} else if (s->request_submitted && !out.empty()) {
					resume(up_, s->up, s->up_deferred);
				}
			}
			if (s->response_pipe && !s->response_eof && !s->refused) {
				std::string out;
				Status st = s->response_pipe->release_held(now, out);
				s->response_out.append(out);
				if (!st) {
					fail_bad_input(*s, Direction::Response, st.error().message());
					continue;
				}
				if (s->response_pipe->refusal()) {
					refuse(*s, *s->response_pipe->refusal());
					continue;
				}
				if (!s->response_pipe->waiting() && s->response_end_pending) {
					s->response_end_pending = false;
					s->response_eof = true;
					if (!s->response_submitted)
						submit_response(*s);
					else
						resume(down_, s->down, s->down_deferred);
				} else if (s->response_submitted && !out.empty()) {
					resume(down_, s->down, s->down_deferred);
				}
			}
		}
		return take_error();
	}

private:
	struct Stream {
		int32_t down = -1, up = -1;
		RequestInfo request;
		Headers request_headers, request_trailers;
		ResponseInfo response;
		Headers response_headers, response_trailers;
		std::unique_ptr<BodyPipe> request_pipe, response_pipe;
		// The body ended while a message waited for approval: end it once that is decided.
		bool request_end_pending = false, response_end_pending = false;
		ByteQueue request_out, response_out; // transformed bodies waiting for the other session
		bool request_eof = false, response_eof = false;
		bool request_submitted = false, response_submitted = false;
		bool request_ended = false; // END_STREAM seen from the job
		bool response_done = false; // END_STREAM sent to the job
		bool up_deferred = false, down_deferred = false;
		size_t request_unconsumed = 0, response_unconsumed = 0;
		bool down_closed = false, up_closed = false;
		bool up_reset = false; // RST_STREAM submitted upstream (see reset_upstream)
		bool refused = false;
		bool final_response = false;         // a non-1xx response has started
		bool response_headers_ended = false; // END_STREAM on the response HEADERS (trailers-only)
		size_t header_bytes = 0;             // decoded header list so far, both directions
		bool reported = false;
		std::string result = "ok", error;
		Clock::time_point first_response_byte{};
	};

	// --- nghttp2 callbacks: forward to the bridge -----------------------------------------

	static H2Bridge &self(void *user_data) { return *static_cast<H2Bridge *>(user_data); }

	static int on_begin_headers(nghttp2_session *session, const nghttp2_frame *frame, void *user_data)
	{
		H2Bridge &b = self(user_data);
		if (session == b.down_ && frame->hd.type == NGHTTP2_HEADERS &&
		    frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
			auto s = std::make_unique<Stream>();
			s->down = frame->hd.stream_id;
			s->request.connection = b.settings_.connection;
			s->request.number = ++b.exchanges_;
			s->request.http = "2";
			s->request.started = Clock::now();
			b.streams_[s->down] = std::move(s);
		}
		return 0;
	}

	static int on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name, size_t namelen,
	                     const uint8_t *value, size_t valuelen, uint8_t, void *user_data)
	{
		H2Bridge &b = self(user_data);
		Stream *counted = session == b.down_ ? b.by_down(frame->hd.stream_id) : b.by_up(frame->hd.stream_id);
		if (counted) {
			counted->header_bytes += namelen + valuelen + 32; // RFC 9113's accounting
			// HPACK can expand a 16 KiB frame to far more: past the limit the stream is reset.
			if (counted->header_bytes > b.settings_.limits.max_header_bytes)
				return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; // resets this stream only
		}
		Header h{std::string(reinterpret_cast<const char *>(name), namelen),
		         std::string(reinterpret_cast<const char *>(value), valuelen)};
		if (session == b.down_) {
			Stream *s = b.by_down(frame->hd.stream_id);
			if (!s)
				return 0;
			(frame->headers.cat == NGHTTP2_HCAT_REQUEST ? s->request_headers : s->request_trailers)
			    .push_back(std::move(h));
		} else {
			Stream *s = b.by_up(frame->hd.stream_id);
			if (!s)
				return 0;
			(s->final_response ? s->response_trailers : s->response_headers).push_back(std::move(h));
		}
		return 0;
	}

	static int on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *user_data)
	{
		H2Bridge &b = self(user_data);
		const bool end_stream = frame->hd.flags & NGHTTP2_FLAG_END_STREAM;
		if (session == b.down_) {
			Stream *s = b.by_down(frame->hd.stream_id);
			if (frame->hd.type == NGHTTP2_HEADERS && s) {
				if (frame->headers.cat == NGHTTP2_HCAT_REQUEST)
					b.start_request(*s);
				if (end_stream)
					b.end_request(*s);
			} else if (frame->hd.type == NGHTTP2_DATA && s && end_stream) {
				b.end_request(*s);
			}
			return 0;
		}
		if (frame->hd.type == NGHTTP2_GOAWAY) {
			// Cursor will take no new streams on this connection: tell the job to open a new
			// one (which cordon intercepts afresh).
			b.upstream_goaway_ = true;
			b.goaway_client();
			return 0;
		}
		Stream *s = b.by_up(frame->hd.stream_id);
		if (!s)
			return 0;
		if (frame->hd.type == NGHTTP2_HEADERS) {
			if (!s->final_response) {
				const std::string status = header_value(s->response_headers, ":status");
				if (status.size() == 3 && status[0] == '1') {
					b.forward_informational(*s);
					return 0;
				}
				s->final_response = true;
				s->response_headers_ended = end_stream;
				b.start_response(*s);
			}
			if (end_stream)
				b.end_response(*s);
		} else if (frame->hd.type == NGHTTP2_DATA && end_stream) {
			b.end_response(*s);
		}
		return 0;
	}

	static int on_frame_send(nghttp2_session *session, const nghttp2_frame *frame, void *user_data)
	{
		H2Bridge &b = self(user_data);
		if (session == b.up_) {
			if (frame->hd.type == NGHTTP2_GOAWAY && frame->goaway.error_code != NGHTTP2_NO_ERROR)
				b.upstream_broke(nghttp2_http2_strerror(frame->goaway.error_code));
			return 0;
		}
		if (!(frame->hd.flags & NGHTTP2_FLAG_END_STREAM))
			return 0;
		Stream *s = b.by_down(frame->hd.stream_id);
		if (!s)
			return 0;
		s->response_done = true;
		if (s->request_ended)
			return 0;
		// A complete response while the job is still sending: ask it to stop (RFC 9113 §8.1).
		// After a refusal, what is already on its way (a small body) is read and dropped first:
		// curl (7.88) reports an immediate RST_STREAM as a framing error and never shows the
		// refusal. A job that keeps sending, or goes quiet, is reset after kDrainBytes/kDrainTime.
		// The exchange is reported now: its outcome is settled, and a job that hangs up instead
		// of finishing its body would otherwise leave it unjournaled (found by the soak).
		if (s->refused && (s->up <= 0 || s->up_closed || s->up_reset)) {
			b.draining_[s->down] = Drain{Clock::now() + kDrainTime, kDrainBytes};
			b.retire(*s);
		} else {
			nghttp2_submit_rst_stream(b.down_, NGHTTP2_FLAG_NONE, s->down, NGHTTP2_NO_ERROR);
		}
		return 0;
	}

	void stop_draining(int32_t stream_id)
	{
		auto d = draining_.find(stream_id);
		if (d == draining_.end())
			return;
		const bool wake = d->second.wake;
		draining_.erase(d);
		if (wake)
			nghttp2_submit_ping(down_, NGHTTP2_FLAG_NONE, nullptr);
		else
			nghttp2_submit_rst_stream(down_, NGHTTP2_FLAG_NONE, stream_id, NGHTTP2_NO_ERROR);
	}

	static int on_data_chunk_recv(nghttp2_session *session, uint8_t, int32_t stream_id, const uint8_t *data,
	                              size_t len, void *user_data)
	{
		H2Bridge &b = self(user_data);
		if (session == b.down_) {
			Stream *s = b.by_down(stream_id);
			if (!s || !s->request_pipe || s->refused) {
				nghttp2_session_consume(b.down_, stream_id, len); // discarded: keep the window open
				if (auto d = b.draining_.find(stream_id); !s && d != b.draining_.end()) {
					if (len >= d->second.left)
						b.stop_draining(stream_id);
					else
						d->second.left -= len;
				}
				return 0;
			}
			b.request_data(*s, {data, len});
		} else {
			Stream *s = b.by_up(stream_id);
			if (!s || !s->response_pipe || s->refused) {
				nghttp2_session_consume(b.up_, stream_id, len);
				return 0;
			}
			b.response_data(*s, {data, len});
		}
		return 0;
	}

	static int on_stream_close(nghttp2_session *session, int32_t stream_id, uint32_t error_code, void *user_data)
	{
		H2Bridge &b = self(user_data);
		if (session == b.down_) {
			if (auto d = b.draining_.find(stream_id); d != b.draining_.end()) {
				// The job ended its body (or reset it) after its refusal had ended the stream.
				// curl (7.88) may then wait for one more read before it sees that it is done,
				// and nothing more comes from cordond: it hung until the connection timed out
				// (found in CI, 1 run in 30). A job that does not close by kWakeDelay gets a
				// PING, which gives it that read. Not at once: a job that closes promptly would
				// find the PING unread and reset the connection.
				if (error_code == NGHTTP2_NO_ERROR && !d->second.wake)
					d->second = Drain{Clock::now() + kWakeDelay, 0, true};
				else
					b.draining_.erase(d);
			}
			Stream *s = b.by_down(stream_id);
			if (!s)
				return 0;
			s->down_closed = true;
			if (s->up > 0 && !s->up_closed) {
				b.reset_upstream(*s);
				if (!s->response_done && s->result == "ok")
					s->result = "client_reset";
			}
			if (s->up <= 0 || s->up_closed)
				b.retire(*s);
		} else {
			Stream *s = b.by_up(stream_id);
			if (!s)
				return 0;
			s->up_closed = true;
			if (s->response_unconsumed)
				nghttp2_session_consume_connection(b.up_, s->response_unconsumed);
			s->response_unconsumed = 0;
			if (error_code != NGHTTP2_NO_ERROR && !s->response_done && !s->down_closed && !s->refused) {
				// Cursor reset the stream: so does the job's copy.
				nghttp2_submit_rst_stream(b.down_, NGHTTP2_FLAG_NONE, s->down, error_code);
				s->result = "upstream_reset";
				s->error = nghttp2_http2_strerror(error_code);
			}
			b.by_up_.erase(stream_id);
			if (s->down_closed)
				b.retire(*s);
		}
		return 0;
	}

	static ssize_t read_request_body(nghttp2_session *, int32_t stream_id, uint8_t *buf, size_t length,
	                                 uint32_t *flags, nghttp2_data_source *, void *user_data)
	{
		H2Bridge &b = self(user_data);
		Stream *s = b.by_up(stream_id);
		if (!s)
			return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
		size_t n = s->request_out.take(buf, length);
		b.reopen_request_window(*s);
		if (n == 0 && !s->request_eof) {
			s->up_deferred = true;
			return NGHTTP2_ERR_DEFERRED;
		}
		if (s->request_out.empty() && s->request_eof) {
			*flags |= NGHTTP2_DATA_FLAG_EOF;
			if (!s->request_trailers.empty()) {
				*flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
				b.submit_trailers(b.up_, s->up, s->request_trailers);
			}
		}
		return static_cast<ssize_t>(n);
	}

	static ssize_t read_response_body(nghttp2_session *, int32_t stream_id, uint8_t *buf, size_t length,
	                                  uint32_t *flags, nghttp2_data_source *, void *user_data)
	{
		H2Bridge &b = self(user_data);
		Stream *s = b.by_down(stream_id);
		if (!s)
			return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
		size_t n = s->response_out.take(buf, length);
		b.reopen_response_window(*s);
		if (n == 0 && !s->response_eof) {
			s->down_deferred = true;
			return NGHTTP2_ERR_DEFERRED;
		}
		if (s->response_out.empty() && s->response_eof) {
			*flags |= NGHTTP2_DATA_FLAG_EOF;
			if (!s->response_trailers.empty()) {
				*flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
				b.submit_trailers(b.down_, s->down, s->response_trailers);
			}
		}
		return static_cast<ssize_t>(n);
	}

	// --- exchange logic ----------------------------------------------------------------

	Stream *by_down(int32_t id)
	{
		auto it = streams_.find(id);
		return it == streams_.end() ? nullptr : it->second.get();
	}
	Stream *by_up(int32_t id)
	{
		auto it = by_up_.find(id);
		return it == by_up_.end() ? nullptr : it->second;
	}

	void start_request(Stream &s)
	{
		RequestInfo &r = s.request;
		r.method = header_value(s.request_headers, ":method");
		r.path = header_value(s.request_headers, ":path");
		const std::string authority = header_value(s.request_headers, ":authority");
		const std::string host_header = header_value(s.request_headers, "host");
		r.host = host_of_authority(!authority.empty() ? authority : host_header);
		if (r.host.empty())
			r.host = settings_.default_host;
		r.content_type = header_value(s.request_headers, "content-type");
		r.content_encoding = header_value(s.request_headers, "content-encoding");
		r.stream_encoding = header_value(s.request_headers, "connect-content-encoding");
		if (r.stream_encoding.empty())
			r.stream_encoding = header_value(s.request_headers, "grpc-encoding");
		auto normalized = rpc::normalize_path(r.path);
		r.rpc = normalized ? rpc::parse_rpc_path(*normalized) : rpc::RpcName{};
		r.protocol = rpc::classify_request(r.method, normalized ? *normalized : r.path, r.content_type);

		if (r.method == "CONNECT") // tunnels inside an intercepted connection: not for Cursor
			return refuse(s, Verdict::refuse("permission_denied", "cordon: CONNECT is not allowed here"));
		if (!normalized)
			return refuse(s,
			              Verdict::refuse("invalid_argument", "cordon: " + normalized.error().message()));
		// The name the request is for must be the name cordon verified and decided on (the SNI):
		// otherwise an intercepted connection could carry requests for another host.
		if ((!authority.empty() && !host_header.empty() && host_of_authority(host_header) != r.host) ||
		    r.host != settings_.default_host)
			return refuse(s, Verdict::refuse("permission_denied", "cordon: request for " + r.host +
			                                                          " on a connection for " +
			                                                          settings_.default_host));
		if (!settings_.upstream_unavailable.empty())
			return refuse(s, Verdict::refuse("unavailable", settings_.upstream_unavailable));
		if (upstream_goaway_ || upstream_eof_) {
			nghttp2_submit_rst_stream(down_, NGHTTP2_FLAG_NONE, s.down, NGHTTP2_REFUSED_STREAM);
			s.refused = true;
			s.result = "refused_stream";
			return;
		}
		if (Verdict v = inspect_headers(settings_.observers, r, Direction::Request, false, s.request_headers);
		    v.kind == Verdict::Kind::Refuse)
			return refuse(s, v);
		r.path = header_value(s.request_headers, ":path"); // as masked
		std::shared_ptr<Deferred> held;
		for (ExchangeObserver *o : settings_.observers) {
			Verdict v = o->on_request(r);
			if (v.kind == Verdict::Kind::Refuse)
				return refuse(s, v);
			if (v.kind == Verdict::Kind::Defer && !held)
				held = std::move(v.deferred);
		}
		s.request_pipe =
		    std::make_unique<BodyPipe>(Direction::Request, r, r.protocol, r.content_encoding, r.stream_encoding,
		                               settings_.observers, settings_.limits, r.content_type);
		if (held)
			s.request_pipe->hold_until(std::move(held)); // nothing goes upstream until decided
		if (!s.request_pipe->holds_whole_body() && !s.request_pipe->waiting())
			submit_request(s);
	}

	void submit_request(Stream &s)
	{
		s.request_submitted = true;
		Nv nv;
		for (const char *pseudo : {":method", ":scheme", ":authority", ":path"}) {
			for (const auto &h : s.request_headers)
				if (h.name == pseudo)
					nv.add(h.name, h.value);
		}
		const bool held = s.request_pipe->holds_whole_body();
		const bool rewritable = held || rpc::is_enveloped(s.request.protocol);
		const bool has_authority = has_header(s.request_headers, ":authority");
		std::string length = std::to_string(s.request_out.size());
		for (const auto &h : s.request_headers) {
			if (h.name.empty() || h.name[0] == ':' || is_connection_specific(h))
				continue;
			if (h.name == "host" && has_authority)
				continue; // same value (checked), and :authority is what HTTP/2 routes on
			if (h.name == "content-length") {
				// A held body may have been rewritten (new length); an enveloped stream may yet
				// be (no length); any other body passes unchanged, and so does its length.
				if (held)
					nv.add(h.name, length);
				else if (!rewritable)
					nv.add(h.name, h.value);
				continue;
			}
			nv.add(h.name, h.value);
		}
		nghttp2_data_provider provider{};
		provider.read_callback = read_request_body;
		const bool body = !(s.request_eof && s.request_out.empty() && s.request_trailers.empty());
		int32_t id = nghttp2_submit_request(up_, nullptr, nv.list.data(), nv.list.size(),
		                                    body ? &provider : nullptr, nullptr);
		if (id < 0) {
			fail(s, "submit request upstream: " + std::string(nghttp2_strerror(id)));
			return;
		}
		s.up = id;
		by_up_[id] = &s;
	}

	void end_request(Stream &s)
	{
		s.request_ended = true;
		if (!s.request_pipe || s.refused)
			return;
		if (!s.request_trailers.empty()) {
			Verdict v = inspect_headers(settings_.observers, s.request, Direction::Request, true,
			                            s.request_trailers);
			if (v.kind == Verdict::Kind::Refuse)
				return refuse(s, v);
		}
		std::string out;
		Status st = s.request_pipe->finish(out);
		s.request_out.append(out);
		if (!st || s.request_pipe->refusal())
			s.request_eof = true;
		if (!st)
			return fail_bad_input(s, Direction::Request, st.error().message());
		if (s.request_pipe->refusal())
			return refuse(s, *s.request_pipe->refusal());
		if (s.request_pipe->waiting()) {
			s.request_end_pending = true; // release_held() ends it once decided
			return;
		}
		s.request_eof = true;
		if (!s.request_submitted)
			submit_request(s);
		else
			resume(up_, s.up, s.up_deferred);
	}

	void request_data(Stream &s, std::span<const uint8_t> data)
	{
		std::string out;
		Status st = s.request_pipe->write(data, out);
		s.request_out.append(out);
		s.request_unconsumed += data.size();
		if (!st)
			return fail_bad_input(s, Direction::Request, st.error().message());
		if (over_budget())
			return refuse(s, budget_refusal(), "over_budget");
		// Held bodies and partial envelopes cannot move on until complete: their windows reopen
		// (bounded by the message limit and the connection's budget, checked just above).
		if (s.request_pipe->held_bytes() > 0)
			reopen_request_window(s, true);
		if (s.request_pipe->refusal())
			return refuse(s, *s.request_pipe->refusal());
		if (s.request_submitted)
			resume(up_, s.up, s.up_deferred);
	}

	void reopen_request_window(Stream &s, bool force = false)
	{
		if (s.request_unconsumed && (force || s.request_out.size() < kLowWater)) {
			nghttp2_session_consume(down_, s.down, s.request_unconsumed);
			s.request_unconsumed = 0;
		}
	}

	void forward_informational(Stream &s)
	{
		Nv nv;
		for (const auto &h : s.response_headers)
			if (!is_connection_specific(h))
				nv.add(h.name, h.value);
		nghttp2_submit_headers(down_, NGHTTP2_FLAG_NONE, s.down, nullptr, nv.list.data(), nv.list.size(),
		                       nullptr);
		s.response_headers.clear();
	}

	void start_response(Stream &s)
	{
		s.first_response_byte = Clock::now();
		ResponseInfo &r = s.response;
		r.status = std::atoi(header_value(s.response_headers, ":status").c_str());
		r.content_type = header_value(s.response_headers, "content-type");
		r.content_encoding = header_value(s.response_headers, "content-encoding");
		r.stream_encoding = header_value(s.response_headers, "connect-content-encoding");
		if (r.stream_encoding.empty())
			r.stream_encoding = header_value(s.response_headers, "grpc-encoding");
		r.protocol = rpc::classify_response(s.request.protocol, r.status, r.content_type);
		if (Verdict v =
		        inspect_headers(settings_.observers, s.request, Direction::Response, false, s.response_headers);
		    v.kind == Verdict::Kind::Refuse)
			return refuse(s, v);
		for (ExchangeObserver *o : settings_.observers)
			o->on_response(s.request, r);
		if (s.refused)
			return;
		s.response_pipe = std::make_unique<BodyPipe>(Direction::Response, s.request, r.protocol,
		                                             r.content_encoding, r.stream_encoding, settings_.observers,
		                                             settings_.limits, r.content_type);
		if (!s.response_pipe->holds_whole_body())
			submit_response(s);
	}

	void submit_response(Stream &s)
	{
		s.response_submitted = true;
		Nv nv;
		const bool held = s.response_pipe && s.response_pipe->holds_whole_body();
		const bool rewritable = held || rpc::is_enveloped(s.response.protocol);
		const bool no_body = s.request.method == "HEAD" || s.response.status == 204 || s.response.status == 304;
		std::string length = std::to_string(s.response_out.size());
		for (const auto &h : s.response_headers) {
			if (is_connection_specific(h))
				continue;
			if (h.name == "content-length") {
				if (no_body || (!held && !rewritable))
					nv.add(h.name, h.value); // describes a body that passes unchanged (or none)
				else if (held)
					nv.add(h.name, length);
				continue;
			}
			nv.add(h.name, h.value);
		}
		nghttp2_data_provider provider{};
		provider.read_callback = read_response_body;
		// A "trailers-only" answer (gRPC errors) must stay one HEADERS frame with END_STREAM.
		const bool body = !s.response_headers_ended &&
		                  !(s.response_eof && s.response_out.empty() && s.response_trailers.empty());
		int rc =
		    nghttp2_submit_response(down_, s.down, nv.list.data(), nv.list.size(), body ? &provider : nullptr);
		if (rc != 0)
			log::warning(std::string("h2: submit response: ") + nghttp2_strerror(rc));
	}

	void response_data(Stream &s, std::span<const uint8_t> data)
	{
		std::string out;
		Status st = s.response_pipe->write(data, out);
		s.response_out.append(out);
		s.response_unconsumed += data.size();
		if (!st)
			return fail_bad_input(s, Direction::Response, st.error().message());
		if (over_budget())
			return refuse(s, budget_refusal(), "over_budget");
		if (s.response_pipe->held_bytes() > 0)
			reopen_response_window(s, true);
		if (s.response_pipe->refusal())
			return refuse(s, *s.response_pipe->refusal());
		if (s.response_submitted)
			resume(down_, s.down, s.down_deferred);
	}

	void reopen_response_window(Stream &s, bool force = false)
	{
		if (s.response_unconsumed && !s.up_closed && (force || s.response_out.size() < kLowWater)) {
			nghttp2_session_consume(up_, s.up, s.response_unconsumed);
			s.response_unconsumed = 0;
		}
	}

	void end_response(Stream &s)
	{
		if (!s.response_pipe || s.refused)
			return;
		if (!s.response_trailers.empty()) {
			Verdict v = inspect_headers(settings_.observers, s.request, Direction::Response, true,
			                            s.response_trailers);
			if (v.kind == Verdict::Kind::Refuse)
				return refuse(s, v);
		}
		std::string out;
		Status st = s.response_pipe->finish(out);
		s.response_out.append(out);
		if (!st || s.response_pipe->refusal())
			s.response_eof = true;
		if (!st)
			return fail_bad_input(s, Direction::Response, st.error().message());
		if (s.response_pipe->refusal())
			return refuse(s, *s.response_pipe->refusal());
		if (s.response_pipe->waiting()) {
			s.response_end_pending = true; // release_held() ends it once decided
			return;
		}
		s.response_eof = true;
		if (!s.response_submitted)
			submit_response(s);
		else
			resume(down_, s.down, s.down_deferred);
	}

	// Tells the job to open no new streams on this connection: once. Cursor may say GOAWAY twice
	// (a graceful shutdown does) and then end the connection, but a later GOAWAY to the job would
	// carry a larger last stream ID if it opened streams meanwhile, which RFC 9113 §6.8 forbids:
	// the job's HTTP/2 library takes it as a protocol error and fails every stream in flight.
	// Streams after the first GOAWAY are refused (REFUSED_STREAM) in any case. Found by fuzzing
	// (tests/fuzz/corpus/h2_bridge/crash_job_goaway_last_stream_grows.bin).
	// nghttp2 ended the session to Cursor on a protocol error (garbage, a frame too large): it
	// sent GOAWAY, and the streams on it will never complete. The job is told at once; it used to
	// wait for them until its own deadline (found by tests/integration/test_faults.py).
	void upstream_broke(const char *reason)
	{
		if (upstream_eof_)
			return;
		std::vector<Stream *> finished;
		for (auto &[id, s] : streams_) {
			if (!s->down_closed && !s->response_done && !s->refused && s->result == "ok") {
				s->result = "upstream_error";
				s->error = std::string("HTTP/2 from upstream: ") + reason;
			}
			// No close will come from that session: each stream is reported once the job's
			// side of it ends.
			s->up_closed = true;
			if (s->down_closed)
				finished.push_back(s.get());
		}
		by_up_.clear();
		on_upstream_eof(false);
		for (Stream *s : finished)
			retire(*s);
	}

	void goaway_client()
	{
		if (client_goaway_)
			return;
		client_goaway_ = true;
		nghttp2_submit_goaway(down_, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(down_),
		                      NGHTTP2_NO_ERROR, nullptr, 0);
	}

	// Ends the upstream copy of a stream: once. For a request whose HEADERS are still queued,
	// nghttp2 turns the first RST_STREAM into cancelling them, but sends a second one as a frame:
	// an RST_STREAM for a stream Cursor never saw (idle) is a connection error (RFC 9113 §5.1),
	// and Cursor would end the connection with every other exchange on it. Found by fuzzing
	// (tests/fuzz/corpus/h2_bridge/cursor_gzip_bomb_envelope.bin: refused, then the job's stream
	// closed).
	void reset_upstream(Stream &s)
	{
		if (s.up > 0 && !s.up_closed && !s.up_reset) {
			s.up_reset = true;
			nghttp2_submit_rst_stream(up_, NGHTTP2_FLAG_NONE, s.up, NGHTTP2_CANCEL);
		}
	}

	// An observer refused: nothing more goes upstream, the job gets its protocol's error.
	void refuse(Stream &s, const Verdict &v, const char *result = "refused")
	{
		if (s.refused)
			return;
		s.refused = true;
		s.result = v.bad_input ? "bad_input" : result;
		s.error = v.reason;
		reset_upstream(s);
		const rpc::Protocol protocol = s.response.status ? s.response.protocol : s.request.protocol;
		Refusal r = render_refusal(protocol, v.code, v.reason, s.response_submitted);
		if (s.response_submitted) {
			// Mid-stream: what was already allowed goes out, then the in-band ending.
			s.response_out.append(r.body);
			s.response_trailers = r.trailers;
			s.response_eof = true;
			resume(down_, s.down, s.down_deferred);
			return;
		}
		s.response_submitted = true;
		s.response.status = r.status; // what the client got, for the journal
		s.response_out.clear();
		s.response_out.append(r.body);
		s.response_eof = true;
		Nv nv;
		std::string status = std::to_string(r.status);
		nv.add(":status", status);
		std::string length = std::to_string(r.body.size());
		for (const auto &h : r.headers)
			nv.add(h.name, h.value);
		if (r.trailers.empty() || !r.body.empty())
			nv.add("content-length", length);
		if (r.body.empty() && !r.trailers.empty()) {
			// gRPC "trailers-only": status and grpc-status in one HEADERS frame.
			for (const auto &h : r.trailers)
				nv.add(h.name, h.value);
			nghttp2_submit_response(down_, s.down, nv.list.data(), nv.list.size(), nullptr);
			return;
		}
		s.response_trailers = r.trailers;
		nghttp2_data_provider provider{};
		provider.read_callback = read_response_body;
		nghttp2_submit_response(down_, s.down, nv.list.data(), nv.list.size(), &provider);
	}

	// Bytes held by all streams of this connection (unary bodies, partial envelopes). Windows
	// reopen for held data, so this is what bounds a connection's memory.
	bool over_budget() const
	{
		size_t held = 0;
		for (const auto &[id, s] : streams_) {
			if (s->request_pipe)
				held += s->request_pipe->held_bytes();
			if (s->response_pipe)
				held += s->response_pipe->held_bytes();
		}
		return held > 2 * settings_.limits.max_message;
	}

	Verdict budget_refusal() const
	{
		return Verdict::refuse("resource_exhausted",
		                       "cordon: too many large messages at once on this connection");
	}

	// Data that cannot be decoded (oversize envelope, corrupt gzip, truncated stream) must not
	// be forwarded as if it were fine: end the exchange with a clear error.
	void fail_bad_input(Stream &s, Direction d, const std::string &why)
	{
		const std::string reason = std::string("cordon: cannot decode the ") + to_string(d) + ": " + why;
		refuse(s, Verdict::refuse(d == Direction::Request ? "invalid_argument" : "internal", reason),
		       "bad_input");
	}

	void fail(Stream &s, const std::string &why)
	{
		log::warning("h2: " + why);
		refuse(s, Verdict::refuse("internal", "cordon: " + why), "error");
	}

	void resume(nghttp2_session *session, int32_t id, bool &deferred)
	{
		if (deferred && id > 0) {
			deferred = false;
			nghttp2_session_resume_data(session, id);
		}
	}

	void submit_trailers(nghttp2_session *session, int32_t id, const Headers &trailers)
	{
		Nv nv;
		for (const auto &h : trailers)
			nv.add(h.name, h.value);
		nghttp2_submit_trailer(session, id, nv.list.data(), nv.list.size());
	}

	void retire(Stream &s)
	{
		if (!s.reported) {
			s.reported = true;
			ExchangeSummary sum;
			sum.response = s.response;
			sum.request_bytes = s.request_pipe ? s.request_pipe->bytes_in() : 0;
			sum.response_bytes = s.response_pipe ? s.response_pipe->bytes_in() : 0;
			sum.request_messages = s.request_pipe ? s.request_pipe->messages() : 0;
			sum.response_messages = s.response_pipe ? s.response_pipe->messages() : 0;
			auto now = Clock::now();
			sum.duration = std::chrono::duration_cast<std::chrono::microseconds>(now - s.request.started);
			if (s.first_response_byte != Clock::time_point{})
				sum.first_response_byte = std::chrono::duration_cast<std::chrono::microseconds>(
				    s.first_response_byte - s.request.started);
			if (s.result == "ok" && !s.response_done)
				s.result = "incomplete";
			sum.result = s.result;
			sum.error = s.error;
			for (ExchangeObserver *o : settings_.observers)
				o->on_complete(s.request, sum);
		}
		if (s.request_unconsumed)
			nghttp2_session_consume_connection(down_, s.request_unconsumed);
		if (s.up > 0)
			by_up_.erase(s.up);
		streams_.erase(s.down); // s is gone
	}

	Status produce(nghttp2_session *session, std::string &out, size_t budget)
	{
		while (out.size() < budget) {
			const uint8_t *data = nullptr;
			ssize_t n = nghttp2_session_mem_send(session, &data);
			if (n < 0)
				return plain_error(std::string("HTTP/2 send: ") +
				                   nghttp2_strerror(static_cast<int>(n)));
			if (n == 0)
				break;
			out.append(reinterpret_cast<const char *>(data), static_cast<size_t>(n));
		}
		return take_error();
	}

	Status take_error()
	{
		if (error_.empty())
			return {};
		return plain_error(std::exchange(error_, ""));
	}

	BridgeSettings settings_;
	nghttp2_session *down_ = nullptr;
	nghttp2_session *up_ = nullptr;
	std::unordered_map<int32_t, std::unique_ptr<Stream>> streams_;
	std::unordered_map<int32_t, Stream *> by_up_;
	// Refused streams, already reported, whose job is still sending (see on_frame_send).
	struct Drain {
		Clock::time_point until;
		size_t left = 0;
		bool wake = false; // the stream is closed: a PING at `until` (see on_stream_close)
	};
	std::unordered_map<int32_t, Drain> draining_;
	uint64_t exchanges_ = 0;
	bool client_eof_ = false, upstream_eof_ = false, upstream_goaway_ = false;
	bool client_goaway_ = false; // see goaway_client
	std::string error_;
};

} // namespace

std::unique_ptr<HttpBridge> make_h2_bridge(BridgeSettings settings, Status *error)
{
	auto b = std::make_unique<H2Bridge>(std::move(settings));
	Status st = b->init();
	if (!st) {
		if (error)
			*error = st;
		return nullptr;
	}
	return b;
}

} // namespace cordon::proxy
