FUZZ_DEPS_jwt := userspace/identity/jwt.cc
# Signatures and JWK keys are OpenSSL's (libcrypto only: no TLS here).
FUZZ_LIBS_jwt := -lcrypto
