// What cordond's journal says about a recording store's segments (its `recording_segment`
// entries), for `cordonctl verify` to hold the store against: a witness outside the store.
#pragma once
#include <string>
#include <vector>

#include "common/result.h"
#include "record/segment_store.h"

namespace cordon {

struct JournalWitnesses {
	std::vector<record::SegmentWitness> segments;
	bool journal_open = false; // false: no journal here to ask (then nothing is witnessed)
	std::string error;         // why it could not be read
};

// The local journal's witnesses for the store at `recordings` (matched by its canonical path).
JournalWitnesses read_journal_witnesses(const std::string &recordings);

// `cordonctl verify`'s result, to the journal (SYSLOG_IDENTIFIER=cordonctl): who checked what,
// and what they found.
void journal_verify_result(const std::string &recordings, bool ok, size_t problems, const std::string &session);

} // namespace cordon
