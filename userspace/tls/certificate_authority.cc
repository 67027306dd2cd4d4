#include "tls/certificate_authority.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/pem.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <vector>

#include "common/host_pattern.h"
#include "common/unique_fd.h"

namespace cordon::tls {
namespace {

constexpr const char *kCaDirName = "ca";
constexpr const char *kKeyName = "ca.key";
constexpr const char *kCertName = "ca.crt";
// A CA being created lives here until it is renamed to ca/ in one step.
constexpr const char *kNewCaPrefix = ".ca-new-";
constexpr off_t kMaxPemSize = 64 * 1024;
constexpr long kCaValidityDays = 3653; // ten years, leap days included
// X.520 upper bound for commonName; OpenSSL refuses longer values.
constexpr size_t kMaxCommonName = 64;

std::string mode_string(mode_t mode)
{
	char buf[8];
	std::snprintf(buf, sizeof(buf), "%04o", static_cast<unsigned>(mode & 07777));
	return buf;
}

// PEM_read_* would otherwise prompt on the terminal for an encrypted key; cordon's never are.
int no_passphrase(char *, int, int, void *)
{
	return 0;
}

Status write_all(int fd, const char *data, size_t size, const std::string &path)
{
	while (size > 0) {
		ssize_t n = ::write(fd, data, size);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return system_error("write " + path);
		}
		data += n;
		size -= static_cast<size_t>(n);
	}
	return {};
}

Status fsync_path(const std::string &path)
{
	UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_DIRECTORY));
	if (!fd)
		return system_error("open " + path);
	if (::fsync(fd.get()) != 0)
		return system_error("fsync " + path);
	return {};
}

// O_EXCL with the final mode from the first instant: the key is never readable by anyone else,
// not even between create and chmod. fchmod only undoes the umask.
Status write_new_file(const std::string &path, const char *data, size_t size, mode_t mode)
{
	UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode));
	if (!fd)
		return system_error("create " + path);
	if (::fchmod(fd.get(), mode) != 0)
		return system_error("chmod " + path);
	if (Status st = write_all(fd.get(), data, size, path); !st)
		return st;
	if (::fsync(fd.get()) != 0)
		return system_error("fsync " + path);
	return {};
}

// A file of ours: a regular file (not a symlink someone planted), owned by this user, with none of
// the `forbidden` permission bits.
Result<std::string> read_own_file(const std::string &path, mode_t forbidden, const std::string &why_forbidden)
{
	UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY));
	if (!fd) {
		if (errno == ELOOP)
			return plain_error(path + " is a symbolic link: refusing to follow it");
		return system_error("open " + path);
	}
	struct stat st {};
	if (::fstat(fd.get(), &st) != 0)
		return system_error("stat " + path);
	if (!S_ISREG(st.st_mode))
		return plain_error(path + " is not a regular file");
	if (st.st_uid != ::geteuid())
		return plain_error(path + " is owned by uid " + std::to_string(st.st_uid) + ", not by uid " +
		                   std::to_string(::geteuid()) + ": refusing to use it");
	if (st.st_mode & forbidden)
		return plain_error(path + " has mode " + mode_string(st.st_mode) + ": " + why_forbidden);
	if (st.st_size > kMaxPemSize)
		return plain_error(path + " is too large to be a PEM file (" + std::to_string(st.st_size) + " bytes)");
	std::string out(static_cast<size_t>(st.st_size), '\0');
	size_t got = 0;
	while (got < out.size()) {
		ssize_t n = ::read(fd.get(), out.data() + got, out.size() - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return system_error("read " + path);
		if (n == 0)
			break;
		got += static_cast<size_t>(n);
	}
	out.resize(got);
	return out;
}

// The directory must be ours and not writable by others, or they could swap the files in it.
Status check_own_dir(const std::string &path, bool tighten)
{
	struct stat st {};
	if (::stat(path.c_str(), &st) != 0)
		return system_error("stat " + path);
	if (!S_ISDIR(st.st_mode))
		return plain_error(path + " is not a directory");
	if (st.st_uid != ::geteuid())
		return plain_error(path + " is owned by uid " + std::to_string(st.st_uid) + ", not by uid " +
		                   std::to_string(::geteuid()) + ": refusing to keep a CA key there");
	if ((st.st_mode & 077) == 0)
		return {};
	if (tighten) {
		// Ours, so narrowing it to 0700 takes nothing from anyone who should have it.
		if (::chmod(path.c_str(), 0700) != 0)
			return system_error("chmod 0700 " + path);
		return {};
	}
	if (st.st_mode & 022)
		return plain_error(path + " has mode " + mode_string(st.st_mode) +
		                   ": others could replace the CA in it (it must be 0700)");
	return {};
}

Status ensure_state_dir(const std::string &path)
{
	if (::mkdir(path.c_str(), 0700) == 0) {
		if (::chmod(path.c_str(), 0700) != 0) // the umask may have narrowed it; make it exact
			return system_error("chmod 0700 " + path);
		return {};
	}
	if (errno != EEXIST)
		return system_error("create state directory " + path);
	return check_own_dir(path, true);
}

enum class CaDirState { missing, empty, has_ca, foreign };

Result<CaDirState> inspect_ca_dir(const std::string &ca_dir)
{
	std::unique_ptr<DIR, int (*)(DIR *)> dir(::opendir(ca_dir.c_str()), ::closedir);
	if (!dir) {
		if (errno == ENOENT)
			return CaDirState::missing;
		return system_error("open " + ca_dir);
	}
	bool other = false;
	while (dirent *e = ::readdir(dir.get())) {
		std::string name = e->d_name;
		if (name == "." || name == "..")
			continue;
		if (name == kKeyName || name == kCertName)
			return CaDirState::has_ca;
		other = true;
	}
	return other ? CaDirState::foreign : CaDirState::empty;
}

// Leftovers of a creation that crashed: a key nobody will use should not linger on disk.
void remove_stale_new_dirs(const std::string &state_dir)
{
	std::error_code ec;
	for (const auto &entry : std::filesystem::directory_iterator(state_dir, ec)) {
		if (entry.path().filename().string().rfind(kNewCaPrefix, 0) == 0)
			std::filesystem::remove_all(entry.path(), ec);
	}
}

Status set_random_serial(X509 *x)
{
	BignumPtr bn(BN_new());
	// 128 random bits as an unsigned value: always positive, at most 17 octets in DER.
	if (!bn || !BN_rand(bn.get(), 128, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY))
		return openssl_error("generate a serial number");
	if (BN_is_zero(bn.get()) && !BN_one(bn.get()))
		return openssl_error("generate a serial number");
	if (!BN_to_ASN1_INTEGER(bn.get(), X509_get_serialNumber(x)))
		return openssl_error("set the serial number");
	return {};
}

Status add_extension(X509 *x, X509V3_CTX *ctx, int nid, const std::string &value)
{
	X509ExtensionPtr ext(X509V3_EXT_nconf_nid(nullptr, ctx, nid, value.c_str()));
	if (!ext)
		return openssl_error(std::string("build extension ") + OBJ_nid2sn(nid) + " = " + value);
	if (!X509_add_ext(x, ext.get(), -1))
		return openssl_error(std::string("add extension ") + OBJ_nid2sn(nid));
	return {};
}

Status add_name_entry(X509_NAME *name, const char *field, const std::string &value)
{
	if (!X509_NAME_add_entry_by_txt(name, field, MBSTRING_UTF8,
	                                reinterpret_cast<const unsigned char *>(value.c_str()),
	                                static_cast<int>(value.size()), -1, 0))
		return openssl_error(std::string("set ") + field + " = " + value);
	return {};
}

Status set_validity(X509 *x, time_t not_before, time_t not_after)
{
	if (!ASN1_TIME_set(X509_getm_notBefore(x), not_before) || !ASN1_TIME_set(X509_getm_notAfter(x), not_after))
		return openssl_error("set the validity period");
	return {};
}

Result<EvpPkeyPtr> generate_p256_key()
{
	EvpPkeyPtr key(EVP_EC_gen("P-256"));
	if (!key)
		return openssl_error("generate an EC P-256 key");
	return key;
}

std::string ca_common_name()
{
	char host[256] = {};
	if (::gethostname(host, sizeof(host) - 1) != 0 || host[0] == '\0')
		std::snprintf(host, sizeof(host), "unknown host");
	const std::string prefix = "cordon host CA (";
	std::string name = host;
	for (char &c : name) // a name field must be valid UTF-8; host names are ASCII anyway
		if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) > 0x7e)
			c = '?';
	const size_t room = kMaxCommonName - prefix.size() - 1;
	if (name.size() > room)
		name.resize(room);
	return prefix + name + ")";
}

Result<std::pair<X509Ptr, EvpPkeyPtr>> make_ca()
{
	auto key = generate_p256_key();
	if (!key)
		return key.error();
	X509Ptr cert(X509_new());
	if (!cert)
		return openssl_error("X509_new");
	X509 *x = cert.get();
	if (!X509_set_version(x, X509_VERSION_3))
		return openssl_error("set the certificate version");
	if (Status st = set_random_serial(x); !st)
		return st.error();
	time_t start =
	    std::chrono::system_clock::to_time_t(std::chrono::system_clock::now() - CertificateAuthority::kBackdate);
	if (!ASN1_TIME_set(X509_getm_notBefore(x), start) ||
	    !X509_time_adj_ex(X509_getm_notAfter(x), kCaValidityDays, 0, &start))
		return openssl_error("set the validity period");
	X509_NAME *name = X509_get_subject_name(x);
	if (Status st = add_name_entry(name, "O", "cordon"); !st)
		return st.error();
	if (Status st = add_name_entry(name, "CN", ca_common_name()); !st)
		return st.error();
	if (!X509_set_issuer_name(x, name))
		return openssl_error("set the issuer name");
	if (!X509_set_pubkey(x, key->get()))
		return openssl_error("set the public key");
	X509V3_CTX ctx{};
	X509V3_set_ctx_nodb(&ctx);
	X509V3_set_ctx(&ctx, x, x, nullptr, nullptr, 0);
	// pathlen:0: the CA signs leaves only, never another CA.
	for (auto [nid, value] : {std::pair{NID_basic_constraints, "critical,CA:TRUE,pathlen:0"},
	                          std::pair{NID_key_usage, "critical,keyCertSign,cRLSign"},
	                          std::pair{NID_subject_key_identifier, "hash"}}) {
		if (Status st = add_extension(x, &ctx, nid, value); !st)
			return st.error();
	}
	if (X509_sign(x, key->get(), EVP_sha256()) <= 0)
		return openssl_error("sign the CA certificate");
	return std::pair{std::move(cert), std::move(*key)};
}

// Removes a half-built CA directory unless the creation went through.
class NewCaDir {
public:
	explicit NewCaDir(std::string path) : path_(std::move(path)) {}
	NewCaDir(const NewCaDir &) = delete;
	NewCaDir &operator=(const NewCaDir &) = delete;
	~NewCaDir()
	{
		if (!path_.empty()) {
			std::error_code ec;
			std::filesystem::remove_all(path_, ec);
		}
	}
	const std::string &path() const { return path_; }
	void commit() { path_.clear(); }

private:
	std::string path_;
};

Status create_ca(const std::string &state_dir, const std::string &ca_dir)
{
	auto made = make_ca();
	if (!made)
		return made.error();
	std::string tmpl = state_dir + "/" + kNewCaPrefix + "XXXXXX";
	if (!::mkdtemp(tmpl.data())) // mode 0700
		return system_error("create a directory in " + state_dir);
	NewCaDir dir(tmpl);

	BioPtr key_bio(BIO_new(BIO_s_secmem()));
	if (!key_bio ||
	    !PEM_write_bio_PrivateKey(key_bio.get(), made->second.get(), nullptr, nullptr, 0, nullptr, nullptr))
		return openssl_error("encode the CA key");
	char *key_data = nullptr;
	long key_len = BIO_get_mem_data(key_bio.get(), &key_data);
	Status wrote = write_new_file(dir.path() + "/" + kKeyName, key_data, static_cast<size_t>(key_len), 0600);
	OPENSSL_cleanse(key_data, static_cast<size_t>(key_len));
	if (!wrote)
		return wrote;
	const std::string cert_pem = certificate_to_pem(made->first.get());
	if (cert_pem.empty())
		return openssl_error("encode the CA certificate");
	if (Status st = write_new_file(dir.path() + "/" + kCertName, cert_pem.data(), cert_pem.size(), 0644); !st)
		return st;
	if (Status st = fsync_path(dir.path()); !st)
		return st;
	// The CA appears whole or not at all. rename() also replaces an empty ca/ (made by a package).
	if (::rename(dir.path().c_str(), ca_dir.c_str()) != 0)
		return system_error("rename " + dir.path() + " to " + ca_dir);
	dir.commit();
	return fsync_path(state_dir);
}

std::string bio_to_string(BIO *bio)
{
	char *data = nullptr;
	long len = BIO_get_mem_data(bio, &data);
	return len > 0 ? std::string(data, static_cast<size_t>(len)) : std::string();
}

} // namespace

std::string certificate_to_pem(X509 *cert)
{
	BioPtr bio(BIO_new(BIO_s_mem()));
	if (!bio || !PEM_write_bio_X509(bio.get(), cert))
		return {};
	return bio_to_string(bio.get());
}

std::string sha256_fingerprint(X509 *cert)
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int len = 0;
	if (!X509_digest(cert, EVP_sha256(), md, &len))
		return {};
	static const char hex[] = "0123456789ABCDEF";
	std::string out;
	for (unsigned int i = 0; i < len; i++) {
		if (i)
			out += ':';
		out += hex[md[i] >> 4];
		out += hex[md[i] & 0xf];
	}
	return out;
}

std::chrono::system_clock::time_point asn1_time_to_time_point(const ASN1_TIME *t)
{
	struct tm tm {};
	if (!t || !ASN1_TIME_to_tm(t, &tm))
		return {};
	return std::chrono::system_clock::from_time_t(::timegm(&tm));
}

Result<std::string> leaf_host_name(std::string_view host)
{
	auto name = normalize_host_name(host);
	if (!name)
		return name.error();
	in_addr addr{};
	// inet_aton also takes "10.1" and "0x7f.1": every form a resolver would treat as an address.
	if (::inet_aton(name->c_str(), &addr))
		return plain_error("'" + std::string(host) + "' is an IP address, not a host name");
	return name;
}

Result<CertificateAuthority> CertificateAuthority::load(const std::string &state_dir)
{
	const std::string ca_dir = state_dir + "/" + kCaDirName;
	struct stat st {};
	if (::stat(ca_dir.c_str(), &st) != 0) {
		if (errno == ENOENT)
			return plain_error("no CA in " + state_dir + " (" + ca_dir +
			                   " does not exist): create it with `cordonctl ca init`");
		return system_error("stat " + ca_dir);
	}
	if (Status ok = check_own_dir(ca_dir, false); !ok)
		return ok.error();

	CertificateAuthority ca;
	ca.key_path_ = ca_dir + "/" + kKeyName;
	ca.cert_path_ = ca_dir + "/" + kCertName;

	auto key_pem =
	    read_own_file(ca.key_path_, 077,
	                  "a CA private key must be readable by its owner only (chmod 600 " + ca.key_path_ +
	                      "; if anyone else could have read it, remove " + ca_dir + " and create a new CA)");
	if (!key_pem)
		return key_pem.error();
	{
		BioPtr bio(BIO_new_mem_buf(key_pem->data(), static_cast<int>(key_pem->size())));
		if (bio)
			ca.key_.reset(PEM_read_bio_PrivateKey(bio.get(), nullptr, no_passphrase, nullptr));
		OPENSSL_cleanse(key_pem->data(), key_pem->size());
		if (!ca.key_)
			return openssl_error("read the CA key " + ca.key_path_);
	}
	auto cert_pem = read_own_file(ca.cert_path_, 022, "others could replace the CA certificate");
	if (!cert_pem)
		return cert_pem.error();
	BioPtr bio(BIO_new_mem_buf(cert_pem->data(), static_cast<int>(cert_pem->size())));
	if (bio)
		ca.cert_.reset(PEM_read_bio_X509(bio.get(), nullptr, no_passphrase, nullptr));
	if (!ca.cert_)
		return openssl_error("read the CA certificate " + ca.cert_path_);

	if (X509_check_private_key(ca.cert_.get(), ca.key_.get()) != 1)
		return openssl_error(ca.key_path_ + " is not the key of " + ca.cert_path_ +
		                     " (tampered with or mixed up)");
	// A self-signature that does not verify means the certificate was altered after signing.
	if (X509_verify(ca.cert_.get(), ca.key_.get()) != 1)
		return openssl_error(ca.cert_path_ + " does not carry a valid self-signature (tampered with?)");
	if (X509_check_ca(ca.cert_.get()) < 1)
		return plain_error(ca.cert_path_ + " is not a CA certificate (no basicConstraints CA:TRUE)");
	ca.not_after_ = asn1_time_to_time_point(X509_get0_notAfter(ca.cert_.get()));
	ERR_clear_error();
	return ca;
}

Result<CertificateAuthority> CertificateAuthority::load_or_create(const std::string &state_dir)
{
	if (Status st = ensure_state_dir(state_dir); !st)
		return st.error();
	UniqueFd dir(::open(state_dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
	if (!dir)
		return system_error("open " + state_dir);
	// cordond starting while an admin runs `cordonctl ca init`: one creates, the other loads.
	// The lock goes with the descriptor.
	while (::flock(dir.get(), LOCK_EX) != 0) {
		if (errno != EINTR)
			return system_error("lock " + state_dir);
	}
	const std::string ca_dir = state_dir + "/" + kCaDirName;
	auto state = inspect_ca_dir(ca_dir);
	if (!state)
		return state.error();
	if (*state == CaDirState::has_ca)
		return load(state_dir);
	if (*state == CaDirState::foreign)
		return plain_error(ca_dir + " holds files but no " + kKeyName + " or " + kCertName +
		                   ": move them away to create a new CA");
	remove_stale_new_dirs(state_dir);
	if (Status st = create_ca(state_dir, ca_dir); !st)
		return st.error();
	auto ca = load(state_dir);
	if (ca)
		ca->created_ = true;
	return ca;
}

std::string CertificateAuthority::certificate_pem() const
{
	return certificate_to_pem(cert_.get());
}

std::string CertificateAuthority::fingerprint_sha256() const
{
	return sha256_fingerprint(cert_.get());
}

std::string CertificateAuthority::subject() const
{
	BioPtr bio(BIO_new(BIO_s_mem()));
	if (!bio || X509_NAME_print_ex(bio.get(), X509_get_subject_name(cert_.get()), 0,
	                               XN_FLAG_ONELINE & ~ASN1_STRFLGS_ESC_MSB) < 0)
		return {};
	return bio_to_string(bio.get());
}

std::string CertificateAuthority::serial_hex() const
{
	BignumPtr bn(ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert_.get()), nullptr));
	if (!bn)
		return {};
	char *hex = BN_bn2hex(bn.get());
	std::string out = hex ? hex : "";
	OPENSSL_free(hex);
	return out;
}

std::chrono::system_clock::time_point CertificateAuthority::not_before() const
{
	return asn1_time_to_time_point(X509_get0_notBefore(cert_.get()));
}

Result<Leaf> CertificateAuthority::issue_leaf(std::string_view host, std::chrono::seconds validity,
                                              std::chrono::system_clock::time_point now) const
{
	auto name = leaf_host_name(host);
	if (!name)
		return plain_error("mint a leaf certificate: " + name.error().message());
	auto key = generate_p256_key();
	if (!key)
		return key.error();
	X509Ptr cert(X509_new());
	if (!cert)
		return openssl_error("X509_new");
	X509 *x = cert.get();
	if (!X509_set_version(x, X509_VERSION_3))
		return openssl_error("set the certificate version");
	if (Status st = set_random_serial(x); !st)
		return st.error();
	// A leaf outliving its CA would fail verification anyway; say so in the certificate.
	// Whole seconds, so Leaf::not_after is exactly what the certificate says.
	const auto not_after = std::chrono::system_clock::from_time_t(
	    std::chrono::system_clock::to_time_t(std::min(now + validity, not_after_)));
	if (Status st = set_validity(x, std::chrono::system_clock::to_time_t(now - kBackdate),
	                             std::chrono::system_clock::to_time_t(not_after));
	    !st)
		return st.error();
	// CN is legacy (clients check the SAN) and capped at 64 characters; longer names go without.
	const bool with_cn = name->size() <= kMaxCommonName;
	if (with_cn) {
		if (Status st = add_name_entry(X509_get_subject_name(x), "CN", *name); !st)
			return st.error();
	}
	if (!X509_set_issuer_name(x, X509_get_subject_name(cert_.get())))
		return openssl_error("set the issuer name");
	if (!X509_set_pubkey(x, key->get()))
		return openssl_error("set the public key");
	X509V3_CTX ctx{};
	X509V3_set_ctx_nodb(&ctx);
	X509V3_set_ctx(&ctx, cert_.get(), x, nullptr, nullptr, 0);
	// RFC 5280: with an empty subject the SAN must be critical.
	const std::string san = std::string(with_cn ? "" : "critical,") + "DNS:" + *name;
	for (auto [nid, value] : {std::pair<int, std::string>{NID_basic_constraints, "critical,CA:FALSE"},
	                          std::pair<int, std::string>{NID_key_usage, "critical,digitalSignature"},
	                          std::pair<int, std::string>{NID_ext_key_usage, "serverAuth"},
	                          std::pair<int, std::string>{NID_authority_key_identifier, "keyid,issuer"},
	                          std::pair<int, std::string>{NID_subject_alt_name, san}}) {
		if (Status st = add_extension(x, &ctx, nid, value); !st)
			return st.error();
	}
	if (X509_sign(x, key_.get(), EVP_sha256()) <= 0)
		return openssl_error("sign the leaf certificate for " + *name);
	return Leaf{std::move(cert), std::move(*key), not_after};
}

} // namespace cordon::tls
