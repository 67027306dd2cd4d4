#include "daemon/metrics.h"

#include <charconv>
#include <cmath>
#include <set>
#include <stdexcept>

#include "bpf/kernel_programs.h"
#include "daemon/approvals.h"
#include "daemon/daemon.h"
#include "daemon/event_loop.h"
#include "daemon/journal.h"
#include "daemon/recorder.h"
#include "daemon/relay.h"
#include "policy/rules.h"

namespace cordon {
namespace metrics {
namespace {

const char *type_name(Type t)
{
	switch (t) {
	case Type::Counter:
		return "counter";
	case Type::Gauge:
		return "gauge";
	case Type::Histogram:
		return "histogram";
	}
	return "untyped";
}

bool name_char(char c, bool first, bool colon)
{
	const bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
	return alpha || (colon && c == ':') || (!first && c >= '0' && c <= '9');
}

// `name{labels,extra}` (no braces when both are empty).
void series_name(std::string &out, const std::string &name, std::string_view suffix, const std::string &labels,
                 std::string_view extra = {})
{
	out += name;
	out += suffix;
	if (labels.empty() && extra.empty())
		return;
	out += '{';
	out += labels;
	if (!labels.empty() && !extra.empty())
		out += ',';
	out += extra;
	out += '}';
}

} // namespace

bool valid_metric_name(std::string_view name)
{
	if (name.empty())
		return false;
	for (size_t i = 0; i < name.size(); i++)
		if (!name_char(name[i], i == 0, true))
			return false;
	return true;
}

bool valid_label_name(std::string_view name)
{
	if (name.empty() || name.substr(0, 2) == "__")
		return false;
	for (size_t i = 0; i < name.size(); i++)
		if (!name_char(name[i], i == 0, false))
			return false;
	return true;
}

std::string escape_label_value(std::string_view v)
{
	std::string out;
	out.reserve(v.size());
	for (char c : v) {
		if (c == '\\')
			out += "\\\\";
		else if (c == '"')
			out += "\\\"";
		else if (c == '\n')
			out += "\\n";
		else
			out += c;
	}
	return out;
}

std::string escape_help(std::string_view v)
{
	std::string out;
	out.reserve(v.size());
	for (char c : v) {
		if (c == '\\')
			out += "\\\\";
		else if (c == '\n')
			out += "\\n";
		else
			out += c;
	}
	return out;
}

std::string format_double(double v)
{
	if (std::isnan(v))
		return "NaN";
	if (std::isinf(v))
		return v > 0 ? "+Inf" : "-Inf";
	char buf[64];
	// Like Go's strconv 'g' with the shortest precision, which Prometheus' own clients use: plain
	// digits from 1e-4 up (so bucket bounds read "0.0001", "2.5", "60"), exponents beyond.
	const double magnitude = std::fabs(v);
	const auto format = magnitude == 0 || (magnitude >= 1e-4 && magnitude < 1e21) ? std::chars_format::fixed
	                                                                              : std::chars_format::scientific;
	auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), v, format);
	if (ec != std::errc())
		return "NaN"; // cannot happen with 64 bytes
	return std::string(buf, end);
}

void FamilyBase::check_arity(size_t values) const
{
	if (values != label_names_.size())
		throw std::invalid_argument("metric " + name_ + " has " + std::to_string(label_names_.size()) +
		                            " labels, got " + std::to_string(values) + " values");
}

void FamilyBase::render(std::string &out) const
{
	out += "# HELP " + name_ + " " + escape_help(help_) + "\n";
	out += "# TYPE " + name_ + " " + type_name(type_) + "\n";
	for_each([&](const std::vector<std::string> &values, const void *series) {
		std::string labels;
		for (size_t i = 0; i < values.size(); i++) {
			if (i)
				labels += ',';
			labels += label_names_[i] + "=\"" + escape_label_value(values[i]) + "\"";
		}
		render_series(out, labels, series);
	});
}

void CounterFamily::render_series(std::string &out, const std::string &labels, const void *series) const
{
	series_name(out, name_, "", labels);
	out += ' ' + std::to_string(static_cast<const Counter *>(series)->value()) + '\n';
}

void GaugeFamily::render_series(std::string &out, const std::string &labels, const void *series) const
{
	series_name(out, name_, "", labels);
	out += ' ' + format_double(static_cast<const Gauge *>(series)->value()) + '\n';
}

HistogramFamily::HistogramFamily(std::string name, std::string help, std::vector<std::string> label_names,
                                 std::vector<uint64_t> bounds, uint64_t units_per_base)
    : Family<Histogram>(Type::Histogram, std::move(name), std::move(help), std::move(label_names)),
      bounds_(std::move(bounds)), units_per_base_(units_per_base)
{
	if (units_per_base_ == 0 || bounds_.empty())
		throw std::invalid_argument("histogram " + name_ + " needs bounds and a unit");
	for (size_t i = 1; i < bounds_.size(); i++)
		if (bounds_[i] <= bounds_[i - 1])
			throw std::invalid_argument("histogram " + name_ + ": bounds must increase");
	for (const auto &l : label_names_)
		if (l == "le")
			throw std::invalid_argument("histogram " + name_ + ": 'le' is the bucket label");
}

void HistogramFamily::render_series(std::string &out, const std::string &labels, const void *series) const
{
	const auto &h = *static_cast<const Histogram *>(series);
	const double unit = static_cast<double>(units_per_base_);
	uint64_t cumulative = 0;
	for (size_t i = 0; i <= bounds_.size(); i++) {
		cumulative += h.bucket(i);
		const std::string le =
		    i < bounds_.size() ? format_double(static_cast<double>(bounds_[i]) / unit) : std::string("+Inf");
		series_name(out, name_, "_bucket", labels, "le=\"" + le + "\"");
		out += ' ' + std::to_string(cumulative) + '\n';
	}
	series_name(out, name_, "_sum", labels);
	out += ' ' + format_double(static_cast<double>(h.sum()) / unit) + '\n';
	series_name(out, name_, "_count", labels);
	out += ' ' + std::to_string(h.count()) + '\n';
}

void Registry::add(std::unique_ptr<FamilyBase> family)
{
	if (!valid_metric_name(family->name()))
		throw std::invalid_argument("invalid metric name '" + family->name() + "'");
	for (const auto &f : families_)
		if (f->name() == family->name())
			throw std::invalid_argument("metric " + family->name() + " registered twice");
	families_.push_back(std::move(family));
}

namespace {
void check_labels(const std::string &metric, const std::vector<std::string> &labels)
{
	std::set<std::string> seen;
	for (const auto &l : labels)
		if (!valid_label_name(l) || !seen.insert(l).second)
			throw std::invalid_argument("metric " + metric + ": invalid or repeated label '" + l + "'");
}
} // namespace

CounterFamily &Registry::counter(std::string name, std::string help, std::vector<std::string> label_names)
{
	check_labels(name, label_names);
	auto family =
	    std::make_unique<CounterFamily>(Type::Counter, std::move(name), std::move(help), std::move(label_names));
	CounterFamily &ref = *family;
	add(std::move(family));
	return ref;
}

GaugeFamily &Registry::gauge(std::string name, std::string help, std::vector<std::string> label_names)
{
	check_labels(name, label_names);
	auto family =
	    std::make_unique<GaugeFamily>(Type::Gauge, std::move(name), std::move(help), std::move(label_names));
	GaugeFamily &ref = *family;
	add(std::move(family));
	return ref;
}

HistogramFamily &Registry::histogram(std::string name, std::string help, std::vector<std::string> label_names,
                                     std::vector<uint64_t> bounds, uint64_t units_per_base)
{
	check_labels(name, label_names);
	auto family = std::make_unique<HistogramFamily>(std::move(name), std::move(help), std::move(label_names),
	                                                std::move(bounds), units_per_base);
	HistogramFamily &ref = *family;
	add(std::move(family));
	return ref;
}

std::string Registry::render()
{
	for (const auto &collect : collectors_)
		collect();
	std::string out;
	out.reserve(16384);
	for (const auto &f : families_)
		f->render(out);
	return out;
}

} // namespace metrics

namespace {

// Request latency from 100 µs to a minute; beyond that (held approvals, long streams) is +Inf.
const std::vector<uint64_t> kDurationBoundsUs = {100,     250,     500,     1000,     2500,     5000,
                                                 10000,   25000,   50000,   100000,   250000,   500000,
                                                 1000000, 2500000, 5000000, 10000000, 30000000, 60000000};

// Close results that are not errors: a clean end, cordond stopping, a refusal by policy (counted
// under connections), and a job that hung up during the handshake.
bool clean_close(std::string_view result)
{
	return result == "ok" || result == "shutdown" || result == "refused" || result == "client_closed";
}

} // namespace

DaemonMetrics::DaemonMetrics()
{
	using namespace metrics;
	registry_.gauge("cordon_build_info", "cordond's version; always 1", {"version"}).with({kCordonVersion}).set(1);
	registry_.gauge("cordon_start_time_seconds", "When cordond started, in seconds since the epoch")
	    .with()
	    .set(static_cast<double>(
	        std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
	            .count()));
	connections_ = &registry_.counter("cordon_connections_total",
	                                  "Redirected connections by what their ClientHello decided: intercept, "
	                                  "passthrough, refused, or none (closed before it)",
	                                  {"mode"});
	for (const char *mode : {"intercept", "passthrough", "refused", "none"})
		connections_->with({mode});
	auto &bytes = registry_.counter("cordon_bytes_total",
	                                "Bytes relayed toward Cursor (up) and toward the jobs (down)", {"direction"});
	bytes_up_ = &bytes.with({"up"});
	bytes_down_ = &bytes.with({"down"});
	requests_ = &registry_.counter("cordon_requests_total",
	                               "HTTP exchanges on intercepted connections, by RPC protocol and result "
	                               "(as the journal's CORDON_PROTO and CORDON_RESULT)",
	                               {"protocol", "result"});
	duration_ = &registry_
	                 .histogram("cordon_request_duration_seconds",
	                            "Time from a request's first byte to the end of its exchange", {},
	                            kDurationBoundsUs, 1000000)
	                 .with();
	decisions_ = &registry_.counter("cordon_decisions_total",
	                                "Requests by the action of the policy rule that decided them", {"action"});
	for (const char *action : {"allow", "block", "approve", "inject"})
		decisions_->with({action});
	approvals_ = &registry_.counter("cordon_approvals_total",
	                                "Requests an approve rule held, by how they ended: approved, granted, "
	                                "denied, timed_out (pending: the exchange ended while waiting)",
	                                {"outcome"});
	for (const char *outcome : {"approved", "granted", "denied", "timed_out"})
		approvals_->with({outcome});
	masked_ =
	    &registry_.counter("cordon_masked_secrets_total", "Secrets replaced by masking, both directions").with();
	unscanned_ = &registry_
	                  .counter("cordon_unscanned_total",
	                           "Messages or bodies masking could not inspect and let through by policy")
	                  .with();
	errors_ = &registry_.counter(
	    "cordon_errors_total",
	    "Connections that ended abnormally, by their close result (CORDON_RESULT), and connections "
	    "refused before they started (connection_limit, no_origin)",
	    {"kind"});
	for (const char *kind :
	     {"connection_limit", "no_origin", "upstream_timeout", "upstream_refused", "upstream_unreachable",
	      "upstream_closed", "upstream_reset", "upstream_tls_failed", "upstream_protocol_error", "client_reset",
	      "client_tls_failed", "client_protocol_error", "handshake_timeout", "idle_timeout", "stalled", "error"})
		errors_->with({kind});
	auto &reloads = registry_.counter("cordon_policy_reloads_total",
	                                  "Policy reloads (SIGHUP, cordonctl reload) by result", {"result"});
	reloads_ok_ = &reloads.with({"ok"});
	reloads_failed_ = &reloads.with({"failed"});
}

void DaemonMetrics::connection_closed(std::string_view result)
{
	if (!clean_close(result))
		errors_->with({result}).inc();
}

void DaemonMetrics::request_done(std::string_view protocol, std::string_view result, const policy::Decision *decision,
                                 uint64_t masked, uint64_t unscanned, std::chrono::microseconds duration)
{
	requests_->with({protocol, result}).inc();
	duration_->observe(duration.count() > 0 ? static_cast<uint64_t>(duration.count()) : 0);
	if (decision) {
		decisions_->with({policy::to_string(decision->action)}).inc();
		if (!decision->approval.empty())
			approvals_->with({decision->approval}).inc();
	}
	masked_->inc(masked);
	unscanned_->inc(unscanned);
}

void DaemonMetrics::watch(const MetricSources &s)
{
	using namespace metrics;
	if (const RelayServer *relay = s.relay) {
		Gauge &active = registry_.gauge("cordon_connections_active", "Redirected connections open now").with();
		registry_.on_collect([&active, relay] { active.set(static_cast<double>(relay->active())); });
	}
	if (const Approvals *approvals = s.approvals) {
		Gauge &pending =
		    registry_.gauge("cordon_approvals_pending", "Requests waiting for a person's approval now").with();
		registry_.on_collect([&pending, approvals] { pending.set(static_cast<double>(approvals->pending())); });
	}
	if (const BufferPool *pool = s.pool) {
		Gauge &total = registry_.gauge("cordon_relay_buffers", "Relay receive buffers").with();
		Gauge &used = registry_.gauge("cordon_relay_buffers_in_use", "Relay receive buffers in use now").with();
		registry_.on_collect([&total, &used, pool] {
			total.set(pool->count());
			used.set(pool->in_use());
		});
	}
	if (const Journal *journal = s.journal) {
		Counter &written = registry_.counter("cordon_journal_entries_total", "Journal entries written").with();
		Counter &dropped =
		    registry_
		        .counter("cordon_journal_dropped_total", "Journal entries dropped because the queue was full")
		        .with();
		registry_.on_collect([&written, &dropped, journal] {
			written.set(journal->written());
			dropped.set(journal->dropped());
		});
	}
	if (const Recorder *recorder = s.recorder) {
		Counter &records =
		    registry_.counter("cordon_recording_records_total", "Session records written").with();
		Counter &bytes =
		    registry_.counter("cordon_recording_bytes_total", "Session record bytes written").with();
		Counter &lost =
		    registry_.counter("cordon_recording_lost_total", "Session records lost (queue full, write failed)")
		        .with();
		Gauge &failed =
		    registry_.gauge("cordon_recording_failed", "1 while recordings cannot be written, else 0").with();
		registry_.on_collect([&records, &bytes, &lost, &failed, recorder] {
			const Recorder::Stats st = recorder->stats(); // thread-safe: the writer thread updates it
			records.set(st.records);
			bytes.set(st.bytes);
			lost.set(st.lost);
			failed.set(recorder->failed() ? 1 : 0);
		});
	}
	if (KernelPrograms *kernel = s.kernel) {
		std::vector<Counter *> counters;
		for (int i = 0; i < CORDON_CTR__COUNT; i++)
			counters.push_back(&registry_
			                        .counter(std::string("cordon_bpf_") + counter_name(i) + "_total",
			                                 std::string("The kernel programs' counter ") +
			                                     counter_name(i) +
			                                     " (kept in the pinned map: survives restarts)")
			                        .with());
		registry_.on_collect([counters, kernel] {
			// A failed read leaves the last values: counters must never go backwards.
			if (auto c = kernel->counters())
				for (size_t i = 0; i < counters.size(); i++)
					counters[i]->set((*c)[i]);
		});
	}
}

} // namespace cordon
