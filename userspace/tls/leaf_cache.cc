#include "tls/leaf_cache.h"

#include <algorithm>

namespace cordon::tls {

LeafCache::LeafCache(const CertificateAuthority &ca, size_t capacity, std::chrono::hours validity)
    : LeafCache(ca, capacity, validity, [] { return std::chrono::system_clock::now(); })
{}

LeafCache::LeafCache(const CertificateAuthority &ca, size_t capacity, std::chrono::hours validity, Clock clock)
    : ca_(ca), capacity_(std::max<size_t>(capacity, 1)), validity_(std::max(validity, std::chrono::hours(1))),
      clock_(std::move(clock))
{}

Result<std::shared_ptr<const Leaf>> LeafCache::get(const std::string &host)
{
	auto name = leaf_host_name(host);
	if (!name)
		return plain_error("leaf certificate: " + name.error().message());
	const auto now = clock_();
	std::unique_lock lock(mu_);
	auto it = entries_.find(*name);
	if (it != entries_.end() && now < it->second.renew_at) {
		lru_.splice(lru_.begin(), lru_, it->second.lru);
		++hits_;
		return it->second.leaf;
	}
	if (auto m = minting_.find(*name); m != minting_.end()) {
		// Being re-minted by another thread: the current leaf is still good until then.
		if (it != entries_.end() && now < it->second.leaf->not_after) {
			lru_.splice(lru_.begin(), lru_, it->second.lru);
			++hits_;
			return it->second.leaf;
		}
		auto pending = m->second;
		lock.unlock();
		return pending.get();
	}
	return mint(*name, lock);
}

// Called with the lock held; mints without it, so hits for other names are never held up by a
// key generation.
LeafCache::LeafResult LeafCache::mint(const std::string &name, std::unique_lock<std::mutex> &lock)
{
	std::promise<LeafResult> promise;
	minting_.emplace(name, promise.get_future().share());
	lock.unlock();

	const auto now = clock_();
	auto issued = ca_.issue_leaf(name, validity_, now);
	LeafResult result =
	    issued ? LeafResult(std::make_shared<const Leaf>(std::move(*issued))) : LeafResult(issued.error());

	lock.lock();
	minting_.erase(name);
	if (result) {
		++minted_;
		const auto &leaf = *result;
		const auto renew_at = leaf->not_after - (leaf->not_after - now) / 4;
		auto it = entries_.find(name);
		if (it == entries_.end()) {
			lru_.push_front(name);
			entries_.emplace(name, Entry{leaf, renew_at, lru_.begin()});
		} else {
			it->second.leaf = leaf;
			it->second.renew_at = renew_at;
			lru_.splice(lru_.begin(), lru_, it->second.lru);
		}
		while (entries_.size() > capacity_) {
			entries_.erase(lru_.back());
			lru_.pop_back();
			++evicted_;
		}
	}
	lock.unlock();
	promise.set_value(result);
	return result;
}

size_t LeafCache::size() const
{
	std::lock_guard lock(mu_);
	return entries_.size();
}

uint64_t LeafCache::minted() const
{
	std::lock_guard lock(mu_);
	return minted_;
}

uint64_t LeafCache::hits() const
{
	std::lock_guard lock(mu_);
	return hits_;
}

uint64_t LeafCache::evicted() const
{
	std::lock_guard lock(mu_);
	return evicted_;
}

} // namespace cordon::tls
