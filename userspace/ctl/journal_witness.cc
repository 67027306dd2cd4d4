#include "ctl/journal_witness.h"

#include <pwd.h>
#include <systemd/sd-journal.h>
#include <unistd.h>

#include <cstdlib>
#include <ctime>
#include <memory>

namespace cordon {
namespace {

struct JournalCloser {
	void operator()(sd_journal *j) const { sd_journal_close(j); }
};

// The value of `field` in the current entry ("" when absent).
std::string field(sd_journal *j, const char *name)
{
	const void *data = nullptr;
	size_t length = 0;
	if (sd_journal_get_data(j, name, &data, &length) < 0)
		return {};
	std::string_view text(static_cast<const char *>(data), length);
	const size_t eq = text.find('=');
	return eq == std::string_view::npos ? std::string() : std::string(text.substr(eq + 1));
}

std::string unhex(const std::string &hex)
{
	std::string out;
	if (hex.size() % 2)
		return out;
	for (size_t i = 0; i < hex.size(); i += 2)
		out.push_back(static_cast<char>(std::strtoul(hex.substr(i, 2).c_str(), nullptr, 16)));
	return out;
}

std::string canonical(const std::string &path)
{
	char *real = ::realpath(path.c_str(), nullptr);
	if (!real)
		return path;
	std::string out = real;
	::free(real);
	return out;
}

} // namespace

JournalWitnesses read_journal_witnesses(const std::string &recordings)
{
	JournalWitnesses out;
	sd_journal *raw = nullptr;
	// The system journal only: users' own journals hold what they wrote themselves.
	if (int rc = sd_journal_open(&raw, SD_JOURNAL_LOCAL_ONLY | SD_JOURNAL_SYSTEM); rc < 0) {
		out.error = std::string("cannot open the journal: ") + std::strerror(-rc);
		return out;
	}
	std::unique_ptr<sd_journal, JournalCloser> j(raw);
	const std::string event = "CORDON_EVENT=recording_segment";
	const std::string store = "CORDON_RECORDINGS=" + canonical(recordings);
	// Anyone may write CORDON_* fields to the journal; _UID is journald's own, from the sender's
	// credentials: only root's entries (cordond's) witness anything.
	const std::string root = "_UID=0";
	if (sd_journal_add_match(j.get(), event.data(), event.size()) < 0 ||
	    sd_journal_add_match(j.get(), store.data(), store.size()) < 0 ||
	    sd_journal_add_match(j.get(), root.data(), root.size()) < 0) {
		out.error = "cannot search the journal";
		return out;
	}
	out.journal_open = true;
	SD_JOURNAL_FOREACH(j.get())
	{
		record::SegmentWitness w;
		w.name = field(j.get(), "CORDON_SEGMENT");
		w.sealed = field(j.get(), "CORDON_SEGMENT_STATE") == "sealed";
		w.hash = unhex(field(j.get(), "CORDON_CHAIN_HASH"));
		w.records = std::strtoull(field(j.get(), "CORDON_RECORDS").c_str(), nullptr, 10);
		w.key_id = field(j.get(), "CORDON_KEY_ID");
		uint64_t usec = 0;
		if (sd_journal_get_realtime_usec(j.get(), &usec) >= 0) {
			const time_t secs = static_cast<time_t>(usec / 1000000);
			struct tm tm = {};
			char buf[32];
			if (::gmtime_r(&secs, &tm) && std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm))
				w.when = buf;
		}
		if (w.hash.size() == 32)
			out.segments.push_back(std::move(w));
	}
	return out;
}

void journal_verify_result(const std::string &recordings, bool ok, size_t problems, const std::string &session)
{
	std::string user;
	const uid_t uid = ::getuid();
	if (const passwd *pw = ::getpwuid(uid))
		user = pw->pw_name;
	const char *sudo = std::getenv("SUDO_USER");
	const std::string who = user + (sudo && *sudo ? " (sudo from " + std::string(sudo) + ")" : "");
	const std::string message = std::string("cordonctl verify of ") + recordings + ": " +
	                            (ok ? "no problems" : std::to_string(problems) + " problems");
	sd_journal_send("MESSAGE=%s", message.c_str(), "PRIORITY=%d", ok ? 6 : 2, "SYSLOG_IDENTIFIER=cordonctl",
	                "CORDON_EVENT=recording_verify", "CORDON_RECORDINGS=%s", canonical(recordings).c_str(),
	                "CORDON_RESULT=%s", ok ? "ok" : "tampered", "CORDON_PROBLEMS=%zu", problems,
	                "CORDON_SESSION=%s", session.c_str(), "CORDON_USER=%s", who.c_str(), nullptr);
}

} // namespace cordon
