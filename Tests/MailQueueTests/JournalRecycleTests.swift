// Journal segments are recycled: a dead segment becomes a spare `.free` file, and a new segment is a
// spare renamed and written over from offset 0. Its previous life's records stay behind the new ones;
// the v2 records' segment field keeps them from ever being read again.

import Foundation
import Testing
@testable import MailQueue

private func names(_ dir: String, _ suffix: String) throws -> [String] {
    try filesIn(dir + "/journal").filter { $0.hasSuffix(suffix) }.sorted()
}

private func number(_ name: String) -> UInt64 { UInt64(name.prefix(16), radix: 16)! }

private func inode(_ path: String) -> UInt64 {
    var info = stat()
    return stat(path, &info) == 0 ? UInt64(info.st_ino) : 0
}

private func le32(_ value: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: value >> (8 * UInt32($0))) } }

/// A record in the previous version's format (v1), assembled by hand.
private func v1Message(_ envelope: Envelope, _ data: [UInt8]) -> [UInt8] {
    var e = envelope
    e.size = data.count
    let record = EnvelopeRecord.encode(e)
    return Array("TJM1".utf8) + le32(UInt32(record.count)) + le32(UInt32(data.count))
        + le32(crc32((record + data)[...])) + record + data
}

private func v1Done(_ id: QueueID) -> [UInt8] {
    let text = Array(id.rawValue.utf8)
    return Array("TJD1".utf8) + le32(UInt32(text.count)) + le32(0) + le32(crc32(text[...])) + text
}

/// Message `n`, exactly `size` bytes long: records of equal sizes fall on the same offsets.
private func exactMessage(_ n: Int, size: Int) -> [UInt8] { Array(journaledMessage(n, size: size).prefix(size)) }

/// Batches of three 1,500-byte messages into a spool whose segments end at 4,000 bytes: a segment per
/// batch. Returns the stored envelopes by batch.
private func fillSegments(_ spool: Spool, batches: Int, from first: Int = 0) throws -> [[Envelope]] {
    try (0..<batches).map { b in
        try spool.commit(journaling: (0..<3).map { k in
            let n = first + b * 3 + k
            return (journaledEnvelope(n), exactMessage(n, size: 1500))
        })
    }
}

@Suite struct JournalRecycleTests {
    @Test func recordsAreV2WithTheSegmentNumberAndReadBack() throws {
        try withTemporaryDirectory { dir in
            let stored: [Envelope]
            let name: String
            do {
                let spool = try Spool(path: dir)
                _ = try spool.recover()
                stored = try spool.commit(journaling: (0..<3).map { (journaledEnvelope($0), journaledMessage($0)) })
                try spool.remove(stored[1].id)
                name = try names(dir, ".jnl")[0]
                let bytes = try readBytes(dir + "/journal/" + name)
                let field = le32(UInt32(truncatingIfNeeded: number(name)))
                #expect(Array(bytes[0..<4]) == Array("TJM2".utf8))
                #expect(Array(bytes[4..<8]) == field)
                // The done record is the last thing in the file: magic, segment, id length, 0, crc, id.
                let id = Array(stored[1].id.rawValue.utf8)
                let done = Array(bytes[(bytes.count - 20 - id.count)...])
                #expect(done == Array("TJD2".utf8) + field + le32(UInt32(id.count)) + le32(0)
                        + le32(crc32(id[...], following: crc32(field[...]))) + id)
            }
            let spool = try Spool(path: dir)
            let (_, journaled) = try spool.recover()
            #expect(journaled.count == 2)
            #expect(journaled.problems == [])
            #expect(try spool.list() == [stored[0].id, stored[2].id])
            #expect(try spool.readMessage(stored[2].id) == journaledMessage(2))
            #expect(try spool.load(stored[0].id) == stored[0])
            // Read under another segment's number, the same bytes are a stale life: nothing, quietly.
            var read: [Journal.Record] = []
            let end = Journal.parse(try readBytes(dir + "/journal/" + name), segment: number(name) + 1, checksum: .crc32) { read.append($0) }
            #expect(end == 0)
            #expect(read.isEmpty)
        }
    }

    /// Many messages, all done: their segments die and become spares; fewer new messages then go into a
    /// recycled file, over its old records. Recovery finds exactly the new live ones, and says nothing
    /// of the old records behind them, whether the new tail ends on an old record's boundary (same
    /// sizes) or in the middle of one.
    @Test(arguments: [1500, 700])
    func aRecycledSegmentRecoversOnlyItsNewRecords(size: Int) throws {
        try withTemporaryDirectory { dir in
            var fresh: [Envelope] = []
            let recycled: String
            do {
                let spool = try Spool(path: dir, journalSegmentLimit: 4000)
                _ = try spool.recover()
                let old = try fillSegments(spool, batches: 5)
                #expect(spool.journal.segmentNumbers.count == 5)
                _ = spool.remove(old.flatMap { $0 }.map(\.id))
                // Four dead (the current one stays): two spares, two unlinked.
                #expect(try names(dir, ".jnl").count == 1)
                #expect(try names(dir, ".free").count == 2)
                let spareInodes = Set(try names(dir, ".free").map { inode(dir + "/journal/" + $0) })
                // The current segment is past its limit: the next batch starts a segment from a spare.
                fresh = try spool.commit(journaling: (0..<2).map { k in
                    (journaledEnvelope(100 + k), exactMessage(100 + k, size: size))
                })
                recycled = try names(dir, ".jnl").last!
                #expect(spareInodes.contains(inode(dir + "/journal/" + recycled)))
                #expect(try names(dir, ".free").count == 1)
                // Old records are still in the file after the new ones.
                let bytes = try readBytes(dir + "/journal/" + recycled)
                let newLength = fresh.map { 20 + EnvelopeRecord.encode($0).count + $0.size }.reduce(0, +)
                #expect(bytes.count >= 3 * 1500)
                #expect(String(decoding: bytes[newLength...], as: UTF8.self).contains("TJM2"))
                if size == 1500 { #expect(Array(bytes[newLength..<(newLength + 4)]) == Array("TJM2".utf8)) }
                fresh += try spool.commit(journaling: [(journaledEnvelope(102), exactMessage(102, size: size))])
                try spool.remove(fresh[0].id)
            }
            let spool = try Spool(path: dir, journalSegmentLimit: 4000)
            let (_, journaled) = try spool.recover()
            #expect(journaled.problems == [])
            #expect(journaled.count == 2)
            #expect(try spool.list() == [fresh[1].id, fresh[2].id])
            #expect(try spool.readMessage(fresh[2].id) == exactMessage(102, size: size))
            #expect(try spool.load(fresh[1].id) == fresh[1])
            // The recycled segment's write position is the end of its new records, not its file size.
            #expect(try names(dir, ".jnl").contains(recycled))
            #expect(try names(dir, ".free").count <= Journal.maxSpares)
        }
    }

    /// A crash between renaming a spare to the next segment and writing to it: the `.jnl` holds only
    /// its previous life. Nothing is read from it, nothing is reported, and it is dead (a spare again).
    @Test func aSpareRenamedButNeverWrittenRecoversNothing() throws {
        try withTemporaryDirectory { dir in
            var live: [Envelope] = []
            do {
                let spool = try Spool(path: dir, journalSegmentLimit: 4000)
                _ = try spool.recover()
                let old = try fillSegments(spool, batches: 4)
                live = old[3]
                _ = spool.remove(old[0..<3].flatMap { $0 }.map(\.id))
                #expect(try names(dir, ".free").count == 2)
            }
            // What startSegment's rename leaves when the crash comes before the first write.
            let spare = try names(dir, ".free")[0]
            let next = Journal.fileName(number(try names(dir, ".jnl").last!) + 1, ".jnl")
            #expect(rename(dir + "/journal/" + spare, dir + "/journal/" + next) == 0)
            #expect(String(decoding: try readBytes(dir + "/journal/" + next).prefix(4), as: UTF8.self) == "TJM2")

            let spool = try Spool(path: dir, journalSegmentLimit: 4000)
            let (_, journaled) = try spool.recover()
            #expect(journaled.problems == [])
            #expect(journaled.count == 3)
            #expect(try spool.list() == live.map(\.id))
            for (e, n) in zip(live, 9...) { #expect(try spool.readMessage(e.id) == exactMessage(n, size: 1500)) }
            // Empty, but newer than a segment with live messages: it goes when they are done.
            #expect(try names(dir, ".jnl").contains(next))
            _ = spool.remove(live.map(\.id))
            #expect(!(try names(dir, ".jnl")).contains(next))
            #expect(try names(dir, ".free").count == Journal.maxSpares)
        }
    }

    /// A journal the previous version wrote (v1 records, no segment field) is read as before; a v1
    /// record after a v2 one in the same file is not. A v1 segment, once dead, is unlinked, never a spare.
    @Test func aV1SegmentFromThePreviousVersionStillRecovers() throws {
        try withTemporaryDirectory { dir in
            try Spool.makeDirectories(dir + "/journal")
            let messages = (0..<3).map { (journaledEnvelope($0), journaledMessage($0)) }
            var bytes: [UInt8] = []
            for (e, data) in messages { bytes += v1Message(e, data) }
            bytes += v1Done(messages[1].0.id)
            try Data(bytes).write(to: URL(fileURLWithPath: dir + "/journal/0000000000000001.jnl"))
            // Segment 2: a v2 record written by hand, then a v1 record that must be ignored.
            let (e9, d9) = (journaledEnvelope(9), journaledMessage(9))
            var v2: [UInt8] = []
            var stored9 = e9
            stored9.size = d9.count
            let record9 = EnvelopeRecord.encode(stored9)
            Journal.appendMessageHeader(to: &v2, segment: 2, envelope: record9, data: d9, checksum: .crc32)
            v2 += record9 + d9
            v2 += v1Message(journaledEnvelope(10), journaledMessage(10))
            try Data(v2).write(to: URL(fileURLWithPath: dir + "/journal/0000000000000002.jnl"))

            let spool = try Spool(path: dir)
            let (_, journaled) = try spool.recover()
            #expect(journaled.problems == [])
            #expect(journaled.count == 3)
            #expect(try spool.list() == [messages[0].0.id, messages[2].0.id, e9.id])
            #expect(try spool.readMessage(messages[2].0.id) == messages[2].1)
            #expect(try spool.readMessage(e9.id) == d9)
            #expect(try spool.load(messages[0].0.id).recipients == messages[0].0.recipients)
            _ = spool.remove([messages[0].0.id, messages[2].0.id])
            // Segment 1 (v1) was unlinked; segment 2 still holds a live message.
            #expect(!(try names(dir, ".jnl")).contains("0000000000000001.jnl"))
            #expect(try names(dir, ".free") == [])
            try spool.remove(e9.id)
            // Segment 2 was written as v2 from offset 0: it may be a spare.
            #expect(try names(dir, ".free") == ["0000000000000002.free"])
        }
    }

    @Test func aV1TornTailIsStillReported() throws {
        try withTemporaryDirectory { dir in
            try Spool.makeDirectories(dir + "/journal")
            let (e, data) = (journaledEnvelope(0), journaledMessage(0))
            let bytes = v1Message(e, data) + Array(v1Message(journaledEnvelope(1), journaledMessage(1)).dropLast(7))
            try Data(bytes).write(to: URL(fileURLWithPath: dir + "/journal/0000000000000001.jnl"))
            let spool = try Spool(path: dir)
            let (_, journaled) = try spool.recover()
            #expect(journaled.count == 1)
            #expect(journaled.problems.count == 1)
            #expect(journaled.problems.first?.contains("after the last whole record") == true)
        }
    }

    /// Damage to a record of the segment's own life is reported as before, wherever in the record it is:
    /// in its data (the checksum fails), or in its magic (a whole record of this segment follows it).
    @Test(arguments: [false, true])
    func aDamagedV2RecordInTheMiddleIsReported(inMagic: Bool) throws {
        try withTemporaryDirectory { dir in
            var stored: [Envelope] = []
            do {
                let spool = try Spool(path: dir)
                _ = try spool.recover()
                for n in 0..<3 { stored += try spool.commit(journaling: [(journaledEnvelope(n), journaledMessage(n))]) }
            }
            let segment = dir + "/journal/" + (try names(dir, ".jnl"))[0]
            var bytes = try readBytes(segment)
            let second = 20 + EnvelopeRecord.encode(stored[0]).count + journaledMessage(0).count
            #expect(Array(bytes[second..<(second + 4)]) == Array("TJM2".utf8))
            bytes[inMagic ? second + 1 : second + 30] ^= 0x55
            try Data(bytes).write(to: URL(fileURLWithPath: segment))
            let spool = try Spool(path: dir)
            let (_, journaled) = try spool.recover()
            #expect(journaled.count == 1)
            #expect(try spool.list() == [stored[0].id])
            #expect(journaled.problems.count == 1)
            #expect(journaled.problems.first?.contains("offset \(second):") == true)
        }
    }

    @Test func neverMoreThanTwoSpares() throws {
        try withTemporaryDirectory { dir in
            do {
                let spool = try Spool(path: dir, journalSegmentLimit: 4000)
                _ = try spool.recover()
                for round in 0..<4 {
                    let batches = try fillSegments(spool, batches: 2 + round * 2, from: round * 1000)
                    #expect(try names(dir, ".free").count <= Journal.maxSpares)
                    for e in batches.flatMap({ $0 }) {
                        try spool.remove(e.id)
                        #expect(try names(dir, ".free").count <= Journal.maxSpares)
                    }
                    #expect(spool.journal.spareFiles.count == (try names(dir, ".free")).count)
                }
                #expect(try names(dir, ".free").count == Journal.maxSpares)
            }
            // Extras found at start-up (as if left by a crash) are unlinked; the new segment takes one.
            for n in [0x50, 0x51, 0x52] as [UInt64] {
                try Data([1, 2, 3]).write(to: URL(fileURLWithPath: dir + "/journal/" + Journal.fileName(n, ".free")))
            }
            let spool = try Spool(path: dir, journalSegmentLimit: 4000)
            let (_, journaled) = try spool.recover()
            #expect(journaled.problems == [])
            #expect(try names(dir, ".free").count < Journal.maxSpares)
            #expect(spool.journal.spareFiles.count == (try names(dir, ".free")).count)
            // The new segment is numbered past the spares' names.
            #expect(spool.journal.segmentNumbers.last! > 0x52)
        }
    }
}
