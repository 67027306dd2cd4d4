#include <gtest/gtest.h>

#include "common/host_pattern.h"

using namespace cordon;

TEST(HostPattern, WildcardMatchesSubdomainsOnly)
{
	auto p = HostPattern::parse("*.cursor.sh");
	ASSERT_TRUE(p);
	EXPECT_TRUE(p->is_wildcard());
	EXPECT_TRUE(p->matches("api2.cursor.sh"));
	EXPECT_TRUE(p->matches("agent.api5.cursor.sh"));
	EXPECT_TRUE(p->matches("API2.Cursor.SH."));
	EXPECT_FALSE(p->matches("cursor.sh"));
	EXPECT_FALSE(p->matches("evilcursor.sh"));
	EXPECT_FALSE(p->matches("api2.cursor.sh.evil.com"));
}

TEST(HostPattern, ExactMatchesOnlyItself)
{
	auto p = HostPattern::parse("Cursor.com");
	ASSERT_TRUE(p);
	EXPECT_EQ(p->name(), "cursor.com");
	EXPECT_TRUE(p->matches("cursor.com"));
	EXPECT_TRUE(p->matches("CURSOR.COM."));
	EXPECT_FALSE(p->matches("www.cursor.com"));
}

TEST(HostPattern, RejectsMalformed)
{
	EXPECT_FALSE(HostPattern::parse(""));
	EXPECT_FALSE(HostPattern::parse("*cursor.sh"));
	EXPECT_FALSE(HostPattern::parse("api.*.cursor.sh"));
	EXPECT_FALSE(HostPattern::parse("a..b"));
	EXPECT_FALSE(HostPattern::parse("bad host"));
	EXPECT_FALSE(HostPattern::parse(std::string(64, 'a') + ".com"));
	EXPECT_TRUE(HostPattern::parse(std::string(63, 'a') + ".com"));
}

TEST(HostPattern, AnyMatches)
{
	std::vector<HostPattern> ps = {*HostPattern::parse("*.cursor.sh"), *HostPattern::parse("cursor.com")};
	EXPECT_TRUE(any_matches(ps, "repo42.cursor.sh"));
	EXPECT_TRUE(any_matches(ps, "cursor.com"));
	EXPECT_FALSE(any_matches(ps, "example.com"));
}
