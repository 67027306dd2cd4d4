// The host CA on disk (modes, atomic creation, refusals) and the leaves it mints, checked with
// OpenSSL's own verifier.
#include <gtest/gtest.h>
#include <openssl/pem.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <thread>
#include <vector>

#include "tls/certificate_authority.h"

using namespace cordon;
using namespace cordon::tls;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

class TempDir {
public:
	TempDir()
	{
		std::string tmpl = (fs::temp_directory_path() / "cordon-ca-test-XXXXXX").string();
		path_ = ::mkdtemp(tmpl.data()) ? tmpl : "";
	}
	~TempDir()
	{
		std::error_code ec;
		fs::remove_all(path_, ec);
	}
	std::string path() const { return path_; }
	std::string state() const { return path_ + "/state"; }

private:
	std::string path_;
};

mode_t mode_of(const std::string &path)
{
	struct stat st {};
	EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
	return st.st_mode & 07777;
}

std::string read_text(const std::string &path)
{
	std::ifstream in(path);
	std::stringstream ss;
	ss << in.rdbuf();
	return ss.str();
}

void write_text(const std::string &path, const std::string &text)
{
	std::ofstream(path, std::ios::trunc) << text;
}

std::string name_entry(X509_NAME *name, int nid)
{
	char buf[256] = {};
	X509_NAME_get_text_by_NID(name, nid, buf, sizeof(buf));
	return buf;
}

std::vector<std::string> dns_names(X509 *cert, int *critical = nullptr)
{
	std::vector<std::string> out;
	GeneralNamesPtr names(
	    static_cast<GENERAL_NAMES *>(X509_get_ext_d2i(cert, NID_subject_alt_name, critical, nullptr)));
	for (int i = 0; names && i < sk_GENERAL_NAME_num(names.get()); i++) {
		const GENERAL_NAME *gn = sk_GENERAL_NAME_value(names.get(), i);
		if (gn->type == GEN_DNS)
			out.emplace_back(reinterpret_cast<const char *>(ASN1_STRING_get0_data(gn->d.dNSName)),
			                 ASN1_STRING_length(gn->d.dNSName));
		else
			out.emplace_back("<not DNS>");
	}
	return out;
}

// X509_verify_cert against a store holding only the CA, as a TLS client checking `host` would.
int verify(const CertificateAuthority &ca, X509 *leaf, const std::string &host,
           std::chrono::system_clock::time_point at = std::chrono::system_clock::now())
{
	X509StorePtr store(X509_STORE_new());
	X509_STORE_add_cert(store.get(), ca.certificate());
	X509StoreCtxPtr ctx(X509_STORE_CTX_new());
	X509_STORE_CTX_init(ctx.get(), store.get(), leaf, nullptr);
	X509_VERIFY_PARAM *param = X509_STORE_CTX_get0_param(ctx.get());
	X509_VERIFY_PARAM_set1_host(param, host.c_str(), host.size());
	X509_VERIFY_PARAM_set_purpose(param, X509_PURPOSE_SSL_SERVER);
	X509_VERIFY_PARAM_set_time(param, std::chrono::system_clock::to_time_t(at));
	if (X509_verify_cert(ctx.get()) == 1)
		return X509_V_OK;
	return X509_STORE_CTX_get_error(ctx.get());
}

long seconds_between(std::chrono::system_clock::time_point a, std::chrono::system_clock::time_point b)
{
	return static_cast<long>(std::chrono::duration_cast<std::chrono::seconds>(b - a).count());
}

} // namespace

TEST(CertificateAuthority, CreatedWithPrivateModesAndTheCaProfile)
{
	TempDir dir;
	auto ca = CertificateAuthority::load_or_create(dir.state());
	ASSERT_TRUE(ca) << ca.error().message();
	EXPECT_TRUE(ca->created());
	EXPECT_EQ(mode_of(dir.state()), 0700u);
	EXPECT_EQ(mode_of(dir.state() + "/ca"), 0700u);
	EXPECT_EQ(ca->key_path(), dir.state() + "/ca/ca.key");
	EXPECT_EQ(ca->cert_path(), dir.state() + "/ca/ca.crt");
	EXPECT_EQ(mode_of(ca->key_path()), 0600u);
	EXPECT_EQ(mode_of(ca->cert_path()), 0644u);
	// Nothing but the CA: the temporary directory it was built in is gone.
	std::vector<std::string> entries;
	for (const auto &e : fs::directory_iterator(dir.state()))
		entries.push_back(e.path().filename());
	EXPECT_EQ(entries, std::vector<std::string>{"ca"});

	X509 *cert = ca->certificate();
	EXPECT_EQ(X509_get_version(cert), X509_VERSION_3);
	char host[256] = {};
	::gethostname(host, sizeof(host) - 1);
	EXPECT_EQ(name_entry(X509_get_subject_name(cert), NID_commonName),
	          "cordon host CA (" + std::string(host) + ")");
	EXPECT_EQ(name_entry(X509_get_subject_name(cert), NID_organizationName), "cordon");
	EXPECT_EQ(X509_NAME_cmp(X509_get_subject_name(cert), X509_get_issuer_name(cert)), 0);
	EXPECT_EQ(ca->subject(), "O = cordon, CN = cordon host CA (" + std::string(host) + ")");

	int critical = -1;
	std::unique_ptr<BASIC_CONSTRAINTS, decltype(&BASIC_CONSTRAINTS_free)> bc(
	    static_cast<BASIC_CONSTRAINTS *>(X509_get_ext_d2i(cert, NID_basic_constraints, &critical, nullptr)),
	    BASIC_CONSTRAINTS_free);
	ASSERT_TRUE(bc);
	EXPECT_EQ(critical, 1);
	EXPECT_TRUE(bc->ca);
	ASSERT_TRUE(bc->pathlen);
	EXPECT_EQ(ASN1_INTEGER_get(bc->pathlen), 0);
	critical = -1;
	std::unique_ptr<ASN1_BIT_STRING, decltype(&ASN1_BIT_STRING_free)> ku(
	    static_cast<ASN1_BIT_STRING *>(X509_get_ext_d2i(cert, NID_key_usage, &critical, nullptr)),
	    ASN1_BIT_STRING_free);
	ASSERT_TRUE(ku);
	EXPECT_EQ(critical, 1);
	EXPECT_EQ(X509_get_key_usage(cert), static_cast<uint32_t>(KU_KEY_CERT_SIGN | KU_CRL_SIGN));
	EXPECT_NE(X509_get0_subject_key_id(cert), nullptr);

	EXPECT_EQ(X509_get_signature_nid(cert), NID_ecdsa_with_SHA256);
	EXPECT_TRUE(EVP_PKEY_is_a(ca->key(), "EC"));
	char group[64] = {};
	ASSERT_TRUE(EVP_PKEY_get_group_name(ca->key(), group, sizeof(group), nullptr));
	EXPECT_STREQ(group, "prime256v1");
	EXPECT_EQ(X509_verify(cert, ca->key()), 1);

	// Ten years from an hour ago.
	const auto now = std::chrono::system_clock::now();
	EXPECT_NEAR(seconds_between(ca->not_before(), now), 3600, 60);
	EXPECT_NEAR(seconds_between(ca->not_before(), ca->not_after()) / 86400.0, 3653, 1);

	BignumPtr serial(ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), nullptr));
	ASSERT_TRUE(serial);
	EXPECT_FALSE(BN_is_negative(serial.get()));
	EXPECT_LE(BN_num_bits(serial.get()), 128);
	EXPECT_GT(BN_num_bits(serial.get()), 64); // 128 random bits: fewer than 65 is a 2^-64 event
}

TEST(CertificateAuthority, FingerprintIsTheSha256OfTheDerInOpensslsFormat)
{
	TempDir dir;
	auto ca = CertificateAuthority::load_or_create(dir.state());
	ASSERT_TRUE(ca) << ca.error().message();
	unsigned char *der = nullptr;
	int len = i2d_X509(ca->certificate(), &der);
	ASSERT_GT(len, 0);
	unsigned char md[32];
	unsigned int md_len = 0;
	ASSERT_TRUE(EVP_Digest(der, static_cast<size_t>(len), md, &md_len, EVP_sha256(), nullptr));
	OPENSSL_free(der);
	std::string expected;
	for (unsigned i = 0; i < md_len; i++) {
		char b[4];
		std::snprintf(b, sizeof(b), i ? ":%02X" : "%02X", md[i]);
		expected += b;
	}
	EXPECT_EQ(ca->fingerprint_sha256(), expected);
	// 32 upper-case hex pairs joined by colons (std::regex trips GCC 12's -Wmaybe-uninitialized under ASan).
	const std::string fp = ca->fingerprint_sha256();
	ASSERT_EQ(fp.size(), 32u * 3 - 1);
	for (size_t i = 0; i < fp.size(); i++)
		EXPECT_TRUE(i % 3 == 2 ? fp[i] == ':'
		                       : std::isxdigit(static_cast<unsigned char>(fp[i])) && !std::islower(fp[i]))
		    << fp;
	EXPECT_EQ(read_text(ca->cert_path()), ca->certificate_pem());
}

TEST(CertificateAuthority, LoadRoundTrip)
{
	TempDir dir;
	auto created = CertificateAuthority::load_or_create(dir.state());
	ASSERT_TRUE(created) << created.error().message();
	auto loaded = CertificateAuthority::load(dir.state());
	ASSERT_TRUE(loaded) << loaded.error().message();
	EXPECT_FALSE(loaded->created());
	EXPECT_EQ(loaded->fingerprint_sha256(), created->fingerprint_sha256());
	EXPECT_EQ(EVP_PKEY_eq(loaded->key(), created->key()), 1);
	EXPECT_EQ(loaded->not_after(), created->not_after());
	auto again = CertificateAuthority::load_or_create(dir.state());
	ASSERT_TRUE(again) << again.error().message();
	EXPECT_FALSE(again->created());
	EXPECT_EQ(again->fingerprint_sha256(), created->fingerprint_sha256());
}

TEST(CertificateAuthority, LoadWithoutCaSaysHowToMakeOne)
{
	TempDir dir;
	auto ca = CertificateAuthority::load(dir.path());
	ASSERT_FALSE(ca);
	EXPECT_NE(ca.error().message().find("cordonctl ca init"), std::string::npos) << ca.error().message();
}

TEST(CertificateAuthority, KeyOfAnotherCaIsRefused)
{
	TempDir a, b;
	ASSERT_TRUE(CertificateAuthority::load_or_create(a.state()));
	ASSERT_TRUE(CertificateAuthority::load_or_create(b.state()));
	fs::copy_file(b.state() + "/ca/ca.key", a.state() + "/ca/ca.key", fs::copy_options::overwrite_existing);
	auto ca = CertificateAuthority::load(a.state());
	ASSERT_FALSE(ca);
	EXPECT_NE(ca.error().message().find("is not the key of"), std::string::npos) << ca.error().message();
	// load_or_create must not "repair" it by making a new CA over the old one.
	EXPECT_FALSE(CertificateAuthority::load_or_create(a.state()));
}

TEST(CertificateAuthority, TamperedFilesAreRefused)
{
	TempDir dir;
	ASSERT_TRUE(CertificateAuthority::load_or_create(dir.state()));
	const std::string key_path = dir.state() + "/ca/ca.key", cert_path = dir.state() + "/ca/ca.crt";
	const std::string key = read_text(key_path), cert = read_text(cert_path);

	// A changed key byte: unparseable, or a different key.
	std::string bad_key = key;
	bad_key[bad_key.find('\n') + 40] ^= 0x01;
	write_text(key_path, bad_key);
	EXPECT_FALSE(CertificateAuthority::load(dir.state()));
	write_text(key_path, key);
	ASSERT_TRUE(CertificateAuthority::load(dir.state()));

	// A certificate altered after signing (here: one byte of its subject) fails its self-signature.
	auto ca = CertificateAuthority::load(dir.state());
	unsigned char *der = nullptr;
	int len = i2d_X509(ca->certificate(), &der);
	ASSERT_GT(len, 0);
	std::string bytes(reinterpret_cast<char *>(der), static_cast<size_t>(len));
	OPENSSL_free(der);
	const size_t at = bytes.rfind("cordon host CA");
	ASSERT_NE(at, std::string::npos);
	bytes[at] = 'C';
	const unsigned char *p = reinterpret_cast<const unsigned char *>(bytes.data());
	X509Ptr altered(d2i_X509(nullptr, &p, static_cast<long>(bytes.size())));
	ASSERT_TRUE(altered);
	write_text(cert_path, certificate_to_pem(altered.get()));
	auto refused = CertificateAuthority::load(dir.state());
	ASSERT_FALSE(refused);
	EXPECT_NE(refused.error().message().find("self-signature"), std::string::npos) << refused.error().message();
	write_text(cert_path, "not a certificate\n");
	EXPECT_FALSE(CertificateAuthority::load(dir.state()));
	write_text(cert_path, cert);
	EXPECT_TRUE(CertificateAuthority::load(dir.state()));
}

TEST(CertificateAuthority, KeyReadableByOthersIsRefused)
{
	TempDir dir;
	ASSERT_TRUE(CertificateAuthority::load_or_create(dir.state()));
	const std::string key_path = dir.state() + "/ca/ca.key";
	for (mode_t mode : {0644, 0640, 0604, 0660}) {
		ASSERT_EQ(::chmod(key_path.c_str(), mode), 0);
		auto ca = CertificateAuthority::load(dir.state());
		ASSERT_FALSE(ca) << std::oct << mode;
		char expected[64];
		std::snprintf(expected, sizeof(expected), "has mode %04o", static_cast<unsigned>(mode));
		EXPECT_NE(ca.error().message().find(expected), std::string::npos) << ca.error().message();
		EXPECT_NE(ca.error().message().find("chmod 600"), std::string::npos);
		EXPECT_FALSE(CertificateAuthority::load_or_create(dir.state()));
	}
	ASSERT_EQ(::chmod(key_path.c_str(), 0600), 0);
	EXPECT_TRUE(CertificateAuthority::load(dir.state()));
	ASSERT_EQ(::chmod(key_path.c_str(), 0400), 0);
	EXPECT_TRUE(CertificateAuthority::load(dir.state()));
}

TEST(CertificateAuthority, SymlinkedKeyAndLooseCaDirAreRefused)
{
	TempDir dir;
	ASSERT_TRUE(CertificateAuthority::load_or_create(dir.state()));
	const std::string key_path = dir.state() + "/ca/ca.key";
	fs::rename(key_path, dir.path() + "/elsewhere.key");
	fs::create_symlink(dir.path() + "/elsewhere.key", key_path);
	auto ca = CertificateAuthority::load(dir.state());
	ASSERT_FALSE(ca);
	EXPECT_NE(ca.error().message().find("symbolic link"), std::string::npos) << ca.error().message();
	fs::remove(key_path);
	fs::rename(dir.path() + "/elsewhere.key", key_path);
	ASSERT_TRUE(CertificateAuthority::load(dir.state()));
	ASSERT_EQ(::chmod((dir.state() + "/ca").c_str(), 0777), 0);
	EXPECT_FALSE(CertificateAuthority::load(dir.state()));
}

TEST(CertificateAuthority, StateDirIsTightenedAndAnEmptyCaDirFilled)
{
	TempDir dir;
	ASSERT_EQ(::mkdir(dir.state().c_str(), 0755), 0);
	ASSERT_EQ(::mkdir((dir.state() + "/ca").c_str(), 0700), 0);
	auto ca = CertificateAuthority::load_or_create(dir.state());
	ASSERT_TRUE(ca) << ca.error().message();
	EXPECT_TRUE(ca->created());
	EXPECT_EQ(mode_of(dir.state()), 0700u);
}

TEST(CertificateAuthority, CaDirWithOtherFilesIsLeftAlone)
{
	TempDir dir;
	ASSERT_EQ(::mkdir(dir.state().c_str(), 0700), 0);
	ASSERT_EQ(::mkdir((dir.state() + "/ca").c_str(), 0700), 0);
	write_text(dir.state() + "/ca/notes.txt", "mine\n");
	auto ca = CertificateAuthority::load_or_create(dir.state());
	ASSERT_FALSE(ca);
	EXPECT_NE(ca.error().message().find("holds files"), std::string::npos) << ca.error().message();
	EXPECT_EQ(read_text(dir.state() + "/ca/notes.txt"), "mine\n");
}

TEST(CertificateAuthority, ConcurrentCreatorsAgreeOnOneCa)
{
	TempDir dir;
	std::vector<std::string> fingerprints(8);
	std::vector<int> created(8, -1);
	std::vector<std::thread> threads;
	for (size_t i = 0; i < fingerprints.size(); i++)
		threads.emplace_back([&, i] {
			auto ca = CertificateAuthority::load_or_create(dir.state());
			if (ca) {
				fingerprints[i] = ca->fingerprint_sha256();
				created[i] = ca->created();
			}
		});
	for (auto &t : threads)
		t.join();
	EXPECT_EQ(std::set<std::string>(fingerprints.begin(), fingerprints.end()).size(), 1u);
	EXPECT_FALSE(fingerprints[0].empty());
	EXPECT_EQ(std::count(created.begin(), created.end(), 1), 1);
}

class Leaves : public ::testing::Test {
protected:
	static void SetUpTestSuite()
	{
		dir_ = new TempDir();
		auto ca = CertificateAuthority::load_or_create(dir_->state());
		ASSERT_TRUE(ca) << ca.error().message();
		ca_ = new CertificateAuthority(std::move(*ca));
	}
	static void TearDownTestSuite()
	{
		delete ca_;
		delete dir_;
	}
	static TempDir *dir_;
	static CertificateAuthority *ca_;
};
TempDir *Leaves::dir_ = nullptr;
CertificateAuthority *Leaves::ca_ = nullptr;

TEST_F(Leaves, VerifyAgainstTheCaForTheirNameOnly)
{
	auto leaf = ca_->issue_leaf("api2.cursor.sh", 24h);
	ASSERT_TRUE(leaf) << leaf.error().message();
	EXPECT_EQ(verify(*ca_, leaf->certificate.get(), "api2.cursor.sh"), X509_V_OK);
	EXPECT_EQ(verify(*ca_, leaf->certificate.get(), "API2.cursor.sh"), X509_V_OK);
	EXPECT_EQ(verify(*ca_, leaf->certificate.get(), "api3.cursor.sh"), X509_V_ERR_HOSTNAME_MISMATCH);
	EXPECT_EQ(verify(*ca_, leaf->certificate.get(), "cursor.sh"), X509_V_ERR_HOSTNAME_MISMATCH);
	EXPECT_EQ(verify(*ca_, leaf->certificate.get(), "x.api2.cursor.sh"), X509_V_ERR_HOSTNAME_MISMATCH);
	// Another CA's leaf for the same name is not accepted.
	TempDir other_dir;
	auto other = CertificateAuthority::load_or_create(other_dir.state());
	ASSERT_TRUE(other);
	auto foreign = other->issue_leaf("api2.cursor.sh", 24h);
	ASSERT_TRUE(foreign);
	EXPECT_EQ(verify(*ca_, foreign->certificate.get(), "api2.cursor.sh"),
	          X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY);
}

TEST_F(Leaves, CarryTheServerProfile)
{
	auto leaf = ca_->issue_leaf("API2.Cursor.SH.", 24h);
	ASSERT_TRUE(leaf) << leaf.error().message();
	X509 *cert = leaf->certificate.get();
	EXPECT_EQ(X509_get_version(cert), X509_VERSION_3);
	EXPECT_EQ(name_entry(X509_get_subject_name(cert), NID_commonName), "api2.cursor.sh");
	EXPECT_EQ(X509_NAME_cmp(X509_get_issuer_name(cert), X509_get_subject_name(ca_->certificate())), 0);
	int san_critical = -1;
	EXPECT_EQ(dns_names(cert, &san_critical), std::vector<std::string>{"api2.cursor.sh"});
	EXPECT_EQ(san_critical, 0);
	EXPECT_EQ(X509_check_ca(cert), 0);
	EXPECT_EQ(X509_get_key_usage(cert), static_cast<uint32_t>(KU_DIGITAL_SIGNATURE));
	EXPECT_EQ(X509_get_extended_key_usage(cert), static_cast<uint32_t>(XKU_SSL_SERVER));
	const ASN1_OCTET_STRING *akid = X509_get0_authority_key_id(cert);
	ASSERT_NE(akid, nullptr);
	EXPECT_EQ(ASN1_OCTET_STRING_cmp(akid, X509_get0_subject_key_id(ca_->certificate())), 0);
	EXPECT_EQ(X509_get_signature_nid(cert), NID_ecdsa_with_SHA256);
	EXPECT_TRUE(EVP_PKEY_is_a(leaf->key.get(), "EC"));
	EXPECT_EQ(X509_check_private_key(cert, leaf->key.get()), 1);
	BignumPtr serial(ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), nullptr));
	EXPECT_FALSE(BN_is_negative(serial.get()));

	// Each leaf: its own key and serial.
	auto second = ca_->issue_leaf("api2.cursor.sh", 24h);
	ASSERT_TRUE(second);
	EXPECT_NE(EVP_PKEY_eq(leaf->key.get(), second->key.get()), 1);
	EXPECT_NE(ASN1_INTEGER_cmp(X509_get0_serialNumber(cert), X509_get0_serialNumber(second->certificate.get())), 0);
}

TEST_F(Leaves, ValidFromAnHourAgoForTheirValidity)
{
	const auto now = std::chrono::system_clock::now();
	auto leaf = ca_->issue_leaf("api2.cursor.sh", 24h, now);
	ASSERT_TRUE(leaf) << leaf.error().message();
	X509 *cert = leaf->certificate.get();
	const auto not_before = asn1_time_to_time_point(X509_get0_notBefore(cert));
	const auto not_after = asn1_time_to_time_point(X509_get0_notAfter(cert));
	EXPECT_NEAR(seconds_between(not_before, now), 3600, 1);
	EXPECT_NEAR(seconds_between(now, not_after), 24 * 3600, 1);
	EXPECT_EQ(leaf->not_after, not_after);
	// A client whose clock is 30 minutes behind accepts it; one after not_after does not.
	EXPECT_EQ(verify(*ca_, cert, "api2.cursor.sh", now - 30min), X509_V_OK);
	EXPECT_EQ(verify(*ca_, cert, "api2.cursor.sh", now - 2h), X509_V_ERR_CERT_NOT_YET_VALID);
	EXPECT_EQ(verify(*ca_, cert, "api2.cursor.sh", now + 25h), X509_V_ERR_CERT_HAS_EXPIRED);
}

TEST_F(Leaves, NeverOutliveTheCa)
{
	const auto now = ca_->not_after() - 2h;
	auto leaf = ca_->issue_leaf("api2.cursor.sh", 24h, now);
	ASSERT_TRUE(leaf) << leaf.error().message();
	EXPECT_EQ(leaf->not_after, ca_->not_after());
	EXPECT_EQ(asn1_time_to_time_point(X509_get0_notAfter(leaf->certificate.get())), ca_->not_after());
}

TEST_F(Leaves, LongNamesGoWithoutCommonNameAndACriticalSan)
{
	const std::string host = std::string(63, 'a') + "." + std::string(20, 'b') + ".example";
	auto leaf = ca_->issue_leaf(host, 24h);
	ASSERT_TRUE(leaf) << leaf.error().message();
	EXPECT_EQ(X509_NAME_entry_count(X509_get_subject_name(leaf->certificate.get())), 0);
	int critical = -1;
	EXPECT_EQ(dns_names(leaf->certificate.get(), &critical), std::vector<std::string>{host});
	EXPECT_EQ(critical, 1);
	EXPECT_EQ(verify(*ca_, leaf->certificate.get(), host), X509_V_OK);
}

TEST_F(Leaves, OnlyForDnsNames)
{
	for (const char *bad : {"", ".", "a..b", "bad host", "*.cursor.sh", "api2.cursor.sh/x", "evil.com,DNS:x.com",
	                        "127.0.0.1", "10.1", "a\nb"}) {
		auto leaf = ca_->issue_leaf(bad, 24h);
		EXPECT_FALSE(leaf) << "'" << bad << "'";
	}
	auto long_label = ca_->issue_leaf(std::string(64, 'a') + ".com", 24h);
	EXPECT_FALSE(long_label);
}
