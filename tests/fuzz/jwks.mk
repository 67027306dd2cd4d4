# jwks.cc includes jwks_fetch.cc (its response reader and URL parser are file-local); the key set
# parser is jwt.cc's. OpenSSL builds the keys (and jwks_fetch.cc's TLS, linked but not run).
FUZZ_DEPS_jwks := userspace/identity/jwt.cc
FUZZ_LIBS_jwks := -lssl -lcrypto
# The included source is a dependency too.
$(BUILD)/fuzz/jwks: userspace/identity/jwks_fetch.cc
