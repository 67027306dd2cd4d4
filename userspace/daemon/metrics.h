// Metrics in the Prometheus text exposition format (version 0.0.4): a small registry of counters,
// gauges and histograms with labels, and the set cordond keeps (DaemonMetrics).
//
// Everything here lives on the loop thread: updates are plain integer additions, and values kept
// elsewhere (the kernel's counters, the journal's and the recorder's threads, through their own
// thread-safe accessors) are copied in by collectors just before each render.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace cordon {

class Approvals;
class BufferPool;
class Journal;
class KernelPrograms;
class Recorder;
class RelayServer;
namespace policy {
struct Decision;
}

namespace metrics {

class Counter {
public:
	void inc(uint64_t n = 1) { value_ += n; }
	// For counters kept elsewhere (the kernel's, the journal's), copied in by a collector.
	void set(uint64_t v) { value_ = v; }
	uint64_t value() const { return value_; }

private:
	uint64_t value_ = 0;
};

class Gauge {
public:
	void set(double v) { value_ = v; }
	double value() const { return value_; }

private:
	double value_ = 0;
};

// Observations are integers in a unit of the caller's choice (microseconds, bytes), so the sum is
// exact; bounds and sum are rendered in the base unit (seconds), divided by `units_per_base`.
class Histogram {
public:
	explicit Histogram(const std::vector<uint64_t> &bounds) : bounds_(bounds), buckets_(bounds.size() + 1, 0) {}
	void observe(uint64_t v)
	{
		size_t i = 0;
		while (i < bounds_.size() && v > bounds_[i])
			i++;
		buckets_[i]++;
		sum_ += v;
		count_++;
	}
	uint64_t count() const { return count_; }
	uint64_t sum() const { return sum_; }
	// Observations in bucket `i` alone (not cumulative); the last one is +Inf.
	uint64_t bucket(size_t i) const { return buckets_[i]; }

private:
	const std::vector<uint64_t> &bounds_; // the family's
	std::vector<uint64_t> buckets_;
	uint64_t sum_ = 0, count_ = 0;
};

enum class Type { Counter, Gauge, Histogram };

// One metric name and its series, one per set of label values. Series are created on first use
// and never removed (label values come from fixed sets in the code, never from jobs).
class FamilyBase {
public:
	FamilyBase(Type type, std::string name, std::string help, std::vector<std::string> label_names)
	    : type_(type), name_(std::move(name)), help_(std::move(help)), label_names_(std::move(label_names))
	{}
	virtual ~FamilyBase() = default;
	const std::string &name() const { return name_; }
	Type type() const { return type_; }
	void render(std::string &out) const;

protected:
	// Label values in label order; compares with a view without building strings (lookups on the
	// request path allocate nothing once the series exists).
	struct KeyLess {
		using is_transparent = void;
		bool operator()(const std::vector<std::string> &a, const std::vector<std::string> &b) const
		{
			return a < b;
		}
		bool operator()(const std::vector<std::string> &a, std::span<const std::string_view> b) const
		{
			return std::lexicographical_compare(a.begin(), a.end(), b.begin(), b.end());
		}
		bool operator()(std::span<const std::string_view> a, const std::vector<std::string> &b) const
		{
			return std::lexicographical_compare(a.begin(), a.end(), b.begin(), b.end());
		}
	};
	void check_arity(size_t values) const;
	virtual void render_series(std::string &out, const std::string &labels, const void *series) const = 0;
	virtual void for_each(const std::function<void(const std::vector<std::string> &, const void *)> &fn) const = 0;

	Type type_;
	std::string name_, help_;
	std::vector<std::string> label_names_;
};

template <typename T> class Family : public FamilyBase {
public:
	using FamilyBase::FamilyBase;
	// The series with these label values (as many as the family has label names).
	T &with() { return with(std::span<const std::string_view>()); }
	T &with(std::initializer_list<std::string_view> values)
	{
		return with(std::span<const std::string_view>(values.begin(), values.size()));
	}
	T &with(std::span<const std::string_view> values)
	{
		auto it = series_.find(values);
		if (it != series_.end())
			return *it->second;
		check_arity(values.size());
		auto made = make();
		T &ref = *made;
		series_.emplace(std::vector<std::string>(values.begin(), values.end()), std::move(made));
		return ref;
	}
	size_t size() const { return series_.size(); }

protected:
	virtual std::unique_ptr<T> make() const = 0;
	void for_each(const std::function<void(const std::vector<std::string> &, const void *)> &fn) const override
	{
		for (const auto &[key, series] : series_)
			fn(key, series.get());
	}

private:
	std::map<std::vector<std::string>, std::unique_ptr<T>, KeyLess> series_;
};

class CounterFamily : public Family<Counter> {
public:
	using Family<Counter>::Family;

private:
	std::unique_ptr<Counter> make() const override { return std::make_unique<Counter>(); }
	void render_series(std::string &out, const std::string &labels, const void *series) const override;
};

class GaugeFamily : public Family<Gauge> {
public:
	using Family<Gauge>::Family;

private:
	std::unique_ptr<Gauge> make() const override { return std::make_unique<Gauge>(); }
	void render_series(std::string &out, const std::string &labels, const void *series) const override;
};

class HistogramFamily : public Family<Histogram> {
public:
	HistogramFamily(std::string name, std::string help, std::vector<std::string> label_names,
	                std::vector<uint64_t> bounds, uint64_t units_per_base);

private:
	std::unique_ptr<Histogram> make() const override { return std::make_unique<Histogram>(bounds_); }
	void render_series(std::string &out, const std::string &labels, const void *series) const override;
	std::vector<uint64_t> bounds_;
	uint64_t units_per_base_;
};

class Registry {
public:
	// Names follow Prometheus' rules ([a-zA-Z_:][a-zA-Z0-9_:]*, labels without ':' and not
	// starting with "__"); a bad or repeated name is a programming error (std::invalid_argument).
	CounterFamily &counter(std::string name, std::string help, std::vector<std::string> label_names = {});
	GaugeFamily &gauge(std::string name, std::string help, std::vector<std::string> label_names = {});
	HistogramFamily &histogram(std::string name, std::string help, std::vector<std::string> label_names,
	                           std::vector<uint64_t> bounds, uint64_t units_per_base);
	// Runs before every render: copies in values kept elsewhere.
	void on_collect(std::function<void()> collector) { collectors_.push_back(std::move(collector)); }
	// Every family in registration order, its series sorted by label values.
	std::string render();

private:
	void add(std::unique_ptr<FamilyBase> family);
	std::vector<std::unique_ptr<FamilyBase>> families_;
	std::vector<std::function<void()>> collectors_;
};

// Text format helpers, exposed for the tests.
std::string escape_label_value(std::string_view v);
std::string escape_help(std::string_view v);
// The shortest text that reads back as the same double; +Inf, -Inf, NaN as Prometheus writes them.
std::string format_double(double v);
bool valid_metric_name(std::string_view name);
bool valid_label_name(std::string_view name);

} // namespace metrics

// Where the scrape-time values come from; any of them may be null (then not exported).
struct MetricSources {
	const RelayServer *relay = nullptr;
	const BufferPool *pool = nullptr;
	KernelPrograms *kernel = nullptr;
	const Journal *journal = nullptr;
	const Approvals *approvals = nullptr;
	const Recorder *recorder = nullptr;
};

// cordond's metrics (README, "Metrics"). Loop thread only.
class DaemonMetrics {
public:
	DaemonMetrics();
	// Reads the scrape-time values (active connections, pending approvals, kernel counters, ...)
	// from these at every render.
	void watch(const MetricSources &sources);

	// A redirected connection was decided ("intercept", "passthrough", "refused", "none").
	void connection_opened(std::string_view mode) { connections_->with({mode}).inc(); }
	// It ended with this CORDON_RESULT; anything but a clean end is an error of that kind.
	void connection_closed(std::string_view result);
	// Refused before it became a connection ("connection_limit", "no_origin").
	void connection_rejected(std::string_view why) { errors_->with({why}).inc(); }
	// Bytes relayed toward Cursor (up) or toward the job (down), as the journal's
	// CORDON_BYTES_UP / CORDON_BYTES_DOWN count them.
	void add_bytes(bool up, uint64_t n) { (up ? bytes_up_ : bytes_down_)->inc(n); }
	// One HTTP exchange ended (the journal's request entry): `decision` null without policy.
	void request_done(std::string_view protocol, std::string_view result, const policy::Decision *decision,
	                  uint64_t masked, uint64_t unscanned, std::chrono::microseconds duration);
	void policy_reloaded(bool ok) { (ok ? reloads_ok_ : reloads_failed_)->inc(); }

	metrics::Registry &registry() { return registry_; }
	std::string render() { return registry_.render(); }

private:
	metrics::Registry registry_;
	metrics::CounterFamily *connections_, *requests_, *decisions_, *approvals_, *errors_;
	metrics::Counter *bytes_up_, *bytes_down_, *masked_, *unscanned_, *reloads_ok_, *reloads_failed_;
	metrics::Histogram *duration_;
};

} // namespace cordon
