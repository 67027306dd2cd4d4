// Metrics on the request path: what one finished request adds to cordond's counters (the
// requests/decisions series lookups, the histogram, masking totals), what a relayed chunk adds
// (one byte counter), and what one scrape costs the loop (rendering every family).
#include <benchmark/benchmark.h>

#include <string>

#include "daemon/metrics.h"
#include "policy/rules.h"

using namespace cordon;

namespace {

void BM_MetricsRequestDone(benchmark::State &state)
{
	DaemonMetrics m;
	policy::Decision allow;
	// Several series already exist, as in a running daemon.
	const char *results[] = {"ok", "refused", "client_reset", "upstream_error"};
	const char *protocols[] = {"connect_unary", "connect_stream", "grpc", "rest"};
	for (const char *p : protocols)
		for (const char *r : results)
			m.request_done(p, r, &allow, 0, 0, std::chrono::microseconds(1));
	uint64_t i = 0;
	for (auto _ : state) {
		m.request_done(protocols[i & 3], results[(i >> 2) & 3], &allow, i & 1, 0,
		               std::chrono::microseconds(static_cast<int64_t>(i % 100000)));
		i++;
	}
	benchmark::DoNotOptimize(m.registry());
}
BENCHMARK(BM_MetricsRequestDone);

void BM_MetricsAddBytes(benchmark::State &state)
{
	DaemonMetrics m;
	uint64_t i = 0;
	for (auto _ : state)
		m.add_bytes((++i & 1) != 0, 16384);
	benchmark::DoNotOptimize(m.registry());
}
BENCHMARK(BM_MetricsAddBytes);

void BM_MetricsRender(benchmark::State &state)
{
	DaemonMetrics m;
	policy::Decision allow;
	for (const char *p : {"connect_unary", "connect_stream", "grpc", "grpc_web", "sse", "rest", "other"})
		for (const char *r : {"ok", "refused", "bad_input", "client_reset", "upstream_reset", "upstream_error"})
			m.request_done(p, r, &allow, 0, 0, std::chrono::microseconds(1000));
	size_t bytes = 0;
	for (auto _ : state) {
		std::string text = m.render();
		bytes = text.size();
		benchmark::DoNotOptimize(text);
	}
	state.counters["bytes"] = static_cast<double>(bytes);
}
BENCHMARK(BM_MetricsRender);

} // namespace
