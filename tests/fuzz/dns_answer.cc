// libFuzzer target for the DNS proxy's reading of answers and queries. Besides crashes and
// undefined behaviour under the sanitizers, it checks what the proxy relies on: a chain starts at
// the question and stays within its bounds, addresses are capped and unique, and a SERVFAIL made
// for a query is itself a readable answer to the same question.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <set>

#include "dns/dns_message.h"

using namespace cordon;

namespace {
void check(bool ok, const char *what)
{
	if (!ok) {
		std::fprintf(stderr, "invariant violated: %s\n", what);
		std::abort();
	}
}
} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (auto chain = dns::parse_answer(data, size)) {
		check(!chain->chain.empty() && chain->chain.front() == chain->question.name,
		      "chain starts at the question");
		check(chain->chain.size() <= dns::kMaxChain + 1, "chain bounded");
		check(chain->addresses.size() <= dns::kMaxAddresses, "addresses capped");
		std::set<IpAddress> unique(chain->addresses.begin(), chain->addresses.end());
		check(unique.size() == chain->addresses.size(), "addresses unique");
		check(chain->addresses.empty() || chain->ttl.has_value(), "addresses carry a TTL");
	}
	if (auto question = dns::parse_question(data, size)) {
		// None for a question written with compression pointers (no real query does that).
		auto reply = dns::servfail_for(data, size);
		if (!reply)
			return 0;
		auto read = dns::parse_answer(reply->data(), reply->size());
		check(read && read->response && read->rcode == 2 && read->question.name == question->name,
		      "SERVFAIL answers the same question");
	}
	return 0;
}
