// The io_uring event loop: one ring, one provided-buffer pool, and a table of handlers.
//
// Every submission carries (slot, generation, op) in its user_data and is counted against its
// handler. A handler that has finished is destroyed only when its in-flight count is zero, so a
// completion never meets freed memory (the Envoy rule: cancel -> wait -> close -> delete).
#pragma once

#include <liburing.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "common/result.h"

namespace cordon {

class EventLoop;

class IoHandler {
public:
	virtual ~IoHandler() = default;
	// One completion of a request this handler submitted with op `op`.
	virtual void on_completion(uint8_t op, int res, uint32_t cqe_flags) = 0;
	// The loop is shutting down: finish (cancel what is in flight, then mark_finished()).
	virtual void on_stop() = 0;
	// Called once, after the last in-flight request completed, just before deletion.
	virtual void on_retire() {}

	bool finished() const { return finished_; }
	uint32_t inflight() const { return inflight_; }

protected:
	EventLoop &loop() { return *loop_; }
	// Done: the loop deletes this handler once nothing it submitted is in flight.
	void mark_finished();

private:
	friend class EventLoop;
	EventLoop *loop_ = nullptr;
	uint32_t slot_ = 0;
	uint32_t generation_ = 0;
	uint32_t inflight_ = 0;
	bool finished_ = false;
};

// Kernel-provided receive buffers: a recv names the group, the kernel picks a free buffer when
// data arrives. Idle connections therefore hold no buffer at all.
class BufferPool {
public:
	static Result<std::unique_ptr<BufferPool>> create(io_uring *ring, uint16_t group, uint32_t count,
	                                                  uint32_t size);
	~BufferPool();
	BufferPool(const BufferPool &) = delete;
	BufferPool &operator=(const BufferPool &) = delete;

	uint16_t group() const { return group_; }
	uint32_t buffer_size() const { return size_; }
	uint32_t count() const { return count_; }
	uint32_t in_use() const { return in_use_; }
	uint8_t *data(uint16_t bid) { return memory_ + static_cast<size_t>(bid) * size_; }
	// A completion handed us buffer `bid`.
	void taken() { in_use_++; }
	// Give buffer `bid` back to the kernel.
	void recycle(uint16_t bid);

private:
	BufferPool() = default;
	io_uring *ring_ = nullptr;
	io_uring_buf_ring *br_ = nullptr;
	size_t ring_bytes_ = 0;
	uint8_t *memory_ = nullptr;
	size_t memory_bytes_ = 0;
	uint16_t group_ = 0;
	uint32_t count_ = 0;
	uint32_t size_ = 0;
	uint32_t in_use_ = 0;
};

class EventLoop {
public:
	static Result<std::unique_ptr<EventLoop>> create(uint32_t entries);
	~EventLoop();
	EventLoop(const EventLoop &) = delete;
	EventLoop &operator=(const EventLoop &) = delete;

	io_uring *ring() { return &ring_; }

	// Takes ownership; the handler lives until it finished and has nothing in flight.
	IoHandler &add(std::unique_ptr<IoHandler> handler);
	// Makes room for `count` SQEs, so a linked pair (connect + timeout) is never split by a
	// submit in between.
	void reserve(unsigned count);
	// An SQE tagged for `handler` and `op`, counted in flight. Never null: flushes a full SQ.
	io_uring_sqe *prepare(IoHandler &handler, uint8_t op);
	// Cancels every request on `fd` (counted like any other request, op = cancel_op).
	void cancel_fd(IoHandler &handler, int fd, uint8_t cancel_op);
	// Cancels the handler's requests submitted with `op` (e.g. a pending timeout).
	void cancel_op(IoHandler &handler, uint8_t op, uint8_t cancel_op);
	// Moves the handler's pending timeout submitted with `op` to `ts` from now (counted like any
	// other request, op = update_op; -ENOENT if it has already fired). The kernel copies `ts`.
	void update_timeout(IoHandler &handler, uint8_t op, __kernel_timespec *ts, uint8_t update_op);

	// Runs until stop() was called and every handler retired.
	Status run();
	// Asks every handler to finish; run() returns once they have. Safe to call from a completion.
	void stop();
	bool stopping() const { return stopping_; }
	size_t handler_count() const { return live_; }

	// Called after each batch of completions (used to re-arm starved receives).
	void set_after_batch(std::function<void()> fn) { after_batch_ = std::move(fn); }

private:
	EventLoop() = default;
	friend class IoHandler;
	void dispatch(const io_uring_cqe *cqe);
	void schedule_reap(const IoHandler &h) { to_reap_.emplace_back(h.slot_, h.generation_); }
	void reap_finished();

	io_uring ring_{};
	bool ring_ready_ = false;
	bool stopping_ = false;
	std::vector<std::unique_ptr<IoHandler>> slots_;
	std::vector<uint32_t> generations_;
	std::vector<uint32_t> free_slots_;
	std::vector<std::pair<uint32_t, uint32_t>> to_reap_; // (slot, generation)
	size_t live_ = 0;
	std::function<void()> after_batch_;
};

} // namespace cordon
