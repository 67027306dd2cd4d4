// Masking across streamed messages: a secret cut anywhere between messages is still masked, a
// message waits only while its end could begin a secret, and nothing is lost or reordered.
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>

#include "mask/text_stream.h"

using namespace cordon::mask;

namespace {

const std::string kKey = "AKIAIOSFODNN7EXAMPLE";
const std::string kKey2 = "AKIAQYLPMN5HFIQR7XYZ";
const std::string kPem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA3Tz2mr7SZiAMfQyuvBjM\n"
                         "kFSoA3f7VXLYyG5H8dNmP0qQ==\n-----END RSA PRIVATE KEY-----";

// A stand-in scanner: the AWS example key id and PEM blocks.
std::vector<Hit> fake_find(std::string_view text)
{
	std::vector<Hit> hits;
	for (const auto &key : {kKey, kKey2})
		for (size_t at = text.find(key); at != std::string_view::npos; at = text.find(key, at + 1))
			hits.push_back({at, key.size(), "aws-access-key-id"});
	// "-----BEGIN ...-----" up to the end of the next "-----END ...-----".
	for (size_t begin = text.find("-----BEGIN"); begin != std::string_view::npos;
	     begin = text.find("-----BEGIN", begin + 1)) {
		const size_t header_end = text.find("-----", begin + 10);
		const size_t end =
		    header_end == std::string_view::npos ? header_end : text.find("-----END", header_end + 5);
		const size_t footer_end = end == std::string_view::npos ? end : text.find("-----", end + 8);
		if (footer_end == std::string_view::npos)
			break;
		hits.push_back({begin, footer_end + 5 - begin, "private-key"});
		begin = footer_end;
	}
	return hits;
}

TextStream make_stream(TextStreamLimits limits = {})
{
	return TextStream(
	    fake_find, [](const std::string &rule, size_t) { return "[MASKED:" + rule + "]"; }, limits);
}

std::string joined(const std::vector<TextStream::Settled> &settled)
{
	std::string out;
	for (const auto &s : settled)
		for (const auto &t : s.texts)
			out += t;
	return out;
}

} // namespace

TEST(TextStream, SecretInOneMessageIsMaskedAndCounted)
{
	auto ts = make_stream();
	ts.add({{"2.1", "key: " + kKey + " done\n"}});
	auto out = ts.take_settled();
	ASSERT_EQ(out.size(), 1u);
	EXPECT_EQ(out[0].texts[0], "key: [MASKED:aws-access-key-id] done\n");
	EXPECT_TRUE(out[0].changed);
	EXPECT_EQ(out[0].rules, std::vector<std::string>{"aws-access-key-id"});
}

TEST(TextStream, CleanTextEndingInWhitespaceIsNotHeld)
{
	auto ts = make_stream();
	ts.add({{"2.1", "hello "}});
	auto out = ts.take_settled();
	ASSERT_EQ(out.size(), 1u);
	EXPECT_FALSE(out[0].changed);
	EXPECT_EQ(out[0].texts[0], "hello ");
	EXPECT_EQ(ts.held_bytes(), 0u);
}

TEST(TextStream, MessageEndingMidWordWaitsForTheNext)
{
	auto ts = make_stream();
	ts.add({{"2.1", "Here is a key: AKIA"}});
	EXPECT_TRUE(ts.take_settled().empty()) << "the end could be the start of a secret";
	EXPECT_EQ(ts.held_bytes(), 19u);
	ts.add({{"2.1", "IOSFODNN7EXAMPLE and more "}});
	auto out = ts.take_settled();
	ASSERT_EQ(out.size(), 2u);
	EXPECT_EQ(out[0].texts[0], "Here is a key: [MASKED:aws-access-key-id]");
	EXPECT_EQ(out[1].texts[0], " and more ");
	EXPECT_EQ(out[0].rules.size() + out[1].rules.size(), 1u) << "one secret, counted once";
}

TEST(TextStream, SecretSplitAtEveryOffsetAcrossTwoMessages)
{
	const std::string text = "export AWS_ACCESS_KEY_ID=" + kKey + "\n";
	const size_t at = text.find(kKey);
	for (size_t cut = 0; cut <= text.size(); cut++) {
		auto ts = make_stream();
		ts.add({{"2.1", text.substr(0, cut)}});
		ts.add({{"2.1", text.substr(cut)}});
		ts.settle_all();
		auto out = ts.take_settled();
		ASSERT_EQ(out.size(), 2u) << "cut " << cut;
		EXPECT_EQ(joined(out), text.substr(0, at) + "[MASKED:aws-access-key-id]\n") << "cut " << cut;
		EXPECT_EQ(out[0].rules.size() + out[1].rules.size(), 1u) << "cut " << cut;
	}
}

TEST(TextStream, SecretFedOneByteperMessage)
{
	const std::string text = "token " + kKey + " end\n";
	auto ts = make_stream();
	std::vector<TextStream::Settled> all;
	for (char c : text) {
		ts.add({{"2.1", std::string(1, c)}});
		for (auto &s : ts.take_settled())
			all.push_back(std::move(s));
	}
	ts.settle_all();
	for (auto &s : ts.take_settled())
		all.push_back(std::move(s));
	ASSERT_EQ(all.size(), text.size());
	for (size_t i = 0; i < all.size(); i++)
		EXPECT_EQ(all[i].seq, i) << "messages leave in order";
	EXPECT_EQ(joined(all), "token [MASKED:aws-access-key-id] end\n");
}

TEST(TextStream, OtherFieldsInBetweenDoNotBreakTheJoin)
{
	// Thinking (2.25.1) interleaved with the answer text (2.1), as Cursor streams them.
	auto ts = make_stream();
	ts.add({{"2.1", "the key is AKIAIOSF"}});
	ts.add({{"2.25.1", "thinking... "}});
	EXPECT_TRUE(ts.take_settled().empty()) << "order is kept: the thinking waits behind the held text";
	ts.add({{"2.1", "ODNN7EXAMPLE\n"}});
	auto out = ts.take_settled();
	ASSERT_EQ(out.size(), 3u);
	EXPECT_EQ(out[0].texts[0], "the key is [MASKED:aws-access-key-id]");
	EXPECT_EQ(out[1].texts[0], "thinking... ");
	EXPECT_EQ(out[2].texts[0], "\n");
}

TEST(TextStream, PrivateKeyAcrossManyMessagesIsHeldToItsEnd)
{
	auto ts = make_stream();
	const std::string text = "Here you go:\n" + kPem + "\nbye\n";
	std::vector<TextStream::Settled> all;
	for (size_t i = 0; i < text.size(); i += 7) {
		ts.add({{"2.1", text.substr(i, 7)}});
		for (auto &s : ts.take_settled())
			all.push_back(std::move(s));
	}
	ts.settle_all();
	for (auto &s : ts.take_settled())
		all.push_back(std::move(s));
	EXPECT_EQ(joined(all), "Here you go:\n[MASKED:private-key]\nbye\n");
	size_t rules = 0;
	for (auto &s : all)
		rules += s.rules.size();
	EXPECT_EQ(rules, 1u);
}

TEST(TextStream, NoPartOfAPrivateKeyLeavesBeforeItsEnd)
{
	auto ts = make_stream();
	ts.add({{"2.1", "x\n-----BEGIN RSA PRIVATE KEY-----\n"}});
	ts.add({{"2.1", "MIIEpAIBAAKCAQEA3Tz2mr7SZiAMfQyuvBjM\n"}});
	EXPECT_TRUE(ts.take_settled().empty());
	ts.add({{"2.1", "-----END RSA PRIVATE KEY-----\n"}});
	auto out = ts.take_settled();
	ASSERT_EQ(out.size(), 3u);
	EXPECT_EQ(joined(out), "x\n[MASKED:private-key]\n");
}

TEST(TextStream, SettleAllReleasesWhatIsHeldAsItIs)
{
	auto ts = make_stream();
	ts.add({{"2.1", "partial AKIAIOSF"}});
	EXPECT_TRUE(ts.take_settled().empty());
	ts.settle_all();
	auto out = ts.take_settled();
	ASSERT_EQ(out.size(), 1u);
	EXPECT_EQ(out[0].texts[0], "partial AKIAIOSF");
	EXPECT_FALSE(out[0].changed);
}

TEST(TextStream, HeldBytesAreBounded)
{
	TextStreamLimits limits;
	limits.max_held_bytes = 100;
	auto ts = make_stream(limits);
	ts.add({{"2.1", std::string(60, 'x')}});
	EXPECT_TRUE(ts.take_settled().empty());
	ts.add({{"2.1", std::string(60, 'y')}});
	EXPECT_EQ(ts.take_settled().size(), 2u) << "past the bound, everything goes";
	EXPECT_EQ(ts.held_bytes(), 0u);
}

TEST(TextStream, RepeatedSiblingsInOneMessageAreNotJoined)
{
	auto ts = make_stream();
	// "AKIAIOSF" + "ODNN7EXAMPLE" would join into the key if siblings were one text.
	ts.add({{"1.2", "AKIAIOSF"}, {"1.2", "ODNN7EXAMPLE"}});
	ts.settle_all();
	auto out = ts.take_settled();
	ASSERT_EQ(out.size(), 1u);
	EXPECT_EQ(out[0].texts[0], "AKIAIOSF");
	EXPECT_EQ(out[0].texts[1], "ODNN7EXAMPLE");
	EXPECT_FALSE(out[0].changed);
}

TEST(TextStream, MessagesWithoutTextFollowInOrder)
{
	auto ts = make_stream();
	ts.add({{"2.1", "AKIA"}});
	ts.add({}); // e.g. a message of numbers only
	EXPECT_TRUE(ts.take_settled().empty());
	ts.add({{"2.1", "IOSFODNN7EXAMPLE "}});
	auto out = ts.take_settled();
	ASSERT_EQ(out.size(), 3u);
	EXPECT_EQ(out[0].texts[0], "[MASKED:aws-access-key-id]");
	EXPECT_TRUE(out[1].texts.empty());
	EXPECT_EQ(out[2].texts[0], " ");
}

TEST(MergeHits, OverlapsBecomeOneHit)
{
	auto merged = merge_hits({{10, 5, "b"}, {0, 4, "a"}, {12, 10, "c"}, {30, 2, "d"}});
	ASSERT_EQ(merged.size(), 3u);
	EXPECT_EQ(merged[0].offset, 0u);
	EXPECT_EQ(merged[1].offset, 10u);
	EXPECT_EQ(merged[1].length, 12u);
	EXPECT_EQ(merged[1].rule, "b");
	EXPECT_EQ(merged[2].rule, "d");
}

TEST(TextStream, AnySplitMasksLikeTheWholeText)
{
	// Whatever way the text is cut into messages, the joined result equals masking it whole.
	const std::string text = "start " + kKey + " middle\n" + kPem + "\nkey=" + kKey + "\"end " + kKey;
	auto whole = make_stream();
	whole.add({{"p", text}});
	whole.settle_all();
	const std::string expected = joined(whole.take_settled());
	ASSERT_EQ(expected.find("AKIA"), std::string::npos);
	ASSERT_EQ(expected.find("MIIE"), std::string::npos);
	uint32_t seed = 12345;
	auto next = [&seed] { return seed = seed * 1103515245u + 12345u, (seed >> 16) & 0x7fff; };
	for (int round = 0; round < 300; round++) {
		auto ts = make_stream();
		std::vector<TextStream::Settled> all;
		for (size_t i = 0; i < text.size();) {
			size_t n = 1 + next() % 24;
			ts.add({{"p", text.substr(i, n)}});
			i += n;
			for (auto &s : ts.take_settled())
				all.push_back(std::move(s));
		}
		ts.settle_all();
		for (auto &s : ts.take_settled())
			all.push_back(std::move(s));
		EXPECT_EQ(joined(all), expected) << "round " << round;
	}
}

TEST(TextStream, APrivateKeyHeldTooLongIsCutAndItsRestStillRemoved)
{
	// A model streams a key slower than the hold allows: every few messages the deadline
	// settles what is held. What left is masked; the rest of the key never leaves either.
	const std::string text = "Here you go:\n" + kPem + "\nbye\n";
	for (size_t every : {1, 2, 3, 5}) {
		auto ts = make_stream();
		std::vector<TextStream::Settled> all;
		size_t n = 0;
		for (size_t i = 0; i < text.size(); i += 7) {
			ts.add({{"2.1", text.substr(i, 7)}});
			if (++n % every == 0)
				ts.settle_all(); // the hold deadline
			for (auto &s : ts.take_settled())
				all.push_back(std::move(s));
		}
		ts.settle_all();
		for (auto &s : ts.take_settled())
			all.push_back(std::move(s));
		const std::string out = joined(all);
		// At most part of the BEGIN marker itself may have left before the cut (it holds nothing).
		const std::string head = "Here you go:\n", tail = "[MASKED:private-key]\nbye\n";
		ASSERT_TRUE(out.starts_with(head) && out.ends_with(tail)) << out;
		const std::string leaked = out.substr(head.size(), out.size() - head.size() - tail.size());
		EXPECT_TRUE(std::string("-----BEGIN").starts_with(leaked)) << "settled every " << every << ": " << out;
		size_t rules = 0;
		for (auto &s : all)
			rules += s.rules.size();
		EXPECT_EQ(rules, 1u) << "settled every " << every;
	}
}

TEST(TextStream, RandomCutsAndDeadlinesNeverLeakASecret)
{
	const std::string text = "a " + kKey + " b\n" + kPem + "\nkey=" + kKey + "\"end\n" + kPem + "\n";
	uint32_t seed = 777;
	auto next = [&seed] { return seed = seed * 1103515245u + 12345u, (seed >> 16) & 0x7fff; };
	for (int round = 0; round < 300; round++) {
		auto ts = make_stream();
		std::vector<TextStream::Settled> all;
		for (size_t i = 0; i < text.size();) {
			size_t n = 1 + next() % 16;
			ts.add({{"p", text.substr(i, n)}});
			i += n;
			if (next() % 4 == 0)
				ts.settle_all(); // a hold deadline passed
			for (auto &s : ts.take_settled())
				all.push_back(std::move(s));
		}
		ts.settle_all();
		for (auto &s : ts.take_settled())
			all.push_back(std::move(s));
		const std::string out = joined(all);
		EXPECT_EQ(out.find("MIIEpAIB"), std::string::npos) << out;
		EXPECT_EQ(out.find("kFSoA3f7"), std::string::npos) << out;
		EXPECT_EQ(out.find("A3Tz2mr7"), std::string::npos) << out;
		EXPECT_TRUE(out.ends_with("\"end\n[MASKED:private-key]\n") || out.find("-----END") == std::string::npos)
		    << out;
	}
}

TEST(TextStream, AQuietFieldGoesAfterItsIdleTimeWhileAnotherIsStillHeld)
{
	using namespace std::chrono_literals;
	auto ts = make_stream();
	const auto t0 = TextStream::Clock::time_point{} + 1h;
	ts.add({{"2.25.1", "Thinking about it."}}, t0); // ends mid-word: held
	ts.add({{"2.1", "The answer is AKIA"}}, t0 + 50ms);
	ts.add({{"2.1", "QYLPMN5H"}}, t0 + 100ms);
	EXPECT_EQ(*ts.oldest_quiet(), t0);
	ts.settle_idle(t0 + 150ms, 200ms);
	EXPECT_TRUE(ts.take_settled().empty()) << "nothing idle long enough yet";
	ts.settle_idle(t0 + 210ms, 200ms);
	auto out = ts.take_settled();
	ASSERT_EQ(out.size(), 1u) << "the thinking went quiet; the answer is still being continued";
	EXPECT_EQ(out[0].texts[0], "Thinking about it.");
	ts.add({{"2.1", "FIQR7XYZ done "}}, t0 + 220ms);
	out = ts.take_settled();
	ASSERT_EQ(out.size(), 3u);
	EXPECT_EQ(out[0].texts[0] + out[1].texts[0] + out[2].texts[0],
	          "The answer is [MASKED:aws-access-key-id] done ");
	EXPECT_FALSE(ts.oldest_quiet().has_value());
}

TEST(TextStream, AMentionOfTheKeyMarkerIsNotHeldButAKeyHeaderIs)
{
	auto ts = make_stream();
	ts.add({{"2.1", "if (s.starts_with(\"-----BEGIN RSA PRIVATE KEY-----\")) {\n"}});
	auto out = ts.take_settled();
	ASSERT_EQ(out.size(), 1u) << "code that names the marker goes at once";
	EXPECT_FALSE(out[0].changed);

	ts.add({{"2.1", "key:\n-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA3Tz2mr7SZiAMfQyuvBjM\n"}});
	EXPECT_TRUE(ts.take_settled().empty()) << "an open key waits for its END line";
}

TEST(TextStream, TheEndOfTheDataCutsNothing)
{
	// A marker at the very end of the data: the scanner saw all there is, and it is no key.
	auto ts = make_stream();
	ts.add({{"2.1", "the header reads -----BEGIN RSA PRIVATE KEY-----"}});
	EXPECT_TRUE(ts.take_settled().empty()) << "it could still be a key";
	ts.finish();
	auto out = ts.take_settled();
	ASSERT_EQ(out.size(), 1u);
	EXPECT_EQ(out[0].texts[0], "the header reads -----BEGIN RSA PRIVATE KEY-----");
	// Held too long instead, the same text is cut: more of a key may follow.
	auto held = make_stream();
	held.add({{"2.1", "the header reads -----BEGIN RSA PRIVATE KEY-----"}});
	held.settle_all();
	auto cut = held.take_settled();
	ASSERT_EQ(cut.size(), 1u);
	EXPECT_EQ(cut[0].texts[0], "the header reads [MASKED:private-key]");
}

namespace {

// A stand-in closer to the real rules, for what joining does to word boundaries: an AWS key id
// only as a whole word (\bAKIA[0-9A-Z]{16}\b), and a "..._KEY_ID=" assignment's value of 16
// or more word characters (generic-secret, listed after the key id: it names a secret both find).
std::vector<Hit> word_find(std::string_view text)
{
	const auto word = [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; };
	std::vector<Hit> hits;
	for (size_t at = text.find("AKIA"); at != std::string_view::npos; at = text.find("AKIA", at + 1)) {
		size_t end = at + 4;
		while (end < text.size() && end < at + 20 &&
		       (std::isdigit(static_cast<unsigned char>(text[end])) ||
		        std::isupper(static_cast<unsigned char>(text[end]))))
			end++;
		if (end == at + 20 && (at == 0 || !word(text[at - 1])) && (end == text.size() || !word(text[end])))
			hits.push_back({at, 20, "aws-access-key-id"});
	}
	for (size_t at = text.find("KEY_ID="); at != std::string_view::npos; at = text.find("KEY_ID=", at + 1)) {
		size_t from = at + 7, end = from;
		while (end < text.size() && (word(text[end]) || text[end] == '='))
			end++;
		if (end - from >= 16)
			hits.push_back({from, end - from, "generic-secret"});
	}
	std::stable_sort(hits.begin(), hits.end(), [](const Hit &a, const Hit &b) { return a.offset < b.offset; });
	return merge_hits(std::move(hits));
}

TextStream make_word_stream()
{
	return TextStream(word_find, [](const std::string &rule, size_t) { return "[MASKED:" + rule + "]"; });
}

std::vector<std::string> texts_of(TextStream &ts)
{
	ts.finish();
	std::vector<std::string> out;
	for (auto &s : ts.take_settled())
		for (auto &t : s.texts)
			out.push_back(t);
	return out;
}

} // namespace

// Each request of a bidi chat carries the attached file again: "AWS_ACCESS_KEY_ID=<key>" (a line,
// so no newline: held) in one message and the same line in the next are two values, not one.
// Joined, they read as one generic-secret value "<key>AWS_ACCESS_KEY_ID=<key>" that took the
// second line whole, leaving it empty with no marker.
TEST(TextStream, AValueSentAgainInTheNextMessageIsNotJoinedToTheFirst)
{
	const std::string line = "AWS_ACCESS_KEY_ID=" + kKey2;
	const std::string masked = "AWS_ACCESS_KEY_ID=[MASKED:aws-access-key-id]";
	auto ts = make_word_stream();
	ts.add({{"1.1.3.3", line}});
	EXPECT_TRUE(ts.take_settled().empty()) << "it ends mid-word: held";
	ts.add({{"1.1.3.3", line}});
	auto out = ts.take_settled();
	ASSERT_EQ(out.size(), 1u) << "the first leaves as it reads on its own";
	EXPECT_EQ(out[0].texts[0], masked);
	EXPECT_EQ(out[0].rules, std::vector<std::string>{"aws-access-key-id"});
	EXPECT_EQ(texts_of(ts), std::vector<std::string>{masked});

	// The same after the first went at its deadline (its text is the run's context then).
	auto late = make_word_stream();
	late.add({{"1.1.3.3", line}});
	late.settle_all();
	ASSERT_EQ(late.take_settled().at(0).texts[0], masked);
	late.add({{"1.1.3.3", line}});
	EXPECT_EQ(texts_of(late), std::vector<std::string>{masked});
}

// Joins that would hide a key: a text ending mid-word before one that starts with a key, a key
// before a text that starts with a word, a key sent twice.
TEST(TextStream, AJoinNeverHidesAKeyEitherSideReadsOnItsOwn)
{
	const std::string m = "[MASKED:aws-access-key-id]";
	const std::vector<std::pair<std::pair<std::string, std::string>, std::vector<std::string>>> cases = {
	    {{"hello", kKey2 + " is my key"}, {"hello", m + " is my key"}},
	    {{"my key " + kKey2, "thanks "}, {"my key " + m, "thanks "}},
	    {{"my key " + kKey2, "my key " + kKey2}, {"my key " + m, "my key " + m}},
	    {{kKey2, kKey2}, {m, m}},
	};
	for (const auto &[in, expected] : cases) {
		auto ts = make_word_stream();
		ts.add({{"1.1", in.first}});
		ts.add({{"1.1", in.second}});
		EXPECT_EQ(texts_of(ts), expected) << in.first << " | " << in.second;
	}
}

// What a join is for still holds with word boundaries: a key cut anywhere is masked where it
// starts and removed from where it goes on.
TEST(TextStream, AKeyCutAnywhereIsStillJoinedWithWordBoundaries)
{
	const std::string text = "key: " + kKey2 + " done\n";
	for (size_t cut = 1; cut < text.size(); cut++) {
		auto ts = make_word_stream();
		ts.add({{"2.1", text.substr(0, cut)}});
		ts.add({{"2.1", text.substr(cut)}});
		const auto out = texts_of(ts);
		ASSERT_EQ(out.size(), 2u) << "cut " << cut;
		EXPECT_EQ(out[0] + out[1], "key: [MASKED:aws-access-key-id] done\n") << "cut " << cut;
	}
	const std::string assignment = "AWS_ACCESS_KEY_ID=" + kKey2 + "\n";
	for (size_t cut = 1; cut < assignment.size(); cut++) {
		auto ts = make_word_stream();
		ts.add({{"2.1", assignment.substr(0, cut)}});
		ts.add({{"2.1", assignment.substr(cut)}});
		const auto out = texts_of(ts);
		ASSERT_EQ(out.size(), 2u) << "cut " << cut;
		EXPECT_EQ(out[0] + out[1], "AWS_ACCESS_KEY_ID=[MASKED:aws-access-key-id]\n") << "cut " << cut;
	}
}
