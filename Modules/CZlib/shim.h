#ifndef TERN_CZLIB_SHIM_H
#define TERN_CZLIB_SHIM_H
/* zlib, for its CRC-32 only: the spool journal's record checksum (Sources/MailQueue/Journal.swift). */
#include <zlib.h>
#endif
