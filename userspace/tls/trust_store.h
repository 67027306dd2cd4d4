// Making the host trust its cordon CA, and forgetting it again.
//
// Two audiences: the OS store (curl, OpenSSL, most tools), fed through update-ca-certificates;
// and Node/Electron (Cursor), which ignore it and read only NODE_EXTRA_CA_CERTS, set here for
// login sessions, shells, systemd services and systemd user managers. Only cordon's own files
// and its own /etc/environment line are ever written or removed; every write is atomic.
#pragma once

#include <string>

#include "common/result.h"
#include "tls/certificate_authority.h"

namespace cordon::tls {

inline constexpr const char *kTrustStoreCertPath = "/usr/local/share/ca-certificates/cordon-ca.crt";
inline constexpr const char *kEnvironmentFile = "/etc/environment";
inline constexpr const char *kProfileScript = "/etc/profile.d/cordon-ca.sh";
inline constexpr const char *kSystemdManagerDropIn = "/etc/systemd/system.conf.d/cordon-ca.conf";
inline constexpr const char *kEnvironmentDDropIn = "/etc/environment.d/90-cordon-ca.conf";
// Our line in /etc/environment, exactly; uninstall removes this line and no other.
inline constexpr const char *kEnvironmentLine = "NODE_EXTRA_CA_CERTS=/usr/local/share/ca-certificates/cordon-ca.crt";

// Idempotent. Fails before changing anything if /etc/environment already sets
// NODE_EXTRA_CA_CERTS to another file (Node takes one file only: replacing it would silently
// untrust someone else's CA). Fails if update-ca-certificates does.
Status install_ca(const CertificateAuthority &ca);
// Idempotent: removes the files above and our /etc/environment line, then refreshes the OS store.
Status uninstall_ca();
// Whether the OS store's copy is this CA's certificate (for `cordonctl ca show`).
bool ca_installed(const CertificateAuthority &ca);

// /etc/environment editing, exposed for tests. Each returns the new content, or an error when
// another value is already set (install).
Result<std::string> environment_with_line(const std::string &content);
std::string environment_without_line(const std::string &content);

} // namespace cordon::tls
