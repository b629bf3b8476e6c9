// ISA-L's CRC-32 for the spool journal (MailQueue's Checksum, which links no C library).

import CISAL

public enum ISAL {
    /// zlib's CRC-32 of `bytes`, continuing from `seed`: crc32_gzip_refl has the same polynomial and
    /// the same initial and final inversion, with PCLMUL/AVX-512 where the CPU has them (chosen at run
    /// time), so it continues from a zlib value and back.
    public static func crc32(_ bytes: UnsafeRawBufferPointer, following seed: UInt32) -> UInt32 {
        guard let base = bytes.baseAddress, !bytes.isEmpty else { return seed }
        return crc32_gzip_refl(seed, base.assumingMemoryBound(to: UInt8.self), UInt64(bytes.count))
    }
}
