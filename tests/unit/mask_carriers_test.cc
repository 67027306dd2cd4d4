// The carrier rewriters: every piece of text reaches the rewriter (nested, escaped, keys, hex two
// levels deep), outputs parse back (nlohmann::json; libprotobuf against a schema defined here),
// unchanged input comes back byte for byte, lengths follow growth and shrinkage, malformed input
// is an error that says where.
#include <google/protobuf/descriptor.h>
#include <google/protobuf/descriptor.pb.h>
#include <google/protobuf/dynamic_message.h>
#include <google/protobuf/text_format.h>
#include <google/protobuf/unknown_field_set.h>
#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <vector>

#include "mask/carriers.h"

using namespace cordon::mask;
using nlohmann::json;
namespace pb = google::protobuf;

namespace {

// ---- rewriters ----

std::string replace_all(std::string_view text, std::string_view from, std::string_view to)
{
	std::string out;
	size_t pos = 0;
	for (size_t hit; (hit = text.find(from, pos)) != std::string_view::npos; pos = hit + from.size()) {
		out.append(text, pos, hit - pos);
		out += to;
	}
	out.append(text, pos);
	return out;
}

std::string mask(std::string_view text)
{
	return replace_all(text, "SECRET", "[MASKED]");
}

std::string identity(std::string_view text)
{
	return std::string(text);
}

// Records every text it is given, changes nothing.
struct Recorder {
	std::vector<std::string> seen;
	TextRewriter fn()
	{
		return [this](std::string_view text) {
			seen.emplace_back(text);
			return std::string(text);
		};
	}
};

// ---- wire bytes by hand ----

std::string varint(uint64_t v)
{
	std::string out;
	while (v >= 0x80) {
		out += static_cast<char>(v | 0x80);
		v >>= 7;
	}
	out += static_cast<char>(v);
	return out;
}
std::string tag(uint32_t number, int type)
{
	return varint(uint64_t{number} << 3 | type);
}
std::string vfield(uint32_t number, uint64_t v)
{
	return tag(number, 0) + varint(v);
}
std::string lfield(uint32_t number, const std::string &bytes)
{
	return tag(number, 2) + varint(bytes.size()) + bytes;
}
std::string hex(const std::string &bytes, bool upper = false)
{
	const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
	std::string out;
	for (unsigned char c : bytes) {
		out += digits[c >> 4];
		out += digits[c & 15];
	}
	return out;
}

std::string protobuf(const std::string &in, const TextRewriter &rw, RewriteStats *stats = nullptr)
{
	auto r = rewrite_protobuf(in, rw, stats);
	EXPECT_TRUE(r.ok()) << r.error().message();
	return r.ok() ? *r : std::string();
}

std::string json_rw(std::string_view in, const TextRewriter &rw, RewriteStats *stats = nullptr)
{
	auto r = rewrite_json(in, rw, stats);
	EXPECT_TRUE(r.ok()) << r.error().message();
	return r.ok() ? *r : std::string();
}

// What the protobuf walker sees in `bytes`, in order.
std::vector<std::string> texts_in(const std::string &bytes)
{
	Recorder r;
	auto out = rewrite_protobuf(bytes, r.fn());
	EXPECT_TRUE(out.ok()) << out.error().message();
	return r.seen;
}

// Valid wire format as libprotobuf reads it without a schema.
bool wire_valid(const std::string &bytes)
{
	pb::UnknownFieldSet set;
	return set.ParseFromString(bytes);
}

// ---- a schema for libprotobuf to read the output with ----

constexpr const char *kSchema = R"pb(
	name: "carriers_test.proto"
	package: "ct"
	syntax: "proto3"
	message_type {
		name: "Inner"
		field { name: "text" number: 1 label: LABEL_OPTIONAL type: TYPE_STRING }
		field { name: "nums" number: 2 label: LABEL_REPEATED type: TYPE_INT32 }
		field { name: "blob" number: 3 label: LABEL_OPTIONAL type: TYPE_BYTES }
		field { name: "child" number: 4 label: LABEL_OPTIONAL type: TYPE_MESSAGE type_name: ".ct.Inner" }
		field { name: "data" number: 5 label: LABEL_OPTIONAL type: TYPE_STRING }
	}
	message_type {
		name: "Outer"
		field { name: "title" number: 1 label: LABEL_OPTIONAL type: TYPE_STRING }
		field { name: "inner" number: 2 label: LABEL_OPTIONAL type: TYPE_MESSAGE type_name: ".ct.Inner" }
		field { name: "items" number: 3 label: LABEL_REPEATED type: TYPE_MESSAGE type_name: ".ct.Inner" }
		field { name: "n" number: 4 label: LABEL_OPTIONAL type: TYPE_INT64 }
		field { name: "f" number: 5 label: LABEL_OPTIONAL type: TYPE_FIXED32 }
		field { name: "d" number: 6 label: LABEL_OPTIONAL type: TYPE_DOUBLE }
		field { name: "tags" number: 7 label: LABEL_REPEATED type: TYPE_STRING }
		field { name: "labels" number: 8 label: LABEL_REPEATED type: TYPE_MESSAGE type_name: ".ct.Outer.LabelsEntry" }
		field { name: "data" number: 9 label: LABEL_OPTIONAL type: TYPE_STRING }
		field { name: "floats" number: 10 label: LABEL_REPEATED type: TYPE_FLOAT }
		nested_type {
			name: "LabelsEntry"
			field { name: "key" number: 1 label: LABEL_OPTIONAL type: TYPE_STRING }
			field { name: "value" number: 2 label: LABEL_OPTIONAL type: TYPE_STRING }
			options { map_entry: true }
		}
	}
)pb";

class MaskCarriersSchema : public testing::Test {
protected:
	static void SetUpTestSuite()
	{
		pb::FileDescriptorProto file;
		if (!pb::TextFormat::ParseFromString(kSchema, &file))
			return;
		pool_ = new pb::DescriptorPool;
		if (!pool_->BuildFile(file))
			return;
		factory_ = new pb::DynamicMessageFactory(pool_);
	}
	static void TearDownTestSuite()
	{
		delete factory_;
		delete pool_;
		factory_ = nullptr;
		pool_ = nullptr;
	}
	void SetUp() override { ASSERT_TRUE(factory_) << "the test schema does not build"; }

	static std::unique_ptr<pb::Message> make(const std::string &type)
	{
		const pb::Descriptor *d = pool_->FindMessageTypeByName("ct." + type);
		return std::unique_ptr<pb::Message>(factory_->GetPrototype(d)->New());
	}
	// A message of `type` from text format, serialized.
	static std::string encode(const std::string &type, const std::string &text)
	{
		auto m = make(type);
		EXPECT_TRUE(pb::TextFormat::ParseFromString(text, m.get())) << text;
		return m->SerializeAsString();
	}
	// Parses with the schema (proto3: string fields must be UTF-8), back to text format.
	static std::string decode(const std::string &type, const std::string &bytes)
	{
		auto m = make(type);
		if (!m->ParseFromString(bytes))
			return "<does not parse>";
		std::string text;
		pb::TextFormat::PrintToString(*m, &text);
		return text;
	}

	static inline pb::DescriptorPool *pool_ = nullptr;
	static inline pb::DynamicMessageFactory *factory_ = nullptr;
};

} // namespace

// ==== JSON ====

TEST(MaskCarriersJson, EveryStringValueAndKeyReachesTheRewriter)
{
	const std::string in =
	    R"({"a":"x","SECRET key":["SECRET",{"n":"deep SECRET"}],"num":-1.5e+3,"t":true,"f":false,"z":null,"e":""})";
	Recorder r;
	EXPECT_EQ(json_rw(in, r.fn()), in);
	EXPECT_EQ(r.seen, (std::vector<std::string>{"a", "x", "SECRET key", "SECRET", "n", "deep SECRET", "num", "t",
	                                            "f", "z", "e"})); // the empty string has nothing to mask

	RewriteStats stats;
	const std::string out = json_rw(in, mask, &stats);
	EXPECT_EQ(
	    out,
	    R"({"a":"x","[MASKED] key":["[MASKED]",{"n":"deep [MASKED]"}],"num":-1.5e+3,"t":true,"f":false,"z":null,"e":""})");
	EXPECT_EQ(stats.texts, 11u);
	EXPECT_EQ(stats.changed, 3u);
	EXPECT_EQ(json::parse(out)["[MASKED] key"][1]["n"], "deep [MASKED]");
}

TEST(MaskCarriersJson, EscapesAreResolvedBeforeTheRewriterSeesTheText)
{
	// A key split by an escape is still one key to the scanner; so is a surrogate pair.
	Recorder r;
	const std::string in = R"(["AKIA\u0041BCD", "SEC\u0052ET", "a\nb\t\"q\"\\\/", "\ud83d\ude00 \u00e9"])";
	EXPECT_EQ(json_rw(in, r.fn()), in);
	EXPECT_EQ(r.seen,
	          (std::vector<std::string>{"AKIAABCD", "SECRET", "a\nb\t\"q\"\\/", "\xf0\x9f\x98\x80 \xc3\xa9"}));

	EXPECT_EQ(json_rw(R"({"k":"x SEC\u0052ET y"})", mask), R"({"k":"x [MASKED] y"})");
	EXPECT_EQ(json_rw(R"({"SE\u0043RET":1})", mask), R"({"[MASKED]":1})");
}

TEST(MaskCarriersJson, UnchangedInputIsByteIdentical)
{
	const std::string docs[] = {
	    "\xef\xbb\xbf {\"a\" :\t[ 1 , -0.0e-0 ,\r\n 2E+10 , \"\\u00E9\\/\" ] }\n ",
	    R"("just a string")",
	    "  42  ",
	    "null",
	    R"([[],{},[{}],"caf\u00e9","café","\ud800"])",
	    R"({"no secret":"here","x":"\u0053ECRE"})",
	};
	for (const std::string &d : docs) {
		EXPECT_EQ(json_rw(d, identity), d);
		EXPECT_EQ(json_rw(d, mask), d);
	}
}

TEST(MaskCarriersJson, ChangedStringsAreReEscapedAndStayValid)
{
	// Whatever the rewriter returns, the output is JSON and carries exactly that text.
	const std::string nasty = std::string("quote\" backslash\\ nl\n cr\r tab\t nul") + '\0' + " bell\x07 del\x7f" +
	                          " ls\xe2\x80\xa8 emoji\xf0\x9f\x98\x80 / end";
	const std::string out = json_rw(R"({"k":"SECRET","SECRET":[1]})",
	                                [&](std::string_view t) { return t == "SECRET" ? nasty : std::string(t); });
	const json j = json::parse(out);
	EXPECT_EQ(j["k"], nasty);
	EXPECT_EQ(j[nasty], json::parse("[1]"));

	// Not UTF-8 from the rewriter: each stray byte becomes U+FFFD.
	const std::string bad = json_rw(R"(["SECRET"])", [](std::string_view) { return std::string("a\xff\xc3z"); });
	EXPECT_EQ(json::parse(bad)[0], "a\xef\xbf\xbd\xef\xbf\xbdz");
}

TEST(MaskCarriersJson, KeepsTheOriginalsWayOfWritingNonAscii)
{
	// Written with \u escapes (Python's ensure_ascii): re-encoded the same way.
	EXPECT_EQ(json_rw(R"(["caf\u00e9 SECRET \ud83d\ude00"])", mask), R"(["caf\u00e9 [MASKED] \ud83d\ude00"])");
	// Raw UTF-8: stays raw.
	EXPECT_EQ(json_rw("[\"café SECRET 😀\"]", mask), "[\"café [MASKED] 😀\"]");
	// Escapes that only spell ASCII do not make it an ASCII-only document.
	EXPECT_EQ(json_rw(R"(["\u0053ECRET é"])", mask), "[\"[MASKED] é\"]");
}

TEST(MaskCarriersJson, LoneSurrogatesSurviveARewrite)
{
	// JavaScript writes a cut emoji as a lone surrogate escape: kept as it was.
	Recorder r;
	EXPECT_EQ(json_rw(R"(["\ud800SECRET\udc00"])", r.fn()), R"(["\ud800SECRET\udc00"])");
	EXPECT_EQ(r.seen, std::vector<std::string>{"\xed\xa0\x80SECRET\xed\xb0\x80"});
	EXPECT_EQ(json_rw(R"(["\ud800SECRET\udc00"])", mask), R"(["\ud800[MASKED]\udc00"])");
}

TEST(MaskCarriersJson, MalformedInputIsAnErrorThatSaysWhere)
{
	const std::pair<std::string, std::string> cases[] = {
	    {"", "empty document at offset 0"},
	    {"   ", "empty document at offset 3"},
	    {"{", "expected a string key at offset 1"},
	    {"[1,]", "expected a value at offset 3"},
	    {"{\"a\":1,}", "expected a string key at offset 7"},
	    {"{\"a\" 1}", "expected ':' after a key at offset 5"},
	    {"{'a':1}", "expected a string key at offset 1"},
	    {"01", "data after the document at offset 1"},
	    {"1.", "expected a digit at offset 2"},
	    {"1e", "expected a digit at offset 2"},
	    {"-", "expected a value at offset 1"},
	    {"+1", "expected a value at offset 0"},
	    {"NaN", "expected a value at offset 0"},
	    {"tru", "invalid literal at offset 0"},
	    {"[1 2]", "expected ',' or ']' at offset 3"},
	    {"{\"a\":1]", "expected ',' or '}' at offset 6"},
	    {"\"abc", "unterminated string at offset 0"},
	    {"\"a\x01\"", "control character in a string at offset 2"},
	    {"\"\\x\"", "invalid escape at offset 1"},
	    {"\"\\u12g4\"", "invalid \\u escape at offset 1"},
	    {"\"\\", "unterminated escape at offset 1"},
	    {"[\"\xff\"]", "invalid UTF-8 in a string at offset 2"},
	    {"\"\xed\xa0\x80\"", "invalid UTF-8 in a string at offset 1"}, // a raw surrogate
	    {"\"\xc0\xaf\"", "invalid UTF-8 in a string at offset 1"},     // overlong
	    {"[1] x", "data after the document at offset 4"},
	    {"[1", "unexpected end, expected ',' or a closing bracket at offset 2"},
	    {"\xef\xbb\xbf", "empty document at offset 3"},
	};
	for (const auto &[in, where] : cases) {
		auto r = rewrite_json(in, identity);
		ASSERT_FALSE(r.ok()) << in;
		EXPECT_EQ(r.error().message(), "json: " + where) << in;
	}
}

TEST(MaskCarriersJson, DeepNestingIsBoundedWithoutRecursion)
{
	const auto nested = [](int depth) { return std::string(depth, '[') + "\"SECRET\"" + std::string(depth, ']'); };
	EXPECT_EQ(json_rw(nested(kMaxJsonDepth), mask),
	          nested(kMaxJsonDepth).replace(kMaxJsonDepth + 1, 6, "[MASKED]"));
	auto too_deep = rewrite_json(nested(kMaxJsonDepth + 1), mask);
	ASSERT_FALSE(too_deep.ok());
	EXPECT_EQ(too_deep.error().message(), "json: nesting deeper than 512 levels at offset 512");
	// A million brackets: an error at once, no stack overflow.
	EXPECT_FALSE(rewrite_json(std::string(1'000'000, '['), mask).ok());
	EXPECT_FALSE(rewrite_json(std::string(500'000, '{'), mask).ok());
}

TEST(MaskCarriersJson, HugeInputsTakeLinearTime)
{
	// 16 MiB in one string full of escapes, and 16 MiB of small strings: each well under a second
	// unsanitized; the bound here only catches quadratic behaviour.
	std::string one = "\"";
	while (one.size() < (16u << 20))
		one += "SECRET\\n\\u0041\\\"";
	one += "\"";
	std::string many = "[";
	while (many.size() < (16u << 20))
		many += "\"SECRET\",{\"k\":\"v\"},";
	many += "1]";
	for (const std::string *doc : {&one, &many}) {
		const auto start = std::chrono::steady_clock::now();
		auto r = rewrite_json(*doc, mask);
		const auto elapsed = std::chrono::steady_clock::now() - start;
		ASSERT_TRUE(r.ok()) << r.error().message();
		EXPECT_TRUE(json::accept(*r));
		EXPECT_EQ(r->find("SECRET"), std::string::npos);
		EXPECT_LT(elapsed, std::chrono::seconds(20));
	}
}

TEST(MaskCarriersJson, ARewriterThatThrowsIsAnError)
{
	auto r = rewrite_json(R"(["x"])", [](std::string_view) -> std::string { throw std::runtime_error("boom"); });
	ASSERT_FALSE(r.ok());
	EXPECT_EQ(r.error().message(), "json: rewriting failed: boom");
}

// ==== protobuf ====

TEST(MaskCarriersProtobuf, EveryTextFieldReachesTheRewriterNestedOrNot)
{
	const std::string inner = lfield(1, "inner SECRET") + vfield(2, 7) + lfield(3, "deeper \x01 SECRET ok");
	const std::string msg = lfield(1, "top SECRET") + vfield(2, 150) + tag(3, 5) + std::string("\x01\x02\x03\x04") +
	                        tag(4, 1) + std::string(8, '\xff') + lfield(5, inner) + lfield(6, "");
	EXPECT_EQ(texts_in(msg), (std::vector<std::string>{"top SECRET", "inner SECRET", "deeper \x01 SECRET ok"}));

	RewriteStats stats;
	const std::string out = protobuf(msg, mask, &stats);
	const std::string inner_masked =
	    lfield(1, "inner [MASKED]") + vfield(2, 7) + lfield(3, "deeper \x01 [MASKED] ok");
	EXPECT_EQ(out, lfield(1, "top [MASKED]") + vfield(2, 150) + tag(3, 5) + std::string("\x01\x02\x03\x04") +
	                   tag(4, 1) + std::string(8, '\xff') + lfield(5, inner_masked) + lfield(6, ""));
	EXPECT_EQ(stats.texts, 3u);
	EXPECT_EQ(stats.changed, 3u);
	EXPECT_TRUE(wire_valid(out));
}

TEST_F(MaskCarriersSchema, OutputParsesWithTheSchemaAndCarriesTheMaskedText)
{
	// Everything a message can hold, secrets in every string, numbers that must not move.
	const std::string text = R"pb(
		title: "title SECRET"
		inner { text: "SECRET in inner" nums: [1, 2, 3, 300] blob: "\000\001\377" child { text: "child SECRET" nums: 5 } }
		items { text: "item one" }
		items { text: "item SECRET two" child { child { text: "three levels SECRET" } } }
		n: -5 f: 0x0a0a0a0a d: 1.5
		tags: "tag SECRET" tags: "plain"
		labels { key: "SECRET key" value: "SECRET value" }
		floats: [1.0, 2.5]
	)pb";
	const std::string in = encode("Outer", text);
	const std::string out = protobuf(in, mask);
	EXPECT_EQ(out, encode("Outer", replace_all(text, "SECRET", "[MASKED]")));
	EXPECT_EQ(decode("Outer", out), decode("Outer", encode("Outer", replace_all(text, "SECRET", "[MASKED]"))));
	EXPECT_EQ(protobuf(in, identity), in);
	EXPECT_EQ(protobuf(in, [](std::string_view t) { return replace_all(t, "NOTHING", "x"); }), in);
}

TEST_F(MaskCarriersSchema, LengthsAreReEncodedAfterGrowthAndShrinkage)
{
	// 100 bytes of text three levels down: growing it by 200 makes every length a two-byte varint;
	// shrinking a 200-byte text to 6 makes them one byte again.
	const std::string secret100 = "SECRET" + std::string(94, 'x');
	const std::string grown = std::string(300, 'G');
	const std::string in = encode("Outer", "inner { child { child { text: \"" + secret100 + "\" nums: 1 } } }");
	const std::string out =
	    protobuf(in, [&](std::string_view t) { return t == secret100 ? grown : std::string(t); });
	EXPECT_EQ(out, encode("Outer", "inner { child { child { text: \"" + grown + "\" nums: 1 } } }"));
	EXPECT_EQ(out.size(), in.size() + 200 + 4); // the text's length and its three parents' grew a byte each

	const std::string secret200 = "SECRET" + std::string(194, 'y');
	const std::string big = encode("Outer", "items { text: \"" + secret200 + "\" nums: 2 } n: 9");
	const std::string small =
	    protobuf(big, [&](std::string_view t) { return t == secret200 ? std::string("short!") : std::string(t); });
	EXPECT_EQ(small, encode("Outer", "items { text: \"short!\" nums: 2 } n: 9"));
	EXPECT_EQ(decode("Outer", small), "items {\n  text: \"short!\"\n  nums: 2\n}\nn: 9\n");
}

TEST(MaskCarriersProtobuf, UnchangedInputIsByteIdenticalEvenWhenNotCanonical)
{
	// At the top: a length written in two bytes, a tag with a redundant continuation byte, a field
	// number from the reserved range. None of it is re-encoded when nothing changes.
	const std::string two_byte_length("\x85\x00", 2), two_byte_tag("\x90\x00", 2);
	const std::string msg = tag(1, 2) + two_byte_length + "hello" + two_byte_tag + varint(3) + tag(19500, 0) +
	                        varint(1) + lfield(2, lfield(1, "x") + vfield(2, 1));
	EXPECT_TRUE(wire_valid(msg));
	EXPECT_EQ(protobuf(msg, identity), msg);
	EXPECT_EQ(protobuf(msg, mask), msg);
	EXPECT_EQ(protobuf("", mask), "");
	// Changed: only the length that had to change is re-encoded.
	EXPECT_EQ(protobuf(tag(1, 2) + std::string("\x86\x00", 2) + "SECRET" + two_byte_tag + varint(3), mask),
	          lfield(1, "[MASKED]") + two_byte_tag + varint(3));
}

TEST(MaskCarriersProtobuf, ShortWordsAreTextNotMessages)
{
	// "hi" parses as field 13 = 105, yet it is text to every reader.
	EXPECT_EQ(texts_in(lfield(1, "hi") + lfield(2, "hi there") + lfield(3, "Bj")),
	          (std::vector<std::string>{"hi", "hi there", "Bj"}));
	EXPECT_EQ(protobuf(lfield(1, "hi"), [](std::string_view t) { return t == "hi" ? "hello" : std::string(t); }),
	          lfield(1, "hello"));
}

TEST_F(MaskCarriersSchema, AMessageThatIsAlsoTextKeepsBothReadersWhole)
{
	// Inner{text: 40 characters} is "\n(" + 40 characters: printable, and a message. Masked as a
	// message its length is still valid; a reader taking the field as a string finds valid UTF-8
	// without the secret.
	const std::string secret_text = "key SECRET in forty characters of text.";
	ASSERT_EQ(secret_text.size(), 39u);
	const std::string t40 = secret_text + "!";
	const std::string in = encode("Outer", "inner { text: \"" + t40 + "\" }");
	ASSERT_EQ(in.substr(2, 2), "\n(");
	RewriteStats stats;
	const std::string out = protobuf(in, mask, &stats);
	EXPECT_EQ(out, encode("Outer", "inner { text: \"key [MASKED] in forty characters of text.!\" }"));
	EXPECT_EQ(stats.changed, 1u); // the message reading's one text
	const std::string field = out.substr(2);
	EXPECT_EQ(field.find("SECRET"), std::string::npos);

	// Text that only happens to parse: "*S" reads as field 5 with 83 bytes, and the secret would
	// straddle that tag. The message reading cannot mask it, so the text reading wins.
	const std::string tricky = "*SECRET" + std::string(78, '.');
	ASSERT_EQ(tricky.size(), 85u);
	EXPECT_EQ(protobuf(lfield(1, tricky), mask), lfield(1, "*[MASKED]" + std::string(78, '.')));

	// Inner{data: hex of 24 bytes} is "*0" + 48 hex digits: text in which no scan sees the secret.
	// The message reading does (in the hex), so it is kept.
	const std::string hidden = encode("Inner", "text: \"a token SECRET here ok\"");
	ASSERT_EQ(hidden.size(), 24u);
	const std::string nested_hex = encode("Outer", "inner { data: \"" + hex(hidden) + "\" }");
	ASSERT_EQ(nested_hex.substr(2, 2), "*0");
	const std::string unhidden = protobuf(nested_hex, mask);
	EXPECT_EQ(unhidden, encode("Outer", "inner { data: \"" +
	                                        hex(encode("Inner", "text: \"a token [MASKED] here ok\"")) + "\" }"));
}

TEST(MaskCarriersProtobuf, PackedScalarsAndBinaryAreNotText)
{
	const std::string packed_small = lfield(2, varint(1) + varint(2) + varint(3) + varint(4));    // controls
	const std::string packed_big = lfield(3, varint(100) + varint(200) + varint(300));            // not UTF-8
	const std::string packed_zero = lfield(4, varint(0) + varint(65) + varint(66) + varint(67));  // NUL
	const std::string fixed = lfield(5, std::string("\x00\x00\x80\x3f\x00\x00\x20\x40", 8));      // floats
	const std::string binary = lfield(6, std::string("\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", 16)); // an image
	const std::string msg = packed_small + packed_big + packed_zero + fixed + binary + lfield(7, "SECRET");
	EXPECT_EQ(texts_in(msg), std::vector<std::string>{"SECRET"});
	EXPECT_EQ(protobuf(msg, [](std::string_view) { return std::string("changed"); }),
	          packed_small + packed_big + packed_zero + fixed + binary + lfield(7, "changed"));
}

TEST(MaskCarriersProtobuf, TerminalOutputWithEscapeCodesIsText)
{
	const std::string stdout_text = "\x1b[31mexport TOKEN=SECRET\x1b[0m\r\n\x1b[1m$ \x1b[0m";
	EXPECT_EQ(protobuf(lfield(1, stdout_text), mask), lfield(1, replace_all(stdout_text, "SECRET", "[MASKED]")));
}

TEST(MaskCarriersProtobuf, RewrittenTextStaysUtf8)
{
	EXPECT_EQ(protobuf(lfield(1, "SECRET"),
	                   [](std::string_view) {
		                   return std::string("a\xff"
		                                      "b");
	                   }),
	          lfield(1, "a\xef\xbf\xbd"
	                    "b"));
}

TEST_F(MaskCarriersSchema, HexPayloadsAreDecodedRewrittenAndReEncodedInTheSameCase)
{
	// BidiAppend {1 data = hex(AgentClientMessage), 2 request_id, 3 append_seqno}, the prompt at
	// run_request(1) > action(2) > user_message_action(1) > user_message(1) > text(1).
	const std::string prompt = "deploy with token SECRET please";
	const auto agent_message = [](const std::string &text) {
		return lfield(1, lfield(2, lfield(1, lfield(1, lfield(1, text) + vfield(3, 1))))) + vfield(7, 1);
	};
	for (bool upper : {false, true}) {
		const std::string in =
		    lfield(1, hex(agent_message(prompt), upper)) + lfield(2, "request-1") + vfield(3, 4);
		Recorder r;
		EXPECT_EQ(protobuf(in, r.fn()), in);
		// The hex text itself first (it could be a hex secret), then what is inside.
		EXPECT_EQ(r.seen, (std::vector<std::string>{hex(agent_message(prompt), upper), prompt, "request-1"}));
		const std::string out = protobuf(in, mask);
		EXPECT_EQ(out, lfield(1, hex(agent_message("deploy with token [MASKED] please"), upper)) +
		                   lfield(2, "request-1") + vfield(3, 4));
	}

	// Two levels: hex inside a message inside hex, with the schema reading the result.
	const std::string innermost = encode("Inner", "text: \"level two SECRET\" nums: 1");
	const std::string middle =
	    encode("Inner", "text: \"level one SECRET\" nums: 2 data: \"" + hex(innermost) + "\"");
	const std::string in = encode("Outer", "title: \"t\" data: \"" + hex(middle, true) + "\"");
	const std::string out = protobuf(in, mask);
	const std::string innermost_masked = encode("Inner", "text: \"level two [MASKED]\" nums: 1");
	const std::string middle_masked =
	    encode("Inner", "text: \"level one [MASKED]\" nums: 2 data: \"" + hex(innermost_masked) + "\"");
	EXPECT_EQ(out, encode("Outer", "title: \"t\" data: \"" + hex(middle_masked, true) + "\""));
	EXPECT_EQ(decode("Outer", out), "title: \"t\"\ndata: \"" + hex(middle_masked, true) + "\"\n");
	EXPECT_EQ(texts_in(out), (std::vector<std::string>{"t", hex(middle_masked, true), "level one [MASKED]",
	                                                   hex(innermost_masked), "level two [MASKED]"}));
}

TEST(MaskCarriersProtobuf, HexThatIsNotAMessageIsPlainText)
{
	const std::string msg = lfield(1, lfield(1, "SECRET"));
	const std::string h = hex(msg);
	// Odd length, a non-hex character, or bytes that are no message: the text path.
	for (const std::string &text :
	     {h + "0", h.substr(0, h.size() - 1) + "g", std::string("deadbeefSECRET"), std::string("deadbeef")}) {
		Recorder r;
		EXPECT_EQ(protobuf(lfield(1, text), r.fn()), lfield(1, text));
		EXPECT_EQ(r.seen, std::vector<std::string>{text}) << text;
	}
	// A hex token that is itself the secret is masked as text, even if it decodes to a message.
	EXPECT_EQ(protobuf(lfield(1, "08011002"),
	                   [](std::string_view t) { return t == "08011002" ? "[MASKED]" : std::string(t); }),
	          lfield(1, "[MASKED]"));
}

TEST(MaskCarriersProtobuf, GroupsAreRejectedAtTheTopAndAreNoMessageInside)
{
	auto top = rewrite_protobuf(tag(1, 3) + lfield(2, "SECRET") + tag(1, 4), mask);
	ASSERT_FALSE(top.ok());
	EXPECT_EQ(top.error().message(), "protobuf: group (wire type 3/4, not supported) in the field at offset 0");
	// Inside a field, group tags make the bytes "not a message": here they are text (3 control
	// bytes in 55), so the whole span reaches the rewriter as text.
	const std::string with_group =
	    tag(1, 3) + lfield(2, "a SECRET in a group, long enough to count as text") + tag(1, 4);
	Recorder r;
	EXPECT_EQ(protobuf(lfield(1, with_group), r.fn()), lfield(1, with_group));
	EXPECT_EQ(r.seen, std::vector<std::string>{with_group});
}

TEST(MaskCarriersProtobuf, MalformedWireDataIsAnErrorThatSaysWhere)
{
	const std::string ok = lfield(1, "fine");
	const std::pair<std::string, std::string> cases[] = {
	    {ok + "\x08", "truncated or overlong varint in the field at offset 6"},
	    {ok + "\x08\x80", "truncated or overlong varint in the field at offset 6"},
	    {ok + tag(2, 2) + varint(10) + "abc", "length past the end in the field at offset 6"},
	    {ok + tag(2, 2), "invalid length in the field at offset 6"},
	    {ok + std::string("\x00\x01", 2), "invalid field number in the field at offset 6"},
	    {ok + tag(2, 7), "invalid wire type in the field at offset 6"},
	    {ok + tag(2, 6), "invalid wire type in the field at offset 6"},
	    {ok + tag(2, 5) + "abc", "truncated fixed-width value in the field at offset 6"},
	    {ok + tag(2, 1) + "abcdefg", "truncated fixed-width value in the field at offset 6"},
	    {ok + tag(2, 0) + std::string(10, '\xff') + "\x01",
	     "truncated or overlong varint in the field at offset 6"},
	    {ok + std::string(5, '\xff') + "\x7f", "invalid tag in the field at offset 6"}, // > 32 bits
	    {ok + tag(2, 4), "group (wire type 3/4, not supported) in the field at offset 6"},
	};
	for (const auto &[in, where] : cases) {
		auto r = rewrite_protobuf(in, identity);
		ASSERT_FALSE(r.ok()) << where;
		EXPECT_EQ(r.error().message(), "protobuf: " + where);
		EXPECT_FALSE(wire_valid(in)) << where; // libprotobuf agrees
	}
}

TEST(MaskCarriersProtobuf, NestingIsBounded)
{
	// Each level: field 1 holding the next, with a varint so no level reads as text.
	const auto nested = [](int levels, const std::string &innermost) {
		std::string m = innermost;
		for (int i = 0; i < levels; i++)
			m = lfield(1, m) + vfield(2, 1);
		return m;
	};
	const std::string leaf = lfield(1, "SECRET") + vfield(2, 1);
	const std::string deepest_ok = nested(kMaxProtobufDepth, leaf); // the leaf is level 100 below the top
	EXPECT_EQ(protobuf(deepest_ok, mask), nested(kMaxProtobufDepth, lfield(1, "[MASKED]") + vfield(2, 1)));
	auto too_deep = rewrite_protobuf(nested(kMaxProtobufDepth + 1, leaf), mask);
	ASSERT_FALSE(too_deep.ok());
	EXPECT_EQ(too_deep.error().message(),
	          "protobuf: messages nested deeper than 100 levels, in the field at offset 0");
	EXPECT_FALSE(rewrite_protobuf(nested(5000, leaf), mask).ok()); // no stack overflow
}

TEST(MaskCarriersProtobuf, ARewriterThatThrowsIsAnError)
{
	auto r = rewrite_protobuf(lfield(1, "x"), [](std::string_view) -> std::string { throw std::bad_alloc(); });
	ASSERT_FALSE(r.ok());
	EXPECT_EQ(r.error().message().rfind("protobuf: rewriting failed: ", 0), 0u);
}

// ==== server-sent events ====

TEST(MaskCarriersSse, EveryFieldValueReachesTheRewriterAndLinesStay)
{
	const std::string in = "event: SECRET-event\r\ndata: {\"k\":\"SECRET\"}\r\nid:SECRET-1\r\n\r\n"
	                       ": comment SECRET\ndata\nretry: 10\n\n"
	                       "data:  two spaces SECRET\rdata: last\r\r";
	Recorder r;
	auto same = rewrite_sse(in, r.fn());
	ASSERT_TRUE(same.ok());
	EXPECT_EQ(*same, in);
	EXPECT_EQ(r.seen, (std::vector<std::string>{"SECRET-event", "{\"k\":\"SECRET\"}", "SECRET-1", "comment SECRET",
	                                            "10", " two spaces SECRET", "last"}));
	RewriteStats stats;
	auto out = rewrite_sse(in, mask, &stats);
	ASSERT_TRUE(out.ok());
	EXPECT_EQ(*out, replace_all(in, "SECRET", "[MASKED]"));
	EXPECT_EQ(stats.changed, 5u);
}

TEST(MaskCarriersSse, MultiLineRewritesKeepTheEventStructure)
{
	const TextRewriter two_lines = [](std::string_view t) {
		return t == "SECRET" ? std::string("one\r\ntwo\nthree") : std::string(t);
	};
	auto data = rewrite_sse("data: SECRET\r\n\r\n", two_lines);
	ASSERT_TRUE(data.ok());
	EXPECT_EQ(*data, "data: one\r\ndata: two\r\ndata: three\r\n\r\n"); // a reader joins them with \n
	auto event = rewrite_sse("event: SECRET\n\n", two_lines);
	ASSERT_TRUE(event.ok());
	EXPECT_EQ(*event, "event: one  two three\n\n");
	auto comment = rewrite_sse(":SECRET", two_lines);
	ASSERT_TRUE(comment.ok());
	EXPECT_EQ(*comment, ":one\n:two\n:three");
}

TEST(MaskCarriersSse, UnknownFieldNamesAreTextToo)
{
	Recorder r;
	const std::string in = "\xef\xbb\xbf"
	                       "SECRET-line\nx-SECRET: v\ndata: d\n\n";
	auto same = rewrite_sse(in, r.fn());
	ASSERT_TRUE(same.ok());
	EXPECT_EQ(*same, in);
	EXPECT_EQ(r.seen, (std::vector<std::string>{"SECRET-line", "x-SECRET", "v", "d"}));
	auto out = rewrite_sse(in, mask);
	ASSERT_TRUE(out.ok());
	EXPECT_EQ(*out, "\xef\xbb\xbf"
	                "[MASKED]-line\nx-[MASKED]: v\ndata: d\n\n");
}

TEST(MaskCarriersSse, BinaryIsNotEventStreamText)
{
	auto r = rewrite_sse(std::string("data: ok\n\x00\x00\x00\x00\x05\xff", 15), mask);
	ASSERT_FALSE(r.ok());
	EXPECT_EQ(r.error().message(), "sse: invalid UTF-8 (not event-stream text) at offset 14");
}

// ==== header values ====

TEST(MaskCarriersHeader, BearerAndCustomTokens)
{
	EXPECT_EQ(rewrite_header_value("Bearer SECRET", mask), "Bearer [MASKED]");
	EXPECT_EQ(rewrite_header_value("token-SECRET-1", mask), "token-[MASKED]-1");
	EXPECT_EQ(rewrite_header_value("nothing here", mask), "nothing here");
	Recorder r;
	EXPECT_EQ(rewrite_header_value("Bearer abc", r.fn()), "Bearer abc");
	EXPECT_EQ(r.seen, std::vector<std::string>{"Bearer abc"});
}

TEST(MaskCarriersHeader, BasicCredentialsAreDecodedAndReEncoded)
{
	// base64("crsr_SECRET:") = "Y3Jzcl9TRUNSRVQ6", base64("user:SECRET") = "dXNlcjpTRUNSRVQ="
	Recorder r;
	EXPECT_EQ(rewrite_header_value("Basic Y3Jzcl9TRUNSRVQ6", r.fn()), "Basic Y3Jzcl9TRUNSRVQ6");
	EXPECT_EQ(r.seen, (std::vector<std::string>{"crsr_SECRET:", "Basic Y3Jzcl9TRUNSRVQ6"}));
	// "crsr_[MASKED]:" and "user:[MASKED]"
	EXPECT_EQ(rewrite_header_value("Basic Y3Jzcl9TRUNSRVQ6", mask), "Basic Y3Jzcl9bTUFTS0VEXTo=");
	EXPECT_EQ(rewrite_header_value("basic  dXNlcjpTRUNSRVQ=", mask), "basic  dXNlcjpbTUFTS0VEXQ==");
	EXPECT_EQ(rewrite_header_value("Basic dXNlcjpTRUNSRVQ", mask), "Basic dXNlcjpbTUFTS0VEXQ"); // unpadded
	// Not base64: the whole value is still text.
	EXPECT_EQ(rewrite_header_value("Basic SECRET!", mask), "Basic [MASKED]!");
}

TEST(MaskCarriersHeader, TheRewriterCannotInjectHeaders)
{
	EXPECT_EQ(rewrite_header_value("SECRET", [](std::string_view) { return std::string("a\r\nX-Evil: 1\0", 13); }),
	          "a??X-Evil: 1?");
	EXPECT_EQ(rewrite_header_value("SECRET", [](std::string_view) { return std::string("tab\tok"); }), "tab\tok");
}
