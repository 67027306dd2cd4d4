// libFuzzer target for the HTTP/2 bridge (proxy/h2_bridge.cc, with the body pipes of
// proxy/exchange.cc behind it): fuzz bytes are what the job and Cursor send, interleaved with the
// event loop's other calls (draining output within a budget, end of input on either side, the
// hold deadline passing, an approval being decided), the way intercept.cc drives a bridge.
//
// The harness sends the connection prefaces itself (the job's "PRI * HTTP/2.0" and SETTINGS,
// Cursor's SETTINGS), so inputs start right at the frames. Both sides number streams alike
// (1, 3, 5, ...), so a response to the job's first request is on stream 1 upstream as well.
//
// Besides crashes, leaks, hangs and undefined behaviour under the sanitizers, it checks what the
// journal and policy rely on: each exchange is completed at most once, with a number the bridge
// gave out, and no observer hears of an exchange after its completion.
//
// With configuration 0x08, Cursor is a real nghttp2 server instead of fuzz bytes (upstream data
// operations are skipped): it answers each request once it has ended, echoing its body with the
// request's content type (gRPC with grpc-status trailers). Whatever the job sends, that server
// must find nothing wrong in what the bridge sends it: no connection error, no invalid frame or
// header, no content-length that disagrees with the body.
//
// With configuration 0x10, the job is a real nghttp2 client instead (client data operations
// become its requests, see FakeJob), and it must find nothing wrong in what the bridge sends it,
// while the bridge accepts everything it sends. With both (0x18) and no verdict but forward, each
// body the job gets back whole is the one it sent.
//
// Input: byte 0 is the configuration (0x01 small message limits, 0x02 no usable upstream, 0x04
// output drained only when asked, 0x08 a real Cursor, 0x10 a real job), then operations until the
// input ends:
//   op & 7 == 0 / 1   client / upstream data: 2 bytes length (little-endian), then the bytes
//   op & 7 == 2 / 3   drain client / upstream output, budget ((op >> 3) + 1) * 512 bytes
//   op & 7 == 4       the hold deadline passes; op & 0x08 approves what waits, op & 0x10 refuses it
//   op & 7 == 5 / 6   client / upstream EOF (op & 0x08: the upstream's was clean)
//   op & 7 == 7       the loop asks what the bridge wants (done, wants_*, hold_deadline)
// The observer masks authorization headers and reacts to words: a message or path with "mask" is
// replaced, with "deny" refused, with "hold" held for approval; a response header x-deny refuses.
#include <nghttp2/nghttp2.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/log.h"
#include "proxy/http_bridge.h"
#include "proxy/rpc.h"

using namespace cordon;
using namespace cordon::proxy;

namespace {

void check(bool ok, const char *what)
{
	if (!ok) {
		std::fprintf(stderr, "invariant violated: %s\n", what);
		std::abort();
	}
}

std::span<const uint8_t> bytes(std::string_view s)
{
	return {reinterpret_cast<const uint8_t *>(s.data()), s.size()};
}

// The job's connection preface and an empty SETTINGS frame; Cursor's SETTINGS.
const std::string kClientPreface =
    std::string("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n") + std::string("\0\0\0\4\0\0\0\0\0", 9);
const std::string kServerPreface("\0\0\0\4\0\0\0\0\0", 9);

struct Switch : Deferred {
	std::optional<Verdict> answer;
	std::optional<Verdict> poll() override { return answer; }
};

struct Observer : ExchangeObserver {
	const HttpBridge *bridge = nullptr;
	std::set<uint64_t> completed;
	std::vector<std::shared_ptr<Switch>> undecided;
	bool acted = false; // some verdict other than forward was given
	bool all_ok = true; // every completed exchange ended "ok"

	void alive(const RequestInfo &r)
	{
		check(r.number >= 1 && (!bridge || r.number <= bridge->exchanges()), "an exchange number given out");
		check(!completed.count(r.number), "nothing is heard of an exchange after its completion");
	}
	Verdict hold()
	{
		acted = true;
		auto s = std::make_shared<Switch>();
		undecided.push_back(s);
		return Verdict::defer(s);
	}
	void decide(bool approve)
	{
		for (auto &s : undecided)
			s->answer =
			    approve ? Verdict::forward() : Verdict::refuse("permission_denied", "refused by a person");
		undecided.clear();
	}

	Verdict on_headers(const RequestInfo &r, Direction d, bool, Headers &headers) override
	{
		alive(r);
		for (Header &h : headers) {
			if (h.name == "authorization")
				h.value = "[MASKED]";
			if (d == Direction::Response && h.name == "x-deny")
				return acted = true, Verdict::refuse("permission_denied", "response header");
		}
		return Verdict::forward();
	}
	Verdict on_request(const RequestInfo &r) override
	{
		alive(r);
		if (r.path.find("deny") != std::string::npos)
			return acted = true, Verdict::refuse("permission_denied", "path");
		if (r.path.find("hold") != std::string::npos)
			return hold();
		return Verdict::forward();
	}
	Verdict on_message(const RequestInfo &r, const Message &m) override
	{
		alive(r);
		if (m.payload.find("deny") != std::string::npos)
			return acted = true, Verdict::refuse("permission_denied", "message");
		if (m.payload.find("hold") != std::string::npos)
			return hold();
		if (m.payload.find("mask") != std::string::npos)
			return acted = true, Verdict::replace(m.payload.size() % 2 ? std::string()
			                                                           : m.payload + std::string(130, '*'));
		return Verdict::forward();
	}
	void on_response(const RequestInfo &r, const ResponseInfo &) override { alive(r); }
	void on_complete(const RequestInfo &r, const ExchangeSummary &summary) override
	{
		alive(r);
		completed.insert(r.number);
		all_ok = all_ok && summary.result == "ok";
	}
};

// Header lists point into strings that outlive the submit call.
struct Nv {
	std::vector<nghttp2_nv> list;
	template <size_t N> void add(const char (&name)[N], const std::string &value) { add(name, N - 1, value); }
	void add(const std::string &name, const std::string &value) { add(name.data(), name.size(), value); }
	void add(const char *name, size_t length, const std::string &value)
	{
		list.push_back(nghttp2_nv{reinterpret_cast<uint8_t *>(const_cast<char *>(name)),
		                          reinterpret_cast<uint8_t *>(const_cast<char *>(value.data())), length,
		                          value.size(), NGHTTP2_NV_FLAG_NONE});
	}
};

// A stand-in for Cursor that answers every request it sees end by echoing its body.
class FakeCursor {
public:
	FakeCursor()
	{
		nghttp2_session_callbacks *cb = nullptr;
		nghttp2_session_callbacks_new(&cb);
		nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
		nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data);
		nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame);
		nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(cb, on_invalid_frame);
		nghttp2_session_callbacks_set_on_invalid_header_callback(cb, on_invalid_header);
		nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_close);
		check(nghttp2_session_server_new(&session_, cb, this) == 0, "the fake Cursor starts");
		nghttp2_session_callbacks_del(cb);
		nghttp2_submit_settings(session_, NGHTTP2_FLAG_NONE, nullptr, 0);
	}
	~FakeCursor() { nghttp2_session_del(session_); }

	// The bridge's bytes to Cursor.
	void receive(std::string_view bytes)
	{
		const ssize_t n =
		    nghttp2_session_mem_recv(session_, reinterpret_cast<const uint8_t *>(bytes.data()), bytes.size());
		if (n < 0)
			std::fprintf(stderr, "fake Cursor: %s\n", nghttp2_strerror(static_cast<int>(n)));
		check(n >= 0, "the bridge sends Cursor valid HTTP/2");
	}
	std::string send()
	{
		std::string out;
		for (;;) {
			const uint8_t *data = nullptr;
			const ssize_t n = nghttp2_session_mem_send(session_, &data);
			check(n >= 0, "the fake Cursor can send");
			if (n == 0)
				return out;
			out.append(reinterpret_cast<const char *>(data), static_cast<size_t>(n));
		}
	}

private:
	struct Stream {
		std::string content_type, body;
		Header encoding;
		size_t sent = 0;
		bool grpc = false;
		Headers trailers;
	};

	static FakeCursor &self(void *p) { return *static_cast<FakeCursor *>(p); }

	static int on_header(nghttp2_session *, const nghttp2_frame *frame, const uint8_t *name, size_t namelen,
	                     const uint8_t *value, size_t valuelen, uint8_t, void *p)
	{
		const std::string_view n(reinterpret_cast<const char *>(name), namelen);
		const std::string v(reinterpret_cast<const char *>(value), valuelen);
		Stream &s = self(p).streams_[frame->hd.stream_id];
		if (n == "content-type")
			s.content_type = v;
		else if (n == "connect-content-encoding" || n == "grpc-encoding")
			s.encoding = {std::string(n), v}; // the echoed envelopes are compressed alike
		return 0;
	}
	static int on_data(nghttp2_session *, uint8_t, int32_t id, const uint8_t *data, size_t len, void *p)
	{
		self(p).streams_[id].body.append(reinterpret_cast<const char *>(data), len);
		return 0;
	}
	static int on_frame(nghttp2_session *session, const nghttp2_frame *frame, void *p)
	{
		if ((frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA) ||
		    !(frame->hd.flags & NGHTTP2_FLAG_END_STREAM))
			return 0;
		Stream &s = self(p).streams_[frame->hd.stream_id];
		s.grpc = s.content_type.rfind("application/grpc", 0) == 0 &&
		         s.content_type.rfind("application/grpc-web", 0) != 0;
		std::string status = "200";
		Nv nv;
		nv.add(":status", status);
		if (!s.content_type.empty())
			nv.add("content-type", s.content_type);
		if (!s.encoding.name.empty())
			nv.add(s.encoding.name, s.encoding.value);
		nghttp2_data_provider provider{};
		provider.read_callback = read_body;
		nghttp2_submit_response(session, frame->hd.stream_id, nv.list.data(), nv.list.size(), &provider);
		return 0;
	}
	static ssize_t read_body(nghttp2_session *session, int32_t id, uint8_t *buf, size_t length, uint32_t *flags,
	                         nghttp2_data_source *, void *p)
	{
		Stream &s = self(p).streams_[id];
		const size_t n = std::min(length, s.body.size() - s.sent);
		std::memcpy(buf, s.body.data() + s.sent, n);
		s.sent += n;
		if (s.sent == s.body.size()) {
			*flags |= NGHTTP2_DATA_FLAG_EOF;
			if (s.grpc) {
				*flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
				Nv nv;
				static const std::string ok = "0";
				nv.add("grpc-status", ok);
				nghttp2_submit_trailer(session, id, nv.list.data(), nv.list.size());
			}
		}
		return static_cast<ssize_t>(n);
	}
	static int on_invalid_frame(nghttp2_session *, const nghttp2_frame *frame, int error, void *)
	{
		std::fprintf(stderr, "fake Cursor: invalid frame type %d on stream %d: %s\n", frame->hd.type,
		             frame->hd.stream_id, nghttp2_strerror(error));
		check(false, "the bridge sends Cursor no invalid frame");
		return 0;
	}
	static int on_invalid_header(nghttp2_session *, const nghttp2_frame *, const uint8_t *name, size_t namelen,
	                             const uint8_t *, size_t, uint8_t, void *)
	{
		std::fprintf(stderr, "fake Cursor: invalid header '%.*s'\n", static_cast<int>(namelen), name);
		check(false, "the bridge sends Cursor no invalid header");
		return 0;
	}
	static int on_close(nghttp2_session *, int32_t id, uint32_t, void *p)
	{
		self(p).streams_.erase(id);
		return 0;
	}

	nghttp2_session *session_ = nullptr;
	std::map<int32_t, Stream> streams_;
};

// A stand-in for the job: a real nghttp2 client whose requests are made from fuzz bytes. The first
// byte picks the kind (& 3: unary proto, Connect stream, gRPC, GET), path words (0x04 "hold",
// 0x0C "deny"), a body left open until operation 7 | 0x08 (0x10), a gzip'd envelope (0x20); the
// rest is the body.
class FakeJob {
public:
	FakeJob()
	{
		nghttp2_session_callbacks *cb = nullptr;
		nghttp2_session_callbacks_new(&cb);
		nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(cb, on_invalid_frame);
		nghttp2_session_callbacks_set_on_invalid_header_callback(cb, on_invalid_header);
		nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data);
		nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame);
		nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_close);
		check(nghttp2_session_client_new(&session_, cb, this) == 0, "the fake job starts");
		nghttp2_session_callbacks_del(cb);
		nghttp2_submit_settings(session_, NGHTTP2_FLAG_NONE, nullptr, 0);
	}
	~FakeJob() { nghttp2_session_del(session_); }

	void request(std::string_view spec)
	{
		if (spec.empty())
			return;
		const uint8_t kind = static_cast<uint8_t>(spec[0]);
		spec.remove_prefix(1);
		static const std::string post = "POST", get = "GET", https = "https", host = "api2.cursor.sh",
		                         trailers = "trailers";
		static const std::string paths[] = {
		    "/aiserver.v1.AiService/AvailableModels", "/aiserver.v1.ChatService/StreamUnifiedChatWithTools",
		    "/aiserver.v1.ChatService/holdThis", "/aiserver.v1.ChatService/denyThis"};
		static const std::string types[] = {"application/proto", "application/connect+proto",
		                                    "application/grpc", ""};
		auto body = std::make_unique<Body>();
		const int type = kind & 3;
		const bool enveloped = type == 1 || type == 2;
		const bool compressed = enveloped && (kind & 0x20);
		body->open = kind & 0x10; // a bidi stream: the body goes on until end_bodies()
		if (compressed)
			body->bytes = rpc::encode_envelope(rpc::kFlagCompressed, *rpc::gzip(spec));
		else
			body->bytes = enveloped ? rpc::encode_envelope(0, spec) : type == 3 ? "" : std::string(spec);
		body->length = std::to_string(body->bytes.size());
		Nv nv;
		nv.add(":method", type == 3 ? get : post);
		nv.add(":scheme", https);
		nv.add(":authority", host);
		nv.add(":path", (kind & 0x0c) ? paths[2 + ((kind >> 3) & 1)] : paths[type == 0 ? 0 : 1]);
		if (type != 3) {
			nv.add("content-type", types[type]);
			if (type == 0)
				nv.add("content-length", body->length);
		}
		if (type == 2)
			nv.add("te", trailers);
		static const std::string gzip = "gzip", connect_encoding = "connect-content-encoding",
		                         grpc_encoding = "grpc-encoding";
		if (compressed)
			nv.add(type == 1 ? connect_encoding : grpc_encoding, gzip);
		nghttp2_data_provider provider{};
		provider.source.ptr = body.get();
		provider.read_callback = read_body;
		const int32_t id = nghttp2_submit_request(session_, nullptr, nv.list.data(), nv.list.size(),
		                                          type == 3 ? nullptr : &provider, nullptr);
		if (id > 0) {
			exchanges_[id].sent = body->bytes;
			body->id = id;
		}
		bodies_.push_back(std::move(body));
	}
	// The bridge's bytes to the job.
	void receive(std::string_view bytes)
	{
		const ssize_t n =
		    nghttp2_session_mem_recv(session_, reinterpret_cast<const uint8_t *>(bytes.data()), bytes.size());
		if (n < 0)
			std::fprintf(stderr, "fake job: %s\n", nghttp2_strerror(static_cast<int>(n)));
		check(n >= 0, "the bridge sends the job valid HTTP/2");
	}
	std::string send()
	{
		std::string out;
		for (;;) {
			const uint8_t *data = nullptr;
			const ssize_t n = nghttp2_session_mem_send(session_, &data);
			check(n >= 0, "the fake job can send");
			if (n == 0)
				return out;
			out.append(reinterpret_cast<const char *>(data), static_cast<size_t>(n));
		}
	}

	// The bidi streams' bodies end.
	void end_bodies()
	{
		for (auto &b : bodies_)
			if (b->open && b->id > 0) {
				b->open = false;
				nghttp2_session_resume_data(session_, b->id);
			}
	}

	// With the echoing Cursor and nothing refused, replaced or held, every answer the job got
	// whole is what it sent: untouched bodies pass byte for byte both ways.
	void check_echoes() const
	{
		for (const auto &[id, x] : exchanges_)
			if (x.ended && x.closed && x.error == NGHTTP2_NO_ERROR)
				check(x.received == x.sent, "an untouched body comes back byte for byte");
	}

private:
	struct Body {
		std::string bytes, length;
		size_t sent = 0;
		bool open = false;
		int32_t id = 0;
	};
	struct Exchange {
		std::string sent, received;
		bool ended = false, closed = false;
		uint32_t error = 0;
	};
	static FakeJob &self(void *p) { return *static_cast<FakeJob *>(p); }
	static int on_data(nghttp2_session *, uint8_t, int32_t id, const uint8_t *data, size_t len, void *p)
	{
		self(p).exchanges_[id].received.append(reinterpret_cast<const char *>(data), len);
		return 0;
	}
	static int on_frame(nghttp2_session *, const nghttp2_frame *frame, void *p)
	{
		if ((frame->hd.type == NGHTTP2_HEADERS || frame->hd.type == NGHTTP2_DATA) &&
		    (frame->hd.flags & NGHTTP2_FLAG_END_STREAM))
			self(p).exchanges_[frame->hd.stream_id].ended = true;
		return 0;
	}
	static int on_close(nghttp2_session *, int32_t id, uint32_t error, void *p)
	{
		Exchange &x = self(p).exchanges_[id];
		x.closed = true;
		x.error = error;
		return 0;
	}
	static ssize_t read_body(nghttp2_session *, int32_t, uint8_t *buf, size_t length, uint32_t *flags,
	                         nghttp2_data_source *source, void *)
	{
		Body &b = *static_cast<Body *>(source->ptr);
		const size_t n = std::min(length, b.bytes.size() - b.sent);
		std::memcpy(buf, b.bytes.data() + b.sent, n);
		b.sent += n;
		if (n == 0 && b.open)
			return NGHTTP2_ERR_DEFERRED;
		if (b.sent == b.bytes.size() && !b.open)
			*flags |= NGHTTP2_DATA_FLAG_EOF;
		return static_cast<ssize_t>(n);
	}
	static int on_invalid_frame(nghttp2_session *, const nghttp2_frame *frame, int error, void *)
	{
		std::fprintf(stderr, "fake job: invalid frame type %d on stream %d: %s\n", frame->hd.type,
		             frame->hd.stream_id, nghttp2_strerror(error));
		check(false, "the bridge sends the job no invalid frame");
		return 0;
	}
	static int on_invalid_header(nghttp2_session *, const nghttp2_frame *, const uint8_t *name, size_t namelen,
	                             const uint8_t *, size_t, uint8_t, void *)
	{
		std::fprintf(stderr, "fake job: invalid header '%.*s'\n", static_cast<int>(namelen), name);
		check(false, "the bridge sends the job no invalid header");
		return 0;
	}

	nghttp2_session *session_ = nullptr;
	std::vector<std::unique_ptr<Body>> bodies_;
	std::map<int32_t, Exchange> exchanges_;
};

struct Input {
	const uint8_t *p, *end;
	bool empty() const { return p == end; }
	uint8_t byte() { return empty() ? 0 : *p++; }
	std::string_view take(size_t n)
	{
		n = std::min<size_t>(n, end - p);
		std::string_view s(reinterpret_cast<const char *>(p), n);
		p += n;
		return s;
	}
};

} // namespace

extern "C" int LLVMFuzzerInitialize(int *, char ***)
{
	log::set_level(log::Level::error); // the bridge warns about what fuzzing does all the time
	return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	Input in{data, data + size};
	const uint8_t config = in.byte();

	Observer observer;
	BridgeSettings settings;
	settings.connection = "fuzz";
	settings.default_host = "api2.cursor.sh";
	settings.observers.push_back(&observer);
	if (config & 0x01)
		settings.limits = Limits{1024, 1024};
	if (config & 0x02)
		settings.upstream_unavailable = "cordon: the upstream's certificate was rejected";
	const bool manual = config & 0x04;
	std::unique_ptr<FakeCursor> cursor = (config & 0x08) ? std::make_unique<FakeCursor>() : nullptr;
	std::unique_ptr<FakeJob> job = (config & 0x10) ? std::make_unique<FakeJob>() : nullptr;

	Status error;
	std::unique_ptr<HttpBridge> bridge = make_h2_bridge(std::move(settings), &error);
	check(bridge != nullptr, "the bridge starts");
	observer.bridge = bridge.get();

	bool open = bridge->on_client_data(bytes(job ? job->send() : kClientPreface)) &&
	            bridge->on_upstream_data(bytes(cursor ? cursor->send() : kServerPreface));
	check(open, "the prefaces are accepted");
	std::string sink, to_bridge;
	auto drain = [&](bool client, size_t budget) {
		sink.clear();
		if (client) {
			if (!bridge->produce_client_output(sink, budget).ok())
				return false;
			if (job) {
				job->receive(sink);
				// A valid job's bytes are always welcome.
				check(bridge->on_client_data(bytes(job->send())).ok(),
				      "the bridge accepts a valid job");
			}
			return true;
		}
		if (!bridge->produce_upstream_output(sink, budget).ok())
			return false;
		if (!cursor)
			return true;
		// Rounds between the bridge and the fake Cursor until both are quiet (an answer may open a
		// window); what is left after the last round waits for the next drain.
		for (int round = 0; round < 16; round++) {
			cursor->receive(sink);
			sink.clear();
			to_bridge += cursor->send();
			if (to_bridge.empty())
				break;
			if (!bridge->on_upstream_data(bytes(std::exchange(to_bridge, {}))).ok())
				return false;
			if (!bridge->produce_upstream_output(sink, budget).ok())
				return false;
		}
		cursor->receive(sink);
		to_bridge += cursor->send();
		return true;
	};
	auto drain_all = [&] { return drain(true, 1 << 20) && drain(false, 1 << 20); };
	open = drain_all();

	const auto start = Clock::now();
	while (open && !in.empty() && !bridge->done()) {
		const uint8_t op = in.byte();
		switch (op & 7) {
		case 0:
		case 1: {
			size_t n = in.byte();
			n |= size_t{in.byte()} << 8;
			const std::string_view chunk = in.take(n);
			if ((op & 7) == 1 && cursor)
				break; // Cursor speaks for itself
			if ((op & 7) == 0 && job) {
				job->request(chunk);
				check(bridge->on_client_data(bytes(job->send())).ok(),
				      "the bridge accepts a valid job");
				break;
			}
			open = (op & 7) == 0 ? bridge->on_client_data(bytes(chunk)).ok()
			                     : bridge->on_upstream_data(bytes(chunk)).ok();
			break;
		}
		case 2:
		case 3:
			open = drain((op & 7) == 2, ((op >> 3) + 1) * 512);
			break;
		case 4:
			if (op & 0x18)
				observer.decide(op & 0x08);
			open = bridge->release_held(start + std::chrono::hours(1)).ok();
			break;
		case 5:
			bridge->on_client_eof();
			break;
		case 6:
			bridge->on_upstream_eof(op & 0x08);
			break;
		case 7:
			if (job && (op & 0x08)) {
				job->end_bodies();
				check(bridge->on_client_data(bytes(job->send())).ok(),
				      "the bridge accepts a valid job");
			}
			(void)bridge->wants_client_data();
			(void)bridge->wants_upstream_data();
			(void)bridge->hold_deadline();
			break;
		}
		if (open && !manual)
			open = drain_all();
	}
	if (job && cursor && !observer.acted && observer.all_ok)
		job->check_echoes();
	// The connection ends as intercept.cc ends it: both sides gone, what is left flushed.
	bridge->on_client_eof();
	bridge->on_upstream_eof(false);
	drain_all();
	bridge.reset();
	return 0;
}
