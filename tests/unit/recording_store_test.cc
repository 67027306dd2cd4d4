// Session recordings end to end without a daemon: a store written by SegmentWriter across
// restarts, read back by `cordonctl sessions/replay/export`, and every kind of tampering
// `cordonctl verify` must catch (and the crash tails and pruning it must not call tampering).
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "ctl/recording_commands.h"
#include "proxy/message_decoder.h"
#include "record/segment_store.h"

using namespace cordon;
using nlohmann::json;
using recording::Record;
namespace fs = std::filesystem;

namespace {

class RecordingTempDir {
public:
	RecordingTempDir()
	{
		std::string tmpl = "/tmp/cordon-recording-test-XXXXXX";
		path_ = ::mkdtemp(tmpl.data()) ? tmpl : "";
	}
	~RecordingTempDir()
	{
		std::error_code ec;
		if (!path_.empty())
			fs::remove_all(path_, ec);
	}
	const std::string &path() const { return path_; }

private:
	std::string path_;
};

std::string varint(uint64_t v)
{
	std::string out;
	while (v >= 0x80) {
		out += static_cast<char>(v | 0x80);
		v >>= 7;
	}
	out += static_cast<char>(v);
	return out;
}
// A protobuf length-delimited field: what Cursor's messages are made of.
std::string lfield(uint32_t number, const std::string &bytes)
{
	return varint(uint64_t{number} << 3 | 2) + varint(bytes.size()) + bytes;
}

std::string read_bytes(const std::string &path)
{
	std::ifstream in(path, std::ios::binary);
	std::stringstream ss;
	ss << in.rdbuf();
	return ss.str();
}
void write_bytes(const std::string &path, const std::string &data)
{
	std::ofstream(path, std::ios::binary | std::ios::trunc) << data;
}

// A segment file cut into its framed records (length prefix included).
std::vector<std::string> frames(const std::string &path)
{
	const std::string data = read_bytes(path);
	auto r = record::read_segment(path);
	EXPECT_TRUE(r);
	std::vector<std::string> out;
	if (!r)
		return out;
	for (size_t i = 0; i < r->offsets.size(); i++) {
		const uint64_t end = i + 1 < r->offsets.size() ? r->offsets[i + 1] : r->good_bytes;
		out.push_back(data.substr(r->offsets[i], end - r->offsets[i]));
	}
	return out;
}
std::string join(const std::vector<std::string> &parts)
{
	std::string out;
	for (const auto &p : parts)
		out += p;
	return out;
}

const int64_t kT0 = parse_time_us("2026-11-29T17:00:00Z", 0).value();
const int64_t kHour = int64_t{3600} * 1000000;

recording::Header header(const std::string &name, const std::string &value)
{
	recording::Header h;
	h.set_name(name);
	h.set_value(value);
	return h;
}

// Records of one session, each stamped `t` (microseconds) as given.
class SessionScript {
public:
	SessionScript(record::SegmentWriter &w, std::string id) : w_(w), id_(std::move(id)) {}

	Record base(int64_t t)
	{
		Record r;
		r.set_session(id_);
		r.set_time_us(t);
		return r;
	}
	void put(Record r) { ASSERT_TRUE(w_.append(std::move(r))); }

	void start(int64_t t, const std::string &identity, const std::string &exe, const std::string &cgroup,
	           const std::string &sni)
	{
		Record r = base(t);
		auto *s = r.mutable_session_start();
		s->set_identity(identity);
		s->set_claims(R"({"repository":"acme/app","ref":"refs/heads/main"})");
		s->set_cgroup(cgroup);
		s->set_pid(4242);
		s->set_uid(1001);
		s->set_user("runner");
		s->set_exe(exe);
		s->set_comm("node");
		s->set_sni(sni);
		s->set_alpn("h2");
		s->set_destination("203.0.113.7:443");
		s->set_policy("/etc/cordon/policy.yaml sha256:0123abcd");
		put(std::move(r));
	}
	void request(int64_t t, uint64_t exchange, const std::string &host, const std::string &path,
	             const std::string &content_type = "application/connect+proto")
	{
		Record r = base(t);
		auto *q = r.mutable_request();
		q->set_exchange(exchange);
		q->set_method("POST");
		q->set_host(host);
		q->set_path(path);
		q->set_protocol("connect_stream");
		*q->add_headers() = header("content-type", content_type);
		*q->add_headers() = header("authorization", "[REDACTED]");
		put(std::move(r));
	}
	void message(int64_t t, uint64_t exchange, bool response, uint64_t index, const std::string &payload,
	             bool end_of_stream = false)
	{
		Record r = base(t);
		auto *m = r.mutable_message();
		m->set_exchange(exchange);
		m->set_response(response);
		m->set_index(index);
		m->set_end_of_stream(end_of_stream);
		m->set_payload(payload);
		m->set_size(payload.size());
		put(std::move(r));
	}
	void response(int64_t t, uint64_t exchange, int status)
	{
		Record r = base(t);
		r.mutable_response()->set_exchange(exchange);
		r.mutable_response()->set_status(status);
		r.mutable_response()->set_protocol("connect_stream");
		*r.mutable_response()->add_headers() = header("content-type", "application/connect+proto");
		put(std::move(r));
	}
	void decision(int64_t t, uint64_t exchange, const std::string &rule, const std::string &action,
	              const std::string &approval_id = "", const std::string &approver = "")
	{
		Record r = base(t);
		auto *d = r.mutable_decision();
		d->set_exchange(exchange);
		d->set_rule(rule);
		d->set_action(action);
		d->set_approval_id(approval_id);
		d->set_approval(approval_id.empty() ? "" : "approved");
		d->set_approver(approver);
		put(std::move(r));
	}
	// As cordond writes one: at the exchange's end, with when it was decided (and answered), and
	// the message a content rule stopped.
	void decision_made(int64_t written, int64_t decided, int64_t answered, uint64_t exchange,
	                   const std::string &rule, const std::string &action, const std::string &approval,
	                   bool on_message, uint64_t index)
	{
		Record r = base(written);
		auto *d = r.mutable_decision();
		d->set_exchange(exchange);
		d->set_rule(rule);
		d->set_action(action);
		d->set_decided_us(decided);
		d->set_answered_us(answered);
		if (!approval.empty()) {
			d->set_approval_id("a-99");
			d->set_approval(approval);
			d->set_approver("bob");
		}
		d->set_on_message(on_message);
		d->set_message_index(index);
		put(std::move(r));
	}
	void exchange_end(int64_t t, uint64_t exchange, const std::string &result, uint64_t up, uint64_t down,
	                  uint64_t masked)
	{
		Record r = base(t);
		auto *e = r.mutable_exchange_end();
		e->set_exchange(exchange);
		e->set_result(result);
		e->set_request_bytes(up);
		e->set_response_bytes(down);
		e->set_masked(masked);
		e->set_duration_us(8000);
		put(std::move(r));
	}
	void end(int64_t t, const std::string &result, uint64_t requests)
	{
		Record r = base(t);
		auto *e = r.mutable_session_end();
		e->set_result(result);
		e->set_bytes_up(1234);
		e->set_bytes_down(5678);
		e->set_duration_us(t - t0_);
		e->set_requests(requests);
		put(std::move(r));
	}
	void set_t0(int64_t t0) { t0_ = t0; }

private:
	record::SegmentWriter &w_;
	std::string id_;
	int64_t t0_ = 0;
};

constexpr uint64_t kSmallSegments = 700; // bytes: a few records a segment

// Three sessions over two cordond runs: c-1a2b (GitHub, two exchanges: an allowed chat and a
// blocked agent run); c-3c4d (GitLab, a held request approved by a person) in the second run; c-5e6f
// (no identity) after it.
void write_sessions(const std::string &dir, const std::string &key, const std::string &host = "ci-host-1",
                    std::vector<record::SegmentWitness> *witnesses = nullptr)
{
	auto witness = [&](record::SegmentWriter &w) {
		for (auto &seen : w.take_witnesses())
			if (witnesses)
				witnesses->push_back(std::move(seen));
	};
	{
		auto w = record::SegmentWriter::open(dir, key, host, "test", kSmallSegments);
		ASSERT_TRUE(w) << w.error().message();
		SessionScript s(**w, "c-1a2b");
		s.set_t0(kT0);
		s.start(kT0, "github:acme/app:ref:refs/heads/main", "/usr/bin/node", "/ci/job-1", "api2.cursor.sh");
		s.request(kT0 + 1000, 1, "api2.cursor.sh", "/aiserver.v1.ChatService/StreamUnifiedChatWithTools");
		s.decision(kT0 + 1500, 1, "chat-ok", "allow");
		s.message(kT0 + 2000, 1, false, 0, lfield(1, "hello cursor, please list the files"));
		s.response(kT0 + 5000, 1, 200);
		s.message(kT0 + 12345, 1, true, 0, lfield(1, "here are the files"));
		s.message(kT0 + 13000, 1, true, 1, R"({"metadata":{"done":true}})", true);
		s.exchange_end(kT0 + 14000, 1, "ok", 120, 340, 2);
		ASSERT_TRUE((*w)->checkpoint(false));
		s.request(kT0 + 20000, 2, "api2.cursor.sh", "/agent.v1.AgentService/Run");
		s.message(kT0 + 21000, 2, false, 0, lfield(2, "rm -rf /"));
		s.message(kT0 + 21500, 2, false, 1, lfield(2, "echo after"));
		s.decision_made(kT0 + 23000, kT0 + 21000, 0, 2, "no-rm-rf", "block", "", true, 0);
		s.exchange_end(kT0 + 23000, 2, "blocked", 30, 0, 0);
		s.end(kT0 + 30000, "closed", 2);
		ASSERT_TRUE((*w)->checkpoint(true));
		witness(**w);
	} // cordond stops
	{
		auto w = record::SegmentWriter::open(dir, key, host, "test", kSmallSegments);
		ASSERT_TRUE(w) << w.error().message();
		SessionScript s(**w, "c-3c4d");
		const int64_t t = kT0 + kHour;
		s.set_t0(t);
		s.start(t, "gitlab:other/proj", "/usr/local/bin/cursor-agent", "/ci/job-2", "api3.cursor.sh");
		s.request(t + 1000, 1, "api3.cursor.sh:443", "/aiserver.v1.AiService/WriteGitCommitMessage",
		          "application/json");
		s.decision(t + 2000, 1, "hold-commits", "approve", "a-17", "alice");
		s.message(t + 3000, 1, false, 0, R"({"diff":"+1 line"})");
		s.response(t + 4000, 1, 200);
		s.exchange_end(t + 5000, 1, "ok", 20, 40, 0);
		s.end(t + 6000, "closed", 1);

		SessionScript u(**w, "c-5e6f");
		const int64_t t2 = kT0 + 2 * kHour;
		u.set_t0(t2);
		u.start(t2, "", "/usr/bin/curl", "/ci/job-3", "api2.cursor.sh");
		u.request(t2 + 1000, 1, "api2.cursor.sh", "/aiserver.v1.ChatService/StreamUnifiedChatWithTools");
		u.decision(t2 + 1100, 1, "chat-ok", "allow");
		u.exchange_end(t2 + 2000, 1, "ok", 1, 1, 0);
		u.end(t2 + 3000, "closed", 1);
		ASSERT_TRUE((*w)->checkpoint(true));
		witness(**w);
	}
}

struct Store {
	RecordingTempDir tmp;
	std::string dir, key;
	std::vector<uint64_t> segments;
	std::vector<record::SegmentWitness> witnesses; // what cordond would have journaled

	Store()
	{
		dir = tmp.path() + "/recordings";
		auto k = record::load_or_create_key(tmp.path() + "/recording.key");
		EXPECT_TRUE(k) << k.error().message();
		key = k ? *k : std::string();
	}
	void write()
	{
		write_sessions(dir, key, "ci-host-1", &witnesses);
		auto list = record::list_segments(dir);
		ASSERT_TRUE(list);
		segments = *list;
		ASSERT_GE(segments.size(), 4u);
	}
	std::string path(uint64_t index) const { return dir + "/" + record::segment_name(index); }
	// A sealed segment in the middle of the store holding a message with `needle` in its payload.
	uint64_t middle_with(const std::string &needle) const
	{
		for (size_t k = 1; k + 1 < segments.size(); k++)
			if (read_bytes(path(segments[k])).find(needle) != std::string::npos)
				return segments[k];
		ADD_FAILURE() << "no middle segment holds " << needle;
		return segments[1];
	}
	record::VerifyReport verify() const { return record::verify_store(dir, key); }
	record::VerifyReport verify_witnessed() const { return record::verify_store(dir, key, witnesses); }
	std::vector<Record> records() const
	{
		auto r = record::read_store(dir);
		EXPECT_TRUE(r);
		return r ? *r : std::vector<Record>{};
	}
};

std::string all_problems(const record::VerifyReport &r)
{
	std::string out;
	for (const auto &p : r.problems)
		out += p + "\n";
	for (const auto &s : r.segments)
		for (const auto &p : s.problems)
			out += p + "\n";
	return out;
}
std::string all_notes(const record::VerifyReport &r)
{
	std::string out;
	for (const auto &n : r.notes)
		out += n + "\n";
	for (const auto &s : r.segments)
		for (const auto &n : s.notes)
			out += n + "\n";
	return out;
}
std::string report_text(const record::VerifyReport &r)
{
	std::ostringstream out;
	print_verify_report(r, out);
	return out.str();
}

// The problem names the segment and one of its records.
void expect_problem_at(const record::VerifyReport &r, const std::string &segment)
{
	EXPECT_FALSE(r.ok()) << report_text(r);
	const std::string problems = all_problems(r);
	EXPECT_NE(problems.find(segment), std::string::npos) << problems;
	EXPECT_NE(problems.find(segment + " record "), std::string::npos) << problems;
	EXPECT_NE(report_text(r).find("TAMPERED: "), std::string::npos);
}

std::vector<std::string> sessions_listed(const std::vector<Record> &records, const SessionFilter &f)
{
	std::ostringstream out;
	print_sessions(records, f, true, out);
	std::vector<std::string> ids;
	for (const auto &s : json::parse(out.str()))
		ids.push_back(s["id"].get<std::string>());
	return ids;
}

} // namespace

// ---- the store as written ----------------------------------------------------------------------

TEST(RecordingStore, VerifiesAcrossSegmentsAndRestarts)
{
	Store st;
	st.write();
	const auto r = st.verify();
	EXPECT_TRUE(r.ok()) << report_text(r);
	EXPECT_EQ(r.sessions, 3u);
	EXPECT_EQ(r.segments.size(), st.segments.size());
	for (const auto &s : r.segments) {
		EXPECT_TRUE(s.sealed) << s.name;
		EXPECT_EQ(s.authenticated, s.records) << s.name;
	}
	EXPECT_NE(report_text(r).find("verified: " + std::to_string(st.segments.size()) +
	                              " segments, 3 sessions, no problems"),
	          std::string::npos)
	    << report_text(r);
	const json j = verify_report_json(r);
	EXPECT_TRUE(j["ok"].get<bool>());
	EXPECT_EQ(j["segments"].size(), st.segments.size());
}

TEST(RecordingStore, TimesParseAbsoluteAndRelative)
{
	EXPECT_EQ(parse_time_us("1970-01-01T00:00:01Z", 0).value(), 1000000);
	EXPECT_EQ(parse_time_us("1970-01-01T00:00:01.25Z", 0).value(), 1250000);
	EXPECT_EQ(parse_time_us("1970-01-01T01:00:00+01:00", 0).value(), 0);
	EXPECT_EQ(parse_time_us("1970-01-02", 0).value(), int64_t{86400} * 1000000);
	EXPECT_EQ(parse_time_us("10m", 3600000000).value(), 3000000000);
	EXPECT_EQ(parse_time_us("2h", int64_t{3} * 3600000000).value(), 3600000000);
	EXPECT_EQ(parse_time_us("1d", int64_t{2} * 86400000000).value(), 86400000000);
	EXPECT_EQ(iso_time(kT0), "2026-11-29T17:00:00.000Z");
	EXPECT_EQ(iso_time(kT0 + 12345, false), "2026-11-29T17:00:00Z");
	for (const char *bad : {"", "yesterday", "10x", "2026-13-01T00:00:00Z", "2026-02-30", "2026-11-29T25:00Z",
	                        "-5m", "2026-11-29T17:00:00Zjunk"})
		EXPECT_FALSE(parse_time_us(bad, 0)) << bad;
}

// Found by tests/fuzz/recording.cc: a corrupted store may hold any time; none may overflow.
TEST(RecordingStore, TimesAtTheEndsOfTheRangePrint)
{
	EXPECT_EQ(iso_time(-1), "1969-12-31T23:59:59.999Z");
	EXPECT_EQ(iso_time(-1000000), "1969-12-31T23:59:59.000Z");
	EXPECT_FALSE(iso_time(INT64_MIN).empty());
	EXPECT_FALSE(iso_time(INT64_MAX).empty());
	RecordingTempDir tmp;
	const std::string dir = tmp.path() + "/recordings";
	{
		auto w = record::SegmentWriter::open(dir, std::string(record::kKeyBytes, 'k'), "h", "test", 1 << 20);
		ASSERT_TRUE(w);
		SessionScript s(**w, "c-far");
		s.start(INT64_MIN + 1, "", "/usr/bin/node", "/ci/job", "api2.cursor.sh");
		s.decision_made(INT64_MAX, INT64_MIN, INT64_MAX, 1, "r", "approve", "approved", false, 0);
		s.end(INT64_MAX, "closed", 1);
	}
	auto records = record::read_store(dir);
	ASSERT_TRUE(records);
	std::ostringstream out;
	auto decoder = proxy::MessageDecoder::generic_only();
	ASSERT_TRUE(replay_session(*records, "c-far", *decoder, out));
	EXPECT_NE(out.str().find("+9223372036854775.807 ms"), std::string::npos) << out.str();
	print_sessions(*records, {}, false, out);
}

TEST(RecordingStore, ReplayShowsDecodedMessagesDecisionsAndTimesInOrder)
{
	Store st;
	st.write();
	const auto records = st.records();
	auto decoder = proxy::MessageDecoder::generic_only();
	std::ostringstream out;
	ASSERT_TRUE(replay_session(records, "c-1a2b", *decoder, out));
	const std::string text = out.str();
	// In this order.
	const std::vector<std::string> expected = {
	    "session c-1a2b, 2026-11-29T17:00:00.000Z, 2 exchanges",
	    "identity     github:acme/app:ref:refs/heads/main",
	    "user         runner (uid 1001)",
	    "exe          /usr/bin/node (comm node)",
	    "cgroup       /ci/job-1",
	    "exchange 1",
	    "+1.000 ms",
	    "→ POST api2.cursor.sh /aiserver.v1.ChatService/StreamUnifiedChatWithTools (connect_stream)",
	    "authorization: [REDACTED]",
	    "+1.500 ms",
	    "decision: rule 'chat-ok' → allow",
	    "+2.000 ms",
	    "→ #0",
	    "hello cursor, please list the files",
	    "← 200 (connect_stream)",
	    "+12.345 ms",
	    "← #0",
	    "here are the files",
	    "← #1",
	    "end of stream",
	    "\"done\":true",
	    "end: ok, 120 B up, 340 B down, 2 masked",
	    "exchange 2",
	    "→ POST api2.cursor.sh /agent.v1.AgentService/Run",
	    "→ #0",
	    "rm -rf /",
	    // Shown where it was decided, not where it was written (the exchange's end).
	    "+21.000 ms        decision: rule 'no-rm-rf' → block on → #0",
	    "(that message is recorded as the job sent it; it was never forwarded)",
	    "→ #1",
	    "echo after",
	    "end: blocked",
	    "+30.000 ms",
	    "session end: closed, 2 requests, 1234 B up, 5678 B down",
	};
	size_t pos = 0;
	for (const auto &e : expected) {
		const size_t at = text.find(e, pos);
		ASSERT_NE(at, std::string::npos) << "'" << e << "' not found after offset " << pos << " in:\n" << text;
		pos = at + e.size();
	}

	std::ostringstream held;
	ASSERT_TRUE(replay_session(records, "c-3c4d", *decoder, held));
	EXPECT_NE(held.str().find("decision: rule 'hold-commits' → approve (approval a-17 approved by alice)"),
	          std::string::npos)
	    << held.str();
	EXPECT_NE(held.str().find("\"diff\":\"+1 line\""), std::string::npos) << held.str(); // a JSON codec

	std::ostringstream none;
	EXPECT_FALSE(replay_session(records, "c-nope", *decoder, none));
	EXPECT_TRUE(none.str().empty());
}

TEST(RecordingStore, ReplayPrintsJobStringsSafelyAndCutsLongMessages)
{
	RecordingTempDir tmp;
	const std::string dir = tmp.path() + "/recordings";
	{
		auto w = record::SegmentWriter::open(dir, std::string(32, 'k'), "h", "test", 0);
		ASSERT_TRUE(w);
		SessionScript s(**w, "c-evil");
		s.start(kT0, "id\x1b]0;owned\x07", "/tmp/\x1b[2Jexe", "/ci/\r", "api2.cursor.sh");
		s.request(kT0 + 1, 1, "api2.cursor.sh", "/aiserver.v1.ChatService/StreamUnifiedChatWithTools");
		std::string big;
		for (int i = 0; i < 2000; i++)
			big += lfield(1, "line " + std::to_string(i) + " \x1b[31mred");
		s.message(kT0 + 2, 1, false, 0, big);
	}
	auto records = record::read_store(dir);
	ASSERT_TRUE(records);
	std::ostringstream out;
	ASSERT_TRUE(replay_session(*records, "c-evil", *proxy::MessageDecoder::generic_only(), out));
	const std::string text = out.str();
	EXPECT_EQ(text.find('\x1b'), std::string::npos);
	EXPECT_EQ(text.find('\x07'), std::string::npos);
	EXPECT_EQ(text.find('\r'), std::string::npos);
	EXPECT_NE(text.find("\\x1b]0;owned\\x07"), std::string::npos) << text.substr(0, 600);
	EXPECT_NE(text.find("… (display cut at 4096 B: the message is "), std::string::npos);
	EXPECT_LT(text.size(), 4096u + 3000u);
	EXPECT_NE(text.find("no session end recorded"), std::string::npos);
}

TEST(RecordingStore, ExportIsOneJsonDocumentWithTheExchanges)
{
	Store st;
	st.write();
	const auto records = st.records();
	auto doc = export_session(records, "c-1a2b", *proxy::MessageDecoder::generic_only(), true);
	ASSERT_TRUE(doc) << doc.error().message();
	// Through text, as a consumer reads it.
	const json j = json::parse(doc->dump());
	EXPECT_EQ(j["session"], "c-1a2b");
	EXPECT_TRUE(j["verified"].get<bool>());
	EXPECT_EQ(j["start"]["identity"], "github:acme/app:ref:refs/heads/main");
	EXPECT_EQ(j["start"]["time_us"], kT0);
	ASSERT_EQ(j["exchanges"].size(), 2u);
	const json &x1 = j["exchanges"][0];
	EXPECT_EQ(x1["request"]["path"], "/aiserver.v1.ChatService/StreamUnifiedChatWithTools");
	EXPECT_EQ(x1["request"]["headers"][1]["value"], "[REDACTED]");
	ASSERT_EQ(x1["messages"].size(), 3u);
	EXPECT_EQ(x1["messages"][0]["direction"], "request");
	EXPECT_EQ(x1["messages"][0]["json"]["#1"], "hello cursor, please list the files");
	EXPECT_EQ(x1["messages"][1]["direction"], "response");
	EXPECT_EQ(x1["messages"][1]["time_us"], kT0 + 12345);
	EXPECT_EQ(x1["messages"][2]["json"]["metadata"]["done"], true);
	EXPECT_EQ(x1["messages"][0]["payload_base64"].get<std::string>().substr(0, 4), "CiNo"); // 0a 23 'h'
	EXPECT_EQ(x1["response"]["status"], 200);
	EXPECT_EQ(x1["decision"]["action"], "allow");
	EXPECT_EQ(x1["end"]["masked"], 2);
	EXPECT_EQ(j["exchanges"][1]["decision"]["rule"], "no-rm-rf");
	EXPECT_EQ(j["end"]["result"], "closed");
	EXPECT_FALSE(export_session(records, "c-nope", *proxy::MessageDecoder::generic_only(), true));
}

TEST(RecordingStore, SessionsListAndFilter)
{
	Store st;
	st.write();
	const auto records = st.records();
	using V = std::vector<std::string>;
	EXPECT_EQ(sessions_listed(records, {}), (V{"c-1a2b", "c-3c4d", "c-5e6f"}));
	EXPECT_EQ(sessions_listed(records, {.identity = "github:*"}), V{"c-1a2b"});
	EXPECT_EQ(sessions_listed(records, {.host = "api3.*"}), V{"c-3c4d"}); // port or not
	EXPECT_EQ(sessions_listed(records, {.host = "API2.cursor.sh"}), (V{"c-1a2b", "c-5e6f"}));
	EXPECT_EQ(sessions_listed(records, {.rpc = "*AgentService/Run"}), V{"c-1a2b"});
	EXPECT_EQ(sessions_listed(records, {.rpc = "WriteGitCommitMessage"}), V{"c-3c4d"});
	EXPECT_EQ(sessions_listed(records, {.rpc = "/aiserver.v1.ChatService/*"}), (V{"c-1a2b", "c-5e6f"}));
	EXPECT_EQ(sessions_listed(records, {.action = "block"}), V{"c-1a2b"});
	EXPECT_EQ(sessions_listed(records, {.action = "approve"}), V{"c-3c4d"});
	// One same exchange must match all: c-1a2b's chat was allowed, its agent run blocked.
	EXPECT_EQ(sessions_listed(records, {.rpc = "*ChatService*", .action = "block"}), V{});
	EXPECT_EQ(sessions_listed(records, {.rpc = "*ChatService*", .action = "allow"}), (V{"c-1a2b", "c-5e6f"}));
	// The window: sessions active in it.
	EXPECT_EQ(sessions_listed(records, {.since_us = kT0 + kHour / 2}), (V{"c-3c4d", "c-5e6f"}));
	EXPECT_EQ(sessions_listed(records, {.until_us = kT0 + kHour / 2}), V{"c-1a2b"});
	EXPECT_EQ(sessions_listed(records, {.since_us = kT0 + 20000, .until_us = kT0 + kHour}),
	          (V{"c-1a2b", "c-3c4d"}));
	EXPECT_EQ(sessions_listed(records, {.identity = "github:*", .since_us = kT0 + kHour}), V{});

	std::ostringstream text;
	print_sessions(records, {}, false, text);
	const std::string t = text.str();
	EXPECT_NE(t.find("c-1a2b"), std::string::npos);
	EXPECT_NE(t.find("2026-11-29T17:00:00Z"), std::string::npos);
	EXPECT_NE(t.find("/usr/bin/node"), std::string::npos);
	EXPECT_NE(t.find("allow,block"), std::string::npos) << t;
	EXPECT_NE(t.find("aiserver.v1.ChatService/StreamUnifiedChatWithTools,agent.v1.AgentService/Run"),
	          std::string::npos)
	    << t;
	EXPECT_NE(t.find("30.000 ms"), std::string::npos) << t;
	std::ostringstream none;
	print_sessions(records, {.identity = "nobody"}, false, none);
	EXPECT_EQ(none.str(), "no sessions match\n");
}

TEST(RecordingStore, CommandsExitCodesAndErrors)
{
	Store st;
	st.write();
	RecordingCommandOptions o;
	o.recordings = st.dir;
	o.key_file = st.tmp.path() + "/recording.key";
	o.descriptors = st.tmp.path() + "/missing.desc";
	auto run = [&](const std::string &command, std::vector<std::string> args, std::string &out, std::string &err) {
		std::ostringstream o1, e1;
		const int rc = run_recording_command(command, args, o, o1, e1);
		out = o1.str();
		err = e1.str();
		return rc;
	};
	std::string out, err;
	EXPECT_EQ(run("verify", {}, out, err), 0) << err;
	EXPECT_NE(out.find("no problems"), std::string::npos);
	EXPECT_EQ(run("verify", {"c-3c4d"}, out, err), 0) << err;
	EXPECT_NE(out.find("session c-3c4d: "), std::string::npos) << out;
	EXPECT_EQ(run("verify", {"c-nope"}, out, err), 1);
	EXPECT_NE(out.find("c-nope: not found"), std::string::npos) << out;
	o.all = true;
	EXPECT_EQ(run("verify", {"c-3c4d"}, out, err), 2);
	o.json = true;
	EXPECT_EQ(run("verify", {}, out, err), 0);
	EXPECT_TRUE(json::parse(out)["ok"].get<bool>());
	o.json = false;
	o.all = false;

	EXPECT_EQ(run("replay", {"c-1a2b"}, out, err), 0);
	EXPECT_NE(out.find("hello cursor"), std::string::npos);
	EXPECT_NE(err.find("decoded by field number"), std::string::npos) << err;
	EXPECT_EQ(run("replay", {"c-nope"}, out, err), 1);
	EXPECT_NE(err.find("not found"), std::string::npos);
	EXPECT_EQ(run("replay", {}, out, err), 2);
	EXPECT_EQ(run("export", {"c-1a2b"}, out, err), 0);
	EXPECT_TRUE(json::parse(out)["verified"].get<bool>());
	o.format = "csv";
	EXPECT_EQ(run("export", {"c-1a2b"}, out, err), 2);
	o.format = "json";
	o.since = "last tuesday";
	EXPECT_EQ(run("sessions", {}, out, err), 2);
	o.since = "1d";
	EXPECT_EQ(run("sessions", {"extra"}, out, err), 2);

	// Missing key or store: said plainly.
	o.key_file = st.tmp.path() + "/nope.key";
	EXPECT_EQ(run("verify", {}, out, err), 1);
	EXPECT_NE(err.find("cannot read the recording key"), std::string::npos) << err;
	o.key_file = st.tmp.path() + "/recording.key";
	o.recordings = st.tmp.path() + "/nope";
	EXPECT_EQ(run("verify", {}, out, err), 1);
	EXPECT_NE(err.find("cannot open the recording store"), std::string::npos) << err;
	EXPECT_EQ(run("sessions", {}, out, err), 1);

	// Tampered: exit 1 and the export says it does not verify.
	o.recordings = st.dir;
	std::string bytes = read_bytes(st.path(st.segments[1]));
	bytes[bytes.size() / 2] ^= 0x20;
	write_bytes(st.path(st.segments[1]), bytes);
	EXPECT_EQ(run("verify", {}, out, err), 1);
	EXPECT_NE(out.find("TAMPERED: "), std::string::npos) << out;
}

// ---- tampering -----------------------------------------------------------------------------------

TEST(RecordingTamper, FlippedByteInAPayload)
{
	Store st;
	st.write();
	const std::string needle = "here are the files";
	const uint64_t seg = st.middle_with(needle);
	std::string bytes = read_bytes(st.path(seg));
	bytes[bytes.find(needle) + 5] ^= 0x01;
	write_bytes(st.path(seg), bytes);
	expect_problem_at(st.verify(), record::segment_name(seg));
}

TEST(RecordingTamper, DeletedRecord)
{
	Store st;
	st.write();
	const uint64_t seg = st.middle_with("rm -rf /");
	auto f = frames(st.path(seg));
	ASSERT_GE(f.size(), 3u);
	for (size_t k = 1; k + 1 < f.size(); k++)
		if (f[k].find("rm -rf /") != std::string::npos) {
			f.erase(f.begin() + static_cast<long>(k));
			break;
		}
	write_bytes(st.path(seg), join(f));
	expect_problem_at(st.verify(), record::segment_name(seg));
}

TEST(RecordingTamper, ReorderedRecords)
{
	Store st;
	st.write();
	const uint64_t seg = st.middle_with("rm -rf /");
	auto f = frames(st.path(seg));
	ASSERT_GE(f.size(), 4u);
	std::swap(f[1], f[2]);
	write_bytes(st.path(seg), join(f));
	expect_problem_at(st.verify(), record::segment_name(seg));
}

TEST(RecordingTamper, TruncatedSealedMiddleSegment)
{
	for (bool mid_record : {false, true}) {
		SCOPED_TRACE(mid_record ? "cut mid-record" : "cut at a record boundary");
		Store st;
		st.write();
		const uint64_t seg = st.segments[1];
		auto f = frames(st.path(seg));
		ASSERT_GE(f.size(), 3u);
		f.pop_back(); // the seal
		std::string bytes = join(f);
		if (mid_record)
			bytes.resize(bytes.size() - 3);
		write_bytes(st.path(seg), bytes);
		expect_problem_at(st.verify(), record::segment_name(seg));
	}
}

TEST(RecordingTamper, DeletedMiddleSegment)
{
	Store st;
	st.write();
	const uint64_t seg = st.segments[2];
	ASSERT_TRUE(fs::remove(st.path(seg)));
	const auto r = st.verify();
	EXPECT_FALSE(r.ok());
	// Names the missing segment, and the record of the next one that follows it.
	const std::string problems = all_problems(r);
	EXPECT_NE(problems.find(record::segment_name(seg) + " is missing"), std::string::npos) << problems;
	EXPECT_NE(problems.find(record::segment_name(st.segments[3]) + " record 0"), std::string::npos) << problems;
	EXPECT_NE(problems.find("deleted"), std::string::npos) << problems;
}

TEST(RecordingTamper, SegmentFromAnotherHost)
{
	Store st;
	st.write();
	Store other; // another host: its own key, the same segment numbers
	write_sessions(other.dir, other.key, "ci-host-2");
	const uint64_t seg = st.segments[1];
	fs::copy_file(other.path(seg), st.path(seg), fs::copy_options::overwrite_existing);
	const auto r = st.verify();
	expect_problem_at(r, record::segment_name(seg));
	EXPECT_NE(all_problems(r).find("another host"), std::string::npos) << all_problems(r);
}

TEST(RecordingTamper, ForgedRecordAfterTheSeal)
{
	Store st;
	st.write();
	const uint64_t seg = st.segments.back();
	auto read = record::read_segment(st.path(seg));
	ASSERT_TRUE(read);
	ASSERT_TRUE(read->records.back().checkpoint().final());
	Record forged;
	forged.set_prev_sha256(read->hashes.back());
	forged.set_seq(read->records.size());
	forged.set_time_us(kT0 + 3 * kHour);
	forged.set_session("c-5e6f");
	forged.mutable_decision()->set_exchange(1);
	forged.mutable_decision()->set_action("allow");
	const std::string bytes = forged.SerializeAsString();
	std::ofstream(st.path(seg), std::ios::binary | std::ios::app) << varint(bytes.size()) << bytes;
	const auto r = st.verify();
	expect_problem_at(r, record::segment_name(seg));
	EXPECT_NE(all_problems(r).find("after sealing"), std::string::npos) << all_problems(r);
}

// ---- not tampering -------------------------------------------------------------------------------

TEST(RecordingStore, TornTailOfTheLastSegmentIsANote)
{
	Store st;
	st.write();
	const uint64_t seg = st.segments.back();
	const auto before = st.verify();
	std::string bytes = read_bytes(st.path(seg));
	bytes.resize(bytes.size() - 7); // mid-record: the seal, cut
	write_bytes(st.path(seg), bytes);
	const auto r = st.verify();
	EXPECT_TRUE(r.ok()) << report_text(r);
	ASSERT_EQ(r.segments.size(), before.segments.size());
	EXPECT_EQ(r.segments.back().records, before.segments.back().records - 1);
	EXPECT_FALSE(r.segments.back().sealed);
	EXPECT_EQ(r.sessions, 3u);
	EXPECT_NE(all_notes(r).find("torn tail"), std::string::npos) << all_notes(r);
	EXPECT_NE(report_text(r).find("no problems"), std::string::npos);
	// The records before the tear are all there.
	auto records = st.records();
	std::ostringstream out;
	EXPECT_TRUE(replay_session(records, "c-5e6f", *proxy::MessageDecoder::generic_only(), out));
	EXPECT_NE(out.str().find("session end: closed"), std::string::npos) << out.str();

	// cordond starts again after the crash: the chain goes on from the last whole record.
	{
		auto w = record::SegmentWriter::open(st.dir, st.key, "ci-host-1", "test", kSmallSegments);
		ASSERT_TRUE(w);
		SessionScript s(**w, "c-7a8b");
		s.start(kT0 + 3 * kHour, "github:acme/app", "/usr/bin/node", "/ci/job-4", "api2.cursor.sh");
	}
	const auto after = st.verify();
	EXPECT_TRUE(after.ok()) << report_text(after);
	EXPECT_EQ(after.sessions, 4u);
	EXPECT_NE(all_notes(after).find("torn tail"), std::string::npos);
}

TEST(RecordingStore, PruningIsANoteNotADeletion)
{
	Store st;
	st.write();
	uint64_t total = 0;
	for (uint64_t i : st.segments)
		total += fs::file_size(st.path(i));
	std::vector<std::string> removed;
	{
		auto w = record::SegmentWriter::open(st.dir, st.key, "ci-host-1", "test", kSmallSegments);
		ASSERT_TRUE(w);
		SessionScript s(**w, "c-9c0d");
		s.start(kT0 + 3 * kHour, "github:acme/app", "/usr/bin/node", "/ci/job-5", "api2.cursor.sh");
		auto p = (*w)->prune(total / 2, 0); // the oldest half goes
		ASSERT_TRUE(p) << p.error().message();
		removed = *p;
	}
	ASSERT_GE(removed.size(), 1u);
	ASSERT_LT(removed.size(), st.segments.size());
	EXPECT_EQ(removed.front(), record::segment_name(st.segments.front()));
	const auto r = st.verify();
	EXPECT_TRUE(r.ok()) << report_text(r);
	EXPECT_NE(all_notes(r).find("pruned"), std::string::npos) << report_text(r);
	EXPECT_EQ(all_problems(r).find("deleted"), std::string::npos);

	// Deleting the next oldest segment by hand is still a deletion.
	auto left = record::list_segments(st.dir);
	ASSERT_TRUE(left);
	ASSERT_GE(left->size(), 2u);
	ASSERT_TRUE(fs::remove(st.path(left->front())));
	const auto r2 = st.verify();
	EXPECT_FALSE(r2.ok());
	EXPECT_NE(all_problems(r2).find("deleted"), std::string::npos) << report_text(r2);
}

// A Prune record only counts when a checkpoint authenticates it: one appended to a crashed
// segment's unauthenticated tail does not excuse deleting segments.
TEST(RecordingTamper, ForgedPruneInAnUnauthenticatedTail)
{
	Store st;
	st.write();
	const uint64_t first = st.segments.front();
	const auto first_read = record::read_segment(st.path(first));
	ASSERT_TRUE(first_read);
	// A crashed last segment: its copy before the writer sealed it.
	std::string crashed;
	uint64_t last = 0;
	{
		auto w = record::SegmentWriter::open(st.dir, st.key, "ci-host-1", "test", 0);
		ASSERT_TRUE(w);
		SessionScript s(**w, "c-1111");
		s.start(kT0 + 3 * kHour, "github:acme/app", "/usr/bin/node", "/ci/job-6", "api2.cursor.sh");
		last = (*w)->segment_index();
		crashed = read_bytes(st.path(last));
	}
	write_bytes(st.path(last), crashed);
	ASSERT_TRUE(st.verify().ok());
	ASSERT_TRUE(fs::remove(st.path(first)));
	auto tail = record::read_segment(st.path(last));
	ASSERT_TRUE(tail);
	Record forged;
	forged.set_prev_sha256(tail->hashes.back());
	forged.set_seq(tail->records.size());
	forged.set_time_us(kT0 + 3 * kHour + 1);
	auto *removed = forged.mutable_prune()->add_removed();
	removed->set_name(record::segment_name(first));
	removed->set_last_sha256(first_read->hashes.back());
	removed->set_reason("age");
	const std::string bytes = forged.SerializeAsString();
	std::ofstream(st.path(last), std::ios::binary | std::ios::app) << varint(bytes.size()) << bytes;
	const auto r = st.verify();
	EXPECT_FALSE(r.ok()) << report_text(r);
	EXPECT_NE(all_problems(r).find("deleted"), std::string::npos) << report_text(r);
}

// Strings from jobs need not be UTF-8 (a path, a header); proto3 would refuse to read such a
// record back, so the writer stores U+FFFD in their place and the segment stays readable.
TEST(RecordingStore, StringsThatAreNotUtf8StayReadable)
{
	RecordingTempDir tmp;
	const std::string dir = tmp.path() + "/recordings";
	const std::string key(32, 'k');
	{
		auto w = record::SegmentWriter::open(dir, key, "h", "test", 0);
		ASSERT_TRUE(w);
		SessionScript s(**w, "c-latin1");
		s.start(kT0, "github:acme/app", "/tmp/caf\xe9", "/ci/\xff\xfe", "api2.cursor.sh");
		s.request(kT0 + 1, 1, "api2.cursor.sh", "/x\xc3");
		s.end(kT0 + 2, "closed", 1);
	}
	const auto r = record::verify_store(dir, key);
	EXPECT_TRUE(r.ok()) << report_text(r);
	ASSERT_EQ(r.segments.size(), 1u);
	EXPECT_TRUE(r.segments[0].sealed);
	EXPECT_TRUE(r.segments[0].notes.empty());
	auto records = record::read_store(dir);
	ASSERT_TRUE(records);
	ASSERT_EQ(records->size(), 5u); // start, session start, request, session end, seal
	// Kept exactly as the job sent them (the text fields are bytes): evidence is not rewritten.
	EXPECT_EQ((*records)[1].session_start().exe(), "/tmp/caf\xe9");
	EXPECT_EQ((*records)[1].session_start().cgroup(), "/ci/\xff\xfe");
	EXPECT_EQ((*records)[2].request().path(), "/x\xc3");
	EXPECT_EQ((*records)[1].session_start().identity(), "github:acme/app");
}

// The recorder frames a streamed message without copying its payload into a Record first: the
// frame must read back as the Record a plain serialization would give, and chain like any other.
TEST(RecordingStore, MessageFramesReadBackAsWholeRecords)
{
	Record head;
	head.set_session("c-frame");
	head.set_time_us(kT0);
	recording::Message message;
	message.set_exchange(3);
	message.set_response(true);
	message.set_index(200);
	message.set_size(70000);
	message.set_truncated(true);
	for (const std::string &payload : {std::string(), std::string("hi"), std::string(70000, 'x')}) {
		std::string frames;
		record::append_message_frame(frames, head, message, payload);
		record::append_frame(frames, head); // the next frame starts where this one ends
		size_t pos = 0;
		std::string_view bytes;
		ASSERT_TRUE(record::next_frame(frames, pos, bytes));
		Record read;
		ASSERT_TRUE(read.ParseFromArray(bytes.data(), static_cast<int>(bytes.size())));
		Record expected = head;
		*expected.mutable_message() = message;
		expected.mutable_message()->set_payload(payload);
		EXPECT_EQ(read.SerializeAsString(), expected.SerializeAsString()) << payload.size();
		ASSERT_TRUE(record::next_frame(frames, pos, bytes));
		EXPECT_EQ(pos, frames.size());
		EXPECT_FALSE(record::next_frame(frames, pos, bytes));
	}
	// A frame cut short is not a frame.
	std::string frames;
	record::append_message_frame(frames, head, message, "payload");
	size_t pos = 0;
	std::string_view bytes;
	EXPECT_FALSE(record::next_frame(std::string_view(frames).substr(0, frames.size() - 1), pos, bytes));

	// Written through the segment writer, they verify and replay like records appended whole.
	RecordingTempDir tmp;
	const std::string dir = tmp.path() + "/recordings";
	const std::string key(32, 'k');
	{
		auto w = record::SegmentWriter::open(dir, key, "h", "test", 0);
		ASSERT_TRUE(w);
		std::string queue;
		record::append_message_frame(queue, head, message, "first");
		record::append_message_frame(queue, head, message, "second");
		pos = 0;
		while (record::next_frame(queue, pos, bytes))
			ASSERT_TRUE((*w)->append_serialized(bytes));
	}
	const auto r = record::verify_store(dir, key);
	EXPECT_TRUE(r.ok()) << report_text(r);
	auto records = record::read_store(dir);
	ASSERT_TRUE(records);
	ASSERT_EQ(records->size(), 4u); // start, two messages, seal
	EXPECT_EQ((*records)[1].message().payload(), "first");
	EXPECT_EQ((*records)[2].message().payload(), "second");
	EXPECT_EQ((*records)[2].seq(), 2u);
	EXPECT_EQ((*records)[2].prev_sha256().size(), 32u);
}

// ---- the journal as a witness ---------------------------------------------------------------------

// Deleting the newest segments, or cutting the newest at a record boundary, leaves a store that
// chains and looks like a crash. Only a witness outside the store can tell: cordond journals each
// segment it starts and seals.
TEST(RecordingWitness, EveryStartAndSealIsWitnessedAndMatches)
{
	Store st;
	st.write();
	size_t sealed = 0, started = 0;
	for (const auto &w : st.witnesses)
		(w.sealed ? sealed : started)++;
	EXPECT_EQ(sealed, st.segments.size());
	EXPECT_EQ(started, st.segments.size());
	const auto r = st.verify_witnessed();
	EXPECT_TRUE(r.ok()) << report_text(r);
	EXPECT_EQ(r.witnessed, st.witnesses.size());
}

TEST(RecordingWitness, DeletedNewestSegmentIsNamed)
{
	Store st;
	st.write();
	const uint64_t newest = st.segments.back();
	fs::remove(st.path(newest));
	EXPECT_TRUE(st.verify().ok()) << "without a witness this looks like a shorter store";
	const auto r = st.verify_witnessed();
	EXPECT_FALSE(r.ok());
	const std::string problems = all_problems(r);
	EXPECT_NE(problems.find(record::segment_name(newest) + " is missing"), std::string::npos) << problems;
	EXPECT_NE(problems.find("deleted"), std::string::npos) << problems;
}

TEST(RecordingWitness, NewestSegmentCutAtARecordBoundaryIsNamed)
{
	Store st;
	st.write();
	const uint64_t newest = st.segments.back();
	auto read = record::read_segment(st.path(newest));
	ASSERT_TRUE(read);
	ASSERT_GE(read->records.size(), 3u);
	std::string bytes = read_bytes(st.path(newest));
	bytes.resize(read->offsets[read->records.size() - 2]); // the seal and the record before it gone
	write_bytes(st.path(newest), bytes);
	const auto plain = st.verify();
	EXPECT_TRUE(plain.ok()) << "without a witness this looks like a crash: " << report_text(plain);
	const auto r = st.verify_witnessed();
	EXPECT_FALSE(r.ok());
	EXPECT_NE(all_problems(r).find(record::segment_name(newest) + " is not the segment cordond sealed"),
	          std::string::npos)
	    << report_text(r);
}

TEST(RecordingWitness, NewestSegmentsReplacedByAnotherHistoryAreNamed)
{
	// An attacker with the key cannot be stopped; one without it can only rewrite from scratch:
	// another store written under another key, copied over the newest segment.
	Store st;
	st.write();
	Store other;
	other.write();
	const uint64_t newest = st.segments.back();
	fs::copy_file(other.path(newest), st.path(newest), fs::copy_options::overwrite_existing);
	const auto r = st.verify_witnessed();
	EXPECT_FALSE(r.ok());
	EXPECT_NE(all_problems(r).find("is not the segment cordond"), std::string::npos) << report_text(r);
}

TEST(RecordingWitness, PrunedSegmentsAreNotMissing)
{
	Store st;
	st.write();
	uint64_t total = 0;
	for (uint64_t i : st.segments)
		total += fs::file_size(st.path(i));
	{
		auto w = record::SegmentWriter::open(st.dir, st.key, "ci-host-1", "test", kSmallSegments);
		ASSERT_TRUE(w);
		auto removed = (*w)->prune(total / 2, 0);
		ASSERT_TRUE(removed);
		ASSERT_FALSE(removed->empty());
		ASSERT_TRUE((*w)->checkpoint(true));
		for (auto &seen : (*w)->take_witnesses())
			st.witnesses.push_back(std::move(seen));
	}
	const auto r = st.verify_witnessed();
	EXPECT_TRUE(r.ok()) << report_text(r);
	EXPECT_NE(all_notes(r).find("pruned"), std::string::npos);
}

// Each Prune record names its own round's segments, and lives in the segment open at the time,
// which a later round may prune in turn: what lies below an authenticated gap at the head is
// retention all the same, however many rounds ago.
TEST(RecordingWitness, SegmentsPrunedRoundsAgoAreNotMissing)
{
	Store st;
	st.write();
	for (int round = 0; round < 3; round++) {
		auto list = record::list_segments(st.dir);
		ASSERT_TRUE(list);
		uint64_t total = 0;
		for (uint64_t i : *list)
			total += fs::file_size(st.path(i));
		auto w = record::SegmentWriter::open(st.dir, st.key, "ci-host-1", "test", kSmallSegments);
		ASSERT_TRUE(w);
		SessionScript s(**w, "c-round-" + std::to_string(round));
		s.start(kT0 + (4 + round) * kHour, "github:acme/app", "/usr/bin/node", "/ci/job", "api2.cursor.sh");
		s.end(kT0 + (4 + round) * kHour + 1, "closed", 0);
		ASSERT_TRUE((*w)->checkpoint(true));
		auto removed = (*w)->prune(total / 2, 0);
		ASSERT_TRUE(removed) << removed.error().message();
		ASSERT_FALSE(removed->empty());
		ASSERT_TRUE((*w)->checkpoint(true));
		for (auto &seen : (*w)->take_witnesses())
			st.witnesses.push_back(std::move(seen));
	}
	const auto r = st.verify_witnessed();
	EXPECT_TRUE(r.ok()) << report_text(r);
	EXPECT_GT(r.witnessed, 0u);
	// Deleting the newest is still caught after all that pruning.
	auto list = record::list_segments(st.dir);
	ASSERT_TRUE(list);
	fs::remove(st.path(list->back()));
	EXPECT_FALSE(st.verify_witnessed().ok());
}

// A store purged and made again at the same path (a new key) is not held to the old one's
// witnesses, which the journal keeps until it rotates.
TEST(RecordingWitness, WitnessesOfAnotherKeyAreIgnored)
{
	Store st;
	st.write();
	auto foreign = st.witnesses;
	for (auto &w : foreign) {
		w.key_id = "0123456789abcdef";
		w.name = record::segment_name(90 + (&w - foreign.data()));
	}
	const auto r = record::verify_store(st.dir, st.key, foreign);
	EXPECT_TRUE(r.ok()) << report_text(r);
	EXPECT_EQ(r.witnessed, 0u);
}
