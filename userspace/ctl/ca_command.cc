#include "ctl/ca_command.h"

#include <openssl/pem.h>
#include <unistd.h>

#include <chrono>
#include <ctime>

#include "config/policy.h"
#include "tls/certificate_authority.h"
#include "tls/trust_store.h"

namespace cordon {

const char *const kCaUsage = R"(usage: cordonctl [--state-dir DIR] ca COMMAND

  ca init        create the host CA in DIR/ca if there is none; print where it is and its fingerprint
  ca show        the CA certificate: subject, validity, SHA-256 fingerprint, trust store state, PEM
  ca install     trust the CA host-wide: the OS store (update-ca-certificates) and NODE_EXTRA_CA_CERTS
                 for Node/Electron (/etc/environment, profile.d, systemd); creates the CA if needed
  ca uninstall   undo `ca install` (the CA itself stays in DIR/ca)
  ca issue HOST  print a leaf certificate and key for HOST, signed by the CA (to check what trusts it)
)";

namespace {

std::string utc(std::chrono::system_clock::time_point t)
{
	const time_t tt = std::chrono::system_clock::to_time_t(t);
	struct tm tm {};
	char buf[64];
	if (!::gmtime_r(&tt, &tm) || !std::strftime(buf, sizeof(buf), "%Y-%m-%d %H:%M:%S UTC", &tm))
		return "?";
	return buf;
}

int fail(std::ostream &err, const std::string &what)
{
	err << "cordonctl: " << what << "\n";
	return 1;
}

int usage(std::ostream &err, const std::string &what)
{
	err << "cordonctl: " << what << "\n" << kCaUsage;
	return 2;
}

int ca_init(const std::string &state_dir, std::ostream &out, std::ostream &err)
{
	auto ca = tls::CertificateAuthority::load_or_create(state_dir);
	if (!ca)
		return fail(err, ca.error().message());
	out << (ca->created() ? "created the cordon host CA in " : "the cordon host CA already exists in ") << state_dir
	    << "/ca\n"
	    << "certificate: " << ca->cert_path() << "\n"
	    << "subject:     " << ca->subject() << "\n"
	    << "SHA-256:     " << ca->fingerprint_sha256() << "\n";
	if (!tls::ca_installed(*ca))
		out << "the host does not trust it yet: `cordonctl ca install`\n";
	return 0;
}

int ca_show(const std::string &state_dir, std::ostream &out, std::ostream &err)
{
	auto ca = tls::CertificateAuthority::load(state_dir);
	if (!ca)
		return fail(err, ca.error().message());
	const bool expired = std::chrono::system_clock::now() >= ca->not_after();
	out << "subject:     " << ca->subject() << "\n"
	    << "serial:      " << ca->serial_hex() << "\n"
	    << "not before:  " << utc(ca->not_before()) << "\n"
	    << "not after:   " << utc(ca->not_after()) << (expired ? " (EXPIRED)" : "") << "\n"
	    << "SHA-256:     " << ca->fingerprint_sha256() << "\n"
	    << "certificate: " << ca->cert_path() << "\n"
	    << "key:         " << ca->key_path() << "\n"
	    << "trusted:     "
	    << (tls::ca_installed(*ca) ? std::string("yes (") + tls::kTrustStoreCertPath + ")"
	                               : std::string("no (`cordonctl ca install`)"))
	    << "\n"
	    << ca->certificate_pem();
	return 0;
}

int ca_install(const std::string &state_dir, std::ostream &out, std::ostream &err)
{
	auto ca = tls::CertificateAuthority::load_or_create(state_dir);
	if (!ca)
		return fail(err, ca.error().message());
	if (ca->created())
		out << "created the cordon host CA in " << state_dir << "/ca\n";
	if (Status st = tls::install_ca(*ca); !st)
		return fail(err, "ca install: " + st.error().message());
	out << "the host now trusts the cordon host CA (SHA-256 " << ca->fingerprint_sha256() << "):\n"
	    << "  " << tls::kTrustStoreCertPath << " (OS trust store, via update-ca-certificates)\n"
	    << "  NODE_EXTRA_CA_CERTS for Node/Electron: " << tls::kEnvironmentFile << ", " << tls::kProfileScript
	    << ", " << tls::kSystemdManagerDropIn << ", " << tls::kEnvironmentDDropIn << "\n"
	    << "new login sessions see it now; systemd services after `systemctl daemon-reexec` (or a reboot); "
	       "running processes keep the environment they started with\n";
	return 0;
}

int ca_uninstall(std::ostream &out, std::ostream &err)
{
	if (Status st = tls::uninstall_ca(); !st)
		return fail(err, "ca uninstall: " + st.error().message());
	out << "the host no longer trusts the cordon host CA (the CA itself is kept)\n";
	return 0;
}

int ca_issue(const std::string &state_dir, const std::string &host, std::ostream &out, std::ostream &err)
{
	auto ca = tls::CertificateAuthority::load(state_dir);
	if (!ca)
		return fail(err, ca.error().message());
	auto leaf = ca->issue_leaf(host, std::chrono::hours(default_policy().tls().leaf_validity_hours()));
	if (!leaf)
		return fail(err, leaf.error().message());
	tls::BioPtr bio(BIO_new(BIO_s_mem()));
	if (!bio || !PEM_write_bio_X509(bio.get(), leaf->certificate.get()) ||
	    !PEM_write_bio_PrivateKey(bio.get(), leaf->key.get(), nullptr, nullptr, 0, nullptr, nullptr))
		return fail(err, tls::openssl_error("encode the leaf").message());
	char *data = nullptr;
	long len = BIO_get_mem_data(bio.get(), &data);
	out.write(data, len);
	return 0;
}

} // namespace

int run_ca_command(const std::vector<std::string> &args, const std::string &state_dir, std::ostream &out,
                   std::ostream &err)
{
	if (args.empty())
		return usage(err, "ca needs a command");
	const std::string &command = args[0];
	const size_t want = command == "issue" ? 2 : 1;
	if (command != "init" && command != "show" && command != "install" && command != "uninstall" &&
	    command != "issue")
		return usage(err, "unknown ca command '" + command + "'");
	if (args.size() != want)
		return usage(err, "ca " + command + (want == 2 ? " takes one host name" : " takes no arguments"));
	if (::geteuid() != 0)
		return fail(err, "ca " + command + " is for root (the CA key lives in " + state_dir +
		                     ", and the trust stores are host-wide)");
	if (command == "init")
		return ca_init(state_dir, out, err);
	if (command == "show")
		return ca_show(state_dir, out, err);
	if (command == "install")
		return ca_install(state_dir, out, err);
	if (command == "uninstall")
		return ca_uninstall(out, err);
	return ca_issue(state_dir, args[1], out, err);
}

} // namespace cordon
