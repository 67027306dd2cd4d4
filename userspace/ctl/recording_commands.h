// cordonctl commands over the session recordings (proto/cordon/recording.proto): verify, sessions,
// replay, export. They read the store directly (root only: it is 0700), no daemon needed.
//
// The logic takes the records, a decoder and a stream, so that it is tested without a daemon;
// run_recording_command adds the files, the options and the exit codes.
#pragma once

#include <cstdint>
#include <iosfwd>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "common/result.h"
#include "cordon/recording.pb.h"
#include "record/segment_store.h"

namespace cordon::proxy {
class MessageDecoder;
}

namespace cordon {

struct RecordingCommandOptions {
	std::string recordings;  // the store, default <state dir>/recordings
	std::string key_file;    // <state dir>/recording.key
	std::string descriptors; // Cursor's descriptor set; generic decoding when unreadable
	bool json = false;
	bool all = false;            // verify --all
	bool journal = true;         // verify, export: hold the store against the journal's segment witnesses
	bool journal_result = false; // verify: journal the result (cordonctl itself, not its tests)
	std::string format;          // export: only "json" ("" means json)
	// sessions: globs (fnmatch) and the time window
	std::string identity, host, rpc, action, since, until;
};

// Exit codes: 0 done (verify: no problems), 1 failed, not found or (verify) problems, 2 usage.
bool is_recording_command(const std::string &command);
int run_recording_command(const std::string &command, const std::vector<std::string> &args,
                          const RecordingCommandOptions &options, std::ostream &out, std::ostream &err);

// --- the pieces, for tests ---------------------------------------------------------------------

// "2026-11-29T17:00:00Z" (also with fractional seconds, a numeric offset, no zone = UTC, or a date
// alone) or relative to `now_us`: "90s", "10m", "2h", "1d", "1w" ago. Microseconds since the epoch.
Result<int64_t> parse_time_us(const std::string &text, int64_t now_us);
// 1764435600123456 -> "2025-11-29T17:00:00.123Z" (without ".123" when not `millis`).
std::string iso_time(int64_t time_us, bool millis = true);

// The records of one session, grouped.
struct RecordedExchange {
	uint64_t number = 0;
	const recording::Record *request = nullptr;
	std::vector<const recording::Record *> messages, decisions;
	const recording::Record *response = nullptr, *end = nullptr;
	int64_t first_time_us = 0;
};
struct RecordedSession {
	std::string id;
	const recording::Record *start = nullptr, *end = nullptr;
	std::vector<RecordedExchange> exchanges; // by when each began
	int64_t first_time_us = 0, last_time_us = 0;
	uint64_t records = 0;
};
// Every session in `records` (pointers into it), by when each began.
std::vector<RecordedSession> group_sessions(const std::vector<recording::Record> &records);

struct SessionFilter {
	std::string identity = {}, host = {}, rpc = {}, action = {}; // globs; "" = any
	std::optional<int64_t> since_us = {}, until_us = {};
};
// The window keeps sessions active in it (begun before `until`, still going at `since`); host, rpc
// and action must all hold for one same exchange of the session.
bool session_matches(const RecordedSession &session, const SessionFilter &filter);

void print_sessions(const std::vector<recording::Record> &records, const SessionFilter &filter, bool as_json,
                    std::ostream &out);
// False (and nothing printed) when no record belongs to `id`.
bool replay_session(const std::vector<recording::Record> &records, const std::string &id,
                    const proxy::MessageDecoder &decoder, std::ostream &out);
// The session as one JSON document; `verified`: whether the store verifies. Error when not found.
Result<nlohmann::ordered_json> export_session(const std::vector<recording::Record> &records, const std::string &id,
                                              const proxy::MessageDecoder &decoder, bool verified);

size_t problem_count(const record::VerifyReport &report);
nlohmann::ordered_json verify_report_json(const record::VerifyReport &report);
void print_verify_report(const record::VerifyReport &report, std::ostream &out);

} // namespace cordon
