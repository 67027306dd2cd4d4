// StreamMasker: bounded hold-back, what flush() does at the end and when idle, private-key blocks
// across writes (held until END, cap, continuation), stream offsets in findings.
#include <gtest/gtest.h>

#include <random>

#include "mask/scanner.h"
#include "mask/stream_masker.h"

using namespace cordon::mask;

namespace {

std::shared_ptr<const RuleSet> builtin(Options options = {})
{
	auto set = RuleSet::compile(RuleSet::builtin(), std::move(options));
	EXPECT_TRUE(set) << set.error().message();
	return set ? *set : nullptr;
}

const std::shared_ptr<const RuleSet> &shared_builtin()
{
	static const std::shared_ptr<const RuleSet> rules = builtin();
	return rules;
}

std::string random_token(std::string_view charset, size_t n, uint64_t seed)
{
	std::mt19937_64 rng(seed);
	std::string s;
	for (size_t i = 0; i < n; i++)
		s.push_back(charset[rng() % charset.size()]);
	return s;
}

const char *kAlnum = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

std::string github_pat(uint64_t seed)
{
	return "gh"
	       "p_" +
	       random_token(kAlnum, 36, seed);
}

// Source-like filler without secrets.
std::string filler(size_t n, uint64_t seed)
{
	static const char *words[] = {"int", "return", "value",  "if", "(",  ")",         "{", "}",    ";", "\n",
	                              "for", "x",      "config", "=",  "42", "\"hello\"", "+", "list", ".", "map"};
	std::mt19937_64 rng(seed);
	std::string s;
	while (s.size() < n)
		s += std::string(words[rng() % 20]) + " ";
	s.resize(n);
	return s;
}

std::string pem(const std::string &type, int lines, uint64_t seed)
{
	std::string s = "-----BEGIN " + type + "-----\n";
	for (int i = 0; i < lines; i++)
		s += random_token(kAlnum, 64, seed + i) + "\n";
	return s + "-----END " + type + "-----";
}

} // namespace

TEST(StreamMasker, OutputEqualsWholeTextMasking)
{
	Scanner scanner(shared_builtin());
	std::string text = filler(20000, 1) + " " + github_pat(2) + " " + filler(9000, 3) + "\n" +
	                   pem("RSA PRIVATE KEY", 25, 4) + "\n" + filler(7000, 5) + " password=\"Qx7#mK2!vR9wLp\" " +
	                   filler(100, 6);
	const std::string expected = scanner.mask(text, Direction::Both);
	for (size_t chunk : {1ul, 7ul, 100ul, 1000ul, 4096ul, 16384ul, 65536ul}) {
		StreamMasker m(scanner, Direction::Both);
		std::string out;
		for (size_t at = 0; at < text.size(); at += chunk) {
			out += m.feed(std::string_view(text).substr(at, chunk));
			EXPECT_LE(m.held(), shared_builtin()->max_hold());
		}
		out += m.flush();
		EXPECT_EQ(out, expected) << "chunk " << chunk;
		EXPECT_EQ(m.findings().size(), 3u);
	}
}

TEST(StreamMasker, HoldsBackAtMostMaxWidthWithoutFindings)
{
	Scanner scanner(shared_builtin());
	StreamMasker m(scanner, Direction::Both);
	const std::string text = filler(100000, 7);
	std::string out;
	for (size_t at = 0; at < text.size(); at += 1000) {
		out += m.feed(std::string_view(text).substr(at, 1000));
		EXPECT_LE(m.held(), shared_builtin()->max_width());
	}
	// What was held is released, unchanged, at the end.
	EXPECT_EQ(out.size() + m.held(), text.size());
	out += m.flush();
	EXPECT_EQ(out, text);
	EXPECT_EQ(m.held(), 0u);
}

TEST(StreamMasker, FindingsUseStreamOffsets)
{
	Scanner scanner(shared_builtin());
	StreamMasker m(scanner, Direction::Both);
	const std::string a = filler(10000, 8), pat = github_pat(9);
	std::string out = m.feed(a);
	out += m.feed(" " + pat.substr(0, 10));
	out += m.feed(pat.substr(10) + " tail");
	out += m.flush();
	ASSERT_EQ(m.findings().size(), 1u);
	EXPECT_EQ(m.findings()[0].rule, "github-pat");
	EXPECT_EQ(m.findings()[0].offset, a.size() + 1);
	EXPECT_EQ(m.findings()[0].length, pat.size());
	EXPECT_EQ(out, a + " [MASKED:github-pat] tail");
}

TEST(StreamMasker, IdleFlushThenMoreData)
{
	Scanner scanner(shared_builtin());
	StreamMasker m(scanner, Direction::Both);
	std::string out = m.feed("first line\n");
	out += m.flush(); // idle: everything held goes, and the stream goes on
	EXPECT_EQ(out, "first line\n");
	const std::string pat = github_pat(10);
	out += m.feed("then " + pat + "\n");
	out += m.flush();
	EXPECT_EQ(out, "first line\nthen [MASKED:github-pat]\n");
}

TEST(StreamMasker, SecretCutByAnIdleFlushIsMaskedFromTheCut)
{
	// Latency wins over completeness at an idle flush; the rest of the secret still never leaves.
	Scanner scanner(shared_builtin());
	StreamMasker m(scanner, Direction::Both);
	const std::string pat = github_pat(11);
	std::string out = m.feed("x " + pat.substr(0, 20));
	out += m.flush();
	out += m.feed(pat.substr(20) + " y");
	out += m.flush();
	EXPECT_EQ(out.find(pat.substr(20)), std::string::npos);
	EXPECT_EQ(out, "x " + pat.substr(0, 20) + "[MASKED:github-pat] y");
}

TEST(StreamMasker, PemBlockIsHeldUntilItsEndLine)
{
	Scanner scanner(shared_builtin());
	StreamMasker m(scanner, Direction::Both);
	const std::string key = pem("OPENSSH PRIVATE KEY", 40, 12);
	const std::string before = filler(9000, 13);
	std::string out = m.feed(before);
	const size_t half = key.size() / 2;
	out += m.feed(key.substr(0, half));
	// Nothing of the block has left, and the text before it has (up to the hold-back).
	EXPECT_EQ(out.find("-----BEGIN"), std::string::npos);
	EXPECT_GE(out.size(), before.size() - shared_builtin()->max_width());
	out += m.feed(key.substr(half) + "\nafter\n");
	out += m.flush();
	EXPECT_EQ(out, before + "[MASKED:private-key-openssh]\nafter\n");
}

TEST(StreamMasker, PemBlockCutByTheCapKeepsBeingMasked)
{
	RuleSpec rsa;
	for (const auto &r : RuleSet::builtin())
		if (r.id == "private-key-rsa")
			rsa = r;
	rsa.block_cap = 300;
	auto rules = RuleSet::compile({rsa}, {});
	ASSERT_TRUE(rules);
	Scanner scanner(*rules);
	const std::string text = "a\n" + pem("RSA PRIVATE KEY", 40, 14) + "\nb";
	const std::string expected = "a\n[MASKED:private-key-rsa]-----END RSA PRIVATE KEY-----\nb";
	ASSERT_EQ(scanner.mask(text, Direction::Both), expected);
	for (size_t chunk : {1ul, 13ul, 200ul, 5000ul}) {
		StreamMasker m(scanner, Direction::Both);
		std::string out;
		for (size_t at = 0; at < text.size(); at += chunk) {
			out += m.feed(std::string_view(text).substr(at, chunk));
			EXPECT_LE(m.held(), (*rules)->max_hold());
		}
		out += m.flush();
		EXPECT_EQ(out, expected) << "chunk " << chunk;
		ASSERT_EQ(m.findings().size(), 1u);
		EXPECT_EQ(m.findings()[0].offset, 2u);
	}
}

TEST(StreamMasker, PemBlockFlushedWhileOpenKeepsMaskingItsBody)
{
	Scanner scanner(shared_builtin());
	StreamMasker m(scanner, Direction::Both);
	const std::string key = pem("EC PRIVATE KEY", 10, 15);
	std::string out = m.feed("k=" + key.substr(0, 200));
	out += m.flush(); // idle in the middle of the key
	out += m.feed(key.substr(200) + "\n;done");
	out += m.flush();
	// The body that arrived after the flush is masked too; only the END line is left.
	EXPECT_EQ(out, "k=[MASKED:private-key-ec]-----END EC PRIVATE KEY-----\n;done");
}

TEST(StreamMasker, SameLengthKeepsEveryOffset)
{
	Options o;
	o.replacement = "same-length";
	Scanner scanner(builtin(o));
	const std::string text =
	    filler(3000, 16) + github_pat(17) + "\n" + pem("PRIVATE KEY", 12, 18) + "\n" + filler(500, 19);
	StreamMasker m(scanner, Direction::Both);
	std::string out;
	for (size_t at = 0; at < text.size(); at += 333)
		out += m.feed(std::string_view(text).substr(at, 333));
	out += m.flush();
	EXPECT_EQ(out.size(), text.size());
	EXPECT_EQ(out, scanner.mask(text, Direction::Both));
}

TEST(StreamMasker, DirectionIsHonoured)
{
	RuleSpec up;
	up.id = "up-only";
	up.regex = "UP[0-9]{6}";
	up.direction = Direction::Request;
	auto rules = RuleSet::compile({up}, {});
	ASSERT_TRUE(rules);
	Scanner scanner(*rules);
	for (Direction d : {Direction::Response, Direction::Request}) {
		StreamMasker m(scanner, d);
		std::string out = m.feed("UP123");
		out += m.feed("456 x");
		out += m.flush();
		EXPECT_EQ(out, d == Direction::Request ? "[MASKED:up-only] x" : "UP123456 x");
	}
}

TEST(StreamMasker, NoRulesPassesThrough)
{
	auto rules = RuleSet::compile({}, {});
	ASSERT_TRUE(rules);
	Scanner scanner(*rules);
	StreamMasker m(scanner, Direction::Both);
	EXPECT_EQ(m.feed("abc"), "abc");
	EXPECT_EQ(m.held(), 0u);
	EXPECT_EQ(m.flush(), "");
}

TEST(StreamMasker, ManySecretsAcrossManyWrites)
{
	Scanner scanner(shared_builtin());
	std::string text;
	std::vector<std::string> secrets;
	for (int i = 0; i < 200; i++) {
		secrets.push_back(github_pat(100 + i));
		text += filler(50 + i * 37 % 900, 200 + i) + " " + secrets.back() + "\n";
	}
	const std::string expected = scanner.mask(text, Direction::Both);
	for (bool idle_flushes : {false, true}) {
		std::mt19937_64 rng(20);
		StreamMasker m(scanner, Direction::Both);
		std::string out;
		for (size_t at = 0; at < text.size();) {
			const size_t n = 1 + rng() % 300;
			out += m.feed(std::string_view(text).substr(at, n));
			at += n;
			if (idle_flushes && rng() % 20 == 0)
				out += m.flush();
		}
		out += m.flush();
		if (!idle_flushes) {
			EXPECT_EQ(out, expected);
			EXPECT_EQ(m.findings().size(), secrets.size());
		}
		// With idle flushes a secret may be cut, but what follows the cut never leaves.
		for (const auto &s : secrets)
			EXPECT_EQ(out.find(s.substr(s.size() - 5)), std::string::npos);
	}
}
