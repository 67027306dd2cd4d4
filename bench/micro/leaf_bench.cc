// Leaf certificates: minting one (goal <= 1 ms) and a cache hit (goal <= 5 us), the two costs
// cordond pays per intercepted connection.
#include <benchmark/benchmark.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "tls/certificate_authority.h"
#include "tls/leaf_cache.h"

using namespace cordon::tls;
using namespace std::chrono_literals;

namespace {

// One CA for the whole run, in a temporary state directory removed at exit.
struct Fixture {
	std::string dir;
	std::unique_ptr<CertificateAuthority> ca;

	Fixture()
	{
		std::string tmpl = (std::filesystem::temp_directory_path() / "cordon-leaf-bench-XXXXXX").string();
		if (!::mkdtemp(tmpl.data()))
			std::abort();
		dir = tmpl;
		auto made = CertificateAuthority::load_or_create(dir + "/state");
		if (!made)
			std::abort();
		ca = std::make_unique<CertificateAuthority>(std::move(*made));
	}
	~Fixture()
	{
		std::error_code ec;
		std::filesystem::remove_all(dir, ec);
	}
};

Fixture &fixture()
{
	static Fixture f;
	return f;
}

void BM_MintLeaf(benchmark::State &state)
{
	const CertificateAuthority &ca = *fixture().ca;
	for (auto _ : state) {
		auto leaf = ca.issue_leaf("api2.cursor.sh", 24h);
		if (!leaf)
			state.SkipWithError(leaf.error().message().c_str());
		benchmark::DoNotOptimize(leaf);
	}
}
BENCHMARK(BM_MintLeaf)->Unit(benchmark::kMicrosecond);

// A miss through the cache: normalization, mint, insert, eviction (every name is new).
void BM_CacheMiss(benchmark::State &state)
{
	LeafCache cache(*fixture().ca, 64, 24h);
	uint64_t n = 0;
	for (auto _ : state) {
		auto leaf = cache.get("h" + std::to_string(n++) + ".cursor.sh");
		benchmark::DoNotOptimize(leaf);
	}
}
BENCHMARK(BM_CacheMiss)->Unit(benchmark::kMicrosecond);

// Hits on a full cache of the default size, from 1 and from several threads at once.
void BM_CacheHit(benchmark::State &state)
{
	static const std::unique_ptr<LeafCache> cache = [] {
		auto c = std::make_unique<LeafCache>(*fixture().ca, 4096, 24h);
		for (int i = 0; i < 4096; i++)
			(void)c->get("h" + std::to_string(i) + ".cursor.sh");
		return c;
	}();
	std::vector<std::string> names;
	for (int i = 0; i < 64; i++)
		names.push_back("h" + std::to_string((i * 61 + state.thread_index() * 7) % 4096) + ".cursor.sh");
	size_t i = 0;
	for (auto _ : state) {
		auto leaf = cache->get(names[i++ % names.size()]);
		benchmark::DoNotOptimize(leaf);
	}
}
BENCHMARK(BM_CacheHit)->Unit(benchmark::kNanosecond)->Threads(1)->Threads(4)->Threads(8)->UseRealTime();

} // namespace
