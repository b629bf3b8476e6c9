/* sign-cost.c: the bare cost of one DKIM signature with OpenSSL 3, the floor that Tern's signing is
 * measured against (issue 17: "signing costs at most the signature's own CPU plus 10 %").
 *
 * Per signature, the same OpenSSL calls a signer needs at the least, and Tern makes: a new
 * EVP_MD_CTX, EVP_DigestSignInit, EVP_DigestSign twice (length, then signature), free.
 *   rsa-sha256:     RSA-2048 over the data to sign (SHA-256 inside EVP_DigestSign)
 *   ed25519-sha256: SHA-256 of the data, then pure Ed25519 over those 32 bytes (RFC 8463 §3)
 * The data is DATA_BYTES long, about a 4 KiB message's canonical signed header fields plus its
 * DKIM-Signature field with an empty b=. Prints CPU microseconds per signature (process CPU time,
 * CLOCK_PROCESS_CPUTIME_ID) for each of ROUNDS rounds of N signatures, and their median.
 *
 *   cc -O2 -o sign-cost sign-cost.c -lcrypto && ./sign-cost [N] [ROUNDS]
 */
#include <openssl/evp.h>
#include <openssl/err.h>
#include <openssl/rsa.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define DATA_BYTES 520

static double cpu_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void fail(const char *what) {
    fprintf(stderr, "sign-cost: %s failed\n", what);
    ERR_print_errors_fp(stderr);
    exit(1);
}

static EVP_PKEY *make_key(int rsa) {
    EVP_PKEY_CTX *k = EVP_PKEY_CTX_new_id(rsa ? EVP_PKEY_RSA : EVP_PKEY_ED25519, NULL);
    EVP_PKEY *pkey = NULL;
    if (!k || EVP_PKEY_keygen_init(k) != 1) fail("EVP_PKEY_keygen_init");
    if (rsa && EVP_PKEY_CTX_set_rsa_keygen_bits(k, 2048) != 1) fail("set_rsa_keygen_bits");
    if (EVP_PKEY_keygen(k, &pkey) != 1) fail("EVP_PKEY_keygen");
    EVP_PKEY_CTX_free(k);
    return pkey;
}

/* One signature, as a DKIM signer makes it; returns its length (used, so nothing is optimized away). */
static size_t sign_once(EVP_PKEY *pkey, int rsa, const unsigned char *data, size_t n, unsigned char *out) {
    unsigned char digest[32];
    const unsigned char *msg = data;
    size_t msg_len = n, len = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (!ctx) fail("EVP_MD_CTX_new");
    if (rsa) {
        if (EVP_DigestSignInit(ctx, NULL, EVP_sha256(), NULL, pkey) != 1) fail("EVP_DigestSignInit");
    } else {
        unsigned int dlen = 0;
        if (EVP_Digest(data, n, digest, &dlen, EVP_sha256(), NULL) != 1) fail("EVP_Digest");
        msg = digest;
        msg_len = dlen;
        if (EVP_DigestSignInit(ctx, NULL, NULL, NULL, pkey) != 1) fail("EVP_DigestSignInit");
    }
    if (EVP_DigestSign(ctx, NULL, &len, msg, msg_len) != 1) fail("EVP_DigestSign (length)");
    if (EVP_DigestSign(ctx, out, &len, msg, msg_len) != 1) fail("EVP_DigestSign");
    EVP_MD_CTX_free(ctx);
    return len;
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 2000;
    int rounds = argc > 2 ? atoi(argv[2]) : 5;
    if (n < 1 || n > 1000000 || rounds < 1 || rounds > 101) {
        fprintf(stderr, "usage: sign-cost [N 1..1000000] [ROUNDS 1..101]\n");
        return 2;
    }
    unsigned char data[DATA_BYTES], out[512];
    for (int i = 0; i < DATA_BYTES; i++) data[i] = (unsigned char)("from:<from@example.com>\r\n"[i % 26]);
    const char *names[2] = {"rsa-sha256 (RSA-2048)", "ed25519-sha256"};
    double *us = calloc((size_t)rounds, sizeof *us);
    for (int alg = 0; alg < 2; alg++) {
        int rsa = alg == 0;
        EVP_PKEY *pkey = make_key(rsa);
        size_t total = 0;
        for (int i = 0; i < n / 10 + 1; i++) total += sign_once(pkey, rsa, data, sizeof data, out); /* warm-up */
        printf("%s, %d signatures a round, CPU us per signature:", names[alg], n);
        for (int r = 0; r < rounds; r++) {
            double start = cpu_seconds();
            for (int i = 0; i < n; i++) total += sign_once(pkey, rsa, data, sizeof data, out);
            us[r] = (cpu_seconds() - start) / n * 1e6;
            printf(" %.1f", us[r]);
        }
        qsort(us, (size_t)rounds, sizeof *us, by_value);
        printf("  median %.1f  (%zu bytes signed)\n", us[rounds / 2], total);
        EVP_PKEY_free(pkey);
    }
    free(us);
    return 0;
}
