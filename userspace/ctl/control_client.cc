#include "ctl/control_client.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <chrono>
#include <cstring>

#include "common/unique_fd.h"

namespace cordon {

Result<nlohmann::json> control_request(const std::string &socket_path, const nlohmann::json &request,
                                       std::chrono::seconds timeout)
{
	sockaddr_un addr{};
	addr.sun_family = AF_UNIX;
	if (socket_path.size() >= sizeof(addr.sun_path))
		return plain_error("control socket path too long: " + socket_path);
	std::memcpy(addr.sun_path, socket_path.c_str(), socket_path.size() + 1);
	UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
	if (!fd)
		return system_error("socket");
	if (::connect(fd.get(), reinterpret_cast<sockaddr *>(&addr), sizeof(addr)) != 0)
		return system_error("connect to cordond at " + socket_path);
	std::string line = request.dump() + "\n";
	size_t off = 0;
	while (off < line.size()) {
		ssize_t n = ::send(fd.get(), line.data() + off, line.size() - off, MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return system_error("send request");
		}
		off += static_cast<size_t>(n);
	}
	std::string response;
	auto deadline = std::chrono::steady_clock::now() + timeout;
	for (;;) {
		auto left =
		    std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
		if (left.count() <= 0)
			return plain_error("cordond did not answer within " + std::to_string(timeout.count()) + " s");
		pollfd p{fd.get(), POLLIN, 0};
		int rc = ::poll(&p, 1, static_cast<int>(left.count()));
		if (rc < 0 && errno == EINTR)
			continue;
		if (rc < 0)
			return system_error("poll");
		if (rc == 0)
			continue;
		char buf[65536];
		ssize_t n = ::recv(fd.get(), buf, sizeof(buf), 0);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return system_error("read response");
		}
		if (n == 0)
			break;
		response.append(buf, static_cast<size_t>(n));
		if (response.find('\n') != std::string::npos)
			break;
	}
	auto newline = response.find('\n');
	if (newline == std::string::npos)
		return plain_error("cordond closed the connection without a complete answer");
	auto parsed = nlohmann::json::parse(response.substr(0, newline), nullptr, false);
	if (parsed.is_discarded())
		return plain_error("cordond sent an answer that is not JSON");
	return parsed;
}

} // namespace cordon

namespace cordon {

Status control_stream(const std::string &socket_path, const nlohmann::json &request,
                      const std::function<bool(const nlohmann::json &)> &on_line, int seconds)
{
	sockaddr_un addr{};
	addr.sun_family = AF_UNIX;
	if (socket_path.size() >= sizeof(addr.sun_path))
		return plain_error("control socket path too long: " + socket_path);
	std::memcpy(addr.sun_path, socket_path.c_str(), socket_path.size() + 1);
	UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
	if (!fd)
		return system_error("socket");
	if (::connect(fd.get(), reinterpret_cast<sockaddr *>(&addr), sizeof(addr)) != 0)
		return system_error("connect to cordond at " + socket_path);
	std::string line = request.dump() + "\n";
	if (::send(fd.get(), line.data(), line.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(line.size()))
		return system_error("send request");
	auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
	std::string buffer;
	for (;;) {
		int wait = -1;
		if (seconds > 0) {
			auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
			    deadline - std::chrono::steady_clock::now());
			if (left.count() <= 0)
				return {};
			wait = static_cast<int>(left.count());
		}
		pollfd p{fd.get(), POLLIN, 0};
		int rc = ::poll(&p, 1, wait);
		if (rc < 0 && errno == EINTR)
			continue;
		if (rc < 0)
			return system_error("poll");
		if (rc == 0)
			continue;
		char buf[65536];
		ssize_t n = ::recv(fd.get(), buf, sizeof(buf), 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return system_error("read from cordond");
		if (n == 0)
			return plain_error("cordond closed the session");
		buffer.append(buf, static_cast<size_t>(n));
		size_t nl;
		while ((nl = buffer.find('\n')) != std::string::npos) {
			auto parsed = nlohmann::json::parse(buffer.substr(0, nl), nullptr, false);
			buffer.erase(0, nl + 1);
			if (parsed.is_discarded())
				continue;
			if (!on_line(parsed))
				return {};
		}
	}
}

} // namespace cordon
