// The journal writes each record from its pieces (header, envelope, the message's own array) with
// pwritev, and checksums with its Checksum (here the pure-Swift default): the file must be byte for byte
// what the format says, as zlib's CRC-32 and an independent assembly of the records compute it.

import CZlib
import Foundation
import Randomness
import Testing
@testable import MailQueue

/// Deterministic bytes and lengths, so a failure can be replayed.
private extension SplitMix64 {
    mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }
    mutating func bytes(_ count: Int) -> [UInt8] { (0..<count).map { _ in UInt8(truncatingIfNeeded: next()) } }
}

private func zlibCRC(_ bytes: ArraySlice<UInt8>, following previous: UInt32 = 0) -> UInt32 {
    bytes.withUnsafeBufferPointer { UInt32(truncatingIfNeeded: crc32_z(UInt(previous), $0.baseAddress, $0.count)) }
}

/// A message record of segment `segment` as the format describes it, assembled here without the
/// journal's code.
private func expectedRecord(_ envelope: Envelope, _ data: [UInt8], segment: UInt64) -> [UInt8] {
    let record = EnvelopeRecord.encode(envelope)
    let field = (0..<4).map { UInt8(truncatingIfNeeded: segment >> (8 * UInt64($0))) }
    var out = Array("TJM2".utf8) + field
    for value in [UInt32(record.count), UInt32(data.count), zlibCRC((field + record + data)[...])] {
        out += (0..<4).map { UInt8(truncatingIfNeeded: value >> (8 * $0)) }
    }
    return out + record + data
}

private func envelope(_ n: Int) -> Envelope {
    var e = sampleEnvelope(id: QueueID(microseconds: 1_750_000_000_000_000 + UInt64(n)))
    e.recipients = e.recipients.map { Recipient(address: $0.address) }
    e.attempts = 0
    return e
}

@Suite struct JournalPiecesTests {
    @Test func tableCRC32IsZlibsOverRandomLengthsAndOddSplits() {
        var dice = SplitMix64(seed: 42)
        let buffer = dice.bytes(300 * 1024 + 7)
        for _ in 0..<300 {
            let length = dice.below(300 * 1024 + 1)
            let start = dice.below(8)  // unaligned starts too
            let bytes = buffer[start..<(start + length)]
            let whole = zlibCRC(bytes)
            #expect(crc32(bytes) == whole)
            // Continued over three pieces cut at random places, in both directions between the two.
            let a = start + (length == 0 ? 0 : dice.below(length + 1))
            let b = a + (start + length - a == 0 ? 0 : dice.below(start + length - a + 1))
            let first = buffer[start..<a], second = buffer[a..<b], third = buffer[b..<(start + length)]
            #expect(crc32(third, following: crc32(second, following: crc32(first))) == whole)
            #expect(crc32(third, following: zlibCRC(second, following: crc32(first))) == whole)
            #expect(zlibCRC(third, following: crc32(second, following: zlibCRC(first))) == whole)
        }
        #expect(crc32(Array("123456789".utf8)[...]) == 0xCBF4_3926)
        #expect(crc32([][...], following: 0x1234_5678) == 0x1234_5678)
    }

    @Test func aBatchOfManySmallAndAFewLargeMessagesIsWrittenAsTheFormatSays() throws {
        try withTemporaryDirectory { dir in
            var dice = SplitMix64(seed: 7)
            // 1,200 small messages and three large ones among them: 3,609 pieces, more than one
            // pwritev's worth (IOV_MAX).
            var messages: [(Envelope, [UInt8])] = []
            for n in 0..<1203 {
                let size = n == 100 ? 100 * 1024 : n == 600 ? 250 * 1024 : n == 1202 ? 1 << 20 : 1 + dice.below(3000)
                messages.append((envelope(n), dice.bytes(size)))
            }
            let later = (2000..<2003).map { (envelope($0), dice.bytes(500 + $0)) }
            #expect(messages.count * 3 > Journal.maxIovecs)
            var stored: [Envelope] = []
            do {
                let spool = try Spool(path: dir)
                _ = try spool.recover()
                stored = try spool.commit(journaling: messages)
                stored += try spool.commit(journaling: later)
                #expect(stored.map(\.size) == (messages + later).map(\.1.count))
                let segments = try filesIn(dir + "/journal").filter { $0.hasSuffix(".jnl") }
                #expect(segments.count == 1)
                let file = try readBytes(dir + "/journal/" + segments[0])
                var expected: [UInt8] = []
                let number = UInt64(segments[0].dropLast(4), radix: 16)!
                for (e, (_, data)) in zip(stored, messages + later) { expected += expectedRecord(e, data, segment: number) }
                #expect(file.count == expected.count)
                #expect(file == expected)
                for (e, (_, data)) in zip(stored, messages + later) where data.count > 4000 || e.id == stored.last!.id {
                    #expect(try spool.readMessage(e.id) == data)
                    #expect(try spool.load(e.id) == e)
                }
            }
            // What recovery reads back from the file.
            let spool = try Spool(path: dir)
            let (_, journaled) = try spool.recover()
            #expect(journaled.count == messages.count + later.count)
            #expect(journaled.problems == [])
            #expect(try spool.list() == stored.map(\.id))
            for (e, (_, data)) in zip(stored, messages + later) {
                #expect(try spool.readMessage(e.id) == data)
            }
            #expect(try spool.load(stored[600].id) == stored[600])
        }
    }

    @Test func emptyDataAndLargeEnvelopesKeepTheirPlaces() throws {
        try withTemporaryDirectory { dir in
            var wide = envelope(1)
            wide.recipients = (0..<2000).map { Recipient(address: "rcpt\($0)@example.net") }
            let messages: [(Envelope, [UInt8])] = [(envelope(0), []), (wide, Array("x\r\n".utf8)), (envelope(2), [])]
            let stored: [Envelope]
            do {
                let spool = try Spool(path: dir)
                _ = try spool.recover()
                stored = try spool.commit(journaling: messages)
            }
            let spool = try Spool(path: dir)
            #expect(try spool.recover().journaled.count == 3)
            #expect(try spool.readMessage(stored[0].id) == [])
            #expect(try spool.readMessage(stored[1].id) == Array("x\r\n".utf8))
            #expect(try spool.load(stored[1].id).recipients.count == 2000)
            #expect(try spool.readMessage(stored[2].id) == [])
            // The size without reading (HEAD of the admin endpoint), journaled and once in its own file.
            #expect(try stored.map { try spool.messageSize($0.id) } == [0, 3, 0])
            try spool.update(stored[1])
            #expect(try spool.messageSize(stored[1].id) == 3 && spool.readMessage(stored[1].id) == Array("x\r\n".utf8))
            #expect(throws: SpoolError.self) { try spool.messageSize(QueueID(rawValue: "0123456789ABCD")!) }
        }
    }

    /// A pwritev that takes at most `budget` bytes a call (short writes, as a signal or a slow disk
    /// may cause), and fails with ENOSPC once `failAfter` bytes went in total.
    private final class ShortWriter {
        let budget: Int
        let failAfter: Int
        var total = 0
        var calls = 0
        init(budget: Int, failAfter: Int = .max) { self.budget = budget; self.failAfter = failAfter }

        func write(_ fd: Int32, _ iov: UnsafePointer<iovec>, _ count: Int32, _ offset: off_t) -> Int {
            calls += 1
            if total >= failAfter {
                errno = ENOSPC
                return -1
            }
            var taken: [iovec] = []
            var room = min(budget, failAfter - total)
            for i in 0..<Int(count) where room > 0 {
                let n = min(iov[i].iov_len, room)
                taken.append(iovec(iov_base: iov[i].iov_base, iov_len: n))
                room -= n
            }
            let n = pwritev(fd, taken, Int32(taken.count), offset)
            if n > 0 { total += n }
            return n
        }
    }

    @Test func shortWritesResumeWhereTheyStoppedAndAFailedWriteIsCutBack() throws {
        try withTemporaryDirectory { dir in
            var dice = SplitMix64(seed: 99)
            // 3,000 pieces, empty ones among them: three pwritev groups, each written in short steps.
            let pieces = (0..<3000).map { _ in dice.bytes(dice.below(5) == 0 ? 0 : dice.below(700)) }
            let head = Array("HEAD".utf8)
            let path = dir + "/0000000000000001.jnl"
            let fd = open(path, O_CREAT | O_RDWR | O_CLOEXEC, 0o600)
            try #require(fd >= 0)
            defer { _ = close(fd) }
            #expect(pwrite(fd, head, head.count, 0) == head.count)
            let segment = Journal.Segment(number: 1, path: path, fd: fd, size: Int64(head.count))

            let short = ShortWriter(budget: 333)
            try Journal.writeAll(segment, pieces.map { $0[...] }, at: 4, using: short.write)
            let whole = pieces.reduce(0) { $0 + $1.count }
            #expect(short.calls >= whole / 333)
            #expect(try readBytes(path) == head + pieces.flatMap { $0 })

            // A disk that fills up part way: an error, and nothing of the batch is left after HEAD.
            #expect(ftruncate(fd, 4) == 0)
            let failing = ShortWriter(budget: 4096, failAfter: whole / 2)
            #expect {
                try Journal.writeAll(segment, pieces.map { $0[...] }, at: 4, using: failing.write)
            } throws: { error in
                (error as? SpoolError)?.errno == ENOSPC
            }
            #expect(failing.total == whole / 2)
            #expect(try readBytes(path) == head)
        }
    }
}
