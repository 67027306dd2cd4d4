#include "config/policy.h"

#include <arpa/inet.h>
#include <google/protobuf/descriptor.h>
#include <google/protobuf/message.h>
#include <re2/re2.h>
#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <sstream>
#include <utility>
#include <vector>

#include "common/address.h"
#include "common/cgroup.h"
#include "common/host_pattern.h"
#include "common/utf8.h"
#include "config/mask_rules.h"

namespace cordon {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using google::protobuf::Reflection;

// Checks (and may normalize) one scalar value of a field, by the field's full name.
using Validator = std::function<Result<std::string>(const std::string &)>;

Result<std::string> check_port(const std::string &v)
{
	unsigned long n = std::stoul(v);
	if (n == 0 || n > 65535)
		return plain_error("port " + v + " is out of range 1..65535");
	return v;
}

Result<std::string> check_absolute_path(const std::string &v)
{
	if (v.empty() || v.front() != '/')
		return plain_error("'" + v + "' must be an absolute path");
	return v;
}

Result<std::string> check_range(const std::string &v, unsigned long lo, unsigned long hi)
{
	unsigned long n = std::stoul(v);
	if (n < lo || n > hi)
		return plain_error(v + " is out of range " + std::to_string(lo) + ".." + std::to_string(hi));
	return v;
}

Result<std::string> check_rule_id(const std::string &v)
{
	if (v.empty() || v.size() > 64 || !std::all_of(v.begin(), v.end(), [](char c) {
		    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-';
	    }))
		return plain_error("rule id '" + v + "' must be 1-64 characters of a-z, 0-9 and '-'");
	return v;
}

// A rule's regex alone, compiled as the scanner will (vectorscan and RE2), so a mistake is
// reported at its line.
Result<std::string> check_rule_regex(const std::string &v)
{
	mask::RuleSpec spec;
	spec.id = "policy-rule";
	spec.regex = v;
	auto compiled = mask::RuleSet::compile({spec}, mask::Options{});
	if (!compiled)
		return compiled.error();
	return v;
}

Result<std::string> check_host_pattern(const std::string &v)
{
	auto p = HostPattern::parse(v);
	if (!p)
		return p.error();
	return p->to_string();
}

Result<std::string> check_re2(const std::string &v)
{
	RE2 re(v, RE2::Quiet);
	if (!re.ok())
		return plain_error("bad regex '" + v + "': " + re.error());
	return v;
}

const std::map<std::string, Validator> &validators()
{
	static const std::map<std::string, Validator> table = {
	    {"cordon.config.Capture.hosts", check_host_pattern},
	    {"cordon.config.RuleMatch.hosts", check_host_pattern},
	    {"cordon.config.Rule.name", check_rule_id},
	    {"cordon.config.ContentMatch.regex", check_re2},
	    {"cordon.config.RuleMatch.users",
	     [](const std::string &v) -> Result<std::string> {
		     if (v.empty() || v.size() > 64 || !std::all_of(v.begin(), v.end(), [](unsigned char c) {
			         return std::isalnum(c) || c == '_' || c == '-' || c == '.' || c == '$';
		         }))
			     return plain_error("'" + v + "' is not a user name or uid");
		     return v;
	     }},
	    {"cordon.config.RuleMatch.cgroups", check_absolute_path},
	    {"cordon.config.RuleMatch.issuers", check_rule_id},
	    {"cordon.config.Issuer.name", check_rule_id},
	    {"cordon.config.Issuer.issuer",
	     [](const std::string &v) -> Result<std::string> {
		     // OIDC issuers are https URLs; discovery appends /.well-known/openid-configuration.
		     if (v.rfind("https://", 0) != 0 || v.size() <= 8)
			     return plain_error("'" + v + "' is not an https:// issuer URL");
		     return v;
	     }},
	    {"cordon.config.Identity.leeway_seconds", [](const std::string &v) { return check_range(v, 0, 60); }},
	    {"cordon.config.Identity.jwks_refetch_seconds",
	     [](const std::string &v) { return check_range(v, 0, 86400); }},
	    {"cordon.config.Recording.sync_ms", [](const std::string &v) { return check_range(v, 10, 60000); }},
	    {"cordon.config.Recording.max_segment_mb", [](const std::string &v) { return check_range(v, 1, 4096); }},
	    {"cordon.config.Recording.max_message_bytes",
	     [](const std::string &v) { return check_range(v, 0, 64u << 20); }},
	    {"cordon.config.Recording.max_queue_mb", [](const std::string &v) { return check_range(v, 1, 4096); }},
	    {"cordon.config.Approvals.timeout_seconds", [](const std::string &v) { return check_range(v, 1, 86400); }},
	    {"cordon.config.Approvals.max_pending", [](const std::string &v) { return check_range(v, 1, 100000); }},
	    {"cordon.config.Inject.credential_file", check_absolute_path},
	    {"cordon.config.Inject.scheme",
	     [](const std::string &v) -> Result<std::string> {
		     if (v != "bearer" && v != "basic")
			     return plain_error("'" + v + "' is not bearer or basic");
		     return v;
	     }},
	    {"cordon.config.Inject.strip_headers",
	     [](const std::string &v) -> Result<std::string> {
		     std::string lower = v;
		     std::transform(lower.begin(), lower.end(), lower.begin(),
		                    [](unsigned char c) { return std::tolower(c); });
		     if (lower.empty() || lower[0] == ':')
			     return plain_error("'" + v + "' is not a header name");
		     return lower;
	     }},
	    {"cordon.config.Capture.cidrs",
	     [](const std::string &v) -> Result<std::string> {
		     auto c = Cidr::parse(v);
		     if (!c)
			     return c.error();
		     return c->to_string();
	     }},
	    {"cordon.config.Capture.strict_exempt_cidrs",
	     [](const std::string &v) -> Result<std::string> {
		     auto c = Cidr::parse(v);
		     if (!c)
			     return c.error();
		     return c->to_string();
	     }},
	    {"cordon.config.Capture.ports", check_port},
	    {"cordon.config.Capture.quic_ports", check_port},
	    {"cordon.config.Capture.refresh_min_seconds",
	     [](const std::string &v) { return check_range(v, 1, 86400); }},
	    {"cordon.config.Capture.retain_seconds",
	     [](const std::string &v) { return check_range(v, 1, 30 * 86400); }},
	    {"cordon.config.Capture.refresh_max_seconds",
	     [](const std::string &v) { return check_range(v, 1, 86400); }},
	    {"cordon.config.Enforce.cgroups", [](const std::string &v) { return normalize_cgroup_path(v); }},
	    {"cordon.config.Enforce.exempt_cgroups", [](const std::string &v) { return normalize_cgroup_path(v); }},
	    {"cordon.config.Daemon.listen_port", check_port},
	    {"cordon.config.Daemon.dns_port", check_port},
	    {"cordon.config.Daemon.dns_timeout_ms", [](const std::string &v) { return check_range(v, 100, 60000); }},
	    {"cordon.config.Capture.dns_upstream",
	     [](const std::string &v) -> Result<std::string> {
		     if (v.empty())
			     return v;
		     auto a = SocketAddress::parse(v);
		     if (!a || a->port == 0)
			     return plain_error("'" + v +
			                        "' is not an address and port (\"10.0.0.53:53\", \"[::1]:53\")");
		     return a->to_string();
	     }},
	    {"cordon.config.Daemon.listen_ipv4",
	     [](const std::string &v) -> Result<std::string> {
		     auto ip = IpAddress::parse(v);
		     if (!ip || !ip->is_v4() || !ip->is_loopback())
			     return plain_error("'" + v + "' is not an IPv4 loopback address");
		     return ip->to_string();
	     }},
	    {"cordon.config.Daemon.listen_ipv6",
	     [](const std::string &v) -> Result<std::string> {
		     auto ip = IpAddress::parse(v);
		     if (!ip || ip->is_v4() || !ip->is_loopback())
			     return plain_error("'" + v + "' is not the IPv6 loopback address");
		     return ip->to_string();
	     }},
	    {"cordon.config.Daemon.upstream_mark",
	     [](const std::string &v) -> Result<std::string> {
		     if (std::stoul(v) == 0)
			     return plain_error("the upstream mark must not be 0 (unmarked sockets would be exempt)");
		     return v;
	     }},
	    {"cordon.config.Daemon.pin_dir", check_absolute_path},
	    {"cordon.config.Daemon.state_dir", check_absolute_path},
	    {"cordon.config.Tls.leaf_validity_hours", [](const std::string &v) { return check_range(v, 1, 24 * 30); }},
	    {"cordon.config.Tls.leaf_cache_size", [](const std::string &v) { return check_range(v, 16, 1000000); }},
	    {"cordon.config.Tls.hello_timeout_ms", [](const std::string &v) { return check_range(v, 10, 600000); }},
	    {"cordon.config.Tls.handshake_timeout_ms",
	     [](const std::string &v) { return check_range(v, 100, 600000); }},
	    {"cordon.config.Tls.max_message_bytes",
	     [](const std::string &v) { return check_range(v, 1024, 1024u * 1024 * 1024); }},
	    {"cordon.config.Tls.max_header_bytes", [](const std::string &v) { return check_range(v, 1024, 1u << 20); }},
	    {"cordon.config.Tls.max_streams_per_connection",
	     [](const std::string &v) { return check_range(v, 1, 65536); }},
	    {"cordon.config.Daemon.control_socket", check_absolute_path},
	    {"cordon.config.Daemon.metrics_listen",
	     [](const std::string &v) -> Result<std::string> {
		     if (v.empty())
			     return v; // no endpoint
		     auto endpoint = ListenEndpoint::parse(v);
		     if (!endpoint)
			     return endpoint.error();
		     return endpoint->to_string();
	     }},
	    {"cordon.config.Daemon.netns_listen",
	     [](const std::string &v) -> Result<std::string> {
		     if (v.empty())
			     return v; // jobs in other network namespaces are refused
		     auto a = SocketAddress::parse(v);
		     if (!a || !a->ip.is_v4() || a->ip.is_loopback() || (ntohl(a->ip.v4_be()) >> 24) == 0 ||
		         (ntohl(a->ip.v4_be()) >> 28) >= 14)
			     return plain_error("'" + v +
			                        "' is not a unicast, non-loopback IPv4 address and port "
			                        "(\"169.254.77.77:359\")");
		     if (a->port == 0 || a->port >= 1024)
			     return plain_error("'" + v +
			                        "': the port must be privileged (1-1023), so that no job can listen "
			                        "there while cordond is down");
		     return a->to_string();
	     }},
	    {"cordon.config.Daemon.netns_dns_port",
	     [](const std::string &v) -> Result<std::string> {
		     if (std::stoul(v) >= 1024)
			     return plain_error("'" + v +
			                        "': the port must be privileged (1-1023, or 0 for none), so that no job "
			                        "can listen there while cordond is down");
		     return v;
	     }},
	    {"cordon.config.MaskRule.id", check_rule_id},
	    {"cordon.config.MaskRule.regex", check_rule_regex},
	    {"cordon.config.MaskRule.allowlist", check_re2},
	    {"cordon.config.Mask.allowlist", check_re2},
	    {"cordon.config.Mask.disable",
	     [](const std::string &v) -> Result<std::string> {
		     for (const auto &r : mask::RuleSet::builtin())
			     if (r.id == v)
				     return v;
		     return plain_error("no built-in rule '" + v + "' (cordonctl mask --list)");
	     }},
	    {"cordon.config.Mask.hold_ms", [](const std::string &v) { return check_range(v, 1, 10000); }},
	    {"cordon.config.Daemon.connect_timeout_ms",
	     [](const std::string &v) { return check_range(v, 100, 600000); }},
	    {"cordon.config.Daemon.memory_limit_mb", [](const std::string &v) { return check_range(v, 0, 1u << 20); }},
	    {"cordon.config.Daemon.shed_memory_percent",
	     [](const std::string &v) -> Result<std::string> {
		     auto in = check_range(v, 0, 99);
		     if (in && v != "0" && std::stoul(v) < 50)
			     return plain_error("'" + v + "' sheds too early: 0 (off) or 50 to 99");
		     return in;
	     }},
	    {"cordon.config.Daemon.max_connections", [](const std::string &v) { return check_range(v, 1, 1000000); }},
	    {"cordon.config.Daemon.buffer_size", [](const std::string &v) { return check_range(v, 4096, 1 << 20); }},
	    {"cordon.config.Daemon.buffer_count",
	     [](const std::string &v) -> Result<std::string> {
		     unsigned long n = std::stoul(v);
		     if (n < 16 || n > 32768 || (n & (n - 1)) != 0)
			     return plain_error("buffer_count must be a power of two in 16..32768, got " + v);
		     return v;
	     }},
	};
	return table;
}

class Loader {
public:
	explicit Loader(std::string source) : source_(std::move(source)) {}

	Status apply(const YAML::Node &node, Message &msg)
	{
		if (node.IsNull())
			return {};
		if (!node.IsMap())
			return fail(node, "expected a mapping of " + keys_of(*msg.GetDescriptor()));
		const Descriptor *desc = msg.GetDescriptor();
		std::set<std::string> seen;
		for (auto it = node.begin(); it != node.end(); ++it) {
			// Copies: yaml-cpp's iterator hands out a temporary pair, references would dangle.
			const YAML::Node key_node = it->first;
			const YAML::Node value = it->second;
			if (!key_node.IsScalar())
				return fail(key_node, "expected a key");
			std::string key = key_node.Scalar();
			if (!seen.insert(key).second)
				return fail(key_node, "duplicate key '" + key + "'");
			const FieldDescriptor *field = desc->FindFieldByName(key);
			if (!field)
				return fail(key_node, "unknown key '" + key + "' in " + section_name(*desc) +
				                          " (expected " + keys_of(*desc) + ")");
			Status st = field->is_map()        ? apply_map(value, msg, field)
			            : field->is_repeated() ? apply_list(value, msg, field)
			                                   : apply_single(value, msg, field);
			if (!st)
				return st;
		}
		return {};
	}

private:
	std::string source_;

	Status fail(const YAML::Node &node, const std::string &what) const
	{
		auto mark = node.Mark();
		return plain_error(source_ + ":" + std::to_string(mark.line + 1) + ":" +
		                   std::to_string(mark.column + 1) + ": " + what);
	}

	static std::string section_name(const Descriptor &desc)
	{
		std::string n = desc.name();
		std::transform(n.begin(), n.end(), n.begin(), [](unsigned char c) { return std::tolower(c); });
		return n == "policy" ? "the policy" : "'" + n + "'";
	}

	static std::string keys_of(const Descriptor &desc)
	{
		std::string out;
		for (int i = 0; i < desc.field_count(); i++)
			out += (i ? ", " : "") + desc.field(i)->name();
		return out;
	}

	Status apply_list(const YAML::Node &value, Message &msg, const FieldDescriptor *field)
	{
		const Reflection *refl = msg.GetReflection();
		refl->ClearField(&msg, field); // a list in the file replaces the default list
		if (value.IsNull())
			return {};
		if (!value.IsSequence())
			return fail(value, "'" + field->name() + "' must be a list");
		for (const auto &element : value) {
			if (field->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
				Status st = apply(element, *refl->AddMessage(&msg, field));
				if (!st)
					return st;
				continue;
			}
			Status st = set_scalar(element, msg, field, true);
			if (!st)
				return st;
		}
		return {};
	}

	// A map field (claim name -> glob) is a YAML mapping; it replaces the default mapping.
	Status apply_map(const YAML::Node &value, Message &msg, const FieldDescriptor *field)
	{
		const Reflection *refl = msg.GetReflection();
		refl->ClearField(&msg, field);
		if (value.IsNull())
			return {};
		if (!value.IsMap())
			return fail(value, "'" + field->name() + "' must be a mapping");
		std::set<std::string> seen;
		for (auto it = value.begin(); it != value.end(); ++it) {
			const YAML::Node key = it->first;
			const YAML::Node element = it->second;
			if (key.IsScalar() && !seen.insert(key.Scalar()).second)
				return fail(key, "duplicate key '" + key.Scalar() + "'");
			Message *entry = refl->AddMessage(&msg, field);
			const Descriptor *entry_desc = entry->GetDescriptor();
			if (Status st = set_scalar(key, *entry, entry_desc->map_key(), false); !st)
				return st;
			if (Status st = set_scalar(element, *entry, entry_desc->map_value(), false); !st)
				return st;
		}
		return {};
	}

	Status apply_single(const YAML::Node &value, Message &msg, const FieldDescriptor *field)
	{
		if (field->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE)
			return apply(value, *msg.GetReflection()->MutableMessage(&msg, field));
		return set_scalar(value, msg, field, false);
	}

	Status set_scalar(const YAML::Node &value, Message &msg, const FieldDescriptor *field, bool add)
	{
		if (!value.IsScalar())
			return fail(value, "'" + field->name() + "' must be a single value");
		std::string text = value.Scalar();
		const Reflection *refl = msg.GetReflection();
		switch (field->cpp_type()) {
		case FieldDescriptor::CPPTYPE_UINT32: {
			unsigned long long n = 0;
			int base = 10;
			std::string_view digits = text;
			if (digits.substr(0, 2) == "0x" || digits.substr(0, 2) == "0X") {
				base = 16;
				digits.remove_prefix(2);
			}
			auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), n, base);
			if (ec != std::errc() || end != digits.data() + digits.size() || digits.empty() ||
			    n > 0xffffffffULL)
				return fail(value, "'" + field->name() + "' must be a non-negative integer, got '" +
				                       text + "'");
			auto checked = validate(value, field, std::to_string(n));
			if (!checked)
				return checked.error();
			auto v = static_cast<uint32_t>(std::stoul(*checked));
			add ? refl->AddUInt32(&msg, field, v) : refl->SetUInt32(&msg, field, v);
			return {};
		}
		case FieldDescriptor::CPPTYPE_DOUBLE: {
			double d = 0;
			auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), d);
			if (ec != std::errc() || end != text.data() + text.size() || text.empty() ||
			    !std::isfinite(d) || d < 0)
				return fail(value, "'" + field->name() + "' must be a non-negative number, got '" +
				                       text + "'");
			add ? refl->AddDouble(&msg, field, d) : refl->SetDouble(&msg, field, d);
			return {};
		}
		case FieldDescriptor::CPPTYPE_BOOL: {
			bool b;
			if (text == "true" || text == "yes" || text == "on")
				b = true;
			else if (text == "false" || text == "no" || text == "off")
				b = false;
			else
				return fail(value, "'" + field->name() + "' must be true or false, got '" + text + "'");
			add ? refl->AddBool(&msg, field, b) : refl->SetBool(&msg, field, b);
			return {};
		}
		case FieldDescriptor::CPPTYPE_STRING: {
			// Protobuf strings are UTF-8, and the effective-policy printer could not write
			// other bytes back (found by tests/fuzz/policy.cc).
			for (size_t i = 0, n = 0; i < text.size(); i += n)
				if ((n = utf8_sequence(text, i)) == 0)
					return fail(value, "'" + field->name() + "' is not valid UTF-8");
			auto checked = validate(value, field, text);
			if (!checked)
				return checked.error();
			add ? refl->AddString(&msg, field, *checked) : refl->SetString(&msg, field, *checked);
			return {};
		}
		case FieldDescriptor::CPPTYPE_ENUM: {
			std::string upper = text;
			std::transform(upper.begin(), upper.end(), upper.begin(), [](unsigned char c) {
				return c == '-' ? '_' : static_cast<char>(std::toupper(c));
			});
			const auto *ev = field->enum_type()->FindValueByName(upper);
			if (!ev || ev->number() == 0) {
				std::string names;
				for (int i = 1; i < field->enum_type()->value_count(); i++) {
					std::string n = field->enum_type()->value(i)->name();
					std::transform(n.begin(), n.end(), n.begin(), [](unsigned char c) {
						return c == '_' ? '-' : static_cast<char>(std::tolower(c));
					});
					names += (i > 1 ? ", " : "") + n;
				}
				return fail(value,
				            "'" + field->name() + "' must be one of " + names + ", got '" + text + "'");
			}
			add ? refl->AddEnumValue(&msg, field, ev->number())
			    : refl->SetEnumValue(&msg, field, ev->number());
			return {};
		}
		default:
			return fail(value, "'" + field->name() + "' has a type the loader does not handle");
		}
	}

	Result<std::string> validate(const YAML::Node &node, const FieldDescriptor *field, const std::string &v) const
	{
		auto it = validators().find(field->full_name());
		if (it == validators().end())
			return v;
		auto r = it->second(v);
		if (!r)
			return fail(node, "'" + field->name() + "': " + r.error().message()).error();
		return r;
	}
};

// Counts documents and where the second starts, building nothing.
class DocumentCounter : public YAML::EventHandler {
public:
	size_t documents = 0;
	YAML::Mark second;
	void OnDocumentStart(const YAML::Mark &mark) override
	{
		if (++documents == 2)
			second = mark;
	}
	void OnDocumentEnd() override {}
	void OnNull(const YAML::Mark &, YAML::anchor_t) override {}
	void OnAlias(const YAML::Mark &, YAML::anchor_t) override {}
	void OnScalar(const YAML::Mark &, const std::string &, YAML::anchor_t, const std::string &) override {}
	void OnSequenceStart(const YAML::Mark &, const std::string &, YAML::anchor_t,
	                     YAML::EmitterStyle::value) override
	{}
	void OnSequenceEnd() override {}
	void OnMapStart(const YAML::Mark &, const std::string &, YAML::anchor_t, YAML::EmitterStyle::value) override {}
	void OnMapEnd() override {}
};

// A second YAML document ("---") would be ignored by YAML::Load: refuse it instead, so nothing in
// the file is silently dropped. Counted up to a bound: on some malformed input yaml-cpp 0.7's
// parser reports empty documents without end, and YAML::LoadAll grew until memory ran out (found
// by tests/fuzz/policy.cc).
YAML::Node load_single_document(const std::string &yaml, const std::string &source)
{
	constexpr size_t kMaxDocuments = 64;
	std::istringstream in(yaml);
	YAML::Parser parser(in);
	DocumentCounter counter;
	while (counter.documents < kMaxDocuments && parser.HandleNextDocument(counter)) {
	}
	if (counter.documents > 1)
		throw YAML::ParserException(counter.second, source + " holds " +
		                                                (counter.documents < kMaxDocuments
		                                                     ? std::to_string(counter.documents)
		                                                     : "at least " + std::to_string(kMaxDocuments)) +
		                                                " YAML documents; a policy is one document");
	return YAML::Load(yaml);
}

Status check_whole(const config::Policy &p, const std::string &source)
{
	// The rules as a whole (ids unique, capture groups, entropy), as cordond would compile them.
	if (p.mask().enabled())
		if (auto checked = check_mask_policy(p.mask()); !checked)
			return plain_error(source + ": " + checked.error().message());
	std::set<std::string> rule_names;
	for (const auto &rule : p.rules()) {
		if (rule.name().empty())
			return plain_error(source + ": every rule needs a name");
		if (!rule_names.insert(rule.name()).second)
			return plain_error(source + ": two rules are named '" + rule.name() + "'");
		const std::string named = source + ": rule '" + rule.name() + "'";
		if (rule.action() == config::Rule::ACTION_UNSPECIFIED)
			return plain_error(named + " needs an action (allow, block, approve or inject)");
		if (rule.action() == config::Rule::INJECT && rule.inject().credential_file().empty())
			return plain_error(named + " injects a credential: it needs inject.credential_file");
		if (rule.action() != config::Rule::INJECT && rule.has_inject())
			return plain_error(named + " has an inject section but its action is not inject");
		if (rule.action() == config::Rule::INJECT && !rule.match().content().empty())
			return plain_error(named +
			                   ": inject decides whole requests, it cannot have content conditions");
		const bool needs_token = !rule.match().claims().empty() || !rule.match().issuers().empty();
		if (needs_token && rule.match().enrollment() == config::UNENROLLED)
			return plain_error(named + " matches token claims or issuers but only unenrolled callers");
		for (const auto &issuer : rule.match().issuers()) {
			bool known = false;
			for (const auto &i : p.identity().issuers())
				known = known || i.name() == issuer;
			if (!known)
				return plain_error(named + " names issuer '" + issuer +
				                   "', which identity.issuers lacks");
		}
	}
	if (p.default_action() == config::Rule::ACTION_UNSPECIFIED)
		return plain_error(source + ": default_action must be allow, block or approve");
	for (auto fallback : {p.default_action(), p.unenrolled_action()})
		if (fallback == config::Rule::INJECT)
			return plain_error(source +
			                   ": default_action and unenrolled_action cannot be inject (it needs a "
			                   "rule with a credential)");
	std::set<std::string> issuer_names, issuer_urls;
	for (const auto &i : p.identity().issuers()) {
		if (i.name().empty() || i.issuer().empty())
			return plain_error(source + ": every identity issuer needs a name and an issuer URL");
		if (!issuer_names.insert(i.name()).second || !issuer_urls.insert(i.issuer()).second)
			return plain_error(source + ": identity issuer '" + i.name() + "' is listed twice");
		if (i.audiences().empty())
			return plain_error(source + ": identity issuer '" + i.name() +
			                   "' needs audiences (the aud its tokens must carry for cordon)");
	}
	if (!p.daemon().netns_listen().empty() &&
	    SocketAddress::parse(p.daemon().netns_listen())->port == p.daemon().netns_dns_port())
		return plain_error(source + ": daemon.netns_dns_port must differ from the port of daemon.netns_listen");
	if (p.capture().dns_proxy() && p.daemon().dns_port() == p.daemon().listen_port())
		return plain_error(source + ": daemon.dns_port must differ from daemon.listen_port");
	if (p.capture().refresh_min_seconds() > p.capture().refresh_max_seconds())
		return plain_error(source + ": capture.refresh_min_seconds exceeds capture.refresh_max_seconds");
	if (p.enforce().cgroups().empty())
		return plain_error(
		    source + ": enforce.cgroups is empty, so nothing would be enforced (use \"/\" for the whole host)");
	if (p.capture().ports().empty())
		return plain_error(source + ": capture.ports is empty, so no connection would be captured");
	for (const auto &exempt : p.enforce().exempt_cgroups())
		for (const auto &enforced : p.enforce().cgroups())
			if (exempt == enforced)
				return plain_error(
				    source + ": " + exempt +
				    " is both enforced and exempt; list it in one of enforce.cgroups and "
				    "enforce.exempt_cgroups");
	return {};
}

} // namespace

Result<config::Policy> load_policy_text(const std::string &yaml, const std::string &source)
{
	config::Policy policy;
	YAML::Node root;
	try {
		// Defaults first, then the file: what the file names replaces the default.
		Loader defaults("<embedded default policy>");
		Status st = defaults.apply(YAML::Load(kDefaultPolicyYaml), policy);
		if (!st)
			return st.error();
		root = load_single_document(yaml, source);
	} catch (const YAML::Exception &e) {
		return plain_error(source + ":" + std::to_string(e.mark.line + 1) + ":" +
		                   std::to_string(e.mark.column + 1) + ": " + e.msg);
	}
	Loader loader(source);
	Status st = loader.apply(root, policy);
	if (!st)
		return st.error();
	st = check_whole(policy, source);
	if (!st)
		return st.error();
	return policy;
}

Result<config::Policy> load_policy_file(const std::string &path)
{
	std::ifstream in(path);
	if (!in)
		return system_error("open policy " + path);
	std::stringstream ss;
	ss << in.rdbuf();
	if (in.bad())
		return system_error("read policy " + path);
	return load_policy_text(ss.str(), path);
}

Status apply_policy_yaml(config::Policy &policy, const std::string &yaml, const std::string &source)
{
	config::Policy candidate = policy;
	YAML::Node root;
	try {
		root = load_single_document(yaml, source);
	} catch (const YAML::Exception &e) {
		return plain_error(source + ": " + e.msg);
	}
	Loader loader(source);
	if (Status st = loader.apply(root, candidate); !st)
		return st;
	if (Status st = check_whole(candidate, source); !st)
		return st;
	policy = std::move(candidate);
	return {};
}

namespace {
// `in_list`: msg is (inside) an element of a list, such as a rule, which the loader starts from
// empty rather than from the embedded default.
void emit_message(YAML::Emitter &out, const Message &msg, bool in_list = false)
{
	const Descriptor *desc = msg.GetDescriptor();
	const Reflection *refl = msg.GetReflection();
	out << YAML::BeginMap;
	for (int i = 0; i < desc->field_count(); i++) {
		const FieldDescriptor *f = desc->field(i);
		// An unset enum (value 0, "unspecified") is left out: the loader would refuse its name.
		if (!f->is_repeated() && f->cpp_type() == FieldDescriptor::CPPTYPE_ENUM &&
		    refl->GetEnumValue(msg, f) == 0)
			continue;
		// So is an absent section (a rule's inject when its action is not inject): printed empty,
		// the loader would refuse it (found by tests/fuzz/policy.cc).
		if (!f->is_repeated() && f->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE && !refl->HasField(msg, f))
			continue;
		// And, in a list element, a value left at its zero (an inject rule's scheme ""): the loader
		// leaves it so when it is absent, but may refuse it written out (found by
		// tests/fuzz/policy.cc). Elsewhere an omitted value would take the default policy's.
		if (in_list && !f->is_repeated() && !refl->HasField(msg, f))
			continue;
		out << YAML::Key << f->name() << YAML::Value;
		auto scalar = [&](int index) {
			switch (f->cpp_type()) {
			case FieldDescriptor::CPPTYPE_UINT32:
				out << (index < 0 ? refl->GetUInt32(msg, f) : refl->GetRepeatedUInt32(msg, f, index));
				break;
			case FieldDescriptor::CPPTYPE_BOOL:
				out << (index < 0 ? refl->GetBool(msg, f) : refl->GetRepeatedBool(msg, f, index));
				break;
			case FieldDescriptor::CPPTYPE_DOUBLE:
				out << (index < 0 ? refl->GetDouble(msg, f) : refl->GetRepeatedDouble(msg, f, index));
				break;
			case FieldDescriptor::CPPTYPE_STRING:
				out << YAML::DoubleQuoted
				    << (index < 0 ? refl->GetString(msg, f) : refl->GetRepeatedString(msg, f, index));
				break;
			case FieldDescriptor::CPPTYPE_ENUM: {
				std::string n =
				    (index < 0 ? refl->GetEnum(msg, f) : refl->GetRepeatedEnum(msg, f, index))->name();
				std::transform(n.begin(), n.end(), n.begin(), [](unsigned char c) {
					return c == '_' ? '-' : static_cast<char>(std::tolower(c));
				});
				out << n;
				break;
			}
			case FieldDescriptor::CPPTYPE_MESSAGE:
				emit_message(
				    out, index < 0 ? refl->GetMessage(msg, f) : refl->GetRepeatedMessage(msg, f, index),
				    in_list || index >= 0);
				break;
			default:
				out << YAML::Null;
			}
		};
		if (f->is_map()) {
			// Sorted by key: a protobuf map's order differs between copies of the same policy, and
			// the printed text is hashed into the policy's version (found by tests/fuzz/policy.cc).
			const Descriptor *entry = f->message_type();
			std::vector<std::pair<std::string, std::string>> entries;
			for (int k = 0; k < refl->FieldSize(msg, f); k++) {
				const Message &e = refl->GetRepeatedMessage(msg, f, k);
				entries.emplace_back(e.GetReflection()->GetString(e, entry->map_key()),
				                     e.GetReflection()->GetString(e, entry->map_value()));
			}
			std::sort(entries.begin(), entries.end());
			out << YAML::Flow << YAML::BeginMap;
			for (const auto &[key, value] : entries)
				out << YAML::Key << YAML::DoubleQuoted << key << YAML::Value << YAML::DoubleQuoted
				    << value;
			out << YAML::EndMap;
		} else if (f->is_repeated()) {
			out << YAML::Flow << YAML::BeginSeq;
			for (int k = 0; k < refl->FieldSize(msg, f); k++)
				scalar(k);
			out << YAML::EndSeq;
		} else {
			scalar(-1);
		}
	}
	out << YAML::EndMap;
}
} // namespace

std::string policy_to_yaml(const config::Policy &policy)
{
	YAML::Emitter out;
	emit_message(out, policy);
	return std::string(out.c_str()) + "\n";
}

config::Policy default_policy()
{
	auto p = load_policy_text("", "<embedded default policy>");
	// The embedded text is fixed at build time and covered by the unit tests.
	return p ? *p : config::Policy();
}

} // namespace cordon
