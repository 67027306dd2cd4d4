#include "daemon/relay.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/random.h>
#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstring>

#include "bpf/kernel_programs.h"
#include "common/cgroup.h"
#include "common/log.h"
#include "daemon/journal.h"
#include "daemon/metrics.h"
#include "proxy/http_host.h"
#include "tls/client_hello.h"

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
	kSendInitial,
};

constexpr int kUp = 0;   // client -> upstream
constexpr int kDown = 1; // upstream -> client
// Buffers one direction may hold before it stops reading: bounds memory per connection and
// lets a slow reader push back on the writer through TCP flow control. Once the shared pool is
// half used, every direction is held to one buffer, so no job can pin the pool with a few
// stalled connections.
constexpr uint8_t kMaxChunks = 4;
// Under real pressure (three quarters used), a relay whose send has not moved for this long is
// a stalled reader holding buffers others need: it is reset.
constexpr auto kStallUnderPressure = std::chrono::seconds(5);

// TLS alert record: fatal access_denied (49), in the record version every client accepts.
// A refused TLS client then reports "alert access denied" instead of a bare reset.
constexpr uint8_t kAccessDeniedAlert[] = {0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x31};

Result<SocketAddress> peer_address(int fd)
{
	sockaddr_storage ss{};
	socklen_t len = sizeof(ss);
	if (::getpeername(fd, reinterpret_cast<sockaddr *>(&ss), &len) != 0)
		return system_error("getpeername");
	return SocketAddress::from_sockaddr(reinterpret_cast<sockaddr *>(&ss), len);
}

} // namespace

namespace relay_detail {

void reset_on_close(int fd)
{
	// An abortive close (RST) tells the peer the stream did not end cleanly: a relay must
	// never turn a failure into what looks like a complete response.
	linger lg{1, 0};
	if (fd >= 0)
		::setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
}

int UpstreamConnect::start(EventLoop &loop, IoHandler &handler, UniqueFd &fd, const SocketAddress &destination,
                           uint32_t mark, std::chrono::milliseconds connect_timeout, uint8_t connect_op,
                           uint8_t timeout_op)
{
	fd.reset(::socket(destination.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
	if (!fd)
		return errno;
	if (::setsockopt(fd.get(), SOL_SOCKET, SO_MARK, &mark, sizeof(mark)) != 0)
		return errno;
	set_nodelay(fd.get());
	len = destination.to_sockaddr(addr);
	loop.reserve(2); // the connect and its linked timeout go in together
	io_uring_sqe *sqe = loop.prepare(handler, connect_op);
	io_uring_prep_connect(sqe, fd.get(), reinterpret_cast<sockaddr *>(&addr), len);
	sqe->flags |= IOSQE_IO_LINK;
	const auto ms = connect_timeout.count();
	timeout.tv_sec = ms / 1000;
	timeout.tv_nsec = (ms % 1000) * 1000000;
	io_uring_prep_link_timeout(loop.prepare(handler, timeout_op), &timeout, 0);
	return 0;
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
		std::snprintf(buf, sizeof(buf), "%.1f KiB", static_cast<double>(n) / 1024.0);
	else
		std::snprintf(buf, sizeof(buf), "%.1f MiB", static_cast<double>(n) / (1024.0 * 1024.0));
	return buf;
}

Result<SocketAddress> local_address(int fd)
{
	sockaddr_storage ss{};
	socklen_t len = sizeof(ss);
	if (::getsockname(fd, reinterpret_cast<sockaddr *>(&ss), &len) != 0)
		return system_error("getsockname");
	return SocketAddress::from_sockaddr(reinterpret_cast<sockaddr *>(&ss), len);
}

} // namespace relay_detail

using namespace relay_detail;

const char *to_string(SniAction a)
{
	switch (a) {
	case SniAction::Intercept:
		return "intercept";
	case SniAction::Passthrough:
		return "passthrough";
	case SniAction::Refuse:
		return "refused";
	}
	return "refused";
}

std::string ConnectionIdentity::comm() const
{
	return std::string(origin.comm, strnlen(origin.comm, sizeof(origin.comm)));
}

void ConnectionIdentity::add_to(JournalEntry &e) const
{
	e.add("CORDON_CONN", id)
	    .add("CORDON_PID", std::to_string(origin.tgid))
	    .add("CORDON_TID", std::to_string(origin.tid))
	    .add("CORDON_UID", std::to_string(origin.uid))
	    .add("CORDON_GID", std::to_string(origin.gid))
	    .add("CORDON_COMM", comm())
	    .add("CORDON_CGROUP", cgroup)
	    .add("CORDON_IDENTITY", identity())
	    .add_if("CORDON_CLAIMS", enrolled && enrolled->journal_claims != "{}" ? enrolled->journal_claims : "")
	    .add_if("CORDON_USER", user)
	    .add_if("CORDON_EXE", exe)
	    .add_if("CORDON_UNIT", workload.unit)
	    .add_if("CORDON_CONTAINER", workload.container)
	    .add_if("CORDON_POD", workload.pod)
	    .add("CORDON_CGROUP_ID", std::to_string(origin.cgroup_id))
	    .add("CORDON_NETNS_COOKIE", std::to_string(origin.netns_cookie))
	    .add("CORDON_CLIENT", client.to_string())
	    .add("CORDON_DST", destination.to_string());
	if (!sni.empty())
		e.add("CORDON_SNI", sni);
}

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
// A redirected connection before and without interception: reads the ClientHello, then relays
// bytes unchanged (passthrough), refuses, or hands the sockets to an InterceptConnection.
// Torn down in exactly one place, on_retire(), which the loop calls only once nothing this
// connection submitted is still in flight.
class RelayConnection : public TrackedConnection {
public:
	RelayConnection(RelayServer &server, UniqueFd client, ConnectionIdentity identity)
	    : server_(server), client_(std::move(client)), id_(std::move(identity))
	{
		last_activity_ = id_.started;
		flows_[kUp].from = &client_;
		flows_[kUp].to = &upstream_;
		flows_[kDown].from = &upstream_;
		flows_[kDown].to = &client_;
	}

	// Reads the ClientHello first: what it names decides what happens to the connection.
	void start()
	{
		state_ = "hello";
		hello_deadline_ = Clock::now() + server_.settings_.tls.hello_timeout;
		arm_hello_recv();
	}

	void on_completion(uint8_t op, int res, uint32_t flags) override
	{
		switch (op) {
		case kConnect:
			return on_connected(res);
		case kConnectTimeout:
			return; // -ETIME: fired (the connect completes with -ECANCELED); -ECANCELED: connected in time
		case kRecv:
			if (peeking_)
				return on_hello(res, flags);
			return on_received(kUp, res, flags);
		case kRecvDown:
			return on_received(kDown, res, flags);
		case kSend:
		case kSendDown:
			return on_sent(op - kSend, res);
		case kSendInitial:
			return on_initial_sent(res);
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
		if (!handed_over_)
			journal_close();
		server_.forget(this);
	}

	void check_timeouts(Clock::time_point now) override
	{
		if (finished())
			return;
		if (peeking_ && now >= hello_deadline_) {
			hello_timed_out_ = true;
			peeking_ = false;
			// A ClientHello begun and never finished is a TLS client stalling on purpose:
			// passing it through could carry a Cursor session unseen.
			if (!hello_.empty())
				return decide(SniAction::Refuse,
				              "ClientHello incomplete after " +
				                  std::to_string(server_.settings_.tls.hello_timeout.count()) + " ms");
			// Nothing at all arrived (a server-speaks-first protocol, or a silent client): the
			// missing-SNI policy decides.
			return decide(server_.settings_.tls.missing_sni,
			              "no ClientHello within " +
			                  std::to_string(server_.settings_.tls.hello_timeout.count()) + " ms");
		}
		auto idle = server_.settings_.idle_timeout;
		if (idle.count() > 0 && now - last_activity_ > idle)
			return fail("idle_timeout", 0, true);
		if (server_.pool_.in_use() * 4 >= server_.pool_.count() * 3)
			for (const Flow &f : flows_)
				if (f.count > 0 && now - f.last_progress > kStallUnderPressure) {
					log::warning("relay " + id_.id + ": send stalled for " +
					             std::to_string(kStallUnderPressure.count()) +
					             " s while relay buffers run out: reset");
					return fail("stalled", 0, true);
				}
	}

	void resume(int flow) override
	{
		if (finished() || !flows_[flow].starved)
			return;
		flows_[flow].starved = false;
		if (peeking_ && flow == kUp)
			return arm_hello_recv();
		pump(flow);
	}

	ConnectionInfo info(Clock::time_point now) const override
	{
		ConnectionInfo i;
		i.id = id_.id;
		i.pid = id_.origin.tgid;
		i.uid = id_.origin.uid;
		i.gid = id_.origin.gid;
		i.comm = id_.comm();
		i.cgroup = id_.cgroup;
		i.client = id_.client.to_string();
		i.destination = id_.destination.to_string();
		i.upstream_local = upstream_local_;
		i.state = state_;
		i.mode = mode_;
		i.sni = id_.sni;
		i.bytes_up = flows_[kUp].bytes;
		i.bytes_down = flows_[kDown].bytes;
		i.age_ms = std::chrono::duration_cast<std::chrono::milliseconds>(now - id_.started).count();
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
		Clock::time_point last_progress{}; // the last time this direction's send moved
	};

	uint8_t chunk_limit() const { return server_.pool_.in_use() * 2 >= server_.pool_.count() ? 1 : kMaxChunks; }

	// --- the ClientHello ------------------------------------------------------------------

	void arm_hello_recv()
	{
		io_uring_sqe *sqe = loop().prepare(*this, kRecv);
		io_uring_prep_recv(sqe, client_.get(), nullptr, server_.pool_.buffer_size(), 0);
		sqe->flags |= IOSQE_BUFFER_SELECT;
		sqe->buf_group = server_.pool_.group();
		flows_[kUp].recv_armed = true;
	}

	void on_hello(int res, uint32_t flags)
	{
		flows_[kUp].recv_armed = false;
		const bool has_buffer = flags & IORING_CQE_F_BUFFER;
		const uint16_t bid = static_cast<uint16_t>(flags >> IORING_CQE_BUFFER_SHIFT);
		if (has_buffer) {
			server_.pool_.taken();
			if (res > 0)
				hello_.append(reinterpret_cast<const char *>(server_.pool_.data(bid)),
				              static_cast<size_t>(res));
			server_.pool_.recycle(bid);
		}
		if (finished() || !peeking_)
			return;
		if (res == -ENOBUFS) {
			flows_[kUp].starved = true;
			return server_.starve(this, kUp);
		}
		if (res <= 0)
			return fail(res == 0 ? "client_closed" : "client_reset", res == 0 ? 0 : -res, res < 0);
		last_activity_ = Clock::now();
		flows_[kUp].bytes += static_cast<uint64_t>(res);
		auto parsed = tls::parse_client_hello(
		    std::span<const uint8_t>(reinterpret_cast<const uint8_t *>(hello_.data()), hello_.size()));
		switch (parsed.status) {
		case tls::HelloStatus::NeedMore:
			return arm_hello_recv();
		case tls::HelloStatus::Complete:
			peeking_ = false;
			id_.sni = parsed.hello.sni;
			alpn_ = parsed.hello.alpn;
			if (parsed.hello.sni.empty())
				return decide(server_.settings_.tls.missing_sni, "ClientHello without SNI");
			if (any_matches(server_.settings_.tls.intercept_hosts, parsed.hello.sni))
				return decide(SniAction::Intercept, "");
			// Encrypted ClientHello: the outer name is a public front, the real one is hidden.
			// Passing it through could carry a Cursor connection unseen: never.
			if (parsed.hello.has_ech)
				return decide(SniAction::Refuse,
				              "encrypted ClientHello (ECH) behind SNI " + parsed.hello.sni);
			// Strict capture caught it for its port alone: somebody else's TLS, left unread.
			if (caught_for_port_only())
				return decide(SniAction::Passthrough,
				              "SNI " + parsed.hello.sni + " is not a capture host (strict capture)");
			return decide(server_.settings_.tls.non_target_sni,
			              "SNI " + parsed.hello.sni + " is not a capture host");

		case tls::HelloStatus::NotTls:
			if (caught_for_port_only())
				return on_plain_http();
			peeking_ = false;
			return decide(server_.settings_.tls.missing_sni, "not TLS: " + parsed.error);
		case tls::HelloStatus::Malformed:
		case tls::HelloStatus::TooLarge:
			// Broken TLS is never relayed: it cannot be inspected, and it has no honest use.
			peeking_ = false;
			return decide(SniAction::Refuse, std::string("bad ClientHello: ") + parsed.error);
		}
	}

	// Strict capture (capture.mode: all-tls) redirected this connection for its port, not for a
	// target address.
	bool caught_for_port_only() const
	{
		return server_.settings_.tls.capture_all && !(id_.origin.flags & CORDON_ORIGIN_TARGET);
	}

	// Plain bytes to an address that is not a target, under strict capture: HTTP naming a
	// capture host is refused (Cursor is never spoken to in the clear), the rest passes unread.
	void on_plain_http()
	{
		proxy::HttpHead head;
		switch (proxy::parse_http_head(hello_, head)) {
		case proxy::HttpHeadStatus::NeedMore:
			return arm_hello_recv(); // the hello timeout bounds the wait
		case proxy::HttpHeadStatus::NotHttp:
			peeking_ = false;
			watch_names_ = true;
			return decide(SniAction::Passthrough, "neither TLS nor HTTP (strict capture)");
		case proxy::HttpHeadStatus::TooLarge:
			peeking_ = false;
			return decide(SniAction::Refuse, "plain HTTP head over " + std::to_string(proxy::kMaxHttpHead) +
			                                     " bytes (strict capture)");
		case proxy::HttpHeadStatus::Ambiguous:
			peeking_ = false;
			return decide(SniAction::Refuse, "plain HTTP a server could read two ways (strict capture)");
		case proxy::HttpHeadStatus::Http2:
			peeking_ = false; // its host is in HPACK, unread: it could be Cursor's
			return decide(SniAction::Refuse, "HTTP/2 with prior knowledge (h2c) (strict capture)");
		case proxy::HttpHeadStatus::Complete:
			peeking_ = false;
			if (head.host.empty())
				return decide(SniAction::Refuse, "plain HTTP without a host (strict capture)");
			if (any_matches(server_.settings_.tls.intercept_hosts, head.host) || names_capture_host(hello_))
				return decide(SniAction::Refuse, "plain HTTP to capture host " + head.host);
			if (head.upgrade) // what follows (h2c, a WebSocket) is not read: it could name anyone
				return decide(SniAction::Refuse,
				              "plain HTTP upgrade to another protocol (strict capture)");
			// Later requests on this connection are not parsed: their bytes are searched instead.
			watch_names_ = true;
			return decide(SniAction::Passthrough, "plain HTTP to " + head.host + " (strict capture)");
		}
	}

	// Whether `bytes` (with what came before, in name_tail_) name a capture host anywhere:
	// plain bytes passed through under strict capture are searched for as long as they flow.
	bool names_capture_host(std::string_view bytes)
	{
		std::string text = name_tail_;
		text.append(bytes);
		std::transform(text.begin(), text.end(), text.begin(), [](unsigned char c) { return std::tolower(c); });
		size_t longest = 0;
		for (const auto &pattern : server_.settings_.tls.intercept_hosts) {
			longest = std::max(longest, pattern.name().size());
			if (text.find(pattern.name()) != std::string::npos)
				return true;
		}
		name_tail_ = text.substr(text.size() - std::min(text.size(), longest));
		return false;
	}

	void decide(SniAction action, std::string reason)
	{
		// A container's connection passed through leaves from cordond, in the host's namespace:
		// to an internal address that would step over the container network's isolation (other
		// tenants' service containers, host-only networks). Such ranges belong in
		// capture.strict_exempt_cidrs, where the container's own connection is left alone.
		if (action == SniAction::Passthrough && id_.origin.netns_cookie != server_.settings_.own_netns_cookie) {
			IpAddress dst;
			std::memcpy(dst.bytes.data(), id_.origin.dst_addr, 16);
			if (dst.is_internal()) {
				action = SniAction::Refuse;
				reason += "; not passed through from another network namespace to an internal address "
				          "(capture.strict_exempt_cidrs leaves such ranges to the job)";
			}
		}
		mode_ = to_string(action);
		reason_ = reason;
		journal_open();
		switch (action) {
		case SniAction::Intercept:
			server_.stats_.intercepted++;
			handed_over_ = true;
			server_.start_intercept(id_, std::move(client_), std::move(hello_), alpn_);
			mark_finished(); // nothing in flight: the hello recv just completed
			return;
		case SniAction::Passthrough:
			server_.stats_.passed_through++;
			// What was read while deciding goes first, as it came.
			server_.metrics_->add_bytes(true, flows_[kUp].bytes);
			initial_ = std::move(hello_);
			return connect_upstream();
		case SniAction::Refuse:
			server_.stats_.refused++;
			server_.metrics_->add_bytes(true, flows_[kUp].bytes); // as CORDON_BYTES_UP counts them
			if (!hello_.empty() && static_cast<uint8_t>(hello_[0]) == 0x16)
				(void)!::send(client_.get(), kAccessDeniedAlert, sizeof(kAccessDeniedAlert),
				              MSG_NOSIGNAL | MSG_DONTWAIT);
			return fail("refused", 0, false);
		}
	}

	// --- passthrough -------------------------------------------------------------------

	void connect_upstream()
	{
		state_ = "connecting";
		if (int err = connect_.start(loop(), *this, upstream_, id_.destination, server_.settings_.upstream_mark,
		                             server_.settings_.connect_timeout, kConnect, kConnectTimeout))
			return fail("error", err, true);
		// Read what the client sends next while the upstream handshake runs, so the first
		// bytes leave as soon as it completes.
		pump(kUp);
	}

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
		if (!f.recv_armed && !f.eof && !f.starved && f.count < chunk_limit()) {
			io_uring_sqe *sqe = loop().prepare(*this, static_cast<uint8_t>(kRecv + index));
			io_uring_prep_recv(sqe, f.from->get(), nullptr, server_.pool_.buffer_size(), 0);
			sqe->flags |= IOSQE_BUFFER_SELECT;
			sqe->buf_group = server_.pool_.group();
			f.recv_armed = true;
		}
		if (!connected_)
			return;
		// The bytes read while peeking (the ClientHello) go first, exactly as received.
		if (index == kUp && initial_sent_ < initial_.size()) {
			if (!initial_armed_) {
				io_uring_prep_send(loop().prepare(*this, kSendInitial), upstream_.get(),
				                   initial_.data() + initial_sent_, initial_.size() - initial_sent_,
				                   MSG_NOSIGNAL);
				initial_armed_ = true;
			}
			return;
		}
		if (!f.send_armed && f.count > 0) {
			Chunk &c = f.chunks[f.head];
			io_uring_sqe *sqe = loop().prepare(*this, static_cast<uint8_t>(kSend + index));
			io_uring_prep_send(sqe, f.to->get(), server_.pool_.data(c.bid) + c.off, c.len - c.off,
			                   MSG_NOSIGNAL);
			f.send_armed = true;
		}
		// Half-close: once everything read before EOF is written, pass the EOF on.
		if (f.eof && f.count == 0 && !f.send_armed && !f.shutdown_armed && !f.shut) {
			io_uring_prep_shutdown(loop().prepare(*this, static_cast<uint8_t>(kShutdown + index)),
			                       f.to->get(), SHUT_WR);
			f.shutdown_armed = true;
		}
	}

	void on_initial_sent(int res)
	{
		initial_armed_ = false;
		if (finished())
			return;
		if (res <= 0)
			return fail("upstream_reset", res == 0 ? EPIPE : -res, true);
		initial_sent_ += static_cast<size_t>(res);
		pump(kUp);
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
		if (index == kUp && watch_names_ &&
		    names_capture_host(std::string_view(reinterpret_cast<const char *>(server_.pool_.data(bid)),
		                                        static_cast<size_t>(res)))) {
			server_.pool_.recycle(bid);
			reason_ = "a capture host named later on a plain connection (strict capture)";
			server_.stats_.refused++;
			return fail("refused", 0, true);
		}
		uint8_t tail = (f.head + f.count) % kMaxChunks;
		f.chunks[tail] = Chunk{bid, static_cast<uint32_t>(res), 0};
		if (f.count == 0)
			f.last_progress = Clock::now(); // the clock for a stalled send starts now
		f.count++;
		f.bytes += static_cast<uint64_t>(res);
		server_.metrics_->add_bytes(index == kUp, static_cast<uint64_t>(res));
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
		f.last_progress = Clock::now();
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
		if (!opened_) {
			// Ended before a decision (closed during the hello): still journal who it was.
			mode_ = "none";
			journal_open();
			server_.metrics_->add_bytes(true, flows_[kUp].bytes);
		}
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

	void journal_open()
	{
		opened_ = true;
		JournalEntry e;
		e.message = "open " + id_.id + ": " + id_.comm() + "[" + std::to_string(id_.origin.tgid) + "] uid " +
		            std::to_string(id_.origin.uid) + " cgroup " + id_.cgroup + " -> " +
		            id_.destination.to_string() + (id_.sni.empty() ? "" : " (" + id_.sni + ")") + ": " + mode_ +
		            (reason_.empty() ? "" : " (" + reason_ + ")");
		e.priority = mode_ == "refused" ? 4 : 6;
		e.add("CORDON_EVENT", "connection_open").add("CORDON_MODE", mode_);
		id_.add_to(e);
		if (!reason_.empty())
			e.add("CORDON_REASON", reason_);
		server_.journal_.send(std::move(e));
		server_.metrics_->connection_opened(mode_);
	}

	void journal_close()
	{
		auto us = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - id_.started).count();
		JournalEntry e;
		e.priority = (result_ == "ok" || result_ == "shutdown") ? 6 : 4;
		char duration[32];
		std::snprintf(duration, sizeof(duration), "%.1f ms", static_cast<double>(us) / 1000.0);
		e.message = "close " + id_.id + ": " + result_ + ", " + human_bytes(flows_[kUp].bytes) + " up, " +
		            human_bytes(flows_[kDown].bytes) + " down, " + duration;
		if (error_)
			e.message += " (" + std::string(std::strerror(error_)) + ")";
		else if (result_ == "refused")
			e.message += " (" + reason_ + ")";
		e.add("CORDON_EVENT", "connection_close").add("CORDON_MODE", mode_);
		id_.add_to(e);
		e.add("CORDON_UPSTREAM_LOCAL", upstream_local_)
		    .add("CORDON_BYTES_UP", std::to_string(flows_[kUp].bytes))
		    .add("CORDON_BYTES_DOWN", std::to_string(flows_[kDown].bytes))
		    .add("CORDON_DURATION_US", std::to_string(us))
		    .add("CORDON_RESULT", result_);
		if (!reason_.empty())
			e.add("CORDON_REASON", reason_);
		if (error_)
			e.add("CORDON_ERRNO", std::to_string(error_)).add("CORDON_ERROR", std::strerror(error_));
		server_.journal_.send(std::move(e));
		server_.stats_.closed++;
		server_.metrics_->connection_closed(result_);
	}

	RelayServer &server_;
	UniqueFd client_, upstream_;
	ConnectionIdentity id_;
	std::string upstream_local_;
	std::string state_ = "accepted";
	std::string mode_ = "none";
	std::string reason_;
	std::string result_ = "ok";
	int error_ = 0;
	bool abortive_ = false;
	bool connected_ = false; // upstream handshake done: sending (and passing on EOF) may start
	bool peeking_ = true;
	// Strict capture passed plain bytes through: search what the client sends on for capture
	// host names (a second request on a kept-alive connection), keeping a name's length of tail.
	bool watch_names_ = false;
	std::string name_tail_;
	bool hello_timed_out_ = false;
	bool handed_over_ = false;
	bool opened_ = false;
	std::string hello_;
	std::vector<std::string> alpn_;
	Clock::time_point hello_deadline_;
	std::string initial_; // passthrough: the bytes read while peeking
	size_t initial_sent_ = 0;
	bool initial_armed_ = false;
	std::array<Flow, 2> flows_;
	UpstreamConnect connect_;
	Clock::time_point last_activity_;
};

// ---------------------------------------------------------------------------------------------

RelayServer::RelayServer(EventLoop &loop, BufferPool &pool, KernelPrograms &kernel, Journal &journal,
                         CgroupPathCache &cgroups, RelaySettings settings)
    : loop_(loop), pool_(pool), kernel_(kernel), journal_(journal), cgroups_(cgroups), settings_(std::move(settings)),
      memory_(settings_.memory_limit_bytes, settings_.shed_memory_percent)
{
	if (!settings_.metrics)
		own_metrics_ = std::make_unique<DaemonMetrics>();
	metrics_ = settings_.metrics ? settings_.metrics : own_metrics_.get();
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
		if (Status st = kernel_.tag_listener(fd.get()); !st)
			return st;
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
		metrics_->connection_rejected("connection_limit");
		auto now = Clock::now();
		if (now - last_limit_log_ > std::chrono::seconds(10)) {
			// At most every 10 s: a flood of refusals must not become a flood of entries.
			JournalEntry e;
			e.priority = 4;
			e.message = "connection limit (" + std::to_string(settings_.max_connections) +
			            ", daemon.max_connections) reached: refusing new connections";
			e.add("CORDON_EVENT", "connection_limit")
			    .add("CORDON_CONNECTIONS", std::to_string(live_.size()))
			    .add("CORDON_REFUSED", std::to_string(stats_.over_limit));
			journal_.send(std::move(e));
			last_limit_log_ = now;
		}
		return refuse();
	}
	watch_memory(Clock::now());
	if (memory_.shedding()) {
		// Reset at once: the job sees ECONNRESET rather than waiting on a cordond that may not
		// have the memory to serve it. The journal said why when shedding started.
		stats_.shed++;
		shed_since_start_++;
		metrics_->connection_rejected("memory");
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
		metrics_->connection_rejected("no_origin");
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
	ConnectionIdentity id;
	id.id = next_id();
	id.origin = **origin;
	id.client = *peer;
	IpAddress dst;
	std::memcpy(dst.bytes.data(), id.origin.dst_addr, 16);
	id.destination = SocketAddress{dst, id.origin.dst_port};
	id.cgroup = cgroups_.lookup(id.origin.cgroup_id);
	id.workload = describe_cgroup(id.cgroup);
	id.user = users_.name(id.origin.uid);
	if (settings_.tls.enrollments)
		id.enrolled = settings_.tls.enrollments->lookup(id.cgroup, ::time(nullptr));
	// Read now, while the caller is most likely still there; the start-time guard makes sure a
	// recycled pid never lends its binary to someone else's connection.
	if (auto exe = caller_executable(id.origin.tgid, id.origin.connect_boot_ns))
		id.exe = std::move(*exe);
	else
		log::debug("connection " + id.id + ": caller's executable unknown: " + exe.error().message());
	id.started = Clock::now();
	auto conn = std::make_unique<RelayConnection>(*this, std::move(fd), std::move(id));
	RelayConnection *raw = conn.get();
	live_.insert(raw);
	track_destination(raw, dst);
	loop_.add(std::move(conn));
	raw->start();
}

void RelayServer::track_destination(TrackedConnection *conn, const IpAddress &destination)
{
	if (!destination_hook_)
		return;
	destinations_.emplace(conn, destination);
	destination_hook_(destination, true);
}

void RelayServer::starve(TrackedConnection *conn, int flow)
{
	starved_.emplace_back(conn, flow);
}

void RelayServer::resume_starved()
{
	// As many as there are free buffers: waking every starved flow for one free buffer would
	// only make all but one of them starve again.
	size_t free = pool_.count() - pool_.in_use();
	while (!starved_.empty() && free > 0) {
		auto [conn, flow] = starved_.front();
		starved_.pop_front();
		if (live_.count(conn)) {
			conn->resume(flow);
			free--;
		}
	}
}

void RelayServer::forget(TrackedConnection *conn)
{
	live_.erase(conn);
	if (auto it = destinations_.find(conn); it != destinations_.end()) {
		destination_hook_(it->second, false);
		destinations_.erase(it);
	}
	std::erase_if(starved_, [conn](const auto &entry) { return entry.first == conn; });
}

void RelayServer::watch_memory(Clock::time_point now)
{
	const MemoryGuard::Change change = memory_.update(now);
	if (change == MemoryGuard::Change::None)
		return;
	const MemoryGuard::Sample &m = memory_.last();
	const auto mib = [](uint64_t bytes) { return std::to_string(bytes >> 20) + " MiB"; };
	JournalEntry e;
	if (change == MemoryGuard::Change::Started) {
		shed_since_start_ = 0;
		e.priority = 4;
		e.message = "memory " + mib(m.used) + " of " + mib(m.limit) + " (" + m.source + "): refusing new " +
		            "connections until it falls below " + std::to_string(settings_.shed_memory_percent - 5) +
		            "%; live ones carry on";
		e.add("CORDON_EVENT", "load_shed");
	} else {
		e.priority = 5;
		e.message = "memory " + mib(m.used) + " of " + mib(m.limit) + ": accepting connections again (" +
		            std::to_string(shed_since_start_) + " refused meanwhile)";
		e.add("CORDON_EVENT", "load_shed_end").add("CORDON_REFUSED", std::to_string(shed_since_start_));
	}
	e.add("CORDON_MEMORY_BYTES", std::to_string(m.used))
	    .add("CORDON_MEMORY_LIMIT_BYTES", std::to_string(m.limit))
	    .add_if("CORDON_LIMIT_SOURCE", m.source)
	    .add("CORDON_CONNECTIONS", std::to_string(live_.size()));
	journal_.send(std::move(e));
}

void RelayServer::tick(Clock::time_point now)
{
	watch_memory(now);
	std::vector<TrackedConnection *> all(live_.begin(), live_.end());
	for (TrackedConnection *c : all)
		c->check_timeouts(now);
}

std::vector<ConnectionInfo> RelayServer::connections() const
{
	std::vector<ConnectionInfo> out;
	auto now = Clock::now();
	for (TrackedConnection *c : live_)
		out.push_back(c->info(now));
	return out;
}

} // namespace cordon
