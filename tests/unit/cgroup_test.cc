#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/cgroup.h"

using namespace cordon;

TEST(Cgroup, FindsUnifiedMountOnHybridHost)
{
	const char *mounts = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n"
	                     "cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n"
	                     "cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nsdelegate 0 0\n";
	auto m = parse_cgroup2_mount(mounts);
	ASSERT_TRUE(m);
	EXPECT_EQ(*m, "/sys/fs/cgroup/unified");
}

TEST(Cgroup, FindsUnifiedMountOnModernHost)
{
	auto m = parse_cgroup2_mount("sysfs /sys sysfs rw 0 0\ncgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n");
	ASSERT_TRUE(m);
	EXPECT_EQ(*m, "/sys/fs/cgroup");
}

TEST(Cgroup, UnescapesMountPoint)
{
	auto m = parse_cgroup2_mount("none /mnt/my\\040cgroups cgroup2 rw 0 0\n");
	ASSERT_TRUE(m);
	EXPECT_EQ(*m, "/mnt/my cgroups");
}

TEST(Cgroup, NoCgroup2IsAClearError)
{
	auto m = parse_cgroup2_mount("cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n");
	ASSERT_FALSE(m);
	EXPECT_NE(m.error().message().find("cgroup2"), std::string::npos);
}

TEST(Cgroup, UnifiedLineOfProcCgroup)
{
	auto p = parse_unified_cgroup("9:name=systemd:/\n4:memory:/x\n0::/system.slice/cordon.service\n");
	ASSERT_TRUE(p);
	EXPECT_EQ(*p, "/system.slice/cordon.service");
	EXPECT_FALSE(parse_unified_cgroup("4:memory:/x\n"));
}

TEST(Cgroup, NormalizesPaths)
{
	EXPECT_EQ(*normalize_cgroup_path("/"), "/");
	EXPECT_EQ(*normalize_cgroup_path("//a//b/./c/"), "/a/b/c");
	EXPECT_FALSE(normalize_cgroup_path("a/b"));
	EXPECT_FALSE(normalize_cgroup_path("/a/../b"));
}

// Against the real cgroup2 hierarchy: a path and its kernel id translate both ways.
TEST(Cgroup, IdAndPathRoundTripOnRealHierarchy)
{
	auto h = CgroupHierarchy::open_system();
	ASSERT_TRUE(h) << h.error().message();
	std::string name = "/cordon-unit-" + std::to_string(::getpid());
	std::string dir = h->absolute(name);
	ASSERT_EQ(::mkdir(dir.c_str(), 0755), 0) << "need root and a writable cgroup2 mount";
	auto id = h->id_of(name);
	auto root_id = h->id_of("/");
	auto path = id ? h->path_of(*id) : Result<std::string>(plain_error("no id"));
	auto root_path = root_id ? h->path_of(*root_id) : Result<std::string>(plain_error("no id"));
	CgroupPathCache cache(*h, 2);
	std::string cached = id ? cache.lookup(*id) : "";
	::rmdir(dir.c_str());
	ASSERT_TRUE(id) << id.error().message();
	ASSERT_TRUE(path) << path.error().message();
	EXPECT_EQ(*path, name);
	EXPECT_EQ(*root_path, "/");
	EXPECT_EQ(cached, name);
	// The cache keeps answering after the cgroup is gone (ids are never reused).
	EXPECT_EQ(cache.lookup(*id), name);
	EXPECT_FALSE(h->path_of(*id)); // the kernel no longer knows it
}
