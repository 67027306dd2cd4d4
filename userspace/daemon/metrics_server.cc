#include "daemon/metrics_server.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <array>
#include <cstring>

#include "common/log.h"
#include "common/unique_fd.h"
#include "daemon/accept_listener.h"

namespace cordon {
namespace {

enum Op : uint8_t { kAccept = 1, kRetry, kRecv, kSend, kDeadline, kCancel };

// A scrape is one short GET: anything longer is not Prometheus.
constexpr size_t kMaxRequest = 8192;

const char *reason_phrase(int status)
{
	switch (status) {
	case 200:
		return "OK";
	case 400:
		return "Bad Request";
	case 404:
		return "Not Found";
	case 405:
		return "Method Not Allowed";
	case 431:
		return "Request Header Fields Too Large";
	case 503:
		return "Service Unavailable";
	}
	return "Error";
}

Result<sockaddr_un> unix_address(const std::string &path)
{
	sockaddr_un addr{};
	addr.sun_family = AF_UNIX;
	if (path.size() >= sizeof(addr.sun_path))
		return plain_error("metrics socket path too long: " + path);
	std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
	return addr;
}

} // namespace

MetricsHttpAnswer answer_metrics_request(std::string_view head)
{
	auto eol = head.find('\n');
	std::string_view line = head.substr(0, eol);
	if (!line.empty() && line.back() == '\r')
		line.remove_suffix(1);
	// METHOD SP request-target SP HTTP-version, nothing else.
	auto sp1 = line.find(' ');
	auto sp2 = sp1 == std::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
	if (sp2 == std::string_view::npos || line.find(' ', sp2 + 1) != std::string_view::npos)
		return {400, true};
	std::string_view method = line.substr(0, sp1), target = line.substr(sp1 + 1, sp2 - sp1 - 1),
	                 version = line.substr(sp2 + 1);
	if (method.empty() || target.empty() || version.substr(0, 7) != "HTTP/1.")
		return {400, true};
	if (target.substr(0, target.find('?')) != "/metrics")
		return {404, true};
	if (method == "GET")
		return {200, true};
	if (method == "HEAD")
		return {200, false};
	return {405, true};
}

std::string metrics_http_response(const MetricsHttpAnswer &answer, const std::string &metrics_text)
{
	std::string body;
	std::string type = "text/plain; charset=utf-8";
	if (answer.status == 200) {
		body = metrics_text;
		type = "text/plain; version=0.0.4; charset=utf-8";
	} else if (answer.status == 404 || answer.status == 405) {
		body = "cordond serves GET /metrics here\n";
	} else if (answer.status == 503) {
		body = "too many concurrent scrapes\n";
	} else {
		body = std::string(reason_phrase(answer.status)) + "\n";
	}
	std::string out = "HTTP/1.1 " + std::to_string(answer.status) + " " + reason_phrase(answer.status) + "\r\n";
	out += "Content-Type: " + type + "\r\n";
	out += "Content-Length: " + std::to_string(body.size()) + "\r\n";
	if (answer.status == 405)
		out += "Allow: GET, HEAD\r\n";
	out += "Cache-Control: no-store\r\nConnection: close\r\n\r\n";
	if (answer.body)
		out += body;
	return out;
}

// One scrape: read the request head, answer, close.
class MetricsSession : public IoHandler {
public:
	// `busy`: over the cap, this one is answered 503 instead of the metrics.
	MetricsSession(MetricsServer &server, UniqueFd fd, bool busy) : server_(server), fd_(std::move(fd)), busy_(busy)
	{}

	void start()
	{
		const auto ms = server_.deadline_.count();
		deadline_.tv_sec = ms / 1000;
		deadline_.tv_nsec = (ms % 1000) * 1000000;
		io_uring_prep_timeout(loop().prepare(*this, kDeadline), &deadline_, 0, 0);
		deadline_armed_ = true;
		receive();
	}

	void on_completion(uint8_t op, int res, uint32_t) override
	{
		switch (op) {
		case kDeadline:
			deadline_armed_ = false;
			return finish(); // fired (-ETIME), or cancelled because the session is done
		case kRecv:
			recv_armed_ = false;
			if (finished())
				return;
			if (res <= 0)
				return finish(); // gone before asking
			return on_received(static_cast<size_t>(res));
		case kSend:
			send_armed_ = false;
			if (finished())
				return;
			if (res <= 0)
				return finish();
			sent_ += static_cast<size_t>(res);
			if (sent_ < response_.size())
				return send_rest();
			return finish();
		default:
			return;
		}
	}

	void on_stop() override { finish(); }
	void on_retire() override
	{
		server_.sessions_.erase(this);
		if (!busy_)
			server_.serving_--;
	}

private:
	void receive()
	{
		io_uring_prep_recv(loop().prepare(*this, kRecv), fd_.get(), chunk_.data(), chunk_.size(), 0);
		recv_armed_ = true;
	}

	void on_received(size_t n)
	{
		request_.append(chunk_.data(), n);
		auto end = request_.find("\r\n\r\n");
		if (end == std::string::npos)
			end = request_.find("\n\n"); // bare LF, as RFC 9112 tolerates
		if (end == std::string::npos) {
			if (request_.size() > kMaxRequest)
				return respond({431, true});
			return receive();
		}
		respond(busy_ ? MetricsHttpAnswer{503, true}
		              : answer_metrics_request(std::string_view(request_).substr(0, end)));
	}

	void respond(const MetricsHttpAnswer &answer)
	{
		// Rendered only for a real scrape: a wrong path costs nothing.
		response_ = metrics_http_response(answer, answer.status == 200 ? server_.render_() : std::string());
		request_.clear();
		sent_ = 0;
		send_rest();
	}

	void send_rest()
	{
		io_uring_prep_send(loop().prepare(*this, kSend), fd_.get(), response_.data() + sent_,
		                   response_.size() - sent_, MSG_NOSIGNAL);
		send_armed_ = true;
	}

	void finish()
	{
		if (finished())
			return;
		if (recv_armed_ || send_armed_)
			loop().cancel_fd(*this, fd_.get(), kCancel);
		if (deadline_armed_)
			loop().cancel_op(*this, kDeadline, kCancel);
		mark_finished();
	}

	MetricsServer &server_;
	UniqueFd fd_;
	std::array<char, 2048> chunk_{};
	std::string request_, response_;
	size_t sent_ = 0;
	__kernel_timespec deadline_{};
	bool recv_armed_ = false, send_armed_ = false, deadline_armed_ = false;
	bool busy_;
};

MetricsServer::MetricsServer(EventLoop &loop, ListenEndpoint endpoint, Render render,
                             std::chrono::milliseconds deadline)
    : loop_(loop), endpoint_(std::move(endpoint)), render_(std::move(render)), deadline_(deadline)
{}

MetricsServer::~MetricsServer()
{
	if (!bound_unix_)
		return;
	// Only the socket this server made: a later cordond may have replaced it since.
	struct stat st;
	if (::lstat(endpoint_.unix_path.c_str(), &st) == 0 && st.st_dev == socket_dev_ && st.st_ino == socket_ino_)
		::unlink(endpoint_.unix_path.c_str());
}

Status MetricsServer::bind_unix(UniqueFd &fd)
{
	const std::string &path = endpoint_.unix_path;
	auto addr = unix_address(path);
	if (!addr)
		return addr.error();
	std::string dir = path.substr(0, path.rfind('/'));
	if (!dir.empty() && ::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST)
		return system_error("create " + dir);
	struct stat st;
	if (::lstat(path.c_str(), &st) == 0) {
		if (!S_ISSOCK(st.st_mode))
			return plain_error(path + " exists and is not a socket; not replacing it");
		UniqueFd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
		if (!probe)
			return system_error("socket");
		if (::connect(probe.get(), reinterpret_cast<sockaddr *>(&*addr), sizeof(*addr)) == 0)
			return plain_error("another process is answering on " + path);
		if (::unlink(path.c_str()) != 0 && errno != ENOENT) // left behind by a cordond that died
			return system_error("remove the stale " + path);
	}
	fd.reset(::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
	if (!fd)
		return system_error("metrics socket");
	if (::bind(fd.get(), reinterpret_cast<sockaddr *>(&*addr), sizeof(*addr)) != 0)
		return system_error("bind " + path);
	if (::lstat(path.c_str(), &st) != 0)
		return system_error("stat " + path);
	bound_unix_ = true;
	socket_dev_ = st.st_dev;
	socket_ino_ = st.st_ino;
	// Root only, before listen(): nobody can connect while the mode is still the umask's.
	if (::chmod(path.c_str(), 0600) != 0)
		return system_error("chmod " + path);
	return {};
}

Status MetricsServer::start()
{
	UniqueFd fd;
	const std::string where = endpoint_.to_string();
	if (endpoint_.is_unix()) {
		if (Status st = bind_unix(fd); !st)
			return st;
	} else {
		const SocketAddress &addr = endpoint_.inet;
		fd.reset(::socket(addr.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
		if (!fd)
			return system_error("metrics socket");
		int one = 1;
		if (::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0)
			return system_error("SO_REUSEADDR on " + where);
		if (addr.family() == AF_INET6 &&
		    ::setsockopt(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) != 0)
			return system_error("IPV6_V6ONLY on " + where);
		sockaddr_storage ss;
		socklen_t len = addr.to_sockaddr(ss);
		if (::bind(fd.get(), reinterpret_cast<sockaddr *>(&ss), len) != 0)
			return system_error("bind " + where);
	}
	if (::listen(fd.get(), static_cast<int>(kMaxSessions)) != 0)
		return system_error("listen on " + where);
	auto &listener = static_cast<AcceptListener &>(loop_.add(std::make_unique<AcceptListener>(
	    std::move(fd), "metrics", [this](int accepted) { on_accepted(accepted); })));
	listener.arm();
	return {};
}

void MetricsServer::on_accepted(int raw_fd)
{
	UniqueFd fd(raw_fd);
	if (loop_.stopping())
		return; // a session started now would outlive the shutdown
	if (sessions_.size() >= 2 * kMaxSessions)
		return; // closed unanswered: the scrapers already here hold every slot
	// Over the cap, still say so (503) rather than hang up: a scraper then reports an overloaded
	// endpoint, not a broken one.
	const bool busy = serving_ >= kMaxSessions;
	auto session = std::make_unique<MetricsSession>(*this, std::move(fd), busy);
	MetricsSession *raw = session.get();
	sessions_.insert(raw);
	if (!busy)
		serving_++;
	loop_.add(std::move(session));
	raw->start();
}

} // namespace cordon
