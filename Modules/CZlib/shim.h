#ifndef TERN_CZLIB_SHIM_H
#define TERN_CZLIB_SHIM_H
/* zlib, for its CRC-32 only: the journal's record checksum is zlib's CRC-32 (Sources/MailQueue/Journal.swift),
 * computed with ISA-L (Modules/CISAL); MailQueueTests check ISA-L's against this one. */
#include <zlib.h>
#endif
