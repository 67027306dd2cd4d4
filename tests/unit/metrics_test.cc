// Metrics: the registry renders the Prometheus text format (0.0.4) exactly, a strict parser of
// that format accepts everything cordond renders, the daemon's counters move as the data path
// reports, and the HTTP endpoint answers scrapes, refuses the rest and never lets a scraper hold a
// slot for long.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <set>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "common/address.h"
#include "common/unique_fd.h"
#include "config/policy.h"
#include "daemon/daemon.h"
#include "daemon/event_loop.h"
#include "daemon/metrics.h"
#include "daemon/metrics_server.h"
#include "policy/rules.h"

using namespace cordon;

namespace {

// --- a strict parser of the text exposition format, version 0.0.4 ---------------------------------

struct Sample {
	std::string name;
	std::map<std::string, std::string> labels;
	double value = 0;
};

struct Family {
	std::string name, help, type;
	std::vector<Sample> samples;
};

bool metric_name_ok(const std::string &n)
{
	if (n.empty() || std::isdigit(static_cast<unsigned char>(n[0])))
		return false;
	for (char c : n)
		if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_' && c != ':')
			return false;
	return true;
}

bool label_name_ok(const std::string &n)
{
	return metric_name_ok(n) && n.find(':') == std::string::npos && n.rfind("__", 0) != 0;
}

// A float as Go's strconv.ParseFloat reads it (what Prometheus uses), plus its special spellings.
bool parse_value(const std::string &text, double &out)
{
	if (text == "+Inf" || text == "Inf") {
		out = INFINITY;
		return true;
	}
	if (text == "-Inf") {
		out = -INFINITY;
		return true;
	}
	if (text == "NaN") {
		out = NAN;
		return true;
	}
	if (text.empty() || text.find_first_not_of("0123456789.eE+-") != std::string::npos)
		return false;
	char *end = nullptr;
	out = std::strtod(text.c_str(), &end);
	return end == text.c_str() + text.size();
}

// Unescapes a label value or HELP text; only the escapes the format defines are allowed.
bool unescape(const std::string &in, bool quotes, std::string &out)
{
	out.clear();
	for (size_t i = 0; i < in.size(); i++) {
		if (in[i] != '\\') {
			out += in[i];
			continue;
		}
		if (++i == in.size())
			return false;
		if (in[i] == '\\')
			out += '\\';
		else if (in[i] == 'n')
			out += '\n';
		else if (quotes && in[i] == '"')
			out += '"';
		else
			return false;
	}
	return true;
}

// Throws std::runtime_error naming the line on anything the format does not allow. Stricter than
// Prometheus in one way: every sample needs a TYPE (cordond never writes untyped metrics).
std::vector<Family> parse_exposition(const std::string &text)
{
	auto fail = [](size_t line, const std::string &why) {
		throw std::runtime_error("line " + std::to_string(line) + ": " + why);
	};
	if (text.empty() || text.back() != '\n')
		fail(0, "the text must end with a newline");
	std::vector<Family> families;
	std::map<std::string, size_t> index; // family name -> position
	std::set<std::string> series;        // name{sorted labels}: each once
	auto family_of = [&](const std::string &name) -> Family * {
		auto it = index.find(name);
		return it == index.end() ? nullptr : &families[it->second];
	};
	std::istringstream in(text);
	std::string line;
	size_t n = 0;
	while (std::getline(in, line)) {
		n++;
		if (line.empty())
			continue;
		if (line[0] == '#') {
			std::istringstream words(line);
			std::string hash, kind, name;
			words >> hash >> kind >> name;
			if (hash != "#" || (kind != "HELP" && kind != "TYPE"))
				continue; // a comment
			if (!metric_name_ok(name))
				fail(n, "bad metric name '" + name + "'");
			Family *f = family_of(name);
			if (!f) {
				index[name] = families.size();
				families.push_back(Family{name, "", "", {}});
				f = &families.back();
			} else if (&families.back() != f || !f->samples.empty()) {
				fail(n, kind + " for " + name + " after its samples or another family");
			}
			const std::string prefix = "# " + kind + " " + name;
			std::string rest = line.size() > prefix.size() ? line.substr(prefix.size() + 1) : "";
			if (line.size() > prefix.size() && line[prefix.size()] != ' ')
				fail(n, "expected a space after the name");
			if (kind == "HELP") {
				if (!f->help.empty())
					fail(n, "a second HELP for " + name);
				if (!unescape(rest, false, f->help))
					fail(n, "bad escape in HELP");
			} else {
				if (!f->type.empty())
					fail(n, "a second TYPE for " + name);
				static const std::set<std::string> types = {"counter", "gauge", "histogram", "summary",
				                                            "untyped"};
				if (!types.count(rest))
					fail(n, "unknown type '" + rest + "'");
				f->type = rest;
			}
			continue;
		}
		// name [{labels}] value [timestamp]
		size_t i = 0;
		while (i < line.size() && line[i] != '{' && line[i] != ' ')
			i++;
		Sample s;
		s.name = line.substr(0, i);
		if (!metric_name_ok(s.name))
			fail(n, "bad sample name '" + s.name + "'");
		if (i < line.size() && line[i] == '{') {
			i++;
			while (true) {
				if (i < line.size() && line[i] == '}') {
					i++;
					break;
				}
				size_t eq = line.find('=', i);
				if (eq == std::string::npos)
					fail(n, "expected label=\"value\"");
				std::string label = line.substr(i, eq - i);
				if (!label_name_ok(label))
					fail(n, "bad label name '" + label + "'");
				if (eq + 1 >= line.size() || line[eq + 1] != '"')
					fail(n, "label value must be quoted");
				size_t j = eq + 2;
				std::string raw;
				while (j < line.size() && line[j] != '"') {
					if (line[j] == '\\' && j + 1 < line.size())
						raw += line[j++];
					raw += line[j++];
				}
				if (j >= line.size())
					fail(n, "unterminated label value");
				std::string value;
				if (!unescape(raw, true, value))
					fail(n, "bad escape in a label value");
				if (!s.labels.emplace(label, value).second)
					fail(n, "label " + label + " twice");
				i = j + 1;
				if (i < line.size() && line[i] == ',')
					i++;
				else if (i >= line.size() || line[i] != '}')
					fail(n, "expected ',' or '}' after a label");
			}
		}
		if (i >= line.size() || line[i] != ' ')
			fail(n, "expected a space before the value");
		std::string rest = line.substr(i + 1);
		std::string value = rest.substr(0, rest.find(' '));
		if (!parse_value(value, s.value))
			fail(n, "bad value '" + value + "'");
		if (rest.find(' ') != std::string::npos) {
			std::string ts = rest.substr(rest.find(' ') + 1);
			if (ts.empty() || ts.find_first_not_of("-0123456789") != std::string::npos)
				fail(n, "bad timestamp '" + ts + "'");
		}
		// The family this sample belongs to: the last one declared.
		if (families.empty())
			fail(n, "a sample before any TYPE");
		Family &f = families.back();
		bool belongs = s.name == f.name;
		if (f.type == "histogram")
			belongs =
			    s.name == f.name + "_bucket" || s.name == f.name + "_sum" || s.name == f.name + "_count";
		if (!belongs)
			fail(n, "sample " + s.name + " outside its family's group (last family: " + f.name + ")");
		if (f.type.empty())
			fail(n, "sample of " + f.name + " before its TYPE");
		if (f.type == "counter" && !(s.value >= 0))
			fail(n, "a negative counter");
		std::string key = s.name + "{";
		for (const auto &[k, v] : s.labels)
			key += k + "=" + v + ",";
		if (!series.insert(key).second)
			fail(n, "series " + key + "} twice");
		f.samples.push_back(std::move(s));
	}
	// Histograms: per label set, buckets with increasing bounds, cumulative counts, +Inf == _count.
	for (const Family &f : families) {
		if (f.type != "histogram")
			continue;
		struct Series {
			std::vector<std::pair<double, double>> buckets; // le, count
			bool has_sum = false, has_count = false;
			double count = 0;
		};
		std::map<std::map<std::string, std::string>, Series> by_labels;
		for (const Sample &s : f.samples) {
			auto labels = s.labels;
			if (s.name == f.name + "_bucket") {
				auto le = labels.find("le");
				double bound = 0;
				if (le == labels.end() || !parse_value(le->second, bound))
					fail(0, f.name + ": a bucket without a valid le");
				labels.erase(le);
				by_labels[labels].buckets.emplace_back(bound, s.value);
			} else if (s.name == f.name + "_sum") {
				by_labels[labels].has_sum = true;
			} else {
				by_labels[labels].has_count = true;
				by_labels[labels].count = s.value;
			}
		}
		for (const auto &[labels, h] : by_labels) {
			if (!h.has_sum || !h.has_count || h.buckets.empty())
				fail(0, f.name + ": a histogram needs buckets, _sum and _count");
			for (size_t k = 1; k < h.buckets.size(); k++)
				if (!(h.buckets[k].first > h.buckets[k - 1].first) ||
				    h.buckets[k].second < h.buckets[k - 1].second)
					fail(0, f.name + ": buckets must grow in le and in count");
			if (!std::isinf(h.buckets.back().first) || h.buckets.back().second != h.count)
				fail(0, f.name + ": the +Inf bucket must exist and equal _count");
		}
	}
	return families;
}

const Sample *find(const std::vector<Family> &families, const std::string &name,
                   const std::map<std::string, std::string> &labels = {})
{
	for (const auto &f : families)
		for (const auto &s : f.samples)
			if (s.name == name && s.labels == labels)
				return &s;
	return nullptr;
}

double value_of(const std::vector<Family> &families, const std::string &name,
                const std::map<std::string, std::string> &labels = {})
{
	const Sample *s = find(families, name, labels);
	if (!s)
		throw std::runtime_error("no sample " + name);
	return s->value;
}

} // namespace

// --- the parser itself rejects what the format forbids ----------------------------------------------

TEST(MetricsParser, RejectsMalformedExpositions)
{
	EXPECT_NO_THROW(parse_exposition("# HELP a_total x\n# TYPE a_total counter\na_total{b=\"c\"} 1\n"));
	for (const char *bad : {
	         "a 1",                                        // no final newline
	         "# TYPE a counter\na{b=c} 1\n",               // unquoted value
	         "# TYPE a counter\na{b=\"c\\x\"} 1\n",        // unknown escape
	         "# TYPE a counter\na{__b=\"c\"} 1\n",         // reserved label
	         "# TYPE a counter\na 1\na 2\n",               // series twice
	         "# TYPE a counter\na -1\n",                   // negative counter
	         "# TYPE a counter\na one\n",                  // not a number
	         "# TYPE a gauge\n# TYPE b gauge\nb 1\na 1\n", // a group split
	         "# TYPE 1a gauge\n",                          // bad name
	         "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 0\nh_count 1\n",
	         "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 0\nh_count 1\n", // no +Inf
	     })
		EXPECT_THROW(parse_exposition(bad), std::runtime_error) << bad;
}

// --- rendering ----------------------------------------------------------------------------------------

TEST(Metrics, EscapesAndNumbersAsTheFormatWantsThem)
{
	EXPECT_EQ(metrics::escape_label_value("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
	EXPECT_EQ(metrics::escape_help("a\\b\"c\nd"), "a\\\\b\"c\\nd");
	EXPECT_EQ(metrics::format_double(0), "0");
	EXPECT_EQ(metrics::format_double(0.0001), "0.0001");
	EXPECT_EQ(metrics::format_double(0.00025), "0.00025");
	EXPECT_EQ(metrics::format_double(2.5), "2.5");
	EXPECT_EQ(metrics::format_double(60), "60");
	EXPECT_EQ(metrics::format_double(1e-05), "1e-05");
	EXPECT_EQ(metrics::format_double(INFINITY), "+Inf");
	EXPECT_EQ(metrics::format_double(-INFINITY), "-Inf");
	EXPECT_EQ(metrics::format_double(NAN), "NaN");
	double back = 0;
	for (double v : {0.1, 1.0 / 3, 123456.789, 1e300, 5e-324}) {
		ASSERT_TRUE(parse_value(metrics::format_double(v), back)) << v;
		EXPECT_EQ(back, v);
	}
	EXPECT_TRUE(metrics::valid_metric_name("cordon_bytes_total"));
	EXPECT_TRUE(metrics::valid_metric_name("a:b"));
	EXPECT_FALSE(metrics::valid_metric_name("9a"));
	EXPECT_FALSE(metrics::valid_metric_name("a-b"));
	EXPECT_FALSE(metrics::valid_metric_name(""));
	EXPECT_TRUE(metrics::valid_label_name("direction"));
	EXPECT_FALSE(metrics::valid_label_name("__name__"));
	EXPECT_FALSE(metrics::valid_label_name("a:b"));
}

TEST(Metrics, RegistryRendersTheExpositionFormatExactly)
{
	metrics::Registry r;
	auto &requests = r.counter("t_requests_total", "Requests\nby \\result", {"protocol", "result"});
	requests.with({"grpc", "ok"}).inc(2);
	requests.with({"connect_unary", "ok"}).inc();
	requests.with({"grpc", "ok"}).inc(); // the same series
	requests.with({"rest", "a\"b"}).inc();
	r.gauge("t_active", "Open now").with().set(3);
	auto &h = r.histogram("t_duration_seconds", "Latency", {}, {100, 2500, 1000000}, 1000000).with();
	h.observe(100);     // on a bound: that bucket (le means <=)
	h.observe(101);     // the next one
	h.observe(3000000); // beyond the last: +Inf only
	int collected = 0;
	r.on_collect([&] { collected++; });
	const std::string text = r.render();
	EXPECT_EQ(collected, 1);
	EXPECT_EQ(text, "# HELP t_requests_total Requests\\nby \\\\result\n"
	                "# TYPE t_requests_total counter\n"
	                "t_requests_total{protocol=\"connect_unary\",result=\"ok\"} 1\n"
	                "t_requests_total{protocol=\"grpc\",result=\"ok\"} 3\n"
	                "t_requests_total{protocol=\"rest\",result=\"a\\\"b\"} 1\n"
	                "# HELP t_active Open now\n"
	                "# TYPE t_active gauge\n"
	                "t_active 3\n"
	                "# HELP t_duration_seconds Latency\n"
	                "# TYPE t_duration_seconds histogram\n"
	                "t_duration_seconds_bucket{le=\"0.0001\"} 1\n"
	                "t_duration_seconds_bucket{le=\"0.0025\"} 2\n"
	                "t_duration_seconds_bucket{le=\"1\"} 2\n"
	                "t_duration_seconds_bucket{le=\"+Inf\"} 3\n"
	                "t_duration_seconds_sum 3.000201\n"
	                "t_duration_seconds_count 3\n");
	auto parsed = parse_exposition(text);
	ASSERT_EQ(parsed.size(), 3u);
	EXPECT_EQ(parsed[0].help, "Requests\nby \\result");
	EXPECT_EQ(value_of(parsed, "t_requests_total", {{"protocol", "rest"}, {"result", "a\"b"}}), 1);
}

TEST(Metrics, ProgrammingErrorsAreCaughtAtRegistration)
{
	metrics::Registry r;
	r.counter("ok_total", "x");
	EXPECT_THROW(r.counter("ok_total", "again"), std::invalid_argument);
	EXPECT_THROW(r.counter("bad-name", "x"), std::invalid_argument);
	EXPECT_THROW(r.counter("bad_label_total", "x", {"__reserved"}), std::invalid_argument);
	EXPECT_THROW(r.counter("twice_total", "x", {"a", "a"}), std::invalid_argument);
	EXPECT_THROW(r.histogram("h", "x", {"le"}, {1, 2}, 1), std::invalid_argument);
	EXPECT_THROW(r.histogram("h2", "x", {}, {2, 1}, 1), std::invalid_argument);
	auto &labelled = r.counter("labelled_total", "x", {"a", "b"});
	EXPECT_THROW(labelled.with({"only-one"}), std::invalid_argument);
	EXPECT_EQ(labelled.size(), 0u);
}

TEST(Metrics, DaemonMetricsCountWhatTheDataPathReports)
{
	DaemonMetrics m;
	m.watch({}); // no sources: nothing read at scrape time
	auto before = parse_exposition(m.render());
	// Every labelled family starts with its known series at 0, so rate() works from the start.
	EXPECT_EQ(value_of(before, "cordon_decisions_total", {{"action", "block"}}), 0);
	EXPECT_EQ(value_of(before, "cordon_connections_total", {{"mode", "intercept"}}), 0);
	EXPECT_EQ(value_of(before, "cordon_errors_total", {{"kind", "upstream_tls_failed"}}), 0);
	EXPECT_EQ(value_of(before, "cordon_build_info", {{"version", kCordonVersion}}), 1);
	EXPECT_EQ(value_of(before, "cordon_request_duration_seconds_count"), 0);

	m.connection_opened("intercept");
	m.connection_opened("passthrough");
	m.connection_closed("ok");
	m.connection_closed("refused");
	m.connection_closed("upstream_refused");
	m.connection_closed("client_tls_failed");
	m.connection_rejected("connection_limit");
	m.add_bytes(true, 1000);
	m.add_bytes(false, 5);
	m.add_bytes(true, 24);
	policy::Decision allow, block, approved;
	block.action = policy::Action::Block;
	approved.action = policy::Action::Approve;
	approved.approval = "approved";
	m.request_done("connect_unary", "ok", &allow, 2, 0, std::chrono::microseconds(1500));
	m.request_done("connect_unary", "refused", &block, 0, 0, std::chrono::microseconds(80));
	m.request_done("rest", "ok", &approved, 0, 1, std::chrono::seconds(90));
	m.request_done("grpc", "ok", nullptr, 0, 0, std::chrono::microseconds(-5)); // a clock step: 0
	m.policy_reloaded(true);
	m.policy_reloaded(false);
	m.policy_reloaded(false);

	auto after = parse_exposition(m.render());
	EXPECT_EQ(value_of(after, "cordon_connections_total", {{"mode", "intercept"}}), 1);
	EXPECT_EQ(value_of(after, "cordon_connections_total", {{"mode", "passthrough"}}), 1);
	EXPECT_EQ(value_of(after, "cordon_errors_total", {{"kind", "upstream_refused"}}), 1);
	EXPECT_EQ(value_of(after, "cordon_errors_total", {{"kind", "client_tls_failed"}}), 1);
	EXPECT_EQ(value_of(after, "cordon_errors_total", {{"kind", "connection_limit"}}), 1);
	EXPECT_EQ(find(after, "cordon_errors_total", {{"kind", "ok"}}), nullptr);
	EXPECT_EQ(find(after, "cordon_errors_total", {{"kind", "refused"}}), nullptr);
	EXPECT_EQ(value_of(after, "cordon_bytes_total", {{"direction", "up"}}), 1024);
	EXPECT_EQ(value_of(after, "cordon_bytes_total", {{"direction", "down"}}), 5);
	EXPECT_EQ(value_of(after, "cordon_requests_total", {{"protocol", "connect_unary"}, {"result", "ok"}}), 1);
	EXPECT_EQ(value_of(after, "cordon_requests_total", {{"protocol", "connect_unary"}, {"result", "refused"}}), 1);
	EXPECT_EQ(value_of(after, "cordon_decisions_total", {{"action", "allow"}}), 1);
	EXPECT_EQ(value_of(after, "cordon_decisions_total", {{"action", "block"}}), 1);
	EXPECT_EQ(value_of(after, "cordon_decisions_total", {{"action", "approve"}}), 1);
	EXPECT_EQ(value_of(after, "cordon_approvals_total", {{"outcome", "approved"}}), 1);
	EXPECT_EQ(value_of(after, "cordon_masked_secrets_total"), 2);
	EXPECT_EQ(value_of(after, "cordon_unscanned_total"), 1);
	EXPECT_EQ(value_of(after, "cordon_request_duration_seconds_count"), 4);
	EXPECT_DOUBLE_EQ(value_of(after, "cordon_request_duration_seconds_sum"), 90.00158);
	EXPECT_EQ(value_of(after, "cordon_request_duration_seconds_bucket", {{"le", "0.0001"}}), 2); // 80 µs, 0
	EXPECT_EQ(value_of(after, "cordon_request_duration_seconds_bucket", {{"le", "0.0025"}}), 3);
	EXPECT_EQ(value_of(after, "cordon_request_duration_seconds_bucket", {{"le", "60"}}), 3);
	EXPECT_EQ(value_of(after, "cordon_request_duration_seconds_bucket", {{"le", "+Inf"}}), 4);
	EXPECT_EQ(value_of(after, "cordon_policy_reloads_total", {{"result", "ok"}}), 1);
	EXPECT_EQ(value_of(after, "cordon_policy_reloads_total", {{"result", "failed"}}), 2);
	// Every name is cordon's, every family typed and documented.
	for (const auto &f : after) {
		EXPECT_EQ(f.name.rfind("cordon_", 0), 0u) << f.name;
		EXPECT_FALSE(f.help.empty()) << f.name;
		if (f.type == "counter") {
			EXPECT_TRUE(f.name.ends_with("_total")) << f.name;
		}
	}
}

// --- configuration ---------------------------------------------------------------------------------------

TEST(Metrics, ListenEndpointsParseAndTheirErrorsNameTheLine)
{
	auto unix = ListenEndpoint::parse("unix:/run/cordon/metrics.sock");
	ASSERT_TRUE(unix) << unix.error().message();
	EXPECT_TRUE(unix->is_unix());
	EXPECT_EQ(unix->to_string(), "unix:/run/cordon/metrics.sock");
	auto v4 = ListenEndpoint::parse("127.0.0.1:9464");
	ASSERT_TRUE(v4);
	EXPECT_EQ(v4->inet.port, 9464);
	EXPECT_EQ(ListenEndpoint::parse("[::1]:9464")->to_string(), "[::1]:9464");
	for (const char *bad : {"unix:", "unix:relative", "127.0.0.1", "127.0.0.1:0", "localhost:9464", "[::1]:99999",
	                        "tcp://127.0.0.1:9464"})
		EXPECT_FALSE(ListenEndpoint::parse(bad)) << bad;
	EXPECT_FALSE(ListenEndpoint::parse("unix:/" + std::string(200, 'x')));

	auto defaults = load_policy_text("", "<default>");
	ASSERT_TRUE(defaults);
	EXPECT_EQ(defaults->daemon().metrics_listen(), "unix:/run/cordon/metrics.sock");
	auto off = load_policy_text("daemon:\n  metrics_listen: \"\"\n", "policy.yaml");
	ASSERT_TRUE(off) << off.error().message();
	EXPECT_EQ(off->daemon().metrics_listen(), "");
	auto bad = load_policy_text("daemon:\n  metrics_listen: \"0.0.0.0\"\n", "policy.yaml");
	ASSERT_FALSE(bad);
	EXPECT_EQ(bad.error().message().rfind("policy.yaml:2:19: 'metrics_listen':", 0), 0u) << bad.error().message();
	// The effective-policy printer writes it back in a form the loader takes again.
	auto v6 = load_policy_text("daemon:\n  metrics_listen: \"[::1]:9464\"\n", "policy.yaml");
	ASSERT_TRUE(v6);
	auto again = load_policy_text(policy_to_yaml(*v6), "printed");
	ASSERT_TRUE(again) << again.error().message();
	EXPECT_EQ(again->daemon().metrics_listen(), "[::1]:9464");
}

// --- HTTP ------------------------------------------------------------------------------------------------

TEST(MetricsHttp, OnlyGetAndHeadOfMetricsSucceed)
{
	auto status = [](const char *head) { return answer_metrics_request(head).status; };
	EXPECT_EQ(status("GET /metrics HTTP/1.1\r\nHost: x"), 200);
	EXPECT_EQ(status("GET /metrics?x=1 HTTP/1.0"), 200);
	EXPECT_EQ(status("GET /metrics HTTP/1.1\nAccept: */*"), 200);
	EXPECT_FALSE(answer_metrics_request("HEAD /metrics HTTP/1.1").body);
	EXPECT_EQ(status("GET / HTTP/1.1"), 404);
	EXPECT_EQ(status("GET /metricsx HTTP/1.1"), 404);
	EXPECT_EQ(status("POST /metrics HTTP/1.1"), 405);
	EXPECT_EQ(status("GET /metrics"), 400);
	EXPECT_EQ(status("GET  /metrics HTTP/1.1"), 400);
	EXPECT_EQ(status("GET /metrics HTTP/2"), 400);
	EXPECT_EQ(status("\x16\x03\x01"), 400);
	EXPECT_EQ(status(""), 400);

	const std::string ok = metrics_http_response({200, true}, "a 1\n");
	EXPECT_EQ(ok, "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
	              "Content-Length: 4\r\nCache-Control: no-store\r\nConnection: close\r\n\r\na 1\n");
	const std::string head = metrics_http_response({200, false}, "a 1\n");
	EXPECT_NE(head.find("Content-Length: 4\r\n"), std::string::npos);
	EXPECT_TRUE(head.ends_with("\r\n\r\n"));
	EXPECT_NE(metrics_http_response({405, true}, "").find("Allow: GET, HEAD\r\n"), std::string::npos);
}

namespace {

// Stops the loop once `done` is set (checked every 10 ms), or after 20 s whatever happens.
class StopWhen : public IoHandler {
public:
	explicit StopWhen(std::atomic<bool> &done) : done_(done) {}
	void arm()
	{
		tick_.tv_nsec = 10 * 1000 * 1000;
		io_uring_prep_timeout(loop().prepare(*this, 1), &tick_, 0, 0);
	}
	void on_completion(uint8_t op, int, uint32_t) override
	{
		if (op != 1 || finished())
			return;
		if (done_.load() || ++ticks_ > 2000)
			return loop().stop();
		arm();
	}
	void on_stop() override
	{
		loop().cancel_op(*this, 1, 2);
		mark_finished();
	}

private:
	std::atomic<bool> &done_;
	__kernel_timespec tick_{};
	int ticks_ = 0;
};

UniqueFd connect_unix(const std::string &path)
{
	UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
	sockaddr_un addr{};
	addr.sun_family = AF_UNIX;
	std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path.c_str());
	if (::connect(fd.get(), reinterpret_cast<sockaddr *>(&addr), sizeof(addr)) != 0)
		return UniqueFd();
	timeval tv{5, 0};
	::setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	return fd;
}

// Everything until the server closes (or 5 s pass).
std::string read_all(int fd)
{
	std::string out;
	char buf[4096];
	ssize_t n;
	while ((n = ::recv(fd, buf, sizeof(buf), 0)) > 0)
		out.append(buf, static_cast<size_t>(n));
	return out;
}

std::string scrape(const std::string &path, const std::string &request)
{
	UniqueFd fd = connect_unix(path);
	if (!fd)
		return "connect failed";
	if (::send(fd.get(), request.data(), request.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(request.size()))
		return "send failed";
	return read_all(fd.get());
}

struct TempDir {
	std::string path;
	TempDir()
	{
		char tmpl[] = "/tmp/cordon-metrics-test-XXXXXX";
		path = ::mkdtemp(tmpl);
	}
	~TempDir() { std::filesystem::remove_all(path); }
};

} // namespace

TEST(MetricsServer, ServesScrapesOnAPrivateUnixSocketAndBoundsEverything)
{
	TempDir dir;
	const std::string path = dir.path + "/metrics.sock";
	auto loop = EventLoop::create(256);
	ASSERT_TRUE(loop) << loop.error().message();
	int renders = 0;
	std::atomic<bool> done{false};
	std::map<std::string, std::string> got;
	size_t busy_answers = 0, closed_by_deadline = 0;
	{
		MetricsServer server(
		    **loop, *ListenEndpoint::parse("unix:" + path),
		    [&renders] {
			    renders++;
			    return std::string("# HELP x_total X\n# TYPE x_total counter\nx_total 7\n");
		    },
		    std::chrono::milliseconds(300));
		Status st = server.start();
		ASSERT_TRUE(st) << st.error().message();
		struct stat sb;
		ASSERT_EQ(::lstat(path.c_str(), &sb), 0);
		EXPECT_TRUE(S_ISSOCK(sb.st_mode));
		EXPECT_EQ(sb.st_mode & 0777, 0600u); // the numbers reveal activity: root only

		// A second server on the same live socket is refused; the first keeps it.
		MetricsServer second(**loop, *ListenEndpoint::parse("unix:" + path), [] { return std::string(); });
		Status clash = second.start();
		ASSERT_FALSE(clash);
		EXPECT_NE(clash.error().message().find("another process is answering"), std::string::npos);

		auto &stopper = static_cast<StopWhen &>((*loop)->add(std::make_unique<StopWhen>(done)));
		stopper.arm();
		std::thread client([&] {
			got["get"] = scrape(path, "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n");
			got["head"] = scrape(path, "HEAD /metrics HTTP/1.1\r\n\r\n");
			got["other"] = scrape(path, "GET /debug HTTP/1.1\r\n\r\n");
			got["post"] = scrape(path, "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
			got["junk"] = scrape(path, "hello\r\n\r\n");
			got["huge"] = scrape(path, "GET /metrics HTTP/1.1\r\nX: " + std::string(9000, 'a'));
			// Scrapers that connect and say nothing hold every slot...
			std::vector<UniqueFd> idle;
			for (size_t i = 0; i < MetricsServer::kMaxSessions; i++)
				idle.push_back(connect_unix(path));
			std::this_thread::sleep_for(std::chrono::milliseconds(50));
			// ...so one more is told 503 at once...
			std::string busy = scrape(path, "GET /metrics HTTP/1.1\r\n\r\n");
			busy_answers += busy.rfind("HTTP/1.1 503", 0) == 0;
			// ...as many more as there are slots for saying so, and then there is no answer at all...
			for (size_t i = 0; i < MetricsServer::kMaxSessions; i++)
				idle.push_back(connect_unix(path));
			std::this_thread::sleep_for(std::chrono::milliseconds(50));
			got["overflow"] = scrape(path, "GET /metrics HTTP/1.1\r\n\r\n");
			// ...and the deadline frees the slots: each idle one is closed without an answer.
			for (auto &fd : idle)
				closed_by_deadline += fd && read_all(fd.get()).empty();
			got["after"] = scrape(path, "GET /metrics HTTP/1.1\r\n\r\n");
			done = true;
		});
		Status ran = (*loop)->run();
		client.join();
		ASSERT_TRUE(ran) << ran.error().message();
	}
	// Gone with its server.
	EXPECT_NE(::access(path.c_str(), F_OK), 0);

	const std::string body = "# HELP x_total X\n# TYPE x_total counter\nx_total 7\n";
	EXPECT_EQ(got["get"], metrics_http_response({200, true}, body));
	EXPECT_EQ(got["head"], metrics_http_response({200, false}, body));
	EXPECT_EQ(got["other"].rfind("HTTP/1.1 404 Not Found\r\n", 0), 0u) << got["other"];
	EXPECT_EQ(got["post"].rfind("HTTP/1.1 405 Method Not Allowed\r\n", 0), 0u) << got["post"];
	EXPECT_EQ(got["junk"].rfind("HTTP/1.1 400 Bad Request\r\n", 0), 0u) << got["junk"];
	EXPECT_EQ(got["huge"].rfind("HTTP/1.1 431 ", 0), 0u) << got["huge"].substr(0, 100);
	EXPECT_EQ(busy_answers, 1u);
	EXPECT_EQ(closed_by_deadline, 2 * MetricsServer::kMaxSessions);
	EXPECT_TRUE(got["overflow"].empty() || got["overflow"] == "send failed") << got["overflow"];
	EXPECT_EQ(got["after"], metrics_http_response({200, true}, body));
	EXPECT_EQ(renders, 3); // GET, HEAD and the last GET; refusals render nothing
}

TEST(MetricsServer, ReplacesASocketLeftByADeadProcessButNeverAFile)
{
	TempDir dir;
	const std::string path = dir.path + "/metrics.sock";
	{
		// A bound socket nobody listens on: what a killed cordond leaves behind.
		UniqueFd stale(::socket(AF_UNIX, SOCK_STREAM, 0));
		sockaddr_un addr{};
		addr.sun_family = AF_UNIX;
		std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path.c_str());
		ASSERT_EQ(::bind(stale.get(), reinterpret_cast<sockaddr *>(&addr), sizeof(addr)), 0);
	}
	auto loop = EventLoop::create(64);
	ASSERT_TRUE(loop);
	{
		MetricsServer server(**loop, *ListenEndpoint::parse("unix:" + path), [] { return std::string(); });
		Status st = server.start();
		EXPECT_TRUE(st) << st.error().message();
		(*loop)->stop();
		ASSERT_TRUE((*loop)->run());
	}
	EXPECT_NE(::access(path.c_str(), F_OK), 0);
	// A regular file under that name is someone else's: left alone.
	{
		FILE *f = std::fopen(path.c_str(), "w");
		ASSERT_NE(f, nullptr);
		std::fclose(f);
	}
	auto loop2 = EventLoop::create(64);
	ASSERT_TRUE(loop2);
	MetricsServer server(**loop2, *ListenEndpoint::parse("unix:" + path), [] { return std::string(); });
	Status st = server.start();
	ASSERT_FALSE(st);
	EXPECT_NE(st.error().message().find("not a socket"), std::string::npos);
	EXPECT_EQ(::access(path.c_str(), F_OK), 0);
}
