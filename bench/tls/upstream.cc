// A fast TLS upstream for bench/run-tls.sh: the "Cursor" every path of the issue-#3 benchmark
// talks to. One thread, epoll, OpenSSL, nghttp2; HTTP/2 (ALPN h2) and HTTP/1.1 with keep-alive
// (nginx's proxy_pass speaks HTTP/1.1 upstream). It answers:
//
//   POST /aiserver.v1.AiService/AvailableModels   200 application/proto, a 1 KiB protobuf body
//   POST /aiserver.v1.AiService/StreamCpp         200 application/connect+proto: x-bench-bytes / 16 KiB
//        (header x-bench-bytes: N)                 Connect envelopes of 16 KiB each, then the Connect
//                                                  end-of-stream envelope "{}"
//   anything else                                  404
//
// Request bodies are read and discarded. Usage: upstream [--payload=random|text] CERT KEY ADDR:PORT...
// Prints "ready" on stdout once every listener is up; runs until killed.
//
// Payloads (the content of protobuf field 1; the sizes are the same for both):
//   random  (default) pseudo-random bytes: one unary body and one streamed message, repeated. Not
//           UTF-8, so a masking proxy has no text to scan.
//   text    source-code-like ASCII text (C++, Python, YAML and JSON lines, generated
//           deterministically) in which one AWS access key id and one GitHub token appear per
//           1 MiB: the stream cycles through 64 different messages (1 MiB), the unary responses
//           through 1024 different bodies taken from the same text. A masking proxy scans all of
//           it and rewrites two secrets per MiB.
// Helpers for the benchmark script (they print and exit):
//   upstream --payload=text --request-body   a 1 KiB protobuf request body of the payload
//   upstream --payload=text --secrets N [--replacement=TEMPLATE]
//                                            the secrets in a stream of N messages, one line per
//                                            rule: "RULE LENGTH COUNT"; with a replacement (as in
//                                            the mask policy, {rule} = the rule id), then the
//                                            stream's body size were each secret replaced: "= BYTES"
//   upstream --payload=text --corpus         the text the stream cycles through
//
// Built by bench/run-tls.sh itself: g++ -O2 -std=c++20 upstream.cc -lssl -lcrypto -lnghttp2
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace {

constexpr size_t kMessage = 16384;         // streamed message payload
constexpr size_t kEnvelope = 5 + kMessage; // with its Connect envelope header
constexpr size_t kUnaryBody = 1024;        // unary response body
constexpr size_t kOutHigh = 256 * 1024;    // plaintext queued per connection before we stop producing
const std::string kUnaryPath = "/aiserver.v1.AiService/AvailableModels";
const std::string kStreamPath = "/aiserver.v1.AiService/StreamCpp";
const std::string kEndStream = std::string("\x02\x00\x00\x00\x02{}", 7);

constexpr size_t kUnaryText = 1021;    // field 1's content in a unary body (1024 with tag and length)
constexpr size_t kMessageText = 16381; // field 1's content in a streamed message (16384)
constexpr size_t kStreamPool = 64;     // text: distinct streamed messages (1 MiB of text), cycled
constexpr size_t kUnaryPool = 1024;    // text: distinct unary bodies, cycled request by request
constexpr size_t kCorpus = kStreamPool * kMessageText;

enum class Payload { Random, Text };
Payload g_payload = Payload::Random;

// protobuf: field 1 (bytes), kUnaryText bytes of content -> kUnaryBody bytes. Random: one body.
std::vector<std::string> g_unary_bodies;
size_t g_unary_next = 0;
// streamed envelopes: flags 0, length, protobuf field 1 of kMessageText bytes. Random: one.
std::vector<std::string> g_envelopes;
std::string g_corpus; // text: what the streamed messages carry, in order

struct Secret {
	size_t offset; // in g_corpus
	std::string rule, text;
};
std::vector<Secret> g_secrets;

SSL_CTX *g_ctx = nullptr;
int g_epoll = -1;

void die(const char *what)
{
	std::perror(what);
	std::exit(1);
}

void fill_pattern(std::string &s, size_t n)
{
	uint32_t x = 2463534242u;
	for (size_t i = 0; i < n; i++) {
		x ^= x << 13;
		x ^= x >> 17;
		x ^= x << 5;
		s.push_back(static_cast<char>(x));
	}
}

// splitmix64: the text is the same in every run.
struct Rng {
	uint64_t state;
	uint64_t next()
	{
		uint64_t z = (state += 0x9e3779b97f4a7c15ull);
		z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
		z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
		return z ^ (z >> 31);
	}
	size_t below(size_t n) { return static_cast<size_t>(next() % n); }
};

// Code-like text: files of C++, Python, YAML and JSON in turn, the way an editor's context looks.
// Templates: {w} a word, {W} the word capitalized, {U} upper case, {n} a number. No line holds
// anything a secret scanner should find (verify with `cordonctl mask --explain`).
class TextGen {
public:
	explicit TextGen(uint64_t seed) : rng_{seed} {}

	std::string line()
	{
		static const std::vector<std::vector<const char *>> files = {
		    {"// src/{w}/{w}_{w}.cc\n", "#include \"{w}/{w}.h\"\n", "#include <vector>\n", "\n",
		     "namespace {w} {\n", "\n", "static int {w}_{w}(const std::vector<int> &{w}, size_t {w})\n", "{\n",
		     "\tfor (size_t i = 0; i < {w}.size(); ++i) {\n", "\t\tif ({w}[i] > {n})\n",
		     "\t\t\treturn {w}_{w}({w}, i + {n});\n", "\t}\n",
		     "\tauto {w} = std::make_unique<{W}>({w}, {n});\n",
		     "\t// {w} the {w} before the {w} is flushed (see {W}::{w})\n",
		     "\tstd::printf(\"%s: %zu {w}s\\n\", __func__, {w}.size());\n",
		     "\treturn static_cast<int>({w}.size()) * {n};\n", "}\n", "\n", "} // namespace {w}\n"},
		    {"# {w}/{w}_{w}.py\n", "import logging\n", "from {w}.{w} import {W}, {W}\n", "\n", "\n",
		     "class {W}{W}:\n", "    \"\"\"{W} the {w} of a {w}, {n} at a time.\"\"\"\n", "\n",
		     "    def __init__(self, {w}, {w}={n}):\n", "        self.{w} = {w}\n",
		     "        self.{w} = [{n}, {n}, {n}]\n", "\n", "    def {w}_{w}(self, items):\n",
		     "        result = [x * {n} for x in items if x.{w} > {n}]\n",
		     "        logging.info(\"%d {w} items in %s\", len(result), self.{w})\n",
		     "        return sorted(result, key=lambda x: x.{w})\n", "\n"},
		    {"# deploy/{w}-{w}.yaml\n", "{w}:\n", "  name: {w}-{w}\n", "  replicas: {n}\n",
		     "  image: registry.example.com/{w}/{w}:{n}.{n}.{n}\n", "  env:\n", "    - name: {U}_{U}\n",
		     "      value: \"{w}\"\n", "    - name: {U}_TIMEOUT_MS\n", "      value: \"{n}\"\n",
		     "  resources:\n", "    limits: {cpu: \"{n}m\", memory: \"{n}Mi\"}\n",
		     "  labels: [{w}, {w}, {w}]\n"},
		    {"{\n", "  \"{w}\": {\n", "    \"enabled\": true,\n", "    \"{w}\": {n},\n",
		     "    \"{w}\": \"{w}-{w}\",\n", "    \"tags\": [\"{w}\", \"{w}\", \"{w}\"]\n", "  },\n",
		     "  \"{w}_{w}\": [{n}, {n}, {n}, {n}],\n", "  \"{w}\": null\n", "}\n"},
		};
		const auto &file = files[file_];
		std::string out = expand(file[line_]);
		if (++line_ == file.size()) {
			line_ = 0;
			file_ = (file_ + 1) % files.size();
		}
		return out;
	}

	Rng &rng() { return rng_; }

private:
	std::string expand(const char *t)
	{
		static const char *words[] = {"buffer",  "request", "handler", "index",  "cache",   "session", "stream",
		                              "message", "parser",  "node",    "value",  "result",  "count",   "offset",
		                              "target",  "route",   "client",  "server", "timeout", "retry",   "batch",
		                              "queue",   "worker",  "payload", "schema", "record",  "metrics", "path",
		                              "layout",  "render",  "widget",  "span",   "trace",   "shard",   "lease"};
		std::string out;
		for (const char *p = t; *p; p++) {
			if (p[0] == '{' && p[1] && p[2] == '}') {
				std::string w = words[rng_.below(std::size(words))];
				switch (p[1]) {
				case 'W':
					w[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(w[0])));
					break;
				case 'U':
					for (auto &ch : w)
						ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
					break;
				case 'n':
					w = std::to_string(rng_.below(100000));
					break;
				}
				out += w;
				p += 2;
				continue;
			}
			out += *p;
		}
		return out;
	}

	Rng rng_;
	size_t file_ = 0, line_ = 0;
};

double entropy(const std::string &s)
{
	double counts[256] = {}, h = 0;
	for (unsigned char ch : s)
		counts[ch]++;
	for (double c : counts)
		if (c > 0)
			h -= c / static_cast<double>(s.size()) * std::log2(c / static_cast<double>(s.size()));
	return h;
}

std::string random_token(Rng &rng, const char *alphabet, size_t n)
{
	std::string out;
	const size_t k = std::strlen(alphabet);
	for (size_t i = 0; i < n; i++)
		out += alphabet[rng.below(k)];
	return out;
}

// The line a leaked secret sits in, and the secret (high entropy, no placeholder).
std::pair<std::string, Secret> secret_line(Rng &rng, int which)
{
	for (;;) {
		Secret s;
		std::string line;
		if (which == 0) {
			s.rule = "aws-access-key-id";
			s.text = "AKIA" + random_token(rng, "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16);
			line = "        os.environ[\"AWS_ACCESS_KEY_ID\"] = \"" + s.text + "\"\n";
		} else {
			s.rule = "github-pat";
			s.text =
			    "ghp_" +
			    random_token(rng, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789", 36);
			line = "      GITHUB_TOKEN: " + s.text + "\n";
		}
		if (entropy(s.text) >= 3.5 && s.text.find("EXAMPLE") == std::string::npos) {
			s.offset = line.find(s.text);
			return {line, s};
		}
	}
}

// The text the stream cycles through: kCorpus bytes, with an AWS key id at about 30% and a
// GitHub token at about 70%, each line of them inside one streamed message and one unary body.
void build_corpus()
{
	TextGen gen(0xc0d0);
	const size_t at[] = {kCorpus * 3 / 10, kCorpus * 7 / 10};
	size_t next = 0;
	auto crosses = [](size_t from, size_t len, size_t unit) { return from / unit != (from + len - 1) / unit; };
	while (g_corpus.size() < kCorpus) {
		if (next < std::size(at) && g_corpus.size() >= at[next]) {
			auto [line, secret] = secret_line(gen.rng(), static_cast<int>(next));
			while (crosses(g_corpus.size(), line.size(), kMessageText) ||
			       crosses(g_corpus.size(), line.size(), kUnaryText))
				g_corpus += '\n';
			secret.offset += g_corpus.size();
			g_corpus += line;
			g_secrets.push_back(secret);
			next++;
			continue;
		}
		g_corpus += gen.line();
	}
	g_corpus.resize(kCorpus);
}

// tag 1, wire type 2, then the length as a varint
std::string field1(size_t len)
{
	std::string out = "\x0a";
	for (; len >= 0x80; len >>= 7)
		out.push_back(static_cast<char>(0x80 | (len & 0x7f)));
	out.push_back(static_cast<char>(len));
	return out;
}

std::string envelope_head()
{
	std::string out(1, '\0');
	for (int shift = 24; shift >= 0; shift -= 8)
		out.push_back(static_cast<char>((kMessage >> shift) & 0xff));
	return out;
}

void build_bodies()
{
	if (g_payload == Payload::Random) {
		g_unary_bodies.push_back(field1(kUnaryText));
		fill_pattern(g_unary_bodies.back(), kUnaryText);
		g_envelopes.push_back(envelope_head() + field1(kMessageText));
		fill_pattern(g_envelopes.back(), kMessageText);
	} else {
		build_corpus();
		for (size_t i = 0; i < kStreamPool; i++)
			g_envelopes.push_back(envelope_head() + field1(kMessageText) +
			                      g_corpus.substr(i * kMessageText, kMessageText));
		for (size_t i = 0; i < kUnaryPool; i++)
			g_unary_bodies.push_back(field1(kUnaryText) + g_corpus.substr(i * kUnaryText, kUnaryText));
	}
	for (const auto &b : g_unary_bodies)
		if (b.size() != kUnaryBody)
			std::abort();
	for (const auto &e : g_envelopes)
		if (e.size() != kEnvelope)
			std::abort();
}

const std::string *next_unary_body()
{
	return &g_unary_bodies[g_unary_next++ % g_unary_bodies.size()];
}

// The streamed body: `messages` envelopes, then the end-of-stream envelope. Produces bytes from
// any offset, so both HTTP versions can pull it in whatever pieces their flow control allows.
struct StreamBody {
	uint64_t messages = 0;
	uint64_t offset = 0;
	uint64_t total() const { return messages * kEnvelope + kEndStream.size(); }
	size_t read(uint8_t *buf, size_t len)
	{
		size_t done = 0;
		while (done < len && offset < total()) {
			uint64_t main = messages * kEnvelope;
			const char *src;
			size_t avail;
			if (offset < main) {
				size_t at = offset % kEnvelope;
				src = g_envelopes[offset / kEnvelope % g_envelopes.size()].data() + at;
				avail = kEnvelope - at;
			} else {
				size_t at = offset - main;
				src = kEndStream.data() + at;
				avail = kEndStream.size() - at;
			}
			size_t n = std::min(avail, len - done);
			std::memcpy(buf + done, src, n);
			done += n;
			offset += n;
		}
		return done;
	}
};

struct Request {
	std::string method, path;
	uint64_t bench_bytes = 0;
	// HTTP/2 response state
	size_t unary_offset = 0;
	const std::string *unary_body = nullptr;
	StreamBody stream;
	bool is_stream = false;
};

struct Conn;
void close_conn(Conn *c);
void drop(Conn *c, const char *why);

struct Conn {
	int fd = -1;
	SSL *ssl = nullptr;
	bool handshaken = false;
	bool h2 = false;
	bool closing = false;
	bool want_out = false; // EPOLLOUT registered
	std::string out;       // plaintext waiting for SSL_write
	size_t out_off = 0;
	// HTTP/2
	nghttp2_session *session = nullptr;
	std::map<int32_t, std::unique_ptr<Request>> streams;
	// HTTP/1.1
	std::string in;
	bool h1_body_chunked = false;
	uint64_t h1_body_left = 0;
	bool h1_in_body = false;
	bool h1_have_request = false;
	Request h1_req;
	bool h1_streaming = false;
	StreamBody h1_stream;
	bool h1_close_after = false;

	~Conn()
	{
		if (session)
			nghttp2_session_del(session);
		if (ssl)
			SSL_free(ssl);
		if (fd >= 0)
			::close(fd);
	}
};

// --- HTTP/2 ---------------------------------------------------------------------------------

ssize_t read_unary(nghttp2_session *, int32_t, uint8_t *buf, size_t len, uint32_t *flags, nghttp2_data_source *src,
                   void *)
{
	auto *r = static_cast<Request *>(src->ptr);
	size_t n = std::min(len, kUnaryBody - r->unary_offset);
	std::memcpy(buf, r->unary_body->data() + r->unary_offset, n);
	r->unary_offset += n;
	if (r->unary_offset == kUnaryBody)
		*flags |= NGHTTP2_DATA_FLAG_EOF;
	return static_cast<ssize_t>(n);
}

ssize_t read_stream(nghttp2_session *, int32_t, uint8_t *buf, size_t len, uint32_t *flags, nghttp2_data_source *src,
                    void *)
{
	auto *r = static_cast<Request *>(src->ptr);
	size_t n = r->stream.read(buf, len);
	if (r->stream.offset == r->stream.total())
		*flags |= NGHTTP2_DATA_FLAG_EOF;
	return static_cast<ssize_t>(n);
}

nghttp2_nv nv(const char *name, const std::string &value)
{
	return nghttp2_nv{reinterpret_cast<uint8_t *>(const_cast<char *>(name)),
	                  reinterpret_cast<uint8_t *>(const_cast<char *>(value.data())), std::strlen(name),
	                  value.size(), NGHTTP2_NV_FLAG_NONE};
}

void h2_respond(Conn *c, int32_t id, Request *r)
{
	static const std::string s200 = "200", s404 = "404", proto = "application/proto",
	                         connect = "application/connect+proto", text = "text/plain", len1k = "1024", zero = "0";
	nghttp2_data_provider dp{};
	dp.source.ptr = r;
	if (r->path == kUnaryPath) {
		nghttp2_nv h[] = {nv(":status", s200), nv("content-type", proto), nv("content-length", len1k)};
		r->unary_body = next_unary_body();
		dp.read_callback = read_unary;
		nghttp2_submit_response(c->session, id, h, 3, &dp);
	} else if (r->path == kStreamPath) {
		r->is_stream = true;
		r->stream.messages = r->bench_bytes / kMessage;
		nghttp2_nv h[] = {nv(":status", s200), nv("content-type", connect)};
		dp.read_callback = read_stream;
		nghttp2_submit_response(c->session, id, h, 2, &dp);
	} else {
		nghttp2_nv h[] = {nv(":status", s404), nv("content-type", text), nv("content-length", zero)};
		nghttp2_submit_response(c->session, id, h, 3, nullptr);
	}
}

int on_begin_headers(nghttp2_session *, const nghttp2_frame *frame, void *user)
{
	auto *c = static_cast<Conn *>(user);
	if (frame->hd.type == NGHTTP2_HEADERS && frame->headers.cat == NGHTTP2_HCAT_REQUEST)
		c->streams[frame->hd.stream_id] = std::make_unique<Request>();
	return 0;
}

int on_header(nghttp2_session *, const nghttp2_frame *frame, const uint8_t *name, size_t namelen, const uint8_t *value,
              size_t valuelen, uint8_t, void *user)
{
	auto *c = static_cast<Conn *>(user);
	auto it = c->streams.find(frame->hd.stream_id);
	if (it == c->streams.end())
		return 0;
	std::string n(reinterpret_cast<const char *>(name), namelen);
	std::string v(reinterpret_cast<const char *>(value), valuelen);
	if (n == ":path")
		it->second->path = v.substr(0, v.find('?'));
	else if (n == ":method")
		it->second->method = v;
	else if (n == "x-bench-bytes")
		it->second->bench_bytes = std::strtoull(v.c_str(), nullptr, 10);
	return 0;
}

int on_frame_recv(nghttp2_session *, const nghttp2_frame *frame, void *user)
{
	auto *c = static_cast<Conn *>(user);
	if ((frame->hd.type == NGHTTP2_HEADERS || frame->hd.type == NGHTTP2_DATA) &&
	    (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
		auto it = c->streams.find(frame->hd.stream_id);
		if (it != c->streams.end())
			h2_respond(c, frame->hd.stream_id, it->second.get());
	}
	return 0;
}

int on_stream_close(nghttp2_session *, int32_t id, uint32_t, void *user)
{
	static_cast<Conn *>(user)->streams.erase(id);
	return 0;
}

bool h2_start(Conn *c)
{
	nghttp2_session_callbacks *cb;
	nghttp2_session_callbacks_new(&cb);
	nghttp2_session_callbacks_set_on_begin_headers_callback(cb, on_begin_headers);
	nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
	nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
	nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
	int rc = nghttp2_session_server_new(&c->session, cb, c);
	nghttp2_session_callbacks_del(cb);
	if (rc != 0)
		return false;
	nghttp2_settings_entry s[] = {{NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, 1024},
	                              {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 1 << 20}};
	return nghttp2_submit_settings(c->session, NGHTTP2_FLAG_NONE, s, 2) == 0 &&
	       nghttp2_session_set_local_window_size(c->session, NGHTTP2_FLAG_NONE, 0, 16 << 20) == 0;
}

// --- HTTP/1.1 -------------------------------------------------------------------------------

std::string lower(std::string s)
{
	for (auto &ch : s)
		ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
	return s;
}

void h1_respond(Conn *c)
{
	Request &r = c->h1_req;
	std::string head = "HTTP/1.1 ";
	if (r.path == kUnaryPath) {
		head += "200 OK\r\ncontent-type: application/proto\r\ncontent-length: 1024\r\n";
		head += c->h1_close_after ? "connection: close\r\n\r\n" : "\r\n";
		c->out += head;
		c->out += *next_unary_body();
	} else if (r.path == kStreamPath) {
		c->h1_stream = StreamBody{};
		c->h1_stream.messages = r.bench_bytes / kMessage;
		head += "200 OK\r\ncontent-type: application/connect+proto\r\ncontent-length: " +
		        std::to_string(c->h1_stream.total()) + "\r\n";
		head += c->h1_close_after ? "connection: close\r\n\r\n" : "\r\n";
		c->out += head;
		c->h1_streaming = true;
	} else {
		head += "404 Not Found\r\ncontent-length: 0\r\n";
		head += c->h1_close_after ? "connection: close\r\n\r\n" : "\r\n";
		c->out += head;
	}
	c->h1_have_request = false;
}

// Consumes what it can of c->in. Returns false on a protocol error.
bool h1_parse(Conn *c)
{
	for (;;) {
		if (c->h1_streaming)
			return true; // one response at a time; the next request waits
		if (!c->h1_have_request) {
			size_t end = c->in.find("\r\n\r\n");
			if (end == std::string::npos)
				return c->in.size() < 65536;
			std::string head = c->in.substr(0, end);
			c->in.erase(0, end + 4);
			Request r;
			size_t sp1 = head.find(' '), sp2 = head.find(' ', sp1 + 1);
			size_t eol = head.find("\r\n");
			if (sp1 == std::string::npos || sp2 == std::string::npos)
				return false;
			r.method = head.substr(0, sp1);
			r.path = head.substr(sp1 + 1, sp2 - sp1 - 1);
			r.path = r.path.substr(0, r.path.find('?'));
			bool http10 = head.compare(sp2 + 1, 8, "HTTP/1.0") == 0;
			c->h1_close_after = http10;
			c->h1_body_left = 0;
			c->h1_body_chunked = false;
			size_t pos = eol == std::string::npos ? head.size() : eol + 2;
			while (pos < head.size()) {
				size_t next = head.find("\r\n", pos);
				if (next == std::string::npos)
					next = head.size();
				std::string line = head.substr(pos, next - pos);
				pos = next + 2;
				size_t colon = line.find(':');
				if (colon == std::string::npos)
					continue;
				std::string name = lower(line.substr(0, colon));
				std::string value = line.substr(colon + 1);
				value.erase(0, value.find_first_not_of(" \t"));
				if (name == "content-length")
					c->h1_body_left = std::strtoull(value.c_str(), nullptr, 10);
				else if (name == "transfer-encoding" &&
				         lower(value).find("chunked") != std::string::npos)
					c->h1_body_chunked = true;
				else if (name == "connection")
					c->h1_close_after =
					    lower(value).find("close") != std::string::npos ||
					    (http10 && lower(value).find("keep-alive") == std::string::npos);
				else if (name == "x-bench-bytes")
					r.bench_bytes = std::strtoull(value.c_str(), nullptr, 10);
			}
			c->h1_req = std::move(r);
			c->h1_have_request = true;
			c->h1_in_body = true;
		}
		// The body, discarded.
		if (c->h1_in_body) {
			if (!c->h1_body_chunked) {
				size_t n = std::min<uint64_t>(c->h1_body_left, c->in.size());
				c->in.erase(0, n);
				c->h1_body_left -= n;
				if (c->h1_body_left > 0)
					return true;
				c->h1_in_body = false;
			} else {
				for (;;) {
					if (c->h1_body_left > 0) { // inside a chunk (and its CRLF)
						size_t n = std::min<uint64_t>(c->h1_body_left, c->in.size());
						c->in.erase(0, n);
						c->h1_body_left -= n;
						if (c->h1_body_left > 0)
							return true;
						continue;
					}
					size_t eol = c->in.find("\r\n");
					if (eol == std::string::npos)
						return c->in.size() < 4096;
					uint64_t size = std::strtoull(c->in.c_str(), nullptr, 16);
					c->in.erase(0, eol + 2);
					if (size == 0) {
						// trailers: up to and including the empty line
						size_t end = c->in.find("\r\n");
						if (end == std::string::npos)
							return true; // wait (rare: trailers split)
						if (end != 0) {
							size_t t = c->in.find("\r\n\r\n");
							if (t == std::string::npos)
								return true;
							c->in.erase(0, t + 4);
						} else {
							c->in.erase(0, 2);
						}
						break;
					}
					c->h1_body_left = size + 2;
				}
				c->h1_in_body = false;
			}
		}
		h1_respond(c);
	}
}

// --- the connection -------------------------------------------------------------------------

void set_out_interest(Conn *c, bool on)
{
	if (c->want_out == on)
		return;
	c->want_out = on;
	epoll_event ev{};
	ev.events = EPOLLIN | (on ? static_cast<uint32_t>(EPOLLOUT) : 0u);
	ev.data.ptr = c;
	epoll_ctl(g_epoll, EPOLL_CTL_MOD, c->fd, &ev);
}

// Produces more plaintext into c->out while below the high-water mark.
bool produce(Conn *c)
{
	while (c->out.size() - c->out_off < kOutHigh) {
		if (c->h2) {
			const uint8_t *data;
			ssize_t n = nghttp2_session_mem_send(c->session, &data);
			if (n < 0)
				return false;
			if (n == 0)
				break;
			c->out.append(reinterpret_cast<const char *>(data), static_cast<size_t>(n));
		} else {
			if (!c->h1_streaming)
				break;
			size_t room = kOutHigh;
			size_t at = c->out.size();
			c->out.resize(at + room);
			size_t n = c->h1_stream.read(reinterpret_cast<uint8_t *>(c->out.data() + at), room);
			c->out.resize(at + n);
			if (c->h1_stream.offset == c->h1_stream.total()) {
				c->h1_streaming = false;
				if (!h1_parse(c)) // a pipelined request may be waiting
					return false;
			}
		}
	}
	return true;
}

enum class Pump { Open, Done, Failed };

// Writes what it can.
Pump pump(Conn *c)
{
	for (;;) {
		if (!produce(c))
			return Pump::Failed;
		if (c->out_off == c->out.size())
			break;
		ERR_clear_error();
		int n = SSL_write(c->ssl, c->out.data() + c->out_off, static_cast<int>(c->out.size() - c->out_off));
		if (n > 0) {
			c->out_off += static_cast<size_t>(n);
			if (c->out_off == c->out.size()) {
				c->out.clear();
				c->out_off = 0;
			} else if (c->out_off > (1 << 20)) {
				c->out.erase(0, c->out_off);
				c->out_off = 0;
			}
			continue;
		}
		int err = SSL_get_error(c->ssl, n);
		if (err == SSL_ERROR_WANT_WRITE) {
			set_out_interest(c, true);
			return Pump::Open;
		}
		if (err == SSL_ERROR_WANT_READ)
			return Pump::Open;
		return Pump::Failed;
	}
	set_out_interest(c, false);
	bool open = c->h2 ? nghttp2_session_want_read(c->session) || nghttp2_session_want_write(c->session)
	                  : !(c->h1_close_after && !c->h1_streaming && !c->h1_have_request);
	return open ? Pump::Open : Pump::Done;
}

void on_event(Conn *c)
{
	if (!c->handshaken) {
		ERR_clear_error(); // SSL_get_error() reads the thread's queue: no stale errors
		int rc = SSL_accept(c->ssl);
		if (rc != 1) {
			int err = SSL_get_error(c->ssl, rc);
			if (err == SSL_ERROR_WANT_READ) {
				set_out_interest(c, false);
				return;
			}
			if (err == SSL_ERROR_WANT_WRITE) {
				set_out_interest(c, true);
				return;
			}
			return drop(c, "TLS handshake failed");
		}
		c->handshaken = true;
		const unsigned char *alpn = nullptr;
		unsigned int alpn_len = 0;
		SSL_get0_alpn_selected(c->ssl, &alpn, &alpn_len);
		c->h2 = alpn_len == 2 && std::memcmp(alpn, "h2", 2) == 0;
		if (c->h2 && !h2_start(c))
			return drop(c, "nghttp2 session");
	}
	static thread_local std::vector<uint8_t> buf(256 * 1024);
	bool eof = false;
	for (;;) {
		ERR_clear_error();
		int n = SSL_read(c->ssl, buf.data(), static_cast<int>(buf.size()));
		if (n > 0) {
			if (c->h2) {
				if (nghttp2_session_mem_recv(c->session, buf.data(), static_cast<size_t>(n)) < 0)
					return drop(c, "HTTP/2 protocol error from the client");
			} else {
				c->in.append(reinterpret_cast<const char *>(buf.data()), static_cast<size_t>(n));
				if (!h1_parse(c))
					return drop(c, "HTTP/1.1 request not understood");
			}
			continue;
		}
		int err = SSL_get_error(c->ssl, n);
		if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE)
			break;
		// A clean close (close_notify or FIN) is the normal end; anything else is reported.
		if (err != SSL_ERROR_ZERO_RETURN && !(err == SSL_ERROR_SYSCALL && errno == 0) &&
		    !(c->h2 && !nghttp2_session_want_read(c->session)))
			return drop(c, "read failed");
		eof = true;
		break;
	}
	if (eof)
		return close_conn(c);
	switch (pump(c)) {
	case Pump::Open:
		return;
	case Pump::Done:
		return close_conn(c);
	case Pump::Failed:
		return drop(c, "write failed");
	}
}

// An abnormal end: one line on stderr (the benchmark shows it when a request failed).
void drop(Conn *c, const char *why)
{
	char ssl_error[256] = "";
	if (unsigned long e = ERR_get_error())
		ERR_error_string_n(e, ssl_error, sizeof(ssl_error));
	std::fprintf(stderr, "upstream: connection closed: %s (%s%s%s)\n", why, c->h2 ? "h2" : "http/1.1",
	             ssl_error[0] ? ", " : "", ssl_error);
	ERR_clear_error();
	close_conn(c);
}

void close_conn(Conn *c)
{
	epoll_ctl(g_epoll, EPOLL_CTL_DEL, c->fd, nullptr);
	delete c;
}

int alpn_select(SSL *, const unsigned char **out, unsigned char *outlen, const unsigned char *in, unsigned int inlen,
                void *)
{
	// Prefer h2, then http/1.1, among what the client offered.
	for (const char *want : {"h2", "http/1.1"}) {
		size_t wl = std::strlen(want);
		for (unsigned int i = 0; i < inlen;) {
			unsigned int l = in[i];
			if (l == wl && i + 1 + l <= inlen && std::memcmp(in + i + 1, want, l) == 0) {
				*out = in + i + 1;
				*outlen = static_cast<unsigned char>(l);
				return SSL_TLSEXT_ERR_OK;
			}
			i += 1 + l;
		}
	}
	return SSL_TLSEXT_ERR_NOACK;
}

struct Listener {
	int fd;
};

int listen_on(const std::string &spec)
{
	size_t colon = spec.rfind(':');
	if (colon == std::string::npos)
		die("ADDR:PORT");
	sockaddr_in a{};
	a.sin_family = AF_INET;
	a.sin_port = htons(static_cast<uint16_t>(std::atoi(spec.c_str() + colon + 1)));
	if (inet_pton(AF_INET, spec.substr(0, colon).c_str(), &a.sin_addr) != 1)
		die("inet_pton");
	int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	int one = 1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (::bind(fd, reinterpret_cast<sockaddr *>(&a), sizeof(a)) != 0)
		die(("bind " + spec).c_str());
	if (::listen(fd, 4096) != 0)
		die("listen");
	return fd;
}

} // namespace

int main(int argc, char **argv)
{
	int first = 1;
	enum class Mode { Serve, RequestBody, Secrets, Corpus } mode = Mode::Serve;
	uint64_t messages = 0;
	std::string replacement;
	bool predict = false;
	for (; first < argc && std::strncmp(argv[first], "--", 2) == 0; first++) {
		const std::string a = argv[first];
		if (a == "--payload=random") {
			g_payload = Payload::Random;
		} else if (a == "--payload=text") {
			g_payload = Payload::Text;
		} else if (a == "--request-body") {
			mode = Mode::RequestBody;
		} else if (a == "--corpus") {
			mode = Mode::Corpus;
		} else if (a.rfind("--replacement=", 0) == 0) {
			replacement = a.substr(std::strlen("--replacement="));
			predict = true;
		} else if (a == "--secrets" && first + 1 < argc) {
			mode = Mode::Secrets;
			messages = std::strtoull(argv[++first], nullptr, 10);
		} else {
			std::fprintf(stderr, "%s: unknown option %s\n", argv[0], argv[first]);
			return 2;
		}
	}
	if (mode != Mode::Serve) {
		build_bodies();
		if (mode == Mode::RequestBody) {
			// Text: from a generator of its own, without a secret; random: the usual pattern.
			std::string body = field1(kUnaryText);
			if (g_payload == Payload::Text) {
				TextGen gen(0x5eed);
				std::string text;
				while (text.size() < kUnaryText)
					text += gen.line();
				body += text.substr(0, kUnaryText);
			} else {
				fill_pattern(body, kUnaryText);
			}
			std::fwrite(body.data(), 1, body.size(), stdout);
		} else if (mode == Mode::Corpus) {
			std::fwrite(g_corpus.data(), 1, g_corpus.size(), stdout);
		} else {
			// Secret i is in message offset / kMessageText of every cycle of kStreamPool messages.
			std::map<std::string, std::pair<size_t, uint64_t>> rules; // rule -> (length, count)
			for (const auto &s : g_secrets) {
				uint64_t m = s.offset / kMessageText;
				auto &[length, count] = rules[s.rule];
				length = s.text.size();
				count += messages > m ? (messages - 1 - m) / kStreamPool + 1 : 0;
			}
			for (const auto &[rule, lc] : rules)
				std::printf("%s %zu %llu\n", rule.c_str(), lc.first,
				            static_cast<unsigned long long>(lc.second));
			if (predict) {
				// Each pool message's size with its secrets replaced: the text, field 1's length
				// varint (16381 + a few bytes needs 3 bytes instead of 2) and the envelope.
				std::vector<int64_t> text(kStreamPool, kMessageText);
				for (const auto &s : g_secrets) {
					std::string r;
					for (size_t i = 0; i < replacement.size();) {
						if (replacement.compare(i, 6, "{rule}") == 0) {
							r += s.rule;
							i += 6;
						} else {
							r += replacement[i++];
						}
					}
					text[s.offset / kMessageText] +=
					    static_cast<int64_t>(r.size()) - static_cast<int64_t>(s.text.size());
				}
				uint64_t total = kEndStream.size();
				for (uint64_t m = 0; m < messages; m++) {
					const auto n = static_cast<size_t>(text[m % kStreamPool]);
					total += 5 + field1(n).size() + n;
				}
				std::printf("= %llu\n", static_cast<unsigned long long>(total));
			}
		}
		return 0;
	}
	if (argc - first < 3) {
		std::fprintf(stderr, "usage: %s [--payload=random|text] CERT KEY ADDR:PORT [ADDR:PORT...]\n", argv[0]);
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	build_bodies();
	g_ctx = SSL_CTX_new(TLS_server_method());
	SSL_CTX_set_min_proto_version(g_ctx, TLS1_2_VERSION);
	SSL_CTX_set_mode(g_ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
	                            SSL_MODE_RELEASE_BUFFERS);
	SSL_CTX_set_options(g_ctx, SSL_OP_NO_RENEGOTIATION);
#ifdef SSL_OP_IGNORE_UNEXPECTED_EOF
	SSL_CTX_set_options(g_ctx, SSL_OP_IGNORE_UNEXPECTED_EOF); // a peer closing without close_notify is just EOF
#endif
	if (SSL_CTX_use_certificate_chain_file(g_ctx, argv[first]) != 1 ||
	    SSL_CTX_use_PrivateKey_file(g_ctx, argv[first + 1], SSL_FILETYPE_PEM) != 1) {
		ERR_print_errors_fp(stderr);
		return 1;
	}
	SSL_CTX_set_alpn_select_cb(g_ctx, alpn_select, nullptr);

	g_epoll = epoll_create1(EPOLL_CLOEXEC);
	std::vector<int> listeners;
	for (int i = first + 2; i < argc; i++) {
		int fd = listen_on(argv[i]);
		listeners.push_back(fd);
		epoll_event ev{};
		ev.events = EPOLLIN;
		ev.data.ptr = nullptr;
		ev.data.u64 = static_cast<uint64_t>(fd) << 1 | 1; // odd: a listener
		epoll_ctl(g_epoll, EPOLL_CTL_ADD, fd, &ev);
	}
	std::printf("ready\n");
	std::fflush(stdout);

	std::vector<epoll_event> events(256);
	for (;;) {
		int n = epoll_wait(g_epoll, events.data(), static_cast<int>(events.size()), -1);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			die("epoll_wait");
		}
		for (int i = 0; i < n; i++) {
			uint64_t tag = events[i].data.u64;
			if (tag & 1) {
				int lfd = static_cast<int>(tag >> 1);
				for (;;) {
					int fd = ::accept4(lfd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
					if (fd < 0)
						break;
					int one = 1;
					setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
					auto *c = new Conn;
					c->fd = fd;
					c->ssl = SSL_new(g_ctx);
					SSL_set_fd(c->ssl, fd);
					epoll_event ev{};
					ev.events = EPOLLIN;
					ev.data.ptr = c;
					epoll_ctl(g_epoll, EPOLL_CTL_ADD, fd, &ev);
					on_event(c);
				}
				continue;
			}
			on_event(static_cast<Conn *>(events[i].data.ptr));
		}
	}
}
