// RAII owners for OpenSSL objects, and OpenSSL's error queue as text for Error contexts.
#pragma once

#include <openssl/asn1.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <memory>
#include <string>
#include <utility>

#include "common/result.h"

namespace cordon::tls {

// Calls the matching *_free; a stateless deleter keeps each pointer the size of a raw pointer.
template <auto Free> struct OpensslDeleter {
	template <typename T> void operator()(T *p) const { Free(p); }
};

using X509Ptr = std::unique_ptr<X509, OpensslDeleter<X509_free>>;
using X509NamePtr = std::unique_ptr<X509_NAME, OpensslDeleter<X509_NAME_free>>;
using X509StorePtr = std::unique_ptr<X509_STORE, OpensslDeleter<X509_STORE_free>>;
using X509StoreCtxPtr = std::unique_ptr<X509_STORE_CTX, OpensslDeleter<X509_STORE_CTX_free>>;
using X509ExtensionPtr = std::unique_ptr<X509_EXTENSION, OpensslDeleter<X509_EXTENSION_free>>;
using X509VerifyParamPtr = std::unique_ptr<X509_VERIFY_PARAM, OpensslDeleter<X509_VERIFY_PARAM_free>>;
using EvpPkeyPtr = std::unique_ptr<EVP_PKEY, OpensslDeleter<EVP_PKEY_free>>;
using EvpPkeyCtxPtr = std::unique_ptr<EVP_PKEY_CTX, OpensslDeleter<EVP_PKEY_CTX_free>>;
using EvpMdCtxPtr = std::unique_ptr<EVP_MD_CTX, OpensslDeleter<EVP_MD_CTX_free>>;
using BioPtr = std::unique_ptr<BIO, OpensslDeleter<BIO_free_all>>;
using SslCtxPtr = std::unique_ptr<SSL_CTX, OpensslDeleter<SSL_CTX_free>>;
using SslPtr = std::unique_ptr<SSL, OpensslDeleter<SSL_free>>;
using BignumPtr = std::unique_ptr<BIGNUM, OpensslDeleter<BN_free>>;
using Asn1IntegerPtr = std::unique_ptr<ASN1_INTEGER, OpensslDeleter<ASN1_INTEGER_free>>;
using Asn1TimePtr = std::unique_ptr<ASN1_TIME, OpensslDeleter<ASN1_TIME_free>>;
using GeneralNamesPtr = std::unique_ptr<GENERAL_NAMES, OpensslDeleter<GENERAL_NAMES_free>>;

// STACK_OF(X509) owns its elements: sk_X509_pop_free is a macro, hence the hand-written deleter.
struct X509StackDeleter {
	void operator()(STACK_OF(X509) * s) const { sk_X509_pop_free(s, X509_free); }
};
using X509StackPtr = std::unique_ptr<STACK_OF(X509), X509StackDeleter>;

// A second owner of a reference-counted object (for handing one object to several owners).
inline X509Ptr x509_ref(X509 *x)
{
	if (x)
		X509_up_ref(x);
	return X509Ptr(x);
}

inline EvpPkeyPtr evp_pkey_ref(EVP_PKEY *k)
{
	if (k)
		EVP_PKEY_up_ref(k);
	return EvpPkeyPtr(k);
}

// Drains this thread's OpenSSL error queue, oldest first, into one line. Draining matters:
// a stale entry would otherwise be blamed on the next, unrelated failure.
inline std::string openssl_error_string()
{
	std::string out;
	const char *file = nullptr, *func = nullptr, *data = nullptr;
	int line = 0, flags = 0;
	while (unsigned long code = ERR_get_error_all(&file, &line, &func, &data, &flags)) {
		char buf[256];
		ERR_error_string_n(code, buf, sizeof(buf));
		if (!out.empty())
			out += "; ";
		out += buf;
		if (data && (flags & ERR_TXT_STRING) && *data)
			out += std::string(" (") + data + ")";
	}
	return out.empty() ? "no OpenSSL error reported" : out;
}

// An Error whose context ends with the OpenSSL error queue.
inline Error openssl_error(std::string context)
{
	return plain_error(std::move(context) + ": " + openssl_error_string());
}

} // namespace cordon::tls
