// Leaf certificates for intercepted names, minted on first use and kept in a bounded LRU cache:
// minting costs an EC key generation and a signature, a hit costs a map lookup.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <future>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "common/result.h"
#include "tls/certificate_authority.h"

namespace cordon::tls {

class LeafCache {
public:
	using Clock = std::function<std::chrono::system_clock::time_point()>;

	// `ca` must outlive the cache. A capacity of 0 is taken as 1; validity as at least one hour.
	LeafCache(const CertificateAuthority &ca, size_t capacity, std::chrono::hours validity);
	// With an injected clock (tests): it decides freshness and the validity of minted leaves.
	LeafCache(const CertificateAuthority &ca, size_t capacity, std::chrono::hours validity, Clock clock);
	LeafCache(const LeafCache &) = delete;
	LeafCache &operator=(const LeafCache &) = delete;

	// The leaf for `host` (an exact DNS name, case-insensitive): minted on a miss, re-minted when
	// less than a quarter of its validity is left; least recently used entries evicted beyond
	// capacity. Thread-safe; minting runs outside the lock, and concurrent misses for one name
	// share a single mint.
	Result<std::shared_ptr<const Leaf>> get(const std::string &host);

	size_t size() const;
	size_t capacity() const { return capacity_; }
	std::chrono::hours validity() const { return validity_; }
	uint64_t minted() const;
	uint64_t hits() const;
	uint64_t evicted() const;

private:
	using LeafResult = Result<std::shared_ptr<const Leaf>>;
	struct Entry {
		std::shared_ptr<const Leaf> leaf;
		std::chrono::system_clock::time_point renew_at; // a quarter of its life left
		std::list<std::string>::iterator lru;
	};

	LeafResult mint(const std::string &name, std::unique_lock<std::mutex> &lock);

	const CertificateAuthority &ca_;
	const size_t capacity_;
	const std::chrono::hours validity_;
	const Clock clock_;

	mutable std::mutex mu_;
	std::unordered_map<std::string, Entry> entries_;
	std::list<std::string> lru_; // front: most recently used
	std::unordered_map<std::string, std::shared_future<LeafResult>> minting_;
	uint64_t minted_ = 0;
	uint64_t hits_ = 0;
	uint64_t evicted_ = 0;
};

} // namespace cordon::tls
