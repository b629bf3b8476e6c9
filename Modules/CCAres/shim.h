#ifndef TERN_CCARES_SHIM_H
#define TERN_CCARES_SHIM_H
#include <ares.h>
#include <arpa/nameser.h>
#endif
