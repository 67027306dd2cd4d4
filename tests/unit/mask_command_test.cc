// `cordonctl mask`: what policy authors and tests rely on — masked output, findings without the
// secret, the rule list, a policy file's own rules, and clear errors.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <set>
#include <sstream>

#include "ctl/mask_command.h"

using cordon::run_mask_command;

namespace {

const std::string kAwsKey = "AKIAQYLPMN5HFIQR7XYZ";
const std::string kGithubToken = "ghp_R8fK2mQ9xLpW4vZ7nT1bY6cH3jD0sA5eG2uK";

struct Outcome {
	int code;
	std::string out, err;
};

Outcome mask(std::vector<std::string> args, const std::string &input = "")
{
	std::istringstream in(input);
	std::ostringstream out, err;
	const int code = run_mask_command(args, in, out, err);
	return {code, out.str(), err.str()};
}

// A file that is removed when the test ends.
struct TempFile {
	std::string path;
	explicit TempFile(const std::string &text)
	{
		char name[] = "/tmp/cordon-mask-command-XXXXXX";
		const int fd = mkstemp(name);
		EXPECT_GE(fd, 0);
		path = name;
		EXPECT_EQ(write(fd, text.data(), text.size()), static_cast<ssize_t>(text.size()));
		close(fd);
	}
	~TempFile() { unlink(path.c_str()); }
};

} // namespace

TEST(MaskCommand, MasksStdinAndAFile)
{
	const std::string text = "aws_access_key_id = " + kAwsKey + "\ntoken: " + kGithubToken + "\n";
	const Outcome from_stdin = mask({}, text);
	ASSERT_EQ(from_stdin.code, 0) << from_stdin.err;
	EXPECT_EQ(from_stdin.out, "aws_access_key_id = [MASKED:aws-access-key-id]\ntoken: [MASKED:github-pat]\n");

	TempFile file(text);
	const Outcome from_file = mask({file.path});
	ASSERT_EQ(from_file.code, 0) << from_file.err;
	EXPECT_EQ(from_file.out, from_stdin.out);
}

TEST(MaskCommand, ExplainGivesRuleOffsetAndLengthButNeverTheSecret)
{
	const std::string text = "aws_access_key_id = " + kAwsKey + "\ntoken: " + kGithubToken + "\n";
	const Outcome r = mask({"--explain", "-"}, text);
	ASSERT_EQ(r.code, 0) << r.err;
	const size_t github_at = text.find(kGithubToken);
	EXPECT_EQ(r.out, "aws-access-key-id 20 20\ngithub-pat " + std::to_string(github_at) + " 40\n");
	EXPECT_EQ(r.out.find(kAwsKey), std::string::npos);
}

TEST(MaskCommand, ListsEveryBuiltInRuleOncePerLine)
{
	const Outcome r = mask({"--list"});
	ASSERT_EQ(r.code, 0) << r.err;
	std::istringstream lines(r.out);
	std::set<std::string> ids;
	for (std::string line; std::getline(lines, line);) {
		EXPECT_TRUE(ids.insert(line).second) << "listed twice: " << line;
		EXPECT_EQ(line.find(' '), std::string::npos) << line;
	}
	EXPECT_GE(ids.size(), 60u);
	for (const char *id : {"aws-access-key-id", "github-pat", "private-key-rsa", "jwt", "cursor-api-key"})
		EXPECT_TRUE(ids.count(id)) << id;
}

TEST(MaskCommand, UsesAPolicyFilesRulesDisabledRulesAndReplacement)
{
	TempFile policy(R"(mask:
  replacement: "<{rule}>"
  disable: [aws-access-key-id]
  rules:
    - id: build-ticket
      regex: 'TICKET-([0-9]{6})'
      secret_group: 1
)");
	const std::string text = "id " + kAwsKey + " TICKET-123456 " + kGithubToken;
	const Outcome r = mask({"--config", policy.path}, text);
	ASSERT_EQ(r.code, 0) << r.err;
	EXPECT_EQ(r.out, "id " + kAwsKey + " TICKET-<build-ticket> <github-pat>");

	const Outcome list = mask({"--config=" + policy.path, "--list"});
	ASSERT_EQ(list.code, 0) << list.err;
	EXPECT_NE(list.out.find("build-ticket\n"), std::string::npos);
	EXPECT_EQ(list.out.find("aws-access-key-id\n"), std::string::npos);
}

TEST(MaskCommand, ABrokenPolicyRuleIsAnErrorWithFileAndLine)
{
	TempFile policy("mask:\n  rules:\n    - id: broken\n      regex: '(unclosed'\n");
	const Outcome r = mask({"--config", policy.path}, "text");
	EXPECT_EQ(r.code, 1);
	EXPECT_TRUE(r.out.empty());
	EXPECT_NE(r.err.find(policy.path + ":4:"), std::string::npos) << r.err;
}

TEST(MaskCommand, BadUsageExitsTwoAndSaysHow)
{
	for (const std::vector<std::string> &args :
	     std::vector<std::vector<std::string>>{{"--frobnicate"}, {"a", "b"}, {"--list", "file"}, {"--config"}}) {
		const Outcome r = mask(args);
		EXPECT_EQ(r.code, 2) << args[0];
		EXPECT_NE(r.err.find("usage: cordonctl mask"), std::string::npos) << r.err;
	}
	const Outcome missing = mask({"/nonexistent/cordon-file"});
	EXPECT_EQ(missing.code, 1);
	EXPECT_NE(missing.err.find("cannot open /nonexistent/cordon-file"), std::string::npos) << missing.err;
}
