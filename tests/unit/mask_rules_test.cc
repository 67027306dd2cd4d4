// Every built-in rule against a realistic fake secret (positive) and a near miss (negative), through
// Scanner::mask and through StreamMasker split at every offset and fed one byte at a time.
#include <gtest/gtest.h>

#include <map>
#include <random>
#include <set>

#include "mask/scanner.h"
#include "mask/stream_masker.h"
#include "mask_examples.h"

using namespace cordon::mask;
using cordon::mask::testing::all_examples;
using cordon::mask::testing::Example;

namespace {

std::shared_ptr<const RuleSet> builtin(Options options = {})
{
	auto rules = RuleSet::compile(RuleSet::builtin(), std::move(options));
	EXPECT_TRUE(rules) << rules.error().message();
	return rules ? *rules : nullptr;
}

const std::shared_ptr<const RuleSet> &shared_builtin()
{
	static const std::shared_ptr<const RuleSet> rules = builtin();
	return rules;
}

std::string masked(const Example &e)
{
	return e.prefix + "[MASKED:" + e.rule + "]" + e.suffix;
}

// What StreamMasker makes of `text` fed in the given pieces, then flushed.
std::string stream(Scanner &scanner, const std::vector<std::string_view> &pieces, size_t *max_held = nullptr)
{
	StreamMasker m(scanner, Direction::Both);
	std::string out;
	for (std::string_view p : pieces) {
		out += m.feed(p);
		if (max_held)
			*max_held = std::max(*max_held, m.held());
	}
	out += m.flush();
	EXPECT_EQ(m.held(), 0u);
	return out;
}

} // namespace

TEST(MaskRules, AtLeastSixtyBuiltinRulesWithStableIds)
{
	const auto rules = RuleSet::builtin();
	EXPECT_GE(rules.size(), 60u);
	std::set<std::string> ids;
	for (const auto &r : rules) {
		EXPECT_TRUE(ids.insert(r.id).second) << "duplicate " << r.id;
		for (char c : r.id)
			EXPECT_TRUE((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-') << r.id;
		EXPECT_FALSE(r.description.empty()) << r.id;
	}
	for (const char *needed : {"aws-access-key-id",
	                           "aws-secret-access-key",
	                           "gcp-service-account-private-key",
	                           "azure-storage-account-key",
	                           "github-pat",
	                           "github-fine-grained-pat",
	                           "github-app-token",
	                           "github-oauth-token",
	                           "gitlab-pat",
	                           "gitlab-pipeline-trigger-token",
	                           "gitlab-runner-auth-token",
	                           "private-key-rsa",
	                           "private-key-ec",
	                           "private-key-pkcs8",
	                           "private-key-pkcs8-encrypted",
	                           "private-key-dsa",
	                           "private-key-openssh",
	                           "jwt",
	                           "slack-bot-token",
	                           "slack-webhook-url",
	                           "stripe-secret-key",
	                           "stripe-webhook-secret",
	                           "twilio-api-key",
	                           "sendgrid-api-key",
	                           "mailgun-api-key",
	                           "npm-token",
	                           "pypi-token",
	                           "dockerhub-pat",
	                           "vault-service-token",
	                           "terraform-cloud-token",
	                           "heroku-api-key",
	                           "digitalocean-pat",
	                           "shopify-access-token",
	                           "atlassian-api-token",
	                           "datadog-api-key",
	                           "openai-api-key",
	                           "anthropic-api-key",
	                           "google-api-key",
	                           "huggingface-token",
	                           "cursor-api-key",
	                           "postgres-url-password",
	                           "mysql-url-password",
	                           "mongodb-url-password",
	                           "redis-url-password",
	                           "amqp-url-password",
	                           "authorization-basic",
	                           "authorization-bearer",
	                           "generic-password",
	                           "generic-secret"})
		EXPECT_TRUE(ids.count(needed)) << needed;
}

TEST(MaskRules, BuiltinRulesCompile)
{
	auto rules = shared_builtin();
	ASSERT_TRUE(rules);
	EXPECT_EQ(rules->rules().size(), RuleSet::builtin().size());
	// Bounds the stream masker relies on (and what a caller plans its latency with).
	EXPECT_GT(rules->max_width(), 0u);
	EXPECT_LE(rules->max_width(), 8192u);
	EXPECT_EQ(rules->max_block(), 16384u);
}

TEST(MaskRules, EveryBuiltinRuleHasAnExample)
{
	std::set<std::string> covered;
	for (const auto &e : all_examples())
		covered.insert(e.rule);
	for (const auto &r : RuleSet::builtin())
		EXPECT_TRUE(covered.count(r.id)) << "no positive/negative example for " << r.id;
}

TEST(MaskRules, PositiveExamplesAreMaskedExactly)
{
	Scanner scanner(shared_builtin());
	for (const auto &e : all_examples()) {
		SCOPED_TRACE(e.rule);
		const std::string text = e.positive();
		std::vector<Finding> found;
		const std::string out = scanner.mask(text, Direction::Both, &found);
		EXPECT_EQ(out, masked(e));
		EXPECT_EQ(out.find(e.secret), std::string::npos);
		ASSERT_EQ(found.size(), 1u);
		EXPECT_EQ(found[0].rule, e.rule);
		EXPECT_EQ(found[0].offset, e.prefix.size());
		EXPECT_EQ(found[0].length, e.secret.size());
	}
}

TEST(MaskRules, PositiveExamplesSameLength)
{
	Options o;
	o.replacement = "same-length";
	Scanner scanner(builtin(o));
	for (const auto &e : all_examples()) {
		SCOPED_TRACE(e.rule);
		EXPECT_EQ(scanner.mask(e.positive(), Direction::Both),
		          e.prefix + std::string(e.secret.size(), '*') + e.suffix);
	}
}

TEST(MaskRules, NegativeExamplesAreLeftAlone)
{
	Scanner scanner(shared_builtin());
	for (const auto &e : all_examples()) {
		SCOPED_TRACE(e.rule);
		std::vector<Finding> found;
		EXPECT_EQ(scanner.mask(e.negative, Direction::Both, &found), e.negative);
		for (const auto &f : found)
			ADD_FAILURE() << "found " << f.rule << " at " << f.offset << "+" << f.length;
	}
}

TEST(MaskRules, ExamplesInBothDirections)
{
	Scanner scanner(shared_builtin());
	for (const auto &e : all_examples()) {
		SCOPED_TRACE(e.rule);
		EXPECT_EQ(scanner.mask(e.positive(), Direction::Request), masked(e));
		EXPECT_EQ(scanner.mask(e.positive(), Direction::Response), masked(e));
	}
}

// A secret split at every offset across two writes is still masked, and the stream's output is
// exactly what masking the whole text gives.
TEST(MaskRules, StreamSplitAtEveryOffset)
{
	Scanner scanner(shared_builtin());
	for (const auto &e : all_examples()) {
		SCOPED_TRACE(e.rule);
		for (const std::string &text : {e.positive(), e.negative}) {
			const std::string expected = scanner.mask(text, Direction::Both);
			const std::string_view t = text;
			for (size_t cut = 0; cut <= t.size(); cut++) {
				const std::string out = stream(scanner, {t.substr(0, cut), t.substr(cut)});
				if (out != expected) {
					ADD_FAILURE() << "split at " << cut << " of " << t.size() << ":\n" << out;
					break;
				}
			}
		}
	}
}

TEST(MaskRules, StreamOneBytePerWrite)
{
	const size_t limit = shared_builtin()->max_hold();
	Scanner scanner(shared_builtin());
	for (const auto &e : all_examples()) {
		SCOPED_TRACE(e.rule);
		for (const std::string &text : {e.positive(), e.negative}) {
			std::vector<std::string_view> bytes;
			for (size_t i = 0; i < text.size(); i++)
				bytes.push_back(std::string_view(text).substr(i, 1));
			size_t held = 0;
			EXPECT_EQ(stream(scanner, bytes, &held), scanner.mask(text, Direction::Both));
			EXPECT_LE(held, limit);
		}
	}
}

// The same secrets inside larger text: several per text, in JSON, separated by little.
TEST(MaskRules, AllExamplesInOneDocument)
{
	Scanner scanner(shared_builtin());
	std::string text, expected;
	for (const auto &e : all_examples()) {
		text += e.positive() + "\n" + e.negative + "\n";
		expected += masked(e) + "\n" + e.negative + "\n";
	}
	std::vector<Finding> found;
	EXPECT_EQ(scanner.mask(text, Direction::Both, &found), expected);
	EXPECT_EQ(found.size(), all_examples().size());
	// And streamed in uneven pieces.
	std::vector<std::string_view> pieces;
	std::string_view t = text;
	for (size_t n = 1; !t.empty(); n = n * 7 % 4093 + 1) {
		pieces.push_back(t.substr(0, n));
		t.remove_prefix(std::min(n, t.size()));
	}
	EXPECT_EQ(stream(scanner, pieces), expected);
}
