// libFuzzer target for reading a session recording store (record/segment_store.h) the way
// `cordonctl verify`, `sessions`, `replay` and `export` do (ctl/recording_commands.h): whatever the
// segment files hold, a corrupted, truncated or forged store gives errors and problems, never a
// crash. The input is the store: segment files separated by kSeparator, the k-th piece written as
// segment-0000000k.rec (an empty piece: no such file, a gap in the store), in a temporary directory
// with the fixed test key below. Besides crashes, leaks, hangs and undefined behaviour under the
// sanitizers, it checks:
// - read_segment: offsets ascend, each record's hash is the SHA-256 of the frame next_frame finds
//   there, good_bytes ends the last whole record, and there is a tail error exactly when bytes
//   are left after it;
// - read_store holds every segment's records in order;
// - witnesses that agree with the store (each segment sealed as it is) add no problem, and
//   `cordonctl verify` exits 0 exactly when the report is ok;
// - every command exits 0, 1 (or, for an ID, 1 when not found), and replay/export of a session the
//   store holds succeed.
//
// Rebuild the seed corpus (stores written by SegmentWriter with the key below) with:
//   clang++ -std=c++20 -Iuserspace -Ibuild/gen -DCORDON_RECORDING_FUZZ_WRITE_SEEDS tests/fuzz/recording.cc \
//       userspace/record/segment_store.cc build/gen/cordon/recording.pb.cc -lprotobuf -lcrypto \
//       -o /tmp/recording-seeds && /tmp/recording-seeds tests/fuzz/corpus/recording
#include <sys/stat.h>
#include <unistd.h>

#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "record/segment_store.h"
#ifndef CORDON_RECORDING_FUZZ_WRITE_SEEDS
#include "ctl/recording_commands.h"
#endif

using namespace cordon;
using recording::Record;

namespace {

// Test-only: never a real host's key.
const std::string kKey(record::kKeyBytes, '\x5a');
constexpr std::string_view kSeparator = "\n--cordon-fuzz-segment--\n";
constexpr size_t kMaxSegments = 16;

void check(bool ok, const char *what, std::string_view detail = {})
{
	if (!ok) {
		std::fprintf(stderr, "invariant violated: %s\n%.2000s\n", what, std::string(detail).c_str());
		std::abort();
	}
}

std::vector<std::string_view> split(std::string_view in)
{
	std::vector<std::string_view> pieces;
	for (;;) {
		const size_t at = in.find(kSeparator);
		if (at == std::string_view::npos || pieces.size() + 1 == kMaxSegments) {
			pieces.push_back(in);
			return pieces;
		}
		pieces.push_back(in.substr(0, at));
		in.remove_prefix(at + kSeparator.size());
	}
}

} // namespace

#ifndef CORDON_RECORDING_FUZZ_WRITE_SEEDS

namespace {

struct Scratch {
	std::string root, dir, key_file;

	Scratch()
	{
		std::string tmpl = (std::getenv("TMPDIR") ? std::getenv("TMPDIR") : "/tmp") +
		                   std::string("/cordon-fuzz-recording-XXXXXX");
		check(::mkdtemp(tmpl.data()) != nullptr, "a scratch directory");
		root = tmpl;
		dir = root + "/recordings";
		key_file = root + "/recording.key";
		check(::mkdir(dir.c_str(), 0700) == 0, "the store directory");
		std::ofstream(key_file, std::ios::binary) << kKey;
		check(::chmod(key_file.c_str(), 0600) == 0, "the key's mode");
	}
	~Scratch()
	{
		std::error_code ec;
		std::filesystem::remove_all(root, ec);
	}

	void write_store(const std::vector<std::string_view> &pieces)
	{
		std::error_code ec;
		for (const auto &entry : std::filesystem::directory_iterator(dir, ec))
			std::filesystem::remove(entry.path(), ec);
		for (size_t k = 0; k < pieces.size(); k++)
			if (!pieces[k].empty())
				std::ofstream(dir + "/" + record::segment_name(k), std::ios::binary) << pieces[k];
	}

	static Scratch &get()
	{
		static Scratch s;
		return s;
	}
};

void check_segment(const std::string &path, std::string_view bytes, const record::SegmentRead &r)
{
	check(r.file_bytes == bytes.size(), "file_bytes is the file's size", path);
	check(r.records.size() == r.hashes.size() && r.records.size() == r.offsets.size(),
	      "one hash and offset per record", path);
	check(r.good_bytes <= r.file_bytes, "good_bytes within the file", path);
	check(r.tail_error.empty() == (r.good_bytes == r.file_bytes), "a tail error exactly when bytes are left", path);
	size_t pos = 0;
	for (size_t i = 0; i < r.records.size(); i++) {
		check(r.offsets[i] == pos, "records follow each other", path);
		std::string_view frame;
		check(record::next_frame(bytes, pos, frame), "next_frame finds each record", path);
		check(r.hashes[i] == record::sha256(frame), "each hash is its frame's SHA-256", path);
	}
	check(pos == r.good_bytes, "good_bytes ends the last whole record", path);
}

int run(const std::string &command, std::vector<std::string> args, bool json, std::string &out)
{
	const Scratch &s = Scratch::get();
	RecordingCommandOptions o;
	o.recordings = s.dir;
	o.key_file = s.key_file;
	o.json = json;
	o.journal = false; // the machine's journal is not the input
	std::ostringstream os, es;
	const int rc = run_recording_command(command, args, o, os, es);
	out = os.str();
	check(rc == 0 || rc == 1, "commands exit 0 or 1", command + ": " + es.str());
	return rc;
}

} // namespace

// Undefined behaviour is a finding, not a warning: FUZZ_FLAGS lets UBSan recover and go on.
extern "C" const char *__ubsan_default_options()
{
	return "halt_on_error=1:print_stacktrace=1";
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	Scratch &s = Scratch::get();
	const std::vector<std::string_view> pieces =
	    split(std::string_view(reinterpret_cast<const char *>(data), size));
	s.write_store(pieces);

	// The segments one by one, and the store as read_store reads it.
	std::vector<record::SegmentRead> reads;
	size_t total = 0;
	for (size_t k = 0; k < pieces.size(); k++) {
		if (pieces[k].empty())
			continue;
		const std::string path = s.dir + "/" + record::segment_name(k);
		auto r = record::read_segment(path);
		check(r.ok(), "a segment file reads", path);
		check_segment(path, pieces[k], *r);
		total += r->records.size();
		reads.push_back(std::move(*r));
	}
	auto all = record::read_store(s.dir);
	check(all.ok() && all->size() == total, "read_store holds every segment's records");

	// Verification, alone and with witnesses that agree with the store.
	const record::VerifyReport report = record::verify_store(s.dir, kKey);
	check(report.segments.size() == reads.size(), "a report entry per segment");
	std::vector<record::SegmentWitness> witnesses;
	for (size_t k = 0, i = 0; k < pieces.size(); k++) {
		if (pieces[k].empty())
			continue;
		const record::SegmentRead &r = reads[i++];
		if (!r.records.empty())
			witnesses.push_back({record::segment_name(k), true, r.hashes.back(), r.records.size(), "", ""});
	}
	const record::VerifyReport witnessed = record::verify_store(s.dir, kKey, witnesses);
	check(witnessed.problems.size() == report.problems.size() && witnessed.ok() == report.ok(),
	      "agreeing witnesses add no problem");
	check(witnessed.witnessed == witnesses.size(), "every witness of this store is checked");

	// cordonctl, as a person runs it.
	std::string out;
	check((run("verify", {}, false, out) == 0) == report.ok(), "verify exits 0 exactly when the store is ok", out);
	run("verify", {}, true, out);
	run("sessions", {}, false, out);
	run("sessions", {}, true, out);
	std::set<std::string> ids;
	for (const Record &rec : *all)
		if (!rec.session().empty() && ids.size() < 2)
			ids.insert(rec.session());
	for (const std::string &id : ids) {
		check(run("replay", {id}, false, out) == 0, "replay of a recorded session succeeds", id);
		check(run("export", {id}, false, out) == 0, "export of a recorded session succeeds", id);
		run("verify", {id}, true, out);
	}
	run("replay", {"no-such-session"}, false, out);
	return 0;
}

#else // the seed corpus

namespace {

void put(record::SegmentWriter &w, Record r)
{
	check(w.append(std::move(r)).ok(), "append");
}

Record base(const std::string &session, int64_t t)
{
	Record r;
	r.set_session(session);
	r.set_time_us(t);
	return r;
}

// One session with an exchange: start, request, decision, messages both ways, response, end.
void session(record::SegmentWriter &w, const std::string &id, int64_t t, bool block)
{
	Record r = base(id, t);
	auto *st = r.mutable_session_start();
	st->set_identity("github:acme/app:ref:refs/heads/main");
	st->set_claims(R"({"repository":"acme/app","ref":"refs/heads/main"})");
	st->set_cgroup("/ci/job-1");
	st->set_pid(4242);
	st->set_uid(1001);
	st->set_user("runner");
	st->set_exe("/usr/bin/node");
	st->set_comm("node");
	st->set_sni("api2.cursor.sh");
	st->set_alpn("h2");
	st->set_destination("203.0.113.7:443");
	st->set_policy("/etc/cordon/policy.yaml sha256:0123abcd");
	put(w, std::move(r));
	r = base(id, t + 1000);
	auto *q = r.mutable_request();
	q->set_exchange(1);
	q->set_method("POST");
	q->set_host("api2.cursor.sh");
	q->set_path(block ? "/agent.v1.AgentService/Run" : "/aiserver.v1.ChatService/StreamUnifiedChatWithTools");
	q->set_protocol("connect_stream");
	auto *h = q->add_headers();
	h->set_name("content-type");
	h->set_value("application/connect+proto");
	put(w, std::move(r));
	r = base(id, t + 1500);
	auto *d = r.mutable_decision();
	d->set_exchange(1);
	d->set_rule(block ? "no-agents" : "chat-ok");
	d->set_action(block ? "block" : "allow");
	d->set_decided_us(t + 1500);
	put(w, std::move(r));
	r = base(id, t + 2000);
	auto *m = r.mutable_message();
	m->set_exchange(1);
	m->set_index(0);
	m->set_payload(std::string("\x0a\x05hello", 7));
	m->set_size(7);
	put(w, std::move(r));
	if (!block) {
		r = base(id, t + 3000);
		r.mutable_response()->set_exchange(1);
		r.mutable_response()->set_status(200);
		r.mutable_response()->set_protocol("connect_stream");
		put(w, std::move(r));
		r = base(id, t + 4000);
		m = r.mutable_message();
		m->set_exchange(1);
		m->set_response(true);
		m->set_index(0);
		m->set_end_of_stream(true);
		m->set_payload(R"({"metadata":{"done":true}})");
		put(w, std::move(r));
	}
	r = base(id, t + 5000);
	auto *e = r.mutable_exchange_end();
	e->set_exchange(1);
	e->set_result(block ? "blocked" : "ok");
	e->set_request_bytes(7);
	e->set_duration_us(4000);
	put(w, std::move(r));
	r = base(id, t + 6000);
	r.mutable_session_end()->set_result("closed");
	r.mutable_session_end()->set_requests(1);
	put(w, std::move(r));
}

std::string read_bytes(const std::string &path)
{
	std::ifstream in(path, std::ios::binary);
	std::stringstream ss;
	ss << in.rdbuf();
	return ss.str();
}

// The store's segments joined into one input (a missing index: an empty piece).
std::string store_input(const std::string &dir)
{
	auto indexes = record::list_segments(dir);
	check(indexes.ok() && !indexes->empty() && indexes->back() < kMaxSegments, "a store the input can hold");
	std::vector<std::string> pieces(indexes->back() + 1);
	for (uint64_t i : *indexes)
		pieces[i] = read_bytes(dir + "/" + record::segment_name(i));
	std::string out;
	for (size_t k = 0; k < pieces.size(); k++)
		out += (k ? std::string(kSeparator) : std::string()) + pieces[k];
	return out;
}

std::string fresh_dir(const std::string &tmp, const std::string &name)
{
	const std::string dir = tmp + "/" + name;
	std::filesystem::remove_all(dir);
	return dir;
}

void write(const std::string &corpus, const std::string &name, const std::string &content)
{
	std::ofstream(corpus + "/" + name, std::ios::binary) << content;
}

} // namespace

int main(int argc, char **argv)
{
	if (argc != 2) {
		std::fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
		return 2;
	}
	const std::string corpus = argv[1];
	std::string tmpl = "/tmp/cordon-recording-seeds-XXXXXX";
	check(::mkdtemp(tmpl.data()) != nullptr, "tmp");
	const int64_t t0 = 1'764'435'600'000'000; // 2025-11-29T17:00:00Z

	// One sealed segment: a session, checkpointed and sealed.
	std::string dir = fresh_dir(tmpl, "one");
	{
		auto w = record::SegmentWriter::open(dir, kKey, "ci-host-1", "fuzz-seed", 1 << 20);
		check(w.ok(), "open");
		session(**w, "c-1a2b", t0, false);
		check((*w)->checkpoint(true).ok(), "seal");
	}
	write(corpus, "one_sealed_segment.bin", store_input(dir));

	// Two cordond runs, small segments: several sealed segments, a checkpoint mid-segment, a
	// blocked exchange, and an unsealed tail (cordond stopped without closing).
	dir = fresh_dir(tmpl, "runs");
	{
		auto w = record::SegmentWriter::open(dir, kKey, "ci-host-1", "fuzz-seed", 900);
		check(w.ok(), "open");
		session(**w, "c-1a2b", t0, false);
		check((*w)->checkpoint(false).ok(), "checkpoint");
		session(**w, "c-3c4d", t0 + 10'000'000, true);
	}
	{
		auto w = record::SegmentWriter::open(dir, kKey, "ci-host-1", "fuzz-seed", 900);
		check(w.ok(), "open");
		session(**w, "c-5e6f", t0 + 20'000'000, false);
		check((*w)->flush().ok(), "flush");
		std::string input = store_input(dir);
		write(corpus, "segments_unsealed_tail.bin", input);
		// Cut mid-record: the torn tail a crash leaves.
		write(corpus, "segments_torn_tail.bin", input.substr(0, input.size() - 5));
	}
	write(corpus, "segments_sealed.bin", store_input(dir));

	// Retention: the oldest segments pruned, recorded by an authenticated Prune (a gap at the head).
	{
		auto w = record::SegmentWriter::open(dir, kKey, "ci-host-1", "fuzz-seed", 900);
		check(w.ok(), "open");
		auto removed = (*w)->prune(3000, 0);
		check(removed.ok() && !removed->empty(), "prune");
		session(**w, "c-7a8b", t0 + 30'000'000, false);
		check((*w)->checkpoint(true).ok(), "seal");
	}
	write(corpus, "segments_pruned_head.bin", store_input(dir));

	// Times and durations at the ends of their range, as a corrupted or forged store may hold.
	dir = fresh_dir(tmpl, "extremes");
	{
		auto w = record::SegmentWriter::open(dir, kKey, "ci-host-1", "fuzz-seed", 1 << 20);
		check(w.ok(), "open");
		session(**w, "c-min", INT64_MIN + 1, false);
		session(**w, "c-max", INT64_MAX - 10'000, true);
		Record r = base("c-min", INT64_MAX);
		auto *d = r.mutable_decision();
		d->set_exchange(1);
		d->set_action("approve");
		d->set_approval("approved");
		d->set_decided_us(INT64_MIN);
		d->set_answered_us(INT64_MAX);
		put(**w, std::move(r));
		r = base("c-min", -1);
		r.mutable_session_end()->set_duration_us(INT64_MIN);
		put(**w, std::move(r));
		check((*w)->checkpoint(true).ok(), "seal");
	}
	write(corpus, "extreme_times.bin", store_input(dir));
	std::filesystem::remove_all(tmpl);
	return 0;
}

#endif
