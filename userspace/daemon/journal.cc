#include "daemon/journal.h"

#include <sys/stat.h>
#include <sys/uio.h>
#include <systemd/sd-journal.h>
#include <unistd.h>

#include <cstdio>

#include "common/log.h"

namespace cordon {
namespace {
// sd_journal_sendv() reports success when no journald runs at all (it drops the entry on
// ENOENT by design), so look for the socket ourselves before trusting it.
bool journal_socket_present()
{
	struct stat st;
	return ::stat("/run/systemd/journal/socket", &st) == 0 && S_ISSOCK(st.st_mode);
}
} // namespace

Journal::Journal(size_t capacity) : capacity_(capacity), thread_([this] { run(); }) {}

Journal::~Journal()
{
	{
		std::lock_guard lock(mutex_);
		stopping_ = true;
	}
	wake_.notify_all();
	thread_.join();
}

void Journal::send(JournalEntry entry)
{
	bool wake;
	{
		std::lock_guard lock(mutex_);
		if (queue_.size() >= capacity_) {
			dropped_++;
			return;
		}
		// A writer that is busy drains the whole queue when done: wake it only when idle, so
		// under load entries go out in batches without a futex call per entry.
		wake = queue_.empty() && !busy_;
		queue_.push_back(std::move(entry));
	}
	if (wake)
		wake_.notify_one();
}

void Journal::flush()
{
	std::unique_lock lock(mutex_);
	drained_.wait(lock, [this] { return queue_.empty() && !busy_; });
}

void Journal::run()
{
	uint64_t reported_drops = 0;
	for (;;) {
		std::deque<JournalEntry> batch;
		{
			std::unique_lock lock(mutex_);
			busy_ = false;
			if (queue_.empty())
				drained_.notify_all();
			wake_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
			if (queue_.empty()) {
				if (stopping_)
					return; // everything was written
				continue;
			}
			batch.swap(queue_);
			busy_ = true;
		}
		for (const JournalEntry &entry : batch)
			write_one(entry);
		if (uint64_t d = dropped_.load(); d != reported_drops) {
			JournalEntry note;
			note.priority = 4;
			note.message =
			    "journal queue full: " + std::to_string(d - reported_drops) + " audit entries dropped";
			note.add("CORDON_EVENT", "journal_overflow")
			    .add("CORDON_DROPPED", std::to_string(d - reported_drops));
			write_one(note);
			reported_drops = d;
		}
	}
}

void Journal::write_one(const JournalEntry &entry)
{
	std::vector<std::string> lines;
	lines.reserve(entry.fields.size() + 3);
	lines.push_back("MESSAGE=" + entry.message);
	lines.push_back("PRIORITY=" + std::to_string(entry.priority));
	lines.push_back("SYSLOG_IDENTIFIER=cordond");
	for (const auto &[name, value] : entry.fields)
		lines.push_back(name + "=" + value);
	std::vector<iovec> iov(lines.size());
	for (size_t i = 0; i < lines.size(); i++)
		iov[i] = iovec{lines[i].data(), lines[i].size()};
	if (journal_socket_present() && sd_journal_sendv(iov.data(), static_cast<int>(iov.size())) == 0) {
		written_++;
		return;
	}
	// No journal socket (or journald refused): keep the record on stderr, one line. Values come
	// from jobs (comm, cgroup names): escape them so none can forge a field or a line.
	fell_back_++;
	auto escaped = [](const std::string &value, bool quote_spaces) {
		std::string out;
		bool quote = false;
		for (unsigned char c : value) {
			if (c == '\\' || c == '"') {
				out += '\\';
				out += static_cast<char>(c);
			} else if (c < 0x20 || c == 0x7f) {
				char buf[8];
				std::snprintf(buf, sizeof(buf), "\\x%02x", c);
				out += buf;
			} else {
				quote |= c == ' ' || c == '=';
				out += static_cast<char>(c);
			}
		}
		return quote && quote_spaces ? "\"" + out + "\"" : out;
	};
	std::string line = "cordond: " + escaped(entry.message, false);
	for (const auto &[name, value] : entry.fields)
		line += " " + name + "=" + escaped(value, true);
	log::write(entry.priority <= 3   ? log::Level::error
	           : entry.priority == 4 ? log::Level::warning
	                                 : log::Level::info,
	           line);
}

} // namespace cordon
