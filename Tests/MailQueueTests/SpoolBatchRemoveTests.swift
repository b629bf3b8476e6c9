import Foundation
import Testing
@testable import MailQueue


/// A message in files of its own (the way large messages are committed).
private func commitToFiles(_ spool: Spool, _ n: Int) throws -> Envelope {
    let file = try spool.create(journaledEnvelope(n).id)
    try file.write(journaledMessage(n))
    return try spool.commit(file, envelope: journaledEnvelope(n))
}

private func segmentPaths(_ dir: String) throws -> [String] {
    try filesIn(dir + "/journal").filter { $0.hasSuffix(".jnl") }.map { dir + "/journal/" + $0 }
}

/// The records of a segment file, as recovery reads them.
private func records(_ path: String) throws -> [String] {
    var out: [String] = []
    let number = UInt64(path.split(separator: "/").last!.dropLast(4), radix: 16)!
    Journal.parse(try readBytes(path), segment: number, checksum: .crc32) { record in
        switch record {
        case .message(let id, _, _, _, _): out.append("message \(id)")
        case .done(let id): out.append("done \(id)")
        case .undecodable, .stopped: out.append("damaged")
        }
    }
    return out
}

@Suite struct SpoolBatchRemoveTests {
    @Test func aBatchRemovesJournaledAndFileBasedMessagesAndSkipsIdsNotThere() throws {
        try withTemporaryDirectory { dir in
            let spool = try Spool(path: dir)
            _ = try spool.recover()
            let journaled = try spool.commit(journaling: (0..<4).map { (journaledEnvelope($0), journaledMessage($0)) })
            let files = [try commitToFiles(spool, 10), try commitToFiles(spool, 11)]
            // Journaled first, then moved to files of its own by an update (deferred once).
            var movedOut = journaled[3]
            movedOut.attempts = 1
            try spool.update(movedOut)
            let segment = try #require(try segmentPaths(dir).first)
            let before = try records(segment)
            let absent = journaledEnvelope(99).id

            let failures = spool.remove([journaled[0].id, files[0].id, absent, journaled[2].id, movedOut.id,
                                         journaled[0].id])
            #expect(failures.isEmpty)
            #expect(try spool.list() == [journaled[1].id, files[1].id])
            #expect(try queueFiles(spool) == [files[1].id.rawValue + ".env", files[1].id.rawValue + ".msg"])
            #expect(spool.journal.count == 1)
            #expect(spool.journal.contains(journaled[1].id))
            // One done record for each journaled id, in the order given, and nothing for the others.
            #expect(try records(segment) == before + ["done \(journaled[0].id)", "done \(journaled[2].id)"])
            #expect(try spool.readMessage(journaled[1].id) == journaledMessage(1))
            #expect(try spool.readMessage(files[1].id) == journaledMessage(11))
        }
    }

    @Test func anEmptyBatchOrOneOfUnknownIdsWritesNothing() throws {
        try withTemporaryDirectory { dir in
            let spool = try Spool(path: dir)
            _ = try spool.recover()
            let stored = try spool.commit(journaling: [(journaledEnvelope(0), journaledMessage(0))])
            let segment = try #require(try segmentPaths(dir).first)
            let size = try readBytes(segment).count
            #expect(spool.remove([]).isEmpty)
            #expect(spool.remove([journaledEnvelope(5).id, journaledEnvelope(6).id]).isEmpty)
            #expect(try readBytes(segment).count == size)
            #expect(try spool.list() == stored.map(\.id))
        }
    }

    @Test func aRestartHonoursTheDoneRecordsOfABatch() throws {
        try withTemporaryDirectory { dir in
            var kept: [QueueID] = []
            do {
                let spool = try Spool(path: dir)
                _ = try spool.recover()
                let first = try spool.commit(journaling: (0..<5).map { (journaledEnvelope($0), journaledMessage($0)) })
                let second = try spool.commit(journaling: (5..<8).map { (journaledEnvelope($0), journaledMessage($0)) })
                let file = try commitToFiles(spool, 20)
                #expect(spool.remove([first[0].id, first[3].id, second[1].id, file.id]).isEmpty)
                kept = [first[1].id, first[2].id, first[4].id, second[0].id, second[2].id]
            }
            let spool = try Spool(path: dir)
            let (removed, journaled) = try spool.recover()
            #expect(removed == 0)
            #expect(journaled.count == kept.count)
            #expect(journaled.problems == [])
            #expect(try spool.list() == kept)
            #expect(try spool.readMessage(kept[2]) == journaledMessage(4))
            #expect(try queueFiles(spool) == [])
        }
    }

    @Test func aBatchThatEmptiesOldSegmentsDeletesThemOldestFirst() throws {
        try withTemporaryDirectory { dir in
            let spool = try Spool(path: dir, journalSegmentLimit: 1000)
            _ = try spool.recover()
            // Three batches of two 600-byte messages, each past the limit: a segment each.
            var batches: [[Envelope]] = []
            for b in 0..<3 {
                batches.append(try spool.commit(journaling: (0..<2).map { (journaledEnvelope(b * 2 + $0), journaledMessage(b * 2 + $0, size: 600)) }))
            }
            let segments = spool.journal.segmentNumbers
            #expect(segments.count == 3)
            // The second segment alone done: it stays behind the first, which still holds a message.
            #expect(spool.remove(batches[1].map(\.id)).isEmpty)
            #expect(spool.journal.segmentNumbers == segments)
            // The rest of the first two in one batch: both go.
            #expect(spool.remove(batches[0].map(\.id)).isEmpty)
            #expect(spool.journal.segmentNumbers == Array(segments.suffix(1)))
            #expect(try segmentPaths(dir).count == 1)
            #expect(try spool.list() == batches[2].map(\.id))
            // The last segment (the one appends go to) stays even when all its messages are done.
            #expect(spool.remove(batches[2].map(\.id)).isEmpty)
            #expect(spool.journal.segmentNumbers == Array(segments.suffix(1)))
            #expect(try spool.list() == [])
        }
    }

    @Test func aFailureIsReportedForItsOwnIdAndTheRestOfTheBatchIsRemoved() throws {
        try withTemporaryDirectory { dir in
            let spool = try Spool(path: dir)
            _ = try spool.recover()
            let journaled = try spool.commit(journaling: [(journaledEnvelope(0), journaledMessage(0))])[0]
            let good = try commitToFiles(spool, 10)
            let bad = try commitToFiles(spool, 11)
            // unlink(2) of a directory fails (EISDIR), even for root: the .env of `bad` cannot go.
            let envelopePath = spool.envelopePath(bad.id)
            #expect(unlink(envelopePath) == 0)
            #expect(mkdir(envelopePath, 0o700) == 0)

            let failures = spool.remove([bad.id, journaled.id, good.id])
            #expect(Array(failures.keys) == [bad.id])
            let failure = try #require(failures[bad.id] as? SpoolError)
            #expect(failure.operation == "unlink")
            #expect(failure.path == envelopePath)
            #expect(!spool.journal.contains(journaled.id))
            #expect(!FileManager.default.fileExists(atPath: spool.envelopePath(good.id)))
            #expect(!FileManager.default.fileExists(atPath: spool.messagePath(good.id)))
            // The .env goes first: the data of the message that failed is still there.
            #expect(FileManager.default.fileExists(atPath: spool.messagePath(bad.id)))
        }
    }
}
