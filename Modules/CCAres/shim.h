#ifndef TERN_CCARES_SHIM_H
#define TERN_CCARES_SHIM_H
/*
 * The c-ares calls that Tern's Resolver (Sources/UVRuntime/Resolver.swift) makes, kept in one place.
 *
 * Written against c-ares 1.18 (Debian 12). Later releases deprecate the ares_parse_*_reply family,
 * turn the ARES_* status macros into an ares_status_t enum and change some argument types; each of
 * those touches only this file. Every function here has the prefix tern_ares_.
 */
#include <ares.h>
#include <arpa/nameser.h>
#include <string.h>
#include <sys/time.h>

#if defined(__clang__)
#pragma clang diagnostic push
#pragma clang diagnostic ignored "-Wdeprecated-declarations"
#endif

/* Status codes as plain ints, whatever type the installed c-ares gives them. */
static const int TERN_ARES_SUCCESS = ARES_SUCCESS;
static const int TERN_ARES_ENODATA = ARES_ENODATA;
static const int TERN_ARES_EFORMERR = ARES_EFORMERR;
static const int TERN_ARES_ESERVFAIL = ARES_ESERVFAIL;
static const int TERN_ARES_ENOTFOUND = ARES_ENOTFOUND;
static const int TERN_ARES_ENOTIMP = ARES_ENOTIMP;
static const int TERN_ARES_EREFUSED = ARES_EREFUSED;
static const int TERN_ARES_EBADNAME = ARES_EBADNAME;
static const int TERN_ARES_EBADRESP = ARES_EBADRESP;
static const int TERN_ARES_ECONNREFUSED = ARES_ECONNREFUSED;
static const int TERN_ARES_ETIMEOUT = ARES_ETIMEOUT;
static const int TERN_ARES_ENOMEM = ARES_ENOMEM;
static const int TERN_ARES_EDESTRUCTION = ARES_EDESTRUCTION;
static const int TERN_ARES_ECANCELLED = ARES_ECANCELLED;

/* RR types and class used by the resolver (RFC 1035 3.2.2, RFC 3596). */
static const int TERN_DNS_CLASS_IN = 1;
static const int TERN_DNS_TYPE_A = 1;
static const int TERN_DNS_TYPE_CNAME = 5;
static const int TERN_DNS_TYPE_PTR = 12;
static const int TERN_DNS_TYPE_MX = 15;
static const int TERN_DNS_TYPE_TXT = 16;
static const int TERN_DNS_TYPE_AAAA = 28;

static const int TERN_ARES_SOCKET_BAD = ARES_SOCKET_BAD;

static inline int tern_ares_library_init(void) {
    return ares_library_init(ARES_LIB_INIT_ALL);
}

/* A channel whose sockets are reported through sock_state_cb (the caller polls them) and whose
 * per-try timeout is timeout_ms (c-ares doubles it on each further round over the servers).
 *
 * ARES_FLAG_NOCHECKRESP: without it c-ares 1.18 drops a SERVFAIL or REFUSED answer, tries the next
 * server, and at the end reports ARES_ECONNREFUSED, so neither rcode could ever be told apart from
 * an unreachable server. With it ares_query reports ARES_ESERVFAIL / ARES_EREFUSED; the price is no
 * failover to the next server on those two rcodes (timeouts and unreachable servers still fail over). */
static inline int tern_ares_init(ares_channel *channel, int timeout_ms, int tries,
                                 ares_sock_state_cb sock_state_cb, void *sock_state_data) {
    struct ares_options options;
    memset(&options, 0, sizeof options);
    options.flags = ARES_FLAG_NOCHECKRESP;
    options.timeout = timeout_ms;
    options.tries = tries;
    options.sock_state_cb = sock_state_cb;
    options.sock_state_cb_data = sock_state_data;
    return ares_init_options(channel, &options,
                             ARES_OPT_FLAGS | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES |
                                 ARES_OPT_SOCK_STATE_CB);
}

/* "ip:port,[ip6]:port,..." */
static inline int tern_ares_set_servers(ares_channel channel, const char *csv) {
    return ares_set_servers_ports_csv(channel, csv);
}

static inline void tern_ares_destroy(ares_channel channel) {
    ares_destroy(channel);
}

static inline void tern_ares_query(ares_channel channel, const char *name, int type,
                                   ares_callback callback, void *arg) {
    ares_query(channel, name, TERN_DNS_CLASS_IN, type, callback, arg);
}

static inline void tern_ares_process_fd(ares_channel channel, int read_fd, int write_fd) {
    ares_process_fd(channel, (ares_socket_t)read_fd, (ares_socket_t)write_fd);
}

/* Milliseconds until c-ares must be called for its timeouts, or -1 when no query is pending.
 * ares_timeout rounds down to whole milliseconds: one is added so that the timer, when it fires,
 * finds the deadline passed instead of spinning on a zero timeout. */
static inline long long tern_ares_timeout_ms(ares_channel channel) {
    struct timeval tv;
    struct timeval *next = ares_timeout(channel, NULL, &tv);
    if (next == NULL) return -1;
    return (long long)next->tv_sec * 1000 + next->tv_usec / 1000 + 1;
}

static inline int tern_ares_parse_mx(const unsigned char *abuf, int alen, struct ares_mx_reply **out) {
    return ares_parse_mx_reply(abuf, alen, out);
}

static inline int tern_ares_parse_a(const unsigned char *abuf, int alen,
                                    struct ares_addrttl *addrttls, int *naddrttls) {
    return ares_parse_a_reply(abuf, alen, NULL, addrttls, naddrttls);
}

static inline int tern_ares_parse_aaaa(const unsigned char *abuf, int alen,
                                       struct ares_addr6ttl *addrttls, int *naddrttls) {
    return ares_parse_aaaa_reply(abuf, alen, NULL, addrttls, naddrttls);
}

static inline int tern_ares_parse_ptr(const unsigned char *abuf, int alen, const void *addr,
                                      int addrlen, int family, struct hostent **host) {
    return ares_parse_ptr_reply(abuf, alen, addr, addrlen, family, host);
}

/* Expands the (possibly compressed) name at encoded; *name is freed with tern_ares_free_string. */
static inline int tern_ares_expand_name(const unsigned char *encoded, const unsigned char *abuf,
                                        int alen, char **name, long *encoded_length) {
    return ares_expand_name(encoded, abuf, alen, name, encoded_length);
}

static inline void tern_ares_free_string(void *s) { ares_free_string(s); }
static inline void tern_ares_free_data(void *data) { ares_free_data(data); }
static inline void tern_ares_free_hostent(struct hostent *host) { ares_free_hostent(host); }

#if defined(__clang__)
#pragma clang diagnostic pop
#endif

#endif
