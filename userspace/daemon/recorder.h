// Session recordings (issue #6): what every intercepted connection did, written to the chained,
// authenticated store (record::SegmentWriter) by a writer thread, so recording never blocks the
// data path. The loop thread hands records over through a bounded queue.
//
// A write error (a full disk) or an overflowing queue puts the recorder in a failed state: it
// says so in the journal, and by default new sessions are refused until it recovers (a
// successful write after the condition clears), because traffic nobody can audit must not flow.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "common/result.h"
#include "cordon/recording.pb.h"
#include "policy/rules.h"
#include "proxy/exchange.h"

namespace cordon {

class Journal;
struct ConnectionIdentity;
namespace record {
class SegmentWriter;
}

struct RecorderSettings {
	std::string dir;      // the store
	std::string key_path; // the host's recording key (created at first start)
	std::string host;
	uint64_t max_segment_bytes = 64 << 20;
	size_t max_queue_bytes = 64 << 20;
	std::chrono::milliseconds sync_interval{1000};
	bool fail_open = false; // on failure: keep accepting sessions (alerting) instead of refusing
	uint64_t max_total_bytes = 0;
	int64_t max_age_seconds = 0;
	size_t max_message_bytes = 1 << 20; // a message's payload is kept up to this, and its size
};

class Recorder {
public:
	static Result<std::unique_ptr<Recorder>> start(RecorderSettings settings, Journal &journal);
	~Recorder(); // writes what is queued, seals the segment, joins the thread

	// Loop thread. Never blocks: over the queue's bound, the record is lost and recording fails.
	void record(recording::Record r);
	// A Message record: `head` without a body, `message` without its payload.
	void record_message(const recording::Record &head, const recording::Message &message, std::string_view payload);
	// The session ended: its records reach the disk at the next batch, not at the next second.
	void sync_soon();
	// New sessions may start (recording works, or the policy says fail open).
	bool accepting() const { return !failed_.load() || settings_.fail_open; }
	bool failed() const { return failed_.load(); }
	std::string failure() const;
	size_t max_message_bytes() const { return settings_.max_message_bytes; }
	struct Stats {
		uint64_t records = 0, bytes = 0, lost = 0;
	};
	Stats stats() const;

private:
	Recorder(RecorderSettings settings, Journal &journal);
	void run();
	void fail(const std::string &why);
	// Each segment started or sealed, to the journal: an outside witness for `cordonctl verify`.
	void journal_witnesses();
	static uint64_t count_frames(std::string_view batch);
	// Queues what `frame` appends (`size`: about how much), or fails recording when it would not fit.
	template <typename Frame> void enqueue(size_t size, Frame &&frame);

	RecorderSettings settings_;
	Journal &journal_;
	std::unique_ptr<record::SegmentWriter> writer_;
	mutable std::mutex mutex_;
	std::condition_variable wake_;
	// Framed, serialized records (record::append_frame). Serializing on the loop thread keeps
	// the records' many small allocations on the thread that made them.
	std::string queue_;
	// The writer: Busy, Idle (waiting for anything), or Batching (woken, letting a batch gather
	// for a few milliseconds). The loop thread wakes it only when that changes something, so a
	// busy session costs no wake-up per record.
	enum class WriterState { Busy, Idle, Batching } writer_state_ = WriterState::Busy;
	bool sync_requested_ = false;
	bool stopping_ = false;
	std::atomic<bool> failed_{false};
	std::string failure_;
	Stats stats_;
	std::thread thread_;
};

// One connection's recording: an observer placed after masking (so it records what was masked)
// and before the policy (so an injected credential never reaches it).
class SessionRecording : public proxy::ExchangeObserver {
public:
	SessionRecording(Recorder &recorder, const ConnectionIdentity &id, std::string policy);
	// The session's start, once the protocol is known.
	void start(const std::string &alpn);
	void end(const std::string &result, uint64_t bytes_up, uint64_t bytes_down, uint64_t requests);

	proxy::Verdict on_headers(const proxy::RequestInfo &, proxy::Direction, bool trailers,
	                          proxy::Headers &headers) override;
	proxy::Verdict on_request(const proxy::RequestInfo &) override;
	proxy::Verdict on_message(const proxy::RequestInfo &, const proxy::Message &) override;
	void on_response(const proxy::RequestInfo &, const proxy::ResponseInfo &) override;
	// From the request journal, which holds the decision and the masking tally.
	void exchange_done(const proxy::RequestInfo &r, const proxy::ExchangeSummary &s, const policy::Decision *d,
	                   uint64_t masked);

private:
	recording::Record record() const;
	Recorder &recorder_;
	const ConnectionIdentity &id_;
	std::string policy_;
	std::map<uint64_t, proxy::Headers> request_headers_, response_headers_;
	bool started_ = false;
};

// Header values a recording must never hold: credentials.
bool is_credential_header(const std::string &lower_name);

} // namespace cordon
