#include "daemon/recorder.h"

#include "common/log.h"
#include "daemon/daemon.h"
#include "daemon/journal.h"
#include "daemon/relay.h"
#include "record/segment_store.h"

namespace cordon {
namespace {

// The writer waits this long after the first record of a batch, unless this much is queued.
constexpr auto kBatchDelay = std::chrono::milliseconds(5);
constexpr size_t kBatchBytes = 256 << 10;

int64_t now_us()
{
	return std::chrono::duration_cast<std::chrono::microseconds>(
	           std::chrono::system_clock::now().time_since_epoch())
	    .count();
}

void copy_headers(const proxy::Headers &from, google::protobuf::RepeatedPtrField<recording::Header> *to)
{
	for (const auto &h : from) {
		auto *out = to->Add();
		out->set_name(h.name);
		out->set_value(is_credential_header(h.name) ? "[REDACTED]" : h.value);
	}
}

} // namespace

bool is_credential_header(const std::string &n)
{
	static const char *const exact[] = {"authorization", "proxy-authorization", "cookie",
	                                    "set-cookie",    "x-api-key",           "x-client-key",
	                                    "x-session-id",  "x-cursor-checksum"};
	for (const char *e : exact)
		if (n == e)
			return true;
	for (const char *part : {"token", "secret", "password", "api-key", "apikey", "credential"})
		if (n.find(part) != std::string::npos)
			return true;
	return false;
}

Result<std::unique_ptr<Recorder>> Recorder::start(RecorderSettings settings, Journal &journal)
{
	auto key = record::load_or_create_key(settings.key_path);
	if (!key)
		return plain_error("recording key: " + key.error().message());
	auto writer = record::SegmentWriter::open(settings.dir, std::move(*key), settings.host, kCordonVersion,
	                                          settings.max_segment_bytes);
	if (!writer)
		return plain_error("recordings: " + writer.error().message());
	// The journal names the store by its canonical path, which `cordonctl verify` looks up.
	if (char *real = ::realpath(settings.dir.c_str(), nullptr)) {
		settings.dir = real;
		::free(real);
	}
	auto r = std::unique_ptr<Recorder>(new Recorder(std::move(settings), journal));
	r->writer_ = std::move(*writer);
	r->thread_ = std::thread([raw = r.get()] { raw->run(); });
	return r;
}

Recorder::Recorder(RecorderSettings settings, Journal &journal) : settings_(std::move(settings)), journal_(journal) {}

Recorder::~Recorder()
{
	{
		std::lock_guard lock(mutex_);
		stopping_ = true;
	}
	wake_.notify_all();
	if (thread_.joinable())
		thread_.join();
}

template <typename Frame> void Recorder::enqueue(size_t size, Frame &&frame)
{
	bool lost = false, wake = false;
	{
		std::lock_guard lock(mutex_);
		if (queue_.size() + size > settings_.max_queue_bytes) {
			stats_.lost++;
			lost = true;
		} else {
			const bool was_empty = queue_.empty();
			frame(queue_);
			wake = (writer_state_ == WriterState::Idle && was_empty) ||
			       (writer_state_ == WriterState::Batching && queue_.size() >= kBatchBytes);
		}
	}
	if (lost) {
		fail("the recording queue is full (" + std::to_string(settings_.max_queue_bytes) +
		     " bytes, recording.max_queue_mb): the disk cannot keep up; records were lost");
		return;
	}
	if (wake)
		wake_.notify_one();
}

void Recorder::record(recording::Record r)
{
	if (r.time_us() == 0)
		r.set_time_us(now_us());
	enqueue(r.ByteSizeLong(), [&](std::string &q) { record::append_frame(q, r); });
}

void Recorder::record_message(const recording::Record &head, const recording::Message &message,
                              std::string_view payload)
{
	enqueue(head.ByteSizeLong() + message.ByteSizeLong() + payload.size(),
	        [&](std::string &q) { record::append_message_frame(q, head, message, payload); });
}

void Recorder::sync_soon()
{
	bool wake = false;
	{
		std::lock_guard lock(mutex_);
		wake = !sync_requested_ && writer_state_ != WriterState::Busy;
		sync_requested_ = true;
	}
	if (wake)
		wake_.notify_one();
}

std::string Recorder::failure() const
{
	std::lock_guard lock(mutex_);
	return failure_;
}

Recorder::Stats Recorder::stats() const
{
	std::lock_guard lock(mutex_);
	return stats_;
}

void Recorder::fail(const std::string &why)
{
	bool was = failed_.exchange(true);
	{
		std::lock_guard lock(mutex_);
		failure_ = why;
	}
	if (was)
		return;
	JournalEntry e;
	e.priority = 2;
	e.message = std::string("recording failed: ") + why +
	            (settings_.fail_open ? "; sessions continue unrecorded (recording.on_failure: open)"
	                                 : "; new sessions are refused until recording works again");
	e.add("CORDON_EVENT", "recording_failure")
	    .add("CORDON_ERROR", why)
	    .add("CORDON_RECORDINGS", settings_.dir)
	    .add("CORDON_FAIL_MODE", settings_.fail_open ? "open" : "closed");
	log::error(e.message);
	journal_.send(std::move(e));
}

uint64_t Recorder::count_frames(std::string_view batch)
{
	uint64_t n = 0;
	size_t pos = 0;
	std::string_view rec;
	while (record::next_frame(batch, pos, rec))
		n++;
	return n;
}

void Recorder::journal_witnesses()
{
	for (const auto &w : writer_->take_witnesses()) {
		JournalEntry e;
		e.priority = 6;
		e.message = std::string("recording segment ") + w.name + (w.sealed ? " sealed" : " started");
		e.add("CORDON_EVENT", "recording_segment")
		    .add("CORDON_RECORDINGS", settings_.dir)
		    .add("CORDON_SEGMENT", w.name)
		    .add("CORDON_SEGMENT_STATE", w.sealed ? "sealed" : "started")
		    .add("CORDON_CHAIN_HASH", record::hex(w.hash))
		    .add("CORDON_KEY_ID", w.key_id);
		if (w.sealed)
			e.add("CORDON_RECORDS", std::to_string(w.records));
		journal_.send(std::move(e));
	}
}

void Recorder::run()
{
	using Clock = std::chrono::steady_clock;
	auto last_sync = Clock::now();
	auto last_prune = Clock::time_point{};
	std::unique_lock lock(mutex_);
	std::string batch;
	for (;;) {
		writer_state_ = WriterState::Idle;
		wake_.wait_for(lock, settings_.sync_interval,
		               [this] { return stopping_ || !queue_.empty() || sync_requested_; });
		// Let a batch gather: one write (and one wake-up) for many records.
		writer_state_ = WriterState::Batching;
		if (!queue_.empty())
			wake_.wait_for(lock, kBatchDelay,
			               [this] { return stopping_ || sync_requested_ || queue_.size() >= kBatchBytes; });
		writer_state_ = WriterState::Busy;
		if (batch.capacity() > 2 * kBatchBytes)
			batch = std::string(); // after a burst, give the memory back
		batch.clear();
		batch.swap(queue_);
		const bool stop = stopping_;
		bool sync = sync_requested_ || stop;
		sync_requested_ = false;
		lock.unlock();

		bool ok = true;
		uint64_t written = 0, bytes = 0;
		size_t pos = 0;
		std::string_view rec;
		while (record::next_frame(batch, pos, rec)) {
			if (Status st = writer_->append_serialized(rec); !st) {
				fail(st.error().message());
				ok = false;
				break;
			}
			written++;
			bytes += rec.size();
		}
		if (ok)
			if (Status st = writer_->flush(); !st) {
				fail(st.error().message());
				ok = false;
			}
		const auto now = Clock::now();
		if (ok && (sync || now - last_sync >= settings_.sync_interval)) {
			Status st = writer_->checkpoint(stop);
			if (st)
				st = writer_->sync();
			if (!st) {
				fail(st.error().message());
				ok = false;
			}
			last_sync = now;
		}
		if (ok && !batch.empty() && failed_.load()) {
			// Writes work again (space was freed): new sessions may start.
			failed_.store(false);
			JournalEntry e;
			e.priority = 5;
			e.message = "recording works again";
			e.add("CORDON_EVENT", "recording_recovered").add("CORDON_RECORDINGS", settings_.dir);
			journal_.send(std::move(e));
		}
		if (ok && !stop && (settings_.max_total_bytes || settings_.max_age_seconds) &&
		    now - last_prune >= std::chrono::seconds(60)) {
			last_prune = now;
			auto removed = writer_->prune(settings_.max_total_bytes, settings_.max_age_seconds);
			if (!removed) {
				fail(removed.error().message());
			} else if (!removed->empty()) {
				JournalEntry e;
				std::string names;
				for (const auto &n : *removed)
					names += (names.empty() ? "" : ",") + n;
				e.message = "recordings pruned by retention: " + names;
				e.add("CORDON_EVENT", "recording_prune").add("CORDON_PRUNED", names);
				journal_.send(std::move(e));
			}
		}
		journal_witnesses();
		// A failed write drops what was buffered since the last good one: those are lost, the
		// rest of the batch reached the file (or was never tried, and is lost too).
		const uint64_t dropped = writer_->take_dropped();
		lock.lock();
		if (ok) {
			stats_.records += written;
			stats_.bytes += bytes;
		} else {
			const uint64_t frames = count_frames(batch);
			const uint64_t kept = written > dropped ? written - dropped : 0;
			stats_.records += kept;
			stats_.lost += frames - kept;
		}
		if (stop && queue_.empty())
			return;
	}
}

// --- one session ----------------------------------------------------------------------------------

SessionRecording::SessionRecording(Recorder &recorder, const ConnectionIdentity &id, std::string policy)
    : recorder_(recorder), id_(id), policy_(std::move(policy))
{}

recording::Record SessionRecording::record() const
{
	recording::Record r;
	r.set_session(id_.id);
	r.set_time_us(now_us());
	return r;
}

void SessionRecording::start(const std::string &alpn)
{
	started_ = true;
	recording::Record r = record();
	auto *s = r.mutable_session_start();
	s->set_identity(id_.identity());
	if (id_.enrolled)
		s->set_claims(id_.enrolled->journal_claims);
	s->set_cgroup(id_.cgroup);
	s->set_pid(id_.origin.tgid);
	s->set_uid(id_.origin.uid);
	s->set_user(id_.user);
	s->set_exe(id_.exe);
	s->set_comm(id_.comm());
	s->set_sni(id_.sni);
	s->set_alpn(alpn);
	s->set_destination(id_.destination.to_string());
	s->set_policy(policy_);
	recorder_.record(std::move(r));
}

void SessionRecording::end(const std::string &result, uint64_t bytes_up, uint64_t bytes_down, uint64_t requests)
{
	if (!started_)
		return;
	recording::Record r = record();
	auto *e = r.mutable_session_end();
	e->set_result(result);
	e->set_bytes_up(bytes_up);
	e->set_bytes_down(bytes_down);
	e->set_requests(requests);
	e->set_duration_us(
	    std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - id_.started)
	        .count());
	recorder_.record(std::move(r));
	recorder_.sync_soon();
}

proxy::Verdict SessionRecording::on_headers(const proxy::RequestInfo &r, proxy::Direction d, bool trailers,
                                            proxy::Headers &headers)
{
	if (!trailers)
		(d == proxy::Direction::Request ? request_headers_ : response_headers_)[r.number] = headers;
	return proxy::Verdict::forward();
}

proxy::Verdict SessionRecording::on_request(const proxy::RequestInfo &info)
{
	recording::Record r = record();
	auto *q = r.mutable_request();
	q->set_exchange(info.number);
	q->set_method(info.method);
	q->set_host(info.host);
	q->set_path(info.path);
	if (!info.rpc.empty())
		q->set_rpc(info.rpc.full());
	q->set_protocol(rpc::to_string(info.protocol));
	if (auto it = request_headers_.find(info.number); it != request_headers_.end()) {
		copy_headers(it->second, q->mutable_headers());
		request_headers_.erase(it);
	}
	recorder_.record(std::move(r));
	return proxy::Verdict::forward();
}

proxy::Verdict SessionRecording::on_message(const proxy::RequestInfo &info, const proxy::Message &m)
{
	recording::Message msg;
	msg.set_exchange(info.number);
	msg.set_response(m.direction == proxy::Direction::Response);
	msg.set_index(m.index);
	msg.set_end_of_stream(m.end_of_stream);
	msg.set_size(m.payload.size());
	const size_t keep = std::min(m.payload.size(), recorder_.max_message_bytes());
	msg.set_truncated(keep < m.payload.size());
	recorder_.record_message(record(), msg, std::string_view(m.payload).substr(0, keep));
	return proxy::Verdict::forward();
}

void SessionRecording::on_response(const proxy::RequestInfo &info, const proxy::ResponseInfo &resp)
{
	recording::Record r = record();
	auto *p = r.mutable_response();
	p->set_exchange(info.number);
	p->set_status(resp.status);
	p->set_protocol(rpc::to_string(resp.protocol));
	if (auto it = response_headers_.find(info.number); it != response_headers_.end()) {
		copy_headers(it->second, p->mutable_headers());
		response_headers_.erase(it);
	}
	recorder_.record(std::move(r));
}

void SessionRecording::exchange_done(const proxy::RequestInfo &info, const proxy::ExchangeSummary &s,
                                     const policy::Decision *d, uint64_t masked)
{
	request_headers_.erase(info.number);
	response_headers_.erase(info.number);
	if (d) {
		recording::Record r = record();
		auto *dec = r.mutable_decision();
		dec->set_exchange(info.number);
		dec->set_rule(d->rule);
		dec->set_action(policy::to_string(d->action));
		dec->set_approval_id(d->approval_id);
		dec->set_approval(d->approval);
		dec->set_approver(d->approver);
		dec->set_decided_us(d->decided_us);
		dec->set_answered_us(d->answered_us);
		dec->set_on_message(d->on_message);
		dec->set_response(d->response);
		dec->set_message_index(d->message_index);
		recorder_.record(std::move(r));
	}
	recording::Record r = record();
	auto *e = r.mutable_exchange_end();
	e->set_exchange(info.number);
	e->set_result(s.result);
	e->set_error(s.error);
	e->set_request_bytes(s.request_bytes);
	e->set_response_bytes(s.response_bytes);
	e->set_masked(masked);
	e->set_duration_us(s.duration.count());
	recorder_.record(std::move(r));
}

} // namespace cordon
