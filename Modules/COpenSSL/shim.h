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
#endif
