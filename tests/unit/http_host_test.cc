// The Host of a plain HTTP request head: what strict capture decides port-80 connections by. It
// must read every spelling of a request the way the most lenient server would.
#include <gtest/gtest.h>

#include "proxy/http_host.h"

using cordon::proxy::HttpHead;
using cordon::proxy::HttpHeadStatus;
using cordon::proxy::parse_http_head;

namespace {

HttpHeadStatus host_of(std::string_view data, std::string &host)
{
	HttpHead head;
	const auto status = parse_http_head(data, head);
	host = head.host;
	return status;
}

} // namespace

TEST(HttpHost, NamesTheHostOfAWholeHead)
{
	std::string host;
	EXPECT_EQ(host_of("GET / HTTP/1.1\r\nHost: API2.Cursor.sh:80\r\nAccept: */*\r\n\r\n", host),
	          HttpHeadStatus::Complete);
	EXPECT_EQ(host, "api2.cursor.sh");
	EXPECT_EQ(host_of("POST /x HTTP/1.0\r\nhost:deb.debian.org.\r\n\r\nbody", host), HttpHeadStatus::Complete);
	EXPECT_EQ(host, "deb.debian.org");
	EXPECT_EQ(host_of("GET / HTTP/1.1\r\nHOST: [2001:db8::1]:8080\r\n\r\n", host), HttpHeadStatus::Complete);
	EXPECT_EQ(host, "2001:db8::1");
	EXPECT_EQ(host_of("GET / HTTP/1.0\r\n\r\n", host), HttpHeadStatus::Complete);
	EXPECT_EQ(host, "");
}

// Spellings lenient servers accept: each must still name the host.
TEST(HttpHost, LenientSpellingsStillNameTheHost)
{
	std::string host;
	for (const char *head : {
	         "\r\n\r\nGET / HTTP/1.1\r\nHost: api2.cursor.sh\r\n\r\n", // empty lines first
	         "GET  /  HTTP/1.1\r\nHost: api2.cursor.sh\r\n\r\n",       // runs of spaces
	         "GET\t/ HTTP/1.1\r\nHost: api2.cursor.sh\r\n\r\n",        // a tab
	         "GET / HTTP/1.1\nX: a\nHost: api2.cursor.sh\n\n",         // bare LF
	         "GET / HTTP/1.1\r\nX: a\nHost: api2.cursor.sh\r\n\r\n",   // mixed
	         "GET / HTTP/1.1\r\nHost : api2.cursor.sh\r\n\r\n",        // space before the colon
	         "GET / HTTP/1.1\r\nHost:\tapi2.cursor.sh \r\n\r\n",
	     }) {
		EXPECT_EQ(host_of(head, host), HttpHeadStatus::Complete) << head;
		EXPECT_EQ(host, "api2.cursor.sh") << head;
	}
}

TEST(HttpHost, WaitsForTheRestOfAHeadComingInPieces)
{
	const std::string head = "GET /aiserver.v1.AiService/AvailableModels HTTP/1.1\r\nHost: api2.cursor.sh\r\n\r\n";
	std::string host;
	for (size_t n = 1; n < head.size(); n++)
		EXPECT_EQ(host_of(std::string_view(head).substr(0, n), host), HttpHeadStatus::NeedMore) << n;
	EXPECT_EQ(host_of(head, host), HttpHeadStatus::Complete);
	EXPECT_EQ(host, "api2.cursor.sh");
}

TEST(HttpHost, OtherProtocolsAreNotHttp)
{
	std::string host;
	EXPECT_EQ(host_of("SSH-2.0-OpenSSH_9.2\r\n", host), HttpHeadStatus::NotHttp);
	EXPECT_EQ(host_of(std::string("\x16\x03\x01\x02\x00", 5), host), HttpHeadStatus::NotHttp);
	EXPECT_EQ(host_of("GET / HTTP/3.0\r\n\r\n", host), HttpHeadStatus::NotHttp);
	// Leading blanks: some server might take it for a request, so it is read as one.
	EXPECT_EQ(host_of(" GET / HTTP/1.1\r\n\r\n", host), HttpHeadStatus::Complete);
}

TEST(HttpHost, Http2WithPriorKnowledgeIsToldApart)
{
	std::string host;
	const std::string preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
	EXPECT_EQ(host_of(preface, host), HttpHeadStatus::Http2);
	EXPECT_EQ(host_of(preface.substr(0, 5), host), HttpHeadStatus::NeedMore);
	EXPECT_EQ(host_of("PRIVATE / HTTP/1.1\r\nHost: a\r\n\r\n", host), HttpHeadStatus::Complete);
}

TEST(HttpHost, WhatAServerCouldReadTwoWaysIsAmbiguous)
{
	std::string host;
	// Two Host headers: which one a server takes is its own business.
	EXPECT_EQ(host_of("GET / HTTP/1.1\r\nHost: example.org\r\nHost: api2.cursor.sh\r\n\r\n", host),
	          HttpHeadStatus::Ambiguous);
	// The absolute form wins over Host at the server: it is what must be judged.
	EXPECT_EQ(host_of("GET http://api2.cursor.sh/x HTTP/1.1\r\nHost: example.org\r\n\r\n", host),
	          HttpHeadStatus::Ambiguous);
	EXPECT_EQ(host_of("GET HTTP://user@API2.cursor.sh:80/x HTTP/1.1\r\n\r\n", host), HttpHeadStatus::Complete);
	EXPECT_EQ(host, "api2.cursor.sh");
	EXPECT_EQ(host_of("GET http://api2.cursor.sh/ HTTP/1.1\r\nHost: api2.cursor.sh\r\n\r\n", host),
	          HttpHeadStatus::Complete);
	// A folded line: part of the header before it, or a line of its own.
	EXPECT_EQ(host_of("GET / HTTP/1.1\r\nHost: example.org\r\n api2.cursor.sh\r\n\r\n", host),
	          HttpHeadStatus::Ambiguous);
}

TEST(HttpHost, UpgradesAreFlagged)
{
	HttpHead head;
	EXPECT_EQ(
	    parse_http_head("GET / HTTP/1.1\r\nHost: a.example\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n", head),
	    HttpHeadStatus::Complete);
	EXPECT_TRUE(head.upgrade);
	EXPECT_EQ(parse_http_head("GET / HTTP/1.1\r\nHost: a.example\r\n\r\n", head), HttpHeadStatus::Complete);
	EXPECT_FALSE(head.upgrade);
}

TEST(HttpHost, AHeadThatNeverEndsIsTooLarge)
{
	std::string host;
	const std::string head = "GET / HTTP/1.1\r\nX: " + std::string(cordon::proxy::kMaxHttpHead, 'a');
	EXPECT_EQ(host_of(head, host), HttpHeadStatus::TooLarge);
}

// However the client splits its writes, the first verdict is the verdict (found by fuzzing).
TEST(HttpHost, TheVerdictDoesNotDependOnHowTheHeadIsSplit)
{
	auto verdict_of = [](std::string_view data, size_t limit) {
		HttpHead head;
		return parse_http_head(data, head, limit);
	};
	// A method over 20 characters is no request, whether or not the space after it has come.
	const std::string long_method = std::string(21, 'G') + " / HTTP/1.1\r\nHost: api2.cursor.sh\r\n\r\n";
	EXPECT_EQ(verdict_of(long_method.substr(0, 21), cordon::proxy::kMaxHttpHead), HttpHeadStatus::NotHttp);
	EXPECT_EQ(verdict_of(long_method, cordon::proxy::kMaxHttpHead), HttpHeadStatus::NotHttp);
	// Blanks alone may still become a (leniently spelled) request line.
	EXPECT_EQ(verdict_of(" ", cordon::proxy::kMaxHttpHead), HttpHeadStatus::NeedMore);
	EXPECT_EQ(verdict_of(" GET / HTTP/1.1\r\n\r\n", cordon::proxy::kMaxHttpHead), HttpHeadStatus::Complete);
	// A first line longer than the limit is judged at the limit, however it arrives.
	const std::string long_line = "GET /" + std::string(100, 'a') + " HTTP/1.x\r\n\r\n";
	EXPECT_EQ(verdict_of(long_line.substr(0, 64), 64), HttpHeadStatus::TooLarge);
	EXPECT_EQ(verdict_of(long_line, 64), HttpHeadStatus::TooLarge);
}
