// A FIFO of bytes: append at the back, consume from the front, without moving the rest on
// every read (a read offset, compacted when it passes half the buffer).
#pragma once

#include <cstring>
#include <string>
#include <string_view>

namespace cordon::proxy {

class ByteQueue {
public:
	void append(std::string_view data) { buffer_.append(data); }
	size_t size() const { return buffer_.size() - head_; }
	bool empty() const { return size() == 0; }
	std::string_view view() const { return std::string_view(buffer_).substr(head_); }
	// Copies up to `max` bytes into `out` and consumes them.
	size_t take(void *out, size_t max)
	{
		size_t n = std::min(max, size());
		std::memcpy(out, buffer_.data() + head_, n);
		consume(n);
		return n;
	}
	void consume(size_t n)
	{
		head_ += std::min(n, size());
		if (head_ == buffer_.size()) {
			buffer_.clear();
			head_ = 0;
		} else if (head_ > buffer_.size() / 2 && head_ > 65536) {
			buffer_.erase(0, head_);
			head_ = 0;
		}
	}
	void clear()
	{
		buffer_.clear();
		head_ = 0;
	}

private:
	std::string buffer_;
	size_t head_ = 0;
};

} // namespace cordon::proxy
