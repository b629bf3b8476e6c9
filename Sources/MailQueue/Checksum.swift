// The journal's record checksum, injected: MailQueue links no C library. `Checksum.crc32` here is
// zlib's CRC-32 (the one of gzip and PNG: reflected polynomial 0xEDB88320, initial and final inversion)
// from a 256-entry table, the default and the reference; UVRuntime's ISA-L version computes the same
// function about ten times faster and is what `tern serve` passes to its Spool.

public struct Checksum: Sendable {
    /// The CRC of `bytes`, continuing from `seed` (the CRC of the bytes before them; 0 to start).
    public let update: @Sendable (_ bytes: UnsafeRawBufferPointer, _ seed: UInt32) -> UInt32

    public init(_ update: @escaping @Sendable (_ bytes: UnsafeRawBufferPointer, _ seed: UInt32) -> UInt32) {
        self.update = update
    }

    /// zlib's CRC-32 in plain Swift, a byte at a time.
    public static let crc32 = Checksum { bytes, seed in
        crc32Table.withUnsafeBufferPointer { table in
            var crc = ~seed
            for byte in bytes { crc = table[Int((crc ^ UInt32(byte)) & 0xFF)] ^ (crc >> 8) }
            return ~crc
        }
    }

    /// The CRC of `bytes`, continuing from `previous`.
    func of(_ bytes: ArraySlice<UInt8>, following previous: UInt32 = 0) -> UInt32 {
        bytes.withUnsafeBytes { update($0, previous) }
    }
}

/// The CRC of each byte value, for the reflected polynomial.
private let crc32Table: [UInt32] = (0..<256).map { (n: UInt32) in
    var crc = n
    for _ in 0..<8 { crc = crc & 1 != 0 ? 0xEDB8_8320 ^ (crc >> 1) : crc >> 1 }
    return crc
}
