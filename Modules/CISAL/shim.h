#ifndef TERN_CISAL_SHIM_H
#define TERN_CISAL_SHIM_H
/* Intel ISA-L, for its CRC-32 only: crc32_gzip_refl is zlib's CRC-32 (same polynomial, same init and
 * final inversion, so it continues from a zlib value and back) with PCLMUL/AVX-512 where the CPU has
 * them, chosen at run time. The spool journal's record checksum (Sources/MailQueue/Journal.swift). */
#include <isa-l/crc.h>
#endif
