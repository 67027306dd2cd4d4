// The Host of a plain HTTP request head: what strict capture decides port-80 connections by.
#include <gtest/gtest.h>

#include "proxy/http_host.h"

using cordon::proxy::HttpHeadStatus;
using cordon::proxy::parse_http_host;

namespace {

HttpHeadStatus host_of(std::string_view data, std::string &host)
{
	return parse_http_host(data, host);
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
	EXPECT_EQ(host_of(" GET / HTTP/1.1\r\n\r\n", host), HttpHeadStatus::NotHttp);
}

TEST(HttpHost, Http2WithPriorKnowledgeIsToldApart)
{
	std::string host;
	const std::string preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
	EXPECT_EQ(host_of(preface, host), HttpHeadStatus::Http2);
	EXPECT_EQ(host_of(preface.substr(0, 5), host), HttpHeadStatus::NeedMore);
	EXPECT_EQ(host_of("PRIVATE / HTTP/1.1\r\nHost: a\r\n\r\n", host), HttpHeadStatus::Complete);
}

TEST(HttpHost, NamesThatDisagreeAreAmbiguous)
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
}

TEST(HttpHost, AHeadThatNeverEndsIsTooLarge)
{
	std::string host;
	const std::string head = "GET / HTTP/1.1\r\nX: " + std::string(cordon::proxy::kMaxHttpHead, 'a');
	EXPECT_EQ(host_of(head, host), HttpHeadStatus::TooLarge);
}
