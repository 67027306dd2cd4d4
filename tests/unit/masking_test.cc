// Masking on the data path, with the real engine (built-in rules, vectorscan, RE2): header
// values, each carrier inside a BodyPipe, secrets split across streamed messages, the policy for
// what cannot be inspected, and the tally the journal reports.
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "config/policy.h"
#include "daemon/masking.h"
#include "mask_examples.h"
#include "proxy/message_decoder.h"
#include "proxy/rpc.h"

using namespace cordon;
using proxy::BodyPipe;
using proxy::Direction;
using proxy::Limits;
using rpc::Protocol;

namespace {

const std::string kAwsKey = "AKIAQYLPMN5HFIQR7XYZ";
const std::string kGithubToken = "ghp_R8fK2mQ9xLpW4vZ7nT1bY6cH3jD0sA5eG2uK";

// Cursor's message shapes, as `make` builds them next to the test binary (build/cursor.desc).
const proxy::MessageDecoder *decoder()
{
	static std::unique_ptr<proxy::MessageDecoder> loaded = [] {
		std::error_code ec;
		auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
		auto d = proxy::MessageDecoder::load((exe.parent_path() / "cursor.desc").string());
		if (!d)
			throw std::runtime_error("masking tests need build/cursor.desc (make all): " +
			                         d.error().message());
		return std::move(*d);
	}();
	return loaded.get();
}

// Compiling the rules takes a while: once for the whole file.
MaskEngine &engine(bool block_unscannable = true, bool typed = true)
{
	static std::unique_ptr<MaskEngine> slots[2][2];
	auto &slot = slots[block_unscannable][typed];
	if (!slot) {
		auto p = default_policy();
		if (!block_unscannable)
			p.mutable_mask()->set_unscannable(config::PASS);
		auto e = MaskEngine::create(p.mask(), typed ? decoder() : nullptr);
		if (!e)
			throw std::runtime_error(e.error().message());
		slot = std::move(*e);
	}
	return *slot;
}

std::string varint(uint64_t v)
{
	std::string out;
	while (v >= 0x80) {
		out.push_back(static_cast<char>((v & 0x7f) | 0x80));
		v >>= 7;
	}
	out.push_back(static_cast<char>(v));
	return out;
}
// A length-delimited protobuf field.
std::string field(uint32_t number, const std::string &bytes)
{
	return varint((uint64_t{number} << 3) | 2) + varint(bytes.size()) + bytes;
}
// StreamUnifiedChatResponseWithTools { stream_unified_chat_response (2) { text (1) } }
std::string chat_text(const std::string &text)
{
	return field(2, field(1, text));
}
// ... { stream_unified_chat_response (2) { thinking (25) { text (1) } } }
std::string chat_thinking(const std::string &text)
{
	return field(2, field(25, field(1, text)));
}
std::string text_of(const std::string &message) // inverse of chat_text for the tests' messages
{
	// 0x12 len 0x0a len text
	size_t at = 1;
	while (static_cast<uint8_t>(message[at]) & 0x80)
		at++;
	at += 2;
	while (static_cast<uint8_t>(message[at]) & 0x80)
		at++;
	return message.substr(at + 1);
}

struct Harness {
	ConnectionMasker masker;
	proxy::RequestInfo request;
	// The tests' engines live for the whole run: shared without ownership.
	explicit Harness(MaskEngine &e) : masker(std::shared_ptr<MaskEngine>(&e, [](MaskEngine *) {}))
	{
		request.number = 1;
		request.rpc = {"aiserver.v1.ChatService", "StreamUnifiedChatWithTools"};
	}

	std::unique_ptr<BodyPipe> pipe(Direction d, Protocol p, const std::string &type,
	                               const std::string &encoding = "")
	{
		return std::make_unique<BodyPipe>(d, request, p, encoding, "",
		                                  std::vector<proxy::ExchangeObserver *>{&masker}, Limits{}, type);
	}
};

std::span<const uint8_t> bytes(const std::string &s)
{
	return {reinterpret_cast<const uint8_t *>(s.data()), s.size()};
}

// The payloads of the envelopes in `stream`.
std::vector<std::string> payloads(const std::string &stream)
{
	rpc::EnvelopeDecoder decoder(1 << 20);
	std::vector<rpc::Envelope> envs;
	EXPECT_TRUE(decoder.feed(bytes(stream), envs));
	std::vector<std::string> out;
	for (auto &e : envs)
		out.push_back(e.payload);
	return out;
}

} // namespace

TEST(Masking, HeaderValuesAreMaskedExceptCursorsOwnCredentials)
{
	Harness h(engine());
	proxy::Headers headers = {{":path", "/v0/me?token=" + kGithubToken},
	                          {"authorization", "Bearer " + kGithubToken},
	                          {"x-debug", "key " + kAwsKey},
	                          {"content-type", "application/json"}};
	auto v = h.masker.on_headers(h.request, Direction::Request, false, headers);
	EXPECT_EQ(v.kind, proxy::Verdict::Kind::Forward);
	EXPECT_EQ(headers[0].value, "/v0/me?token=[MASKED:github-pat]");
	EXPECT_EQ(headers[1].value, "Bearer " + kGithubToken) << "the job's credential for Cursor is exempt";
	EXPECT_EQ(headers[2].value, "key [MASKED:aws-access-key-id]");
	auto t = h.masker.take(1);
	EXPECT_EQ(t.masked, 2u);
	EXPECT_EQ(t.rules, (std::set<std::string>{"aws-access-key-id", "github-pat"}));
	EXPECT_EQ(h.masker.take(1).masked, 0u) << "taken once";
}

TEST(Masking, ResponseHeadersAreMaskedToo)
{
	Harness h(engine());
	proxy::Headers headers = {{"authorization", "Bearer " + kGithubToken}};
	h.masker.on_headers(h.request, Direction::Response, false, headers);
	EXPECT_EQ(headers[0].value, "Bearer [MASKED:github-pat]") << "the exemption is for requests only";
}

TEST(Masking, UnaryProtobufIsRewrittenAndReframed)
{
	Harness h(engine());
	auto pipe = h.pipe(Direction::Request, Protocol::ConnectUnary, "application/proto");
	const std::string body = field(1, "export AWS_ACCESS_KEY_ID=" + kAwsKey + "\n") + field(2, "model");
	std::string out;
	ASSERT_TRUE(pipe->write(bytes(body), out));
	ASSERT_TRUE(pipe->finish(out));
	EXPECT_EQ(out, field(1, "export AWS_ACCESS_KEY_ID=[MASKED:aws-access-key-id]\n") + field(2, "model"));
	EXPECT_TRUE(pipe->changed());
}

TEST(Masking, GzipUnaryJsonIsDecompressedMaskedAndRecompressed)
{
	Harness h(engine());
	auto pipe = h.pipe(Direction::Request, Protocol::ConnectUnary, "application/json", "gzip");
	const std::string json = R"({"text":"token )" + kGithubToken + R"(","n":1})";
	std::string out;
	ASSERT_TRUE(pipe->write(bytes(*rpc::gzip(json)), out));
	ASSERT_TRUE(pipe->finish(out));
	auto plain = rpc::gunzip(out, 1 << 20);
	ASSERT_TRUE(plain);
	EXPECT_EQ(*plain, R"({"text":"token [MASKED:github-pat]","n":1})");
}

TEST(Masking, UntouchedMessagesLeaveByteForByte)
{
	Harness h(engine());
	auto pipe = h.pipe(Direction::Response, Protocol::ConnectStream, "application/connect+proto");
	const std::string stream =
	    rpc::encode_envelope(0, chat_text("hello world\n")) + rpc::encode_envelope(rpc::kFlagEndStream, "{}");
	std::string out;
	ASSERT_TRUE(pipe->write(bytes(stream), out));
	ASSERT_TRUE(pipe->finish(out));
	EXPECT_EQ(out, stream);
	EXPECT_FALSE(pipe->changed());
}

TEST(Masking, KeySplitAcrossStreamedMessagesIsMaskedWhereItStarts)
{
	Harness h(engine());
	auto pipe = h.pipe(Direction::Response, Protocol::ConnectStream, "application/connect+proto");
	std::string out;
	ASSERT_TRUE(pipe->write(bytes(rpc::encode_envelope(0, chat_text("Here is a key: AKIAQYLP"))), out));
	EXPECT_TRUE(out.empty()) << "held: its end could begin a secret";
	EXPECT_TRUE(pipe->hold_deadline().has_value());
	EXPECT_GT(pipe->held_bytes(), 0u);
	ASSERT_TRUE(pipe->write(bytes(rpc::encode_envelope(0, chat_text("MN5HFIQR7XYZ and more "))), out));
	auto got = payloads(out);
	ASSERT_EQ(got.size(), 2u);
	EXPECT_EQ(text_of(got[0]), "Here is a key: [MASKED:aws-access-key-id]");
	EXPECT_EQ(text_of(got[1]), " and more ");
	EXPECT_FALSE(pipe->hold_deadline().has_value());
	auto t = h.masker.take(1);
	EXPECT_EQ(t.masked, 1u);
}

TEST(Masking, ThinkingInBetweenDoesNotHideASplitKey)
{
	Harness h(engine());
	auto pipe = h.pipe(Direction::Response, Protocol::ConnectStream, "application/connect+proto");
	std::string out;
	ASSERT_TRUE(pipe->write(bytes(rpc::encode_envelope(0, chat_text("key: AKIAQYLPMN5H"))), out));
	ASSERT_TRUE(pipe->write(bytes(rpc::encode_envelope(0, chat_thinking("still thinking "))), out));
	ASSERT_TRUE(pipe->write(bytes(rpc::encode_envelope(0, chat_text("FIQR7XYZ\n"))), out));
	auto got = payloads(out);
	ASSERT_EQ(got.size(), 3u);
	EXPECT_EQ(text_of(got[0]), "key: [MASKED:aws-access-key-id]");
	EXPECT_EQ(got[1], chat_thinking("still thinking "));
	EXPECT_EQ(text_of(got[2]), "\n");
}

TEST(Masking, AHeldMessageGoesAtItsDeadlineAsItIs)
{
	Harness h(engine());
	auto pipe = h.pipe(Direction::Response, Protocol::ConnectStream, "application/connect+proto");
	std::string out;
	const std::string first = rpc::encode_envelope(0, chat_text("partial AKIA"));
	ASSERT_TRUE(pipe->write(bytes(first), out));
	ASSERT_TRUE(out.empty());
	auto due = *pipe->hold_deadline();
	ASSERT_TRUE(pipe->release_held(due - std::chrono::milliseconds(1), out));
	EXPECT_TRUE(out.empty()) << "not yet due";
	ASSERT_TRUE(pipe->release_held(due, out));
	EXPECT_EQ(out, first);
}

TEST(Masking, EndOfStreamReleasesEverything)
{
	Harness h(engine());
	auto pipe = h.pipe(Direction::Response, Protocol::ConnectStream, "application/connect+proto");
	std::string out;
	ASSERT_TRUE(pipe->write(bytes(rpc::encode_envelope(0, chat_text("tail AKIAQYLPMN5HFIQR7XYZ"))), out));
	ASSERT_TRUE(out.empty());
	ASSERT_TRUE(pipe->write(bytes(rpc::encode_envelope(rpc::kFlagEndStream, "{}")), out));
	auto got = payloads(out);
	ASSERT_EQ(got.size(), 2u);
	EXPECT_EQ(text_of(got[0]), "tail [MASKED:aws-access-key-id]");
	EXPECT_EQ(got[1], "{}");
}

TEST(Masking, ConnectErrorAtTheEndIsJsonAndMasked)
{
	Harness h(engine());
	auto pipe = h.pipe(Direction::Response, Protocol::ConnectStream, "application/connect+proto");
	std::string out;
	const std::string end = R"({"error":{"code":"internal","message":"bad token )" + kGithubToken + R"("}})";
	ASSERT_TRUE(pipe->write(bytes(rpc::encode_envelope(rpc::kFlagEndStream, end)), out));
	auto got = payloads(out);
	ASSERT_EQ(got.size(), 1u);
	EXPECT_EQ(got[0], R"({"error":{"code":"internal","message":"bad token [MASKED:github-pat]"}})");
}

TEST(Masking, MalformedProtobufIsBlockedByDefault)
{
	Harness h(engine());
	auto pipe = h.pipe(Direction::Request, Protocol::ConnectStream, "application/connect+proto");
	std::string out;
	ASSERT_TRUE(pipe->write(bytes(rpc::encode_envelope(0, "\x0a\x50 too short")), out));
	ASSERT_TRUE(pipe->refusal().has_value());
	EXPECT_NE(pipe->refusal()->reason.find("cannot inspect the request"), std::string::npos)
	    << pipe->refusal()->reason;
	EXPECT_TRUE(out.empty()) << "nothing of it leaves";
}

TEST(Masking, MalformedJsonPassesUnscannedWhenThePolicySaysSo)
{
	Harness h(engine(false));
	auto pipe = h.pipe(Direction::Request, Protocol::ConnectUnary, "application/json");
	std::string out;
	ASSERT_TRUE(pipe->write(bytes(std::string("{\"a\": ")), out));
	ASSERT_TRUE(pipe->finish(out));
	EXPECT_FALSE(pipe->refusal().has_value());
	EXPECT_EQ(out, "{\"a\": ");
	EXPECT_EQ(h.masker.take(1).unscanned, 1u);
}

TEST(Masking, CorruptGzipEnvelopeIsBlocked)
{
	Harness h(engine());
	auto pipe = std::make_unique<BodyPipe>(Direction::Request, h.request, Protocol::ConnectStream, "", "gzip",
	                                       std::vector<proxy::ExchangeObserver *>{&h.masker}, Limits{},
	                                       "application/connect+proto");
	std::string out;
	ASSERT_TRUE(pipe->write(bytes(rpc::encode_envelope(rpc::kFlagCompressed, "not gzip at all")), out));
	ASSERT_TRUE(pipe->refusal().has_value());
	EXPECT_TRUE(out.empty());
}

TEST(Masking, PlainBodiesAreMaskedInPlaceKeepingTheirLength)
{
	Harness h(engine());
	auto pipe = h.pipe(Direction::Request, Protocol::Other, "text/plain");
	const std::string body = "line one\nAWS_ACCESS_KEY_ID=" + kAwsKey + "\nline three\n";
	std::string out;
	// One byte at a time: a secret split across every read.
	for (char c : body)
		ASSERT_TRUE(pipe->write(bytes(std::string(1, c)), out));
	ASSERT_TRUE(pipe->finish(out));
	EXPECT_EQ(out.size(), body.size());
	EXPECT_EQ(out, "line one\nAWS_ACCESS_KEY_ID=" + std::string(kAwsKey.size(), '*') + "\nline three\n");
	EXPECT_EQ(h.masker.take(1).masked, 1u);
}

TEST(Masking, CompressedPlainRequestBodiesAreBlocked)
{
	Harness h(engine());
	auto pipe = h.pipe(Direction::Request, Protocol::Other, "application/octet-stream", "br");
	std::string out;
	ASSERT_TRUE(pipe->write(bytes(std::string("whatever")), out));
	ASSERT_TRUE(pipe->refusal().has_value());
	EXPECT_TRUE(out.empty());
}

TEST(Masking, EverySplitOfAKeyAcrossTwoMessages)
{
	const std::string text = "export AWS_ACCESS_KEY_ID=" + kAwsKey + "\n";
	for (size_t cut = 1; cut < text.size(); cut++) {
		Harness h(engine());
		auto pipe = h.pipe(Direction::Request, Protocol::ConnectStream, "application/connect+proto");
		std::string out;
		ASSERT_TRUE(pipe->write(bytes(rpc::encode_envelope(0, chat_text(text.substr(0, cut))) +
		                              rpc::encode_envelope(0, chat_text(text.substr(cut)))),
		                        out));
		ASSERT_TRUE(pipe->finish(out));
		std::string joined;
		for (auto &p : payloads(out))
			joined += text_of(p);
		EXPECT_EQ(joined, "export AWS_ACCESS_KEY_ID=[MASKED:aws-access-key-id]\n") << "cut " << cut;
	}
}

namespace {

std::string varint_field(uint32_t number, uint64_t value)
{
	return varint(uint64_t{number} << 3) + varint(value);
}

// A chat request as tests/standin/client.mjs sends it, one file attached both ways:
// StreamUnifiedChatRequestWithTools { stream_unified_chat_request (1) {
//   conversation (1) { text (1), type (2) = HUMAN, attached_code_chunks (3) {
//     relative_workspace_path (1), start_line_number (2) = 1, lines (3) = content.split('\n') },
//     bubble_id (13) },
//   model_details (5) { model_name (1) },
//   current_file (15) { relative_workspace_path (1), contents (2) = content },
//   conversation_id (23) } }
std::string chat_request(const std::string &prompt, const std::string &path, const std::string &content,
                         const std::string &bubble_id)
{
	std::string chunk = field(1, path) + varint_field(2, 1);
	for (size_t at = 0;;) { // JavaScript's split: "a\n" is ["a", ""], and "" lines are sent too
		const size_t nl = content.find('\n', at);
		chunk += field(3, content.substr(at, nl == std::string::npos ? std::string::npos : nl - at));
		if (nl == std::string::npos)
			break;
		at = nl + 1;
	}
	const std::string conversation = field(1, prompt) + varint_field(2, 1) + field(3, chunk) + field(13, bubble_id);
	const std::string request = field(1, conversation) + field(5, field(1, "claude-4-sonnet")) +
	                            field(15, field(1, path) + field(2, content)) +
	                            field(23, "9b0c6f4e-5d1a-4c1e-9a57-3f1f0c2d7e11");
	return field(1, request);
}

// The request as the other side reads it (Cursor's schema, proto field names).
nlohmann::json chat_request_json(const std::string &payload)
{
	const rpc::RpcName rpc{"aiserver.v1.ChatService", "StreamUnifiedChatWithTools"};
	return nlohmann::json::parse(decoder()->to_json(rpc, Direction::Request, payload, false))
	    .at("stream_unified_chat_request");
}

} // namespace

// The bidi chat of tests/integration/test_recording.py: two requests, each carrying the same file
// `deploy/aws.env` as attached_code_chunks.lines (["AWS_ACCESS_KEY_ID=<key>", ""]: no newline,
// so the line ends mid-word and is held) and as current_file.contents. Each request is whole: the
// second one's line is not the continuation of the first one's, whether it arrives while that
// is still held or after its deadline let it go. Joined, the two lines read as one long
// generic-secret value ("...XYZAWS_ACCESS_KEY_ID=AKIA...") that swallowed the second line whole.
TEST(Masking, TheSameFileInTwoChatRequestsIsMaskedInEachAndNothingIsLost)
{
	const std::string content = "AWS_ACCESS_KEY_ID=" + kAwsKey + "\n";
	const std::string masked_line = "AWS_ACCESS_KEY_ID=[MASKED:aws-access-key-id]";
	for (bool deadline_between : {false, true}) {
		SCOPED_TRACE(deadline_between ? "the first request left at its deadline" : "both held together");
		Harness h(engine());
		auto pipe = h.pipe(Direction::Request, Protocol::ConnectStream, "application/connect+proto");
		std::string out;
		ASSERT_TRUE(
		    pipe->write(bytes(rpc::encode_envelope(0, chat_request("explain", "deploy/aws.env", content,
		                                                           "0d4f8a52-8f0e-4b6a-9c53-1b7e2a9d6c01"))),
		                out));
		if (deadline_between) {
			ASSERT_TRUE(pipe->hold_deadline().has_value());
			ASSERT_TRUE(pipe->release_held(*pipe->hold_deadline(), out));
			ASSERT_EQ(payloads(out).size(), 1u);
		}
		ASSERT_TRUE(pipe->write(
		    bytes(rpc::encode_envelope(0, chat_request("now leak a token", "deploy/aws.env", content,
		                                               "6a2e9c1d-3b7f-4e80-8d15-c4f0a9b2e367"))),
		    out));
		ASSERT_TRUE(pipe->finish(out));
		const auto got = payloads(out);
		ASSERT_EQ(got.size(), 2u);
		const std::vector<std::string> prompts = {"explain", "now leak a token"};
		for (size_t i = 0; i < got.size(); i++) {
			SCOPED_TRACE("request " + std::to_string(i + 1));
			const auto r = chat_request_json(got[i]);
			const auto &turn = r.at("conversation").at(0);
			EXPECT_EQ(turn.at("text"), prompts[i]);
			EXPECT_EQ(turn.at("attached_code_chunks").at(0).at("lines"), nlohmann::json({masked_line, ""}));
			EXPECT_EQ(r.at("current_file").at("contents"), masked_line + "\n");
			EXPECT_EQ(got[i].find(kAwsKey), std::string::npos);
		}
		EXPECT_EQ(h.masker.take(1).masked, 4u) << "the key, twice in each request";
	}
}

// Whole requests whose joins would hide a key: a prompt ending mid-word followed by one that
// starts with a key ("helloAKIA..." is no key to the scanner), and a bare key sent twice
// ("AKIA...XYZAKIA...XYZ" neither).
TEST(Masking, AKeyIsNotHiddenByTheRequestBeforeIt)
{
	const std::vector<std::pair<std::string, std::string>> cases = {
	    {"hello", kAwsKey + " is my key"},
	    {"my key: " + kAwsKey, "my key: " + kAwsKey},
	    {kAwsKey, kAwsKey},
	};
	for (const auto &[first, second] : cases) {
		SCOPED_TRACE(first + " | " + second);
		Harness h(engine());
		auto pipe = h.pipe(Direction::Request, Protocol::ConnectStream, "application/connect+proto");
		std::string out;
		ASSERT_TRUE(pipe->write(bytes(rpc::encode_envelope(0, chat_request(first, "a.txt", first, "b1")) +
		                              rpc::encode_envelope(0, chat_request(second, "a.txt", second, "b2"))),
		                        out));
		ASSERT_TRUE(pipe->finish(out));
		const auto got = payloads(out);
		ASSERT_EQ(got.size(), 2u);
		for (size_t i = 0; i < got.size(); i++) {
			const std::string &sent = i == 0 ? first : second;
			std::string expected = sent;
			if (auto at = expected.find(kAwsKey); at != std::string::npos)
				expected.replace(at, kAwsKey.size(), "[MASKED:aws-access-key-id]");
			const auto r = chat_request_json(got[i]);
			EXPECT_EQ(r.at("conversation").at(0).at("text"), expected) << "request " << i + 1;
			EXPECT_EQ(r.at("current_file").at("contents"), expected) << "request " << i + 1;
			EXPECT_EQ(got[i].find(kAwsKey), std::string::npos) << "request " << i + 1;
		}
	}
}

// Without Cursor's schema, a slice of streamed base64 can parse as a protobuf message by chance
// ("0A0B" are two varint fields, "b " a 32-byte string field). It is still the text of the field
// that carried the key's start, so it is joined to it and masked with it.
TEST(Masking, AStreamedPieceThatAlsoParsesAsAMessageStaysText)
{
	const std::string ambiguous_piece = "0A0Bb MIICeAIBADANBgkqhkiG9w0BAQEFAASC";
	ASSERT_EQ(ambiguous_piece.size(), 6u + 32u);
	const std::vector<std::string> pieces = {
	    "Here is a key: -----BEGIN PRIVATE KEY-----\nMIICdwIBADANBgkqhkiG9w0BAQEFAASCAmEwggJdAgEAAoGBAL",
	    ambiguous_piece, "\nAmIwggJeAgEAAoGBALZ2NQKGROs058L6 4eH9al3wLNdQuCe2d2/6Z3wA1OqATZ0G6P7FApgLA4AY",
	    "\n-----END PRIVATE KEY-----"};
	Harness h(engine(true, false));
	auto pipe = h.pipe(Direction::Response, Protocol::ConnectStream, "application/connect+proto");
	std::string out;
	for (const auto &piece : pieces)
		ASSERT_TRUE(pipe->write(bytes(rpc::encode_envelope(0, chat_text(piece))), out));
	ASSERT_TRUE(pipe->finish(out));
	std::string joined;
	for (auto &p : payloads(out))
		joined += p.find("MIIC") == std::string::npos ? text_of(p) : "<" + p + ">";
	EXPECT_EQ(joined, "Here is a key: [MASKED:private-key-pkcs8]");
}

// ---- every built-in rule in every carrier ----

namespace {

using cordon::mask::testing::all_examples;
using cordon::mask::testing::Example;

std::string masked_text(const Example &e)
{
	return e.prefix + "[MASKED:" + e.rule + "]" + e.suffix;
}

// Reads a top-level length-delimited field `number` of a protobuf message (the tests' own
// messages: one-byte tags).
std::string read_field(const std::string &message, uint32_t number)
{
	for (size_t at = 0; at < message.size();) {
		const uint32_t tag = static_cast<uint8_t>(message[at++]);
		uint64_t length = 0;
		for (int shift = 0; at < message.size(); shift += 7) {
			const uint8_t b = static_cast<uint8_t>(message[at++]);
			length |= uint64_t{b & 0x7fu} << shift;
			if (!(b & 0x80))
				break;
		}
		if (tag == ((number << 3) | 2))
			return message.substr(at, length);
		at += length;
	}
	ADD_FAILURE() << "no field " << number;
	return {};
}

std::string hex(const std::string &bytes)
{
	static const char digits[] = "0123456789abcdef";
	std::string out;
	for (unsigned char c : bytes) {
		out += digits[c >> 4];
		out += digits[c & 15];
	}
	return out;
}

std::string unhex(const std::string &text)
{
	std::string out;
	for (size_t i = 0; i + 1 < text.size(); i += 2)
		out += static_cast<char>(std::stoi(text.substr(i, 2), nullptr, 16));
	return out;
}

// What each carrier makes of `text`, as the reader on the other side decodes it again.
struct Carrier {
	const char *name;
	std::function<std::string(const std::string &text)> roundtrip;
};

std::string through(BodyPipe &pipe, const std::string &body)
{
	std::string out;
	EXPECT_TRUE(pipe.write(bytes(body), out));
	EXPECT_TRUE(pipe.finish(out));
	EXPECT_FALSE(pipe.refusal().has_value()) << pipe.refusal()->reason;
	return out;
}

std::vector<Carrier> carriers()
{
	return {
	    {"header value",
	     [](const std::string &text) {
		     Harness h(engine());
		     proxy::Headers headers = {{"x-note", text}};
		     h.masker.on_headers(h.request, Direction::Request, false, headers);
		     return headers[0].value;
	     }},
	    {"JSON (Connect unary)",
	     [](const std::string &text) {
		     Harness h(engine());
		     auto pipe = h.pipe(Direction::Request, Protocol::ConnectUnary, "application/json");
		     const std::string out = through(*pipe, nlohmann::json{{"text", text}, {"n", 1}}.dump());
		     return nlohmann::json::parse(out).at("text").get<std::string>();
	     }},
	    {"protobuf (Connect stream, Cursor's schema)",
	     [](const std::string &text) {
		     Harness h(engine());
		     auto pipe = h.pipe(Direction::Response, Protocol::ConnectStream, "application/connect+proto");
		     const auto got = payloads(through(*pipe, rpc::encode_envelope(0, chat_text(text))));
		     return got.size() == 1 ? read_field(read_field(got[0], 2), 1)
		                            : "<" + std::to_string(got.size()) + ">";
	     }},
	    {"gzip envelope (Connect stream)",
	     [](const std::string &text) {
		     Harness h(engine());
		     BodyPipe pipe(Direction::Request, h.request, Protocol::ConnectStream, "", "gzip",
		                   std::vector<proxy::ExchangeObserver *>{&h.masker}, Limits{},
		                   "application/connect+proto");
		     rpc::EnvelopeDecoder decoder(1 << 20);
		     std::vector<rpc::Envelope> envs;
		     const std::string out =
		         through(pipe, rpc::encode_envelope(rpc::kFlagCompressed, *rpc::gzip(chat_text(text))));
		     EXPECT_TRUE(decoder.feed(bytes(out), envs));
		     if (envs.size() != 1)
			     return std::string("<no envelope>");
		     std::string payload = envs[0].payload;
		     if (envs[0].flags & rpc::kFlagCompressed)
			     payload = *rpc::gunzip(payload, 1 << 20);
		     return read_field(read_field(payload, 2), 1);
	     }},
	    {"hex (a message inside a text field)",
	     [](const std::string &text) {
		     Harness h(engine(true, false));
		     auto pipe = h.pipe(Direction::Request, Protocol::ConnectUnary, "application/proto");
		     const std::string out = through(*pipe, field(1, hex(field(1, text))));
		     return read_field(unhex(read_field(out, 1)), 1);
	     }},
	    {"SSE (Cursor's HTTP/1.1 fallback)",
	     [](const std::string &text) {
		     Harness h(engine());
		     auto pipe = h.pipe(Direction::Response, Protocol::Sse, "text/event-stream");
		     const auto got = payloads(through(*pipe, rpc::encode_envelope(0, chat_text(text))));
		     return got.size() == 1 ? read_field(read_field(got[0], 2), 1)
		                            : "<" + std::to_string(got.size()) + ">";
	     }},
	};
}

} // namespace

TEST(Masking, EveryRulePositiveAndNegativeInEveryCarrier)
{
	for (const auto &carrier : carriers())
		for (const auto &e : all_examples()) {
			SCOPED_TRACE(std::string(carrier.name) + ", rule " + e.rule);
			const bool header = std::string_view(carrier.name) == "header value";
			// A header value is one line.
			const auto fit = [&](std::string s) {
				if (header)
					for (char &c : s)
						if (c == '\r' || c == '\n')
							c = ' ';
				return s;
			};
			EXPECT_EQ(carrier.roundtrip(fit(e.positive())), fit(masked_text(e)));
			EXPECT_EQ(carrier.roundtrip(fit(e.negative)), fit(e.negative));
		}
}

TEST(Masking, EveryRulePositiveAndNegativeInAPlainTextBody)
{
	for (const auto &e : all_examples()) {
		SCOPED_TRACE(e.rule);
		Harness h(engine());
		auto pipe = h.pipe(Direction::Request, Protocol::Other, "text/plain");
		EXPECT_EQ(through(*pipe, e.positive()), e.prefix + std::string(e.secret.size(), '*') + e.suffix);
		auto negative = h.pipe(Direction::Request, Protocol::Other, "text/plain");
		EXPECT_EQ(through(*negative, e.negative), e.negative);
	}
}

// Streamed messages: every example cut at every offset across two messages, and sent one byte
// per message. What the client assembles reads exactly as the whole text masked.
TEST(Masking, EveryRuleSplitAtEveryOffsetAcrossMessagesAndOneBytePerMessage)
{
	const auto assembled = [](const std::vector<std::string> &pieces) {
		Harness h(engine());
		auto pipe = h.pipe(Direction::Response, Protocol::ConnectStream, "application/connect+proto");
		std::string stream;
		for (const auto &piece : pieces)
			stream += rpc::encode_envelope(0, chat_text(piece));
		std::string joined;
		for (const auto &p : payloads(through(*pipe, stream)))
			joined += read_field(read_field(p, 2), 1);
		return joined;
	};
	for (const auto &e : all_examples()) {
		SCOPED_TRACE(e.rule);
		const std::string text = e.positive();
		for (size_t cut = 1; cut < text.size(); cut++) {
			const std::string got = assembled({text.substr(0, cut), text.substr(cut)});
			if (got != masked_text(e)) {
				ADD_FAILURE() << "cut at " << cut << ": " << got;
				break;
			}
		}
		std::vector<std::string> bytes_one_by_one;
		for (char c : text)
			bytes_one_by_one.emplace_back(1, c);
		EXPECT_EQ(assembled(bytes_one_by_one), masked_text(e)) << "one byte per message";
	}
}
