// The journal's two CRC-32s: MailQueue's pure-Swift table (the default) and UVRuntime's ISA-L one
// (what `tern serve` passes to its Spool) must be the same function, so that either reads the other's
// spool.

import Foundation
import MailQueue
import Randomness
import Testing
import UVRuntime

private let isal = Checksum { ISAL.crc32($0, following: $1) }

private func crc(_ checksum: Checksum, _ bytes: ArraySlice<UInt8>, following seed: UInt32 = 0) -> UInt32 {
    bytes.withUnsafeBytes { checksum.update($0, seed) }
}

@Suite struct ChecksumTests {
    @Test func theStandardCheckValueBothWays() {
        let check = Array("123456789".utf8)
        for checksum in [Checksum.crc32, isal] {
            #expect(crc(checksum, check[...]) == 0xCBF4_3926)
            #expect(crc(checksum, check[4...], following: crc(checksum, check[..<4])) == 0xCBF4_3926)
            #expect(crc(checksum, [][...]) == 0)
            #expect(crc(checksum, [][...], following: 0x1234_5678) == 0x1234_5678)
        }
    }

    /// Seeded lengths (short ones and ones past ISA-L's wide paths), unaligned starts and any seed to
    /// continue from; the seed is in the message, so a failure replays.
    @Test func theTableAndISALAgreeOnSeededInputs() {
        for seed in 1...200 as ClosedRange<UInt64> {
            var random = SplitMix64(seed: seed)
            let length = Int(random.next() % (seed % 4 == 0 ? 200_000 : 300))
            let start = Int(random.next() % 16)
            let bytes = (0..<(start + length)).map { _ in UInt8(truncatingIfNeeded: random.next()) }[start...]
            let previous = seed % 2 == 0 ? 0 : UInt32(truncatingIfNeeded: random.next())
            let table = crc(.crc32, bytes, following: previous)
            #expect(crc(isal, bytes, following: previous) == table, "seed \(seed), \(length) bytes")
            // Continued across the two at a seeded cut.
            let cut = bytes.startIndex + (length == 0 ? 0 : Int(random.next() % UInt64(length + 1)))
            #expect(crc(isal, bytes[cut...], following: crc(.crc32, bytes[..<cut], following: previous)) == table,
                    "seed \(seed), cut at \(cut - start)")
        }
    }

    @Test func aSpoolJournaledWithOneIsRecoveredWithTheOther() throws {
        var template = Array("\(NSTemporaryDirectory())/tern-checksum-XXXXXX".utf8CString)
        let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        try #require(made != nil)
        let dir = String(cString: template)
        defer { try? FileManager.default.removeItem(atPath: dir) }

        let envelopes = (0..<3).map { n in
            Envelope(id: QueueID(microseconds: 1_700_000_000_000_000 + UInt64(n)), sender: "a@b.test",
                     recipients: [Recipient(address: "c@d.test")], priority: 0, arrival: 1_700_000_000,
                     nextAttempt: 1_700_000_000, client: ClientInfo(ip: "127.0.0.1", helo: "x.test", protocolName: "ESMTP"))
        }
        let message = Array("Subject: x\r\n\r\nhi\r\n".utf8)
        do {
            let spool = try Spool(path: dir, checksum: .crc32)
            _ = try spool.recover()
            _ = try spool.commit(journaling: envelopes.map { ($0, message) })
        }
        do {
            let spool = try Spool(path: dir, checksum: isal)
            let (_, journaled) = try spool.recover()
            #expect(journaled.count == 3)
            #expect(journaled.problems == [])
            try spool.remove(envelopes[1].id)
            // A done record and a message record written with ISA-L's.
            var later = envelopes[1]
            later.id = QueueID(microseconds: 1_700_000_000_000_009)
            _ = try spool.commit(journaling: [(later, message)])
        }
        let spool = try Spool(path: dir, checksum: .crc32)
        let (_, journaled) = try spool.recover()
        #expect(journaled.count == 3)
        #expect(journaled.problems == [])
        #expect(try spool.readMessage(envelopes[2].id) == message)
    }
}
