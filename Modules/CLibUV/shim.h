#ifndef TERN_CLIBUV_SHIM_H
#define TERN_CLIBUV_SHIM_H
#include <uv.h>
#endif
