#include "dns/dns_message.h"

#include <arpa/nameser.h>
#include <netinet/in.h>
#include <resolv.h>

#include <algorithm>
#include <cstring>

namespace cordon::dns {
namespace {

std::string normalize(const char *name)
{
	std::string out(name);
	while (!out.empty() && out.back() == '.')
		out.pop_back();
	std::transform(out.begin(), out.end(), out.begin(), [](unsigned char c) { return std::tolower(c); });
	return out;
}

Result<ns_msg> init(const uint8_t *message, size_t length)
{
	ns_msg msg;
	if (length < kHeaderSize || length > 65535)
		return plain_error("DNS message of " + std::to_string(length) + " bytes");
	if (ns_initparse(message, static_cast<int>(length), &msg) != 0)
		return plain_error("malformed DNS message");
	return msg;
}

Result<Question> question_of(ns_msg &msg)
{
	if (ns_msg_count(msg, ns_s_qd) != 1)
		return plain_error("DNS message without exactly one question");
	ns_rr rr;
	if (ns_parserr(&msg, ns_s_qd, 0, &rr) != 0)
		return plain_error("malformed DNS question");
	Question q;
	q.id = ns_msg_id(msg);
	q.name = normalize(ns_rr_name(rr));
	q.type = ns_rr_type(rr);
	q.klass = ns_rr_class(rr);
	return q;
}

} // namespace

Result<Question> parse_question(const uint8_t *message, size_t length)
{
	auto msg = init(message, length);
	if (!msg)
		return msg.error();
	return question_of(*msg);
}

Result<AnswerChain> parse_answer(const uint8_t *message, size_t length)
{
	auto msg = init(message, length);
	if (!msg)
		return msg.error();
	AnswerChain out;
	auto q = question_of(*msg);
	if (!q)
		return q.error();
	out.question = std::move(*q);
	out.response = ns_msg_getflag(*msg, ns_f_qr) != 0;
	out.truncated = ns_msg_getflag(*msg, ns_f_tc) != 0;
	out.rcode = static_cast<uint8_t>(ns_msg_getflag(*msg, ns_f_rcode));
	out.chain.push_back(out.question.name);
	if (!out.response || out.question.klass != ns_c_in)
		return out;

	struct Record {
		std::string owner;
		uint16_t type;
		uint32_t ttl;
		std::string cname;
		IpAddress address;
	};
	std::vector<Record> records;
	const int count = ns_msg_count(*msg, ns_s_an);
	for (int i = 0; i < count; i++) {
		ns_rr rr;
		// ns_initparse has already walked every record, so this only fails on a corrupt name.
		if (ns_parserr(&*msg, ns_s_an, i, &rr) != 0)
			return plain_error("malformed DNS answer record");
		if (ns_rr_class(rr) != ns_c_in)
			continue;
		Record r{normalize(ns_rr_name(rr)), static_cast<uint16_t>(ns_rr_type(rr)), ns_rr_ttl(rr), {}, {}};
		const uint8_t *rdata = ns_rr_rdata(rr);
		const size_t rdlen = ns_rr_rdlen(rr);
		if (r.type == ns_t_a) {
			if (rdlen != 4)
				return plain_error("A record of " + std::to_string(rdlen) + " bytes");
			uint32_t ip;
			std::memcpy(&ip, rdata, 4);
			r.address = IpAddress::from_v4(ip);
		} else if (r.type == ns_t_aaaa) {
			if (rdlen != 16)
				return plain_error("AAAA record of " + std::to_string(rdlen) + " bytes");
			in6_addr ip;
			std::memcpy(&ip, rdata, 16);
			r.address = IpAddress::from_v6(ip);
		} else if (r.type == ns_t_cname) {
			char target[NS_MAXDNAME];
			int used =
			    ns_name_uncompress(ns_msg_base(*msg), ns_msg_end(*msg), rdata, target, sizeof(target));
			if (used < 0 || static_cast<size_t>(used) != rdlen)
				return plain_error("malformed CNAME record");
			r.cname = normalize(target);
		} else {
			continue;
		}
		records.push_back(std::move(r));
	}

	auto keep_ttl = [&out](uint32_t ttl) { out.ttl = out.ttl ? std::min(*out.ttl, ttl) : ttl; };
	// Follow the chain: each step must be a CNAME owned by the current name.
	std::string current = out.question.name;
	while (out.chain.size() <= kMaxChain) {
		auto next = std::find_if(records.begin(), records.end(), [&current](const Record &r) {
			return r.type == ns_t_cname && r.owner == current;
		});
		if (next == records.end())
			break;
		if (std::find(out.chain.begin(), out.chain.end(), next->cname) != out.chain.end())
			break; // a loop: what is chained so far stands, nothing more
		keep_ttl(next->ttl);
		current = next->cname;
		out.chain.push_back(current);
	}
	if (out.chain.size() > kMaxChain + 1)
		out.chain.resize(kMaxChain + 1);
	for (const Record &r : records) {
		if (r.type != ns_t_a && r.type != ns_t_aaaa)
			continue;
		if (std::find(out.chain.begin(), out.chain.end(), r.owner) == out.chain.end())
			continue;
		if (std::find(out.addresses.begin(), out.addresses.end(), r.address) != out.addresses.end())
			continue;
		if (out.addresses.size() >= kMaxAddresses)
			break;
		keep_ttl(r.ttl);
		out.addresses.push_back(r.address);
	}
	return out;
}

std::optional<std::vector<uint8_t>> servfail_for(const uint8_t *query, size_t length)
{
	auto msg = init(query, length);
	if (!msg || ns_msg_count(*msg, ns_s_qd) != 1)
		return std::nullopt;
	ns_rr rr;
	if (ns_parserr(&*msg, ns_s_qd, 0, &rr) != 0)
		return std::nullopt;
	// The header and the question as they came (the question ends where the parser stopped).
	const size_t end = static_cast<size_t>(msg->_msg_ptr - query);
	if (end > length)
		return std::nullopt;
	// Only a question written out label by label: a compression pointer (which no real query
	// uses) could point into the header this rewrites, and the reply would ask something else.
	for (size_t at = kHeaderSize; at < end && query[at] != 0; at += 1 + query[at])
		if (query[at] & 0xc0)
			return std::nullopt;
	std::vector<uint8_t> out(query, query + end);
	out[2] = static_cast<uint8_t>(0x80 | (out[2] & 0x79)); // QR, keep opcode and RD, clear AA/TC
	out[3] = 0x80 | ns_r_servfail;                         // RA, SERVFAIL
	std::memset(&out[6], 0, 6);                            // no answer, authority, additional
	return out;
}

} // namespace cordon::dns
