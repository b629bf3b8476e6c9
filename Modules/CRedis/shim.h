#ifndef TERN_CREDIS_SHIM_H
#define TERN_CREDIS_SHIM_H
#include <hiredis/hiredis.h>
#include <hiredis/async.h>
#include <hiredis/adapters/libuv.h>

/* hiredis's own libuv adapter (adapters/libuv.h: a uv_poll_t on the connection's socket), attached
   to the loop given as an opaque pointer: uv.h is not a module, so CLibUV's uv_loop_t and this
   header's are different types to Swift. */
static inline int tern_redis_attach(redisAsyncContext *ac, void *loop) {
    return redisLibuvAttach(ac, (uv_loop_t *)loop);
}

/* Function pointers, typed for Swift (hiredis declares the callbacks as function types). */
typedef void (*tern_redis_callback)(redisAsyncContext *ac, void *reply, void *privdata);
typedef void (*tern_redis_connect_callback)(const redisAsyncContext *ac, int status);

static inline int tern_redis_command(redisAsyncContext *ac, tern_redis_callback fn, void *privdata,
                                     int argc, const char **argv, const size_t *argvlen) {
    return redisAsyncCommandArgv(ac, fn, privdata, argc, argv, argvlen);
}
static inline int tern_redis_on_connect(redisAsyncContext *ac, tern_redis_connect_callback fn) {
    return redisAsyncSetConnectCallback(ac, fn);
}
static inline int tern_redis_on_disconnect(redisAsyncContext *ac, tern_redis_connect_callback fn) {
    return redisAsyncSetDisconnectCallback(ac, fn);
}
#endif
