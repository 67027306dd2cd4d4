#include "daemon/event_loop.h"

#include <sys/mman.h>

#include <cstring>

#include "common/log.h"

namespace cordon {
namespace {

// user_data layout: slot (32 bits) | generation (24 bits) | op (8 bits).
uint64_t pack(uint32_t slot, uint32_t generation, uint8_t op)
{
	return (static_cast<uint64_t>(slot) << 32) | (static_cast<uint64_t>(generation & 0xffffff) << 8) | op;
}

} // namespace

Result<std::unique_ptr<BufferPool>> BufferPool::create(io_uring *ring, uint16_t group, uint32_t count, uint32_t size)
{
	std::unique_ptr<BufferPool> pool(new BufferPool());
	pool->ring_ = ring;
	pool->group_ = group;
	pool->count_ = count;
	pool->size_ = size;
	pool->ring_bytes_ = count * sizeof(io_uring_buf);
	void *ring_mem = ::mmap(nullptr, pool->ring_bytes_, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
	if (ring_mem == MAP_FAILED)
		return system_error("allocate buffer ring");
	pool->br_ = static_cast<io_uring_buf_ring *>(ring_mem);
	pool->memory_bytes_ = static_cast<size_t>(count) * size;
	// Untouched pages cost no RSS: memory is only resident once a buffer has carried data.
	void *mem = ::mmap(nullptr, pool->memory_bytes_, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
	if (mem == MAP_FAILED)
		return system_error("allocate relay buffers");
	pool->memory_ = static_cast<uint8_t *>(mem);

	io_uring_buf_ring_init(pool->br_);
	io_uring_buf_reg reg{};
	reg.ring_addr = reinterpret_cast<uint64_t>(pool->br_);
	reg.ring_entries = count;
	reg.bgid = group;
	int rc = io_uring_register_buf_ring(ring, &reg, 0);
	if (rc != 0)
		return system_error("register provided buffer ring", -rc);
	const int mask = io_uring_buf_ring_mask(count);
	for (uint32_t i = 0; i < count; i++)
		io_uring_buf_ring_add(pool->br_, pool->data(static_cast<uint16_t>(i)), size, static_cast<uint16_t>(i),
		                      mask, static_cast<int>(i));
	io_uring_buf_ring_advance(pool->br_, static_cast<int>(count));
	return pool;
}

BufferPool::~BufferPool()
{
	if (ring_ && br_)
		io_uring_unregister_buf_ring(ring_, group_);
	if (br_)
		::munmap(br_, ring_bytes_);
	if (memory_)
		::munmap(memory_, memory_bytes_);
}

void BufferPool::recycle(uint16_t bid)
{
	io_uring_buf_ring_add(br_, data(bid), size_, bid, io_uring_buf_ring_mask(count_), 0);
	io_uring_buf_ring_advance(br_, 1);
	in_use_--;
}

Result<std::unique_ptr<EventLoop>> EventLoop::create(uint32_t entries)
{
	std::unique_ptr<EventLoop> loop(new EventLoop());
	io_uring_params params{};
	// A CQ much larger than the SQ: every connection can have several requests in flight.
	// One thread submits and reaps, so completion work can wait until that thread asks for it
	// (no interrupts into the loop while it runs): SINGLE_ISSUER + DEFER_TASKRUN, Linux 6.1+.
	params.flags = IORING_SETUP_CQSIZE | IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN |
	               IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
	params.cq_entries = entries * 8;
	int rc = io_uring_queue_init_params(entries, &loop->ring_, &params);
	if (rc == -EINVAL) {
		// Older kernel: the plain ring works the same, a little slower.
		params = io_uring_params{};
		params.flags = IORING_SETUP_CQSIZE;
		params.cq_entries = entries * 8;
		rc = io_uring_queue_init_params(entries, &loop->ring_, &params);
	}
	if (rc != 0)
		return system_error("create io_uring", -rc);
	loop->ring_ready_ = true;
	if (!(params.features & IORING_FEAT_NODROP))
		return plain_error("this kernel's io_uring lacks IORING_FEAT_NODROP (need Linux 5.5 or newer)");
	return loop;
}

EventLoop::~EventLoop()
{
	// The ring goes first: once it is torn down the kernel holds no request that could still
	// write into a handler's memory. Only then are the handlers (and their fds) freed.
	if (ring_ready_)
		io_uring_queue_exit(&ring_);
	slots_.clear();
}

IoHandler &EventLoop::add(std::unique_ptr<IoHandler> handler)
{
	uint32_t slot;
	if (!free_slots_.empty()) {
		slot = free_slots_.back();
		free_slots_.pop_back();
	} else {
		slot = static_cast<uint32_t>(slots_.size());
		slots_.emplace_back();
		generations_.push_back(0);
	}
	handler->loop_ = this;
	handler->slot_ = slot;
	handler->generation_ = ++generations_[slot] & 0xffffff;
	slots_[slot] = std::move(handler);
	live_++;
	// Added during shutdown: it must wind down like every other handler, or run() never returns.
	if (stopping_)
		slots_[slot]->on_stop();
	return *slots_[slot];
}

void EventLoop::reserve(unsigned count)
{
	for (int attempt = 0; io_uring_sq_space_left(&ring_) < count; attempt++) {
		int rc = io_uring_submit(&ring_);
		if (rc >= 0)
			continue;
		// The kernel pushes back when completions overflow: flush them into the CQ and retry.
		if ((rc == -EBUSY || rc == -EAGAIN || rc == -EINTR) && attempt < 1000) {
			io_uring_get_events(&ring_);
			continue;
		}
		// Nothing can be submitted at all: stopping is better than spinning; with the programs
		// pinned, jobs are refused until cordond is back.
		log::error(std::string("io_uring submit keeps failing: ") + std::strerror(-rc));
		std::abort();
	}
}

io_uring_sqe *EventLoop::prepare(IoHandler &handler, uint8_t op)
{
	reserve(1);
	io_uring_sqe *sqe = io_uring_get_sqe(&ring_);
	io_uring_sqe_set_data64(sqe, pack(handler.slot_, handler.generation_, op));
	handler.inflight_++;
	return sqe;
}

void EventLoop::cancel_fd(IoHandler &handler, int fd, uint8_t cancel_op)
{
	io_uring_sqe *sqe = prepare(handler, cancel_op);
	io_uring_prep_cancel_fd(sqe, fd, IORING_ASYNC_CANCEL_ALL);
}

void EventLoop::cancel_op(IoHandler &handler, uint8_t op, uint8_t cancel_op)
{
	uint64_t target = pack(handler.slot_, handler.generation_, op);
	io_uring_sqe *sqe = prepare(handler, cancel_op);
	io_uring_prep_cancel64(sqe, target, IORING_ASYNC_CANCEL_ALL);
}

void EventLoop::update_timeout(IoHandler &handler, uint8_t op, __kernel_timespec *ts, uint8_t update_op)
{
	uint64_t target = pack(handler.slot_, handler.generation_, op);
	io_uring_sqe *sqe = prepare(handler, update_op);
	io_uring_prep_timeout_update(sqe, ts, target, 0);
}

void IoHandler::mark_finished()
{
	if (finished_)
		return;
	finished_ = true;
	loop_->schedule_reap(*this);
}

void EventLoop::dispatch(const io_uring_cqe *cqe)
{
	uint64_t data = io_uring_cqe_get_data64(cqe);
	uint32_t slot = static_cast<uint32_t>(data >> 32);
	uint32_t generation = static_cast<uint32_t>((data >> 8) & 0xffffff);
	uint8_t op = static_cast<uint8_t>(data & 0xff);
	if (slot >= slots_.size() || !slots_[slot] || slots_[slot]->generation_ != generation) {
		// Cannot happen while handlers are only reaped with nothing in flight; say so loudly.
		log::error("io_uring completion for a retired handler (slot " + std::to_string(slot) + ", op " +
		           std::to_string(op) + ")");
		return;
	}
	IoHandler &h = *slots_[slot];
	// Multishot requests stay in flight until a completion arrives without F_MORE.
	if (!(cqe->flags & IORING_CQE_F_MORE))
		h.inflight_--;
	h.on_completion(op, cqe->res, cqe->flags);
	if (h.finished_ && h.inflight_ == 0)
		schedule_reap(h);
}

void EventLoop::reap_finished()
{
	while (!to_reap_.empty()) {
		std::vector<std::pair<uint32_t, uint32_t>> batch;
		batch.swap(to_reap_);
		for (auto [slot, generation] : batch) {
			IoHandler *h = slots_[slot].get();
			if (!h || h->generation_ != generation || !h->finished_ || h->inflight_ != 0)
				continue;
			std::unique_ptr<IoHandler> owned = std::move(slots_[slot]);
			owned->on_retire(); // may finish other handlers: the outer loop picks them up
			owned.reset();
			free_slots_.push_back(slot);
			live_--;
		}
	}
}

Status EventLoop::run()
{
	while (!(stopping_ && live_ == 0)) {
		int rc = io_uring_submit_and_wait(&ring_, 1);
		if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY)
			return system_error("io_uring wait", -rc);
		unsigned head, seen = 0;
		io_uring_cqe *cqe;
		io_uring_for_each_cqe(&ring_, head, cqe)
		{
			dispatch(cqe);
			seen++;
		}
		io_uring_cq_advance(&ring_, seen);
		// Reap first: retired handlers give their buffers back, which after_batch may hand on.
		reap_finished();
		if (after_batch_)
			after_batch_();
		reap_finished();
	}
	return {};
}

void EventLoop::stop()
{
	if (stopping_)
		return;
	stopping_ = true;
	for (uint32_t slot = 0; slot < slots_.size(); slot++)
		if (slots_[slot] && !slots_[slot]->finished_)
			slots_[slot]->on_stop();
	// Handlers are reaped by run() after the current batch: stop() may be running inside a
	// handler's own completion.
}

} // namespace cordon
