// The control socket (/run/cordon/control.sock): one JSON request line in, one JSON response
// line out, then the connection closes. The socket is world-connectable because jobs will
// enroll their tokens through it; every command checks the caller's SO_PEERCRED itself.
#pragma once

#include <sys/socket.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <unordered_set>

#include "common/result.h"
#include "common/unique_fd.h"
#include "daemon/event_loop.h"

namespace cordon {

class ControlSession;

struct ControlPeer {
	pid_t pid = 0;
	uid_t uid = 0;
	gid_t gid = 0;
	// Root of the host: uid 0 in cordond's own PID namespace. Root-only commands check this, not
	// uid, so root of a container given the socket (to enroll) is an ordinary caller.
	bool admin = false;
	// The peer process itself (SO_PEERPIDFD), taken at accept: while it is alive, `pid` names
	// that process and no other, so what /proc says about `pid` is about the peer. Null when
	// the kernel has no SO_PEERPIDFD (before 6.5).
	std::shared_ptr<const UniqueFd> pidfd;
	// True while the peer process lives (false when it exited, or when there is no pidfd).
	bool alive() const;
};

// The answer to one request line. With `subscribe`, the session stays open after the answer
// and receives every broadcast() line until the client goes away (`cordonctl watch`).
struct ControlReply {
	std::string line; // JSON, no newline
	bool subscribe = false;
};
using ControlHandler = std::function<ControlReply(const std::string &request, const ControlPeer &peer)>;

class ControlServer {
public:
	ControlServer(EventLoop &loop, std::string path, ControlHandler handler);
	~ControlServer();

	// Refuses to take over a socket another running cordond still answers on.
	Status start();
	void tick(std::chrono::steady_clock::time_point now);
	// One line to every subscribed session. A subscriber that cannot keep up loses lines (and
	// is told how many): a slow watcher never holds back the data path.
	void broadcast(const std::string &line);
	size_t subscribers() const { return subscribers_.size(); }
	const std::string &path() const { return path_; }

private:
	friend class ControlSession;
	void on_accepted(int fd);
	void forget(ControlSession *session, uid_t uid);

	EventLoop &loop_;
	std::string path_;
	ControlHandler handler_;
	std::unordered_set<ControlSession *> sessions_;
	std::unordered_map<uid_t, size_t> per_uid_;
	std::unordered_set<ControlSession *> subscribers_;
	bool bound_ = false;
};

} // namespace cordon
