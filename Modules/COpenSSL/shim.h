#ifndef TERN_COPENSSL_SHIM_H
#define TERN_COPENSSL_SHIM_H
// OpenSSL 3 for Tern. Swift cannot call C function-like macros, so the few Tern needs are wrapped
// here as static inline functions with the tern_ prefix.
#include <openssl/ssl.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <openssl/crypto.h>

static inline long tern_SSL_CTX_set_min_proto_version(SSL_CTX *ctx, int version) {
    return SSL_CTX_set_min_proto_version(ctx, version);
}
static inline long tern_SSL_set_min_proto_version(SSL *ssl, int version) {
    return SSL_set_min_proto_version(ssl, version);
}
static inline long tern_SSL_set_max_proto_version(SSL *ssl, int version) {
    return SSL_set_max_proto_version(ssl, version);
}
static inline long tern_SSL_CTX_set_mode(SSL_CTX *ctx, long mode) {
    return SSL_CTX_set_mode(ctx, mode);
}
static inline long tern_SSL_CTX_set_options(SSL_CTX *ctx, long options) {
    return (long)SSL_CTX_set_options(ctx, (uint64_t)options);
}
static inline long tern_SSL_set_tlsext_host_name(SSL *ssl, const char *name) {
    return SSL_set_tlsext_host_name(ssl, name);
}
static inline size_t tern_BIO_pending(BIO *bio) {
    return BIO_ctrl_pending(bio);
}
static inline long tern_BIO_set_mem_eof_return(BIO *bio, int value) {
    return BIO_set_mem_eof_return(bio, value);
}
static inline int tern_X509_LOOKUP_load_file(X509_LOOKUP *lookup, const char *file) {
    return X509_LOOKUP_load_file(lookup, file, X509_FILETYPE_PEM);
}
static inline int tern_X509_LOOKUP_add_dir(X509_LOOKUP *lookup, const char *dir) {
    return X509_LOOKUP_add_dir(lookup, dir, X509_FILETYPE_PEM);
}
static inline int tern_TLS1_2_VERSION(void) { return TLS1_2_VERSION; }
static inline long tern_SSL_MODE_NO_AUTO_CHAIN(void) { return SSL_MODE_NO_AUTO_CHAIN; }
static inline long tern_SSL_MODE_ENABLE_PARTIAL_WRITE(void) { return SSL_MODE_ENABLE_PARTIAL_WRITE; }
static inline long tern_SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER(void) { return SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER; }
static inline long tern_SSL_MODE_RELEASE_BUFFERS(void) { return SSL_MODE_RELEASE_BUFFERS; }
static inline long tern_SSL_OP_NO_RENEGOTIATION(void) { return (long)SSL_OP_NO_RENEGOTIATION; }
static inline long tern_SSL_OP_NO_COMPRESSION(void) { return (long)SSL_OP_NO_COMPRESSION; }
static inline long tern_SSL_OP_CIPHER_SERVER_PREFERENCE(void) { return (long)SSL_OP_CIPHER_SERVER_PREFERENCE; }
// tern blast's client (see TLSContext.decodeECKeysWithBuiltInCode): OpenSSL 3.0 decodes the public key of
// every certificate it parses through its provider decoders, and setting those up (a search of every
// decoder and key manager, for each key) costs about 110 us per certificate, more than checking the
// server's signature. A pkey-method engine for EC makes d2i_X509 use the built-in EC key decoding
// instead (about 20 us): the same point checks, and the signature is checked by the same EC code.
// Process-wide and for every operation on EC keys, not only decoding: P-256/P-384 key exchange and
// ECDSA signatures go through the same built-in EC code too (X25519 is not an EC key here). Only
// `tern blast` calls it; never `tern serve`. Returns 0 where OpenSSL has no engines (nothing changes).
#if !defined(OPENSSL_NO_ENGINE) && !defined(OPENSSL_NO_DEPRECATED_3_0)
#include <openssl/engine.h>
static inline int tern_legacy_ec_pkey_meths(ENGINE *e, EVP_PKEY_METHOD **pmeth, const int **nids, int nid) {
    static const int ec[] = { EVP_PKEY_EC };
    (void)e;
    if (pmeth == NULL) { *nids = ec; return 1; }
    *pmeth = nid == EVP_PKEY_EC ? (EVP_PKEY_METHOD *)EVP_PKEY_meth_find(EVP_PKEY_EC) : NULL;
    return *pmeth != NULL;
}
static inline int tern_use_legacy_ec_key_decoding(void) {
    if (EVP_PKEY_meth_find(EVP_PKEY_EC) == NULL) return 0;
    ENGINE *e = ENGINE_new();
    if (e == NULL) return 0;
    if (!ENGINE_set_id(e, "tern-legacy-ec") || !ENGINE_set_name(e, "built-in EC keys (tern blast)")
        || !ENGINE_set_pkey_meths(e, tern_legacy_ec_pkey_meths) || !ENGINE_register_pkey_meths(e)) {
        ENGINE_free(e);
        ERR_clear_error();
        return 0;
    }
    return 1;  // registered for the life of the process
}
#else
static inline int tern_use_legacy_ec_key_decoding(void) { return 0; }
#endif
#endif
