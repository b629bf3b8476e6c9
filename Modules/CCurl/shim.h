#ifndef TERN_CCURL_SHIM_H
#define TERN_CCURL_SHIM_H
#include <curl/curl.h>

/* curl_easy_setopt, curl_multi_setopt and curl_easy_getinfo are variadic, which Swift cannot call:
   one typed wrapper per kind of argument. */

static inline CURLcode tern_curl_easy_setopt_long(CURL *h, CURLoption option, long value) {
    return curl_easy_setopt(h, option, value);
}
static inline CURLcode tern_curl_easy_setopt_off(CURL *h, CURLoption option, curl_off_t value) {
    return curl_easy_setopt(h, option, value);
}
static inline CURLcode tern_curl_easy_setopt_string(CURL *h, CURLoption option, const char *value) {
    return curl_easy_setopt(h, option, value);
}
static inline CURLcode tern_curl_easy_setopt_pointer(CURL *h, CURLoption option, void *value) {
    return curl_easy_setopt(h, option, value);
}
static inline CURLcode tern_curl_easy_setopt_slist(CURL *h, CURLoption option, struct curl_slist *value) {
    return curl_easy_setopt(h, option, value);
}
typedef size_t (*tern_curl_write_callback)(char *data, size_t size, size_t count, void *userdata);
static inline CURLcode tern_curl_easy_setopt_write(CURL *h, tern_curl_write_callback f) {
    return curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, f);
}
static inline CURLcode tern_curl_easy_getinfo_long(CURL *h, CURLINFO info, long *value) {
    return curl_easy_getinfo(h, info, value);
}
static inline CURLcode tern_curl_easy_getinfo_pointer(CURL *h, CURLINFO info, void **value) {
    return curl_easy_getinfo(h, info, value);
}

typedef int (*tern_curl_socket_callback)(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp);
typedef int (*tern_curl_timer_callback)(CURLM *multi, long timeout_ms, void *userp);
static inline CURLMcode tern_curl_multi_setopt_socket(CURLM *m, tern_curl_socket_callback f) {
    return curl_multi_setopt(m, CURLMOPT_SOCKETFUNCTION, f);
}
static inline CURLMcode tern_curl_multi_setopt_timer(CURLM *m, tern_curl_timer_callback f) {
    return curl_multi_setopt(m, CURLMOPT_TIMERFUNCTION, f);
}
static inline CURLMcode tern_curl_multi_setopt_pointer(CURLM *m, CURLMoption option, void *value) {
    return curl_multi_setopt(m, option, value);
}
static inline CURLMcode tern_curl_multi_setopt_long(CURLM *m, CURLMoption option, long value) {
    return curl_multi_setopt(m, option, value);
}
/* CURLMsg's data is a union Swift sees awkwardly: the result of a finished transfer. */
static inline CURLcode tern_curl_msg_result(CURLMsg *msg) { return msg->data.result; }
#endif
