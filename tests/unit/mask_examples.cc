// The examples behind mask_examples.h.
#include "mask_examples.h"

#include <cstdint>
#include <random>
#include <string_view>

namespace cordon::mask::testing {
namespace {

class Fake {
public:
	explicit Fake(uint64_t seed) : rng_(seed) {}
	std::string of(std::string_view charset, size_t n)
	{
		std::string s;
		for (size_t i = 0; i < n; i++)
			s.push_back(charset[rng_() % charset.size()]);
		return s;
	}
	std::string alnum(size_t n) { return of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789", n); }
	std::string lower_alnum(size_t n) { return of("abcdefghijklmnopqrstuvwxyz0123456789", n); }
	std::string upper_alnum(size_t n) { return of("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", n); }
	std::string letters(size_t n) { return of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz", n); }
	std::string hex(size_t n) { return of("0123456789abcdef", n); }
	std::string digits(size_t n) { return of("0123456789", n); }
	std::string b64(size_t n) { return of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/", n); }
	std::string b64url(size_t n)
	{
		return of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", n);
	}
	std::string password(size_t n)
	{
		return of("ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789#%&*!^", n);
	}
	std::string uuid() { return hex(8) + "-" + hex(4) + "-" + hex(4) + "-" + hex(4) + "-" + hex(12); }
	// A PEM body: 64-column base64 lines joined by `nl` ("\n" or JSON's two characters "\\n").
	std::string pem_body(size_t lines, const std::string &nl)
	{
		std::string s;
		for (size_t i = 0; i < lines; i++)
			s += b64(64) + nl;
		return s + b64(40) + "==" + nl;
	}

private:
	std::mt19937_64 rng_;
};

std::string base64url(std::string_view in)
{
	static const char *t = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
	std::string out;
	uint32_t v = 0;
	int bits = 0;
	for (unsigned char c : in) {
		v = (v << 8) | c;
		bits += 8;
		while (bits >= 6) {
			out.push_back(t[(v >> (bits - 6)) & 63]);
			bits -= 6;
		}
	}
	if (bits > 0)
		out.push_back(t[(v << (6 - bits)) & 63]);
	return out;
}

std::string base64(std::string_view in)
{
	std::string s = base64url(in);
	for (char &c : s)
		c = c == '-' ? '+' : c == '_' ? '/' : c;
	while (s.size() % 4)
		s.push_back('=');
	return s;
}

std::vector<Example> examples()
{
	Fake f(20240604);
	std::vector<Example> v;
	auto add = [&](std::string rule, std::string prefix, std::string secret, std::string suffix,
	               std::string negative) {
		v.push_back(
		    {std::move(rule), std::move(prefix), std::move(secret), std::move(suffix), std::move(negative)});
	};
	auto pem = [&](const std::string &type, const std::string &headers = "") {
		return "-----BEGIN " + type + "-----\n" + headers + f.pem_body(12, "\n") + "-----END " + type + "-----";
	};

	add("aws-access-key-id", "export AWS_ACCESS_KEY_ID=",
	    "AK"
	    "IA" +
	        f.of("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16),
	    "\n",
	    "id=AK"
	    "IA" +
	        f.of("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 15) + "\n");
	add("aws-secret-access-key", "aws_secret_access_key = ", f.b64(40), "\nregion = eu-west-1\n",
	    "aws_secret_access_key = ${AWS_SECRET_ACCESS_KEY}\n");
	add("aws-session-token", "AWS_SESSION_TOKEN=", "FwoGZXIvYXdzE" + f.b64(300), "\n",
	    "aws_session_token: <session token from sts>\n");
	add("gcp-service-account-private-key",
	    "{\n  \"type\": \"service_account\",\n  \"project_id\": \"ci-builds\",\n  \"private_key\": \"",
	    "-----BEGIN PRIVATE KEY-----\\n" + f.pem_body(10, "\\n") + "-----END PRIVATE KEY-----",
	    "\\n\",\n  \"client_email\": \"ci@ci-builds.iam.gserviceaccount.com\"\n}\n",
	    "{\"type\": \"service_account\", \"private_key\": \"\", \"client_email\": "
	    "\"ci@x.iam.gserviceaccount.com\"}");
	add("google-api-key", "const key = \"",
	    "AI"
	    "za" +
	        f.b64url(35),
	    "\";\n",
	    "const key = \"AI"
	    "za" +
	        f.b64url(34) + "\";\n");
	add("google-oauth-client-secret", "\"client_secret\":\"",
	    "GOC"
	    "SPX-" +
	        f.b64url(28),
	    "\"",
	    "\"client_id\":\"GOC"
	    "SPX-" +
	        f.b64url(27) + "\"");
	add("gcp-oauth-access-token", "curl -H 'X-Goog-Token: ", "ya29." + f.b64url(150), "' https://x\n",
	    "prefix ya29." + f.b64url(20) + " is too short\n");
	add("azure-storage-account-key", "DefaultEndpointsProtocol=https;AccountName=ciartifacts;AccountKey=",
	    f.b64(86) + "==", ";EndpointSuffix=core.windows.net\n",
	    "DefaultEndpointsProtocol=https;AccountName=ciartifacts;AccountKey=" + f.b64(85) + "==;\n");
	add("azure-ad-client-secret", "AZURE_CLIENT_SECRET=\"", f.alnum(3) + "8Q~" + f.alnum(34), "\"\n",
	    "ref=\"" + f.alnum(3) + "8Q~" + f.alnum(20) + "\"\n");
	add("azure-sas-signature",
	    "https://ci.blob.core.windows.net/logs/a.txt?sv=2022-11-02&ss=b&srt=o&sp=r&se=2030-01-01T00:00:00Z&sig=",
	    f.alnum(20) + "%2B" + f.alnum(20) + "%3D", "\n",
	    "https://ci.blob.core.windows.net/logs/a.txt?sig=abc&sv=1\n");
	add("digitalocean-pat", "DIGITALOCEAN_ACCESS_TOKEN=",
	    "dop"
	    "_v1_" +
	        f.hex(64),
	    "\n",
	    "do=dop"
	    "_v1_" +
	        f.hex(63) + "\n");
	add("digitalocean-oauth-token", "token: ",
	    "doo"
	    "_v1_" +
	        f.hex(64),
	    "\n",
	    "do: doo"
	    "_v1_" +
	        f.hex(40) + "\n");
	add("digitalocean-refresh-token", "refresh: ",
	    "dor"
	    "_v1_" +
	        f.hex(64),
	    "\n",
	    "refresh: dor"
	    "_v1_" +
	        f.hex(12) + "\n");
	add("heroku-api-key", "HEROKU_API_KEY=", f.uuid(), "\n", "HEROKU_APP_NAME=my-app-staging\n");
	add("heroku-api-key-v2", "HEROKU_API_KEY=",
	    "HRKU"
	    "-AA" +
	        f.b64url(58),
	    "\n",
	    "heroku=HRKU"
	    "-AA" +
	        f.b64url(57) + " \n");
	add("github-pat", "git clone https://x-access-token@github.com/o/r; GH=",
	    "gh"
	    "p_" +
	        f.alnum(36),
	    "\n",
	    "GH=gh"
	    "p_" +
	        f.alnum(35) + "\n");
	add("github-fine-grained-pat", "GITHUB_TOKEN: ",
	    "github"
	    "_pat_" +
	        f.alnum(22) + "_" + f.alnum(59),
	    "\n", "GITHUB_TOKEN: ${{ secrets.GITHUB_TOKEN }}\n");
	add("github-oauth-token", "oauth=",
	    "gh"
	    "o_" +
	        f.alnum(36),
	    ";",
	    "oauth=gh"
	    "o_" +
	        f.alnum(30) + ";");
	add("github-app-token", "installation token ",
	    "gh"
	    "s_" +
	        f.alnum(36),
	    " expires in 1h\n",
	    "installation token gh"
	    "s_" +
	        f.alnum(37) + " expires in 1h\n");
	add("github-refresh-token", "{\"refresh_token\":\"",
	    "gh"
	    "r_" +
	        f.alnum(76),
	    "\"}",
	    "{\"refresh\":\"gh"
	    "r_" +
	        f.alnum(20) + "\"}");
	add("gitlab-pat", "PRIVATE-TOKEN: ",
	    "gl"
	    "pat-" +
	        f.b64url(20),
	    "\n",
	    "gitlab: gl"
	    "pat-" +
	        f.b64url(19) + "\n");
	add("gitlab-pipeline-trigger-token", "curl -F token=",
	    "gl"
	    "ptt-" +
	        f.hex(40),
	    " -F ref=main\n",
	    "curl -F t=gl"
	    "ptt-" +
	        f.hex(39) + " -F ref=main\n");
	add("gitlab-runner-registration-token", "gitlab-runner register --registration-token ",
	    "GR1348941" + f.b64url(20), " --url https://gitlab.example.com\n",
	    "gitlab-runner register --registration-token GR1348941" + f.b64url(19) + " \n");
	add("gitlab-runner-auth-token", "[[runners]]\n  token = \"",
	    "gl"
	    "rt-" +
	        f.b64url(20),
	    "\"\n",
	    "[[runners]]\n  id = \"gl"
	    "rt-" +
	        f.b64url(10) + "\"\n");
	add("gitlab-deploy-token", "deploy: ",
	    "gl"
	    "dt-" +
	        f.b64url(20),
	    "\n",
	    "deploy: gl"
	    "dt-" +
	        f.b64url(19) + "\n");
	add("gitlab-ci-job-token", "CI_JOB_TOKEN=",
	    "gl"
	    "cbt-" +
	        f.b64url(26),
	    "\n",
	    "CI_JOB=gl"
	    "cbt-" +
	        f.b64url(12) + "\n");
	add("gitlab-oauth-app-secret", "secret: ",
	    "gl"
	    "oas-" +
	        f.hex(64),
	    "\n",
	    "app: gl"
	    "oas-" +
	        f.hex(63) + "\n");
	add("atlassian-api-token", "JIRA_API_TOKEN=",
	    "ATA"
	    "TT3" +
	        f.b64url(186),
	    "\n",
	    "JIRA=ATA"
	    "TT3" +
	        f.b64url(185) + " \n");
	add("private-key-rsa", "key.pem:\n", pem("RSA PRIVATE KEY"), "\n",
	    "-----BEGIN RSA PUBLIC KEY-----\n" + f.pem_body(6, "\n") + "-----END RSA PUBLIC KEY-----\n");
	add("private-key-ec", "", pem("EC PRIVATE KEY"), "\n",
	    "if (pem.starts_with(\"-----BEGIN EC PRIVATE KEY-----\")) {\n\treturn parse_ec(pem);\n}\n");
	add("private-key-dsa", "  ", pem("DSA PRIVATE KEY"), "\n  ",
	    "-----BEGIN DSA PARAMETERS-----\n" + f.pem_body(4, "\n") + "-----END DSA PARAMETERS-----\n");
	add("private-key-pkcs8", "cat <<EOF > key.pem\n", pem("PRIVATE KEY"), "\nEOF\n",
	    "-----BEGIN CERTIFICATE-----\n" + f.pem_body(10, "\n") + "-----END CERTIFICATE-----\n");
	add("private-key-pkcs8-encrypted", "", pem("ENCRYPTED PRIVATE KEY"), "\n",
	    "// -----BEGIN ENCRYPTED PRIVATE KEY----- marks PKCS#8 with a passphrase\n");
	add("private-key-openssh", "~/.ssh/id_ed25519:\n", pem("OPENSSH PRIVATE KEY"), "\n",
	    "~/.ssh/id_ed25519.pub: ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI" + f.b64(40) + " ci@runner\n");
	add("private-key-pgp", "", pem("PGP PRIVATE KEY BLOCK", "Version: GnuPG v2\nComment: ci signing key\n\n"), "\n",
	    "-----BEGIN PGP PUBLIC KEY BLOCK-----\n" + f.pem_body(8, "\n") + "-----END PGP PUBLIC KEY BLOCK-----\n");
	add("private-key-other", "sm2.key: ", pem("SM2 PRIVATE KEY"), "\n",
	    "-----BEGIN SM2 PARAMETERS-----\n" + f.pem_body(3, "\n") + "-----END SM2 PARAMETERS-----\n");
	add("age-secret-key", "# created: 2024-01-01\n",
	    "AGE-SECRET-KEY-1" + f.of("QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L", 58), "\n",
	    "# public key: age1" + f.of("qpzry9x8gf2tvdw0s3jn54khce6mua7l", 58) + "\n");
	{
		const std::string jwt =
		    base64url(R"({"alg":"RS256","typ":"JWT","kid":"ci"})") + "." +
		    base64url(R"({"sub":"repo:org/app:ref:refs/heads/main","aud":"cursor","exp":1900000000})") + "." +
		    f.b64url(342);
		add("jwt", "{\"jwt\": \"", jwt, "\"}",
		    "{\"header\": \"" + base64url(R"({"alg":"none"})") + ".not-a-jwt\"}");
	}
	add("slack-bot-token", "SLACK_BOT_TOKEN=",
	    "xo"
	    "xb-" +
	        f.digits(12) + "-" + f.digits(13) + "-" + f.alnum(24),
	    "\n",
	    "slack_bot=xo"
	    "xb-" +
	        f.digits(9) + "-" + f.digits(13) + "\n");
	add("slack-user-token", "token: ",
	    "xo"
	    "xp-" +
	        f.digits(12) + "-" + f.digits(12) + "-" + f.digits(13) + "-" + f.hex(32),
	    "\n",
	    "slack: xo"
	    "xp-" +
	        f.digits(12) + "-" + f.digits(12) + "\n");
	add("slack-app-token", "SLACK_APP_TOKEN=",
	    "xa"
	    "pp-1-A" +
	        f.upper_alnum(10) + "-" + f.digits(13) + "-" + f.hex(64),
	    "\n",
	    "SLACK_APP=xa"
	    "pp-1-A" +
	        f.upper_alnum(10) + "-" + f.digits(13) + "-" + f.hex(20) + "\n");
	add("slack-config-token", "config: ",
	    "xo"
	    "xe.xoxp-1-" +
	        f.upper_alnum(163),
	    "\n",
	    "config: xo"
	    "xe.xoxp-1-" +
	        f.upper_alnum(100) + "\n");
	add("slack-webhook-url", "curl -X POST https://hooks.slack.com/services/",
	    "T" + f.upper_alnum(8) + "/B" + f.upper_alnum(8) + "/" + f.alnum(24), " -d @msg.json\n",
	    "see https://hooks.slack.com/services/T0000/B0000 for the format\n");
	add("stripe-secret-key", "Stripe.api_key = \"",
	    "sk"
	    "_live_" +
	        f.alnum(48),
	    "\"\n",
	    "Stripe.api_base = \"sk"
	    "_live_" +
	        f.alnum(9) + "\"\n");
	add("stripe-restricted-key", "STRIPE_KEY=",
	    "rk"
	    "_test_" +
	        f.alnum(48),
	    "\n",
	    "STRIPE_KEY=rk"
	    "_test_" +
	        f.alnum(8) + "\n");
	add("stripe-webhook-secret", "endpoint_secret = '",
	    "wh"
	    "sec_" +
	        f.alnum(32),
	    "'\n",
	    "endpoint = 'wh"
	    "sec_" +
	        f.alnum(31) + "'\n");
	add("twilio-api-key", "client = Client(\"", "SK" + f.hex(32), "\", secret)\n",
	    "client = Client(\"SK" + f.hex(31) + "\", secret)\n");
	add("twilio-auth-token", "TWILIO_AUTH_TOKEN=", f.hex(32), "\n", "twilio_auth_token: ${TWILIO_AUTH_TOKEN}\n");
	add("sendgrid-api-key", "SENDGRID=", "SG." + f.b64url(22) + "." + f.b64url(43), "\n",
	    "SENDGRID=SG." + f.b64url(22) + "." + f.b64url(20) + "\n");
	add("mailgun-api-key", "auth=(\"api\", \"",
	    "key"
	    "-" +
	        f.hex(32),
	    "\")\n", "auth=(\"api\", \"key-" + f.hex(31) + "\")\n");
	add("mailgun-signing-key", "MAILGUN_SIGNING_KEY=",
	    f.of("abcdefgh0123456789", 32) + "-" + f.of("abcdefgh0123456789", 8) + "-" + f.of("abcdefgh0123456789", 8),
	    "\n", "MAILGUN_SIGNING_KEY=" + f.of("abcdefgh0123456789", 32) + "-" + f.of("abcdefgh0123456789", 8) + "\n");
	add("npm-token", "//registry.npmjs.org/:_authToken=",
	    "np"
	    "m_" +
	        f.alnum(36),
	    "\n",
	    "//registry.npmjs.org/:_auth=np"
	    "m_" +
	        f.alnum(35) + "\n");
	add("pypi-token", "[pypi]\n  password = ",
	    "py"
	    "pi-AgEIcHlwaS5vcmc" +
	        f.b64url(150),
	    "\n",
	    "[pypi]\n  username = __token__\n  # py"
	    "pi-AgEIcHlwaS5vcmc" +
	        f.b64url(20) + "\n");
	add("dockerhub-pat", "echo ",
	    "dckr"
	    "_pat_" +
	        f.b64url(27),
	    " | docker login -u ci --password-stdin\n",
	    "echo dckr"
	    "_pat_" +
	        f.b64url(26) + " | docker login\n");
	add("vault-service-token", "VAULT_TOKEN=",
	    "hv"
	    "s." +
	        f.b64url(95),
	    "\n",
	    "VAULT_ADDR=hv"
	    "s." +
	        f.b64url(40) + "\n");
	add("vault-batch-token", "X-Vault-Token: ",
	    "hv"
	    "b." +
	        f.b64url(150),
	    "\n",
	    "X-Vault-Namespace: hv"
	    "b." +
	        f.b64url(60) + "\n");
	add("terraform-cloud-token", "credentials \"app.terraform.io\" { token = \"",
	    f.lower_alnum(14) +
	        ".atlas"
	        "v1." +
	        f.lower_alnum(67),
	    "\" }\n",
	    "credentials \"app.terraform.io\" { hint = \"" + f.lower_alnum(14) +
	        ".atlas"
	        "v1." +
	        f.lower_alnum(30) + "\" }\n");
	add("shopify-access-token", "X-Shopify-Access-Token: ",
	    "shp"
	    "at_" +
	        f.hex(32),
	    "\n",
	    "X-Shopify-Shop: shp"
	    "at_" +
	        f.hex(31) + "\n");
	add("shopify-shared-secret", "SHOPIFY_SECRET=",
	    "shp"
	    "ss_" +
	        f.hex(32),
	    "\n",
	    "SHOPIFY_SHOP=shp"
	    "ss_" +
	        f.hex(20) + "\n");
	add("datadog-api-key", "DD_API_KEY=", f.hex(32), "\n", "DD_API_KEY=${DATADOG_API_KEY}\n");
	add("datadog-app-key", "DD_APP_KEY=", f.hex(40), "\n", "DD_APP_KEY=" + f.hex(39) + "\n");
	add("databricks-token", "DATABRICKS_TOKEN=", "dapi" + f.hex(32), "\n",
	    "DATABRICKS_HOST=dapi" + f.hex(31) + "\n");
	add("grafana-service-account-token", "grafana_sa: ",
	    "gl"
	    "sa_" +
	        f.alnum(32) + "_" + f.hex(8),
	    "\n",
	    "grafana: gl"
	    "sa_" +
	        f.alnum(32) + "_" + f.hex(7) + "\n");
	add("new-relic-user-api-key", "NEW_RELIC_API_KEY=",
	    "NR"
	    "AK-" +
	        f.upper_alnum(27),
	    "\n",
	    "NEW_RELIC_REGION=NR"
	    "AK-" +
	        f.upper_alnum(26) + "\n");
	add("sentry-user-token", "SENTRY_AUTH_TOKEN=",
	    "sntr"
	    "yu_" +
	        f.hex(64),
	    "\n",
	    "SENTRY_DSN=sntr"
	    "yu_" +
	        f.hex(63) + "\n");
	add("postman-api-key", "x-api-key: ",
	    "PM"
	    "AK-" +
	        f.hex(24) + "-" + f.hex(34),
	    "\n",
	    "x-api-id: PM"
	    "AK-" +
	        f.hex(24) + "-" + f.hex(33) + "\n");
	add("pulumi-access-token", "PULUMI_ACCESS_TOKEN=",
	    "pu"
	    "l-" +
	        f.hex(40),
	    "\n",
	    "PULUMI_STACK=pu"
	    "l-" +
	        f.hex(39) + "\n");
	add("linear-api-key", "LINEAR=",
	    "lin"
	    "_api_" +
	        f.alnum(40),
	    "\n",
	    "LINEAR=lin"
	    "_api_" +
	        f.alnum(39) + "\n");
	add("openai-api-key", "OPENAI_API_KEY=",
	    "sk"
	    "-proj-" +
	        f.b64url(74) +
	        "T3Blbk"
	        "FJ" +
	        f.b64url(74),
	    "\n",
	    "OPENAI_MODEL=sk"
	    "-proj-" +
	        f.alnum(20) + "\n");
	add("anthropic-api-key", "ANTHROPIC_API_KEY=",
	    "sk"
	    "-ant-api03-" +
	        f.b64url(93) + "AA",
	    "\n",
	    "ANTHROPIC_MODEL=sk"
	    "-ant-api03-" +
	        f.b64url(60) + "AA\n");
	add("anthropic-admin-key", "x-api-key: ",
	    "sk"
	    "-ant-admin01-" +
	        f.b64url(93) + "AA",
	    "\n",
	    "x-api-id: sk"
	    "-ant-admin01-" +
	        f.b64url(50) + "\n");
	add("huggingface-token", "HF_TOKEN=",
	    "h"
	    "f_" +
	        f.letters(34),
	    "\n",
	    "HF_HOME=h"
	    "f_" +
	        f.letters(33) + "\n");
	add("huggingface-org-token", "org: ",
	    "api"
	    "_org_" +
	        f.letters(34),
	    "\n",
	    "org: api"
	    "_org_" +
	        f.letters(33) + "\n");
	add("cursor-api-key", "CURSOR_API_KEY=",
	    "crsr"
	    "_" +
	        f.alnum(64),
	    "\n",
	    "CURSOR_MODEL=crsr"
	    "_" +
	        f.alnum(20) + "\n");
	add("postgres-url-password", "DATABASE_URL=postgres://ci_user:", f.alnum(18), "@db.internal:5432/app\n",
	    "DATABASE_URL=postgres://ci_user:${PGPASSWORD}@db.internal:5432/app\n");
	add("mysql-url-password", "dsn = 'mysql+pymysql://root:", f.password(14), "@127.0.0.1:3306/test'\n",
	    "dsn = 'mysql://root@localhost:3306/test'\n");
	add("mongodb-url-password", "MONGO_URI=mongodb+srv://svc:", f.alnum(20),
	    "@cluster0.example.net/db?retryWrites=true\n", "MONGO_URI=mongodb://localhost:27017/db\n");
	add("redis-url-password", "REDIS_URL=redis://:", f.alnum(24), "@cache:6379/0\n",
	    "REDIS_URL=redis://cache:6379/0\n");
	add("amqp-url-password", "BROKER=amqps://worker:", f.alnum(16), "@mq.internal:5671/ci\n",
	    "BROKER=amqp://worker:<password>@mq.internal:5672/\n");
	add("url-password", "git remote add origin https://deploy:", f.alnum(20), "@git.example.com/org/repo.git\n",
	    "git remote add origin https://git.example.com:443/org/repo.git\n");
	add("authorization-basic", "Authorization: Basic ", base64("ci-bot:" + f.alnum(16)), "\r\n",
	    "WWW-Authenticate: Basic realm=\"cordon\"\r\n");
	add("authorization-bearer", "curl -H \"Authorization: Bearer ", f.b64url(40), "\" https://api.example.com\n",
	    "curl -H \"Authorization: Bearer $TOKEN\" https://api.example.com\n");
	add("generic-password", "DB_PASSWORD=\"", f.password(16), "\"\n", "password=changeme\npasswd: ${DB_PASS}\n");
	add("generic-secret", "client_secret: ", f.alnum(32), "\n",
	    "client_secret: ${CLIENT_SECRET}\ntoken = request.headers.get_token()\n");
	return v;
}

} // namespace

const std::vector<Example> &all_examples()
{
	static const std::vector<Example> v = examples();
	return v;
}

} // namespace cordon::mask::testing
