// The built-in rules. Each regex is written once and read by two engines: vectorscan (scan) and
// RE2 (confirm + extract), so it stays in their common subset: no lookaround, no backreferences,
// every repeat bounded (the stream masker's hold-back is the longest match), `$` only at the end.
// Where a format needs a boundary after a variable-length secret we do not add one: a token longer
// than the bound is then masked by its prefix instead of not at all.
#include "mask/rules.h"

#include <array>
#include <cmath>

namespace cordon::mask {

const char *to_string(Direction d)
{
	switch (d) {
	case Direction::Request:
		return "request";
	case Direction::Response:
		return "response";
	case Direction::Both:
		return "both";
	}
	return "?";
}

double shannon_entropy(std::string_view s)
{
	if (s.empty())
		return 0;
	std::array<size_t, 256> counts{};
	for (unsigned char c : s)
		counts[c]++;
	double h = 0;
	const double n = static_cast<double>(s.size());
	for (size_t c : counts) {
		if (c == 0)
			continue;
		const double p = static_cast<double>(c) / n;
		h -= p * std::log2(p);
	}
	return h;
}

std::string replacement(const Options &options, std::string_view rule, size_t length)
{
	if (options.replacement == kSameLength)
		return std::string(length, '*');
	std::string out;
	const std::string_view r = options.replacement;
	for (size_t i = 0; i < r.size();) {
		if (r.compare(i, 6, "{rule}") == 0) {
			out += rule;
			i += 6;
		} else {
			out += r[i++];
		}
	}
	return out;
}

namespace {

// A value assigned to a key the way env files, config files, code, JSON and YAML write it: one of
// `keys`, up to 20 more name characters (`_PROD`, `.value`), an optional closing quote (also
// JSON-escaped), an operator, blanks, an optional opening quote, then the value (group 1) and `tail`.
std::string assigned(const std::string &keys, const std::string &value, const std::string &tail = "")
{
	return "(?i)(?:" + keys + R"()[\w.-]{0,20}(?:\\?["'])?[ \t]{0,5}(?:=>|:=|=|:|,)[ \t]{0,5}(?:\\?["'`])?()" +
	       value + ")" + tail;
}

// What follows a PEM / OpenSSH opening line: everything up to the closing line when there is one
// within the cap (whatever the lines hold, as long as no other "-----" marker line comes first),
// else the body as far as it looks like one: base64, whitespace, JSON's two-character "\n"
// escapes, quotes and `+` of a key pasted into code as concatenated string literals, and RFC 1421 /
// RFC 4880 header lines ("Proc-Type: 4,ENCRYPTED", "DEK-Info: ...", "Version: ..."). Header lines
// come first among the alternatives: RE2 prefers earlier ones, and a character-by-character path
// would stop at the colon.
std::string pem_rest(const std::string &end)
{
	return R"((?:(?:[^-]|-{1,4}[^-])*?(?:)" + end +
	       R"()|(?:[A-Za-z-]{1,20}:[ \t][^\r\n\\]{0,100}|[A-Za-z0-9+/=\s\\"'])*))";
}

// Large enough for a 16384-bit RSA key in PEM (about 12.7 KiB) with JSON escapes; a longer block is
// still masked to its end by continuation.
constexpr size_t kPemCap = 16384;

RuleSpec pem(std::string id, std::string description, const std::string &type)
{
	RuleSpec r;
	r.id = std::move(id);
	r.description = std::move(description);
	r.regex = "-----BEGIN " + type + "-----";
	r.block_regex = "-----BEGIN " + type + "-----" + pem_rest("-----END " + type + "-----");
	r.block_end = "-----END " + type + "-----";
	r.block_cap = kPemCap;
	r.keywords = {"-----BEGIN"};
	return r;
}

// Placeholders and references that stand where a password or token would: `${VAR}`, `$VAR`,
// `{{ .Values.x }}`, `<your-token>`, `%VAR%`, `****`, an already masked value.
const std::vector<std::string> kPlaceholders = {
    R"(^\$)",
    R"(^\{\{)",
    R"(^<[^>]*>?$)",
    R"(^%[A-Za-z_][A-Za-z0-9_]*%$)",
    R"(^\*+$)",
    R"(^(?i:x+|\.\.\.+|changeme|change_me|password|passwd|secret|redacted|none|null|nil|undefined|example)$)",
    R"(\[MASKED:)",
};

// What code puts after `password =` / `token:` that is not a literal: member access, calls, indexing,
// absolute paths, plain words (identifiers) for tokens.
std::vector<std::string> code_references()
{
	std::vector<std::string> v = kPlaceholders;
	v.push_back(R"(^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*(?:\(|\[))");
	v.push_back(R"(^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+$)");
	v.push_back(R"(^/(?:bin|etc|home|opt|run|srv|tmp|usr|var)/)");
	return v;
}

RuleSpec rule(std::string id, std::string description, std::string regex, int group, std::vector<std::string> keywords,
              double entropy = 0, std::vector<std::string> allowlist = {})
{
	RuleSpec r;
	r.id = std::move(id);
	r.description = std::move(description);
	r.regex = std::move(regex);
	r.secret_group = group;
	r.keywords = std::move(keywords);
	r.min_entropy = entropy;
	r.allowlist = std::move(allowlist);
	return r;
}

// Database and service URLs with a password: only the password is masked.
RuleSpec url_password(std::string id, std::string description, const std::string &schemes,
                      std::vector<std::string> keywords)
{
	return rule(std::move(id), std::move(description),
	            "(?i)\\b(?:" + schemes + R"()://[^\s:@/"'`]{0,64}:([^\s@/"'`]{1,128})@)", 1, std::move(keywords), 0,
	            kPlaceholders);
}

} // namespace

// Order matters only for ties: when two rules find a secret at the same offset, the merged finding
// keeps the earlier rule's id, so specific rules come before the generic ones at the end.
std::vector<RuleSpec> RuleSet::builtin()
{
	const std::string b64tail = R"((?:[^A-Za-z0-9/+=]|$))";
	const std::string tok_tail = R"((?:[^A-Za-z0-9_-]|$))";
	std::vector<RuleSpec> r;

	// --- cloud providers ---
	r.push_back(rule("aws-access-key-id", "AWS access key id (AKIA/ASIA/...)",
	                 R"(\b((?:A3T[A-Z0-9]|AKIA|ASIA|ABIA|ACCA)[A-Z2-7]{16})\b)", 1,
	                 {"a3t", "akia", "asia", "abia", "acca"}, 3.0, {"EXAMPLE$"}));
	r.push_back(rule(
	    "aws-secret-access-key", "AWS secret access key assigned to an aws_secret_access_key-like name",
	    assigned(
	        R"(aws[_.-]?secret[_.-]?access[_.-]?key|aws[_.-]?secret[_.-]?key|secret[_.-]?access[_.-]?key|aws[_.-]?secret)",
	        "[A-Za-z0-9/+]{40}", b64tail),
	    1, {"secret"}, 4.0, kPlaceholders));
	r.push_back(rule("aws-session-token", "AWS session token assigned to an aws_session_token-like name",
	                 assigned(R"(aws[_.-]?session[_.-]?token|aws[_.-]?security[_.-]?token|sessiontoken)",
	                          "[A-Za-z0-9/+=]{100,2048}"),
	                 1, {"token"}, 4.0, kPlaceholders));
	{
		RuleSpec g = pem("gcp-service-account-private-key",
		                 "GCP service account key file: the PEM in its JSON \"private_key\"", "PRIVATE KEY");
		// The secret starts at -----BEGIN (group 1 of the marker), not at "private_key".
		g.regex = R"(\\?"private_key\\?"[ \t]{0,5}:[ \t]{0,5}\\?"(-----BEGIN PRIVATE KEY-----))";
		g.block_regex = std::string(R"(\\?"private_key\\?"[ \t]*:[ \t]*\\?"-----BEGIN PRIVATE KEY-----)") +
		                pem_rest("-----END PRIVATE KEY-----");
		g.secret_group = 1;
		g.keywords = {"private_key"};
		r.push_back(g);
	}
	r.push_back(
	    rule("google-api-key", "Google API key (AIza...)", R"(\b(AIza[0-9A-Za-z_-]{35}))" + tok_tail, 1, {"aiza"}));
	r.push_back(rule("google-oauth-client-secret", "Google OAuth client secret (GOCSPX-...)",
	                 R"(\b(GOCSPX-[0-9A-Za-z_-]{28}))" + tok_tail, 1, {"gocspx-"}));
	r.push_back(rule("gcp-oauth-access-token", "Google OAuth access token (ya29....)",
	                 R"(\bya29\.[0-9A-Za-z_-]{30,1024})", 0, {"ya29."}, 3.5));
	r.push_back(rule(
	    "azure-storage-account-key", "Azure storage account key (AccountKey=... in a connection string)",
	    R"((?i)(?:AccountKey=|azure[_.-]?storage[_.-]?(?:account[_.-]?)?key[\w.-]{0,20}(?:\\?["'])?[ \t]{0,5}(?:=>|:=|=|:)[ \t]{0,5}(?:\\?["'`])?)([A-Za-z0-9+/]{86}==))",
	    1, {"accountkey", "storage"}, 4.0));
	r.push_back(rule("azure-ad-client-secret", "Azure AD (Entra ID) application client secret (...Q~...)",
	                 R"((?:^|[\\'"`\s>=:(,)])([A-Za-z0-9_~.]{3}[0-9]Q~[A-Za-z0-9_~.-]{31,34})(?:$|[\\'"`\s<),]))",
	                 1, {"q~"}, 3.0));
	r.push_back(rule("azure-sas-signature", "Azure shared access signature (sig= in a SAS URL)",
	                 R"((?i)[?&]sig=([A-Za-z0-9%+/=]{40,128}))", 1, {"sig="}, 3.5));
	r.push_back(rule("digitalocean-pat", "DigitalOcean personal access token (dop_v1_)",
	                 R"(\bdop_v1_[a-f0-9]{64}\b)", 0, {"dop_v1_"}));
	r.push_back(rule("digitalocean-oauth-token", "DigitalOcean OAuth access token (doo_v1_)",
	                 R"(\bdoo_v1_[a-f0-9]{64}\b)", 0, {"doo_v1_"}));
	r.push_back(rule("digitalocean-refresh-token", "DigitalOcean OAuth refresh token (dor_v1_)",
	                 R"(\bdor_v1_[a-f0-9]{64}\b)", 0, {"dor_v1_"}));
	r.push_back(rule(
	    "heroku-api-key", "Heroku API key (a UUID assigned to a heroku-like name)",
	    assigned("heroku", "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", R"((?:[^0-9a-z-]|$))"),
	    1, {"heroku"}));
	r.push_back(rule("heroku-api-key-v2", "Heroku API key, new format (HRKU-AA...)",
	                 R"(\b(HRKU-AA[0-9A-Za-z_-]{58}))" + tok_tail, 1, {"hrku-aa"}));

	// --- source hosting and CI ---
	r.push_back(rule("github-pat", "GitHub classic personal access token (ghp_)", R"(\bghp_[0-9A-Za-z]{36}\b)", 0,
	                 {"ghp_"}, 3.0));
	r.push_back(rule("github-fine-grained-pat", "GitHub fine-grained personal access token (github_pat_)",
	                 R"(\bgithub_pat_[0-9A-Za-z_]{82}\b)", 0, {"github_pat_"}, 3.0));
	r.push_back(rule("github-oauth-token", "GitHub OAuth access token (gho_)", R"(\bgho_[0-9A-Za-z]{36}\b)", 0,
	                 {"gho_"}, 3.0));
	r.push_back(rule("github-app-token", "GitHub App user-to-server or installation token (ghu_, ghs_)",
	                 R"(\bgh[us]_[0-9A-Za-z]{36}\b)", 0, {"ghu_", "ghs_"}, 3.0));
	r.push_back(rule("github-refresh-token", "GitHub App refresh token (ghr_)", R"(\bghr_[0-9A-Za-z]{36,76}\b)", 0,
	                 {"ghr_"}, 3.0));
	r.push_back(rule("gitlab-pat", "GitLab personal, project or group access token (glpat-)",
	                 R"(\bglpat-[0-9A-Za-z_.-]{20,80})", 0, {"glpat-"}));
	r.push_back(rule("gitlab-pipeline-trigger-token", "GitLab pipeline trigger token (glptt-)",
	                 R"(\bglptt-[0-9a-f]{40}\b)", 0, {"glptt-"}));
	r.push_back(rule("gitlab-runner-registration-token", "GitLab runner registration token (GR1348941)",
	                 R"(\b(GR1348941[0-9A-Za-z_-]{20}))" + tok_tail, 1, {"gr1348941"}));
	r.push_back(rule("gitlab-runner-auth-token", "GitLab runner authentication token (glrt-)",
	                 R"(\bglrt-[0-9A-Za-z_.-]{20,80})", 0, {"glrt-"}));
	r.push_back(rule("gitlab-deploy-token", "GitLab deploy token (gldt-)", R"(\bgldt-[0-9A-Za-z_.-]{20,80})", 0,
	                 {"gldt-"}));
	r.push_back(rule("gitlab-ci-job-token", "GitLab CI/CD job token (glcbt-)", R"(\bglcbt-[0-9A-Za-z_.-]{20,80})",
	                 0, {"glcbt-"}));
	r.push_back(rule("gitlab-oauth-app-secret", "GitLab OAuth application secret (gloas-)",
	                 R"(\bgloas-[0-9a-f]{64}\b)", 0, {"gloas-"}));
	r.push_back(rule("atlassian-api-token", "Atlassian (Jira, Confluence, Bitbucket) API token (ATATT3)",
	                 R"(\bATATT3[0-9A-Za-z_=-]{186})", 0, {"atatt3"}));

	// --- private keys, begin to end ---
	r.push_back(pem("private-key-rsa", "RSA private key in PEM (also encrypted, with Proc-Type / DEK-Info)",
	                "RSA PRIVATE KEY"));
	r.push_back(pem("private-key-ec", "EC private key in PEM", "EC PRIVATE KEY"));
	r.push_back(pem("private-key-dsa", "DSA private key in PEM", "DSA PRIVATE KEY"));
	r.push_back(pem("private-key-pkcs8", "PKCS#8 private key in PEM", "PRIVATE KEY"));
	r.push_back(pem("private-key-pkcs8-encrypted", "Encrypted PKCS#8 private key in PEM", "ENCRYPTED PRIVATE KEY"));
	r.push_back(pem("private-key-openssh", "OpenSSH private key", "OPENSSH PRIVATE KEY"));
	r.push_back(pem("private-key-pgp", "PGP (OpenPGP) private key block", "PGP PRIVATE KEY BLOCK"));
	{
		RuleSpec o =
		    pem("private-key-other", "Any other PEM private key (-----BEGIN ... PRIVATE KEY-----)", "");
		o.regex = R"(-----BEGIN [A-Z0-9]{1,20}(?: [A-Z0-9]{1,20}){0,2} PRIVATE KEY-----)";
		o.block_regex = std::string(R"(-----BEGIN [A-Z0-9]{1,20}(?: [A-Z0-9]{1,20}){0,2} PRIVATE KEY-----)") +
		                pem_rest(R"(-----END [A-Z0-9]{1,20}(?: [A-Z0-9]{1,20}){0,2} PRIVATE KEY-----)");
		o.block_end = R"(-----END [A-Z0-9]{1,20}(?: [A-Z0-9]{1,20}){0,2} PRIVATE KEY-----)";
		r.push_back(o);
	}
	r.push_back(rule("age-secret-key", "age encryption secret key",
	                 R"(AGE-SECRET-KEY-1[QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L]{58})", 0, {"age-secret-key-1"}));

	// --- tokens with a structure of their own ---
	r.push_back(rule("jwt", "JSON Web Token (header.payload[.signature], base64url JSON)",
	                 R"(\beyJ[0-9A-Za-z_-]{8,512}\.eyJ[0-9A-Za-z_-]{8,4096}(?:\.[0-9A-Za-z_-]{0,1024})?)", 0,
	                 {"eyj"}, 3.0));

	// --- chat, payments, messaging, email ---
	r.push_back(rule("slack-bot-token", "Slack bot token (xoxb-)",
	                 R"(\bxoxb-[0-9]{10,13}-[0-9]{10,13}[0-9A-Za-z-]{0,64})", 0, {"xoxb-"}));
	r.push_back(rule("slack-user-token", "Slack user or enterprise token (xoxp-, xoxe-)",
	                 R"(\bxox[pe](?:-[0-9]{10,13}){3}-[0-9A-Za-z-]{28,64})", 0, {"xoxp-", "xoxe-"}));
	r.push_back(rule("slack-app-token", "Slack app-level token (xapp-)",
	                 R"((?i)\bxapp-[0-9]-[A-Z0-9]{8,16}-[0-9]{8,16}-[a-z0-9]{32,80})", 0, {"xapp-"}));
	r.push_back(rule("slack-config-token", "Slack configuration access token (xoxe.xoxp-, xoxe.xoxb-)",
	                 R"((?i)\bxoxe\.xox[bp]-[0-9]-[A-Z0-9]{150,170})", 0, {"xoxe."}));
	r.push_back(rule("slack-webhook-url", "Slack incoming webhook / workflow URL (the secret path)",
	                 R"((?i)hooks\.slack\.com/(?:services|workflows|triggers)/([A-Za-z0-9+/]{43,80}))", 1,
	                 {"hooks.slack.com"}));
	r.push_back(rule("stripe-secret-key", "Stripe secret key (sk_live_, sk_test_)",
	                 R"(\bsk_(?:live|test|prod)_[0-9A-Za-z]{10,99}\b)", 0, {"sk_live_", "sk_test_", "sk_prod_"},
	                 3.0));
	r.push_back(rule("stripe-restricted-key", "Stripe restricted key (rk_live_, rk_test_)",
	                 R"(\brk_(?:live|test|prod)_[0-9A-Za-z]{10,99}\b)", 0, {"rk_live_", "rk_test_", "rk_prod_"},
	                 3.0));
	r.push_back(rule("stripe-webhook-secret", "Stripe webhook signing secret (whsec_)",
	                 R"(\bwhsec_[0-9A-Za-z+/=]{32,64})", 0, {"whsec_"}, 3.0));
	r.push_back(rule("twilio-api-key", "Twilio API key SID + secret (SK + 32 hex)", R"(\bSK[0-9a-fA-F]{32}\b)", 0,
	                 {"sk"}, 3.0));
	r.push_back(rule("twilio-auth-token", "Twilio auth token (32 hex assigned to a twilio-like name)",
	                 assigned("twilio", "[0-9a-f]{32}", R"((?:[^0-9a-z]|$))"), 1, {"twilio"}, 3.0));
	r.push_back(rule("sendgrid-api-key", "SendGrid API key (SG.x.y)",
	                 R"(\b(SG\.[0-9A-Za-z_-]{22}\.[0-9A-Za-z_-]{43}))" + tok_tail, 1, {"sg."}, 3.0));
	r.push_back(rule("mailgun-api-key", "Mailgun private API key (key- + 32 hex)", R"(\bkey-[0-9a-f]{32}\b)", 0,
	                 {"key-"}, 3.0));
	r.push_back(rule("mailgun-signing-key", "Mailgun webhook signing key (assigned to a mailgun-like name)",
	                 assigned("mailgun", "[a-h0-9]{32}-[a-h0-9]{8}-[a-h0-9]{8}", R"((?:[^0-9a-z-]|$))"), 1,
	                 {"mailgun"}, 3.0));

	// --- package registries, infrastructure, observability ---
	r.push_back(rule("npm-token", "npm access token (npm_)", R"((?i)\bnpm_[a-z0-9]{36}\b)", 0, {"npm_"}, 3.0));
	r.push_back(rule("pypi-token", "PyPI upload token (pypi-AgEIcHlwaS5vcmc...)",
	                 R"(\bpypi-AgEIcHlwaS5vcmc[0-9A-Za-z_-]{50,400})", 0, {"pypi-ageichlwas5vcmc"}));
	r.push_back(rule("dockerhub-pat", "Docker Hub personal or organization access token (dckr_pat_, dckr_oat_)",
	                 R"(\b(dckr_(?:pat|oat)_[0-9A-Za-z_-]{27,32}))" + tok_tail, 1, {"dckr_pat_", "dckr_oat_"}));
	r.push_back(rule("vault-service-token", "HashiCorp Vault service token (hvs.)",
	                 R"(\bhvs\.[0-9A-Za-z_-]{90,120})", 0, {"hvs."}, 3.5));
	r.push_back(rule("vault-batch-token", "HashiCorp Vault batch token (hvb.)", R"(\bhvb\.[0-9A-Za-z_-]{138,300})",
	                 0, {"hvb."}, 3.5));
	r.push_back(rule("terraform-cloud-token", "Terraform Cloud / Enterprise API token (.atlasv1.)",
	                 R"((?i)\b[a-z0-9]{14}\.atlasv1\.[a-z0-9_=-]{60,70})", 0, {".atlasv1."}, 3.5));
	r.push_back(rule("shopify-access-token", "Shopify access token (shpat_, shpca_, shppa_)",
	                 R"(\bshp(?:at|ca|pa)_[a-fA-F0-9]{32}\b)", 0, {"shpat_", "shpca_", "shppa_"}));
	r.push_back(rule("shopify-shared-secret", "Shopify app shared secret (shpss_)", R"(\bshpss_[a-fA-F0-9]{32}\b)",
	                 0, {"shpss_"}));
	r.push_back(
	    rule("datadog-api-key", "Datadog API key (32 hex assigned to a DD_API_KEY-like name)",
	         assigned(R"(dd[_.-]?api[_.-]?key|datadog[_.-]?api[_.-]?key)", "[a-f0-9]{32}", R"((?:[^0-9a-z]|$))"), 1,
	         {"api"}, 3.0));
	r.push_back(rule("datadog-app-key", "Datadog application key (40 hex assigned to a DD_APP_KEY-like name)",
	                 assigned(R"(dd[_.-]?app(?:lication)?[_.-]?key|datadog[_.-]?app(?:lication)?[_.-]?key)",
	                          "[a-f0-9]{40}", R"((?:[^0-9a-z]|$))"),
	                 1, {"app"}, 3.0));
	r.push_back(rule("databricks-token", "Databricks personal access token (dapi)",
	                 R"(\bdapi[a-f0-9]{32}(?:-[0-9])?\b)", 0, {"dapi"}, 3.0));
	r.push_back(rule("grafana-service-account-token", "Grafana service account token (glsa_)",
	                 R"(\bglsa_[A-Za-z0-9]{32}_[A-Fa-f0-9]{8}\b)", 0, {"glsa_"}));
	r.push_back(
	    rule("new-relic-user-api-key", "New Relic user API key (NRAK-)", R"(\bNRAK-[A-Z0-9]{27}\b)", 0, {"nrak-"}));
	r.push_back(rule("sentry-user-token", "Sentry user auth token (sntryu_)", R"(\bsntryu_[a-f0-9]{64}\b)", 0,
	                 {"sntryu_"}));
	r.push_back(rule("postman-api-key", "Postman API key (PMAK-)", R"((?i)\bPMAK-[a-f0-9]{24}-[a-f0-9]{34}\b)", 0,
	                 {"pmak-"}));
	r.push_back(rule("pulumi-access-token", "Pulumi access token (pul-)", R"(\bpul-[a-f0-9]{40}\b)", 0, {"pul-"}));
	r.push_back(
	    rule("linear-api-key", "Linear API key (lin_api_)", R"(\blin_api_[0-9A-Za-z]{40}\b)", 0, {"lin_api_"}));

	// --- AI providers ---
	r.push_back(
	    rule("openai-api-key", "OpenAI API key (sk-proj-, sk-svcacct-, sk-admin-, legacy sk-...T3BlbkFJ...)",
	         R"(\bsk-(?:(?:proj|svcacct|admin)-[0-9A-Za-z_-]{40,250}|[0-9A-Za-z]{20}T3BlbkFJ[0-9A-Za-z]{20}\b))", 0,
	         {"sk-"}, 3.5));
	r.push_back(rule("anthropic-api-key", "Anthropic API key (sk-ant-api03-)",
	                 R"(\b(sk-ant-api03-[0-9A-Za-z_-]{93}AA))" + tok_tail, 1, {"sk-ant-api03"}));
	r.push_back(rule("anthropic-admin-key", "Anthropic admin API key (sk-ant-admin01-)",
	                 R"(\b(sk-ant-admin01-[0-9A-Za-z_-]{93}AA))" + tok_tail, 1, {"sk-ant-admin01"}));
	r.push_back(
	    rule("huggingface-token", "Hugging Face access token (hf_)", R"(\bhf_[A-Za-z]{34}\b)", 0, {"hf_"}, 3.0));
	r.push_back(rule("huggingface-org-token", "Hugging Face organization API token (api_org_)",
	                 R"(\bapi_org_[A-Za-z]{34}\b)", 0, {"api_org_"}, 3.0));
	r.push_back(rule("cursor-api-key", "Cursor API key (crsr_ followed by a long token)",
	                 R"(\bcrsr_[0-9A-Za-z_-]{32,128})", 0, {"crsr_"}, 3.0));

	// --- credentials in URLs and headers ---
	r.push_back(url_password("postgres-url-password", "Password in a PostgreSQL URL",
	                         R"(postgres(?:ql)?(?:\+[a-z0-9]{1,20})?)", {"postgres"}));
	r.push_back(url_password("mysql-url-password", "Password in a MySQL / MariaDB URL",
	                         R"((?:mysql|mariadb)(?:\+[a-z0-9]{1,20})?)", {"mysql", "mariadb"}));
	r.push_back(
	    url_password("mongodb-url-password", "Password in a MongoDB URL", R"(mongodb(?:\+srv)?)", {"mongodb"}));
	r.push_back(url_password("redis-url-password", "Password in a Redis URL", "rediss?", {"redis"}));
	r.push_back(url_password("amqp-url-password", "Password in an AMQP (RabbitMQ) URL", "amqps?", {"amqp"}));
	r.push_back(url_password(
	    "url-password", "Password in any other URL with user:password@ (https, ftp, ldap, ...)",
	    R"(https?|ftps?|sftp|ssh|smtps?|imaps?|ldaps?|git|svn|mssql|sqlserver|oracle|clickhouse|nats|kafka|wss?)",
	    {"://"}));
	// "Basic information" is prose: base64 of user:password mixes cases and digits.
	std::vector<std::string> basic_allowlist = kPlaceholders;
	basic_allowlist.push_back("^[a-z]+$");
	basic_allowlist.push_back("^[A-Z][a-z]+$");
	r.push_back(rule(
	    "authorization-basic", "Credentials of an Authorization: Basic header",
	    R"((?i)(?:\bauthorization(?:\\?["'])?[ \t]{0,3}[:=][ \t]{0,3}(?:\\?["'])?|^)basic[ \t]{1,3}([A-Za-z0-9+/]{6,512}={0,2}))",
	    1, {"basic"}, 2.0, basic_allowlist));
	r.push_back(rule("authorization-bearer", "Token of a Bearer authorization (header value, curl -H, code)",
	                 R"((?i)\bbearer[ \t]{1,3}([A-Za-z0-9._~+/-]{16,2048}={0,2})(?:[^A-Za-z0-9._~+/=-]|$))", 1,
	                 {"bearer"}, 3.0, code_references()));

	// --- generic assignments, gated by entropy ---
	{
		std::vector<std::string> allow = code_references();
		r.push_back(rule("generic-password",
		                 "A literal assigned to password / passwd / passphrase / pwd (entropy >= 3)",
		                 assigned(R"(passw(?:or)?d|passphrase|pwd)", R"([^\s"'`;,{\[($<%*][^\s"'`;,]{5,255})",
		                          R"((?:[\s"'`;,]|$))"),
		                 1, {"pass", "pwd"}, 3.0, allow));
	}
	{
		std::vector<std::string> allow = code_references();
		// An identifier is not a token (a random one of 16+ characters nearly always has a digit).
		allow.push_back(R"(^[A-Za-z_.-]+$)");
		r.push_back(rule(
		    "generic-secret",
		    "A literal assigned to secret / token / api_key / access_key / credentials (entropy >= 3.5)",
		    assigned(
		        R"(secret|token|api[_.-]?key|apikey|access[_.-]?key|private[_.-]?key|credentials?|auth[_.-]?key)",
		        R"([A-Za-z0-9_.~+/=-]{16,512})", R"((?:[^A-Za-z0-9_.~+/=(-]|$))"),
		    1, {"secret", "token", "key", "credential"}, 3.5, allow));
	}
	return r;
}

} // namespace cordon::mask
