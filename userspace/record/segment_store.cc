#include "record/segment_store.h"

#include <dirent.h>
#include <fcntl.h>
#include <google/protobuf/descriptor.h>
#include <google/protobuf/message.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <map>

namespace cordon::record {
namespace {

int64_t now_us()
{
	return std::chrono::duration_cast<std::chrono::microseconds>(
	           std::chrono::system_clock::now().time_since_epoch())
	    .count();
}

void put_varint(std::string &out, uint64_t v)
{
	while (v >= 0x80) {
		out.push_back(static_cast<char>((v & 0x7f) | 0x80));
		v >>= 7;
	}
	out.push_back(static_cast<char>(v));
}

size_t varint_size(uint64_t v)
{
	size_t n = 1;
	while (v >= 0x80) {
		v >>= 7;
		n++;
	}
	return n;
}

// false when the varint is cut short or longer than 10 bytes.
bool get_varint(std::string_view in, size_t &pos, uint64_t &v)
{
	v = 0;
	for (int shift = 0; shift < 70 && pos < in.size(); shift += 7) {
		const auto b = static_cast<unsigned char>(in[pos++]);
		v |= static_cast<uint64_t>(b & 0x7f) << shift;
		if (!(b & 0x80))
			return true;
	}
	return false;
}

Status write_all(int fd, std::string_view data, const std::string &what)
{
	while (!data.empty()) {
		ssize_t n = ::write(fd, data.data(), data.size());
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return system_error("write " + what);
		if (n == 0)
			return system_error("write " + what, ENOSPC);
		data.remove_prefix(static_cast<size_t>(n));
	}
	return {};
}

Result<std::string> read_file(const std::string &path)
{
	UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
	if (!fd)
		return system_error("open " + path);
	std::string out;
	char buf[1 << 16];
	for (;;) {
		ssize_t n = ::read(fd.get(), buf, sizeof(buf));
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return system_error("read " + path);
		if (n == 0)
			return out;
		out.append(buf, static_cast<size_t>(n));
	}
}

const std::string kZeroHash(32, '\0');

} // namespace

std::string sha256(std::string_view data)
{
	unsigned char out[EVP_MAX_MD_SIZE];
	unsigned int len = 0;
	EVP_Digest(data.data(), data.size(), out, &len, EVP_sha256(), nullptr);
	return std::string(reinterpret_cast<char *>(out), len);
}

std::string hmac_sha256(std::string_view key, std::string_view data)
{
	unsigned char out[EVP_MAX_MD_SIZE];
	unsigned int len = 0;
	HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
	     reinterpret_cast<const unsigned char *>(data.data()), data.size(), out, &len);
	return std::string(reinterpret_cast<char *>(out), len);
}

std::string hex(std::string_view bytes)
{
	static const char digits[] = "0123456789abcdef";
	std::string out;
	out.reserve(bytes.size() * 2);
	for (unsigned char b : bytes) {
		out.push_back(digits[b >> 4]);
		out.push_back(digits[b & 15]);
	}
	return out;
}

Result<std::string> load_key(const std::string &path)
{
	auto key = read_file(path);
	if (!key)
		return key.error();
	if (key->size() != kKeyBytes)
		return plain_error(path + " is not a recording key (" + std::to_string(kKeyBytes) + " bytes)");
	return key;
}

Result<std::string> load_or_create_key(const std::string &path)
{
	if (::access(path.c_str(), F_OK) == 0)
		return load_key(path);
	std::string key(kKeyBytes, '\0');
	if (RAND_bytes(reinterpret_cast<unsigned char *>(key.data()), static_cast<int>(key.size())) != 1)
		return plain_error("no randomness for the recording key");
	UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
	if (!fd)
		return system_error("create " + path);
	if (Status st = write_all(fd.get(), key, path); !st)
		return st.error();
	if (::fsync(fd.get()) != 0)
		return system_error("fsync " + path);
	return key;
}

std::string checkpoint_hmac(std::string_view key, const recording::Record &checkpoint)
{
	recording::Record copy = checkpoint;
	copy.mutable_checkpoint()->clear_hmac();
	return hmac_sha256(key, copy.SerializeAsString());
}

std::string segment_name(uint64_t index)
{
	char name[40];
	std::snprintf(name, sizeof(name), "segment-%08llu.rec", static_cast<unsigned long long>(index));
	return name;
}

bool parse_segment_name(std::string_view name, uint64_t &index)
{
	constexpr std::string_view prefix = "segment-", suffix = ".rec";
	if (name.size() <= prefix.size() + suffix.size() || name.substr(0, prefix.size()) != prefix ||
	    name.substr(name.size() - suffix.size()) != suffix)
		return false;
	std::string_view digits = name.substr(prefix.size(), name.size() - prefix.size() - suffix.size());
	if (digits.empty() || digits.size() > 18 ||
	    !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }))
		return false;
	index = std::stoull(std::string(digits));
	return true;
}

Result<std::vector<uint64_t>> list_segments(const std::string &dir)
{
	DIR *d = ::opendir(dir.c_str());
	if (!d)
		return system_error("open " + dir);
	std::vector<uint64_t> out;
	while (dirent *e = ::readdir(d)) {
		uint64_t index = 0;
		if (parse_segment_name(e->d_name, index))
			out.push_back(index);
	}
	::closedir(d);
	std::sort(out.begin(), out.end());
	return out;
}

Result<SegmentRead> read_segment(const std::string &path)
{
	auto data = read_file(path);
	if (!data)
		return data.error();
	SegmentRead r;
	r.file_bytes = data->size();
	size_t pos = 0;
	while (pos < data->size()) {
		const size_t start = pos;
		uint64_t len = 0;
		if (!get_varint(*data, pos, len)) {
			r.tail_error = "a record's length is cut short at offset " + std::to_string(start);
			break;
		}
		if (len > kMaxRecordBytes || len > data->size() - pos) {
			r.tail_error = "a record at offset " + std::to_string(start) + " is cut short (" +
			               std::to_string(len) + " bytes announced, " + std::to_string(data->size() - pos) +
			               " left)";
			break;
		}
		std::string_view bytes(data->data() + pos, static_cast<size_t>(len));
		recording::Record rec;
		if (!rec.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
			r.tail_error = "the record at offset " + std::to_string(start) + " does not parse";
			break;
		}
		pos += static_cast<size_t>(len);
		r.records.push_back(std::move(rec));
		r.hashes.push_back(sha256(bytes));
		r.offsets.push_back(start);
		r.good_bytes = pos;
	}
	return r;
}

void append_frame(std::string &out, const recording::Record &r)
{
	put_varint(out, r.ByteSizeLong());
	r.AppendToString(&out);
}

void append_message_frame(std::string &out, const recording::Record &head, const recording::Message &message,
                          std::string_view payload)
{
	// Protobuf reads a field wherever it comes in its message, so the payload may follow the
	// message's other fields, and the message the record's.
	constexpr char kPayloadTag = (5 << 3) | 2;      // Message.payload, length-delimited
	constexpr uint64_t kMessageTag = (22 << 3) | 2; // Record.message, length-delimited
	const size_t message_bytes = message.ByteSizeLong();
	const size_t payload_field = 1 + varint_size(payload.size()) + payload.size();
	const size_t inner = message_bytes + payload_field;
	const size_t total = head.ByteSizeLong() + varint_size(kMessageTag) + varint_size(inner) + inner;
	out.reserve(out.size() + varint_size(total) + total);
	put_varint(out, total);
	head.AppendToString(&out);
	put_varint(out, kMessageTag);
	put_varint(out, inner);
	message.AppendToString(&out);
	out.push_back(kPayloadTag);
	put_varint(out, payload.size());
	out.append(payload);
}

bool next_frame(std::string_view in, size_t &pos, std::string_view &record)
{
	size_t at = pos;
	uint64_t len = 0;
	if (at >= in.size() || !get_varint(in, at, len) || len > in.size() - at)
		return false;
	record = in.substr(at, static_cast<size_t>(len));
	pos = at + static_cast<size_t>(len);
	return true;
}

// --- writing ------------------------------------------------------------------------------------

Result<std::unique_ptr<SegmentWriter>> SegmentWriter::open(const std::string &dir, std::string key, std::string host,
                                                           std::string version, uint64_t max_segment_bytes)
{
	if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST)
		return system_error("create " + dir);
	if (::chmod(dir.c_str(), 0700) != 0)
		return system_error("chmod " + dir);
	auto w = std::unique_ptr<SegmentWriter>(new SegmentWriter());
	w->dir_ = dir;
	w->key_ = std::move(key);
	w->host_ = std::move(host);
	w->version_ = std::move(version);
	w->max_segment_bytes_ = max_segment_bytes;
	w->last_hash_ = kZeroHash;
	auto segments = list_segments(dir);
	if (!segments)
		return segments.error();
	if (!segments->empty())
		w->index_ = segments->back() + 1;
	// The chain goes on from the newest segment's last whole record (after a crash, its torn
	// tail stays where it is, for verify to report).
	for (auto it = segments->rbegin(); it != segments->rend(); ++it) {
		auto read = read_segment(dir + "/" + segment_name(*it));
		if (!read)
			return read.error();
		if (!read->hashes.empty()) {
			w->last_hash_ = read->hashes.back();
			break;
		}
	}
	return w;
}

SegmentWriter::~SegmentWriter()
{
	if (open_)
		(void)checkpoint(true);
}

void SegmentWriter::buffer_record(std::string_view record, std::string_view chain)
{
	put_varint(pending_, record.size() + chain.size());
	const size_t start = pending_.size();
	pending_.append(record);
	pending_.append(chain);
	last_hash_ = sha256(std::string_view(pending_).substr(start));
	seq_++;
	bytes_ += pending_.size() - start + varint_size(record.size() + chain.size());
}

void SegmentWriter::write_record(recording::Record &r)
{
	r.set_prev_sha256(last_hash_);
	r.set_seq(seq_);
	if (r.time_us() == 0)
		r.set_time_us(now_us());
	buffer_record(r.SerializeAsString(), {});
}

Status SegmentWriter::flush()
{
	if (pending_.empty())
		return {};
	Status st = write_all(fd_.get(), pending_, dir_ + "/" + segment_name(index_));
	pending_.clear();
	if (!st) {
		// Take partial records back out (a full disk), so later records still follow the chain.
		(void)!::ftruncate(fd_.get(), static_cast<off_t>(flushed_bytes_));
		dropped_ += seq_ - flushed_seq_;
		last_hash_ = flushed_hash_;
		seq_ = flushed_seq_;
		bytes_ = flushed_bytes_;
		since_checkpoint_ = flushed_since_checkpoint_;
		return st;
	}
	flushed_hash_ = last_hash_;
	flushed_seq_ = seq_;
	flushed_bytes_ = bytes_;
	flushed_since_checkpoint_ = since_checkpoint_;
	return {};
}

Status SegmentWriter::start_segment()
{
	const std::string path = dir_ + "/" + segment_name(index_);
	fd_.reset(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0600));
	if (!fd_)
		return system_error("create " + path);
	seq_ = flushed_seq_ = 0;
	bytes_ = flushed_bytes_ = 0;
	since_checkpoint_ = flushed_since_checkpoint_ = 0;
	flushed_hash_ = last_hash_;
	const std::string continues_from = last_hash_;
	pending_.clear();
	recording::Record r;
	auto *s = r.mutable_segment_start();
	s->set_index(index_);
	s->set_host(host_);
	s->set_key_id(key_id());
	s->set_cordon_version(version_);
	write_record(r);
	since_checkpoint_ = 1;
	if (Status st = flush(); !st) {
		// No segment without its start record (a full disk): the next append tries afresh.
		fd_.reset();
		::unlink(path.c_str());
		return st;
	}
	open_ = true;
	witnesses_.push_back({segment_name(index_), false, continues_from, 0, {}, key_id()});
	// The new name must survive a crash too.
	UniqueFd dirfd(::open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
	if (dirfd)
		::fsync(dirfd.get());
	return {};
}

Status SegmentWriter::append(recording::Record r)
{
	r.clear_prev_sha256();
	r.clear_seq();
	if (r.time_us() == 0)
		r.set_time_us(now_us());
	return append_serialized(r.SerializeAsString());
}

Status SegmentWriter::append_serialized(std::string_view record)
{
	constexpr size_t kFlushBytes = 1 << 20;
	if (open_ && max_segment_bytes_ && bytes_ >= max_segment_bytes_) {
		if (Status st = checkpoint(true); !st)
			return st;
	}
	if (!open_)
		if (Status st = start_segment(); !st)
			return st;
	// prev_sha256 (field 1, 32 bytes) and seq (field 2, a varint): the chain's fields.
	char chain[2 + 32 + 1 + 10];
	size_t n = 0;
	chain[n++] = 0x0a;
	chain[n++] = 32;
	std::memcpy(chain + n, last_hash_.data(), 32);
	n += 32;
	chain[n++] = 0x10;
	for (uint64_t v = seq_;; v >>= 7) {
		chain[n++] = static_cast<char>(v >= 0x80 ? (v & 0x7f) | 0x80 : v);
		if (v < 0x80)
			break;
	}
	buffer_record(record, std::string_view(chain, n));
	since_checkpoint_++;
	if (pending_.size() >= kFlushBytes)
		return flush();
	return {};
}

Status SegmentWriter::checkpoint(bool final)
{
	if (!open_ || (since_checkpoint_ == 0 && !final))
		return flush();
	recording::Record c;
	c.set_prev_sha256(last_hash_);
	c.set_seq(seq_);
	c.set_time_us(now_us());
	c.mutable_checkpoint()->set_records(seq_);
	c.mutable_checkpoint()->set_final(final);
	c.mutable_checkpoint()->set_hmac(checkpoint_hmac(key_, c));
	write_record(c);
	since_checkpoint_ = 0;
	if (Status st = flush(); !st)
		return st;
	if (final) {
		// The seal is written: the segment is closed whatever fdatasync says, since nothing may
		// ever follow a seal (verify would call it appended after sealing). Its error is still
		// reported.
		Status st = sync();
		fd_.reset();
		open_ = false;
		witnesses_.push_back({segment_name(index_), true, last_hash_, seq_, {}, key_id()});
		index_++;
		return st;
	}
	return {};
}

Status SegmentWriter::sync()
{
	if (Status st = flush(); !st)
		return st;
	if (fd_ && ::fdatasync(fd_.get()) != 0)
		return system_error("fdatasync " + dir_ + "/" + segment_name(index_));
	return {};
}

Result<std::vector<std::string>> SegmentWriter::prune(uint64_t max_total_bytes, int64_t max_age_seconds)
{
	auto segments = list_segments(dir_);
	if (!segments)
		return segments.error();
	struct Entry {
		uint64_t index;
		uint64_t size;
		int64_t mtime;
	};
	std::vector<Entry> entries;
	uint64_t total = 0;
	for (uint64_t i : *segments) {
		struct stat st;
		if (::stat((dir_ + "/" + segment_name(i)).c_str(), &st) != 0)
			continue;
		total += static_cast<uint64_t>(st.st_size);
		if (open_ && i == index_)
			continue; // never the one being written
		entries.push_back({i, static_cast<uint64_t>(st.st_size), st.st_mtim.tv_sec});
	}
	const int64_t now = ::time(nullptr);
	recording::Record prune;
	std::vector<std::string> removed;
	for (const auto &e : entries) {
		const bool old = max_age_seconds > 0 && now - e.mtime > max_age_seconds;
		const bool big = max_total_bytes > 0 && total > max_total_bytes;
		if (!old && !big)
			break;
		auto read = read_segment(dir_ + "/" + segment_name(e.index));
		if (!read)
			return read.error();
		auto *r = prune.mutable_prune()->add_removed();
		r->set_name(segment_name(e.index));
		r->set_last_sha256(read->hashes.empty() ? std::string() : read->hashes.back());
		r->set_reason(old ? "age" : "size");
		removed.push_back(segment_name(e.index));
		total -= e.size;
	}
	if (removed.empty())
		return removed;
	// The Prune record first, authenticated by a checkpoint (verify trusts no other): a crash
	// before the unlinks leaves segments that are still there, never ones gone unexplained.
	if (Status st = append(std::move(prune)); !st)
		return st.error();
	if (Status st = checkpoint(false); !st)
		return st.error();
	if (Status st = sync(); !st)
		return st.error();
	for (const auto &name : removed)
		if (::unlink((dir_ + "/" + name).c_str()) != 0 && errno != ENOENT)
			return system_error("remove " + dir_ + "/" + name);
	return removed;
}

// --- verifying ----------------------------------------------------------------------------------

namespace {

// The store against what the journal saw: the chain alone cannot tell that its newest segments
// were deleted, or replaced by a shorter history that chains just as well.
void check_witnesses(const std::vector<uint64_t> &indexes, const std::vector<SegmentRead> &reads,
                     const std::map<std::string, std::string> &pruned, bool head_pruned,
                     const std::vector<SegmentWitness> &witnesses, VerifyReport &report)
{
	// A witness from another store that once lived at this path (purged and made again, a new
	// key) says nothing about this one: only witnesses naming this store's key count.
	std::string key_id;
	for (const auto &r : reads)
		if (!r.records.empty() && r.records[0].has_segment_start()) {
			key_id = r.records[0].segment_start().key_id();
			break;
		}
	for (const auto &w : witnesses) {
		uint64_t index = 0;
		if (!parse_segment_name(w.name, index) || (!w.key_id.empty() && !key_id.empty() && w.key_id != key_id))
			continue;
		report.witnessed++;
		const std::string seen = std::string("the journal saw it ") + (w.sealed ? "sealed" : "started") +
		                         (w.when.empty() ? "" : " at " + w.when);
		auto at = std::find(indexes.begin(), indexes.end(), index);
		if (at == indexes.end()) {
			// Pruning goes oldest first, and each Prune record names only its own round's
			// segments (an earlier round's record may itself be pruned since): everything below
			// an authenticated gap at the head is retention.
			const bool below_pruned_head = head_pruned && !indexes.empty() && index < indexes.front();
			if (!pruned.count(w.name) && !below_pruned_head)
				report.problems.push_back(w.name +
				                          " is missing and no authenticated prune record says why (" +
				                          seen + "): deleted");
			continue;
		}
		const SegmentRead &r = reads[static_cast<size_t>(at - indexes.begin())];
		if (r.records.empty())
			continue; // already a problem (or the torn segment being written)
		if (!w.sealed) {
			if (r.records[0].prev_sha256() != w.hash)
				report.problems.push_back(w.name + " is not the segment cordond started (" + seen +
				                          " continuing another record): replaced");
			continue;
		}
		const bool same = r.records.size() == w.records && r.hashes.back() == w.hash;
		if (!same)
			report.problems.push_back(w.name + " is not the segment cordond sealed (" + seen + " with " +
			                          std::to_string(w.records) + " records and another seal; it holds " +
			                          std::to_string(r.records.size()) + "): replaced or cut short");
	}
}

} // namespace

bool VerifyReport::ok() const
{
	return problems.empty() &&
	       std::all_of(segments.begin(), segments.end(), [](const Segment &s) { return s.problems.empty(); });
}

VerifyReport verify_store(const std::string &dir, std::string_view key, const std::vector<SegmentWitness> &witnesses)
{
	VerifyReport report;
	auto indexes = list_segments(dir);
	if (!indexes) {
		report.problems.push_back(indexes.error().message());
		return report;
	}
	std::vector<SegmentRead> reads;
	// Every Prune record's removed segments: name -> the hash of its last record. Only Prune
	// records a valid checkpoint covers count: anyone can append one to an unauthenticated tail.
	std::map<std::string, std::string> pruned;
	for (uint64_t i : *indexes) {
		auto r = read_segment(dir + "/" + segment_name(i));
		if (!r) {
			report.problems.push_back(r.error().message());
			reads.emplace_back();
			continue;
		}
		std::map<std::string, std::string> pending;
		for (size_t k = 0; k < r->records.size(); k++) {
			const auto &rec = r->records[k];
			if (rec.has_prune())
				for (const auto &p : rec.prune().removed())
					pending[p.name()] = p.last_sha256();
			if (rec.has_checkpoint() && rec.checkpoint().records() == k &&
			    rec.checkpoint().hmac() == checkpoint_hmac(key, rec)) {
				for (auto &[name, hash] : pending)
					pruned[name] = hash;
				pending.clear();
			}
		}
		reads.push_back(std::move(*r));
	}
	std::string previous_last; // the hash the next segment must start from
	bool head_pruned = false;  // the segments before the first one are gone by authenticated pruning
	for (size_t k = 0; k < indexes->size(); k++) {
		const uint64_t index = (*indexes)[k];
		const SegmentRead &r = reads[k];
		VerifyReport::Segment seg;
		seg.name = segment_name(index);
		seg.records = r.records.size();
		const bool last = k + 1 == indexes->size();
		auto at = [&](size_t i) {
			return seg.name + " record " + std::to_string(i) + " (offset " + std::to_string(r.offsets[i]) +
			       ")";
		};
		if (r.records.empty()) {
			(last ? seg.notes : seg.problems)
			    .push_back(seg.name + " holds no whole record" +
			               (r.tail_error.empty() ? "" : ": " + r.tail_error));
			report.segments.push_back(std::move(seg));
			continue;
		}
		// Where this segment joins the chain.
		const std::string &first_prev = r.records[0].prev_sha256();
		const bool gap = k == 0 ? index != 0 : (*indexes)[k - 1] + 1 != index;
		if (!r.records[0].has_segment_start() || r.records[0].segment_start().index() != index)
			seg.problems.push_back(at(0) + " is not this segment's start: segment replaced or renamed");
		if (k == 0 && index == 0) {
			if (first_prev != kZeroHash)
				seg.problems.push_back(at(0) + " does not start the chain");
		} else if (gap) {
			// Segments before this one are gone: fine if pruning said so.
			const std::string before = segment_name(index - 1);
			auto p = pruned.find(before);
			if (p != pruned.end() && p->second == first_prev) {
				report.notes.push_back(before + " and earlier were pruned (retention), as recorded");
				if (k == 0)
					head_pruned = true;
			} else {
				const uint64_t from = k == 0 ? 0 : (*indexes)[k - 1] + 1;
				report.problems.push_back(
				    segment_name(from) + (from + 1 < index ? " to " + before + " are" : " is") +
				    " missing and no authenticated prune record says why: deleted (" + at(0) +
				    " follows a record no segment holds)");
			}
		} else if (first_prev != previous_last) {
			seg.problems.push_back(at(0) + " does not follow " + segment_name(index - 1) +
			                       "'s last record: a segment was replaced, truncated or edited");
		}
		uint64_t authenticated = 0;
		bool sealed = false;
		for (size_t i = 0; i < r.records.size(); i++) {
			const auto &rec = r.records[i];
			if (sealed) {
				seg.problems.push_back(at(i) + " follows the segment's seal: appended after sealing");
				break;
			}
			if (i > 0 && rec.prev_sha256() != r.hashes[i - 1])
				seg.problems.push_back(
				    at(i) + " does not follow the record before it: records edited, removed, "
				            "inserted or reordered");
			if (rec.seq() != i)
				seg.problems.push_back(at(i) + " has sequence number " + std::to_string(rec.seq()) +
				                       ", expected " + std::to_string(i));
			if (rec.has_checkpoint()) {
				if (rec.checkpoint().hmac() != checkpoint_hmac(key, rec) ||
				    rec.checkpoint().records() != i)
					seg.problems.push_back(at(i) +
					                       ": checkpoint does not verify under this host's key: "
					                       "records before it altered, or written by another host");
				else
					authenticated = i + 1;
				sealed = rec.checkpoint().final();
			}
			if (rec.has_session_start())
				report.sessions++;
		}
		seg.sealed = sealed;
		seg.authenticated = authenticated;
		// A crash leaves a segment unsealed, and the next one continues from its last whole record.
		// When the next one continues from another record, this one lost its end: cut short.
		const bool next_disowns = !last && (*indexes)[k + 1] == index + 1 && !reads[k + 1].records.empty() &&
		                          reads[k + 1].records[0].prev_sha256() != r.hashes.back();
		const bool cut_short = !sealed && next_disowns;
		if (cut_short)
			seg.problems.push_back(
			    at(r.records.size() - 1) + " is the segment's last whole record, not its seal, and " +
			    segment_name(index + 1) + " does not continue from it: records cut off its end" +
			    (r.tail_error.empty() ? "" : " (" + r.tail_error + ")"));
		if (!r.tail_error.empty()) {
			if (sealed)
				seg.problems.push_back(seg.name + ": bytes after the seal: " + r.tail_error);
			else if (!cut_short)
				seg.notes.push_back(
				    seg.name + ": torn tail (cordond stopped mid-write): " + r.tail_error + "; the " +
				    std::to_string(r.records.size()) + " records before it are intact");
		}
		if (!sealed && authenticated < r.records.size())
			seg.notes.push_back(
			    seg.name + ": " + std::to_string(r.records.size() - authenticated) +
			    " records after the last checkpoint are not authenticated" +
			    (last ? " (the segment being written, or cordond stopped without sealing)" : ""));
		if (!sealed && !last && !cut_short)
			seg.notes.push_back(seg.name + " was not sealed: cordond stopped without closing it");
		previous_last = r.hashes.back();
		report.segments.push_back(std::move(seg));
	}
	check_witnesses(*indexes, reads, pruned, head_pruned, witnesses, report);
	return report;
}

Result<std::vector<recording::Record>> read_store(const std::string &dir)
{
	auto indexes = list_segments(dir);
	if (!indexes)
		return indexes.error();
	std::vector<recording::Record> out;
	for (uint64_t i : *indexes) {
		auto r = read_segment(dir + "/" + segment_name(i));
		if (!r)
			return r.error();
		for (auto &rec : r->records)
			out.push_back(std::move(rec));
	}
	return out;
}

} // namespace cordon::record
