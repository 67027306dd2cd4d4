// The caller's identity beyond the BPF numbers: the cgroup path's unit, container and pod; the
// executable, with the PID-reuse guard; user names.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <climits>

#include "common/workload.h"

using namespace cordon;

namespace {

const std::string kId = "4f3a0c9e1b2d4a5f6e7d8c9b0a1f2e3d4c5b6a7f8e9d0c1b2a3f4e5d6c7b8a9f";

uint64_t boot_ns_now()
{
	timespec ts{};
	clock_gettime(CLOCK_BOOTTIME, &ts);
	return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

std::string self_exe()
{
	char buf[PATH_MAX];
	const ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf));
	return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
}

} // namespace

TEST(Workload, SystemdServicesAndSessions)
{
	auto w = describe_cgroup("/system.slice/actions.runner.acme-app.runner-07.service");
	EXPECT_EQ(w.unit, "actions.runner.acme-app.runner-07.service");
	EXPECT_EQ(w.container, "");
	EXPECT_EQ(describe_cgroup("/user.slice/user-1000.slice/session-4.scope").unit, "session-4.scope");
	// The innermost unit wins: a job's own scope inside the runner's service.
	EXPECT_EQ(describe_cgroup("/system.slice/gitlab-runner.service/job-17.scope").unit, "job-17.scope");
	EXPECT_EQ(describe_cgroup("/system.slice").unit, "");
}

TEST(Workload, ContainersUnderEveryCommonDriver)
{
	for (const std::string &path :
	     {"/system.slice/docker-" + kId + ".scope", "/docker/" + kId, "/machine.slice/libpod-" + kId + ".scope",
	      "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-" + kId + ".scope",
	      "/system.slice/crio-" + kId + ".scope"}) {
		SCOPED_TRACE(path);
		EXPECT_EQ(describe_cgroup(path).container, kId);
	}
	auto k8s = describe_cgroup("/kubepods.slice/kubepods-burstable.slice/"
	                           "kubepods-burstable-pod0f1e2d3c_4b5a_6978_8a9b_0c1d2e3f4a5b.slice/cri-containerd-" +
	                           kId + ".scope");
	EXPECT_EQ(k8s.container, kId);
	EXPECT_EQ(k8s.pod, "0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b");
	auto cgroupfs = describe_cgroup("/kubepods/burstable/pod0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b/" + kId);
	EXPECT_EQ(cgroupfs.container, kId);
	EXPECT_EQ(cgroupfs.pod, "0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b");
}

TEST(Workload, NearMissesAreNotContainers)
{
	EXPECT_EQ(describe_cgroup("/docker/" + kId.substr(1)).container, "") << "63 hex digits";
	EXPECT_EQ(describe_cgroup("/system.slice/dockerx" + kId + ".scope").container, "") << "no separator";
	std::string upper = kId;
	upper[0] = 'F';
	EXPECT_EQ(describe_cgroup("/docker/" + upper).container, "") << "ids are lower-case hex";
	EXPECT_EQ(describe_cgroup("/ci/job-42").container, "");
	EXPECT_EQ(describe_cgroup("/ci/podcast").pod, "");
}

TEST(Workload, ExecutableOfALiveCaller)
{
	auto exe = caller_executable(static_cast<uint32_t>(getpid()), boot_ns_now());
	ASSERT_TRUE(exe) << exe.error().message();
	EXPECT_EQ(*exe, self_exe());
}

TEST(Workload, APidThatStartedAfterTheConnectIsNotTheCaller)
{
	// This process "connected" before it started: as if its pid had been reused since.
	auto exe = caller_executable(static_cast<uint32_t>(getpid()), 1);
	ASSERT_FALSE(exe);
	EXPECT_NE(exe.error().message().find("pid reused"), std::string::npos) << exe.error().message();
}

TEST(Workload, AGoneCallerIsAnError)
{
	const pid_t child = fork();
	ASSERT_GE(child, 0);
	if (child == 0)
		_exit(0);
	int status = 0;
	ASSERT_EQ(waitpid(child, &status, 0), child);
	auto exe = caller_executable(static_cast<uint32_t>(child), boot_ns_now());
	EXPECT_FALSE(exe);
}

TEST(Workload, UserNamesComeFromNssAndAreCached)
{
	UserNames users(2);
	EXPECT_EQ(users.name(0), "root");
	EXPECT_EQ(users.name(0), "root");
	EXPECT_EQ(users.name(65534), "nobody");
	EXPECT_EQ(users.name(4000000000u), "") << "a uid with no name";
	EXPECT_EQ(users.name(0), "root") << "still right after the cache was cleared";
}
