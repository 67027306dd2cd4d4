// The recording store on disk: chained, authenticated segment files (format and integrity rules
// in proto/cordon/recording.proto). This layer is synchronous and single-threaded; cordond's
// Recorder drives it from its writer thread, cordonctl reads and verifies with it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/result.h"
#include "common/unique_fd.h"
#include "cordon/recording.pb.h"

namespace cordon::record {

inline constexpr size_t kKeyBytes = 32;
inline constexpr size_t kMaxRecordBytes = 64 << 20;

std::string sha256(std::string_view data);
std::string hmac_sha256(std::string_view key, std::string_view data);
std::string hex(std::string_view bytes);

// The host's recording key: read, or created (32 random bytes, mode 0600) when absent.
Result<std::string> load_or_create_key(const std::string &path);
// Read only (cordonctl verify): never creates.
Result<std::string> load_key(const std::string &path);

// The checkpoint's HMAC: over the record serialized with its hmac field empty.
std::string checkpoint_hmac(std::string_view key, const recording::Record &checkpoint);

// "segment-00000042.rec" <-> 42.
std::string segment_name(uint64_t index);
bool parse_segment_name(std::string_view name, uint64_t &index);
// Segment indexes present in `dir`, ascending.
Result<std::vector<uint64_t>> list_segments(const std::string &dir);

// One segment as read back: the records that parse, in order, with each one's own SHA-256 and
// where the readable part ends.
struct SegmentRead {
	std::vector<recording::Record> records;
	std::vector<std::string> hashes; // sha256 of each record's bytes
	std::vector<uint64_t> offsets;   // where each record's length prefix starts
	uint64_t good_bytes = 0;         // bytes up to the end of the last whole record
	uint64_t file_bytes = 0;
	std::string tail_error; // why reading stopped before the end ("" at a clean end)
};
Result<SegmentRead> read_segment(const std::string &path);

// What the writer said about a segment when it started or sealed it, kept outside the store (cordond
// journals it): the witness that a deleted or replaced newest segment cannot take along.
struct SegmentWitness {
	std::string name;     // segment-00000003.rec
	bool sealed = false;  // false: started
	std::string hash;     // sealed: its seal's SHA-256; started: the hash it continues the chain from
	uint64_t records = 0; // sealed: its records, the seal included
	std::string when;     // for messages: when the witness saw it ("" when unknown)
	std::string key_id;   // the store's key (SegmentStart.key_id): a witness of another store is ignored
};

class SegmentWriter {
public:
	// Opens `dir` (created 0700), continues the chain after the newest segment there (sealed, or
	// cut short by a crash: then after its last whole record), and starts a new segment.
	static Result<std::unique_ptr<SegmentWriter>> open(const std::string &dir, std::string key, std::string host,
	                                                   std::string version, uint64_t max_segment_bytes);
	~SegmentWriter();

	// Appends `r` (prev_sha256, seq and, if 0, time_us are filled in). A full segment is sealed
	// and a new one started first. Appends are buffered: they reach the file at flush(), a
	// checkpoint, or once a megabyte is waiting.
	Status append(recording::Record r);
	// The same for a Record already serialized, with prev_sha256 and seq unset (the recorder's
	// queue holds serialized records): the two fields are appended to its bytes, which protobuf
	// reads as one message.
	Status append_serialized(std::string_view record);
	// Writes what is buffered. On an error (a full disk) the file is cut back to its last good
	// end and everything buffered since is dropped, so the chain on disk stays whole.
	Status flush();
	// A Checkpoint authenticating everything so far; `final` seals the segment (the next
	// append starts a new one). Skipped when nothing was written since the last one.
	Status checkpoint(bool final);
	Status sync();
	// Removes whole sealed segments, oldest first, while `too_old(index)` holds or the store is
	// over `max_total_bytes` (0: no size limit), and records a Prune. Never the open segment.
	Result<std::vector<std::string>> prune(uint64_t max_total_bytes, int64_t max_age_seconds);

	// Segments started and sealed since the last call, for the journal.
	std::vector<SegmentWitness> take_witnesses() { return std::exchange(witnesses_, {}); }
	uint64_t segment_index() const { return index_; }
	// Records a failed flush dropped, since the last call (the recorder counts them as lost).
	uint64_t take_dropped() { return std::exchange(dropped_, 0); }
	std::string key_id() const { return hex(sha256(key_)).substr(0, 16); }
	uint64_t records_since_checkpoint() const { return since_checkpoint_; }
	const std::string &dir() const { return dir_; }

private:
	SegmentWriter() = default;
	Status start_segment();
	// Fills in the chain's fields and buffers `r`.
	void write_record(recording::Record &r);
	// Frames `record` (+ `chain`, its prev_sha256 and seq fields) into pending_.
	void buffer_record(std::string_view record, std::string_view chain);

	std::string dir_, key_, host_, version_;
	uint64_t max_segment_bytes_ = 0;
	UniqueFd fd_;
	uint64_t index_ = 0;
	bool open_ = false; // a segment is open (not sealed)
	uint64_t seq_ = 0, bytes_ = 0, since_checkpoint_ = 0;
	std::string last_hash_; // of the last record written (the chain's head)
	std::string pending_;   // framed records not yet written
	// The state at the end of what reached the file: restored when a flush fails.
	uint64_t flushed_seq_ = 0, flushed_bytes_ = 0, flushed_since_checkpoint_ = 0;
	std::string flushed_hash_;
	std::vector<SegmentWitness> witnesses_;
	uint64_t dropped_ = 0;
};

// Framing: a record on disk (and in the recorder's queue) is a varint length, then its bytes.
void append_frame(std::string &out, const recording::Record &r);
// The same for a Message record, whose payload is copied once, straight from `payload` into the
// frame (the stream's bytes are most of what is recorded): `head` has no body set, `message` no
// payload. It reads back as `head` with `message` and its payload.
void append_message_frame(std::string &out, const recording::Record &head, const recording::Message &message,
                          std::string_view payload);
// The frame at `pos` of `in`: its record's bytes, and `pos` moved past it. false at the end or
// when the frame is cut short.
bool next_frame(std::string_view in, size_t &pos, std::string_view &record);

// Verification of a whole store, as `cordonctl verify` reports it.
struct VerifyReport {
	struct Segment {
		std::string name;
		uint64_t records = 0;
		bool sealed = false;
		uint64_t authenticated = 0;        // records covered by a valid checkpoint
		std::vector<std::string> problems; // each names the record (seq, offset)
		std::vector<std::string> notes;    // not problems: an unauthenticated tail after a crash
	};
	std::vector<Segment> segments;
	std::vector<std::string> problems; // store-level: missing segments, chain breaks between segments
	std::vector<std::string> notes;
	uint64_t sessions = 0;
	uint64_t witnessed = 0; // segment witnesses checked
	bool ok() const;
};
// `witnesses`: what the journal saw of the store's segments; a segment it saw that is gone without
// an authenticated prune, or that is not the one it saw, is a problem.
VerifyReport verify_store(const std::string &dir, std::string_view key,
                          const std::vector<SegmentWitness> &witnesses = {});

// Every record of every segment, in order (for sessions, replay and export).
Result<std::vector<recording::Record>> read_store(const std::string &dir);

} // namespace cordon::record
