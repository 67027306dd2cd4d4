// libFuzzer target for the HTTP/2 bridge (proxy/h2_bridge.cc, with the body pipes of
// proxy/exchange.cc behind it): fuzz bytes are what the job and Cursor send, interleaved with the
// event loop's other calls (draining output within a budget, end of input on either side, the
// hold deadline passing, an approval being decided), the way intercept.cc drives a bridge.
//
// The harness sends the connection prefaces itself (the job's "PRI * HTTP/2.0" and SETTINGS,
// Cursor's SETTINGS), so inputs start right at the frames. Both sides number streams alike
// (1, 3, 5, ...), so a response to the job's first request is on stream 1 upstream as well.
//
// Besides crashes, leaks, hangs and undefined behaviour under the sanitizers, it checks what the
// journal and policy rely on: each exchange is completed at most once, with a number the bridge
// gave out, and no observer hears of an exchange after its completion.
//
// Input: byte 0 is the configuration (0x01 small message limits, 0x02 no usable upstream, 0x04
// output drained only when asked), then operations until the input ends:
//   op & 7 == 0 / 1   client / upstream data: 2 bytes length (little-endian), then the bytes
//   op & 7 == 2 / 3   drain client / upstream output, budget ((op >> 3) + 1) * 512 bytes
//   op & 7 == 4       the hold deadline passes; op & 0x08 approves what waits, op & 0x10 refuses it
//   op & 7 == 5 / 6   client / upstream EOF (op & 0x08: the upstream's was clean)
//   op & 7 == 7       the loop asks what the bridge wants (done, wants_*, hold_deadline)
// The observer masks authorization headers and reacts to words: a message or path with "mask" is
// replaced, with "deny" refused, with "hold" held for approval; a response header x-deny refuses.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/log.h"
#include "proxy/http_bridge.h"

using namespace cordon;
using namespace cordon::proxy;

namespace {

void check(bool ok, const char *what)
{
	if (!ok) {
		std::fprintf(stderr, "invariant violated: %s\n", what);
		std::abort();
	}
}

std::span<const uint8_t> bytes(std::string_view s)
{
	return {reinterpret_cast<const uint8_t *>(s.data()), s.size()};
}

// The job's connection preface and an empty SETTINGS frame; Cursor's SETTINGS.
const std::string kClientPreface =
    std::string("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n") + std::string("\0\0\0\4\0\0\0\0\0", 9);
const std::string kServerPreface("\0\0\0\4\0\0\0\0\0", 9);

struct Switch : Deferred {
	std::optional<Verdict> answer;
	std::optional<Verdict> poll() override { return answer; }
};

struct Observer : ExchangeObserver {
	const HttpBridge *bridge = nullptr;
	std::set<uint64_t> completed;
	std::vector<std::shared_ptr<Switch>> undecided;

	void alive(const RequestInfo &r)
	{
		check(r.number >= 1 && (!bridge || r.number <= bridge->exchanges()), "an exchange number given out");
		check(!completed.count(r.number), "nothing is heard of an exchange after its completion");
	}
	Verdict hold()
	{
		auto s = std::make_shared<Switch>();
		undecided.push_back(s);
		return Verdict::defer(s);
	}
	void decide(bool approve)
	{
		for (auto &s : undecided)
			s->answer =
			    approve ? Verdict::forward() : Verdict::refuse("permission_denied", "refused by a person");
		undecided.clear();
	}

	Verdict on_headers(const RequestInfo &r, Direction d, bool, Headers &headers) override
	{
		alive(r);
		for (Header &h : headers) {
			if (h.name == "authorization")
				h.value = "[MASKED]";
			if (d == Direction::Response && h.name == "x-deny")
				return Verdict::refuse("permission_denied", "response header");
		}
		return Verdict::forward();
	}
	Verdict on_request(const RequestInfo &r) override
	{
		alive(r);
		if (r.path.find("deny") != std::string::npos)
			return Verdict::refuse("permission_denied", "path");
		if (r.path.find("hold") != std::string::npos)
			return hold();
		return Verdict::forward();
	}
	Verdict on_message(const RequestInfo &r, const Message &m) override
	{
		alive(r);
		if (m.payload.find("deny") != std::string::npos)
			return Verdict::refuse("permission_denied", "message");
		if (m.payload.find("hold") != std::string::npos)
			return hold();
		if (m.payload.find("mask") != std::string::npos)
			return Verdict::replace(m.payload.size() % 2 ? std::string()
			                                             : m.payload + std::string(130, '*'));
		return Verdict::forward();
	}
	void on_response(const RequestInfo &r, const ResponseInfo &) override { alive(r); }
	void on_complete(const RequestInfo &r, const ExchangeSummary &) override
	{
		alive(r);
		completed.insert(r.number);
	}
};

struct Input {
	const uint8_t *p, *end;
	bool empty() const { return p == end; }
	uint8_t byte() { return empty() ? 0 : *p++; }
	std::string_view take(size_t n)
	{
		n = std::min<size_t>(n, end - p);
		std::string_view s(reinterpret_cast<const char *>(p), n);
		p += n;
		return s;
	}
};

} // namespace

extern "C" int LLVMFuzzerInitialize(int *, char ***)
{
	log::set_level(log::Level::error); // the bridge warns about what fuzzing does all the time
	return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	Input in{data, data + size};
	const uint8_t config = in.byte();

	Observer observer;
	BridgeSettings settings;
	settings.connection = "fuzz";
	settings.default_host = "api2.cursor.sh";
	settings.observers.push_back(&observer);
	if (config & 0x01)
		settings.limits = Limits{1024, 1024};
	if (config & 0x02)
		settings.upstream_unavailable = "cordon: the upstream's certificate was rejected";
	const bool manual = config & 0x04;

	Status error;
	std::unique_ptr<HttpBridge> bridge = make_h2_bridge(std::move(settings), &error);
	check(bridge != nullptr, "the bridge starts");
	observer.bridge = bridge.get();

	bool open = bridge->on_client_data(bytes(kClientPreface)) && bridge->on_upstream_data(bytes(kServerPreface));
	check(open, "the prefaces are accepted");
	std::string sink;
	auto drain = [&](bool client, size_t budget) {
		sink.clear();
		return client ? bridge->produce_client_output(sink, budget).ok()
		              : bridge->produce_upstream_output(sink, budget).ok();
	};
	auto drain_all = [&] { return drain(true, 1 << 20) && drain(false, 1 << 20); };
	open = drain_all();

	const auto start = Clock::now();
	while (open && !in.empty() && !bridge->done()) {
		const uint8_t op = in.byte();
		switch (op & 7) {
		case 0:
		case 1: {
			size_t n = in.byte();
			n |= size_t{in.byte()} << 8;
			const std::string_view chunk = in.take(n);
			open = (op & 7) == 0 ? bridge->on_client_data(bytes(chunk)).ok()
			                     : bridge->on_upstream_data(bytes(chunk)).ok();
			break;
		}
		case 2:
		case 3:
			open = drain((op & 7) == 2, ((op >> 3) + 1) * 512);
			break;
		case 4:
			if (op & 0x18)
				observer.decide(op & 0x08);
			open = bridge->release_held(start + std::chrono::hours(1)).ok();
			break;
		case 5:
			bridge->on_client_eof();
			break;
		case 6:
			bridge->on_upstream_eof(op & 0x08);
			break;
		case 7:
			(void)bridge->wants_client_data();
			(void)bridge->wants_upstream_data();
			(void)bridge->hold_deadline();
			break;
		}
		if (open && !manual)
			open = drain_all();
	}
	// The connection ends as intercept.cc ends it: both sides gone, what is left flushed.
	bridge->on_client_eof();
	bridge->on_upstream_eof(false);
	drain_all();
	bridge.reset();
	return 0;
}
