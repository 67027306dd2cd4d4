// An HTTP proxy between two plaintext byte streams (TLS is below, sockets further below):
// requests from the job go to Cursor, responses come back, each exchange passing through the
// message engine (proxy/exchange.h). One implementation per protocol: HTTP/2 and HTTP/1.1.
#pragma once

#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "common/result.h"
#include "proxy/exchange.h"

namespace cordon::proxy {

struct BridgeSettings {
	std::string connection;   // id, for RequestInfo
	std::string default_host; // the SNI, when a request names no host
	std::vector<ExchangeObserver *> observers;
	Limits limits;
	// Set when there is no usable upstream (e.g. its certificate was rejected): every request
	// is answered locally with this reason instead.
	std::string upstream_unavailable;
};

class HttpBridge {
public:
	virtual ~HttpBridge() = default;
	// Plaintext from the job / from Cursor. An error means the connection must end.
	virtual Status on_client_data(std::span<const uint8_t> data) = 0;
	virtual Status on_upstream_data(std::span<const uint8_t> data) = 0;
	virtual void on_client_eof() = 0;
	// `clean`: the upstream ended its TLS session with close_notify; otherwise the connection was
	// cut, and a response delimited by the connection's end is truncated, not complete.
	virtual void on_upstream_eof(bool clean) = 0;
	// Plaintext to send, appended to `out`, stopping once `out` holds about `budget` bytes:
	// a full socket therefore holds back the bridge (and, through flow control, the peer).
	virtual Status produce_client_output(std::string &out, size_t budget) = 0;
	virtual Status produce_upstream_output(std::string &out, size_t budget) = 0;
	// Whether more input is welcome (HTTP/1.1 stops reading while a response is pending).
	virtual bool wants_client_data() const = 0;
	virtual bool wants_upstream_data() const = 0;
	// Nothing more will be produced or accepted: close the connection (after flushing).
	virtual bool done() const = 0;
	// After a data-path error: a word for the journal.
	virtual std::string protocol() const = 0;
	virtual uint64_t exchanges() const = 0;
	// Masking may hold streamed messages back briefly (a secret split across messages): when the
	// earliest held one must go, and the call that lets everything due go (then produce output).
	virtual std::optional<Clock::time_point> hold_deadline() const = 0;
	virtual Status release_held(Clock::time_point now) = 0;
};

std::unique_ptr<HttpBridge> make_h2_bridge(BridgeSettings settings, Status *error);
std::unique_ptr<HttpBridge> make_h1_bridge(BridgeSettings settings);

} // namespace cordon::proxy
