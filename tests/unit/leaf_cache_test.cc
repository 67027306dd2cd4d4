// The leaf cache: hits, LRU eviction, re-minting before expiry (on an injected clock), refusals,
// and many threads at once.
#include <gtest/gtest.h>
#include <openssl/x509v3.h>

#include <atomic>
#include <filesystem>
#include <latch>
#include <thread>
#include <vector>

#include "tls/leaf_cache.h"

using namespace cordon;
using namespace cordon::tls;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

// A clock the test moves by hand.
struct FakeClock {
	std::atomic<std::chrono::system_clock::time_point> now{std::chrono::system_clock::now()};
	LeafCache::Clock fn()
	{
		return [this] { return now.load(); };
	}
	void advance(std::chrono::seconds d) { now = now.load() + d; }
};

bool names(const Leaf &leaf, const std::string &host)
{
	return X509_check_host(leaf.certificate.get(), host.c_str(), host.size(), 0, nullptr) == 1;
}

class LeafCacheTest : public ::testing::Test {
protected:
	static void SetUpTestSuite()
	{
		std::string tmpl = (fs::temp_directory_path() / "cordon-leaf-test-XXXXXX").string();
		ASSERT_TRUE(::mkdtemp(tmpl.data()));
		dir_ = new std::string(tmpl);
		auto ca = CertificateAuthority::load_or_create(*dir_ + "/state");
		ASSERT_TRUE(ca) << ca.error().message();
		ca_ = new CertificateAuthority(std::move(*ca));
	}
	static void TearDownTestSuite()
	{
		delete ca_;
		std::error_code ec;
		fs::remove_all(*dir_, ec);
		delete dir_;
	}
	static std::string *dir_;
	static CertificateAuthority *ca_;
};
std::string *LeafCacheTest::dir_ = nullptr;
CertificateAuthority *LeafCacheTest::ca_ = nullptr;

} // namespace

TEST_F(LeafCacheTest, HitReturnsTheSameLeafWhateverTheCase)
{
	LeafCache cache(*ca_, 16, 24h);
	auto first = cache.get("api2.cursor.sh");
	ASSERT_TRUE(first) << first.error().message();
	EXPECT_TRUE(names(**first, "api2.cursor.sh"));
	auto second = cache.get("api2.cursor.sh");
	ASSERT_TRUE(second);
	EXPECT_EQ(first->get(), second->get());
	auto shouted = cache.get("API2.Cursor.SH.");
	ASSERT_TRUE(shouted);
	EXPECT_EQ(first->get(), shouted->get());
	EXPECT_EQ(cache.minted(), 1u);
	EXPECT_EQ(cache.hits(), 2u);
	EXPECT_EQ(cache.size(), 1u);
	auto other = cache.get("api3.cursor.sh");
	ASSERT_TRUE(other);
	EXPECT_NE(other->get(), first->get());
	EXPECT_TRUE(names(**other, "api3.cursor.sh"));
	EXPECT_EQ(cache.minted(), 2u);
}

TEST_F(LeafCacheTest, LeastRecentlyUsedIsEvictedAtCapacity)
{
	LeafCache cache(*ca_, 2, 24h);
	auto a = cache.get("a.cursor.sh");
	auto b = cache.get("b.cursor.sh");
	ASSERT_TRUE(a && b);
	ASSERT_TRUE(cache.get("a.cursor.sh")); // a is now the most recent
	auto c = cache.get("c.cursor.sh");     // evicts b
	ASSERT_TRUE(c);
	EXPECT_EQ(cache.size(), 2u);
	EXPECT_EQ(cache.evicted(), 1u);
	EXPECT_EQ(cache.minted(), 3u);
	auto a2 = cache.get("a.cursor.sh");
	ASSERT_TRUE(a2);
	EXPECT_EQ(a2->get(), a->get());
	EXPECT_EQ(cache.minted(), 3u);
	auto b2 = cache.get("b.cursor.sh"); // minted again, evicting c
	ASSERT_TRUE(b2);
	EXPECT_NE(b2->get(), b->get());
	EXPECT_EQ(cache.minted(), 4u);
	EXPECT_EQ(cache.size(), 2u);
	auto c2 = cache.get("c.cursor.sh");
	ASSERT_TRUE(c2);
	EXPECT_NE(c2->get(), c->get());
	// A caller still holding an evicted leaf keeps a usable one.
	EXPECT_TRUE(names(**b, "b.cursor.sh"));
	EXPECT_EQ(X509_check_private_key((*b)->certificate.get(), (*b)->key.get()), 1);
}

TEST_F(LeafCacheTest, ReMintedWhenLessThanAQuarterOfItsValidityIsLeft)
{
	FakeClock clock;
	LeafCache cache(*ca_, 16, 4h, clock.fn());
	const auto start = clock.now.load();
	auto first = cache.get("api2.cursor.sh");
	ASSERT_TRUE(first);
	EXPECT_EQ(std::chrono::system_clock::to_time_t((*first)->not_after),
	          std::chrono::system_clock::to_time_t(start + 4h));
	clock.advance(3h - 1s); // just over a quarter left
	auto same = cache.get("api2.cursor.sh");
	ASSERT_TRUE(same);
	EXPECT_EQ(same->get(), first->get());
	clock.advance(2s); // under a quarter left
	auto renewed = cache.get("api2.cursor.sh");
	ASSERT_TRUE(renewed);
	EXPECT_NE(renewed->get(), first->get());
	EXPECT_EQ(std::chrono::system_clock::to_time_t((*renewed)->not_after),
	          std::chrono::system_clock::to_time_t(clock.now.load() + 4h));
	EXPECT_EQ(cache.minted(), 2u);
	EXPECT_EQ(cache.size(), 1u);
	// Long after expiry: a fresh one again.
	clock.advance(10h);
	auto later = cache.get("api2.cursor.sh");
	ASSERT_TRUE(later);
	EXPECT_NE(later->get(), renewed->get());
	EXPECT_GT((*later)->not_after, clock.now.load());
	EXPECT_EQ(cache.minted(), 3u);
}

TEST_F(LeafCacheTest, InvalidHostsAreRejectedAndNotCached)
{
	LeafCache cache(*ca_, 16, 24h);
	for (const char *bad : {"", "bad host", "*.cursor.sh", "127.0.0.1", "a..b", "x/y"}) {
		auto leaf = cache.get(bad);
		EXPECT_FALSE(leaf) << "'" << bad << "'";
		if (!leaf) {
			EXPECT_NE(leaf.error().message().find("leaf certificate"), std::string::npos);
		}
	}
	EXPECT_EQ(cache.size(), 0u);
	EXPECT_EQ(cache.minted(), 0u);
}

TEST_F(LeafCacheTest, ConcurrentMissesForOneNameShareOneMint)
{
	LeafCache cache(*ca_, 16, 24h);
	constexpr int kThreads = 16;
	std::latch go(kThreads);
	std::vector<const Leaf *> got(kThreads, nullptr);
	std::vector<std::thread> threads;
	for (int i = 0; i < kThreads; i++)
		threads.emplace_back([&, i] {
			go.arrive_and_wait();
			auto leaf = cache.get("api2.cursor.sh");
			if (leaf)
				got[i] = leaf->get();
		});
	for (auto &t : threads)
		t.join();
	EXPECT_EQ(cache.minted(), 1u);
	for (const Leaf *leaf : got)
		EXPECT_EQ(leaf, got[0]);
	EXPECT_NE(got[0], nullptr);
}

TEST_F(LeafCacheTest, ManyThreadsManyNames)
{
	LeafCache cache(*ca_, 8, 24h);
	constexpr int kThreads = 8, kGets = 300, kNames = 20;
	std::atomic<int> failures{0}, wrong{0};
	std::vector<std::thread> threads;
	for (int t = 0; t < kThreads; t++)
		threads.emplace_back([&, t] {
			for (int i = 0; i < kGets; i++) {
				// Skewed towards a few names, as real traffic is, so there are hits and evictions.
				const int n = (i * 7 + t) % (i % 3 ? 4 : kNames);
				const std::string host = "h" + std::to_string(n) + ".cursor.sh";
				auto leaf = cache.get(host);
				if (!leaf)
					failures++;
				else if (!names(**leaf, host))
					wrong++;
			}
		});
	for (auto &t : threads)
		t.join();
	EXPECT_EQ(failures.load(), 0);
	EXPECT_EQ(wrong.load(), 0);
	EXPECT_LE(cache.size(), 8u);
	EXPECT_GT(cache.hits(), 0u);
	EXPECT_GT(cache.evicted(), 0u);
	EXPECT_EQ(cache.minted() - cache.evicted(), cache.size());
}
