// The metrics endpoint (daemon.metrics_listen): plain HTTP/1.1 `GET /metrics` on a unix socket
// (mode 0600, root: the numbers reveal activity) or a TCP address, served on the event loop.
//
// It must never hold back the data path: one small request per connection (8 KiB at most), a
// deadline of a few seconds for the whole exchange, a cap on concurrent scrapers, and the answer
// rendered in one go (tens of microseconds) then sent as the socket takes it.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <string>
#include <unordered_set>

#include "common/address.h"
#include "common/result.h"
#include "common/unique_fd.h"
#include "daemon/event_loop.h"

namespace cordon {

class MetricsSession;

// A parsed request, and the answer it gets (pure: unit-tested).
struct MetricsHttpAnswer {
	int status = 200;
	bool body = true; // false for HEAD
};
// `head` is the request up to its blank line. Only GET and HEAD of /metrics succeed.
MetricsHttpAnswer answer_metrics_request(std::string_view head);
std::string metrics_http_response(const MetricsHttpAnswer &answer, const std::string &metrics_text);

class MetricsServer {
public:
	using Render = std::function<std::string()>;
	// `deadline`: the whole exchange, from accept to the last byte sent; a stalled scraper loses
	// its slot.
	MetricsServer(EventLoop &loop, ListenEndpoint endpoint, Render render,
	              std::chrono::milliseconds deadline = std::chrono::seconds(5));
	~MetricsServer(); // removes the unix socket it created

	// Binds and listens. A unix socket another live process answers on is left alone (an error);
	// one left behind by a dead cordond is replaced.
	Status start();
	const ListenEndpoint &endpoint() const { return endpoint_; }
	size_t sessions() const { return sessions_.size(); }

	// Scrapes served at once. Past that, as many more connections are told 503 once they have
	// asked (an answer written before the request arrives can be lost: the client may see only
	// the hang-up); beyond both, a connection is closed at once.
	static constexpr size_t kMaxSessions = 16;

private:
	friend class MetricsSession;
	void on_accepted(int fd);
	Status bind_unix(UniqueFd &fd);

	EventLoop &loop_;
	ListenEndpoint endpoint_;
	Render render_;
	std::chrono::milliseconds deadline_;
	std::unordered_set<MetricsSession *> sessions_;
	size_t serving_ = 0; // sessions that will render, not answer 503
	// The socket file this server created (device and inode), so only that one is removed.
	bool bound_unix_ = false;
	dev_t socket_dev_ = 0;
	ino_t socket_ino_ = 0;
};

} // namespace cordon
