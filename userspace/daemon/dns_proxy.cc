#include "daemon/dns_proxy.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>

#include "bpf/kernel_programs.h"
#include "common/log.h"
#include "daemon/resolver.h"
#include "dns/dns_message.h"

namespace cordon {

namespace {
std::vector<IpAddress> nameservers(const std::string &path)
{
	std::vector<IpAddress> out;
	std::ifstream in(path);
	std::string line;
	while (std::getline(in, line)) {
		std::istringstream words(line);
		std::string key, value;
		if (!(words >> key >> value) || key != "nameserver")
			continue;
		value = value.substr(0, value.find('%')); // a scope id: loopback or global resolvers only
		if (auto ip = IpAddress::parse(value))
			out.push_back(*ip);
	}
	return out;
}
} // namespace

Result<SocketAddress> system_resolver(const std::string &resolv_conf, const std::string &resolved_conf)
{
	auto listed = nameservers(resolv_conf);
	if (listed.empty())
		return plain_error(resolv_conf + " names no nameserver");
	// A local stub (systemd-resolved's 127.0.0.53, say) sends its own upstream queries from an
	// enforced cgroup, which the programs would hand back to cordond: a loop. Ask the stub's
	// upstream directly instead, when the stub says which it is.
	if (listed.front().is_loopback())
		for (const auto &ip : nameservers(resolved_conf))
			if (!ip.is_loopback())
				return SocketAddress{ip, 53};
	return SocketAddress{listed.front(), 53};
}

namespace {

using Clock = std::chrono::steady_clock;
constexpr size_t kMaxMessage = 65535;
constexpr int kReadsPerWake = 64; // datagrams taken from one listener before looking at others

UniqueFd open_socket(int family, int type)
{
	return UniqueFd(::socket(family, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
}

Result<UniqueFd> bind_listener(const SocketAddress &address, int type)
{
	UniqueFd fd = open_socket(address.family(), type);
	if (!fd)
		return system_error("DNS proxy socket");
	int one = 1;
	::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (address.family() == AF_INET6)
		::setsockopt(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	sockaddr_storage ss{};
	socklen_t len = address.to_sockaddr(ss);
	if (::bind(fd.get(), reinterpret_cast<sockaddr *>(&ss), len) != 0)
		return system_error("DNS proxy bind " + address.to_string() + (type == SOCK_STREAM ? "/tcp" : "/udp"));
	if (type == SOCK_STREAM && ::listen(fd.get(), 256) != 0)
		return system_error("DNS proxy listen " + address.to_string());
	return fd;
}

// A socket toward the upstream resolver, marked so the programs let it through.
Result<UniqueFd> upstream_socket(const SocketAddress &upstream, int type, uint32_t mark)
{
	UniqueFd fd = open_socket(upstream.family(), type);
	if (!fd)
		return system_error("DNS upstream socket");
	if (mark && ::setsockopt(fd.get(), SOL_SOCKET, SO_MARK, &mark, sizeof(mark)) != 0)
		return system_error("SO_MARK on DNS upstream socket");
	sockaddr_storage ss{};
	socklen_t len = upstream.to_sockaddr(ss);
	if (::connect(fd.get(), reinterpret_cast<sockaddr *>(&ss), len) != 0 && errno != EINPROGRESS)
		return system_error("connect to DNS upstream " + upstream.to_string());
	return fd;
}

uint16_t message_id(const std::vector<uint8_t> &m)
{
	return m.size() >= 2 ? static_cast<uint16_t>(m[0] << 8 | m[1]) : 0;
}

} // namespace

class DnsProxy::Worker {
public:
	Worker(DnsProxy &proxy) : proxy_(proxy), s_(proxy.settings_) {}

	void run();

	struct Counters {
		std::atomic<uint64_t> udp_queries{0}, tcp_queries{0}, answered{0}, captured_answers{0},
		    added_addresses{0}, unreadable_answers{0}, servfail{0}, timeouts{0}, dropped{0};
	} counters;

private:
	struct Query {
		std::vector<uint8_t> bytes;
		std::optional<dns::Question> question;
		TargetResolver::DnsWitness witness;
	};
	struct UdpQuery {
		UniqueFd upstream;
		int listener = -1;
		SocketAddress client;
		Query query;
		Clock::time_point deadline;
	};
	enum class Phase { read_query, connect_upstream, read_answer, write_client };
	struct TcpSession {
		UniqueFd client, upstream;
		Phase phase = Phase::read_query;
		std::vector<uint8_t> in;  // from the client: length-prefixed queries
		std::vector<uint8_t> out; // to whichever side is being written
		size_t written = 0;
		std::vector<uint8_t> answer; // from the upstream
		Query query;
		TargetResolver::DnsWitness who;
		Clock::time_point deadline;
	};

	size_t in_flight() const { return udp_.size() + tcp_.size(); }
	Query make_query(const uint8_t *data, size_t length, const TargetResolver::DnsWitness &who) const;
	std::vector<uint8_t> answer_for(const Query &query, const uint8_t *answer, size_t length);
	std::vector<uint8_t> servfail(const Query &query);

	void read_udp_listener(int fd);
	void finish_udp(uint64_t key);
	void accept_tcp(int fd);
	void on_tcp(uint64_t key, short revents);
	bool start_tcp_query(TcpSession &session);
	bool flush(int fd, TcpSession &session);
	void expire(Clock::time_point now);

	DnsProxy &proxy_;
	const DnsProxySettings &s_;
	std::map<uint64_t, UdpQuery> udp_;
	std::map<uint64_t, TcpSession> tcp_;
	uint64_t next_key_ = 1;
	Clock::time_point last_drop_log_{};
};

DnsProxy::Worker::Query DnsProxy::Worker::make_query(const uint8_t *data, size_t length,
                                                     const TargetResolver::DnsWitness &who) const
{
	Query q;
	q.bytes.assign(data, data + length);
	// Queries that do not parse still go upstream unchanged: never break DNS.
	if (auto question = dns::parse_question(data, length))
		q.question = std::move(*question);
	q.witness = who;
	return q;
}

std::vector<uint8_t> DnsProxy::Worker::servfail(const Query &query)
{
	counters.servfail++;
	auto reply = dns::servfail_for(query.bytes.data(), query.bytes.size());
	return reply ? std::move(*reply) : std::vector<uint8_t>{};
}

// What the client gets for its query: the upstream's answer, once its capture addresses are
// in the targets map.
std::vector<uint8_t> DnsProxy::Worker::answer_for(const Query &query, const uint8_t *answer, size_t length)
{
	counters.answered++;
	const bool asked_capture_host = query.question && any_matches(s_.hosts, query.question->name);
	auto chain = dns::parse_answer(answer, length);
	if (!chain || !chain->response ||
	    (query.question &&
	     (chain->question.name != query.question->name || chain->question.type != query.question->type))) {
		counters.unreadable_answers++;
		// An answer we cannot read must not hand a capture host's address out unseen.
		if (asked_capture_host)
			return servfail(query);
		return {answer, answer + length};
	}
	const bool captured = std::any_of(chain->chain.begin(), chain->chain.end(),
	                                  [this](const std::string &n) { return any_matches(s_.hosts, n); });
	if (captured && !chain->addresses.empty()) {
		counters.captured_answers++;
		auto learned = proxy_.resolver_.learn(chain->question.name, chain->chain, chain->addresses,
		                                      chain->ttl.value_or(0), query.witness);
		counters.added_addresses += learned.added.size();
		// An address that is not in the targets map (it is full) must not reach the job.
		if (!learned.complete)
			return servfail(query);
	}
	return {answer, answer + length};
}

void DnsProxy::Worker::read_udp_listener(int fd)
{
	uint8_t buf[kMaxMessage];
	for (int i = 0; i < kReadsPerWake; i++) {
		sockaddr_storage from{};
		socklen_t from_len = sizeof(from);
		ssize_t n =
		    ::recvfrom(fd, buf, sizeof(buf), MSG_DONTWAIT, reinterpret_cast<sockaddr *>(&from), &from_len);
		if (n < 0)
			return;
		auto client = SocketAddress::from_sockaddr(reinterpret_cast<sockaddr *>(&from), from_len);
		if (!client || static_cast<size_t>(n) < dns::kHeaderSize) {
			counters.dropped++;
			continue;
		}
		counters.udp_queries++;
		TargetResolver::DnsWitness who;
		who.fields.emplace_back("CORDON_CLIENT", client->to_string());
		Query query = make_query(buf, static_cast<size_t>(n), who);
		auto reply_now = [&](const std::vector<uint8_t> &reply) {
			if (reply.empty())
				return;
			sockaddr_storage to{};
			socklen_t to_len = client->to_sockaddr(to);
			::sendto(fd, reply.data(), reply.size(), MSG_DONTWAIT, reinterpret_cast<sockaddr *>(&to),
			         to_len);
		};
		if (in_flight() >= s_.max_in_flight) {
			// The client retries; better than letting one job hold every slot forever.
			counters.dropped++;
			auto now = Clock::now();
			if (now - last_drop_log_ > std::chrono::seconds(10)) {
				log::warning("DNS proxy: " + std::to_string(s_.max_in_flight) +
				             " queries in flight, dropping");
				last_drop_log_ = now;
			}
			continue;
		}
		auto upstream = upstream_socket(s_.upstream, SOCK_DGRAM, s_.upstream_mark);
		if (!upstream || ::send(upstream->get(), query.bytes.data(), query.bytes.size(), MSG_DONTWAIT) < 0) {
			log::debug("DNS proxy: " +
			           (upstream ? std::string(std::strerror(errno)) : upstream.error().message()));
			reply_now(servfail(query));
			continue;
		}
		UdpQuery q;
		q.upstream = std::move(*upstream);
		q.listener = fd;
		q.client = *client;
		q.query = std::move(query);
		q.deadline = Clock::now() + s_.timeout;
		udp_.emplace(next_key_++, std::move(q));
	}
}

void DnsProxy::Worker::finish_udp(uint64_t key)
{
	auto it = udp_.find(key);
	UdpQuery &q = it->second;
	uint8_t buf[kMaxMessage];
	for (;;) {
		ssize_t n = ::recv(q.upstream.get(), buf, sizeof(buf), MSG_DONTWAIT);
		if (n < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return; // keep waiting for the real answer
			// ICMP unreachable and the like: the client learns at once rather than at its timeout.
			auto reply = servfail(q.query);
			sockaddr_storage to{};
			socklen_t to_len = q.client.to_sockaddr(to);
			::sendto(q.listener, reply.data(), reply.size(), MSG_DONTWAIT,
			         reinterpret_cast<sockaddr *>(&to), to_len);
			udp_.erase(it);
			return;
		}
		// Only the answer to this query (its id) counts; anything else on the socket is ignored.
		if (static_cast<size_t>(n) < dns::kHeaderSize ||
		    static_cast<uint16_t>(buf[0] << 8 | buf[1]) != message_id(q.query.bytes))
			continue;
		auto reply = answer_for(q.query, buf, static_cast<size_t>(n));
		sockaddr_storage to{};
		socklen_t to_len = q.client.to_sockaddr(to);
		::sendto(q.listener, reply.data(), reply.size(), MSG_DONTWAIT, reinterpret_cast<sockaddr *>(&to),
		         to_len);
		udp_.erase(it);
		return;
	}
}

void DnsProxy::Worker::accept_tcp(int fd)
{
	for (int i = 0; i < kReadsPerWake; i++) {
		sockaddr_storage peer{}, local{};
		socklen_t peer_len = sizeof(peer), local_len = sizeof(local);
		UniqueFd client(
		    ::accept4(fd, reinterpret_cast<sockaddr *>(&peer), &peer_len, SOCK_NONBLOCK | SOCK_CLOEXEC));
		if (!client)
			return;
		if (in_flight() >= s_.max_in_flight) {
			counters.dropped++;
			continue;
		}
		TcpSession session;
		auto peer_addr = SocketAddress::from_sockaddr(reinterpret_cast<sockaddr *>(&peer), peer_len);
		if (peer_addr && ::getsockname(client.get(), reinterpret_cast<sockaddr *>(&local), &local_len) == 0) {
			session.who.fields.emplace_back("CORDON_CLIENT", peer_addr->to_string());
			auto local_addr = SocketAddress::from_sockaddr(reinterpret_cast<sockaddr *>(&local), local_len);
			// The kernel published who connected (sockops); take it, so the journal can say.
			cordon_tuple tuple{};
			std::memcpy(tuple.client_addr, peer_addr->ip.bytes.data(), 16);
			if (local_addr) {
				std::memcpy(tuple.listen_addr, local_addr->ip.bytes.data(), 16);
				tuple.listen_port = local_addr->port;
			}
			tuple.client_port = peer_addr->port;
			if (auto origin = proxy_.kernel_.take_origin(tuple); origin && origin->has_value()) {
				const cordon_origin &o = **origin;
				session.who.fields.emplace_back("CORDON_PID", std::to_string(o.tgid));
				session.who.fields.emplace_back("CORDON_UID", std::to_string(o.uid));
				session.who.fields.emplace_back("CORDON_COMM",
				                                std::string(o.comm, strnlen(o.comm, sizeof(o.comm))));
				session.who.fields.emplace_back("CORDON_CGROUP_ID", std::to_string(o.cgroup_id));
			}
		}
		session.client = std::move(client);
		session.deadline = Clock::now() + s_.timeout;
		tcp_.emplace(next_key_++, std::move(session));
	}
}

// Starts the next complete query buffered from the client, if there is one. False: close.
bool DnsProxy::Worker::start_tcp_query(TcpSession &t)
{
	if (t.in.size() < 2)
		return true;
	const size_t length = static_cast<size_t>(t.in[0] << 8 | t.in[1]);
	if (length < dns::kHeaderSize)
		return false;
	if (t.in.size() < 2 + length)
		return true;
	counters.tcp_queries++;
	t.query = make_query(t.in.data() + 2, length, t.who);
	t.out.assign(t.in.begin(), t.in.begin() + static_cast<long>(2 + length));
	t.in.erase(t.in.begin(), t.in.begin() + static_cast<long>(2 + length));
	t.written = 0;
	t.answer.clear();
	auto upstream = upstream_socket(s_.upstream, SOCK_STREAM, s_.upstream_mark);
	if (!upstream) {
		log::debug("DNS proxy: " + upstream.error().message());
		auto reply = servfail(t.query);
		if (reply.empty())
			return false;
		t.out = {static_cast<uint8_t>(reply.size() >> 8), static_cast<uint8_t>(reply.size())};
		t.out.insert(t.out.end(), reply.begin(), reply.end());
		t.phase = Phase::write_client;
	} else {
		t.upstream = std::move(*upstream);
		t.phase = Phase::connect_upstream;
	}
	t.deadline = Clock::now() + s_.timeout;
	return true;
}

// Writes what is pending in `out` to fd. False on an error.
bool DnsProxy::Worker::flush(int fd, TcpSession &t)
{
	while (t.written < t.out.size()) {
		ssize_t n = ::send(fd, t.out.data() + t.written, t.out.size() - t.written, MSG_DONTWAIT | MSG_NOSIGNAL);
		if (n < 0)
			return errno == EAGAIN || errno == EWOULDBLOCK;
		t.written += static_cast<size_t>(n);
	}
	return true;
}

void DnsProxy::Worker::on_tcp(uint64_t key, short revents)
{
	auto it = tcp_.find(key);
	TcpSession &t = it->second;
	auto close = [&] { tcp_.erase(it); };
	uint8_t buf[16384];
	switch (t.phase) {
	case Phase::read_query: {
		ssize_t n = ::recv(t.client.get(), buf, sizeof(buf), MSG_DONTWAIT);
		if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK))
			return close();
		if (n > 0) {
			if (t.in.size() + static_cast<size_t>(n) > 2 * (kMaxMessage + 2))
				return close(); // a client that sends without reading its answers
			t.in.insert(t.in.end(), buf, buf + n);
		}
		if (!start_tcp_query(t))
			return close();
		return;
	}
	case Phase::connect_upstream: {
		int err = 0;
		socklen_t len = sizeof(err);
		if ((revents & (POLLERR | POLLHUP)) ||
		    ::getsockopt(t.upstream.get(), SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) {
			auto reply = servfail(t.query);
			t.upstream.reset();
			if (reply.empty())
				return close();
			t.out = {static_cast<uint8_t>(reply.size() >> 8), static_cast<uint8_t>(reply.size())};
			t.out.insert(t.out.end(), reply.begin(), reply.end());
			t.written = 0;
			t.phase = Phase::write_client;
			return;
		}
		if (!flush(t.upstream.get(), t))
			return close();
		if (t.written == t.out.size())
			t.phase = Phase::read_answer;
		return;
	}
	case Phase::read_answer: {
		ssize_t n = ::recv(t.upstream.get(), buf, sizeof(buf), MSG_DONTWAIT);
		if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK))
			return close();
		if (n < 0)
			return;
		t.answer.insert(t.answer.end(), buf, buf + n);
		if (t.answer.size() < 2)
			return;
		const size_t length = static_cast<size_t>(t.answer[0] << 8 | t.answer[1]);
		if (t.answer.size() < 2 + length)
			return;
		if (length < dns::kHeaderSize ||
		    message_id({t.answer.begin() + 2, t.answer.begin() + 4}) != message_id(t.query.bytes))
			return close();
		auto reply = answer_for(t.query, t.answer.data() + 2, length);
		t.upstream.reset();
		if (reply.empty())
			return close();
		t.out = {static_cast<uint8_t>(reply.size() >> 8), static_cast<uint8_t>(reply.size())};
		t.out.insert(t.out.end(), reply.begin(), reply.end());
		t.written = 0;
		t.phase = Phase::write_client; // the next poll says when the client can take it
		t.deadline = Clock::now() + s_.timeout;
		return;
	}
	case Phase::write_client:
		if (!flush(t.client.get(), t))
			return close();
		if (t.written < t.out.size())
			return;
		t.phase = Phase::read_query;
		t.deadline = Clock::now() + s_.timeout;
		// Pipelined queries already read wait in `in`.
		if (!start_tcp_query(t))
			return close();
		return;
	}
}

void DnsProxy::Worker::expire(Clock::time_point now)
{
	// A lost UDP answer: the client retries on its own timeout. A TCP session past its
	// deadline (idle, or an upstream that never answers) is closed.
	std::erase_if(udp_, [&](const auto &e) {
		if (e.second.deadline > now)
			return false;
		counters.timeouts++;
		return true;
	});
	std::erase_if(tcp_, [&](const auto &e) {
		if (e.second.deadline > now)
			return false;
		if (e.second.phase != Phase::read_query)
			counters.timeouts++;
		return true;
	});
}

void DnsProxy::Worker::run()
{
	enum Kind { kWake, kUdpListener, kTcpListener, kUdpQuery, kTcpClient, kTcpUpstream };
	struct Slot {
		Kind kind;
		uint64_t key;
	};
	std::vector<pollfd> fds;
	std::vector<Slot> slots;
	for (;;) {
		fds.clear();
		slots.clear();
		auto add = [&](int fd, short events, Kind kind, uint64_t key) {
			fds.push_back(pollfd{fd, events, 0});
			slots.push_back(Slot{kind, key});
		};
		add(proxy_.wake_.get(), POLLIN, kWake, 0);
		// At the limit, listeners wait: the kernel's queue holds what arrives meanwhile.
		const bool room = in_flight() < s_.max_in_flight;
		for (const auto &fd : proxy_.udp_listeners_)
			add(fd.get(), room ? POLLIN : 0, kUdpListener, 0);
		for (const auto &fd : proxy_.tcp_listeners_)
			add(fd.get(), room ? POLLIN : 0, kTcpListener, 0);
		auto next = Clock::now() + std::chrono::seconds(1);
		for (const auto &[key, q] : udp_) {
			add(q.upstream.get(), POLLIN, kUdpQuery, key);
			next = std::min(next, q.deadline);
		}
		for (const auto &[key, t] : tcp_) {
			switch (t.phase) {
			case Phase::read_query:
				add(t.client.get(), POLLIN, kTcpClient, key);
				break;
			case Phase::connect_upstream:
				add(t.upstream.get(), POLLOUT, kTcpUpstream, key);
				break;
			case Phase::read_answer:
				add(t.upstream.get(), POLLIN, kTcpUpstream, key);
				break;
			case Phase::write_client:
				add(t.client.get(), POLLOUT, kTcpClient, key);
				break;
			}
			next = std::min(next, t.deadline);
		}
		auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(next - Clock::now()).count();
		int ready = ::poll(fds.data(), fds.size(), static_cast<int>(std::max<int64_t>(wait, 0) + 1));
		if (ready < 0 && errno != EINTR) {
			log::error("DNS proxy: poll: " + std::string(std::strerror(errno)));
			return;
		}
		for (size_t i = 0; ready > 0 && i < fds.size(); i++) {
			if (!fds[i].revents)
				continue;
			switch (slots[i].kind) {
			case kWake:
				return;
			case kUdpListener:
				read_udp_listener(fds[i].fd);
				break;
			case kTcpListener:
				accept_tcp(fds[i].fd);
				break;
			case kUdpQuery:
				if (udp_.count(slots[i].key))
					finish_udp(slots[i].key);
				break;
			case kTcpClient:
			case kTcpUpstream:
				if (tcp_.count(slots[i].key))
					on_tcp(slots[i].key, fds[i].revents);
				break;
			}
		}
		expire(Clock::now());
	}
}

DnsProxy::DnsProxy(DnsProxySettings settings, KernelPrograms &kernel, TargetResolver &resolver)
    : settings_(std::move(settings)), kernel_(kernel), resolver_(resolver)
{}

Result<std::unique_ptr<DnsProxy>> DnsProxy::create(DnsProxySettings settings, KernelPrograms &kernel,
                                                   TargetResolver &resolver)
{
	std::unique_ptr<DnsProxy> proxy(new DnsProxy(std::move(settings), kernel, resolver));
	for (const auto &address : proxy->settings_.listen) {
		for (int type : {SOCK_DGRAM, SOCK_STREAM}) {
			auto fd = bind_listener(address, type);
			if (!fd && address.family() == AF_INET6 &&
			    (fd.error().code == EADDRNOTAVAIL || fd.error().code == EAFNOSUPPORT)) {
				// IPv6 off on this host, as the relay allows: IPv6 DNS is then refused, not leaked.
				log::warning(fd.error().message());
				continue;
			}
			if (!fd)
				return fd.error();
			// The programs redirect DNS only to sockets carrying cordond's tag.
			if (Status st = kernel.tag_listener(fd->get()); !st)
				return st.error();
			(type == SOCK_DGRAM ? proxy->udp_listeners_ : proxy->tcp_listeners_).push_back(std::move(*fd));
		}
	}
	proxy->wake_.reset(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
	if (!proxy->wake_)
		return system_error("eventfd");
	proxy->worker_ = std::make_unique<Worker>(*proxy);
	return proxy;
}

void DnsProxy::start()
{
	thread_ = std::thread([this] { worker_->run(); });
}

DnsProxy::~DnsProxy()
{
	if (thread_.joinable()) {
		uint64_t one = 1;
		if (::write(wake_.get(), &one, sizeof(one)) < 0)
			log::error("DNS proxy: cannot wake its thread to stop");
		thread_.join();
	}
}

DnsProxyStats DnsProxy::stats() const
{
	const auto &c = worker_->counters;
	DnsProxyStats s;
	s.udp_queries = c.udp_queries;
	s.tcp_queries = c.tcp_queries;
	s.answered = c.answered;
	s.captured_answers = c.captured_answers;
	s.added_addresses = c.added_addresses;
	s.unreadable_answers = c.unreadable_answers;
	s.servfail = c.servfail;
	s.timeouts = c.timeouts;
	s.dropped = c.dropped;
	return s;
}

} // namespace cordon
