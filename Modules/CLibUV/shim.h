#ifndef TERN_CLIBUV_SHIM_H
#define TERN_CLIBUV_SHIM_H
#include <uv.h>
#ifdef __linux__
#include <malloc.h>
#endif
#endif
