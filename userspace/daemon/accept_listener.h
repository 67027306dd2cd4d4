// A listening socket on the event loop: multishot accept hands each new connection to
// `on_accepted`; an error such as EMFILE pauses accepting for 100 ms instead of spinning on it.
// The control socket and the metrics endpoint share it.
#pragma once
#include <cstring>
#include <functional>
#include <string>

#include "common/log.h"
#include "common/unique_fd.h"
#include "daemon/event_loop.h"

namespace cordon {

class AcceptListener : public IoHandler {
public:
	// `what` names the listener in warnings; `on_accepted` owns the fd it is given.
	AcceptListener(UniqueFd fd, std::string what, std::function<void(int)> on_accepted)
	    : fd_(std::move(fd)), what_(std::move(what)), on_accepted_(std::move(on_accepted))
	{}

	void arm()
	{
		io_uring_prep_multishot_accept(loop().prepare(*this, kAccept), fd_.get(), nullptr, nullptr,
		                               SOCK_NONBLOCK | SOCK_CLOEXEC);
	}

	void on_completion(uint8_t op, int res, uint32_t flags) override
	{
		if (op == kRetry) {
			if (!finished())
				arm();
			return;
		}
		if (op != kAccept)
			return;
		if (res >= 0) {
			on_accepted_(res);
		} else if (res != -ECANCELED) {
			log::warning(what_ + " accept: " + std::strerror(-res));
			if (!(flags & IORING_CQE_F_MORE) && !finished()) {
				retry_.tv_sec = 0;
				retry_.tv_nsec = 100 * 1000 * 1000;
				io_uring_prep_timeout(loop().prepare(*this, kRetry), &retry_, 0, 0);
			}
			return;
		}
		if (!(flags & IORING_CQE_F_MORE) && !finished() && res != -ECANCELED)
			arm();
	}

	void on_stop() override
	{
		loop().cancel_fd(*this, fd_.get(), kCancel);
		mark_finished();
	}

private:
	enum Op : uint8_t { kAccept = 1, kRetry, kCancel };
	UniqueFd fd_;
	std::string what_;
	std::function<void(int)> on_accepted_;
	__kernel_timespec retry_{};
};

} // namespace cordon
