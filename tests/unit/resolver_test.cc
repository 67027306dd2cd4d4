#include <gtest/gtest.h>

#include <vector>

#include "daemon/resolver.h"

using namespace cordon;

namespace {
void put16(std::vector<uint8_t> &m, uint16_t v)
{
	m.push_back(static_cast<uint8_t>(v >> 8));
	m.push_back(static_cast<uint8_t>(v));
}
void put32(std::vector<uint8_t> &m, uint32_t v)
{
	put16(m, static_cast<uint16_t>(v >> 16));
	put16(m, static_cast<uint16_t>(v));
}
// A response to "api2.example. A" with one answer per TTL.
std::vector<uint8_t> response(std::vector<uint32_t> ttls)
{
	std::vector<uint8_t> m;
	put16(m, 0x1234);
	put16(m, 0x8180);
	put16(m, 1);
	put16(m, static_cast<uint16_t>(ttls.size()));
	put16(m, 0);
	put16(m, 0);
	for (const char *label : {"api2", "example"}) {
		m.push_back(static_cast<uint8_t>(strlen(label)));
		m.insert(m.end(), label, label + strlen(label));
	}
	m.push_back(0);
	put16(m, 1);
	put16(m, 1);
	uint8_t host = 1;
	for (uint32_t ttl : ttls) {
		put16(m, 0xc00c); // name: pointer to the question
		put16(m, 1);
		put16(m, 1);
		put32(m, ttl);
		put16(m, 4);
		m.insert(m.end(), {192, 0, 2, host++});
	}
	return m;
}
} // namespace

TEST(Resolver, MinimumTtlOfAnswers)
{
	auto m = response({300, 60, 120});
	auto ttl = min_answer_ttl(m.data(), m.size());
	ASSERT_TRUE(ttl);
	EXPECT_EQ(*ttl, 60u);
}

TEST(Resolver, NoAnswersNoTtl)
{
	auto m = response({});
	EXPECT_FALSE(min_answer_ttl(m.data(), m.size()));
}

TEST(Resolver, TruncatedMessageIsNotTrusted)
{
	auto m = response({300});
	EXPECT_FALSE(min_answer_ttl(m.data(), 7));
	// Cut inside the answer: what parsed before the cut is all we report.
	EXPECT_FALSE(min_answer_ttl(m.data(), m.size() - 3));
}

TEST(Resolver, ResolvesThroughNsswitch)
{
	// /etc/hosts always has localhost; no DNS traffic leaves the machine for it.
	auto r = resolve_name("localhost");
	ASSERT_TRUE(r) << r.error().message();
	bool loopback = false;
	for (const auto &ip : r->addresses)
		loopback |= ip.is_loopback();
	EXPECT_TRUE(loopback);
}

TEST(Resolver, UnknownNameIsAnError)
{
	auto r = resolve_name("does-not-exist.invalid");
	EXPECT_FALSE(r);
}
