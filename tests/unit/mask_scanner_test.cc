// The scanner's promises beyond single rules: merging, replacement styles, allowlists, entropy
// and keyword gates, user rules and their errors, directions, sharing a rule set between threads.
#include <gtest/gtest.h>

#include <chrono>
#include <random>
#include <thread>

#include "mask/scanner.h"

using namespace cordon::mask;

namespace {

RuleSpec user_rule(std::string id, std::string regex, int group = 0)
{
	RuleSpec r;
	r.id = std::move(id);
	r.description = "test rule";
	r.regex = std::move(regex);
	r.secret_group = group;
	return r;
}

std::shared_ptr<const RuleSet> compile(std::vector<RuleSpec> rules, Options options = {})
{
	auto set = RuleSet::compile(std::move(rules), std::move(options));
	EXPECT_TRUE(set) << set.error().message();
	return set ? *set : nullptr;
}

std::shared_ptr<const RuleSet> builtin(Options options)
{
	return compile(RuleSet::builtin(), std::move(options));
}

// Compiling the built-in rules takes about a second: tests share one set where options do not differ.
std::shared_ptr<const RuleSet> builtin()
{
	static const std::shared_ptr<const RuleSet> rules = builtin(Options{});
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

} // namespace

TEST(MaskScanner, OverlappingFindingsMergeKeepingTheFirstRule)
{
	auto rules = compile({user_rule("first", "abc[0-9]{4}"), user_rule("second", "[0-9]{4}xyz")});
	Scanner s(rules);
	std::vector<Finding> found;
	EXPECT_EQ(s.mask("<abc1234xyz>", Direction::Both, &found), "<[MASKED:first]>");
	ASSERT_EQ(found.size(), 1u);
	EXPECT_EQ(found[0].rule, "first");
	EXPECT_EQ(found[0].offset, 1u);
	EXPECT_EQ(found[0].length, 10u);
}

TEST(MaskScanner, AdjacentFindingsMerge)
{
	auto rules = compile({user_rule("left", "L[0-9]{6}"), user_rule("right", "R[0-9]{6}")});
	Scanner s(rules);
	EXPECT_EQ(s.mask("L123456R654321.", Direction::Both), "[MASKED:left].");
	// Not adjacent: two findings.
	EXPECT_EQ(s.mask("L123456 R654321.", Direction::Both), "[MASKED:left] [MASKED:right].");
}

TEST(MaskScanner, SameStartTieGoesToTheEarlierRule)
{
	auto rules = compile({user_rule("specific", "tok_[a-z]{8}"), user_rule("generic", "[a-z_]{12}")});
	Scanner s(rules);
	std::vector<Finding> found;
	EXPECT_EQ(s.mask(" tok_abcdefgh ", Direction::Both, &found), " [MASKED:specific] ");
	ASSERT_EQ(found.size(), 1u);
	EXPECT_EQ(found[0].rule, "specific");
}

TEST(MaskScanner, SameLengthReplacement)
{
	Options o;
	o.replacement = "same-length";
	Scanner s(builtin(o));
	const std::string pat = github_pat(1);
	const std::string text = "token " + pat + " end";
	const std::string out = s.mask(text, Direction::Both);
	EXPECT_EQ(out.size(), text.size());
	EXPECT_EQ(out, "token " + std::string(pat.size(), '*') + " end");
}

TEST(MaskScanner, CustomReplacementTemplate)
{
	Options o;
	o.replacement = "<<redacted {rule} / {rule}>>";
	Scanner s(builtin(o));
	EXPECT_EQ(s.mask("x " + github_pat(2), Direction::Both), "x <<redacted github-pat / github-pat>>");
}

TEST(MaskScanner, FindingsCarryOffsetsNeverTheSecret)
{
	Scanner s(builtin());
	const std::string pat = github_pat(3);
	const std::string text = "{\"t\":\"" + pat + "\"}";
	auto found = s.scan(text, Direction::Both);
	ASSERT_EQ(found.size(), 1u);
	EXPECT_EQ(text.substr(found[0].offset, found[0].length), pat);
	EXPECT_EQ(found[0].rule.find(pat), std::string::npos);
}

TEST(MaskScanner, RuleAllowlist)
{
	Scanner s(builtin());
	// AWS's documentation example is allowlisted by the rule; a real-looking key is not.
	EXPECT_EQ(s.mask("AKIAIOSFODNN7EXAMPLE", Direction::Both), "AKIAIOSFODNN7EXAMPLE");
	const std::string key = "AK"
	                        "IA" +
	                        random_token("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16, 4);
	EXPECT_EQ(s.mask(key, Direction::Both), "[MASKED:aws-access-key-id]");
}

TEST(MaskScanner, GlobalAllowlist)
{
	const std::string pat = github_pat(5);
	Options o;
	o.global_allowlist = {"^" + pat.substr(0, 12)};
	Scanner s(builtin(o));
	EXPECT_EQ(s.mask("a " + pat, Direction::Both), "a " + pat);
	EXPECT_EQ(s.mask("a " + github_pat(6), Direction::Both), "a [MASKED:github-pat]");
}

TEST(MaskScanner, EntropyGatesGenericAssignments)
{
	Scanner s(builtin());
	for (const char *kept : {"password=changeme", "password = \"password\"", "passwd: ${DB_PASS}",
	                         "password=$DB_PASS", "password: {{ .Values.db.password }}", "password=<your password>",
	                         "password = os.environ[\"DB_PASSWORD\"]", "password = getpass()", "password: string;",
	                         "pwd = /home/runner/work", "password: \"********\"", "api_key = settings.api_key",
	                         "token: ${{ secrets.GITHUB_TOKEN }}", "secret_name = \"production_database_password\"",
	                         "token = aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"})
		EXPECT_EQ(s.mask(kept, Direction::Both), kept);
	EXPECT_EQ(s.mask("password=Qx7#mK2!vR9w", Direction::Both), "password=[MASKED:generic-password]");
	EXPECT_EQ(s.mask("api_key: \"" + random_token(kAlnum, 32, 7) + "\"", Direction::Both),
	          "api_key: \"[MASKED:generic-secret]\"");
}

TEST(MaskScanner, UrlCredentialsMaskOnlyThePassword)
{
	Scanner s(builtin());
	const std::string pw = random_token(kAlnum, 20, 8);
	EXPECT_EQ(s.mask("postgresql://app:" + pw + "@db:5432/x", Direction::Both),
	          "postgresql://app:[MASKED:postgres-url-password]@db:5432/x");
	EXPECT_EQ(s.mask("postgres://app@db:5432/x", Direction::Both), "postgres://app@db:5432/x");
	EXPECT_EQ(s.mask("postgres://user:password@localhost/x", Direction::Both),
	          "postgres://user:password@localhost/x");
}

TEST(MaskScanner, HeaderValuesOnTheirOwn)
{
	// Carriers scan an HTTP header value by itself: "Basic ..." / "Bearer ..." with no name before.
	Scanner s(builtin());
	EXPECT_EQ(s.mask("Basic Y2ktYm90OnM0bXBsZVBhc3N3MHJk", Direction::Request),
	          "Basic [MASKED:authorization-basic]");
	EXPECT_EQ(s.mask("Bearer " + random_token(kAlnum, 40, 9), Direction::Request),
	          "Bearer [MASKED:authorization-bearer]");
	EXPECT_EQ(s.mask("Basic information", Direction::Request), "Basic information");
}

TEST(MaskScanner, PemBlockWithJsonEscapesAndHeaders)
{
	Scanner s(builtin());
	std::string body;
	for (int i = 0; i < 20; i++)
		body += random_token(kAlnum, 64, 100 + i) + "\\n";
	const std::string json = "{\"key\": \"-----BEGIN RSA PRIVATE KEY-----\\nProc-Type: 4,ENCRYPTED\\nDEK-Info: "
	                         "AES-128-CBC,0123456789ABCDEF0123456789ABCDEF\\n\\n" +
	                         body + "-----END RSA PRIVATE KEY-----\\n\"}";
	EXPECT_EQ(s.mask(json, Direction::Both), "{\"key\": \"[MASKED:private-key-rsa]\\n\"}");
}

TEST(MaskScanner, PemBlockPastedAsStringLiterals)
{
	Scanner s(builtin());
	std::string code = "KEY = (\"-----BEGIN EC PRIVATE KEY-----\\n\"\n";
	for (int i = 0; i < 4; i++)
		code += "       \"" + random_token(kAlnum, 64, 200 + i) + "\\n\"\n";
	code += "       \"-----END EC PRIVATE KEY-----\\n\")\n";
	EXPECT_EQ(s.mask(code, Direction::Both), "KEY = (\"[MASKED:private-key-ec]\\n\")\n");
}

TEST(MaskScanner, PemBlockWithoutEndIsMaskedToTheEndOfItsBody)
{
	Scanner s(builtin());
	std::string body;
	for (int i = 0; i < 5; i++)
		body += random_token(kAlnum, 64, 300 + i) + "\n";
	// Truncated at the end of the data: all of it goes.
	EXPECT_EQ(s.mask("-----BEGIN OPENSSH PRIVATE KEY-----\n" + body, Direction::Both),
	          "[MASKED:private-key-openssh]");
	// Cut off and followed by something that is not base64: masked up to there.
	EXPECT_EQ(s.mask("-----BEGIN OPENSSH PRIVATE KEY-----\n" + body + "}; // truncated", Direction::Both),
	          "[MASKED:private-key-openssh]}; // truncated");
	// A bare mention of the marker is not a key.
	EXPECT_EQ(s.mask("grep -- '-----BEGIN OPENSSH PRIVATE KEY-----' ~/.ssh/*", Direction::Both),
	          "grep -- '-----BEGIN OPENSSH PRIVATE KEY-----' ~/.ssh/*");
}

TEST(MaskScanner, PemBlockLongerThanTheCapIsMaskedWhole)
{
	RuleSpec r = RuleSet::builtin()[0];
	for (const auto &b : RuleSet::builtin())
		if (b.id == "private-key-rsa")
			r = b;
	r.block_cap = 300;
	Scanner s(compile({r}));
	std::string body;
	for (int i = 0; i < 30; i++)
		body += random_token(kAlnum, 64, 400 + i) + "\n";
	EXPECT_EQ(
	    s.mask("a\n-----BEGIN RSA PRIVATE KEY-----\n" + body + "-----END RSA PRIVATE KEY-----\nb", Direction::Both),
	    "a\n[MASKED:private-key-rsa]-----END RSA PRIVATE KEY-----\nb");
}

TEST(MaskScanner, KeywordsGateUserRules)
{
	RuleSpec r = user_rule("acme", "[a-z]{3,10}=[0-9]{8}");
	r.keywords = {"ACME"};
	Scanner s(compile({r}));
	EXPECT_EQ(s.mask("acme=12345678", Direction::Both), "[MASKED:acme]");
	EXPECT_EQ(s.mask("other=12345678", Direction::Both), "other=12345678");
}

TEST(MaskScanner, UserRuleAlongsideBuiltins)
{
	auto specs = RuleSet::builtin();
	RuleSpec r = user_rule("acme-token", R"(\b(acme_[a-z0-9]{24})\b)", 1);
	r.keywords = {"acme_"};
	r.min_entropy = 3.0;
	specs.push_back(r);
	Scanner s(compile(specs));
	const std::string tok = "acme_" + random_token("abcdefghijklmnopqrstuvwxyz0123456789", 24, 10);
	EXPECT_EQ(s.mask("ACME=" + tok + " " + github_pat(11), Direction::Both),
	          "ACME=[MASKED:acme-token] [MASKED:github-pat]");
	EXPECT_EQ(s.mask("ACME=acme_aaaaaaaaaaaaaaaaaaaaaaaa", Direction::Both), "ACME=acme_aaaaaaaaaaaaaaaaaaaaaaaa");
}

TEST(MaskScanner, LongRepeatsWorkInBothEngines)
{
	// RE2 caps counted repetitions at 1000; the engine splits longer ones for it.
	Scanner s(compile({user_rule("long", R"(\blong_[a-z]{1200,3000}\b)")}));
	const std::string tok = "long_" + random_token("abcdefghijklmnopqrstuvwxyz", 2500, 12);
	EXPECT_EQ(s.mask("x " + tok + " y", Direction::Both), "x [MASKED:long] y");
	EXPECT_EQ(s.mask("x long_abc y", Direction::Both), "x long_abc y");
}

TEST(MaskScanner, DirectionLimitsRules)
{
	RuleSpec up = user_rule("up-only", "UP[0-9]{6}");
	up.direction = Direction::Request;
	RuleSpec down = user_rule("down-only", "DN[0-9]{6}");
	down.direction = Direction::Response;
	Scanner s(compile({up, down}));
	EXPECT_EQ(s.mask("UP123456 DN123456", Direction::Request), "[MASKED:up-only] DN123456");
	EXPECT_EQ(s.mask("UP123456 DN123456", Direction::Response), "UP123456 [MASKED:down-only]");
	EXPECT_EQ(s.mask("UP123456 DN123456", Direction::Both), "[MASKED:up-only] [MASKED:down-only]");
}

TEST(MaskScanner, BadUserRulesAreRejectedNamingTheRule)
{
	struct Case {
		RuleSpec rule;
		const char *why;
	};
	RuleSpec bad_group = user_rule("my-group", "a(b)c", 2);
	RuleSpec bad_allow = user_rule("my-allow", "abc");
	bad_allow.allowlist = {"(unclosed"};
	RuleSpec bad_entropy = user_rule("my-entropy", "abc");
	bad_entropy.min_entropy = 9;
	const std::vector<Case> cases = {
	    {user_rule("my-syntax", "a(b"), "does not compile"},
	    {user_rule("my-backref", R"((a)\1)"), "regex"},
	    {user_rule("my-lookahead", "a(?=b)"), "regex"},
	    {user_rule("my-unbounded", "token_[a-z]+"), "unbounded"},
	    {user_rule("my-empty-match", "a?"), "empty"},
	    {user_rule("my-empty", ""), "empty"},
	    {bad_group, "secret_group"},
	    {bad_allow, "allowlist[0]"},
	    {bad_entropy, "min_entropy"},
	};
	for (const auto &c : cases) {
		auto set = RuleSet::compile({c.rule}, {});
		ASSERT_FALSE(set) << c.rule.id;
		EXPECT_NE(set.error().message().find("'" + c.rule.id + "'"), std::string::npos)
		    << set.error().message();
		EXPECT_NE(set.error().message().find(c.why), std::string::npos) << set.error().message();
	}
	auto dup = RuleSet::compile({user_rule("twice", "abc"), user_rule("twice", "def")}, {});
	ASSERT_FALSE(dup);
	EXPECT_NE(dup.error().message().find("'twice'"), std::string::npos);
	auto bad_id = RuleSet::compile({user_rule("Bad Id", "abc")}, {});
	ASSERT_FALSE(bad_id);
	Options o;
	o.global_allowlist = {"[z-a]"};
	auto bad_global = RuleSet::compile({user_rule("ok", "abc")}, o);
	ASSERT_FALSE(bad_global);
	EXPECT_NE(bad_global.error().message().find("global allowlist[0]"), std::string::npos);
}

TEST(MaskScanner, NoRulesNoFindings)
{
	Scanner s(compile({}));
	EXPECT_TRUE(s.ok());
	EXPECT_EQ(s.mask("gh"
	                 "p_" +
	                     random_token(kAlnum, 36, 13),
	                 Direction::Both)
	              .size(),
	          40u);
}

TEST(MaskScanner, MaskingIsIdempotent)
{
	Scanner s(builtin());
	const std::string text = "GITHUB_TOKEN=" + github_pat(14) + "\npassword: \"Qx7#mK2!vR9wLp\"\nsecret = \"" +
	                         random_token(kAlnum, 32, 15) + "\"\n";
	const std::string once = s.mask(text, Direction::Both);
	EXPECT_NE(once, text);
	EXPECT_EQ(s.mask(once, Direction::Both), once);
}

TEST(MaskScanner, BinaryAndLargeInput)
{
	Scanner s(builtin());
	std::string text(1 << 20, '\0');
	std::mt19937_64 rng(16);
	for (auto &c : text)
		c = static_cast<char>(rng());
	const std::string pat = github_pat(17);
	text.replace(500000, 1, " " + pat + " ");
	const std::string out = s.mask(text, Direction::Both);
	EXPECT_EQ(out.find(pat), std::string::npos);
	EXPECT_NE(out.find("[MASKED:github-pat]"), std::string::npos);
}

TEST(MaskScanner, OneRuleSetManyThreads)
{
	auto rules = builtin();
	std::vector<std::thread> threads;
	std::vector<int> ok(4, 0);
	for (int t = 0; t < 4; t++) {
		threads.emplace_back([&, t] {
			Scanner s(rules);
			for (int i = 0; i < 200; i++) {
				const std::string pat = github_pat(1000 + t * 1000 + i);
				if (s.mask("x=" + pat + ";", Direction::Both) == "x=[MASKED:github-pat];")
					ok[t]++;
			}
		});
	}
	for (auto &t : threads)
		t.join();
	for (int t = 0; t < 4; t++)
		EXPECT_EQ(ok[t], 200);
}

TEST(MaskScanner, RuleMatchingEverywhereIsBounded)
{
	// A user rule without anchors over megabytes of matching bytes: bounded work, all of it masked.
	Scanner s(compile({user_rule("dense", "[a-z0-9]{40}")}));
	const std::string blob = random_token("abcdefghijklmnopqrstuvwxyz0123456789", 4 << 20, 18);
	const auto start = std::chrono::steady_clock::now();
	std::vector<Finding> found;
	const std::string out = s.mask("<" + blob + ">", Direction::Both, &found);
	EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(20));
	EXPECT_EQ(out, "<[MASKED:dense]>");
	ASSERT_EQ(found.size(), 1u);
	EXPECT_EQ(found[0].length, blob.size());
}
