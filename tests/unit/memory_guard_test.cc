#include <gtest/gtest.h>

#include "common/cgroup.h"
#include "daemon/memory_guard.h"

using namespace cordon;

TEST(MemoryGuard, FindsTheUnifiedAndTheV1MemoryCgroup)
{
	auto hybrid = parse_proc_cgroups("12:pids:/user.slice\n"
	                                 "7:cpuset,memory:/ci/runner-3\n"
	                                 "1:name=systemd:/user.slice/session-1.scope\n"
	                                 "0::/cordon.service\n");
	ASSERT_TRUE(hybrid.unified);
	EXPECT_EQ(*hybrid.unified, "/cordon.service");
	ASSERT_TRUE(hybrid.memory_v1);
	EXPECT_EQ(*hybrid.memory_v1, "/ci/runner-3");

	auto unified = parse_proc_cgroups("0::/system.slice/cordon.service\n");
	EXPECT_EQ(unified.unified.value_or(""), "/system.slice/cordon.service");
	EXPECT_FALSE(unified.memory_v1);
	// "memory" must be a whole controller name, not a prefix of one.
	EXPECT_FALSE(parse_proc_cgroups("4:memory_x:/a\n").memory_v1);
}

TEST(MemoryGuard, FindsTheV1MemoryMount)
{
	const char *mounts = "cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nosuid 0 0\n"
	                     "cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0\n"
	                     "cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0\n";
	EXPECT_EQ(find_mount(mounts, "cgroup", "memory").value_or(""), "/sys/fs/cgroup/memory");
	EXPECT_FALSE(find_mount("cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n", "cgroup", "memory"));
	// A whole option, not a prefix of one; and the mount point's escapes undone.
	EXPECT_FALSE(find_mount("cgroup /a cgroup rw,memory_x 0 0\n", "cgroup", "memory"));
	EXPECT_EQ(find_mount("cgroup /mnt/my\\040memory cgroup memory,rw 0 0\n", "cgroup", "memory").value_or(""),
	          "/mnt/my memory");
}

TEST(MemoryGuard, ReadsLimitsAndTheirAbsence)
{
	EXPECT_EQ(parse_memory_limit("268435456\n").value_or(0), 268435456u);
	EXPECT_FALSE(parse_memory_limit("max\n"));
	EXPECT_FALSE(parse_memory_limit("9223372036854771712\n")); // v1's "unlimited"
	EXPECT_FALSE(parse_memory_limit(""));
	EXPECT_FALSE(parse_memory_limit("12abc"));
}

TEST(MemoryGuard, ReadsKilobyteFields)
{
	const char *status = "Name:\tcordond\nVmRSS:\t  90000 kB\nRssAnon:\t   81234 kB\nRssFile: 1 kB\n";
	EXPECT_EQ(parse_kb_field(status, "RssAnon:").value_or(0), 81234u * 1024);
	EXPECT_EQ(parse_kb_field("MemTotal:       24609068 kB\nMemFree: 1 kB\n", "MemTotal:").value_or(0),
	          24609068ull * 1024);
	EXPECT_FALSE(parse_kb_field("VmRSS:\t1 kB\n", "RssAnon:"));
	EXPECT_FALSE(parse_kb_field("RssAnon:\tlots kB\n", "RssAnon:"));
}

TEST(MemoryGuard, ShedsAtThePercentAndStopsFivePointsBelow)
{
	const uint64_t limit = 1000 * 100;
	// Not shedding: starts at 90%.
	EXPECT_FALSE(MemoryGuard::decide(false, 89 * 1000, limit, 90));
	EXPECT_TRUE(MemoryGuard::decide(false, 90 * 1000, limit, 90));
	// Shedding: carries on down to 85%, so it does not flap at the line.
	EXPECT_TRUE(MemoryGuard::decide(true, 86 * 1000, limit, 90));
	EXPECT_FALSE(MemoryGuard::decide(true, 84 * 1000, limit, 90));
	// No limit, or shedding off: never.
	EXPECT_FALSE(MemoryGuard::decide(false, ~uint64_t{0}, 0, 90));
	EXPECT_FALSE(MemoryGuard::decide(false, limit, limit, 0));
}

TEST(MemoryGuard, AConfiguredLimitUnderTheProcessSizeShedsAtOnce)
{
	// This test process certainly holds more than 1 MiB of anonymous memory.
	MemoryGuard guard(1 << 20, 90);
	EXPECT_EQ(guard.update(MemoryGuard::Clock::now()), MemoryGuard::Change::Started);
	EXPECT_TRUE(guard.shedding());
	EXPECT_EQ(guard.last().source, "daemon.memory_limit_mb");
	EXPECT_GT(guard.last().used, uint64_t{1} << 20);

	MemoryGuard roomy(uint64_t{1} << 40, 90);
	EXPECT_EQ(roomy.update(MemoryGuard::Clock::now()), MemoryGuard::Change::None);
	EXPECT_FALSE(roomy.shedding());
}
