// Load generator and peer server for bench/run.sh. Plain sockets, so what it measures is the
// path (kernel hooks, relays), not a client library.
//
//   cordon-bench server ADDR PORT              peer: echo / sink / source / hold, chosen per connection
//   cordon-bench connect ADDR PORT tcp|udp N   mean ns per socket()+connect()+close()
//   cordon-bench setup ADDR PORT N             connect + first byte echoed back: p50/p99/mean us
//   cordon-bench bulk ADDR PORT BYTES up|down  one connection's throughput, GB/s
//   cordon-bench hold ADDR PORT N              open N idle connections, print "ready", wait for stdin EOF
//
// Wire protocol: the client sends a mode byte and an 8-byte little-endian size:
//   'E' echo everything after, 'U' server reads size bytes then answers 'K',
//   'D' server writes size bytes then closes, 'H' server holds the connection until EOF.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>
#include <unordered_map>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

[[noreturn]] void die(const std::string &what)
{
	std::fprintf(stderr, "cordon-bench: %s: %s\n", what.c_str(), std::strerror(errno));
	std::exit(1);
}

void raise_nofile()
{
	rlimit lim{1 << 17, 1 << 17};
	if (setrlimit(RLIMIT_NOFILE, &lim) != 0 && getrlimit(RLIMIT_NOFILE, &lim) == 0) {
		lim.rlim_cur = lim.rlim_max;
		setrlimit(RLIMIT_NOFILE, &lim);
	}
}

socklen_t make_addr(const char *ip, int port, sockaddr_storage &ss)
{
	std::memset(&ss, 0, sizeof(ss));
	auto *in4 = reinterpret_cast<sockaddr_in *>(&ss);
	if (inet_pton(AF_INET, ip, &in4->sin_addr) == 1) {
		in4->sin_family = AF_INET;
		in4->sin_port = htons(static_cast<uint16_t>(port));
		return sizeof(sockaddr_in);
	}
	auto *in6 = reinterpret_cast<sockaddr_in6 *>(&ss);
	if (inet_pton(AF_INET6, ip, &in6->sin6_addr) != 1) {
		errno = EINVAL;
		die(std::string("bad address ") + ip);
	}
	in6->sin6_family = AF_INET6;
	in6->sin6_port = htons(static_cast<uint16_t>(port));
	return sizeof(sockaddr_in6);
}

int dial(const char *ip, int port)
{
	sockaddr_storage ss;
	socklen_t len = make_addr(ip, port, ss);
	int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		die("socket");
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (connect(fd, reinterpret_cast<sockaddr *>(&ss), len) != 0)
		die(std::string("connect ") + ip + ":" + std::to_string(port));
	return fd;
}

void write_all(int fd, const void *p, size_t n)
{
	const char *c = static_cast<const char *>(p);
	while (n) {
		ssize_t w = write(fd, c, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			die("write");
		}
		c += w;
		n -= static_cast<size_t>(w);
	}
}

void read_exact(int fd, void *p, size_t n)
{
	char *c = static_cast<char *>(p);
	while (n) {
		ssize_t r = read(fd, c, n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			die("read");
		c += r;
		n -= static_cast<size_t>(r);
	}
}

void send_header(int fd, char mode, uint64_t size)
{
	char h[9];
	h[0] = mode;
	std::memcpy(h + 1, &size, 8);
	write_all(fd, h, sizeof(h));
}

void abortive_close(int fd)
{
	// No TIME_WAIT: a connect loop would otherwise run out of ephemeral ports.
	linger lg{1, 0};
	setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	close(fd);
}

// ---------------------------------------------------------------------------------------------
struct Peer {
	char header[9];
	size_t header_got = 0;
	char mode = 0;
	uint64_t size = 0, done = 0;
};

int server(const char *ip, int port)
{
	raise_nofile();
	sockaddr_storage ss;
	socklen_t len = make_addr(ip, port, ss);
	int lfd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	int one = 1;
	setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(lfd, reinterpret_cast<sockaddr *>(&ss), len) != 0)
		die("bind");
	if (listen(lfd, 65535) != 0)
		die("listen");
	int ep = epoll_create1(EPOLL_CLOEXEC);
	epoll_event ev{EPOLLIN, {.fd = lfd}};
	epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
	std::unordered_map<int, Peer> peers;
	static char buf[1 << 18];
	static char zeros[1 << 18];
	std::printf("listening\n");
	std::fflush(stdout);
	auto drop = [&](int fd) {
		epoll_ctl(ep, EPOLL_CTL_DEL, fd, nullptr);
		close(fd);
		peers.erase(fd);
	};
	epoll_event events[256];
	for (;;) {
		int n = epoll_wait(ep, events, 256, -1);
		if (n < 0 && errno == EINTR)
			continue;
		for (int i = 0; i < n; i++) {
			int fd = events[i].data.fd;
			if (fd == lfd) {
				for (;;) {
					int c = accept4(lfd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
					if (c < 0)
						break;
					setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
					peers[c] = Peer{};
					epoll_event cev{EPOLLIN, {.fd = c}};
					epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev);
				}
				continue;
			}
			Peer &p = peers[fd];
			if (p.mode == 'D') { // writable: keep sending
				while (p.done < p.size) {
					size_t chunk = std::min<uint64_t>(sizeof(zeros), p.size - p.done);
					ssize_t w = write(fd, zeros, chunk);
					if (w <= 0)
						break;
					p.done += static_cast<uint64_t>(w);
				}
				if (p.done >= p.size)
					drop(fd);
				continue;
			}
			for (;;) {
				ssize_t r = read(fd, buf, sizeof(buf));
				if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) {
					drop(fd);
					break;
				}
				if (r < 0)
					break;
				size_t off = 0;
				if (p.header_got < sizeof(p.header)) {
					size_t take = std::min(sizeof(p.header) - p.header_got, static_cast<size_t>(r));
					std::memcpy(p.header + p.header_got, buf, take);
					p.header_got += take;
					off = take;
					if (p.header_got < sizeof(p.header))
						continue;
					p.mode = p.header[0];
					std::memcpy(&p.size, p.header + 1, 8);
					if (p.mode == 'D') {
						epoll_event wev{EPOLLOUT, {.fd = fd}};
						epoll_ctl(ep, EPOLL_CTL_MOD, fd, &wev);
						break;
					}
				}
				size_t rest = static_cast<size_t>(r) - off;
				if (p.mode == 'E' && rest)
					write_all(fd, buf + off, rest); // small messages only (setup latency)
				if (p.mode == 'U') {
					p.done += rest;
					if (p.done >= p.size) {
						write_all(fd, "K", 1);
						p.mode = 'H';
					}
				}
			}
		}
	}
}

int connect_loop(const char *ip, int port, bool tcp, long n)
{
	sockaddr_storage ss;
	socklen_t len = make_addr(ip, port, ss);
	auto t0 = Clock::now();
	for (long i = 0; i < n; i++) {
		int fd = socket(ss.ss_family, (tcp ? SOCK_STREAM : SOCK_DGRAM) | SOCK_CLOEXEC, 0);
		if (fd < 0)
			die("socket");
		if (connect(fd, reinterpret_cast<sockaddr *>(&ss), len) != 0)
			die("connect");
		tcp ? abortive_close(fd) : (void)close(fd);
	}
	double ns = std::chrono::duration<double, std::nano>(Clock::now() - t0).count() / static_cast<double>(n);
	std::printf("%.1f\n", ns);
	return 0;
}

int setup(const char *ip, int port, long n)
{
	std::vector<double> us;
	us.reserve(static_cast<size_t>(n));
	for (long i = 0; i < n; i++) {
		auto t0 = Clock::now();
		int fd = dial(ip, port);
		char msg[10] = {'E', 0, 0, 0, 0, 0, 0, 0, 0, 'x'};
		write_all(fd, msg, sizeof(msg));
		char back;
		read_exact(fd, &back, 1);
		us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
		abortive_close(fd);
	}
	std::sort(us.begin(), us.end());
	double mean = 0;
	for (double v : us)
		mean += v;
	mean /= static_cast<double>(us.size());
	std::printf("%.1f %.1f %.1f\n", us[us.size() / 2], us[us.size() * 99 / 100], mean);
	return 0;
}

int bulk(const char *ip, int port, uint64_t bytes, bool up)
{
	static char buf[1 << 18];
	int fd = dial(ip, port);
	auto t0 = Clock::now();
	send_header(fd, up ? 'U' : 'D', bytes);
	if (up) {
		uint64_t sent = 0;
		while (sent < bytes) {
			size_t chunk = std::min<uint64_t>(sizeof(buf), bytes - sent);
			write_all(fd, buf, chunk);
			sent += chunk;
		}
		char k;
		read_exact(fd, &k, 1);
	} else {
		uint64_t got = 0;
		while (got < bytes) {
			ssize_t r = read(fd, buf, sizeof(buf));
			if (r <= 0)
				die("read");
			got += static_cast<uint64_t>(r);
		}
	}
	double s = std::chrono::duration<double>(Clock::now() - t0).count();
	close(fd);
	std::printf("%.3f\n", static_cast<double>(bytes) / s / 1e9);
	return 0;
}

int hold(const char *ip, int port, long n)
{
	raise_nofile();
	std::vector<int> fds;
	for (long i = 0; i < n; i++) {
		int fd = dial(ip, port);
		send_header(fd, 'H', 0);
		fds.push_back(fd);
	}
	std::printf("ready %ld\n", n);
	std::fflush(stdout);
	char c;
	while (read(0, &c, 1) > 0) {
	}
	for (int fd : fds)
		close(fd);
	return 0;
}

} // namespace

int main(int argc, char **argv)
{
	std::string cmd = argc > 1 ? argv[1] : "";
	if (cmd == "server" && argc == 4)
		return server(argv[2], std::atoi(argv[3]));
	if (cmd == "connect" && argc == 6)
		return connect_loop(argv[2], std::atoi(argv[3]), std::string(argv[4]) == "tcp", std::atol(argv[5]));
	if (cmd == "setup" && argc == 5)
		return setup(argv[2], std::atoi(argv[3]), std::atol(argv[4]));
	if (cmd == "bulk" && argc == 6)
		return bulk(argv[2], std::atoi(argv[3]), std::strtoull(argv[4], nullptr, 10),
		            std::string(argv[5]) == "up");
	if (cmd == "hold" && argc == 5)
		return hold(argv[2], std::atoi(argv[3]), std::atol(argv[4]));
	std::cerr << "usage: see the comment at the top of bench/cordon_bench.cc\n";
	return 2;
}
