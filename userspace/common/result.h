// Errors as values: an errno plus the context it happened in. Used on every path where a
// failure is expected from the environment (syscalls, files, the network), instead of exceptions.
#pragma once

#include <cerrno>
#include <cstring>
#include <string>
#include <utility>
#include <variant>

namespace cordon {

struct Error {
	int code = 0;        // errno value, or 0 when the failure is not a system error
	std::string context; // what was being done, e.g. "connect 10.0.0.1:443"

	std::string message() const
	{
		if (code == 0)
			return context;
		return context + ": " + std::strerror(code);
	}
};

inline Error system_error(std::string context, int code = errno)
{
	return Error{code, std::move(context)};
}

inline Error plain_error(std::string context)
{
	return Error{0, std::move(context)};
}

// Minimal std::expected (C++23) for C++20: holds a T or an Error.
template <typename T> class [[nodiscard]] Result {
public:
	Result(T value) : state_(std::move(value)) {}
	Result(Error error) : state_(std::move(error)) {}

	bool ok() const { return state_.index() == 0; }
	explicit operator bool() const { return ok(); }

	T &value() & { return std::get<0>(state_); }
	const T &value() const & { return std::get<0>(state_); }
	T &&value() && { return std::get<0>(std::move(state_)); }
	T &operator*() & { return value(); }
	const T &operator*() const & { return value(); }
	T *operator->() { return &value(); }
	const T *operator->() const { return &value(); }

	const Error &error() const { return std::get<1>(state_); }

private:
	std::variant<T, Error> state_;
};

template <> class [[nodiscard]] Result<void> {
public:
	Result() = default;
	Result(Error error) : error_(std::move(error)), failed_(true) {}

	bool ok() const { return !failed_; }
	explicit operator bool() const { return ok(); }
	const Error &error() const { return error_; }

private:
	Error error_;
	bool failed_ = false;
};

using Status = Result<void>;

} // namespace cordon
