// The daemon's recorder: records reach the chained store through the writer thread, sessions
// keep credentials out, a full queue fails recording (closed by default).
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>

#include "daemon/journal.h"
#include "daemon/recorder.h"
#include "daemon/relay.h"
#include "record/segment_store.h"

using namespace cordon;

namespace {

struct TempDir {
	std::string path;
	TempDir()
	{
		char name[] = "/tmp/cordon-recorder-XXXXXX";
		path = ::mkdtemp(name);
	}
	~TempDir() { std::filesystem::remove_all(path); }
};

RecorderSettings settings(const TempDir &tmp)
{
	RecorderSettings s;
	s.dir = tmp.path + "/recordings";
	s.key_path = tmp.path + "/recording.key";
	s.host = "test";
	s.sync_interval = std::chrono::milliseconds(20);
	s.max_message_bytes = 8;
	return s;
}

ConnectionIdentity job_identity()
{
	ConnectionIdentity id;
	id.id = "c-test";
	id.cgroup = "/ci/job";
	id.user = "runner";
	id.exe = "/usr/bin/node";
	id.sni = "api2.cursor.sh";
	id.started = std::chrono::steady_clock::now();
	return id;
}

} // namespace

TEST(Recorder, ASessionReachesTheStoreRedactedAndVerifies)
{
	TempDir tmp;
	Journal journal;
	const ConnectionIdentity id = job_identity();
	{
		auto recorder = Recorder::start(settings(tmp), journal);
		ASSERT_TRUE(recorder) << recorder.error().message();
		SessionRecording session(**recorder, id, "policy.yaml sha256:0");
		session.start("h2");
		proxy::RequestInfo r;
		r.number = 1;
		r.method = "POST";
		r.host = "api2.cursor.sh";
		r.path = "/aiserver.v1.ChatService/StreamUnifiedChatWithTools";
		r.rpc = rpc::parse_rpc_path(r.path);
		proxy::Headers headers{{"authorization", "Bearer crsr_secret"}, {"x-my-token", "t"}, {"accept", "*/*"}};
		session.on_headers(r, proxy::Direction::Request, false, headers);
		session.on_request(r);
		proxy::Message m;
		m.payload = "0123456789abcdef";
		session.on_message(r, m);
		proxy::ExchangeSummary s;
		s.result = "ok";
		policy::Decision d;
		d.rule = "chat-ok";
		session.exchange_done(r, s, &d, 2);
		session.end("ok", 10, 20, 1);
		EXPECT_TRUE((*recorder)->accepting());
	} // the recorder drains, seals and stops
	auto key = record::load_key(tmp.path + "/recording.key");
	ASSERT_TRUE(key);
	auto report = record::verify_store(tmp.path + "/recordings", *key);
	EXPECT_TRUE(report.ok());
	EXPECT_EQ(report.sessions, 1u);
	ASSERT_EQ(report.segments.size(), 1u);
	EXPECT_TRUE(report.segments[0].sealed);
	auto records = record::read_store(tmp.path + "/recordings");
	ASSERT_TRUE(records);
	bool saw_request = false, saw_message = false, saw_decision = false, saw_end = false;
	for (const auto &rec : *records) {
		if (rec.has_request()) {
			saw_request = true;
			for (const auto &h : rec.request().headers()) {
				const std::string expected = h.name() == "accept" ? "*/*" : "[REDACTED]";
				EXPECT_EQ(h.value(), expected) << h.name();
			}
		}
		if (rec.has_message()) {
			saw_message = true;
			EXPECT_EQ(rec.message().payload(), "01234567");
			EXPECT_TRUE(rec.message().truncated());
			EXPECT_EQ(rec.message().size(), 16u);
		}
		if (rec.has_decision())
			saw_decision = rec.decision().rule() == "chat-ok";
		if (rec.has_session_end())
			saw_end = rec.session_end().result() == "ok";
		EXPECT_EQ(rec.SerializeAsString().find("crsr_secret"), std::string::npos);
	}
	EXPECT_TRUE(saw_request && saw_message && saw_decision && saw_end);
}

TEST(Recorder, AFullQueueFailsRecordingAndRefusesNewSessions)
{
	TempDir tmp;
	Journal journal;
	RecorderSettings s = settings(tmp);
	s.max_queue_bytes = 1; // nothing fits
	auto recorder = Recorder::start(s, journal);
	ASSERT_TRUE(recorder);
	recording::Record r;
	r.set_session("c-x");
	r.mutable_session_end()->set_result("ok");
	(*recorder)->record(r);
	EXPECT_TRUE((*recorder)->failed());
	EXPECT_FALSE((*recorder)->accepting());
	EXPECT_NE((*recorder)->failure().find("queue is full"), std::string::npos);
	EXPECT_EQ((*recorder)->stats().lost, 1u);
}

TEST(Recorder, CredentialHeadersAreRecognised)
{
	for (const char *h :
	     {"authorization", "cookie", "set-cookie", "x-api-key", "x-refresh-token", "x-cursor-checksum"})
		EXPECT_TRUE(is_credential_header(h)) << h;
	for (const char *h : {"content-type", "accept", "user-agent", "connect-protocol-version"})
		EXPECT_FALSE(is_credential_header(h)) << h;
}
