// The DNS proxy's reading of queries and answers: CNAME chains, crafted and malformed packets.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "daemon/dns_proxy.h"
#include "dns/dns_message.h"

using namespace cordon;

namespace {

constexpr uint16_t kA = 1, kCname = 5, kTxt = 16, kAaaa = 28;

// Builds messages record by record; names are written uncompressed unless a pointer is asked for.
class Message {
public:
	explicit Message(uint16_t flags = 0x8180, uint16_t id = 0x1234)
	{
		put16(id), put16(flags), put16(0), put16(0), put16(0), put16(0);
	}

	Message &question(const std::string &name, uint16_t type = kA)
	{
		name_at_[name] = bytes.size();
		this->name(name);
		put16(type), put16(1);
		count(4);
		return *this;
	}
	Message &a(const std::string &owner, const char *dotted, uint32_t ttl = 60)
	{
		uint8_t ip[4];
		std::sscanf(dotted, "%hhu.%hhu.%hhu.%hhu", &ip[0], &ip[1], &ip[2], &ip[3]);
		return record(owner, kA, ttl, std::vector<uint8_t>(ip, ip + 4));
	}
	Message &aaaa(const std::string &owner, std::vector<uint8_t> ip, uint32_t ttl = 60)
	{
		return record(owner, kAaaa, ttl, std::move(ip));
	}
	Message &cname(const std::string &owner, const std::string &target, uint32_t ttl = 60)
	{
		return record(owner, kCname, ttl, encode(target));
	}
	Message &record(const std::string &owner, uint16_t type, uint32_t ttl, std::vector<uint8_t> rdata,
	                uint16_t klass = 1)
	{
		name(owner);
		put16(type), put16(klass), put16(static_cast<uint16_t>(ttl >> 16)), put16(static_cast<uint16_t>(ttl));
		put16(static_cast<uint16_t>(rdata.size()));
		bytes.insert(bytes.end(), rdata.begin(), rdata.end());
		count(6);
		return *this;
	}
	static std::vector<uint8_t> encode(const std::string &name)
	{
		std::vector<uint8_t> out;
		size_t start = 0;
		while (start < name.size()) {
			size_t dot = name.find('.', start);
			if (dot == std::string::npos)
				dot = name.size();
			out.push_back(static_cast<uint8_t>(dot - start));
			out.insert(out.end(), name.begin() + static_cast<long>(start),
			           name.begin() + static_cast<long>(dot));
			start = dot + 1;
		}
		out.push_back(0);
		return out;
	}
	const uint8_t *data() const { return bytes.data(); }
	size_t size() const { return bytes.size(); }

	std::vector<uint8_t> bytes;

private:
	void put16(uint16_t v)
	{
		bytes.push_back(static_cast<uint8_t>(v >> 8));
		bytes.push_back(static_cast<uint8_t>(v));
	}
	void name(const std::string &n)
	{
		// Compress to the question when the owner is the question's name, as servers do.
		if (auto it = name_at_.find(n); it != name_at_.end() && it->second != bytes.size()) {
			put16(static_cast<uint16_t>(0xc000 | it->second));
			return;
		}
		auto e = encode(n);
		bytes.insert(bytes.end(), e.begin(), e.end());
	}
	// Header counts: qd at 4, an at 6.
	void count(size_t offset)
	{
		uint16_t n = static_cast<uint16_t>(bytes[offset] << 8 | bytes[offset + 1]) + 1;
		bytes[offset] = static_cast<uint8_t>(n >> 8);
		bytes[offset + 1] = static_cast<uint8_t>(n);
	}
	std::map<std::string, size_t> name_at_;
};

std::vector<std::string> addresses(const dns::AnswerChain &c)
{
	std::vector<std::string> out;
	for (const auto &ip : c.addresses)
		out.push_back(ip.to_string());
	return out;
}

} // namespace

TEST(DnsQuestion, ReadsNameTypeAndId)
{
	Message q(0x0100, 0xbeef);
	q.question("API2.Cursor.SH.", kAaaa);
	auto parsed = dns::parse_question(q.data(), q.size());
	ASSERT_TRUE(parsed) << parsed.error().message();
	EXPECT_EQ(parsed->name, "api2.cursor.sh"); // lower case, no trailing dot
	EXPECT_EQ(parsed->type, kAaaa);
	EXPECT_EQ(parsed->id, 0xbeef);
}

TEST(DnsQuestion, RefusesWhatIsNotOneQuestion)
{
	Message none(0x0100);
	EXPECT_FALSE(dns::parse_question(none.data(), none.size()));
	Message two(0x0100);
	two.question("a.example").question("b.example");
	EXPECT_FALSE(dns::parse_question(two.data(), two.size()));
	uint8_t tiny[5] = {};
	EXPECT_FALSE(dns::parse_question(tiny, sizeof(tiny)));
	EXPECT_FALSE(dns::parse_question(nullptr, 0));
}

TEST(DnsAnswer, DirectAddresses)
{
	Message m;
	m.question("api2.cursor.sh").a("api2.cursor.sh", "192.0.2.1", 300).a("api2.cursor.sh", "192.0.2.2", 30);
	auto c = dns::parse_answer(m.data(), m.size());
	ASSERT_TRUE(c) << c.error().message();
	EXPECT_TRUE(c->response);
	EXPECT_EQ(c->chain, (std::vector<std::string>{"api2.cursor.sh"}));
	EXPECT_EQ(addresses(*c), (std::vector<std::string>{"192.0.2.1", "192.0.2.2"}));
	EXPECT_EQ(c->ttl, 30u); // the smallest
}

TEST(DnsAnswer, FollowsTheCnameChainInAnyOrder)
{
	Message m;
	m.question("fresh.cursor.sh")
	    .a("edge.example.net", "203.0.113.7", 20)
	    .cname("mid.cursor-cdn.com", "edge.example.net", 40)
	    .cname("fresh.cursor.sh", "mid.cursor-cdn.com", 50);
	auto c = dns::parse_answer(m.data(), m.size());
	ASSERT_TRUE(c) << c.error().message();
	EXPECT_EQ(c->chain, (std::vector<std::string>{"fresh.cursor.sh", "mid.cursor-cdn.com", "edge.example.net"}));
	EXPECT_EQ(addresses(*c), (std::vector<std::string>{"203.0.113.7"}));
	EXPECT_EQ(c->ttl, 20u);
}

TEST(DnsAnswer, IgnoresRecordsOutsideTheChain)
{
	// An answer section padded with an unrelated name's address (cache poisoning's classic shape)
	// adds nothing: only names the chain reaches count.
	Message m;
	m.question("api2.cursor.sh")
	    .cname("api2.cursor.sh", "edge.cursor.sh")
	    .a("edge.cursor.sh", "192.0.2.9")
	    .a("evil.example", "198.51.100.1")
	    .cname("other.example", "edge.cursor.sh");
	auto c = dns::parse_answer(m.data(), m.size());
	ASSERT_TRUE(c);
	EXPECT_EQ(addresses(*c), (std::vector<std::string>{"192.0.2.9"}));
}

TEST(DnsAnswer, Ipv6AndIpv4TogetherWithoutDuplicates)
{
	std::vector<uint8_t> v6 = {0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
	Message m;
	m.question("api2.cursor.sh", kAaaa)
	    .aaaa("api2.cursor.sh", v6)
	    .aaaa("api2.cursor.sh", v6)
	    .a("api2.cursor.sh", "192.0.2.1");
	auto c = dns::parse_answer(m.data(), m.size());
	ASSERT_TRUE(c);
	EXPECT_EQ(addresses(*c), (std::vector<std::string>{"2001:db8::1", "192.0.2.1"}));
}

TEST(DnsAnswer, ACnameLoopStopsWithoutHanging)
{
	Message m;
	m.question("a.cursor.sh")
	    .cname("a.cursor.sh", "b.cursor.sh")
	    .cname("b.cursor.sh", "a.cursor.sh")
	    .a("b.cursor.sh", "192.0.2.3");
	auto c = dns::parse_answer(m.data(), m.size());
	ASSERT_TRUE(c);
	EXPECT_EQ(c->chain, (std::vector<std::string>{"a.cursor.sh", "b.cursor.sh"}));
	EXPECT_EQ(addresses(*c), (std::vector<std::string>{"192.0.2.3"}));
}

TEST(DnsAnswer, AVeryLongChainIsCut)
{
	Message m;
	m.question("n0.cursor.sh");
	for (int i = 0; i < 40; i++)
		m.cname("n" + std::to_string(i) + ".cursor.sh", "n" + std::to_string(i + 1) + ".cursor.sh");
	m.a("n40.cursor.sh", "192.0.2.4");
	auto c = dns::parse_answer(m.data(), m.size());
	ASSERT_TRUE(c);
	EXPECT_EQ(c->chain.size(), dns::kMaxChain + 1);
	EXPECT_TRUE(c->addresses.empty()); // the address lies beyond where the chain was cut
}

TEST(DnsAnswer, AddressesAreCapped)
{
	Message m;
	m.question("many.cursor.sh");
	for (int i = 0; i < 200; i++)
		m.a("many.cursor.sh", ("10.0." + std::to_string(i / 250) + "." + std::to_string(i % 250)).c_str());
	auto c = dns::parse_answer(m.data(), m.size());
	ASSERT_TRUE(c);
	EXPECT_EQ(c->addresses.size(), dns::kMaxAddresses);
}

TEST(DnsAnswer, OtherTypesAndClassesAreSkipped)
{
	Message m;
	m.question("api2.cursor.sh")
	    .record("api2.cursor.sh", kTxt, 60, {3, 'a', 'b', 'c'})
	    .record("api2.cursor.sh", kA, 60, {192, 0, 2, 5}, /*klass CH*/ 3)
	    .a("api2.cursor.sh", "192.0.2.6");
	auto c = dns::parse_answer(m.data(), m.size());
	ASSERT_TRUE(c);
	EXPECT_EQ(addresses(*c), (std::vector<std::string>{"192.0.2.6"}));
}

TEST(DnsAnswer, NxdomainAndQueriesCarryNoAddresses)
{
	Message nx(0x8183);
	nx.question("gone.cursor.sh");
	auto c = dns::parse_answer(nx.data(), nx.size());
	ASSERT_TRUE(c);
	EXPECT_EQ(c->rcode, 3);
	EXPECT_TRUE(c->addresses.empty());
	Message query(0x0100);
	query.question("api2.cursor.sh").a("api2.cursor.sh", "192.0.2.1");
	auto q = dns::parse_answer(query.data(), query.size());
	ASSERT_TRUE(q);
	EXPECT_FALSE(q->response);
	EXPECT_TRUE(q->addresses.empty()); // a "query" with answers is not an answer
}

TEST(DnsAnswer, TruncatedFlagIsReported)
{
	Message m(0x8380);
	m.question("api2.cursor.sh").a("api2.cursor.sh", "192.0.2.1");
	auto c = dns::parse_answer(m.data(), m.size());
	ASSERT_TRUE(c);
	EXPECT_TRUE(c->truncated);
}

TEST(DnsAnswer, MalformedMessagesAreRefusedNeverRead)
{
	Message good;
	good.question("fresh.cursor.sh").cname("fresh.cursor.sh", "edge.cursor.sh").a("edge.cursor.sh", "192.0.2.7");
	// Every truncation of a valid answer: refused or read within bounds (ASan watches).
	for (size_t n = 0; n < good.size(); n++) {
		std::vector<uint8_t> cut(good.bytes.begin(), good.bytes.begin() + static_cast<long>(n));
		auto c = dns::parse_answer(cut.data(), cut.size());
		EXPECT_FALSE(c) << "accepted an answer cut at " << n;
	}
	// Every single-byte corruption: never a crash.
	for (size_t i = 0; i < good.size(); i++) {
		for (uint8_t v : {0x00, 0x3f, 0xc0, 0xff}) {
			auto bad = good.bytes;
			bad[i] = v;
			(void)dns::parse_answer(bad.data(), bad.size());
			(void)dns::parse_question(bad.data(), bad.size());
			(void)dns::servfail_for(bad.data(), bad.size());
		}
	}
}

TEST(DnsAnswer, CompressionLoopsAreRefused)
{
	// The question's name is a pointer to itself.
	Message m;
	m.bytes[5] = 1; // qdcount 1
	m.bytes.insert(m.bytes.end(), {0xc0, 0x0c, 0x00, 0x01, 0x00, 0x01});
	EXPECT_FALSE(dns::parse_answer(m.data(), m.size()));
	EXPECT_FALSE(dns::parse_question(m.data(), m.size()));

	// A CNAME whose target points at itself.
	Message c;
	c.question("a.cursor.sh");
	size_t rdata_at = c.size() + 2 + 10; // owner pointer, type, class, ttl, rdlength
	c.record("a.cursor.sh", kCname, 60, {0xc0, 0x00});
	c.bytes[rdata_at] = static_cast<uint8_t>(0xc0 | (rdata_at >> 8));
	c.bytes[rdata_at + 1] = static_cast<uint8_t>(rdata_at);
	EXPECT_FALSE(dns::parse_answer(c.data(), c.size()));

	// Two pointers at each other.
	Message two;
	two.question("a.cursor.sh");
	size_t at = two.size() + 2 + 10;
	two.record("a.cursor.sh", kCname, 60, {0xc0, 0x00, 0xc0, 0x00});
	two.bytes[at] = static_cast<uint8_t>(0xc0);
	two.bytes[at + 1] = static_cast<uint8_t>(at + 2);
	two.bytes[at + 2] = static_cast<uint8_t>(0xc0);
	two.bytes[at + 3] = static_cast<uint8_t>(at);
	EXPECT_FALSE(dns::parse_answer(two.data(), two.size()));
}

TEST(DnsAnswer, WrongRdataLengthsAreRefused)
{
	Message short_a;
	short_a.question("api2.cursor.sh").record("api2.cursor.sh", kA, 60, {192, 0, 2});
	EXPECT_FALSE(dns::parse_answer(short_a.data(), short_a.size()));
	Message long_aaaa;
	long_aaaa.question("api2.cursor.sh").record("api2.cursor.sh", kAaaa, 60, std::vector<uint8_t>(17, 1));
	EXPECT_FALSE(dns::parse_answer(long_aaaa.data(), long_aaaa.size()));
	// A CNAME whose name ends before its rdata does.
	auto target = Message::encode("edge.cursor.sh");
	target.push_back(0);
	Message padded;
	padded.question("api2.cursor.sh").record("api2.cursor.sh", kCname, 60, target);
	EXPECT_FALSE(dns::parse_answer(padded.data(), padded.size()));
}

TEST(DnsAnswer, OversizeMessagesAreRefused)
{
	std::vector<uint8_t> huge(70000, 0);
	EXPECT_FALSE(dns::parse_answer(huge.data(), huge.size()));
}

TEST(DnsServfail, KeepsIdQuestionAndRecursionDesired)
{
	Message q(0x0100, 0xabcd);
	q.question("api2.cursor.sh", kAaaa);
	auto reply = dns::servfail_for(q.data(), q.size());
	ASSERT_TRUE(reply);
	ASSERT_EQ(reply->size(), q.size());
	EXPECT_EQ((*reply)[0], 0xab);
	EXPECT_EQ((*reply)[1], 0xcd);
	EXPECT_EQ((*reply)[2], 0x81); // QR + RD
	EXPECT_EQ((*reply)[3] & 0x0f, 2);
	auto parsed = dns::parse_answer(reply->data(), reply->size());
	ASSERT_TRUE(parsed);
	EXPECT_TRUE(parsed->response);
	EXPECT_EQ(parsed->question.name, "api2.cursor.sh");
	EXPECT_EQ(parsed->rcode, 2);
	// Trailing records of the query (EDNS) are not echoed.
	Message with_extra(0x0100);
	with_extra.question("api2.cursor.sh").a("api2.cursor.sh", "192.0.2.1");
	auto r2 = dns::servfail_for(with_extra.data(), with_extra.size());
	ASSERT_TRUE(r2);
	EXPECT_EQ(r2->size(), q.size());
	EXPECT_FALSE(dns::servfail_for(q.data(), 11));
}

TEST(DnsServfail, NotForAQuestionWrittenWithPointers)
{
	// Found by the fuzzer: a question name pointing into the header would change meaning once the
	// header becomes a SERVFAIL's. No real query compresses its question.
	const uint8_t query[] = {0x80, 0x01, 0x00, 0x81, 0x00, 0x01, 0,    0,    0,
	                         0,    0,    0,    0xc0, 0x02, 0x00, 0x01, 0x00, 0x01};
	EXPECT_FALSE(dns::servfail_for(query, sizeof(query)));
}

namespace {
std::string write_temp(const std::string &text)
{
	char path[] = "/tmp/cordon-dns-test-XXXXXX";
	int fd = mkstemp(path);
	EXPECT_GE(fd, 0);
	EXPECT_EQ(::write(fd, text.data(), text.size()), static_cast<ssize_t>(text.size()));
	::close(fd);
	return path;
}
} // namespace

TEST(DnsUpstream, FirstNameserverOfResolvConf)
{
	auto conf = write_temp("# comment\nsearch example.org\nnameserver 10.0.0.2\nnameserver 10.0.0.3\n");
	auto got = system_resolver(conf, "/nonexistent");
	ASSERT_TRUE(got) << got.error().message();
	EXPECT_EQ(got->to_string(), "10.0.0.2:53");
	::unlink(conf.c_str());
}

TEST(DnsUpstream, PastALoopbackStubToItsUpstream)
{
	// systemd-resolved's stub would send its own queries from an enforced cgroup back to cordond.
	auto conf = write_temp("nameserver 127.0.0.53\noptions edns0 trust-ad\n");
	auto resolved = write_temp("nameserver 127.0.0.1\nnameserver 2001:db8::53\nnameserver 10.0.0.9\n");
	auto got = system_resolver(conf, resolved);
	ASSERT_TRUE(got);
	EXPECT_EQ(got->to_string(), "[2001:db8::53]:53");
	// Without resolved's list, the stub it is.
	auto stub = system_resolver(conf, "/nonexistent");
	ASSERT_TRUE(stub);
	EXPECT_EQ(stub->to_string(), "127.0.0.53:53");
	::unlink(conf.c_str());
	::unlink(resolved.c_str());
}

TEST(DnsUpstream, NoNameserverIsAnError)
{
	auto conf = write_temp("search example.org\n");
	EXPECT_FALSE(system_resolver(conf, "/nonexistent"));
	EXPECT_FALSE(system_resolver("/nonexistent", "/nonexistent"));
	::unlink(conf.c_str());
}
