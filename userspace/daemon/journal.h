// Structured audit entries for the systemd journal (sd_journal_sendv), written in batches by a
// background thread from a bounded queue so the data path never waits on journald. Without a journal
// socket, entries go to stderr as key=value lines instead.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace cordon {

struct JournalEntry {
	int priority = 6; // syslog priority, LOG_INFO
	std::string message;
	std::vector<std::pair<std::string, std::string>> fields; // CORDON_* names without '='

	JournalEntry &add(std::string name, std::string value)
	{
		fields.emplace_back(std::move(name), std::move(value));
		return *this;
	}
	// Only when there is something to say: an empty journal field is noise.
	JournalEntry &add_if(std::string name, std::string value)
	{
		return value.empty() ? *this : add(std::move(name), std::move(value));
	}
};

class Journal {
public:
	explicit Journal(size_t capacity = 65536);
	~Journal();
	Journal(const Journal &) = delete;
	Journal &operator=(const Journal &) = delete;

	// Never blocks. When the queue is full the entry is dropped and counted: a stalled
	// journald must not stall every job's connections.
	void send(JournalEntry entry);
	// Waits until everything queued so far has been written.
	void flush();

	uint64_t written() const { return written_.load(); }
	uint64_t dropped() const { return dropped_.load(); }
	uint64_t fell_back() const { return fell_back_.load(); }

private:
	void run();
	void write_one(const JournalEntry &entry);

	size_t capacity_;
	std::mutex mutex_;
	std::condition_variable wake_;
	std::condition_variable drained_;
	std::deque<JournalEntry> queue_;
	bool stopping_ = false;
	bool busy_ = false;
	std::atomic<uint64_t> written_{0}, dropped_{0}, fell_back_{0};
	std::thread thread_;
};

} // namespace cordon
