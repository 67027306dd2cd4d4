// Text helpers shared by the message decoder and the masking carriers: UTF-8 validation, hex.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace cordon {

inline bool is_surrogate(uint32_t cp)
{
	return cp >= 0xd800 && cp <= 0xdfff;
}

// Length of the well-formed UTF-8 sequence at s[i] (no overlongs, nothing past U+10FFFF), or 0.
// Surrogate code points (ED A0..BF xx) are refused unless `wtf8`: JSON's lone surrogate escapes
// travel through the masking rewriter in that form.
inline size_t utf8_sequence(std::string_view s, size_t i, bool wtf8 = false)
{
	const auto c = static_cast<unsigned char>(s[i]);
	if (c < 0x80)
		return 1;
	size_t n;
	uint32_t cp;
	if (c >= 0xc2 && c <= 0xdf) {
		n = 2;
		cp = c & 0x1f;
	} else if (c >= 0xe0 && c <= 0xef) {
		n = 3;
		cp = c & 0x0f;
	} else if (c >= 0xf0 && c <= 0xf4) {
		n = 4;
		cp = c & 0x07;
	} else {
		return 0;
	}
	if (n > s.size() - i)
		return 0;
	for (size_t k = 1; k < n; k++) {
		const auto d = static_cast<unsigned char>(s[i + k]);
		if ((d & 0xc0) != 0x80)
			return 0;
		cp = cp << 6 | (d & 0x3f);
	}
	if (n == 3 && (cp < 0x800 || (!wtf8 && is_surrogate(cp))))
		return 0;
	if (n == 4 && (cp < 0x10000 || cp > 0x10ffff))
		return 0;
	return n;
}

// The value of a hex digit (either case), or -1.
inline int hex_digit(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

} // namespace cordon
