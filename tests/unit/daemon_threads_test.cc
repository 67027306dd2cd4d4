// The daemon's background threads run against the threads that feed them, for TSan (make
// unit-tsan): the recorder's writer and its queue, the journal's writer, and the KeyCache's
// fetcher. Each test also checks that nothing was lost or counted twice on the way.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <thread>
#include <vector>

#include "daemon/journal.h"
#include "daemon/recorder.h"
#include "identity/jwt.h"
#include "record/segment_store.h"

using namespace cordon;
using namespace std::chrono_literals;

namespace {

struct TempDir {
	std::string path;
	TempDir()
	{
		char name[] = "/tmp/cordon-threads-XXXXXX";
		path = ::mkdtemp(name);
	}
	~TempDir() { std::filesystem::remove_all(path); }
};

} // namespace

// The loop thread records in bursts (so the writer goes Busy, Idle and Batching in turn) while
// another thread reads the stats, as the metrics endpoint does; every record reaches the store.
TEST(RecorderThreads, BurstsWhileTheWriterWritesAndStatsAreRead)
{
	TempDir tmp;
	Journal journal;
	constexpr int kSessions = 40, kMessages = 25;
	uint64_t records = 0;
	{
		RecorderSettings s;
		s.dir = tmp.path + "/recordings";
		s.key_path = tmp.path + "/recording.key";
		s.host = "test";
		s.sync_interval = 1ms;
		s.max_segment_bytes = 64 << 10; // segments roll over while recording
		s.max_message_bytes = 64;
		auto recorder = Recorder::start(s, journal);
		ASSERT_TRUE(recorder) << recorder.error().message();
		std::atomic<bool> done{false};
		std::thread reader([&] {
			while (!done.load()) {
				(void)(*recorder)->stats();
				(void)(*recorder)->failure();
				(void)(*recorder)->accepting();
				std::this_thread::yield();
			}
		});
		for (int i = 0; i < kSessions; i++) {
			const std::string session = "c-" + std::to_string(i);
			for (int m = 0; m < kMessages; m++) {
				recording::Record head;
				head.set_session(session);
				recording::Message message;
				message.set_exchange(1);
				message.set_index(m);
				(*recorder)->record_message(head, message, std::string(100 + m, 'x'));
				records++;
			}
			recording::Record end;
			end.set_session(session);
			end.mutable_session_end()->set_result("ok");
			(*recorder)->record(end);
			records++;
			(*recorder)->sync_soon();
			if (i % 4 == 0)
				std::this_thread::sleep_for(2ms); // let the writer go idle
		}
		done = true;
		reader.join();
		EXPECT_FALSE((*recorder)->failed()) << (*recorder)->failure();
	} // drains, seals, joins
	auto stored = record::read_store(tmp.path + "/recordings");
	ASSERT_TRUE(stored);
	uint64_t ends = 0, messages = 0;
	for (const auto &r : *stored) {
		ends += r.has_session_end();
		messages += r.has_message();
	}
	EXPECT_EQ(ends, uint64_t(kSessions));
	EXPECT_EQ(messages, uint64_t(kSessions) * kMessages);
	EXPECT_GE(stored->size(), records);
}

// The loop, the DNS proxy and the resolver all send entries; flush() waits from yet another
// thread. A small queue makes some sends drop: every entry is either written or dropped.
TEST(JournalThreads, SendersAndAFlusherAtOnce)
{
	constexpr int kThreads = 4, kEach = 50;
	uint64_t written = 0, dropped = 0, fell_back = 0;
	{
		Journal journal(16);
		std::vector<std::thread> senders;
		for (int t = 0; t < kThreads; t++)
			senders.emplace_back([&journal, t] {
				for (int i = 0; i < kEach; i++) {
					JournalEntry e;
					e.priority = 7;
					e.message = "cordon unit test: JournalThreads";
					e.add("CORDON_TEST_THREAD", std::to_string(t))
					    .add("CORDON_TEST_ENTRY", std::to_string(i));
					journal.send(std::move(e));
				}
			});
		std::thread flusher([&journal] {
			for (int i = 0; i < 10; i++)
				journal.flush();
		});
		for (auto &s : senders)
			s.join();
		flusher.join();
		journal.flush();
		written = journal.written();
		dropped = journal.dropped();
		fell_back = journal.fell_back();
	}
	// Written (to journald or stderr) or dropped; after a drop the writer adds one note per batch.
	if (dropped == 0)
		EXPECT_EQ(written + fell_back, uint64_t(kThreads) * kEach);
	else
		EXPECT_GE(written + fell_back + dropped, uint64_t(kThreads) * kEach);
}

// Tokens are checked on the loop thread while the fetcher thread replaces key sets: requests,
// loads, reads and stats from several threads at once, fetches that fail and succeed in turn.
TEST(KeyCacheThreads, RequestsAndReadsWhileTheFetcherReplacesKeys)
{
	std::atomic<int> calls{0};
	identity::KeyCache cache(
	    [&](const std::string &issuer) -> Result<identity::KeySet> {
		    std::this_thread::sleep_for(std::chrono::microseconds(50 * (issuer.size() % 3)));
		    if (++calls % 3 == 0)
			    return plain_error("jwks: unreachable (test)");
		    return identity::KeySet::parse(R"({"keys":[]})");
	    },
	    0s); // every request is accepted
	const std::vector<std::string> issuers = {"https://a.example", "https://bb.example", "https://ccc.example"};
	std::vector<std::thread> threads;
	for (int t = 0; t < 4; t++)
		threads.emplace_back([&, t] {
			for (int i = 0; i < 200; i++) {
				const std::string &issuer = issuers[(i + t) % issuers.size()];
				if (i % 2)
					cache.request_refetch(issuer);
				else
					cache.load(issuer);
				(void)cache.keys(issuer);
				(void)cache.fetching(issuer);
				(void)cache.stats(issuer).last_error;
			}
		});
	for (auto &t : threads)
		t.join();
	ASSERT_TRUE(cache.wait_idle(10s));
	uint64_t fetches = 0;
	for (const auto &issuer : issuers)
		fetches += cache.stats(issuer).fetches;
	EXPECT_EQ(fetches, uint64_t(calls.load()));
}

// The destructor drops what is queued and joins while a fetch runs and others still ask.
TEST(KeyCacheThreads, DestroyedWhileFetching)
{
	std::atomic<bool> started{false};
	auto cache = std::make_unique<identity::KeyCache>(
	    [&](const std::string &) -> Result<identity::KeySet> {
		    started = true;
		    std::this_thread::sleep_for(5ms);
		    return identity::KeySet::parse(R"({"keys":[]})");
	    },
	    0s);
	for (int i = 0; i < 20; i++)
		cache->load("https://issuer-" + std::to_string(i) + ".example");
	while (!started.load())
		std::this_thread::yield();
	cache.reset();
	SUCCEED();
}
