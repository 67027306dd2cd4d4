// The message engine's pure parts: classification, envelopes, compression limits, refusals,
// and BodyPipe's promise (untouched bytes stay identical, replacements are re-encoded).
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "proxy/exchange.h"
#include "proxy/rpc.h"

using namespace cordon;
using namespace cordon::proxy;
using namespace cordon::rpc;

namespace {
std::span<const uint8_t> bytes(const std::string &s)
{
	return {reinterpret_cast<const uint8_t *>(s.data()), s.size()};
}
} // namespace

TEST(Rpc, ParsesRpcPaths)
{
	auto n = parse_rpc_path("/aiserver.v1.ChatService/StreamUnifiedChatWithTools");
	EXPECT_EQ(n.service, "aiserver.v1.ChatService");
	EXPECT_EQ(n.method, "StreamUnifiedChatWithTools");
	EXPECT_EQ(parse_rpc_path("/agent.v1.AgentService/Run?x=1").full(), "agent.v1.AgentService/Run");
	EXPECT_TRUE(parse_rpc_path("/v0/agents").empty());
	EXPECT_TRUE(parse_rpc_path("/").empty());
	EXPECT_TRUE(parse_rpc_path("/a.b/c/d").empty());
	EXPECT_TRUE(parse_rpc_path("/a.b/<script>").empty());
}

TEST(Rpc, ClassifiesRequests)
{
	EXPECT_EQ(classify_request("POST", "/a.B/C", "application/connect+proto"), Protocol::ConnectStream);
	EXPECT_EQ(classify_request("POST", "/a.B/C", "application/proto"), Protocol::ConnectUnary);
	EXPECT_EQ(classify_request("POST", "/a.B/C", "application/json; charset=utf-8"), Protocol::ConnectUnary);
	EXPECT_EQ(classify_request("POST", "/a.B/C", "application/grpc"), Protocol::Grpc);
	EXPECT_EQ(classify_request("POST", "/a.B/C", "application/grpc+proto"), Protocol::Grpc);
	EXPECT_EQ(classify_request("POST", "/a.B/C", "application/grpc-web+proto"), Protocol::GrpcWeb);
	EXPECT_EQ(classify_request("POST", "/v0/agents", "application/json"), Protocol::Rest);
	EXPECT_EQ(classify_request("GET", "/v0/me", ""), Protocol::Rest);
	EXPECT_EQ(classify_request("PUT", "/upload", "application/octet-stream"), Protocol::Other);
	// A body on an RPC path is a message whatever its label; a protobuf body whatever its path.
	EXPECT_EQ(classify_request("POST", "/a.B/C", "text/plain"), Protocol::ConnectUnary);
	EXPECT_EQ(classify_request("POST", "/upload", "application/proto"), Protocol::ConnectUnary);
	EXPECT_EQ(classify_request("POST", "/a.B/C", "application/grpc-web-text"), Protocol::ConnectUnary);
}

TEST(Rpc, ClassifiesResponsesByWhatTheyAre)
{
	EXPECT_EQ(classify_response(Protocol::ConnectStream, 200, "text/event-stream"), Protocol::Sse);
	EXPECT_EQ(classify_response(Protocol::Rest, 200, "text/event-stream"), Protocol::Other); // text SSE
	EXPECT_EQ(classify_response(Protocol::ConnectStream, 200, "application/connect+proto"),
	          Protocol::ConnectStream);
	EXPECT_EQ(classify_response(Protocol::ConnectStream, 502, "text/html"), Protocol::Other); // an LB page
	EXPECT_EQ(classify_response(Protocol::Grpc, 200, "application/grpc"), Protocol::Grpc);
	EXPECT_EQ(classify_response(Protocol::Grpc, 200, "text/plain"), Protocol::Other);
	EXPECT_EQ(classify_response(Protocol::ConnectUnary, 403, "application/json"), Protocol::ConnectUnary);
	EXPECT_EQ(classify_response(Protocol::Rest, 200, "application/json"), Protocol::Rest);
	EXPECT_EQ(classify_response(Protocol::Rest, 200, "application/octet-stream"), Protocol::Other); // a download
}

TEST(Rpc, NormalizesPathsAsServersRouteThem)
{
	EXPECT_EQ(*normalize_path("/aiserver.v1.AiService/Available%4dodels"),
	          "/aiserver.v1.AiService/AvailableModels");
	EXPECT_EQ(*normalize_path("/v0/agents?x=%2F"), "/v0/agents?x=%2F"); // the query is not a path
	EXPECT_FALSE(normalize_path("/a.B%2FC"));
	EXPECT_FALSE(normalize_path("/a.B/%2e%2e/C"));
	EXPECT_FALSE(normalize_path("/a/../b"));
	EXPECT_FALSE(normalize_path("/a/%zz"));
	EXPECT_FALSE(normalize_path("https://api2.cursor.sh/a.B/C"));
	EXPECT_FALSE(normalize_path("/a/%00"));
	// An encoded '?' or '#' stays encoded: it does not start a query cordon would cut off.
	EXPECT_EQ(*normalize_path("/aiserver.v1.ChatService%3fRun"), "/aiserver.v1.ChatService%3fRun");
	EXPECT_TRUE(parse_rpc_path(*normalize_path("/aiserver.v1.AiService/Run%3F/x.Y/Z")).empty());
	EXPECT_EQ(*normalize_path("/a.B/C%23?q=%3F"), "/a.B/C%23?q=%3F");
}

TEST(Rpc, EnvelopesSurviveAnySplit)
{
	const std::string stream = encode_envelope(0, "first") +
	                           encode_envelope(kFlagCompressed, std::string(300, 'x')) +
	                           encode_envelope(kFlagEndStream, "{}");
	for (size_t cut = 0; cut <= stream.size(); cut++) {
		EnvelopeDecoder d(1 << 20);
		std::vector<Envelope> out;
		ASSERT_TRUE(d.feed(bytes(stream.substr(0, cut)), out));
		ASSERT_TRUE(d.feed(bytes(stream.substr(cut)), out));
		ASSERT_EQ(out.size(), 3u) << "cut at " << cut;
		EXPECT_EQ(out[0].payload, "first");
		EXPECT_EQ(out[1].flags, kFlagCompressed);
		EXPECT_EQ(out[2].payload, "{}");
		EXPECT_TRUE(d.at_boundary());
	}
	// One byte at a time.
	EnvelopeDecoder d(1 << 20);
	std::vector<Envelope> out;
	for (char c : stream)
		ASSERT_TRUE(d.feed(bytes(std::string(1, c)), out));
	EXPECT_EQ(out.size(), 3u);
}

TEST(Rpc, OversizeEnvelopeIsAnErrorThatStays)
{
	EnvelopeDecoder d(1024);
	std::vector<Envelope> out;
	std::string header = encode_envelope(0, std::string(2000, 'a')).substr(0, 5);
	auto st = d.feed(bytes(header), out);
	ASSERT_FALSE(st);
	EXPECT_NE(st.error().message().find("exceeds the 1024-byte"), std::string::npos);
	EXPECT_FALSE(d.feed(bytes(encode_envelope(0, "ok")), out)); // no recovery on a broken stream
}

TEST(Rpc, GzipRoundTripAndBombLimit)
{
	auto z = gzip("hello world");
	ASSERT_TRUE(z);
	auto back = gunzip(*z, 100);
	ASSERT_TRUE(back);
	EXPECT_EQ(*back, "hello world");
	auto bomb = gzip(std::string(64 << 20, '\0'));
	ASSERT_TRUE(bomb);
	EXPECT_LT(bomb->size(), 200u * 1024);
	auto blown = gunzip(*bomb, 1 << 20);
	ASSERT_FALSE(blown);
	EXPECT_NE(blown.error().message().find("beyond the 1048576-byte limit"), std::string::npos);
	EXPECT_FALSE(gunzip("not gzip at all", 100));
	// Within the size limit but 1000:1: a bomb all the same.
	auto dense = gzip(std::string(8 << 20, 'a'));
	ASSERT_TRUE(dense);
	auto ratio = gunzip(*dense, 64 << 20);
	ASSERT_FALSE(ratio);
	EXPECT_NE(ratio.error().message().find("200 times"), std::string::npos);
	EXPECT_FALSE(gunzip(z->substr(0, z->size() - 4), 100)); // truncated
	EXPECT_FALSE(gunzip(*z + "trailing", 100));
}

TEST(Rpc, RefusalsInEachProtocolsOwnWords)
{
	auto connect = render_refusal(Protocol::ConnectStream, "permission_denied", "blocked by rule no-rm", false);
	EXPECT_EQ(connect.status, 200);
	ASSERT_GE(connect.body.size(), 5u);
	EXPECT_EQ(static_cast<uint8_t>(connect.body[0]), kFlagEndStream);
	auto end = nlohmann::json::parse(connect.body.substr(5));
	EXPECT_EQ(end["error"]["code"], "permission_denied");
	EXPECT_EQ(end["error"]["message"], "blocked by rule no-rm");

	auto unary = render_refusal(Protocol::ConnectUnary, "permission_denied", "no", false);
	EXPECT_EQ(unary.status, 403);
	EXPECT_EQ(nlohmann::json::parse(unary.body)["code"], "permission_denied");

	auto grpc = render_refusal(Protocol::Grpc, "permission_denied", "100% no\n", false);
	EXPECT_EQ(grpc.trailers[0].value, "7");
	EXPECT_EQ(grpc.trailers[1].value, "100%25 no%0A");

	auto web = render_refusal(Protocol::GrpcWeb, "permission_denied", "no", true);
	EXPECT_EQ(static_cast<uint8_t>(web.body[0]), kFlagGrpcWebTrailer);
	EXPECT_NE(web.body.find("grpc-status: 7"), std::string::npos);

	auto rest = render_refusal(Protocol::Rest, "permission_denied", "say \"why\"", false);
	EXPECT_EQ(rest.status, 403);
	EXPECT_EQ(nlohmann::json::parse(rest.body)["error"]["message"], "say \"why\"");
}

namespace {
struct Scripted : ExchangeObserver {
	std::vector<Message> seen;
	std::function<Verdict(const Message &)> decide = [](const Message &) { return Verdict::forward(); };
	Verdict on_message(const RequestInfo &, const Message &m) override
	{
		seen.push_back(m);
		return decide(m);
	}
};

RequestInfo stream_request()
{
	RequestInfo r;
	r.rpc = parse_rpc_path("/aiserver.v1.ChatService/StreamUnifiedChatWithTools");
	r.protocol = Protocol::ConnectStream;
	return r;
}
} // namespace

TEST(BodyPipe, UntouchedMessagesLeaveByteForByte)
{
	Scripted o;
	RequestInfo r = stream_request();
	BodyPipe pipe(Direction::Request, r, Protocol::ConnectStream, "", "gzip", {&o}, Limits{});
	const std::string in =
	    encode_envelope(kFlagCompressed, *gzip("secret code chunk")) + encode_envelope(0, "plain");
	std::string out;
	for (size_t i = 0; i < in.size(); i += 7) // arbitrary pieces
		ASSERT_TRUE(pipe.write(bytes(in.substr(i, 7)), out));
	ASSERT_TRUE(pipe.finish(out));
	EXPECT_EQ(out, in);
	ASSERT_EQ(o.seen.size(), 2u);
	EXPECT_EQ(o.seen[0].payload, "secret code chunk"); // observers see it decompressed
	EXPECT_TRUE(o.seen[0].compressed);
	EXPECT_FALSE(pipe.changed());
}

TEST(BodyPipe, ReplacementIsRecompressedAndReframed)
{
	Scripted o;
	o.decide = [](const Message &m) {
		return m.payload == "AKIA-secret" ? Verdict::replace("[MASKED:aws-access-key]") : Verdict::forward();
	};
	RequestInfo r = stream_request();
	BodyPipe pipe(Direction::Request, r, Protocol::ConnectStream, "", "gzip", {&o}, Limits{});
	std::string out;
	ASSERT_TRUE(pipe.write(bytes(encode_envelope(kFlagCompressed, *gzip("AKIA-secret"))), out));
	EnvelopeDecoder d(1 << 20);
	std::vector<Envelope> envs;
	ASSERT_TRUE(d.feed(bytes(out), envs));
	ASSERT_EQ(envs.size(), 1u);
	EXPECT_EQ(envs[0].flags, kFlagCompressed);
	EXPECT_EQ(*gunzip(envs[0].payload, 1000), "[MASKED:aws-access-key]");
	EXPECT_TRUE(pipe.changed());
}

TEST(BodyPipe, UnaryBodyIsHeldAndReplacedWhole)
{
	Scripted o;
	o.decide = [](const Message &) { return Verdict::replace("new"); };
	RequestInfo r;
	r.protocol = Protocol::ConnectUnary;
	BodyPipe pipe(Direction::Request, r, Protocol::ConnectUnary, "gzip", "", {&o}, Limits{});
	EXPECT_TRUE(pipe.holds_whole_body());
	std::string body = *gzip("old body");
	std::string out;
	ASSERT_TRUE(pipe.write(bytes(body.substr(0, 3)), out));
	EXPECT_EQ(out, ""); // nothing leaves before the whole body is seen
	ASSERT_TRUE(pipe.write(bytes(body.substr(3)), out));
	ASSERT_TRUE(pipe.finish(out));
	EXPECT_EQ(*gunzip(out, 100), "new");
}

TEST(BodyPipe, RefusalStopsTheStream)
{
	Scripted o;
	o.decide = [](const Message &m) {
		return m.index == 1 ? Verdict::refuse("permission_denied", "rule") : Verdict::forward();
	};
	RequestInfo r = stream_request();
	BodyPipe pipe(Direction::Response, r, Protocol::ConnectStream, "", "", {&o}, Limits{});
	std::string out;
	ASSERT_TRUE(
	    pipe.write(bytes(encode_envelope(0, "a") + encode_envelope(0, "b") + encode_envelope(0, "c")), out));
	EXPECT_EQ(out, encode_envelope(0, "a")); // what was allowed, nothing after
	ASSERT_TRUE(pipe.refusal().has_value());
	EXPECT_EQ(pipe.refusal()->reason, "rule");
	ASSERT_TRUE(pipe.write(bytes(encode_envelope(0, "d")), out));
	EXPECT_EQ(out, encode_envelope(0, "a"));
}

TEST(BodyPipe, BadInputIsAnErrorNotAPass)
{
	RequestInfo r = stream_request();
	Limits tight;
	tight.max_message = 1024;
	{
		BodyPipe pipe(Direction::Request, r, Protocol::ConnectStream, "", "gzip", {}, tight);
		std::string out;
		EXPECT_FALSE(pipe.write(bytes(encode_envelope(kFlagCompressed, *gzip(std::string(10000, 'a')))), out));
		EXPECT_EQ(out, "");
	}
	{
		BodyPipe pipe(Direction::Request, r, Protocol::ConnectStream, "", "gzip", {}, tight);
		std::string out;
		ASSERT_TRUE(pipe.write(bytes(encode_envelope(0, "whole").substr(0, 7)), out));
		EXPECT_FALSE(pipe.finish(out)); // the stream ended inside a message
	}
	{
		BodyPipe pipe(Direction::Request, r, Protocol::ConnectStream, "", "br", {}, tight);
		std::string out;
		EXPECT_FALSE(pipe.write(bytes(encode_envelope(kFlagCompressed, "xx")), out)); // unknown encoding
	}
}
