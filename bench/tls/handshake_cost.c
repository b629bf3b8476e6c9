// What one TLS handshake costs OpenSSL itself, with no sockets: a client and a server SSL exchange
// records through memory BIOs in one thread, and the CPU time of each side's calls is added up
// (CLOCK_THREAD_CPUTIME_ID). The server is set up as Tern's TLSContext.server is; the client as
// tern blast's (no CA store) or as delivery's (a CA store). Used to tell OpenSSL's share of Tern's
// CPU per handshake from the kernel's and Tern's own (bench/tls/README.md).
//
//   cc -O2 -o /tmp/handshake_cost bench/tls/handshake_cost.c -lssl -lcrypto
//   /tmp/handshake_cost CERT KEY [N] [TICKETS] [STORE] [KEYS]
//
// TICKETS: TLS 1.3 session tickets per handshake (Tern sends 1; OpenSSL's default is 2).
// STORE, the client's CA store: none (tern blast), default (SSL_CTX_set_default_verify_paths), or
// bundle+dir (the default bundle read once and the hashed directory: what delivery uses).
// KEYS, how the client decodes the server certificate's EC key: provider (OpenSSL 3.0's decoders,
// the default) or builtin (the built-in EC code through a pkey-method engine, as tern blast does;
// see Modules/COpenSSL/shim.h); builtin also skips the chain check as tern blast's context does.

#include <openssl/engine.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509_vfy.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double cpu_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static void move_records(SSL *from, SSL *to) {
    char buf[65536];
    int n;
    while ((n = BIO_read(SSL_get_wbio(from), buf, sizeof buf)) > 0) BIO_write(SSL_get_rbio(to), buf, n);
}

static SSL *new_ssl(SSL_CTX *ctx, int server) {
    SSL *ssl = SSL_new(ctx);
    BIO *r = BIO_new(BIO_s_mem()), *w = BIO_new(BIO_s_mem());
    BIO_set_mem_eof_return(r, -1);
    BIO_set_mem_eof_return(w, -1);
    SSL_set_bio(ssl, r, w);
    if (server) SSL_set_accept_state(ssl); else SSL_set_connect_state(ssl);
    return ssl;
}

static int builtin_ec(ENGINE *e, EVP_PKEY_METHOD **pmeth, const int **nids, int nid) {
    static const int ec[] = { EVP_PKEY_EC };
    (void)e;
    if (pmeth == NULL) { *nids = ec; return 1; }
    *pmeth = nid == EVP_PKEY_EC ? (EVP_PKEY_METHOD *)EVP_PKEY_meth_find(EVP_PKEY_EC) : NULL;
    return *pmeth != NULL;
}

static int no_chain_check(X509_STORE_CTX *store, void *arg) {
    (void)arg;
    X509_STORE_CTX_set_error(store, X509_V_ERR_APPLICATION_VERIFICATION);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s CERT KEY [N] [TICKETS] [none|default|bundle+dir] [provider|builtin]\n", argv[0]);
        return 64;
    }
    int n = argc > 3 ? atoi(argv[3]) : 2000;
    int tickets = argc > 4 ? atoi(argv[4]) : 1;
    const char *store = argc > 5 ? argv[5] : "none";
    int builtin = argc > 6 && strcmp(argv[6], "builtin") == 0;
    if (builtin) {
        ENGINE *e = ENGINE_new();
        if (!e || !ENGINE_set_id(e, "builtin-ec") || !ENGINE_set_name(e, "builtin-ec")
            || !ENGINE_set_pkey_meths(e, builtin_ec) || !ENGINE_register_pkey_meths(e)) {
            fprintf(stderr, "cannot register the built-in EC engine\n");
            return 1;
        }
    }

    SSL_CTX *sctx = SSL_CTX_new(TLS_method());
    SSL_CTX_set_min_proto_version(sctx, TLS1_2_VERSION);
    SSL_CTX_set_options(sctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
    SSL_CTX_set_mode(sctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_NO_AUTO_CHAIN);
    if (SSL_CTX_use_certificate_chain_file(sctx, argv[1]) != 1
        || SSL_CTX_use_PrivateKey_file(sctx, argv[2], SSL_FILETYPE_PEM) != 1) {
        ERR_print_errors_fp(stderr);
        return 1;
    }
    SSL_CTX_set_num_tickets(sctx, (size_t)tickets);

    SSL_CTX *cctx = SSL_CTX_new(TLS_method());
    SSL_CTX_set_min_proto_version(cctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(cctx, SSL_VERIFY_NONE, NULL);
    if (builtin) SSL_CTX_set_cert_verify_callback(cctx, no_chain_check, NULL);
    if (strcmp(store, "default") == 0) {
        SSL_CTX_set_default_verify_paths(cctx);
    } else if (strcmp(store, "bundle+dir") == 0) {
        X509_STORE *st = SSL_CTX_get_cert_store(cctx);
        X509_LOOKUP_load_file(X509_STORE_add_lookup(st, X509_LOOKUP_file()), NULL, X509_FILETYPE_DEFAULT);
        X509_LOOKUP_add_dir(X509_STORE_add_lookup(st, X509_LOOKUP_hash_dir()), NULL, X509_FILETYPE_DEFAULT);
    }

    double server = 0, client = 0, t;
    char buf[4096];
    for (int i = 0; i < n; i++) {
        t = cpu_now(); SSL *c = new_ssl(cctx, 0); client += cpu_now() - t;
        t = cpu_now(); SSL *s = new_ssl(sctx, 1); server += cpu_now() - t;
        int cdone = 0, sdone = 0;
        for (int k = 0; k < 20 && !(cdone && sdone); k++) {
            t = cpu_now(); if (!cdone) cdone = SSL_do_handshake(c) == 1; client += cpu_now() - t;
            move_records(c, s);
            t = cpu_now(); if (!sdone) sdone = SSL_do_handshake(s) == 1; server += cpu_now() - t;
            move_records(s, c);
        }
        if (!cdone || !sdone) {
            fprintf(stderr, "handshake %d failed\n", i);
            ERR_print_errors_fp(stderr);
            return 1;
        }
        // EHLO and its reply (the client takes the ticket here), QUIT, 221 and close_notify.
        t = cpu_now(); SSL_write(c, "EHLO client.test\r\n", 18); client += cpu_now() - t;
        move_records(c, s);
        t = cpu_now(); SSL_read(s, buf, sizeof buf); SSL_write(s, "250 relay.test\r\n", 16); server += cpu_now() - t;
        move_records(s, c);
        t = cpu_now(); SSL_read(c, buf, sizeof buf); SSL_write(c, "QUIT\r\n", 6); client += cpu_now() - t;
        move_records(c, s);
        t = cpu_now(); SSL_read(s, buf, sizeof buf); SSL_write(s, "221 bye\r\n", 9); SSL_shutdown(s); server += cpu_now() - t;
        move_records(s, c);
        t = cpu_now(); SSL_read(c, buf, sizeof buf); SSL_free(c); client += cpu_now() - t;
        t = cpu_now(); SSL_free(s); server += cpu_now() - t;
    }
    printf("%s: %d handshakes, %d ticket(s), client store %s, %s EC keys: server %.1f us, client %.1f us of CPU per handshake\n",
           OpenSSL_version(OPENSSL_VERSION), n, tickets, store, builtin ? "builtin" : "provider",
           server / n * 1e6, client / n * 1e6);
    return 0;
}
