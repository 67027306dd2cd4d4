// Reading DNS messages for the DNS proxy: the question of a query, and the CNAME chain and
// addresses of an answer. Built on libresolv's ns_initparse/ns_parserr, which bound every read
// to the message and reject compression loops; everything here only reads, never trusts a
// length it has not checked, and gives up on anything odd (the proxy then forwards the bytes
// unchanged or refuses, never crashes).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/address.h"
#include "common/result.h"

namespace cordon::dns {

constexpr size_t kHeaderSize = 12;
// Longest CNAME chain followed; resolvers give up around here too (BIND: 16).
constexpr size_t kMaxChain = 16;
// Addresses taken from one answer; more than this is not a real answer for one name.
constexpr size_t kMaxAddresses = 64;

struct Question {
	uint16_t id = 0;
	std::string name; // lower case, no trailing dot
	uint16_t type = 0;
	uint16_t klass = 0;
};

// The single question of a query (or of an answer). Fails on anything but exactly one question.
Result<Question> parse_question(const uint8_t *message, size_t length);

struct AnswerChain {
	Question question;
	bool response = false;
	bool truncated = false;
	uint8_t rcode = 0;
	// The question's name, then each CNAME target followed from it, in order.
	std::vector<std::string> chain;
	// A and AAAA records owned by a name of the chain (IPv4 v4-mapped), without duplicates.
	std::vector<IpAddress> addresses;
	// Smallest TTL of the records used (CNAMEs of the chain and the addresses); absent without any.
	std::optional<uint32_t> ttl;
};

// Follows the CNAME chain from the question's name through the answer section. A chain longer
// than kMaxChain or one that loops stops there; records of other names are ignored (a resolver
// does not use them either).
Result<AnswerChain> parse_answer(const uint8_t *message, size_t length);

// A SERVFAIL answer to `query` (its id and question), for queries the proxy will not answer.
std::optional<std::vector<uint8_t>> servfail_for(const uint8_t *query, size_t length);

} // namespace cordon::dns
