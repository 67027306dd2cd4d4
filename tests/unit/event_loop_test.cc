// The loop's lifetime rule: a finished handler is deleted only once nothing it submitted is
// still in flight, so no completion ever reaches freed memory.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <vector>

#include "common/unique_fd.h"
#include "daemon/event_loop.h"

using namespace cordon;

namespace {

struct Events {
	int completions = 0;
	int cancelled = 0;
	bool retired = false;
	uint32_t inflight_at_retire = 99;
};

class Reader : public IoHandler {
public:
	Reader(int fd, Events &ev) : fd_(fd), ev_(ev) {}
	void arm() { io_uring_prep_recv(loop().prepare(*this, 1), fd_, buf_, sizeof(buf_), 0); }
	void on_completion(uint8_t op, int res, uint32_t) override
	{
		ev_.completions++;
		if (op == 1 && res == -ECANCELED)
			ev_.cancelled++;
	}
	void on_stop() override
	{
		loop().cancel_fd(*this, fd_, 2);
		mark_finished();
	}
	void on_retire() override
	{
		ev_.retired = true;
		ev_.inflight_at_retire = inflight();
	}

private:
	int fd_;
	Events &ev_;
	char buf_[64];
};

} // namespace

TEST(EventLoop, HandlerRetiresOnlyAfterItsRequestsComplete)
{
	auto loop = EventLoop::create(64);
	ASSERT_TRUE(loop) << loop.error().message();
	int sv[2];
	ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	UniqueFd a(sv[0]), b(sv[1]);
	Events ev;
	auto &reader = static_cast<Reader &>((*loop)->add(std::make_unique<Reader>(a.get(), ev)));
	reader.arm();
	EXPECT_EQ(reader.inflight(), 1u);
	(*loop)->stop(); // cancels the pending recv
	EXPECT_FALSE(ev.retired);
	ASSERT_TRUE((*loop)->run());
	EXPECT_TRUE(ev.retired);
	EXPECT_EQ(ev.inflight_at_retire, 0u);
	EXPECT_EQ(ev.cancelled, 1);
	EXPECT_EQ(ev.completions, 2); // the recv (cancelled) and the cancel itself
	EXPECT_EQ((*loop)->handler_count(), 0u);
}

namespace {
// Receives once with buffer selection and reports which buffer the kernel picked.
struct Received {
	int bytes = 0, bid = -1;
	std::string data;
};

class BufferedReader : public IoHandler {
public:
	BufferedReader(int fd, BufferPool &pool, Received &out) : fd_(fd), pool_(pool), out_(out) {}
	void arm()
	{
		io_uring_sqe *sqe = loop().prepare(*this, 1);
		io_uring_prep_recv(sqe, fd_, nullptr, pool_.buffer_size(), 0);
		sqe->flags |= IOSQE_BUFFER_SELECT;
		sqe->buf_group = pool_.group();
	}
	void on_completion(uint8_t, int res, uint32_t flags) override
	{
		out_.bytes = res;
		if (flags & IORING_CQE_F_BUFFER) {
			out_.bid = static_cast<int>(flags >> IORING_CQE_BUFFER_SHIFT);
			pool_.taken();
			out_.data.assign(reinterpret_cast<const char *>(pool_.data(static_cast<uint16_t>(out_.bid))),
			                 static_cast<size_t>(res));
		}
		mark_finished();
		loop().stop();
	}
	void on_stop() override { mark_finished(); }

private:
	int fd_;
	BufferPool &pool_;
	Received &out_;
};
} // namespace

TEST(EventLoop, ProvidedBuffersComeFromThePoolAndGoBack)
{
	auto loop = EventLoop::create(64);
	ASSERT_TRUE(loop) << loop.error().message();
	auto pool = BufferPool::create((*loop)->ring(), 7, 16, 4096);
	ASSERT_TRUE(pool) << pool.error().message();
	int sv[2];
	ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	UniqueFd a(sv[0]), b(sv[1]);
	ASSERT_EQ(::write(b.get(), "hello", 5), 5);
	Received got;
	auto &reader =
	    static_cast<BufferedReader &>((*loop)->add(std::make_unique<BufferedReader>(a.get(), **pool, got)));
	reader.arm();
	ASSERT_TRUE((*loop)->run());
	ASSERT_GE(got.bid, 0);
	ASSERT_LT(got.bid, 16);
	EXPECT_EQ(got.data, "hello");
	EXPECT_EQ((*pool)->in_use(), 1u);
	(*pool)->recycle(static_cast<uint16_t>(got.bid));
	EXPECT_EQ((*pool)->in_use(), 0u);
}

namespace {
// Arms a 10 s timeout, then moves it to 20 ms: the loop must end long before 10 s.
class MovedTimer : public IoHandler {
public:
	explicit MovedTimer(std::vector<std::pair<int, int>> &seen) : seen_(seen) {}
	void arm()
	{
		far_ = {10, 0};
		io_uring_prep_timeout(loop().prepare(*this, 1), &far_, 0, 0);
		near_ = {0, 20 * 1000 * 1000};
		loop().update_timeout(*this, 1, &near_, 2);
	}
	void on_completion(uint8_t op, int res, uint32_t) override
	{
		seen_.emplace_back(op, res);
		if (op == 1) {
			mark_finished();
			loop().stop();
		}
	}
	void on_stop() override { mark_finished(); }

private:
	std::vector<std::pair<int, int>> &seen_;
	__kernel_timespec far_{}, near_{};
};
} // namespace

TEST(EventLoop, UpdateTimeoutMovesAPendingTimeoutEarlier)
{
	auto loop = EventLoop::create(64);
	ASSERT_TRUE(loop) << loop.error().message();
	std::vector<std::pair<int, int>> seen;
	auto &timer = static_cast<MovedTimer &>((*loop)->add(std::make_unique<MovedTimer>(seen)));
	timer.arm();
	auto started = std::chrono::steady_clock::now();
	ASSERT_TRUE((*loop)->run());
	EXPECT_LT(std::chrono::steady_clock::now() - started, std::chrono::seconds(5));
	// The update succeeded (0) and the timeout fired as a timeout (-ETIME), not cancelled.
	EXPECT_NE(std::find(seen.begin(), seen.end(), std::make_pair(2, 0)), seen.end());
	EXPECT_NE(std::find(seen.begin(), seen.end(), std::make_pair(1, -ETIME)), seen.end());
}
