import Foundation
import Testing
@testable import MailQueue

/// A message's bytes for journal tests (also SpoolBatchRemoveTests).
func journaledMessage(_ n: Int, size: Int = 300) -> [UInt8] {
    var bytes = Array("Received: test \(n)\r\nSubject: \(n)\r\n\r\n".utf8)
    while bytes.count < size { bytes += Array("line \(n) \(bytes.count)\r\n".utf8) }
    return bytes
}

/// An envelope with nothing delivered yet, id `n` (also SpoolBatchRemoveTests).
func journaledEnvelope(_ n: Int) -> Envelope {
    var e = sampleEnvelope(id: QueueID(microseconds: 1_700_000_000_000_000 + UInt64(n)))
    e.recipients = e.recipients.map { Recipient(address: $0.address) }
    e.attempts = 0
    return e
}

/// The journal's default checksum (zlib's CRC-32 in Swift), as the tests assemble records with it.
func crc32(_ bytes: ArraySlice<UInt8>, following previous: UInt32 = 0) -> UInt32 {
    Checksum.crc32.of(bytes, following: previous)
}

/// The journal's segment files, by name.
private func segmentFiles(_ dir: String) throws -> [String] {
    try filesIn(dir + "/journal").filter { $0.hasSuffix(".jnl") }
}

@Suite struct JournalTests {
    @Test func crc32MatchesTheStandardCheckValueAndContinues() {
        let check = Array("123456789".utf8)
        #expect(crc32(check[...]) == 0xCBF4_3926)
        #expect(crc32(check[4...], following: crc32(check[..<4])) == 0xCBF4_3926)
        #expect(crc32([][...]) == 0)
    }

    @Test func journaledMessagesAreQueuedWithoutFilesOfTheirOwn() throws {
        try withTemporaryDirectory { dir in
            let spool = try Spool(path: dir)
            _ = try spool.recover()
            let stored = try spool.commit(journaling: (0..<3).map { (journaledEnvelope($0), journaledMessage($0)) })
            #expect(stored.map(\.size) == (0..<3).map { journaledMessage($0).count })
            #expect(try queueFiles(spool) == [])
            #expect(try segmentFiles(dir).count == 1)
            #expect(try spool.list() == stored.map(\.id))
            for (n, e) in stored.enumerated() {
                #expect(try spool.load(e.id) == e)
                #expect(try spool.readMessage(e.id) == journaledMessage(n))
            }
        }
    }

    @Test func aRestartFindsWhatWasJournaledAndNotWhatWasDone() throws {
        try withTemporaryDirectory { dir in
            var stored: [Envelope] = []
            do {
                let spool = try Spool(path: dir)
                _ = try spool.recover()
                stored = try spool.commit(journaling: (0..<4).map { (journaledEnvelope($0), journaledMessage($0)) })
                stored += try spool.commit(journaling: [(journaledEnvelope(9), journaledMessage(9))])
                try spool.remove(stored[1].id)
                try spool.remove(stored[4].id)
            }
            let spool = try Spool(path: dir)
            let (_, journaled) = try spool.recover()
            #expect(journaled.count == 3)
            #expect(journaled.problems == [])
            #expect(try spool.list() == [stored[0].id, stored[2].id, stored[3].id])
            #expect(try spool.load(stored[2].id) == stored[2])
            #expect(try spool.readMessage(stored[3].id) == journaledMessage(3))
            // Appends after a restart go to a new segment; the old one is still needed.
            #expect(try segmentFiles(dir).count == 2)
        }
    }

    @Test func aTornOrCorruptTailIsNotAMessage() throws {
        try withTemporaryDirectory { dir in
            var stored: [Envelope] = []
            do {
                let spool = try Spool(path: dir)
                _ = try spool.recover()
                stored = try spool.commit(journaling: [(journaledEnvelope(0), journaledMessage(0))])
                stored += try spool.commit(journaling: [(journaledEnvelope(1), journaledMessage(1))])
            }
            let segment = dir + "/journal/" + (try segmentFiles(dir))[0]
            var bytes = try readBytes(segment)
            let whole = bytes.count
            // A crash in the middle of the second record's write: cut it short.
            bytes.removeLast(10)
            try Data(bytes).write(to: URL(fileURLWithPath: segment))
            do {
                let spool = try Spool(path: dir)
                #expect(try spool.recover().journaled.count == 1)
                #expect(try spool.list() == [stored[0].id])
            }
            // Whole length, but a byte of the data changed: the checksum says no.
            var corrupt = try readBytes(segment)
            corrupt += Array(repeating: 0, count: whole - corrupt.count)
            try Data(corrupt).write(to: URL(fileURLWithPath: segment))
            let spool = try Spool(path: dir)
            #expect(try spool.recover().journaled.count == 1)
            #expect(try spool.list() == [stored[0].id])
        }
    }

    @Test func anUpdateMovesTheMessageToItsOwnFiles() throws {
        try withTemporaryDirectory { dir in
            var changed: Envelope
            do {
                let spool = try Spool(path: dir)
                _ = try spool.recover()
                let stored = try spool.commit(journaling: [(journaledEnvelope(0), journaledMessage(0)), (journaledEnvelope(1), journaledMessage(1))])
                changed = stored[0]
                changed.recipients[0].state = .deferred
                changed.attempts = 1
                try spool.update(changed)
                #expect(!spool.journal.contains(changed.id))
                #expect(try queueFiles(spool) == [changed.id.rawValue + ".env", changed.id.rawValue + ".msg"])
                #expect(try readBytes(spool.messagePath(changed.id)) == journaledMessage(0))
                #expect(try spool.load(changed.id) == changed)
                #expect(try spool.list() == stored.map(\.id))
                // A second update rewrites the file.
                changed.attempts = 2
                try spool.update(changed)
                #expect(try spool.load(changed.id) == changed)
            }
            let spool = try Spool(path: dir)
            #expect(try spool.recover().journaled.count == 1)
            #expect(try spool.load(changed.id) == changed)
            #expect(try spool.list().count == 2)
            try spool.remove(changed.id)
            #expect(try queueFiles(spool) == [])
            #expect(try spool.list().count == 1)
        }
    }

    @Test func aMessageMovedOutWinsOverAJournalRecordWhoseDoneRecordWasLost() throws {
        try withTemporaryDirectory { dir in
            let segment: String
            var changed: Envelope
            let before: [UInt8]
            do {
                let spool = try Spool(path: dir)
                _ = try spool.recover()
                changed = try spool.commit(journaling: [(journaledEnvelope(0), journaledMessage(0))])[0]
                segment = dir + "/journal/" + (try segmentFiles(dir))[0]
                before = try readBytes(segment)
                changed.attempts = 3
                try spool.update(changed)
            }
            // As if the crash came before the done record reached the disk.
            try Data(before).write(to: URL(fileURLWithPath: segment))
            let spool = try Spool(path: dir)
            #expect(try spool.recover().journaled.count == 0)
            #expect(try spool.list() == [changed.id])
            #expect(try spool.load(changed.id).attempts == 3)
        }
    }

    @Test func segmentsRotateAndGoOldestFirstWhenAllTheirMessagesAreDone() throws {
        try withTemporaryDirectory { dir in
            let spool = try Spool(path: dir, journalSegmentLimit: 1000)
            _ = try spool.recover()
            // Four batches of two 600-byte messages, each past the limit: a segment each.
            var batches: [[Envelope]] = []
            for b in 0..<4 {
                batches.append(try spool.commit(journaling: (0..<2).map { (journaledEnvelope(b * 2 + $0), journaledMessage(b * 2 + $0, size: 600)) }))
            }
            let segments = spool.journal.segmentNumbers
            #expect(segments.count == 4)
            #expect(try segmentFiles(dir).count == 4)
            // Everything in the third segment done: it stays, because older ones still hold messages
            // (and it may hold done records for theirs).
            for e in batches[2] { try spool.remove(e.id) }
            #expect(spool.journal.segmentNumbers == segments)
            for e in batches[0] + batches[1] { try spool.remove(e.id) }
            #expect(spool.journal.segmentNumbers == Array(segments.suffix(1)))
            #expect(try segmentFiles(dir).count == 1)
            #expect(try spool.list() == batches[3].map(\.id))
        }
    }

    @Test func compactionMovesOutTheFewMessagesLeftInTheOldestSegment() throws {
        try withTemporaryDirectory { dir in
            let spool = try Spool(path: dir, journalSegmentLimit: 4000)
            _ = try spool.recover()
            let first = try spool.commit(journaling: (0..<8).map { (journaledEnvelope($0), journaledMessage($0, size: 500)) })
            let second = try spool.commit(journaling: [(journaledEnvelope(20), journaledMessage(20))])
            #expect(spool.journal.segmentNumbers.count == 2)
            // Three of eight left: more than a quarter of the bytes, nothing to do yet.
            for e in first[..<5] { try spool.remove(e.id) }
            #expect(try spool.compactJournal(now: 0) == 0)
            try spool.remove(first[5].id)
            try spool.remove(first[6].id)
            #expect(try spool.compactJournal(now: 0) == 1)
            #expect(spool.journal.segmentNumbers.count == 1)
            #expect(try queueFiles(spool) == [first[7].id.rawValue + ".env", first[7].id.rawValue + ".msg"])
            #expect(try spool.list() == [first[7].id, second[0].id])
            #expect(try spool.load(first[7].id) == first[7])
            #expect(try spool.readMessage(first[7].id) == journaledMessage(7, size: 500))
        }
    }

    /// An id already in the journal is refused. (Ids that name message files are not looked up: the
    /// server's one QueueIDGenerator, advanced past every queued id at start-up, never hands one out.)
    @Test func anIdAlreadyInTheJournalIsRefused() throws {
        try withTemporaryDirectory { dir in
            let spool = try Spool(path: dir)
            _ = try spool.recover()
            let stored = try spool.commit(journaling: [(journaledEnvelope(1), journaledMessage(1))])
            #expect(throws: SpoolError.self) { try spool.commit(journaling: [(stored[0], journaledMessage(1))]) }
        }
    }

    @Test func concurrentCommitsMovesAndRemovalsKeepTheQueueExact() throws {
        try withTemporaryDirectory { dir in
            var expected: [QueueID: Int] = [:]
            do {
                let spool = try Spool(path: dir, journalSegmentLimit: 8000)
                _ = try spool.recover()
                let lock = NSLock()
                DispatchQueue.concurrentPerform(iterations: 8) { worker in
                    for round in 0..<25 {
                        let n = worker * 1000 + round
                        guard let e = try? spool.commit(journaling: [(journaledEnvelope(n), journaledMessage(n))])[0] else {
                            Issue.record("commit \(n) failed")
                            continue
                        }
                        do {
                            switch round % 3 {
                            case 0: try spool.remove(e.id)
                            case 1:
                                var changed = e
                                changed.attempts = 1
                                try spool.update(changed)
                                lock.lock(); expected[e.id] = n; lock.unlock()
                            default:
                                lock.lock(); expected[e.id] = n; lock.unlock()
                            }
                            _ = try spool.compactJournal(now: 0)
                            _ = try spool.list()
                        } catch {
                            Issue.record("\(n): \(error)")
                        }
                    }
                }
                #expect(Set(try spool.list()) == Set(expected.keys))
            }
            let spool = try Spool(path: dir)
            _ = try spool.recover()
            #expect(Set(try spool.list()) == Set(expected.keys))
            for (id, n) in expected {
                #expect(try spool.load(id).attempts == (n % 1000 % 3 == 1 ? 1 : 0))
                #expect(try spool.readMessage(id) == journaledMessage(n))
            }
        }
    }

    @Test func aTornTailIsReportedAndAnUnreadableWholeRecordIsSkipped() throws {
        try withTemporaryDirectory { dir in
            var stored: [Envelope] = []
            do {
                let spool = try Spool(path: dir)
                _ = try spool.recover()
                for n in 0..<3 { stored += try spool.commit(journaling: [(journaledEnvelope(n), journaledMessage(n))]) }
            }
            let segment = dir + "/journal/" + (try segmentFiles(dir))[0]
            var bytes = try readBytes(segment)
            // The first record's envelope made unreadable (its checksum, over the segment field and
            // the payload, fixed up to match), and a torn tail after the last record.
            let first = Array(EnvelopeRecord.encode(stored[0]))
            let at = 20 + first.firstIndex(of: UInt8(ascii: "\n"))!
            bytes[at] = UInt8(ascii: "?")
            let envelopeLength = Int(bytes[8]) | Int(bytes[9]) << 8
            let dataLength = Int(bytes[12]) | Int(bytes[13]) << 8
            let crc = crc32(bytes[20..<(20 + envelopeLength + dataLength)], following: crc32(bytes[4..<8]))
            for k in 0..<4 { bytes[16 + k] = UInt8(truncatingIfNeeded: crc >> (8 * UInt32(k))) }
            bytes += Array("TJM2".utf8) + [1, 2]
            try Data(bytes).write(to: URL(fileURLWithPath: segment))
            let spool = try Spool(path: dir)
            let (_, journaled) = try spool.recover()
            #expect(journaled.count == 2)
            #expect(try spool.list() == [stored[1].id, stored[2].id])
            #expect(journaled.problems.count == 2)
            #expect(journaled.problems.first?.contains("cannot be read; skipped") == true)
            #expect(journaled.problems.last?.contains("6 bytes after the last whole record") == true)
        }
    }

    @Test func anIdInTheJournalCannotGetFilesOfItsOwn() throws {
        try withTemporaryDirectory { dir in
            let spool = try Spool(path: dir)
            _ = try spool.recover()
            let stored = try spool.commit(journaling: [(journaledEnvelope(0), journaledMessage(0))])
            #expect(throws: SpoolError.self) { _ = try spool.create(stored[0].id) }
            #expect(try queueFiles(spool) == [])
            #expect(try spool.readMessage(stored[0].id) == journaledMessage(0))
        }
    }

    @Test func manySegmentsOrAnOldOneAreCompactedEvenWhenMostlyLive() throws {
        try withTemporaryDirectory { dir in
            let spool = try Spool(path: dir, journalSegmentLimit: 500)
            _ = try spool.recover()
            var all: [Envelope] = []
            for n in 0..<5 { all += try spool.commit(journaling: [(journaledEnvelope(n), journaledMessage(n, size: 600))]) }
            #expect(spool.journal.segmentNumbers.count == 5)
            // All live, not old: nothing to do under the default limits. The closed segments' age
            // counts from this pass (virtual monotonic seconds: 100).
            #expect(try spool.compactJournal(now: 100) == 0)
            // More segments than allowed: the oldest moves out and goes.
            #expect(try spool.compactJournal(now: 100, maxSegments: 3) == 1)
            #expect(spool.journal.segmentNumbers.count == 4)
            // Closed long enough: not at 599 seconds, at 600.
            #expect(try spool.compactJournal(now: 699) == 0)
            #expect(spool.journal.segmentNumbers.count == 4)
            #expect(try spool.compactJournal(now: 700) == 1)
            #expect(spool.journal.segmentNumbers.count == 3)
            #expect(try spool.list() == all.map(\.id))
            #expect(try spool.readMessage(all[0].id) == journaledMessage(0, size: 600))
            #expect(try spool.readMessage(all[1].id) == journaledMessage(1, size: 600))
        }
    }

    @Test func theIdGeneratorStartsPastTheNewestQueuedId() {
        var generator = QueueIDGenerator()
        let newest = QueueID(microseconds: 2_000_000_000_000_000)
        generator.advance(past: newest)
        let next = generator.next(nowMicroseconds: 1_000_000_000_000_000)  // a clock set back
        #expect(newest < next)
    }
}
