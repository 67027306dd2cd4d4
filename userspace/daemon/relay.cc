#include "daemon/relay.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/random.h>
#include <sys/socket.h>

#include <array>
#include <cstdio>
#include <cstring>

#include "bpf/kernel_programs.h"
#include "common/cgroup.h"
#include "common/log.h"
#include "daemon/journal.h"

namespace cordon {
namespace {

using Clock = std::chrono::steady_clock;

enum Op : uint8_t {
	kAccept = 1,
	kRetryAccept,
	kCancel,
	kConnect,
	kConnectTimeout,
	kRecv,     // + flow index
	kRecvDown, // kRecv + 1
	kSend,
	kSendDown,
	kShutdown,
	kShutdownDown,
};

constexpr int kUp = 0;   // client -> upstream
constexpr int kDown = 1; // upstream -> client
// Buffers one direction may hold before it stops reading: bounds memory per connection and
// lets a slow reader push back on the writer through TCP flow control.
constexpr uint8_t kMaxChunks = 4;

void reset_on_close(int fd)
{
	// An abortive close (RST) tells the peer the stream did not end cleanly: a relay must
	// never turn a failure into what looks like a complete response.
	linger lg{1, 0};
	if (fd >= 0)
		::setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
}

void set_nodelay(int fd)
{
	// The relay must not add Nagle delays the client did not ask for.
	int one = 1;
	::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

std::string human_bytes(uint64_t n)
{
	char buf[32];
	if (n < 1024)
		std::snprintf(buf, sizeof(buf), "%llu B", static_cast<unsigned long long>(n));
	else if (n < 1024 * 1024)
		std::snprintf(buf, sizeof(buf), "%.1f KiB", n / 1024.0);
	else
		std::snprintf(buf, sizeof(buf), "%.1f MiB", n / (1024.0 * 1024.0));
	return buf;
}

std::string comm_of(const cordon_origin &o)
{
	return std::string(o.comm, strnlen(o.comm, sizeof(o.comm)));
}

Result<SocketAddress> local_address(int fd)
{
	sockaddr_storage ss{};
	socklen_t len = sizeof(ss);
	if (::getsockname(fd, reinterpret_cast<sockaddr *>(&ss), &len) != 0)
		return system_error("getsockname");
	return SocketAddress::from_sockaddr(reinterpret_cast<sockaddr *>(&ss), len);
}

Result<SocketAddress> peer_address(int fd)
{
	sockaddr_storage ss{};
	socklen_t len = sizeof(ss);
	if (::getpeername(fd, reinterpret_cast<sockaddr *>(&ss), &len) != 0)
		return system_error("getpeername");
	return SocketAddress::from_sockaddr(reinterpret_cast<sockaddr *>(&ss), len);
}

} // namespace

// ---------------------------------------------------------------------------------------------
// Listener: one multishot accept per listening socket.
class Listener : public IoHandler {
public:
	Listener(RelayServer &server, UniqueFd fd, SocketAddress address)
	    : server_(server), fd_(std::move(fd)), address_(address)
	{}

	void arm()
	{
		io_uring_sqe *sqe = loop().prepare(*this, kAccept);
		io_uring_prep_multishot_accept(sqe, fd_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
	}

	void on_completion(uint8_t op, int res, uint32_t flags) override
	{
		if (op == kAccept) {
			if (res >= 0) {
				server_.on_accepted(res, address_);
			} else if (res != -ECANCELED) {
				// EMFILE/ENFILE/ENOMEM: say so, back off a little instead of spinning.
				log::warning(std::string("accept: ") + std::strerror(-res));
				if (!(flags & IORING_CQE_F_MORE) && !finished()) {
					retry_.tv_sec = 0;
					retry_.tv_nsec = 100 * 1000 * 1000;
					io_uring_prep_timeout(loop().prepare(*this, kRetryAccept), &retry_, 0, 0);
				}
				return;
			}
			if (!(flags & IORING_CQE_F_MORE) && !finished())
				arm();
		} else if (op == kRetryAccept && !finished()) {
			arm();
		}
	}

	void on_stop() override
	{
		// Closing the listener makes new redirected connections fail with ECONNREFUSED.
		loop().cancel_fd(*this, fd_.get(), kCancel);
		mark_finished();
	}

private:
	RelayServer &server_;
	UniqueFd fd_;
	SocketAddress address_; // bound to one address, so every accepted socket's local address
	__kernel_timespec retry_{};
};

// ---------------------------------------------------------------------------------------------
// One relayed connection. Torn down in exactly one place, on_retire(), which the loop calls
// only once nothing this connection submitted is still in flight.
class RelayConnection : public IoHandler {
public:
	RelayConnection(RelayServer &server, UniqueFd client, SocketAddress client_addr, const cordon_origin &origin)
	    : server_(server), client_(std::move(client)), client_addr_(client_addr), origin_(origin)
	{
		IpAddress dst;
		std::memcpy(dst.bytes.data(), origin.dst_addr, 16);
		destination_ = SocketAddress{dst, origin.dst_port};
		started_ = Clock::now();
		last_activity_ = started_;
		flows_[kUp].from = &client_;
		flows_[kUp].to = &upstream_;
		flows_[kDown].from = &upstream_;
		flows_[kDown].to = &client_;
	}

	void start()
	{
		id_ = server_.next_id();
		cgroup_ = server_.cgroups_.lookup(origin_.cgroup_id);
		journal_open();
		upstream_.reset(::socket(destination_.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
		if (!upstream_)
			return fail("error", errno, true);
		uint32_t mark = server_.settings_.upstream_mark;
		if (::setsockopt(upstream_.get(), SOL_SOCKET, SO_MARK, &mark, sizeof(mark)) != 0)
			return fail("error", errno, true);
		set_nodelay(upstream_.get());
		connect_len_ = destination_.to_sockaddr(connect_addr_);
		io_uring_sqe *sqe = loop().prepare(*this, kConnect);
		io_uring_prep_connect(sqe, upstream_.get(), reinterpret_cast<sockaddr *>(&connect_addr_), connect_len_);
		sqe->flags |= IOSQE_IO_LINK;
		auto ms = server_.settings_.connect_timeout.count();
		connect_timeout_.tv_sec = ms / 1000;
		connect_timeout_.tv_nsec = (ms % 1000) * 1000000;
		io_uring_prep_link_timeout(loop().prepare(*this, kConnectTimeout), &connect_timeout_, 0);
		state_ = "connecting";
		// Read what the client already sent while the upstream handshake runs, so the first
		// bytes leave as soon as it completes.
		pump(kUp);
	}

	void on_completion(uint8_t op, int res, uint32_t flags) override
	{
		switch (op) {
		case kConnect:
			return on_connected(res);
		case kConnectTimeout:
			return; // -ETIME: fired (the connect completes with -ECANCELED); -ECANCELED: connected in time
		case kRecv:
		case kRecvDown:
			return on_received(op - kRecv, res, flags);
		case kSend:
		case kSendDown:
			return on_sent(op - kSend, res);
		case kShutdown:
		case kShutdownDown:
			return on_shut(op - kShutdown, res);
		case kCancel:
			return;
		default:
			log::error("relay: unexpected completion op " + std::to_string(op));
		}
	}

	void on_stop() override { fail("shutdown", 0, true); }

	void on_retire() override
	{
		for (Flow &f : flows_)
			while (f.count) {
				server_.pool_.recycle(f.chunks[f.head].bid);
				f.head = (f.head + 1) % kMaxChunks;
				f.count--;
			}
		if (abortive_) {
			reset_on_close(client_.get());
			reset_on_close(upstream_.get());
		}
		client_.reset();
		upstream_.reset();
		journal_close();
		server_.forget(this);
	}

	void check_idle(Clock::time_point now)
	{
		auto idle = server_.settings_.idle_timeout;
		if (idle.count() > 0 && !finished() && now - last_activity_ > idle)
			fail("idle_timeout", 0, true);
	}

	// A receive ran out of buffers earlier; buffers are free again.
	void resume(int flow)
	{
		if (finished() || !flows_[flow].starved)
			return;
		flows_[flow].starved = false;
		pump(flow);
	}

	ConnectionInfo info(Clock::time_point now) const
	{
		ConnectionInfo i;
		i.id = id_;
		i.pid = origin_.tgid;
		i.uid = origin_.uid;
		i.gid = origin_.gid;
		i.comm = comm_of(origin_);
		i.cgroup = cgroup_;
		i.client = client_addr_.to_string();
		i.destination = destination_.to_string();
		i.upstream_local = upstream_local_;
		i.state = state_;
		i.bytes_up = flows_[kUp].bytes;
		i.bytes_down = flows_[kDown].bytes;
		i.age_ms = std::chrono::duration_cast<std::chrono::milliseconds>(now - started_).count();
		return i;
	}

private:
	struct Chunk {
		uint16_t bid;
		uint32_t len;
		uint32_t off;
	};
	// One direction of the relay.
	struct Flow {
		UniqueFd *from = nullptr;
		UniqueFd *to = nullptr;
		std::array<Chunk, kMaxChunks> chunks{};
		uint8_t head = 0, count = 0;
		bool recv_armed = false, send_armed = false, shutdown_armed = false;
		bool eof = false, shut = false, starved = false;
		uint64_t bytes = 0;
	};

	void on_connected(int res)
	{
		if (finished())
			return;
		if (res < 0) {
			server_.stats_.upstream_failed++;
			const char *result = res == -ECANCELED      ? "upstream_timeout"
			                     : res == -ECONNREFUSED ? "upstream_refused"
			                                            : "upstream_unreachable";
			return fail(result, res == -ECANCELED ? ETIMEDOUT : -res, true);
		}
		if (auto local = local_address(upstream_.get()))
			upstream_local_ = local->to_string();
		connected_ = true;
		state_ = "relaying";
		pump(kUp);
		pump(kDown);
	}

	void pump(int index)
	{
		Flow &f = flows_[index];
		if (finished())
			return;
		if (!f.recv_armed && !f.eof && !f.starved && f.count < kMaxChunks) {
			io_uring_sqe *sqe = loop().prepare(*this, static_cast<uint8_t>(kRecv + index));
			io_uring_prep_recv(sqe, f.from->get(), nullptr, server_.pool_.buffer_size(), 0);
			sqe->flags |= IOSQE_BUFFER_SELECT;
			sqe->buf_group = server_.pool_.group();
			f.recv_armed = true;
		}
		if (!f.send_armed && f.count > 0 && connected_) {
			Chunk &c = f.chunks[f.head];
			io_uring_sqe *sqe = loop().prepare(*this, static_cast<uint8_t>(kSend + index));
			io_uring_prep_send(sqe, f.to->get(), server_.pool_.data(c.bid) + c.off, c.len - c.off,
			                   MSG_NOSIGNAL);
			f.send_armed = true;
		}
		// Half-close: once everything read before EOF is written, pass the EOF on.
		if (f.eof && f.count == 0 && !f.send_armed && !f.shutdown_armed && !f.shut && connected_) {
			io_uring_prep_shutdown(loop().prepare(*this, static_cast<uint8_t>(kShutdown + index)),
			                       f.to->get(), SHUT_WR);
			f.shutdown_armed = true;
		}
	}

	void on_received(int index, int res, uint32_t flags)
	{
		Flow &f = flows_[index];
		f.recv_armed = false;
		const bool has_buffer = flags & IORING_CQE_F_BUFFER;
		const uint16_t bid = static_cast<uint16_t>(flags >> IORING_CQE_BUFFER_SHIFT);
		if (has_buffer)
			server_.pool_.taken();
		if (res <= 0 || finished()) {
			if (has_buffer)
				server_.pool_.recycle(bid);
			if (finished())
				return;
			if (res == 0) {
				f.eof = true;
				return pump(index);
			}
			if (res == -ENOBUFS) {
				f.starved = true;
				server_.starve(this, index);
				return;
			}
			return fail(index == kUp ? "client_reset" : "upstream_reset", -res, true);
		}
		uint8_t tail = (f.head + f.count) % kMaxChunks;
		f.chunks[tail] = Chunk{bid, static_cast<uint32_t>(res), 0};
		f.count++;
		f.bytes += static_cast<uint64_t>(res);
		last_activity_ = Clock::now();
		pump(index);
	}

	void on_sent(int index, int res)
	{
		Flow &f = flows_[index];
		f.send_armed = false;
		if (finished())
			return;
		if (res <= 0)
			return fail(index == kUp ? "upstream_reset" : "client_reset", res == 0 ? EPIPE : -res, true);
		Chunk &c = f.chunks[f.head];
		c.off += static_cast<uint32_t>(res);
		if (c.off == c.len) {
			server_.pool_.recycle(c.bid);
			f.head = (f.head + 1) % kMaxChunks;
			f.count--;
		}
		last_activity_ = Clock::now();
		pump(index);
	}

	void on_shut(int index, int res)
	{
		Flow &f = flows_[index];
		f.shutdown_armed = false;
		if (finished())
			return;
		if (res < 0 && res != -ENOTCONN)
			return fail(index == kUp ? "upstream_reset" : "client_reset", -res, true);
		f.shut = true;
		if (flows_[kUp].shut && flows_[kDown].shut)
			fail("ok", 0, false);
	}

	// The one way a connection ends: record why, cancel what is in flight, and let the loop
	// retire it (on_retire) when the last completion is in.
	void fail(const char *result, int error, bool abortive)
	{
		if (finished())
			return;
		result_ = result;
		error_ = error;
		abortive_ = abortive;
		state_ = "closing";
		if (inflight() > 0) {
			if (client_)
				loop().cancel_fd(*this, client_.get(), kCancel);
			if (upstream_)
				loop().cancel_fd(*this, upstream_.get(), kCancel);
		}
		mark_finished();
	}

	void add_identity(JournalEntry &e) const
	{
		e.add("CORDON_CONN", id_)
		    .add("CORDON_PID", std::to_string(origin_.tgid))
		    .add("CORDON_TID", std::to_string(origin_.tid))
		    .add("CORDON_UID", std::to_string(origin_.uid))
		    .add("CORDON_GID", std::to_string(origin_.gid))
		    .add("CORDON_COMM", comm_of(origin_))
		    .add("CORDON_CGROUP", cgroup_)
		    .add("CORDON_CGROUP_ID", std::to_string(origin_.cgroup_id))
		    .add("CORDON_NETNS_COOKIE", std::to_string(origin_.netns_cookie))
		    .add("CORDON_CLIENT", client_addr_.to_string())
		    .add("CORDON_DST", destination_.to_string());
	}

	void journal_open()
	{
		JournalEntry e;
		e.message = "open " + id_ + ": " + comm_of(origin_) + "[" + std::to_string(origin_.tgid) + "] uid " +
		            std::to_string(origin_.uid) + " cgroup " + cgroup_ + " -> " + destination_.to_string();
		e.add("CORDON_EVENT", "connection_open");
		add_identity(e);
		server_.journal_.send(std::move(e));
	}

	void journal_close()
	{
		auto us = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - started_).count();
		JournalEntry e;
		e.priority = (result_ == "ok" || result_ == "shutdown") ? 6 : 4;
		char duration[32];
		std::snprintf(duration, sizeof(duration), "%.1f ms", static_cast<double>(us) / 1000.0);
		e.message = "close " + id_ + ": " + result_ + ", " + human_bytes(flows_[kUp].bytes) + " up, " +
		            human_bytes(flows_[kDown].bytes) + " down, " + duration;
		if (error_)
			e.message += " (" + std::string(std::strerror(error_)) + ")";
		e.add("CORDON_EVENT", "connection_close");
		add_identity(e);
		e.add("CORDON_UPSTREAM_LOCAL", upstream_local_)
		    .add("CORDON_BYTES_UP", std::to_string(flows_[kUp].bytes))
		    .add("CORDON_BYTES_DOWN", std::to_string(flows_[kDown].bytes))
		    .add("CORDON_DURATION_US", std::to_string(us))
		    .add("CORDON_RESULT", result_);
		if (error_)
			e.add("CORDON_ERRNO", std::to_string(error_)).add("CORDON_ERROR", std::strerror(error_));
		server_.journal_.send(std::move(e));
		server_.stats_.closed++;
	}

	RelayServer &server_;
	UniqueFd client_, upstream_;
	SocketAddress client_addr_, destination_;
	cordon_origin origin_;
	std::string id_, cgroup_, upstream_local_;
	std::string state_ = "accepted";
	std::string result_ = "ok";
	int error_ = 0;
	bool abortive_ = false;
	bool connected_ = false; // upstream handshake done: sending (and passing on EOF) may start
	std::array<Flow, 2> flows_;
	sockaddr_storage connect_addr_{};
	socklen_t connect_len_ = 0;
	__kernel_timespec connect_timeout_{};
	Clock::time_point started_, last_activity_;
};

// ---------------------------------------------------------------------------------------------

RelayServer::RelayServer(EventLoop &loop, BufferPool &pool, KernelPrograms &kernel, Journal &journal,
                         CgroupPathCache &cgroups, RelaySettings settings)
    : loop_(loop), pool_(pool), kernel_(kernel), journal_(journal), cgroups_(cgroups), settings_(std::move(settings))
{
	uint32_t random = 0;
	if (::getrandom(&random, sizeof(random), 0) != sizeof(random))
		random = static_cast<uint32_t>(Clock::now().time_since_epoch().count());
	char buf[16];
	std::snprintf(buf, sizeof(buf), "%08x", random);
	instance_ = buf;
}

RelayServer::~RelayServer() = default;

std::string RelayServer::next_id()
{
	return instance_ + "-" + std::to_string(++sequence_);
}

Status RelayServer::start()
{
	for (const SocketAddress &addr : settings_.listen) {
		UniqueFd fd(::socket(addr.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
		if (!fd)
			return system_error("socket for listener " + addr.to_string());
		int one = 1;
		if (::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0)
			return system_error("SO_REUSEADDR on " + addr.to_string());
		if (addr.family() == AF_INET6 &&
		    ::setsockopt(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) != 0)
			return system_error("IPV6_V6ONLY on " + addr.to_string());
		// Accepted sockets inherit TCP_NODELAY: one syscall less per connection.
		if (::setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) != 0)
			return system_error("TCP_NODELAY on " + addr.to_string());
		sockaddr_storage ss;
		socklen_t len = addr.to_sockaddr(ss);
		if (::bind(fd.get(), reinterpret_cast<sockaddr *>(&ss), len) != 0) {
			if (addr.family() == AF_INET6 && (errno == EADDRNOTAVAIL || errno == EAFNOSUPPORT)) {
				log::warning("no IPv6 loopback (" + std::string(std::strerror(errno)) +
				             "): IPv6 connections to targets will be refused");
				continue;
			}
			return system_error("bind listener " + addr.to_string());
		}
		if (::listen(fd.get(), 4096) != 0)
			return system_error("listen on " + addr.to_string());
		auto &listener =
		    static_cast<Listener &>(loop_.add(std::make_unique<Listener>(*this, std::move(fd), addr)));
		listener.arm();
		listening_.push_back(addr);
	}
	if (listening_.empty())
		return plain_error("no listener could be opened");
	return {};
}

void RelayServer::on_accepted(int raw_fd, const SocketAddress &local)
{
	UniqueFd fd(raw_fd);
	auto refuse = [&fd] {
		reset_on_close(fd.get());
		fd.reset();
	};
	if (loop_.stopping())
		return refuse();
	if (live_.size() >= settings_.max_connections) {
		stats_.over_limit++;
		auto now = Clock::now();
		if (now - last_limit_log_ > std::chrono::seconds(10)) {
			log::warning("connection limit (" + std::to_string(settings_.max_connections) +
			             ") reached: refusing new connections");
			last_limit_log_ = now;
		}
		return refuse();
	}
	auto peer = peer_address(fd.get());
	if (!peer) {
		log::warning("accepted connection vanished: " + peer.error().message());
		return refuse();
	}
	cordon_tuple tuple{};
	std::memcpy(tuple.client_addr, peer->ip.bytes.data(), 16);
	std::memcpy(tuple.listen_addr, local.ip.bytes.data(), 16);
	tuple.client_port = peer->port;
	tuple.listen_port = local.port;
	auto origin = kernel_.take_origin(tuple);
	if (!origin) {
		log::error(origin.error().message());
		return refuse();
	}
	if (!origin->has_value()) {
		// Someone connected to the listener directly, or the origin was lost: there is no
		// destination to go to, and relaying blind could loop. Refuse.
		stats_.lookup_missed++;
		if (Status st = kernel_.add_to_counter(CORDON_CTR_LOOKUP_MISSED, 1); !st)
			log::error(st.error().message());
		auto now = Clock::now();
		if (now - last_miss_log_ > std::chrono::seconds(10)) {
			log::warning("connection from " + peer->to_string() +
			             " has no origin (not redirected by cordon): refused");
			last_miss_log_ = now;
		}
		return refuse();
	}
	stats_.accepted++;
	auto conn = std::make_unique<RelayConnection>(*this, std::move(fd), *peer, **origin);
	RelayConnection *raw = conn.get();
	live_.insert(raw);
	loop_.add(std::move(conn));
	raw->start();
}

void RelayServer::starve(RelayConnection *conn, int flow)
{
	starved_.emplace_back(conn, flow);
}

void RelayServer::resume_starved()
{
	while (!starved_.empty() && pool_.in_use() < pool_.count()) {
		auto [conn, flow] = starved_.front();
		starved_.pop_front();
		if (live_.count(conn))
			conn->resume(flow);
	}
}

void RelayServer::forget(RelayConnection *conn)
{
	live_.erase(conn);
	std::erase_if(starved_, [conn](const auto &entry) { return entry.first == conn; });
}

void RelayServer::tick(Clock::time_point now)
{
	if (settings_.idle_timeout.count() == 0)
		return;
	std::vector<RelayConnection *> all(live_.begin(), live_.end());
	for (RelayConnection *c : all)
		c->check_idle(now);
}

std::vector<ConnectionInfo> RelayServer::connections() const
{
	std::vector<ConnectionInfo> out;
	auto now = Clock::now();
	for (RelayConnection *c : live_)
		out.push_back(c->info(now));
	return out;
}

} // namespace cordon
