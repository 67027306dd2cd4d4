// The HTTP/1.1 bridge on its own: plaintext bytes in from "the job" and "Cursor", bytes out.
#include <gtest/gtest.h>

#include "proxy/http_bridge.h"

using namespace cordon;
using namespace cordon::proxy;

namespace {

std::span<const uint8_t> bytes(const std::string &s)
{
	return {reinterpret_cast<const uint8_t *>(s.data()), s.size()};
}

struct Recorder : ExchangeObserver {
	std::vector<Message> messages;
	std::vector<ExchangeSummary> done;
	Verdict next = Verdict::forward();
	Verdict on_message(const RequestInfo &, const Message &m) override
	{
		messages.push_back(m);
		return next;
	}
	void on_complete(const RequestInfo &, const ExchangeSummary &s) override { done.push_back(s); }
};

struct H1 {
	Recorder recorder;
	std::unique_ptr<HttpBridge> bridge;
	explicit H1(Limits limits = {})
	{
		BridgeSettings s;
		s.limits = limits;
		s.connection = "test";
		s.default_host = "api2.cursor.sh";
		s.observers.push_back(&recorder);
		bridge = make_h1_bridge(std::move(s));
	}
	std::string to_upstream()
	{
		std::string out;
		EXPECT_TRUE(bridge->produce_upstream_output(out, 1 << 20));
		return out;
	}
	std::string to_client()
	{
		std::string out;
		EXPECT_TRUE(bridge->produce_client_output(out, 1 << 20));
		return out;
	}
};

} // namespace

TEST(H1Bridge, GetIsForwardedAndAnswered)
{
	H1 h;
	ASSERT_TRUE(h.bridge->on_client_data(bytes("GET / HTTP/1.1\r\nHost: api2.cursor.sh\r\n\r\n")));
	EXPECT_EQ(h.to_upstream(), "GET / HTTP/1.1\r\nHost: api2.cursor.sh\r\n\r\n");
	ASSERT_TRUE(h.bridge->on_upstream_data(bytes("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")));
	EXPECT_EQ(h.to_client(), "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello");
	ASSERT_EQ(h.recorder.done.size(), 1u);
	EXPECT_EQ(h.recorder.done[0].response.status, 200);
}

TEST(H1Bridge, EmptyUnaryPostIsForwarded)
{
	H1 h;
	ASSERT_TRUE(h.bridge->on_client_data(
	    bytes("POST /aiserver.v1.AiService/AvailableModels HTTP/1.1\r\nHost: api2.cursor.sh\r\n"
	          "Content-Type: application/proto\r\nContent-Length: 0\r\n\r\n")));
	std::string up = h.to_upstream();
	EXPECT_NE(up.find("POST /aiserver.v1.AiService/AvailableModels HTTP/1.1\r\n"), std::string::npos) << up;
	EXPECT_NE(up.find("Content-Length: 0\r\n"), std::string::npos) << up;
	ASSERT_EQ(h.recorder.messages.size(), 1u); // one (empty) message
	EXPECT_EQ(h.recorder.messages[0].payload, "");
}

TEST(H1Bridge, ReplacedUnaryBodyGetsANewContentLength)
{
	H1 h;
	h.recorder.next = Verdict::replace("ABCDEFGHIJ");
	ASSERT_TRUE(
	    h.bridge->on_client_data(bytes("POST /aiserver.v1.ChatService/Get HTTP/1.1\r\nHost: api2.cursor.sh\r\n"
	                                   "Content-Type: application/proto\r\nContent-Length: 3\r\n\r\nabc")));
	std::string up = h.to_upstream();
	EXPECT_NE(up.find("Content-Length: 10\r\n"), std::string::npos) << up;
	EXPECT_EQ(up.substr(up.size() - 10), "ABCDEFGHIJ");
}

TEST(H1Bridge, SseResponseStreamsPieceByPiece)
{
	H1 h;
	ASSERT_TRUE(
	    h.bridge->on_client_data(bytes("POST /agent.v1.AgentService/RunSSE HTTP/1.1\r\nHost: api2.cursor.sh\r\n"
	                                   "Content-Type: application/connect+proto\r\nContent-Length: 5\r\n\r\n" +
	                                   std::string(5, '\0'))));

	(void)h.to_upstream();
	ASSERT_TRUE(h.bridge->on_upstream_data(
	    bytes("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")));
	std::string head = h.to_client();
	EXPECT_NE(head.find("Transfer-Encoding: chunked"), std::string::npos) << head;
	// One envelope, delivered before the stream ends.
	std::string env = std::string("\0\0\0\0\x02", 5) + "hi";
	ASSERT_TRUE(h.bridge->on_upstream_data(bytes("7\r\n" + env + "\r\n")));
	std::string first = h.to_client();
	EXPECT_NE(first.find(env), std::string::npos);
	ASSERT_FALSE(h.recorder.messages.empty());
	EXPECT_EQ(h.recorder.messages.back().payload, "hi");
}

TEST(H1Bridge, RefusalIsAProtocolCorrectAnswer)
{
	H1 h;
	h.recorder.next = Verdict::refuse("permission_denied", "rule X");
	ASSERT_TRUE(h.bridge->on_client_data(
	    bytes("POST /aiserver.v1.AiService/AvailableModels HTTP/1.1\r\nHost: api2.cursor.sh\r\n"
	          "Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")));
	std::string out = h.to_client();
	EXPECT_NE(out.find("HTTP/1.1 403"), std::string::npos) << out;
	EXPECT_NE(out.find("{\"code\":\"permission_denied\",\"message\":\"rule X\"}"), std::string::npos) << out;
	EXPECT_EQ(h.to_upstream(), ""); // nothing reached Cursor
}

TEST(H1Bridge, ChunkedRequestWhoseEndArrivesLater)
{
	// Node's HTTP/1.1 client: headers first, the terminating chunk in a later write.
	H1 h;
	ASSERT_TRUE(h.bridge->on_client_data(
	    bytes("POST /aiserver.v1.AiService/AvailableModels HTTP/1.1\r\nHost: api2.cursor.sh\r\n"
	          "Content-Type: application/proto\r\nTransfer-Encoding: chunked\r\n\r\n")));
	EXPECT_TRUE(h.bridge->wants_client_data());
	EXPECT_EQ(h.to_upstream(), ""); // a unary body is held until complete
	ASSERT_TRUE(h.bridge->on_client_data(bytes("3\r\nabc\r\n")));
	ASSERT_TRUE(h.bridge->on_client_data(bytes("0\r\n\r\n")));
	std::string up = h.to_upstream();
	EXPECT_NE(up.find("Content-Length: 3\r\n\r\nabc"), std::string::npos) << up;
	EXPECT_FALSE(h.bridge->wants_client_data()); // the next request waits for the response
}

TEST(H1Bridge, TrailersNeverBecomeHeaders)
{
	H1 h;
	ASSERT_TRUE(h.bridge->on_client_data(
	    bytes("POST /aiserver.v1.AiService/AvailableModels HTTP/1.1\r\nHost: api2.cursor.sh\r\n"
	          "Content-Type: application/proto\r\nTransfer-Encoding: chunked\r\n\r\n"
	          "3\r\nabc\r\n0\r\nHost: evil.example\r\nAuthorization: Bearer injected\r\n\r\n")));
	std::string up = h.to_upstream();
	EXPECT_EQ(up.find("evil.example"), std::string::npos) << up;
	EXPECT_EQ(up.find("injected"), std::string::npos) << up;
	EXPECT_NE(up.find("Content-Length: 3\r\n\r\nabc"), std::string::npos) << up;
}

TEST(H1Bridge, RequestsMustBeForTheConnectionsHost)
{
	for (const char *req :
	     {"GET / HTTP/1.1\r\nHost: evil.example\r\n\r\n",
	      "GET / HTTP/1.1\r\nHost: api2.cursor.sh\r\nHost: evil.example\r\n\r\n", "GET / HTTP/1.1\r\n\r\n",
	      "GET https://evil.example/ HTTP/1.1\r\nHost: api2.cursor.sh\r\n\r\n",
	      "POST /a.B/C HTTP/1.1\r\nHost: api2.cursor.sh\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
	      "GET /a.B%2FC HTTP/1.1\r\nHost: api2.cursor.sh\r\n\r\n"}) {
		H1 h;
		ASSERT_TRUE(h.bridge->on_client_data(bytes(req)));
		EXPECT_EQ(h.to_upstream(), "") << req; // nothing reaches Cursor
		std::string out = h.to_client();
		EXPECT_TRUE(out.find("HTTP/1.1 400") == 0 || out.find("HTTP/1.1 403") == 0) << req << " -> " << out;
	}
	H1 ok; // the host in another spelling is the same host
	ASSERT_TRUE(ok.bridge->on_client_data(bytes("GET / HTTP/1.1\r\nHost: API2.Cursor.SH.:443\r\n\r\n")));
	EXPECT_NE(ok.to_upstream(), "");
}

TEST(H1Bridge, UpstreamClosingBeforeAnsweringIsAnAnswerNotAHang)
{
	H1 h;
	ASSERT_TRUE(h.bridge->on_client_data(bytes("GET / HTTP/1.1\r\nHost: api2.cursor.sh\r\n\r\n")));
	(void)h.to_upstream();
	h.bridge->on_upstream_eof(true);
	EXPECT_NE(h.to_client().find("HTTP/1.1 502"), std::string::npos);
	EXPECT_TRUE(h.bridge->done());
}

TEST(H1Bridge, ACutUpstreamIsNotACompleteResponse)
{
	H1 h;
	ASSERT_TRUE(h.bridge->on_client_data(bytes("GET / HTTP/1.1\r\nHost: api2.cursor.sh\r\n\r\n")));
	(void)h.to_upstream();
	ASSERT_TRUE(h.bridge->on_upstream_data(bytes("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\npartial")));
	std::string before = h.to_client();
	h.bridge->on_upstream_eof(false); // no close_notify
	std::string after = h.to_client();
	EXPECT_EQ(after.find("0\r\n\r\n"), std::string::npos) << after; // no terminating chunk
	ASSERT_FALSE(h.recorder.done.empty());
	EXPECT_EQ(h.recorder.done.back().result, "upstream_error");
}

TEST(H1Bridge, AnEarlyAnswerArrivesBeforeTheBodyEnds)
{
	H1 h;
	ASSERT_TRUE(h.bridge->on_client_data(
	    bytes("PUT /upload HTTP/1.1\r\nHost: api2.cursor.sh\r\n"
	          "Content-Type: application/octet-stream\r\nContent-Length: 100\r\n\r\nabc")));
	(void)h.to_upstream();
	ASSERT_TRUE(h.bridge->on_upstream_data(
	    bytes("HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")));
	EXPECT_NE(h.to_client().find("HTTP/1.1 413"), std::string::npos);
}

// Found by tests/fuzz/h1_bridge: a request body that turns bad while its answer streams must not
// put a whole 400 response inside the answer; the answer ends the protocol's way.
TEST(H1Bridge, ABadRequestBodyDuringAStreamedAnswerEndsTheAnswer)
{
	H1 h;
	const std::string env = std::string("\0\0\0\0\x02", 5) + "hi";
	ASSERT_TRUE(h.bridge->on_client_data(
	    bytes("POST /aiserver.v1.ChatService/StreamUnifiedChatWithTools HTTP/1.1\r\nHost: api2.cursor.sh\r\n"
	          "Content-Type: application/connect+proto\r\nTransfer-Encoding: chunked\r\n\r\n7\r\n" +
	          env + "\r\n")));
	(void)h.to_upstream();
	ASSERT_TRUE(h.bridge->on_upstream_data(
	    bytes("HTTP/1.1 200 OK\r\nContent-Type: application/connect+proto\r\nTransfer-Encoding: chunked\r\n\r\n")));
	(void)h.to_client();
	(void)h.bridge->on_client_data(bytes("zz\r\n")); // no chunk size
	const std::string out = h.to_client();
	EXPECT_EQ(out.find("HTTP/1.1 400"), std::string::npos) << out;
	EXPECT_NE(out.find("invalid_argument"), std::string::npos) << out; // the end-of-stream error
	EXPECT_EQ(out.substr(out.size() - 5), "0\r\n\r\n") << out;
	EXPECT_TRUE(h.bridge->done());
}

// An answer framed by Content-Length that is refused halfway gets nothing more: bytes beyond its
// length would be read as another response. The connection's end tells the job it was cut.
TEST(H1Bridge, ARefusalInsideALengthFramedAnswerCutsIt)
{
	H1 h;
	ASSERT_TRUE(h.bridge->on_client_data(
	    bytes("PUT /upload HTTP/1.1\r\nHost: api2.cursor.sh\r\nContent-Type: application/octet-stream\r\n"
	          "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")));
	(void)h.to_upstream();
	ASSERT_TRUE(h.bridge->on_upstream_data(bytes("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhe")));
	EXPECT_EQ(h.to_client(), "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhe");
	(void)h.bridge->on_client_data(bytes("zz\r\n"));
	EXPECT_EQ(h.to_client(), "");
	EXPECT_TRUE(h.bridge->done());
}

// Found by tests/fuzz/h1_bridge: Boost 1.74's Beast asserts on an empty chunked body whose final
// chunk comes a byte at a time (boostorg/beast#2861); cordond keeps asserts on.
TEST(H1Bridge, AnEmptyChunkedBodyMayComeAByteAtATime)
{
	H1 h;
	ASSERT_TRUE(h.bridge->on_client_data(
	    bytes("POST /upload HTTP/1.1\r\nHost: api2.cursor.sh\r\nContent-Type: application/octet-stream\r\n"
	          "Transfer-Encoding: chunked\r\n\r\n")));
	for (const char *piece : {"0\r\n", "\r", "\n"})
		ASSERT_TRUE(h.bridge->on_client_data(bytes(piece)));
	EXPECT_NE(h.to_upstream().find("\r\n\r\n0\r\n\r\n"), std::string::npos);
	EXPECT_FALSE(h.bridge->wants_client_data()); // the request is whole
}

// Found by tests/fuzz/h1_bridge: Beast reads "020" as a status; passed on, it would be "20".
TEST(H1Bridge, AStatusUnder100IsAMalformedResponse)
{
	H1 h;
	ASSERT_TRUE(h.bridge->on_client_data(bytes("GET / HTTP/1.1\r\nHost: api2.cursor.sh\r\n\r\n")));
	(void)h.to_upstream();
	ASSERT_TRUE(h.bridge->on_upstream_data(bytes("HTTP/1.1 020 Odd\r\nContent-Length: 0\r\n\r\n")));
	EXPECT_EQ(h.to_client().find("HTTP/1.1 502"), 0u);
}

// Found by tests/fuzz/h1_bridge: with an empty Transfer-Encoding line before a "chunked" one,
// the body went upstream unframed, where its bytes would be read as requests of their own.
TEST(H1Bridge, EveryTransferEncodingLineCounts)
{
	H1 h;
	const std::string smuggled = "GET /admin HTTP/1.1\r\nHost: api2.cursor.sh\r\n\r\n";
	char size[16];
	std::snprintf(size, sizeof(size), "%zx\r\n", smuggled.size());
	ASSERT_TRUE(h.bridge->on_client_data(
	    bytes("POST /upload HTTP/1.1\r\nHost: api2.cursor.sh\r\nContent-Type: text/plain\r\n"
	          "Transfer-Encoding:\r\nTransfer-Encoding: chunked\r\n\r\n" +
	          std::string(size) + smuggled + "\r\n0\r\n\r\n")));
	EXPECT_EQ(h.to_upstream(), "");
	EXPECT_EQ(h.to_client().find("HTTP/1.1 400"), 0u);
}

TEST(H1Bridge, AHeadOverTheLimitIsAnswered431AndNothingGoesUpstream)
{
	Limits limits;
	limits.max_header_bytes = 2048;
	H1 h(limits);
	const std::string head =
	    "GET / HTTP/1.1\r\nHost: api2.cursor.sh\r\nX-Big: " + std::string(4096, 'a') + "\r\n\r\n";
	ASSERT_TRUE(h.bridge->on_client_data(bytes(head)));
	EXPECT_EQ(h.to_upstream(), "");
	const std::string answer = h.to_client();
	EXPECT_EQ(answer.rfind("HTTP/1.1 431 Request Header Fields Too Large\r\n", 0), 0u) << answer;
	EXPECT_NE(answer.find("tls.max_header_bytes (2048)"), std::string::npos) << answer;

	H1 roomy(limits); // the same head under the limit passes
	const std::string small =
	    "GET / HTTP/1.1\r\nHost: api2.cursor.sh\r\nX-Big: " + std::string(1024, 'a') + "\r\n\r\n";
	ASSERT_TRUE(roomy.bridge->on_client_data(bytes(small)));
	EXPECT_EQ(roomy.to_upstream(), small);
}
