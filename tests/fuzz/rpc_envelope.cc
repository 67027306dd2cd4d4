// libFuzzer target for Connect/gRPC envelopes and gzip (proxy/rpc.cc), and for the body pipe that
// puts them together (proxy/exchange.cc: envelope framing, the compressed flag, decompression
// within the message limit). Besides crashes, leaks, hangs and undefined behaviour under the
// sanitizers, it checks what the proxy relies on:
// - the envelope decoder gives the same envelopes whatever the pieces the bytes arrive in, each
//   within the message limit, and they re-encode to exactly the bytes consumed; an error stays;
// - gunzip never returns more than its limit, and while it runs, memory stays bounded by the
//   limit, not by the input's compression ratio (a gzip bomb is refused, never inflated): every
//   allocation made during the call is counted through the sanitizer's malloc hooks;
// - what gunzip accepts, gzip and gunzip give back unchanged;
// - a body pipe with no one changing anything forwards the body byte for byte (a prefix of it
//   when it fails); one with a replacing observer emits well-formed envelopes whose payloads,
//   decompressed when the original was, are the replacements.
//
// - a request path normalizes to one whose separators and dot segments are those a server sees:
//   no '/' more or less than in the input, no "." or ".." segment.
//
// Input: byte 0 chooses the limit, protocol, stream encoding and observer (0x80: the rest is a
// request path instead); byte 1 the size of the pieces the body is written in; the rest is the
// body.
#include <sanitizer/allocator_interface.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "proxy/exchange.h"
#include "proxy/rpc.h"

using namespace cordon;
using namespace cordon::proxy;
using namespace cordon::rpc;

namespace {

void check(bool ok, const char *what, std::string_view detail = {})
{
	if (!ok) {
		std::fprintf(stderr, "invariant violated: %s\n%.2000s\n", what, std::string(detail).c_str());
		std::abort();
	}
}

std::span<const uint8_t> bytes(std::string_view s)
{
	return {reinterpret_cast<const uint8_t *>(s.data()), s.size()};
}

// --- memory accounting while gunzip runs (this target is single-threaded) -------------------
bool tracking = false;
size_t live = 0, peak = 0, largest = 0;

void malloc_hook(const volatile void *, size_t size)
{
	if (!tracking)
		return;
	live += size;
	peak = std::max(peak, live);
	largest = std::max(largest, size);
}

void free_hook(const volatile void *ptr)
{
	if (!tracking || !ptr || !__sanitizer_get_ownership(const_cast<const void *>(ptr)))
		return;
	const size_t size = __sanitizer_get_allocated_size(const_cast<const void *>(ptr));
	live -= std::min(live, size);
}

// zlib's inflate state and 32 KiB window, error messages: what gunzip may use beyond its output.
constexpr size_t kSlack = 64 * 1024;

Result<std::string> bounded_gunzip(std::string_view compressed, size_t limit)
{
	live = peak = largest = 0;
	tracking = true;
	Result<std::string> out = gunzip(compressed, limit);
	tracking = false;
	// The output string grows by doubling: its buffer may reach twice the limit, and while it
	// moves, the old buffer is live too.
	check(largest <= 2 * limit + kSlack, "gunzip allocates no block beyond twice its limit");
	check(peak <= 3 * limit + kSlack, "gunzip's memory is bounded by its limit");
	if (out)
		check(out->size() <= limit, "gunzip returns no more than its limit");
	return out;
}

void gzip_checks(std::string_view compressed, size_t limit)
{
	auto plain = bounded_gunzip(compressed, limit);
	if (!plain)
		return;
	auto again = gzip(*plain);
	check(again.ok(), "gzip compresses what gunzip gave");
	auto back = gunzip(*again, plain->size());
	check(back.ok() && *back == *plain, "gzip then gunzip is the identity", *plain);
}

// --- the envelope decoder -------------------------------------------------------------------

struct Decoded {
	std::vector<Envelope> envelopes;
	bool ok = true;
	size_t pending = 0;
};

Decoded decode(std::string_view body, size_t limit, size_t piece)
{
	EnvelopeDecoder d(limit);
	Decoded r;
	for (size_t i = 0; i < body.size() && r.ok; i += piece)
		r.ok = d.feed(bytes(body.substr(i, piece)), r.envelopes).ok();
	if (!r.ok)
		check(!d.feed(bytes("\0\0\0\0\0"), r.envelopes).ok(), "an envelope error stays");
	r.pending = d.pending_bytes();
	return r;
}

void envelope_checks(std::string_view body, size_t limit, size_t piece)
{
	const Decoded whole = decode(body, limit, body.size() + 1);
	const Decoded split = decode(body, limit, piece);
	check(whole.ok == split.ok, "the pieces do not change whether the stream is valid");
	check(whole.envelopes.size() == split.envelopes.size(), "the pieces do not change the envelopes");
	std::string consumed;
	for (size_t i = 0; i < whole.envelopes.size(); i++) {
		const Envelope &a = whole.envelopes[i], &b = split.envelopes[i];
		check(a.flags == b.flags && a.payload == b.payload, "the pieces do not change an envelope");
		check(a.payload.size() <= limit, "an envelope is within the message limit");
		consumed += encode_envelope(a.flags, a.payload);
		if (a.flags & kFlagCompressed)
			gzip_checks(a.payload, limit);
	}
	check(body.substr(0, consumed.size()) == consumed, "envelopes re-encode to the bytes consumed");
	if (whole.ok) {
		check(whole.pending == body.size() - consumed.size(), "the rest is pending");
		check(whole.pending == split.pending, "the pieces do not change what is pending");
		check(whole.pending < 5 ||
		          body.size() - consumed.size() - 5 < (uint32_t{uint8_t(body[consumed.size() + 1])} << 24 |
		                                               uint32_t{uint8_t(body[consumed.size() + 2])} << 16 |
		                                               uint32_t{uint8_t(body[consumed.size() + 3])} << 8 |
		                                               uint32_t{uint8_t(body[consumed.size() + 4])}),
		      "only a partial envelope is left pending");
	}
}

// --- the body pipe --------------------------------------------------------------------------

struct Replacer : ExchangeObserver {
	std::vector<std::string> replacements;
	Verdict on_message(const RequestInfo &, const Message &m) override
	{
		// Grows, shrinks or empties the payload, depending on it.
		std::string r = m.payload.size() % 3 == 0   ? std::string()
		                : m.payload.size() % 3 == 1 ? m.payload + std::string(140, 'x')
		                                            : m.payload.substr(0, m.payload.size() / 2);
		replacements.push_back(r);
		return Verdict::replace(std::move(r));
	}
};

void pipe_checks(std::string_view body, size_t limit, size_t piece, Protocol protocol, std::string encoding,
                 bool replace)
{
	RequestInfo request;
	request.protocol = protocol;
	request.path = "/aiserver.v1.ChatService/StreamUnifiedChatWithTools";
	Limits limits;
	limits.max_message = limit;
	limits.max_unary_body = limit;
	Replacer replacer;
	std::vector<ExchangeObserver *> observers;
	if (replace)
		observers.push_back(&replacer);
	const bool unary = protocol == Protocol::ConnectUnary;
	BodyPipe pipe(Direction::Request, request, protocol, unary ? encoding : "", unary ? "" : encoding, observers,
	              limits);
	std::string out;
	bool ok = true;
	for (size_t i = 0; i < body.size() && ok; i += piece)
		ok = pipe.write(bytes(body.substr(i, piece)), out).ok();
	if (ok)
		ok = pipe.finish(out).ok();
	check(!pipe.refusal(), "nothing refuses here");
	if (!replace) {
		check(!pipe.changed(), "nothing changed");
		check(body.substr(0, out.size()) == out, "untouched bytes leave as they arrived", out);
		if (ok)
			check(out == body, "an untouched body leaves whole", out);
		return;
	}
	if (!ok)
		return;
	if (unary) {
		check(replacer.replacements.size() == 1, "a unary body is one message");
		if (encoding == "gzip") {
			// (Past 1 MiB, gunzip's ratio guard may refuse what gzip made of a repetitive text.)
			auto plain = gunzip(out, replacer.replacements[0].size() + 1);
			check(replacer.replacements[0].size() > (1 << 20) ||
			          (plain.ok() && *plain == replacer.replacements[0]),
			      "a replaced unary body is recompressed");
		} else {
			check(out == replacer.replacements[0], "a replaced unary body is the replacement");
		}
		return;
	}
	EnvelopeDecoder d(SIZE_MAX >> 1);
	std::vector<Envelope> envelopes;
	check(d.feed(bytes(out), envelopes).ok() && d.at_boundary(), "replaced messages are whole envelopes", out);
	check(envelopes.size() == replacer.replacements.size(), "one envelope per replaced message");
	for (size_t i = 0; i < envelopes.size(); i++) {
		std::string payload = envelopes[i].payload;
		if (envelopes[i].flags & kFlagCompressed) {
			auto plain = gunzip(payload, replacer.replacements[i].size() + 1);
			if (!plain.ok() && replacer.replacements[i].size() > (1 << 20))
				continue; // the ratio guard, as above
			check(plain.ok(), "a recompressed payload decompresses");
			payload = *plain;
		}
		check(payload == replacer.replacements[i], "an envelope carries its replacement");
	}
}

// The last is the production default.
void path_checks(std::string_view target)
{
	auto normalized = normalize_path(target);
	const std::string_view path = target.substr(0, target.find('?'));
	if (!normalized)
		return;
	const std::string_view out = std::string_view(*normalized).substr(0, normalized->find('?'));
	check(!out.empty() && out.front() == '/', "a normalized path is origin-form");
	check(std::count(out.begin(), out.end(), '/') == std::count(path.begin(), path.end(), '/'),
	      "normalizing adds or removes no separator", *normalized);
	for (size_t seg = 0; seg != std::string_view::npos;) {
		const size_t end = out.find('/', seg + 1);
		const std::string_view part = out.substr(seg + 1, end == std::string_view::npos ? end : end - seg - 1);
		check(part != "." && part != "..", "no dot segment survives", *normalized);
		seg = end;
	}
	check(normalized->substr(out.size()) == target.substr(path.size()), "the query is kept as it is");
	const RpcName rpc = parse_rpc_path(*normalized);
	if (!rpc.empty())
		check("/" + rpc.full() == out, "an RPC name is the whole path", *normalized);
	(void)classify_request("POST", *normalized, "application/proto");
}

constexpr size_t kLimits[] = {16, 1024, 64 * 1024, 16 << 20};
constexpr Protocol kProtocols[] = {Protocol::ConnectStream, Protocol::Grpc, Protocol::GrpcWeb, Protocol::ConnectUnary};

} // namespace

extern "C" int LLVMFuzzerInitialize(int *, char ***)
{
	__sanitizer_install_malloc_and_free_hooks(malloc_hook, free_hook);
	return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 2)
		return 0;
	const uint8_t config = data[0];
	if (config & 0x80) {
		path_checks(std::string_view(reinterpret_cast<const char *>(data + 1), size - 1));
		return 0;
	}
	const size_t piece = data[1] == 0 ? 1 : data[1];
	const std::string_view body(reinterpret_cast<const char *>(data + 2), size - 2);
	const size_t limit = kLimits[config & 3];
	const Protocol protocol = kProtocols[(config >> 2) & 3];
	const std::string encoding = (config & 0x10) ? "gzip" : (config & 0x20) ? "br" : "";
	const bool replace = config & 0x40;

	envelope_checks(body, limit, piece);
	// A unary Connect body or an HTTP content-encoding: the whole body is gzip.
	gzip_checks(body, limit);
	pipe_checks(body, limit, piece, protocol, encoding, replace);
	return 0;
}
