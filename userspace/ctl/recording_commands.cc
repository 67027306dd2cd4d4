#include "ctl/recording_commands.h"

#include <fnmatch.h>
#include <google/protobuf/descriptor.h>
#include <google/protobuf/message.h>
#include <openssl/evp.h>

#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <ctime>
#include <functional>
#include <iomanip>
#include <map>
#include <ostream>

#include "common/strings.h"
#include "ctl/journal_witness.h"
#include "ctl/printable.h"
#include "proxy/message_decoder.h"
#include "proxy/rpc.h"

namespace cordon {

using json = nlohmann::ordered_json; // members in the order written
using recording::Record;

namespace {

constexpr size_t kMessageDisplayBytes = 4096; // one message's JSON on screen
constexpr size_t kFlatWidth = 100;            // a JSON value this short stays on one line
constexpr int64_t kMaxRelativeSeconds = int64_t{100} * 365 * 86400;

const char *const kRecordingUsage =
    R"(usage: cordonctl verify [ID | --all] [--json] [--no-journal]
                                                  check the recordings' chain and checkpoints, and
                                                  the segments cordond's journal saw
       cordonctl sessions [--identity GLOB] [--host GLOB] [--rpc GLOB] [--action GLOB]
                          [--since T] [--until T] [--json]
       cordonctl replay ID                        a session as a readable transcript
       cordonctl export ID [--format json]        a session as one JSON document
T: 2026-11-29T17:00:00Z, or ago: 90s, 10m, 2h, 1d, 1w. Options: --recordings DIR (the store),
--descriptors FILE (message shapes; generic decoding without it), --state-dir DIR (the key).
)";

std::string dump(const json &j, int indent = -1)
{
	return j.dump(indent, ' ', false, json::error_handler_t::replace);
}

std::string lower(std::string_view s)
{
	std::string out(s);
	for (char &c : out)
		c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
	return out;
}

bool glob_match(const std::string &glob, const std::string &text, bool casefold)
{
	return ::fnmatch(glob.c_str(), text.c_str(), casefold ? FNM_CASEFOLD : 0) == 0;
}

std::string base64(std::string_view bytes)
{
	std::string out(4 * ((bytes.size() + 2) / 3) + 1, '\0');
	const int n =
	    EVP_EncodeBlock(reinterpret_cast<unsigned char *>(out.data()),
	                    reinterpret_cast<const unsigned char *>(bytes.data()), static_cast<int>(bytes.size()));
	out.resize(n > 0 ? static_cast<size_t>(n) : 0);
	return out;
}

// "+12.345 ms" after the session began.
// later - earlier, held to int64_t's range: a corrupted or forged record may hold any time, and
// the difference of two must not overflow (found by tests/fuzz/recording.cc).
int64_t span_us(int64_t later, int64_t earlier)
{
	int64_t d = 0;
	if (__builtin_sub_overflow(later, earlier, &d))
		return later < earlier ? INT64_MIN : INT64_MAX;
	return d;
}

std::string relative_ms(int64_t us)
{
	// The magnitude as unsigned: -INT64_MIN is not an int64_t.
	const uint64_t magnitude = us < 0 ? 0 - static_cast<uint64_t>(us) : static_cast<uint64_t>(us);
	char buf[48];
	std::snprintf(buf, sizeof(buf), "%s%" PRIu64 ".%03" PRIu64 " ms", us < 0 ? "-" : "+", magnitude / 1000,
	              magnitude % 1000);
	return buf;
}

// "850 us", "12.345 ms", "4.210 s", "5m12s", "2h03m".
std::string human_duration(int64_t us)
{
	if (us < 0)
		us = 0;
	char buf[48];
	if (us < 1000)
		std::snprintf(buf, sizeof(buf), "%" PRId64 " us", us);
	else if (us < 1000000)
		std::snprintf(buf, sizeof(buf), "%" PRId64 ".%03" PRId64 " ms", us / 1000, us % 1000);
	else if (us < 60000000)
		std::snprintf(buf, sizeof(buf), "%" PRId64 ".%03" PRId64 " s", us / 1000000, us % 1000000 / 1000);
	else if (us < int64_t{3600} * 1000000)
		std::snprintf(buf, sizeof(buf), "%" PRId64 "m%02" PRId64 "s", us / 60000000, us / 1000000 % 60);
	else
		std::snprintf(buf, sizeof(buf), "%" PRId64 "h%02" PRId64 "m", us / 3600000000, us / 60000000 % 60);
	return buf;
}

std::string or_dash(const std::string &s)
{
	return s.empty() ? "-" : s;
}

std::string join(const std::vector<std::string> &parts, const char *sep)
{
	std::string out;
	for (const auto &p : parts)
		out += (out.empty() ? "" : sep) + p;
	return out;
}

// --- protobuf bodies as JSON, by reflection (every field, defaults included, proto names) ---------

json field_value(const google::protobuf::Message &m, const google::protobuf::FieldDescriptor *f, int i);

json proto_json(const google::protobuf::Message &m)
{
	const auto *d = m.GetDescriptor();
	const auto *r = m.GetReflection();
	json out = json::object();
	for (int k = 0; k < d->field_count(); k++) {
		const auto *f = d->field(k);
		if (f->is_repeated()) {
			json a = json::array();
			for (int i = 0; i < r->FieldSize(m, f); i++)
				a.push_back(field_value(m, f, i));
			out[f->name()] = std::move(a);
		} else {
			out[f->name()] = field_value(m, f, -1);
		}
	}
	return out;
}

json field_value(const google::protobuf::Message &m, const google::protobuf::FieldDescriptor *f, int i)
{
	using FD = google::protobuf::FieldDescriptor;
	const auto *r = m.GetReflection();
	const bool rep = i >= 0;
	switch (f->cpp_type()) {
	case FD::CPPTYPE_INT32:
		return rep ? r->GetRepeatedInt32(m, f, i) : r->GetInt32(m, f);
	case FD::CPPTYPE_INT64:
		return rep ? r->GetRepeatedInt64(m, f, i) : r->GetInt64(m, f);
	case FD::CPPTYPE_UINT32:
		return rep ? r->GetRepeatedUInt32(m, f, i) : r->GetUInt32(m, f);
	case FD::CPPTYPE_UINT64:
		return rep ? r->GetRepeatedUInt64(m, f, i) : r->GetUInt64(m, f);
	case FD::CPPTYPE_DOUBLE:
		return rep ? r->GetRepeatedDouble(m, f, i) : r->GetDouble(m, f);
	case FD::CPPTYPE_FLOAT:
		return rep ? r->GetRepeatedFloat(m, f, i) : r->GetFloat(m, f);
	case FD::CPPTYPE_BOOL:
		return rep ? r->GetRepeatedBool(m, f, i) : r->GetBool(m, f);
	case FD::CPPTYPE_ENUM:
		return (rep ? r->GetRepeatedEnum(m, f, i) : r->GetEnum(m, f))->name();
	case FD::CPPTYPE_STRING: {
		std::string s = rep ? r->GetRepeatedString(m, f, i) : r->GetString(m, f);
		// The recording's text fields are `bytes` too (job strings need not be UTF-8); only hashes,
		// MACs and payloads are binary.
		const bool binary = f->type() == FD::TYPE_BYTES && (f->name() == "payload" || f->name() == "hmac" ||
		                                                    f->name().find("sha256") != std::string::npos);
		return binary ? json(base64(s)) : json(std::move(s));
	}
	case FD::CPPTYPE_MESSAGE:
		return proto_json(rep ? r->GetRepeatedMessage(m, f, i) : r->GetMessage(m, f));
	}
	return nullptr;
}

// --- a compact pretty form for messages -----------------------------------------------------------

// Objects and arrays that fit on a line stay on it; longer ones are spread, one member a line.
// Stops adding once `out` passes `limit` (the caller cuts there anyway).
void pretty(const nlohmann::ordered_json &j, size_t indent, std::string &out, size_t limit)
{
	if (out.size() > limit)
		return;
	std::string flat = j.dump(-1, ' ', false, json::error_handler_t::replace);
	if (!j.is_structured() || j.empty() || indent + flat.size() <= kFlatWidth) {
		out += flat;
		return;
	}
	const bool object = j.is_object();
	out += object ? "{\n" : "[\n";
	size_t n = 0;
	for (auto it = j.begin(); it != j.end() && out.size() <= limit; ++it) {
		out.append(indent + 2, ' ');
		if (object)
			out += nlohmann::ordered_json(it.key()).dump(-1, ' ', false, json::error_handler_t::replace) +
			       ": ";
		pretty(*it, indent + 2, out, limit);
		if (++n < j.size())
			out += ",";
		out += "\n";
	}
	out.append(indent, ' ');
	out += object ? "}" : "]";
}

// The decoder's compact JSON, spread for reading and cut to `limit` bytes.
std::string display_json(const std::string &compact, size_t limit, bool &cut)
{
	auto j = nlohmann::ordered_json::parse(compact, nullptr, false);
	std::string out;
	if (j.is_discarded())
		out = compact;
	else
		pretty(j, 0, out, limit);
	cut = out.size() > limit;
	if (cut) {
		size_t at = limit;
		while (at > 0 && (static_cast<unsigned char>(out[at]) & 0xc0) == 0x80)
			at--; // not inside a UTF-8 sequence
		out.resize(at);
	}
	return out;
}

// --- what a session's records say -----------------------------------------------------------------

const recording::Request *request_of(const RecordedExchange &x)
{
	return x.request ? &x.request->request() : nullptr;
}

std::string header_value(const google::protobuf::RepeatedPtrField<recording::Header> &headers, std::string_view name)
{
	for (const auto &h : headers)
		if (lower(h.name()) == name)
			return h.value();
	return {};
}

rpc::RpcName rpc_name(const recording::Request &r)
{
	std::string_view path = r.path();
	if (size_t q = path.find('?'); q != std::string_view::npos)
		path = path.substr(0, q);
	rpc::RpcName name = rpc::parse_rpc_path(path);
	if (name.empty() && !r.rpc().empty())
		name = rpc::parse_rpc_path(r.rpc()[0] == '/' ? r.rpc() : "/" + r.rpc());
	return name;
}

// The RPC as listed: "aiserver.v1.ChatService/StreamUnifiedChatWithTools", else the path.
std::string rpc_label(const recording::Request &r)
{
	if (!r.rpc().empty())
		return r.rpc();
	rpc::RpcName name = rpc_name(r);
	return name.empty() ? r.path() : name.full();
}

std::string host_without_port(const std::string &host)
{
	if (!host.empty() && host[0] == '[') {
		size_t close = host.find(']');
		return close == std::string::npos ? host : host.substr(1, close - 1);
	}
	size_t colon = host.rfind(':');
	return colon != std::string::npos && host.find(':') == colon ? host.substr(0, colon) : host;
}

bool exchange_matches(const RecordedSession &s, const RecordedExchange &x, const SessionFilter &f)
{
	const recording::Request *r = request_of(x);
	if (!f.host.empty()) {
		std::vector<std::string> hosts;
		if (r) {
			hosts.push_back(r->host());
			hosts.push_back(host_without_port(r->host()));
		}
		if (s.start)
			hosts.push_back(s.start->session_start().sni());
		if (std::none_of(hosts.begin(), hosts.end(),
		                 [&](const auto &h) { return glob_match(f.host, h, true); }))
			return false;
	}
	if (!f.rpc.empty()) {
		std::vector<std::string> names;
		if (r) {
			names = {r->rpc(), r->path(), rpc_label(*r)};
			rpc::RpcName n = rpc_name(*r);
			if (!n.empty()) {
				names.push_back(n.full());
				names.push_back("/" + n.full());
				names.push_back(n.method);
			}
		}
		if (std::none_of(names.begin(), names.end(),
		                 [&](const auto &n) { return glob_match(f.rpc, n, false); }))
			return false;
	}
	if (!f.action.empty()) {
		std::vector<std::string> actions;
		for (const auto *d : x.decisions)
			actions.push_back(d->decision().action());
		if (actions.empty())
			actions.push_back("");
		if (std::none_of(actions.begin(), actions.end(),
		                 [&](const auto &a) { return glob_match(f.action, a, true); }))
			return false;
	}
	return true;
}

// Distinct values in order, the first `max` of them, "+N more" after.
std::string first_few(const std::vector<std::string> &values, size_t max)
{
	std::vector<std::string> distinct;
	for (const auto &v : values)
		if (!v.empty() && std::find(distinct.begin(), distinct.end(), v) == distinct.end())
			distinct.push_back(v);
	std::string out;
	for (size_t i = 0; i < distinct.size() && i < max; i++)
		out += (out.empty() ? "" : ",") + distinct[i];
	if (distinct.size() > max)
		out += ",+" + std::to_string(distinct.size() - max) + " more";
	return out;
}

int64_t session_duration_us(const RecordedSession &s)
{
	if (s.end && s.end->session_end().duration_us() > 0)
		return s.end->session_end().duration_us();
	return span_us(s.last_time_us, s.first_time_us);
}

std::string session_result(const RecordedSession &s)
{
	if (!s.end)
		return "open";
	return s.end->session_end().result().empty() ? "ended" : s.end->session_end().result();
}

json session_summary_json(const RecordedSession &s)
{
	const recording::SessionStart empty;
	const recording::SessionStart &st = s.start ? s.start->session_start() : empty;
	json hosts = json::array(), rpcs = json::array(), actions = json::object();
	for (const auto &x : s.exchanges) {
		if (const recording::Request *r = request_of(x)) {
			if (std::find(hosts.begin(), hosts.end(), json(r->host())) == hosts.end() && !r->host().empty())
				hosts.push_back(r->host());
			if (std::find(rpcs.begin(), rpcs.end(), json(rpc_label(*r))) == rpcs.end())
				rpcs.push_back(rpc_label(*r));
		}
		for (const auto *d : x.decisions) {
			const std::string &a = d->decision().action();
			actions[a] = actions.value(a, 0) + 1;
		}
	}
	if (hosts.empty() && !st.sni().empty())
		hosts.push_back(st.sni());
	return json{{"id", s.id},
	            {"start", iso_time(s.first_time_us)},
	            {"start_us", s.first_time_us},
	            {"duration_us", session_duration_us(s)},
	            {"identity", st.identity()},
	            {"user", st.user()},
	            {"uid", st.uid()},
	            {"exe", st.exe()},
	            {"cgroup", st.cgroup()},
	            {"pid", st.pid()},
	            {"hosts", hosts},
	            {"exchanges", s.exchanges.size()},
	            {"rpcs", rpcs},
	            {"actions", actions},
	            {"result", session_result(s)},
	            {"started_recorded", s.start != nullptr}};
}

const RecordedSession *find_session(const std::vector<RecordedSession> &sessions, const std::string &id)
{
	for (const auto &s : sessions)
		if (s.id == id)
			return &s;
	return nullptr;
}

// --- the transcript -------------------------------------------------------------------------------

std::string decision_text(const recording::Decision &d, int64_t t0)
{
	std::string out =
	    "decision: " + (d.rule().empty() ? std::string("default") : "rule '" + printable(d.rule()) + "'") + " → " +
	    printable(or_dash(d.action()));
	if (d.on_message())
		out += std::string(" on ") + (d.response() ? "← #" : "→ #") + std::to_string(d.message_index());
	if (!d.approval_id().empty() || !d.approval().empty() || !d.approver().empty()) {
		out += " (";
		std::string sep;
		if (!d.approval_id().empty()) {
			out += "approval " + printable(d.approval_id());
			sep = " ";
		}
		if (!d.approval().empty()) {
			out += sep + printable(d.approval());
			sep = " ";
		}
		if (!d.approver().empty())
			out += sep + "by " + printable(d.approver());
		if (d.answered_us() != 0)
			out += sep + "at " + relative_ms(span_us(d.answered_us(), t0)) + ", after " +
			       human_duration(span_us(d.answered_us(), d.decided_us()));
		out += ")";
	}
	return out;
}

// The decision stopped what it was about: that request or message never left cordon.
bool stopped(const recording::Decision &d)
{
	return d.action() == "block" || d.approval() == "denied" || d.approval() == "timed_out";
}

void print_headers(const google::protobuf::RepeatedPtrField<recording::Header> &headers, std::ostream &out)
{
	for (const auto &h : headers)
		out << "                    " << printable(h.name()) << ": " << printable(h.value()) << "\n";
}

void print_message(const RecordedExchange &x, const Record &rec, int64_t t0, const proxy::MessageDecoder &decoder,
                   std::ostream &out)
{
	const recording::Message &m = rec.message();
	const recording::Request *req = request_of(x);
	const bool json_codec =
	    m.end_of_stream() ||
	    (req && lower(header_value(req->headers(), "content-type")).find("json") != std::string::npos);
	const std::string decoded = decoder.to_json(
	    req ? rpc_name(*req) : rpc::RpcName{},
	    m.response() ? proxy::Direction::Response : proxy::Direction::Request, m.payload(), json_codec);
	bool cut = false;
	const std::string shown = display_json(decoded, kMessageDisplayBytes, cut);
	const uint64_t full = std::max<uint64_t>(m.size(), m.payload().size());
	out << std::left << std::setw(18) << relative_ms(span_us(rec.time_us(), t0)) << (m.response() ? "← " : "→ ")
	    << "#" << m.index() << " " << full << " B" << (m.end_of_stream() ? ", end of stream" : "");
	if (m.truncated())
		out << " (recorded: the first " << m.payload().size() << " B)";
	const bool one_line = shown.find('\n') == std::string::npos;
	out << (one_line ? "  " : "\n");
	if (one_line) {
		out << printable(shown);
	} else {
		size_t pos = 0;
		while (pos <= shown.size()) {
			size_t nl = shown.find('\n', pos);
			if (nl == std::string::npos)
				nl = shown.size();
			out << "                    " << printable(shown.substr(pos, nl - pos))
			    << (nl < shown.size() ? "\n" : "");
			pos = nl + 1;
		}
	}
	if (cut)
		out << "\n                    … (display cut at " << kMessageDisplayBytes << " B: the message is "
		    << full << " B, " << decoded.size() << " B as JSON; `cordonctl export` has all of it)";
	out << "\n";
}

void print_exchange(const RecordedSession &s, const RecordedExchange &x, const proxy::MessageDecoder &decoder,
                    std::ostream &out)
{
	const int64_t t0 = s.first_time_us;
	out << "\nexchange " << x.number << "\n";
	if (!x.request)
		out << std::left << std::setw(18) << relative_ms(span_us(x.first_time_us, t0))
		    << "→ (request not recorded: its segment was pruned)\n";
	auto all = [&] {
		std::vector<const Record *> v;
		if (x.request)
			v.push_back(x.request);
		v.insert(v.end(), x.messages.begin(), x.messages.end());
		if (x.response)
			v.push_back(x.response);
		if (x.end)
			v.push_back(x.end);
		// As written: the writer's order is the time order (times can repeat).
		std::stable_sort(v.begin(), v.end(), std::less<const Record *>());
		// A decision is written when its exchange ends; it is shown where it was made: after the
		// message a content rule stopped, or after the request.
		// Decisions recorded before cordon kept when it decided go where they were written
		// (first, while `v` is still in writer order for the search).
		for (const Record *d : x.decisions)
			if (d->decision().decided_us() == 0)
				v.insert(std::upper_bound(v.begin(), v.end(), d, std::less<const Record *>()), d);
		for (const Record *d : x.decisions) {
			const auto &dec = d->decision();
			if (dec.decided_us() == 0)
				continue;
			auto anchor = std::find_if(v.begin(), v.end(), [&](const Record *r) {
				if (dec.on_message())
					return r->has_message() && r->message().index() == dec.message_index() &&
					       r->message().response() == dec.response();
				return r->has_request();
			});
			// Its anchor not recorded (pruned, or cut by max_message_bytes): before the end.
			v.insert(anchor != v.end() ? anchor + 1 : v.end() - (x.end && v.back() == x.end ? 1 : 0), d);
		}
		return v;
	}();
	for (const Record *rec : all) {
		const std::string at = relative_ms(span_us(rec->time_us(), t0));
		if (rec->has_request()) {
			const auto &r = rec->request();
			out << std::left << std::setw(18) << at << "→ " << printable(or_dash(r.method())) << " "
			    << printable(or_dash(r.host())) << " " << printable(or_dash(r.path()))
			    << (r.protocol().empty() ? "" : " (" + printable(r.protocol()) + ")") << "\n";
			print_headers(r.headers(), out);
		} else if (rec->has_decision()) {
			const auto &d = rec->decision();
			out << std::left << std::setw(18)
			    << (d.decided_us() ? relative_ms(span_us(d.decided_us(), t0)) : at) << decision_text(d, t0)
			    << "\n";
			if (stopped(d))
				out << "                  ("
				    << (d.on_message()
				            ? "that message is recorded as the job sent it; it was never forwarded"
				            : "the request was never forwarded")
				    << ")\n";
		} else if (rec->has_message()) {
			print_message(x, *rec, t0, decoder, out);
		} else if (rec->has_response()) {
			const auto &r = rec->response();
			out << std::left << std::setw(18) << at << "← " << r.status()
			    << (r.protocol().empty() ? "" : " (" + printable(r.protocol()) + ")") << "\n";
			print_headers(r.headers(), out);
		} else if (rec->has_exchange_end()) {
			const auto &e = rec->exchange_end();
			out << std::left << std::setw(18) << at << "end: " << printable(or_dash(e.result()))
			    << (e.error().empty() ? "" : " (" + printable(e.error()) + ")") << ", " << e.request_bytes()
			    << " B up, " << e.response_bytes() << " B down, " << e.masked() << " masked, "
			    << human_duration(e.duration_us()) << "\n";
		}
	}
}

void print_session_header(const RecordedSession &s, std::ostream &out)
{
	out << "session " << printable(s.id) << ", " << iso_time(s.first_time_us) << ", " << s.exchanges.size()
	    << (s.exchanges.size() == 1 ? " exchange" : " exchanges") << ", " << s.records << " records\n";
	if (!s.start) {
		out << "  (no session start recorded: its segment was pruned)\n";
		return;
	}
	const auto &st = s.start->session_start();
	auto line = [&](const char *name, const std::string &value) {
		if (!value.empty())
			out << "  " << std::left << std::setw(13) << name << printable(value) << "\n";
	};
	line("identity", or_dash(st.identity()));
	line("claims", st.claims());
	line("user", (st.user().empty() ? std::string("?") : st.user()) + " (uid " + std::to_string(st.uid()) + ")");
	line("exe", st.exe() + (st.comm().empty() ? "" : " (comm " + st.comm() + ")"));
	line("cgroup", st.cgroup());
	line("pid", std::to_string(st.pid()));
	line("sni", st.sni());
	line("alpn", st.alpn());
	line("destination", st.destination());
	line("policy", st.policy());
}

// --- files ----------------------------------------------------------------------------------------

struct StoreContents {
	std::vector<Record> records;
	std::vector<std::string> segment; // each record's segment
};

std::string open_hint(const Error &e)
{
	return e.code == EACCES || e.code == EPERM ? " (the recordings are root's)" : "";
}

// What to keep of a store that may hold gigabytes: one session's records, or every record
// without message payloads (a listing), one segment read at a time.
struct LoadOptions {
	std::string session = {};     // "" = every session
	bool payloads = true;         // false: messages without their payloads
	bool skip_unreadable = false; // segments that cannot be read are left out instead of failing
};

Result<StoreContents> load_store(const std::string &dir, const LoadOptions &what)
{
	auto indexes = record::list_segments(dir);
	if (!indexes)
		return plain_error("cannot open the recording store: " + indexes.error().message() +
		                   open_hint(indexes.error()));
	StoreContents c;
	for (uint64_t i : *indexes) {
		const std::string name = record::segment_name(i);
		auto r = record::read_segment(dir + "/" + name);
		if (!r && what.skip_unreadable)
			continue;
		if (!r)
			return plain_error("cannot read " + r.error().message() + open_hint(r.error()));
		for (auto &rec : r->records) {
			if (!what.session.empty() && rec.session() != what.session)
				continue;
			if (!what.payloads && rec.has_message())
				rec.mutable_message()->clear_payload();
			c.records.push_back(std::move(rec));
			c.segment.push_back(name);
		}
	}
	return c;
}

std::unique_ptr<proxy::MessageDecoder> load_decoder(const std::string &path, std::ostream &err)
{
	if (!path.empty()) {
		auto d = proxy::MessageDecoder::load(path);
		if (d)
			return std::move(*d);
		err << "cordonctl: " << d.error().message() << "; messages are decoded by field number\n";
	}
	return proxy::MessageDecoder::generic_only();
}

int usage(std::ostream &err, const std::string &why)
{
	err << "cordonctl: " << why << "\n" << kRecordingUsage;
	return 2;
}

int run_verify(const std::vector<std::string> &args, const RecordingCommandOptions &o, std::ostream &out,
               std::ostream &err)
{
	if (args.size() > 1 || (o.all && !args.empty()))
		return usage(err, "verify takes one session ID or --all");
	auto key = record::load_key(o.key_file);
	if (!key) {
		err << "cordonctl verify: cannot read the recording key: " << key.error().message()
		    << open_hint(key.error()) << "\n";
		return 1;
	}
	// A segment that cannot be read is the report's business; a store that cannot be opened is not.
	auto store = load_store(o.recordings,
	                        {.session = args.empty() ? "" : args[0], .payloads = false, .skip_unreadable = true});
	if (!store) {
		err << "cordonctl verify: " << store.error().message() << "\n";
		return 1;
	}
	JournalWitnesses witnesses;
	if (o.journal)
		witnesses = read_journal_witnesses(o.recordings);
	record::VerifyReport report = record::verify_store(o.recordings, *key, witnesses.segments);
	if (!o.journal)
		report.notes.push_back("the journal was not consulted (--no-journal)");
	else if (!witnesses.journal_open)
		report.notes.push_back("no journal to hold the store against (" + witnesses.error +
		                       "): the deletion of the newest segments cannot be told");
	else
		report.notes.push_back("the journal witnessed " + std::to_string(report.witnessed) +
		                       " segment starts and seals; all " +
		                       (report.ok() ? "match the store" : "checked"));
	if (o.journal_result)
		journal_verify_result(o.recordings, report.ok(), problem_count(report), args.empty() ? "" : args[0]);
	json session;
	std::vector<std::string> segments;
	if (!args.empty()) {
		uint64_t count = 0;
		for (size_t i = 0; i < store->records.size(); i++)
			if (store->records[i].session() == args[0]) {
				count++;
				if (std::find(segments.begin(), segments.end(), store->segment[i]) == segments.end())
					segments.push_back(store->segment[i]);
			}
		session = json{{"id", args[0]}, {"found", count > 0}, {"records", count}, {"segments", segments}};
	}
	if (o.json) {
		json j = verify_report_json(report);
		if (!session.is_null())
			j["session"] = session;
		out << dump(j, 2) << "\n";
	} else {
		print_verify_report(report, out);
		if (!session.is_null()) {
			if (session["found"].get<bool>())
				out << "session " << printable(args[0]) << ": " << session["records"] << " records in "
				    << printable(join(segments, ", ")) << "\n";
			else
				out << "session " << printable(args[0]) << ": not found in " << o.recordings << "\n";
		}
	}
	if (!session.is_null() && !session["found"].get<bool>())
		return 1;
	return report.ok() ? 0 : 1;
}

int run_sessions(const std::vector<std::string> &args, const RecordingCommandOptions &o, std::ostream &out,
                 std::ostream &err)
{
	if (!args.empty())
		return usage(err, "sessions takes no argument (filters are options)");
	SessionFilter f{o.identity, o.host, o.rpc, o.action, std::nullopt, std::nullopt};
	const int64_t now =
	    std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::system_clock::now().time_since_epoch())
	        .count();
	for (auto [text, slot, name] :
	     {std::tuple{&o.since, &f.since_us, "--since"}, {&o.until, &f.until_us, "--until"}})
		if (!text->empty()) {
			auto t = parse_time_us(*text, now);
			if (!t)
				return usage(err, std::string(name) + ": " + t.error().message());
			*slot = *t;
		}
	auto store = load_store(o.recordings, {.payloads = false});
	if (!store) {
		err << "cordonctl sessions: " << store.error().message() << "\n";
		return 1;
	}
	print_sessions(store->records, f, o.json, out);
	return 0;
}

int run_replay_or_export(const std::string &command, const std::vector<std::string> &args,
                         const RecordingCommandOptions &o, std::ostream &out, std::ostream &err)
{
	if (args.size() != 1)
		return usage(err, command + " takes one session ID");
	const bool as_export = command == "export" || o.json;
	if (command == "export" && !o.format.empty() && o.format != "json")
		return usage(err, "export: --format " + o.format + " is not supported (json is)");
	auto store = load_store(o.recordings, {.session = args[0]});
	if (!store) {
		err << "cordonctl " << command << ": " << store.error().message() << "\n";
		return 1;
	}
	auto decoder = load_decoder(o.descriptors, err);
	if (!as_export) {
		if (!replay_session(store->records, args[0], *decoder, out)) {
			err << "cordonctl replay: session " << printable(args[0]) << " not found in " << o.recordings
			    << "\n";
			return 1;
		}
		return 0;
	}
	bool verified = false;
	json verify_problems = json::array();
	if (auto key = record::load_key(o.key_file); !key) {
		verify_problems.push_back("cannot read the recording key: " + key.error().message());
	} else {
		const record::VerifyReport report = record::verify_store(
		    o.recordings, *key,
		    o.journal ? read_journal_witnesses(o.recordings).segments : std::vector<record::SegmentWitness>{});
		verified = report.ok();
		verify_problems = verify_report_json(report)["problems"];
	}
	auto doc = export_session(store->records, args[0], *decoder, verified);
	if (!doc) {
		err << "cordonctl " << command << ": " << doc.error().message() << " in " << o.recordings << "\n";
		return 1;
	}
	if (!verified)
		(*doc)["verify_problems"] = verify_problems;
	out << dump(*doc, 2) << "\n";
	return 0;
}

} // namespace

// --- public ---------------------------------------------------------------------------------------

std::string iso_time(int64_t time_us, bool millis)
{
	// Rounded down, without negating time_us (which may be INT64_MIN: found by
	// tests/fuzz/recording.cc).
	const int64_t below = time_us % 1000000 < 0 ? 1 : 0;
	const int64_t seconds = time_us / 1000000 - below;
	const int64_t us_of_second = time_us % 1000000 + below * 1000000;
	const time_t t = static_cast<time_t>(seconds);
	struct tm tm;
	if (!::gmtime_r(&t, &tm))
		return std::to_string(time_us) + "us";
	char buf[64];
	const size_t n = std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &tm);
	std::string out(buf, n);
	if (millis) {
		std::snprintf(buf, sizeof(buf), ".%03d", static_cast<int>(us_of_second / 1000));
		out += buf;
	}
	return out + "Z";
}

Result<int64_t> parse_time_us(const std::string &text_in, int64_t now_us)
{
	const std::string text(trim(text_in));
	if (text.empty())
		return plain_error("empty time");
	const auto bad = [&] {
		return plain_error(
		    "'" + text + "' is neither a time such as 2026-11-29T17:00:00Z nor a span ago such as 10m, 2h, 1d");
	};
	// Relative: digits and a unit.
	if (std::isdigit(static_cast<unsigned char>(text[0])) &&
	    text.find_first_not_of("0123456789") >= text.size() - 1 && text.find('-') == std::string::npos) {
		const char unit = std::isdigit(static_cast<unsigned char>(text.back())) ? 's' : text.back();
		const std::string digits =
		    std::isdigit(static_cast<unsigned char>(text.back())) ? text : text.substr(0, text.size() - 1);
		const int64_t scale = unit == 's'   ? 1
		                      : unit == 'm' ? 60
		                      : unit == 'h' ? 3600
		                      : unit == 'd' ? 86400
		                      : unit == 'w' ? 604800
		                                    : 0;
		if (scale == 0 || digits.empty() || digits.size() > 12)
			return bad();
		const int64_t seconds = std::stoll(digits) * scale;
		if (seconds > kMaxRelativeSeconds)
			return bad();
		return now_us - seconds * 1000000;
	}
	// ISO-8601: YYYY-MM-DD[(T| )HH:MM[:SS[.frac]]][Z|±HH[:]MM]
	size_t pos = 0;
	auto number = [&](size_t digits, int &v) {
		if (pos + digits > text.size())
			return false;
		v = 0;
		for (size_t i = 0; i < digits; i++) {
			const char c = text[pos + i];
			if (c < '0' || c > '9')
				return false;
			v = v * 10 + (c - '0');
		}
		pos += digits;
		return true;
	};
	auto expect = [&](char c) {
		if (pos < text.size() && text[pos] == c) {
			pos++;
			return true;
		}
		return false;
	};
	struct tm tm = {};
	int year = 0, month = 0, day = 0, hour = 0, minute = 0, second = 0;
	int64_t frac_us = 0, offset_s = 0;
	if (!number(4, year) || !expect('-') || !number(2, month) || !expect('-') || !number(2, day))
		return bad();
	if (pos < text.size() && (text[pos] == 'T' || text[pos] == 't' || text[pos] == ' ')) {
		pos++;
		if (!number(2, hour) || !expect(':') || !number(2, minute))
			return bad();
		if (expect(':')) {
			if (!number(2, second))
				return bad();
			if (expect('.') || expect(',')) {
				int64_t scale = 100000;
				size_t digits = 0;
				while (pos < text.size() && std::isdigit(static_cast<unsigned char>(text[pos]))) {
					frac_us += (text[pos] - '0') * scale;
					scale /= 10;
					pos++;
					digits++;
				}
				if (digits == 0)
					return bad();
			}
		}
		if (expect('Z') || expect('z')) {
		} else if (pos < text.size() && (text[pos] == '+' || text[pos] == '-')) {
			const int sign = text[pos++] == '-' ? -1 : 1;
			int oh = 0, om = 0;
			if (!number(2, oh))
				return bad();
			expect(':');
			if (!number(2, om) || oh > 23 || om > 59)
				return bad();
			offset_s = sign * (oh * 3600 + om * 60);
		}
	}
	if (pos != text.size() || month < 1 || month > 12 || day < 1 || day > 31 || hour > 23 || minute > 59 ||
	    second > 60)
		return bad();
	tm.tm_year = year - 1900;
	tm.tm_mon = month - 1;
	tm.tm_mday = day;
	tm.tm_hour = hour;
	tm.tm_min = minute;
	tm.tm_sec = second;
	const time_t t = ::timegm(&tm);
	if (tm.tm_mday != day) // 2026-02-30
		return bad();
	return (static_cast<int64_t>(t) - offset_s) * 1000000 + frac_us;
}

std::vector<RecordedSession> group_sessions(const std::vector<Record> &records)
{
	std::vector<RecordedSession> sessions;
	std::map<std::string, size_t> by_id;
	std::vector<std::map<uint64_t, size_t>> exchange_at;
	for (const Record &rec : records) {
		if (rec.session().empty())
			continue;
		auto [it, added] = by_id.try_emplace(rec.session(), sessions.size());
		if (added) {
			sessions.emplace_back();
			sessions.back().id = rec.session();
			sessions.back().first_time_us = sessions.back().last_time_us = rec.time_us();
			exchange_at.emplace_back();
		}
		RecordedSession &s = sessions[it->second];
		s.records++;
		s.first_time_us = std::min(s.first_time_us, rec.time_us());
		s.last_time_us = std::max(s.last_time_us, rec.time_us());
		uint64_t number = 0;
		switch (rec.body_case()) {
		case Record::kSessionStart:
			if (!s.start)
				s.start = &rec;
			continue;
		case Record::kSessionEnd:
			s.end = &rec;
			continue;
		case Record::kRequest:
			number = rec.request().exchange();
			break;
		case Record::kMessage:
			number = rec.message().exchange();
			break;
		case Record::kResponse:
			number = rec.response().exchange();
			break;
		case Record::kDecision:
			number = rec.decision().exchange();
			break;
		case Record::kExchangeEnd:
			number = rec.exchange_end().exchange();
			break;
		default:
			continue;
		}
		auto [xit, xadded] = exchange_at[it->second].try_emplace(number, s.exchanges.size());
		if (xadded) {
			s.exchanges.emplace_back();
			s.exchanges.back().number = number;
			s.exchanges.back().first_time_us = rec.time_us();
		}
		RecordedExchange &x = s.exchanges[xit->second];
		x.first_time_us = std::min(x.first_time_us, rec.time_us());
		if (rec.has_request())
			x.request = x.request ? x.request : &rec;
		else if (rec.has_message())
			x.messages.push_back(&rec);
		else if (rec.has_response())
			x.response = x.response ? x.response : &rec;
		else if (rec.has_decision())
			x.decisions.push_back(&rec);
		else
			x.end = &rec;
	}
	for (auto &s : sessions)
		std::stable_sort(s.exchanges.begin(), s.exchanges.end(),
		                 [](const auto &a, const auto &b) { return a.first_time_us < b.first_time_us; });
	std::stable_sort(sessions.begin(), sessions.end(),
	                 [](const auto &a, const auto &b) { return a.first_time_us < b.first_time_us; });
	return sessions;
}

bool session_matches(const RecordedSession &s, const SessionFilter &f)
{
	if (!f.identity.empty() && !glob_match(f.identity, s.start ? s.start->session_start().identity() : "", false))
		return false;
	const int64_t last = s.end ? std::max(s.last_time_us, s.end->time_us()) : s.last_time_us;
	if (f.since_us && last < *f.since_us)
		return false;
	if (f.until_us && s.first_time_us > *f.until_us)
		return false;
	if (f.host.empty() && f.rpc.empty() && f.action.empty())
		return true;
	return std::any_of(s.exchanges.begin(), s.exchanges.end(),
	                   [&](const RecordedExchange &x) { return exchange_matches(s, x, f); });
}

void print_sessions(const std::vector<Record> &records, const SessionFilter &filter, bool as_json, std::ostream &out)
{
	const auto sessions = group_sessions(records);
	if (as_json) {
		json a = json::array();
		for (const auto &s : sessions)
			if (session_matches(s, filter))
				a.push_back(session_summary_json(s));
		out << dump(a, 2) << "\n";
		return;
	}
	std::vector<std::vector<std::string>> rows = {
	    {"ID", "START", "DURATION", "IDENTITY", "EXE", "CGROUP", "HOSTS", "EXCH", "RPCS", "ACTIONS", "RESULT"}};
	for (const auto &s : sessions) {
		if (!session_matches(s, filter))
			continue;
		const json j = session_summary_json(s);
		std::vector<std::string> hosts, rpcs;
		for (const auto &h : j["hosts"])
			hosts.push_back(h.get<std::string>());
		for (const auto &r : j["rpcs"])
			rpcs.push_back(r.get<std::string>());
		std::string actions;
		for (auto it = j["actions"].begin(); it != j["actions"].end(); ++it)
			actions += (actions.empty() ? "" : ",") + or_dash(it.key()) +
			           (it.value().get<int>() > 1 ? "x" + std::to_string(it.value().get<int>()) : "");
		rows.push_back({s.id, iso_time(s.first_time_us, false), human_duration(session_duration_us(s)),
		                j["identity"].get<std::string>(), j["exe"].get<std::string>(),
		                j["cgroup"].get<std::string>(), first_few(hosts, 2), std::to_string(s.exchanges.size()),
		                first_few(rpcs, 3), actions, session_result(s)});
	}
	if (rows.size() == 1) {
		out << "no sessions" << (records.empty() ? " recorded" : " match") << "\n";
		return;
	}
	for (auto &row : rows)
		for (auto &cell : row)
			cell = printable(or_dash(cell));
	std::vector<size_t> width(rows[0].size(), 0);
	for (const auto &row : rows)
		for (size_t c = 0; c < row.size(); c++)
			width[c] = std::max(width[c], row[c].size());
	for (const auto &row : rows) {
		std::string line;
		for (size_t c = 0; c < row.size(); c++) {
			line += row[c];
			if (c + 1 < row.size())
				line += std::string(width[c] - row[c].size() + 2, ' ');
		}
		out << line << "\n";
	}
}

bool replay_session(const std::vector<Record> &records, const std::string &id, const proxy::MessageDecoder &decoder,
                    std::ostream &out)
{
	const auto sessions = group_sessions(records);
	const RecordedSession *s = find_session(sessions, id);
	if (!s)
		return false;
	print_session_header(*s, out);
	for (const auto &x : s->exchanges)
		print_exchange(*s, x, decoder, out);
	out << "\n";
	if (s->end) {
		const auto &e = s->end->session_end();
		out << std::left << std::setw(18) << relative_ms(span_us(s->end->time_us(), s->first_time_us))
		    << "session end: " << printable(or_dash(e.result())) << ", " << e.requests() << " requests, "
		    << e.bytes_up() << " B up, " << e.bytes_down() << " B down, " << human_duration(e.duration_us())
		    << "\n";
	} else {
		out << "(no session end recorded: the connection was still open, or cordond stopped)\n";
	}
	return true;
}

Result<json> export_session(const std::vector<Record> &records, const std::string &id,
                            const proxy::MessageDecoder &decoder, bool verified)
{
	const auto sessions = group_sessions(records);
	const RecordedSession *s = find_session(sessions, id);
	if (!s)
		return plain_error("session " + printable(id) + " not found");
	auto timed = [](const Record *rec, const google::protobuf::Message &body) {
		json j = proto_json(body);
		j["time_us"] = rec->time_us();
		j["time"] = iso_time(rec->time_us());
		return j;
	};
	json exchanges = json::array();
	for (const auto &x : s->exchanges) {
		const recording::Request *req = request_of(x);
		const rpc::RpcName rpc = req ? rpc_name(*req) : rpc::RpcName{};
		const bool json_request =
		    req && lower(header_value(req->headers(), "content-type")).find("json") != std::string::npos;
		json messages = json::array();
		for (const Record *rec : x.messages) {
			const auto &m = rec->message();
			const std::string decoded =
			    decoder.to_json(rpc, m.response() ? proxy::Direction::Response : proxy::Direction::Request,
			                    m.payload(), json_request || m.end_of_stream());
			json value = json::parse(decoded, nullptr, false);
			if (value.is_discarded())
				value = decoded;
			messages.push_back(json{{"direction", m.response() ? "response" : "request"},
			                        {"index", m.index()},
			                        {"time_us", rec->time_us()},
			                        {"end_of_stream", m.end_of_stream()},
			                        {"size", std::max<uint64_t>(m.size(), m.payload().size())},
			                        {"truncated", m.truncated()},
			                        {"json", std::move(value)},
			                        {"payload_base64", base64(m.payload())}});
		}
		json decisions = json::array();
		for (const Record *d : x.decisions)
			decisions.push_back(timed(d, d->decision()));
		exchanges.push_back(json{
		    {"exchange", x.number},
		    {"request", x.request ? timed(x.request, x.request->request()) : json(nullptr)},
		    {"messages", std::move(messages)},
		    {"response", x.response ? timed(x.response, x.response->response()) : json(nullptr)},
		    {"decision", decisions.empty() ? json(nullptr) : decisions.back()},
		    {"decisions", decisions},
		    {"end", x.end ? timed(x.end, x.end->exchange_end()) : json(nullptr)},
		});
	}
	return json{{"session", s->id},
	            {"start", s->start ? timed(s->start, s->start->session_start()) : json(nullptr)},
	            {"exchanges", std::move(exchanges)},
	            {"end", s->end ? timed(s->end, s->end->session_end()) : json(nullptr)},
	            {"verified", verified}};
}

size_t problem_count(const record::VerifyReport &report)
{
	size_t problems = report.problems.size();
	for (const auto &s : report.segments)
		problems += s.problems.size();
	return problems;
}

json verify_report_json(const record::VerifyReport &report)
{
	json segments = json::array();
	for (const auto &s : report.segments)
		segments.push_back(json{{"name", s.name},
		                        {"records", s.records},
		                        {"sealed", s.sealed},
		                        {"authenticated", s.authenticated},
		                        {"problems", s.problems},
		                        {"notes", s.notes}});
	const size_t problems = problem_count(report);
	return json{{"ok", report.ok()},           {"segments", std::move(segments)}, {"sessions", report.sessions},
	            {"problems", report.problems}, {"notes", report.notes},           {"problem_count", problems}};
}

void print_verify_report(const record::VerifyReport &report, std::ostream &out)
{
	size_t problems = report.problems.size();
	for (const auto &s : report.segments) {
		out << s.name << "  " << s.records << " records, " << (s.sealed ? "sealed" : "not sealed") << ", "
		    << s.authenticated << " authenticated\n";
		for (const auto &p : s.problems)
			out << "  PROBLEM: " << printable(p) << "\n";
		for (const auto &n : s.notes)
			out << "  note: " << printable(n) << "\n";
		problems += s.problems.size();
	}
	for (const auto &p : report.problems)
		out << "PROBLEM: " << printable(p) << "\n";
	for (const auto &n : report.notes)
		out << "note: " << printable(n) << "\n";
	if (problems == 0)
		out << "verified: " << report.segments.size() << " segments, " << report.sessions
		    << " sessions, no problems\n";
	else
		out << "TAMPERED: " << problems << (problems == 1 ? " problem" : " problems") << " in "
		    << report.segments.size() << " segments\n";
}

bool is_recording_command(const std::string &command)
{
	return command == "verify" || command == "sessions" || command == "replay" || command == "export";
}

int run_recording_command(const std::string &command, const std::vector<std::string> &args,
                          const RecordingCommandOptions &options, std::ostream &out, std::ostream &err)
{
	if (command == "verify")
		return run_verify(args, options, out, err);
	if (command == "sessions")
		return run_sessions(args, options, out, err);
	if (command == "replay" || command == "export")
		return run_replay_or_export(command, args, options, out, err);
	return usage(err, "unknown command '" + command + "'");
}

} // namespace cordon
