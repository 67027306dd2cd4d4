#include "daemon/control_server.h"

#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <vector>

#include "common/log.h"
#include "common/unique_fd.h"
#include "daemon/accept_listener.h"

namespace cordon {
namespace {

using Clock = std::chrono::steady_clock;

enum Op : uint8_t { kAccept = 1, kRecv, kSend, kCancel, kRetry };

constexpr size_t kMaxRequest = 64 * 1024;
// What a subscriber may have queued before lines are dropped for it.
constexpr size_t kMaxSubscriberBacklog = 4 << 20;
// Open sessions per non-root uid, and in all for non-root users; root always has room of its own,
// so no local user can lock the administrator out.
constexpr size_t kSessionsPerUid = 8;
constexpr size_t kSessionsNonRoot = 256;
constexpr size_t kSessionsRoot = 32;
// The session-count key of host root (uid 0 in cordond's PID namespace); other callers count by
// uid. (uid_t)-1 is no user's uid.
constexpr uid_t kAdminKey = static_cast<uid_t>(-1);

uid_t session_key(const ControlPeer &peer)
{
	return peer.admin ? kAdminKey : peer.uid;
}
constexpr auto kSessionTimeout = std::chrono::seconds(10);
// SO_PEERPIDFD (Linux 6.5); Debian 12's headers predate it.
constexpr int kSoPeerPidfd = 77;

// Root in cordond's own PID namespace. uid 0 alone is not enough: root of a container without a
// user namespace is uid 0 too, and a job container given the control socket (to enroll) must not
// watch other tenants' prompts or approve its own requests. Unreadable: not root.
bool host_root(const ucred &cred)
{
	if (cred.uid != 0)
		return false;
	struct stat own, theirs;
	const std::string path = "/proc/" + std::to_string(cred.pid) + "/ns/pid";
	return ::stat("/proc/self/ns/pid", &own) == 0 && ::stat(path.c_str(), &theirs) == 0 &&
	       own.st_ino == theirs.st_ino && own.st_dev == theirs.st_dev;
}

Result<sockaddr_un> unix_address(const std::string &path)
{
	sockaddr_un addr{};
	addr.sun_family = AF_UNIX;
	if (path.size() >= sizeof(addr.sun_path))
		return plain_error("control socket path too long: " + path);
	std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
	return addr;
}

} // namespace

bool ControlPeer::alive() const
{
	// Signal 0 checks for existence; a pidfd never points at a process that reused the pid.
	return pidfd && ::syscall(SYS_pidfd_send_signal, pidfd->get(), 0, nullptr, 0) == 0;
}

class ControlSession : public IoHandler {
public:
	ControlSession(ControlServer &server, UniqueFd fd, ControlPeer peer)
	    : server_(server), fd_(std::move(fd)), peer_(peer), started_(Clock::now())
	{}

	void receive() { io_uring_prep_recv(loop().prepare(*this, kRecv), fd_.get(), chunk_.data(), chunk_.size(), 0); }

	void on_completion(uint8_t op, int res, uint32_t) override
	{
		if (finished())
			return;
		if (op == kRecv) {
			if (subscribed_ || res <= 0)
				return finish(); // the peer went away (or a watcher talked back)
			request_.append(chunk_.data(), static_cast<size_t>(res));
			auto newline = request_.find('\n');
			if (newline == std::string::npos) {
				if (request_.size() > kMaxRequest)
					return respond(R"({"ok":false,"error":"request too large"})");
				return receive();
			}
			request_.resize(newline);
			ControlReply reply;
			try {
				reply = server_.handler_(request_, peer_);
			} catch (const std::exception &e) {
				// A bug in one command must not take the daemon (and every job's traffic) down.
				log::error(std::string("control: command failed: ") + e.what());
				reply = ControlReply{R"({"ok":false,"error":"internal error"})", false};
			}
			if (reply.subscribe) {
				subscribed_ = true;
				server_.subscribers_.insert(this);
				receive(); // only to notice the client going away
			}
			return respond(std::move(reply.line));
		}
		if (op == kSend) {
			sending_ = false;
			if (res <= 0)
				return finish();
			sent_ += static_cast<size_t>(res);
			if (sent_ < response_.size())
				return send_rest();
			if (!subscribed_)
				return finish();
			backlog_ -= std::min(backlog_, response_.size());
			return send_next();
		}
	}

	// Subscribed: queue a line, unless the client is too far behind.
	void push(const std::string &line)
	{
		if (finished())
			return;
		if (backlog_ + line.size() + 1 > kMaxSubscriberBacklog) {
			dropped_++;
			return;
		}
		if (dropped_) {
			std::string note = R"({"event":"dropped","count":)" + std::to_string(dropped_) + "}\n";
			backlog_ += note.size();
			queue_.push_back(std::move(note));
			dropped_ = 0;
		}
		backlog_ += line.size() + 1;
		queue_.push_back(line + "\n");
		if (!sending_)
			send_next();
	}

	void on_stop() override { finish(); }
	void on_retire() override
	{
		server_.subscribers_.erase(this);
		server_.forget(this, session_key(peer_));
	}

	void check_timeout(Clock::time_point now)
	{
		if (!finished() && !subscribed_ && now - started_ > kSessionTimeout)
			finish();
	}

private:
	void respond(std::string response)
	{
		response_ = std::move(response);
		response_.push_back('\n');
		sent_ = 0;
		send_rest();
	}
	void send_rest()
	{
		sending_ = true;
		io_uring_prep_send(loop().prepare(*this, kSend), fd_.get(), response_.data() + sent_,
		                   response_.size() - sent_, MSG_NOSIGNAL);
	}
	// Subscribed: the next queued line becomes the one being sent.
	void send_next()
	{
		if (queue_.empty() || finished())
			return;
		response_ = std::move(queue_.front());
		queue_.pop_front();
		sent_ = 0;
		send_rest();
	}
	void finish()
	{
		if (finished())
			return;
		server_.subscribers_.erase(this);
		if (inflight() > 0)
			loop().cancel_fd(*this, fd_.get(), kCancel);
		mark_finished();
	}

	ControlServer &server_;
	UniqueFd fd_;
	ControlPeer peer_;
	Clock::time_point started_;
	std::array<char, 4096> chunk_{};
	std::string request_, response_;
	size_t sent_ = 0;
	bool sending_ = false;
	bool subscribed_ = false;
	std::deque<std::string> queue_;
	size_t backlog_ = 0;
	uint64_t dropped_ = 0;
};

ControlServer::ControlServer(EventLoop &loop, std::string path, ControlHandler handler)
    : loop_(loop), path_(std::move(path)), handler_(std::move(handler))
{}

ControlServer::~ControlServer()
{
	if (bound_)
		::unlink(path_.c_str());
}

Status ControlServer::start()
{
	auto addr = unix_address(path_);
	if (!addr)
		return addr.error();
	std::string dir = path_.substr(0, path_.rfind('/'));
	if (!dir.empty() && ::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST)
		return system_error("create " + dir);
	struct stat st;
	if (::lstat(path_.c_str(), &st) == 0) {
		if (!S_ISSOCK(st.st_mode))
			return plain_error(path_ + " exists and is not a socket; not replacing it");
		UniqueFd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
		if (probe && ::connect(probe.get(), reinterpret_cast<sockaddr *>(&*addr), sizeof(*addr)) == 0)
			return plain_error("another cordond is answering on " + path_);
		::unlink(path_.c_str()); // left behind by a cordond that died
	}
	UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
	if (!fd)
		return system_error("control socket");
	if (::bind(fd.get(), reinterpret_cast<sockaddr *>(&*addr), sizeof(*addr)) != 0)
		return system_error("bind " + path_);
	bound_ = true;
	// Anyone may connect (jobs enroll here); each command authorizes its caller by SO_PEERCRED.
	if (::chmod(path_.c_str(), 0666) != 0)
		return system_error("chmod " + path_);
	if (::listen(fd.get(), 128) != 0)
		return system_error("listen on " + path_);
	auto &listener = static_cast<AcceptListener &>(loop_.add(std::make_unique<AcceptListener>(
	    std::move(fd), "control", [this](int accepted) { on_accepted(accepted); })));
	listener.arm();
	return {};
}

void ControlServer::on_accepted(int raw_fd)
{
	UniqueFd fd(raw_fd);
	if (loop_.stopping())
		return; // a session started now would outlive the shutdown
	ucred cred{};
	socklen_t len = sizeof(cred);
	if (::getsockopt(fd.get(), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
		log::warning(std::string("control: SO_PEERCRED: ") + std::strerror(errno));
		return;
	}
	// The pidfd first: while it lives, what /proc says about cred.pid (its PID namespace, for
	// host_root) is about the peer and not a process that took its pid since.
	ControlPeer peer{cred.pid, cred.uid, cred.gid, false, nullptr};
	int pidfd = -1;
	socklen_t pidfd_len = sizeof(pidfd);
	if (::getsockopt(fd.get(), SOL_SOCKET, kSoPeerPidfd, &pidfd, &pidfd_len) == 0 && pidfd >= 0)
		peer.pidfd = std::make_shared<const UniqueFd>(pidfd);
	// Without a pidfd (before Linux 6.5) the pid cannot be pinned: root-only commands need it.
	peer.admin = peer.pidfd && host_root(cred) && peer.alive();
	const bool root = peer.admin;
	auto count_of = [this](uid_t key) {
		auto it = per_uid_.find(key);
		return it == per_uid_.end() ? size_t{0} : it->second;
	};
	// Host root's sessions are counted apart: root of a container (uid 0 too) is an ordinary
	// caller and must neither use up root's room nor be let past the non-root caps.
	const uid_t key = session_key(peer);
	const size_t mine = count_of(key);
	const size_t non_root = sessions_.size() - count_of(kAdminKey);
	if (root ? mine >= kSessionsRoot : (mine >= kSessionsPerUid || non_root >= kSessionsNonRoot)) {
		// Say so instead of closing silently, which cordonctl would read as "not running".
		static const char busy[] = R"({"ok":false,"error":"busy: too many open control sessions"})"
		                           "\n";
		(void)!::send(fd.get(), busy, sizeof(busy) - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
		return;
	}
	auto session = std::make_unique<ControlSession>(*this, std::move(fd), std::move(peer));
	ControlSession *raw = session.get();
	sessions_.insert(raw);
	per_uid_[key]++;
	loop_.add(std::move(session));
	raw->receive();
}

void ControlServer::forget(ControlSession *session, uid_t uid)
{
	sessions_.erase(session);
	if (auto it = per_uid_.find(uid); it != per_uid_.end() && --it->second == 0)
		per_uid_.erase(it);
}

void ControlServer::broadcast(const std::string &line)
{
	std::vector<ControlSession *> all(subscribers_.begin(), subscribers_.end());
	for (ControlSession *s : all)
		s->push(line);
}

void ControlServer::tick(Clock::time_point now)
{
	std::vector<ControlSession *> all(sessions_.begin(), sessions_.end());
	for (ControlSession *s : all)
		s->check_timeout(now);
}

} // namespace cordon
