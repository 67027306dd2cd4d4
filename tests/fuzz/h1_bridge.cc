// libFuzzer target for the HTTP/1.1 bridge (proxy/h1_bridge.cc): requests from the job and
// responses from Cursor, Content-Length, chunked and connection-delimited bodies, 1xx answers,
// pipelining, Cursor's text/event-stream fallback. The parser is only reachable through the
// bridge, so the bridge is driven as tests/unit/h1_bridge_test.cc does, with fake endpoints.
//
// Input: a flags byte, a schedule byte, then the job's bytes, then Cursor's answers, each after
// a line "=====".
// The schedule byte seeds the split points and the order in which the two sides are fed; the
// flags pick what the observer answers (forward, replace, refuse, defer), whether a masking-like
// stage holds messages back, and how the sides end.
//
// Besides crashes, leaks and undefined behaviour under the sanitizers, it checks what cordon
// promises the upstream: every request it forwards is well-formed HTTP/1.1 (a strict parser
// reads it), names exactly the connection's host, and is framed by chunked or Content-Length
// only; no more requests reach Cursor than the bridge counted exchanges; and what goes back to
// the job is well-formed HTTP/1.1 responses too.
#include <boost/asio/buffer.hpp>
#include <boost/beast/http/basic_parser.hpp>
#include <boost/beast/http/error.hpp>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "proxy/http_bridge.h"

using namespace cordon;
using namespace cordon::proxy;
namespace http = boost::beast::http;

namespace {

constexpr std::string_view kHost = "api2.cursor.sh";
constexpr std::string_view kSeparator = "\n=====\n";

void check(bool ok, const char *what)
{
	if (!ok) {
		std::fprintf(stderr, "invariant violated: %s\n", what);
		std::abort();
	}
}

struct Rng {
	uint64_t s;
	uint32_t next()
	{
		s ^= s << 13;
		s ^= s >> 7;
		s ^= s << 17;
		return static_cast<uint32_t>(s >> 11);
	}
};

// An approval that takes a few polls, then lets the message go or refuses it.
struct Later : Deferred {
	int polls;
	bool allow;
	Later(int p, bool a) : polls(p), allow(a) {}
	std::optional<Verdict> poll() override
	{
		if (polls-- > 0)
			return std::nullopt;
		return allow ? Verdict::forward() : Verdict::refuse("permission_denied", "fuzz: not approved");
	}
};

// A masking-like stage: holds the last two messages (and the last 8 bytes of a plain body)
// until the next ones or its deadline, masks "secret" in place, refuses "REFUSE".
struct HoldStage : MessageStage {
	std::vector<Message> held;
	std::string tail, seen;
	Clock::time_point due{};

	Verdict push(Message m, std::vector<Message> &ready) override
	{
		if (m.payload.find("REFUSE") != std::string::npos)
			return Verdict::refuse("permission_denied", "fuzz: stage refused");
		if (auto at = m.payload.find("secret"); at != std::string::npos) {
			m.payload.replace(at, 6, "******");
			m.modified = true;
		}
		held.push_back(std::move(m));
		if (held.size() > 2) {
			ready.push_back(std::move(held.front()));
			held.erase(held.begin());
		}
		due = Clock::now() + std::chrono::milliseconds(5);
		return Verdict::forward();
	}
	Verdict push_bytes(std::string_view in, std::string &out) override
	{
		tail += in;
		seen += in; // what came lately, held or not
		if (seen.find("REFUSE") != std::string::npos)
			return Verdict::refuse("permission_denied", "fuzz: stage refused bytes");
		if (tail.size() > 8) {
			out += tail.substr(0, tail.size() - 8);
			tail.erase(0, tail.size() - 8);
		}
		if (seen.size() > 8)
			seen.erase(0, seen.size() - 8);
		due = Clock::now() + std::chrono::milliseconds(5);
		return Verdict::forward();
	}
	Verdict flush(bool, Clock::time_point, std::vector<Message> &ready, std::string &bytes_out) override
	{
		for (auto &m : held)
			ready.push_back(std::move(m));
		held.clear();
		bytes_out += tail;
		tail.clear();
		return Verdict::forward();
	}
	size_t held_bytes() const override
	{
		size_t n = tail.size();
		for (const auto &m : held)
			n += m.original.size();
		return n;
	}
	std::optional<Clock::time_point> hold_deadline() const override
	{
		if (held.empty() && tail.empty())
			return std::nullopt;
		return due;
	}
};

struct Observer : ExchangeObserver {
	uint8_t flags;
	int messages = 0;
	explicit Observer(uint8_t f) : flags(f) {}

	Verdict on_headers(const RequestInfo &, Direction, bool, Headers &headers) override
	{
		if (flags & 0x04) // masking a header value, as masking does with credentials
			for (auto &h : headers)
				if (h.name == "authorization" || h.name == "x-secret")
					h.value = "[MASKED]";
		return Verdict::forward();
	}
	std::unique_ptr<MessageStage> make_stage(Direction, const RequestInfo &, rpc::Protocol, const std::string &,
	                                         const std::string &) override
	{
		if ((flags & 0x18) == 0x10)
			return std::make_unique<HoldStage>();
		return nullptr;
	}
	Verdict on_message(const RequestInfo &, const Message &m) override
	{
		const int n = messages++;
		switch (flags & 0x03) {
		case 1:
			return n % 2 ? Verdict::forward() : Verdict::replace(m.payload + "+fuzz");
		case 2:
			return n == 1 ? Verdict::refuse("permission_denied", "fuzz: refused") : Verdict::forward();
		case 3:
			return n % 2 ? Verdict::forward() : Verdict::defer(std::make_shared<Later>(n % 3, n % 5 != 4));
		default:
			return Verdict::forward();
		}
	}
};

std::span<const uint8_t> bytes(std::string_view s)
{
	return {reinterpret_cast<const uint8_t *>(s.data()), s.size()};
}

std::string lower(std::string_view s)
{
	std::string out(s);
	for (char &c : out)
		c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
	return out;
}

// Beast's parser, keeping the head and dropping the body (a string body would reserve whatever
// Content-Length says).
template <bool IsRequest> struct Reader : http::basic_parser<IsRequest> {
	http::verb method = http::verb::unknown;
	std::vector<std::pair<std::string, std::string>> fields; // names lower case

	Reader()
	{
		this->header_limit(1 << 20);
		this->body_limit(std::numeric_limits<std::uint64_t>::max());
		this->eager(true);
	}
	void on_request_impl(http::verb v, boost::beast::string_view, boost::beast::string_view, int,
	                     boost::beast::error_code &) override
	{
		method = v;
	}
	void on_response_impl(int, boost::beast::string_view, int, boost::beast::error_code &) override {}
	void on_field_impl(http::field, boost::beast::string_view name, boost::beast::string_view value,
	                   boost::beast::error_code &) override
	{
		fields.emplace_back(lower(std::string_view(name.data(), name.size())),
		                    std::string(value.data(), value.size()));
	}
	void on_header_impl(boost::beast::error_code &) override {}
	void on_body_init_impl(boost::optional<std::uint64_t> const &, boost::beast::error_code &) override {}
	std::size_t on_body_impl(boost::beast::string_view body, boost::beast::error_code &) override
	{
		return body.size();
	}
	void on_chunk_header_impl(std::uint64_t, boost::beast::string_view, boost::beast::error_code &) override {}
	std::size_t on_chunk_body_impl(std::uint64_t, boost::beast::string_view body,
	                               boost::beast::error_code &) override
	{
		return body.size();
	}
	void on_finish_impl(boost::beast::error_code &) override {}
};

// What went upstream, read back with Beast's strict parser: whole requests, then perhaps the
// start of one still being sent. Returns how many requests started.
size_t check_upstream(std::string_view out)
{
	size_t requests = 0;
	while (!out.empty()) {
		Reader<true> p;
		boost::beast::error_code ec;
		size_t used = 0;
		while (!p.is_done()) {
			size_t n = p.put(boost::asio::const_buffer(out.data() + used, out.size() - used), ec);
			used += n;
			if (ec == http::error::need_more || (!ec && n == 0))
				break;
			if (ec) {
				std::fprintf(stderr, "upstream output: %s\n", ec.message().c_str());
				check(false, "what cordon sends upstream is well-formed HTTP/1.1");
			}
		}
		if (!p.is_header_done()) {
			// A head not yet complete: only possible if the bridge sends a head in pieces,
			// which it never does (heads are appended whole).
			check(false, "request heads go upstream whole");
		}
		requests++;
		size_t hosts = 0;
		for (const auto &[name, raw] : p.fields) {
			const std::string value = lower(raw);
			if (name == "host") {
				hosts++;
				std::string host = value;
				if (auto colon = host.rfind(':'); colon != std::string::npos)
					host.resize(colon);
				while (!host.empty() && host.back() == '.')
					host.pop_back();
				check(host == kHost, "every request upstream names the connection's host");
			}
			check(name != "upgrade", "no upgrade reaches Cursor");
			if (name == "transfer-encoding")
				check(value == "chunked", "only chunked transfer coding upstream");
		}
		check(hosts == 1, "exactly one Host header upstream");
		check(p.method != http::verb::connect, "no CONNECT reaches Cursor");
		check(!(p.content_length() && p.chunked()), "never both Content-Length and chunked");
		if (!p.is_done())
			break; // the body is still being sent
		out.remove_prefix(used);
	}
	return requests;
}

// What went to the job, read back the same way: whole responses (1xx ones included), then
// perhaps the start of one still coming. Responses to HEAD have no body whatever they say, so
// the caller skips this when the job sent one.
void check_client(std::string_view out)
{
	while (!out.empty()) {
		Reader<false> p;
		boost::beast::error_code ec;
		size_t used = 0;
		while (!p.is_done()) {
			size_t n = p.put(boost::asio::const_buffer(out.data() + used, out.size() - used), ec);
			used += n;
			if (ec == http::error::need_more || (!ec && n == 0))
				break;
			if (ec) {
				std::fprintf(stderr, "client output: %s\n", ec.message().c_str());
				check(false, "what cordon sends the job is well-formed HTTP/1.1");
			}
		}
		check(p.is_header_done(), "response heads go to the job whole");
		if (!p.is_done())
			break;
		out.remove_prefix(used);
	}
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 2)
		return 0;
	const uint8_t flags = data[0];
	Rng rng{0x9e3779b97f4a7c15ULL ^ (uint64_t{data[1]} << 32 | size)};
	std::string_view input(reinterpret_cast<const char *>(data + 2), size - 2);
	// The job's bytes, then Cursor's answers: answer k is only sent once k + 1 requests have
	// gone upstream (a server does not answer what it has not been asked).
	std::string_view client = input;
	std::vector<std::string_view> answers;
	if (auto sep = input.find(kSeparator); sep != std::string_view::npos) {
		client = input.substr(0, sep);
		for (std::string_view rest = input.substr(sep + kSeparator.size());;) {
			const size_t next = rest.find(kSeparator);
			answers.push_back(rest.substr(0, next));
			if (next == std::string_view::npos)
				break;
			rest.remove_prefix(next + kSeparator.size());
		}
	}
	// Pieces of 1 byte, of a few, of a segment's worth, or everything at once.
	static constexpr size_t kMaxPiece[] = {1, 7, 1460, 1 << 20};
	const size_t max_piece = kMaxPiece[data[1] & 3];

	Observer observer(flags);
	BridgeSettings settings;
	settings.connection = "fuzz";
	settings.default_host = std::string(kHost);
	settings.observers.push_back(&observer);
	if (flags & 0x08) {
		settings.limits.max_message = 64;
		settings.limits.max_unary_body = 128;
	}
	if ((flags & 0x18) == 0x18)
		settings.upstream_unavailable = "fuzz: no upstream";
	std::unique_ptr<HttpBridge> bridge = make_h1_bridge(std::move(settings));

	std::string to_upstream, to_client;
	bool failed = false;
	auto drain = [&] {
		for (int i = 0; i < 64 && !failed; i++) {
			const size_t budget = (rng.next() & 1) ? 1 << 20 : 1 + rng.next() % 512;
			std::string up, down;
			if (!bridge->produce_upstream_output(up, budget) ||
			    !bridge->produce_client_output(down, budget))
				failed = true;
			check(up.size() <= std::max<size_t>(budget, 0) && down.size() <= budget,
			      "output within the budget");
			to_upstream += up;
			to_client += down;
			if (up.empty() && down.empty())
				break;
		}
	};
	auto release = [&] {
		for (int i = 0; i < 8 && !failed; i++) {
			auto due = bridge->hold_deadline();
			if (!due)
				break;
			if (!bridge->release_held(*due))
				failed = true;
			drain();
		}
	};

	// Request heads sent upstream so far (the bridge writes each request line whole).
	auto asked = [&] {
		size_t n = 0;
		for (size_t at = to_upstream.find(" HTTP/1.1\r\n"); at != std::string::npos;
		     at = to_upstream.find(" HTTP/1.1\r\n", at + 1))
			n++;
		return n;
	};
	size_t ci = 0, answer = 0, ui = 0;
	for (int steps = 0; steps < 100000 && !failed && !bridge->done(); steps++) {
		while (answer < answers.size() && ui == answers[answer].size() && answer + 1 < answers.size() &&
		       asked() > answer + 1) {
			answer++;
			ui = 0;
		}
		const bool client_ready = ci < client.size() && bridge->wants_client_data();
		const bool upstream_ready = answer < answers.size() && ui < answers[answer].size() &&
		                            asked() > answer && bridge->wants_upstream_data();
		if (!client_ready && !upstream_ready)
			break;
		const bool from_client = client_ready && (!upstream_ready || (rng.next() & 1));
		std::string_view side = from_client ? client : answers[answer];
		size_t &at = from_client ? ci : ui;
		const size_t n = std::min(side.size() - at, 1 + rng.next() % max_piece);
		Status st = from_client ? bridge->on_client_data(bytes(side.substr(at, n)))
		                        : bridge->on_upstream_data(bytes(side.substr(at, n)));
		at += n;
		if (!st)
			failed = true;
		drain();
		if (rng.next() % 4 == 0)
			release();
	}
	if (!failed) {
		release();
		if (flags & 0x20)
			bridge->on_client_eof();
		if (!(flags & 0x80))
			bridge->on_upstream_eof((flags & 0x40) != 0);
		drain();
		release();
	}
	(void)bridge->protocol();

	const size_t requests = check_upstream(to_upstream);
	static const bool verbose = std::getenv("H1_BRIDGE_FUZZ_VERBOSE") != nullptr;
	if (verbose) { // what a seed did: H1_BRIDGE_FUZZ_VERBOSE=1 build/fuzz/h1_bridge FILE
		std::fprintf(stderr, "exchanges %llu, requests upstream %zu\n--- upstream\n",
		             static_cast<unsigned long long>(bridge->exchanges()), requests);
		std::fwrite(to_upstream.data(), 1, to_upstream.size(), stderr);
		std::fprintf(stderr, "\n--- client\n");
		std::fwrite(to_client.data(), 1, to_client.size(), stderr);
		std::fprintf(stderr, "\n---\n");
	}
	check(requests <= bridge->exchanges(), "no more requests upstream than exchanges");
	if (client.find("HEAD") == std::string_view::npos)
		check_client(to_client);
	return 0;
}
