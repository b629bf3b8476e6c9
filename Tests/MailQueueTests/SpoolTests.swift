import Foundation
import Testing
@testable import MailQueue

/// A fresh directory under /tmp, removed afterwards.
func withTemporaryDirectory(_ body: (String) throws -> Void) throws {
    var template = Array("\(NSTemporaryDirectory())/tern-mq-XXXXXX".utf8CString)
    let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
    try #require(made != nil)
    let path = String(cString: template)
    defer { try? FileManager.default.removeItem(atPath: path) }
    try body(path)
}

func filesIn(_ directory: String) throws -> [String] {
    try FileManager.default.contentsOfDirectory(atPath: directory).sorted()
}

/// Every file in the spool's sixteen queue directories, by name.
func queueFiles(_ spool: Spool) throws -> [String] {
    try Spool.hashNames.flatMap { try filesIn(spool.queuePath + "/" + $0) }.sorted()
}

func readBytes(_ path: String) throws -> [UInt8] {
    Array(try Data(contentsOf: URL(fileURLWithPath: path)))
}

@Suite struct SpoolTests {
    @Test func createsTheQueueDirectory() throws {
        try withTemporaryDirectory { dir in
            let spool = try Spool(path: dir + "/a/b/spool")
            var isDirectory: ObjCBool = false
            #expect(FileManager.default.fileExists(atPath: dir + "/a/b/spool/queue", isDirectory: &isDirectory))
            #expect(isDirectory.boolValue)
            #expect(spool.queuePath == dir + "/a/b/spool/queue")
            _ = try Spool(path: dir + "/a/b/spool")  // existing directory is fine
            _ = FileManager.default.createFile(atPath: dir + "/file", contents: Data())
            #expect(throws: SpoolError.self) { try Spool(path: dir + "/file") }
        }
    }

    @Test func filesGoToTheDirectoryOfTheLastHexDigit() throws {
        try withTemporaryDirectory { dir in
            let spool = try Spool(path: dir)
            #expect(try filesIn(spool.queuePath) == Spool.hashNames.sorted())
            for (n, name) in [(0x0A, "A"), (0x1F, "F"), (0x30, "0"), (0x29, "9")] {
                let id = QueueID(microseconds: UInt64(n))
                try spool.commit(try spool.create(id), envelope: sampleEnvelope(id: id))
                #expect(try filesIn(spool.queuePath + "/" + name) == [id.rawValue + ".env", id.rawValue + ".msg"])
                #expect(spool.messagePath(id) == spool.queuePath + "/" + name + "/" + id.rawValue + ".msg")
            }
            #expect(try spool.list().count == 4)
            #expect(spool.directorySyncCount >= 4)  // each commit waited for its own directory's fsync
        }
    }

    @Test func filesOfTheUnhashedLayoutAreMovedAtStartUp() throws {
        try withTemporaryDirectory { dir in
            let spool = try Spool(path: dir)
            // As a version before the hashing left them: directly in queue/.
            let id = QueueID(microseconds: 0x2B)
            try spool.commit(try spool.create(id), envelope: sampleEnvelope(id: id))
            for ext in [".env", ".msg"] {
                #expect(rename(spool.queuePath + "/B/" + id.rawValue + ext, spool.queuePath + "/" + id.rawValue + ext) == 0)
            }
            _ = FileManager.default.createFile(atPath: spool.queuePath + "/00000000000051.msg", contents: Data("x".utf8))
            #expect(try spool.list() == [])
            #expect(try spool.removeOrphans() == 1)  // the .msg without .env, once moved
            #expect(try spool.list() == [id])
            #expect(try queueFiles(spool) == [id.rawValue + ".env", id.rawValue + ".msg"])
            #expect(try filesIn(spool.queuePath) == Spool.hashNames.sorted())
            #expect(try spool.load(id).id == id)
        }
    }

    @Test func anEnvelopeCutShortByACrashIsRemovedAtStartUpNotOnLoad() throws {
        try withTemporaryDirectory { dir in
            let spool = try Spool(path: dir)
            let kept = QueueID(microseconds: 0x11)
            try spool.commit(try spool.create(kept), envelope: sampleEnvelope(id: kept))
            // What a crash in the middle of a first commit can leave: the .env without its end line, or empty.
            for (n, record) in [(0x21, Array(EnvelopeRecord.encode(sampleEnvelope(id: QueueID(microseconds: 0x21))).dropLast(4))),
                                (0x31, [UInt8]()), (0x51, [UInt8](repeating: 0, count: 200))] {
                let id = QueueID(microseconds: UInt64(n))
                let file = try spool.create(id)
                try file.write(Array("data\r\n".utf8))
                spool.discard(file)
                _ = FileManager.default.createFile(atPath: spool.messagePath(id), contents: Data("data\r\n".utf8))
                _ = FileManager.default.createFile(atPath: spool.envelopePath(id), contents: Data(record))
                #expect(try spool.list().contains(id))
                // At run time the same bytes may be a commit still being written: load reports, never deletes.
                #expect(throws: SpoolError.self) { try spool.load(id) }
                #expect(FileManager.default.fileExists(atPath: spool.envelopePath(id)))
                #expect(FileManager.default.fileExists(atPath: spool.messagePath(id)))
            }
            #expect(try spool.removeOrphans() == 6)  // three .env and their three .msg
            #expect(try spool.list() == [kept])
            // At start-up, before anything lists the queue, the same cases go with their data files.
            for n in [0x61, 0x71] {
                let id = QueueID(microseconds: UInt64(n))
                _ = FileManager.default.createFile(atPath: spool.messagePath(id), contents: Data("data\r\n".utf8))
                _ = FileManager.default.createFile(atPath: spool.envelopePath(id), contents: Data(n == 0x61 ? [] : Array("tern-envelope\t1\nid\t".utf8)))
            }
            #expect(try spool.list().count == 3)
            #expect(try spool.removeOrphans() == 4)
            #expect(try spool.list() == [kept])
            #expect(try queueFiles(spool) == [kept.rawValue + ".env", kept.rawValue + ".msg"])
            // A complete record that does not decode is not a torn write: it stays for a person to look at.
            let odd = QueueID(microseconds: 0x41)
            try spool.commit(try spool.create(odd), envelope: sampleEnvelope(id: odd))
            _ = FileManager.default.createFile(atPath: spool.envelopePath(odd), contents: Data("tern-envelope\t9\nend\n".utf8))
            #expect(throws: EnvelopeRecordError.self) { try spool.load(odd) }
            #expect(FileManager.default.fileExists(atPath: spool.envelopePath(odd)))
        }
    }

    @Test func readingTheQueueWhileMessagesAreCommittedLosesNone() throws {
        try withTemporaryDirectory { dir in
            let spool = try Spool(path: dir)
            let done = NSCondition()
            var finished = false
            // A reader like the admin endpoint: lists and loads over and over while commits run.
            let reader = Thread {
                while true {
                    done.lock(); let stop = finished; done.unlock()
                    if stop { return }
                    for id in (try? spool.list()) ?? [] { _ = try? spool.load(id) }
                }
            }
            reader.start()
            var ids: [QueueID] = []
            for n in 1...200 {
                let id = QueueID(microseconds: UInt64(n))
                let file = try spool.create(id)
                try file.write(Array("message \(n)\r\n".utf8))
                try spool.commit(file, envelope: sampleEnvelope(id: id))
                ids.append(id)
            }
            done.lock(); finished = true; done.unlock()
            while !reader.isFinished { usleep(1000) }
            #expect(try spool.list() == ids)
            for id in ids { #expect(try spool.load(id).id == id) }
        }
    }

    @Test func commitThenListLoadAndReadBack() throws {
        try withTemporaryDirectory { dir in
            let spool = try Spool(path: dir)
            let id = QueueID(microseconds: 1_700_000_000_123_456)
            let file = try spool.create(id)
            let header = Array("Subject: hi\r\n\r\n".utf8)
            let body = [UInt8]((0..<3_000_000).map { UInt8(truncatingIfNeeded: $0 % 251) })
            try file.write(header)
            try body.withUnsafeBytes { try file.write($0) }
            #expect(file.size == header.count + body.count)

            var envelope = sampleEnvelope(id: id)
            envelope.size = 0  // commit fills it in from the file
            let stored = try spool.commit(file, envelope: envelope)
            #expect(stored.size == header.count + body.count)

            #expect(try spool.list() == [id])
            #expect(try spool.load(id) == stored)
            #expect(try readBytes(spool.messagePath(id)) == header + body)
            #expect(try queueFiles(spool) == ["060A2418202240.env", "060A2418202240.msg"])
            #expect(throws: SpoolError.self) { try file.write([1]) }  // closed by commit
            #expect(throws: SpoolError.self) { try spool.commit(file, envelope: envelope) }
        }
    }

    @Test func listIsSortedAndIgnoresOtherFiles() throws {
        try withTemporaryDirectory { dir in
            let spool = try Spool(path: dir)
            var generator = QueueIDGenerator()
            var ids: [QueueID] = []
            for now: UInt64 in [500, 100, 900, 300] {
                let id = generator.next(nowMicroseconds: now)
                ids.append(id)
                try spool.commit(try spool.create(id), envelope: sampleEnvelope(id: id))
            }
            _ = try spool.create(generator.next(nowMicroseconds: 2_000))  // receiving, not queued
            _ = FileManager.default.createFile(atPath: spool.queuePath + "/0/README.env", contents: Data())
            #expect(try spool.list() == ids.sorted())
            #expect(try spool.list().count == 4)
        }
    }

    @Test func discardLeavesNothing() throws {
        try withTemporaryDirectory { dir in
            let spool = try Spool(path: dir)
            let file = try spool.create(QueueID(microseconds: 1))
            try file.write(Array(repeating: 0x41, count: 10_000))
            #expect(try queueFiles(spool) == ["00000000000001.msg"])
            spool.discard(file)
            #expect(try queueFiles(spool) == [])
            spool.discard(file)  // twice is harmless
            #expect(try queueFiles(spool) == [])
            #expect(try spool.list() == [])
        }
    }

    @Test func discardAfterAFailedCommitLeavesNothing() throws {
        try withTemporaryDirectory { dir in
            let spool = try Spool(path: dir)
            let file = try spool.create(QueueID(microseconds: 1))
            #expect(throws: SpoolError.self) {
                try spool.commit(file, envelope: sampleEnvelope(id: QueueID(microseconds: 2)))
            }
            spool.discard(file)
            #expect(try queueFiles(spool) == [])
        }
    }

    @Test func discardAfterCommitKeepsTheMessage() throws {
        try withTemporaryDirectory { dir in
            let spool = try Spool(path: dir)
            let id = QueueID(microseconds: 7)
            let file = try spool.create(id)
            try spool.commit(file, envelope: sampleEnvelope(id: id))
            spool.discard(file)
            #expect(try spool.list() == [id])
            #expect(FileManager.default.fileExists(atPath: spool.messagePath(id)))
        }
    }

    @Test func updateRewritesTheEnvelopeAndRemoveDeletesBothFiles() throws {
        try withTemporaryDirectory { dir in
            let spool = try Spool(path: dir)
            let id = QueueID(microseconds: 9)
            let file = try spool.create(id)
            try file.write(Array("data\r\n".utf8))
            var envelope = try spool.commit(file, envelope: sampleEnvelope(id: id))
            envelope.recipients[0].state = .delivered
            envelope.recipients[0].lastReply = "250 2.0.0 Ok"
            envelope.recipients[1].state = .bounced
            envelope.attempts = 2
            envelope.nextAttempt = 1_700_001_000.25
            try spool.update(envelope)
            #expect(try spool.load(id) == envelope)
            #expect(try spool.load(id).hasPendingRecipients == false)
            #expect(try queueFiles(spool) == ["00000000000009.env", "00000000000009.msg"])

            try spool.remove(id)
            #expect(try queueFiles(spool) == [])
            #expect(try spool.list() == [])
            try spool.remove(id)  // already gone is fine
            #expect(throws: SpoolError.self) { try spool.load(id) }
        }
    }

    @Test func loadRejectsABrokenOrMisnamedEnvelope() throws {
        try withTemporaryDirectory { dir in
            let spool = try Spool(path: dir)
            let id = QueueID(microseconds: 10)
            _ = FileManager.default.createFile(atPath: spool.envelopePath(id), contents: Data("garbage\n".utf8))
            #expect(throws: EnvelopeRecordError.self) { try spool.load(id) }
            let other = EnvelopeRecord.encode(sampleEnvelope(id: QueueID(microseconds: 11)))
            _ = FileManager.default.createFile(atPath: spool.envelopePath(id), contents: Data(other))
            #expect(throws: SpoolError.self) { try spool.load(id) }
        }
    }

    @Test func removeOrphansKeepsCommittedMessages() throws {
        try withTemporaryDirectory { dir in
            let spool = try Spool(path: dir)
            let kept = QueueID(microseconds: 100)
            let file = try spool.create(kept)
            try file.write(Array("kept\r\n".utf8))
            try spool.commit(file, envelope: sampleEnvelope(id: kept))

            let partial = try spool.create(QueueID(microseconds: 200))  // a crash while receiving
            try partial.write(Array("half a mess".utf8))
            _ = FileManager.default.createFile(atPath: spool.queuePath + "/C/00000000000300.env.tmp",
                                           contents: Data("tern-envelope\t1\nid".utf8))  // a crash in commit
            _ = FileManager.default.createFile(atPath: spool.queuePath + "/4/00000000000064.env.tmp",
                                           contents: Data())  // an update of `kept` cut short

            #expect(try spool.removeOrphans() == 3)
            #expect(try queueFiles(spool) == ["00000000000064.env", "00000000000064.msg"])
            #expect(try spool.load(kept).recipients.count == 2)
            #expect(try readBytes(spool.messagePath(kept)) == Array("kept\r\n".utf8))
            #expect(try spool.removeOrphans() == 0)
        }
    }

    @Test func secondLockOnTheSameSpoolFails() throws {
        try withTemporaryDirectory { dir in
            let first = try Spool(path: dir)
            let second = try Spool(path: dir)
            try first.lock()
            try first.lock()  // again on the same instance: still ours
            let error = try #require(throws: SpoolError.self) { try second.lock() }
            #expect(error.errno == EWOULDBLOCK)
            #expect(error.description.contains("in use by another tern instance"))
            #expect(error.description.contains(dir))
            first.unlock()
            try second.lock()
            #expect(throws: SpoolError.self) { try first.lock() }
        }
    }

    @Test func createRefusesAnExistingId() throws {
        try withTemporaryDirectory { dir in
            let spool = try Spool(path: dir)
            let id = QueueID(microseconds: 1_000)
            let file = try spool.create(id)
            try file.write(Array("original".utf8))
            try spool.commit(file, envelope: sampleEnvelope(id: id))

            // A restart after the clock went back hands out the same id again.
            var generator = QueueIDGenerator()
            let again = generator.next(nowMicroseconds: 1_000)
            #expect(again == id)
            let error = try #require(throws: SpoolError.self) { try spool.create(again) }
            #expect(error.isAlreadyExists)
            #expect(error.path == spool.messagePath(id))
            #expect(try readBytes(spool.messagePath(id)) == Array("original".utf8))

            let retry = generator.next(nowMicroseconds: 1_000)
            #expect(retry != id)
            let fresh = try spool.create(retry)
            #expect(fresh.id == retry)
        }
    }

    /// 32 threads commit at once: every message is queued and loadable, and the directory fsyncs are
    /// shared (group commit) rather than one per commit.
    @Test func directoryFsyncIsSharedUnderLoad() throws {
        try withTemporaryDirectory { dir in
            let spool = try Spool(path: dir)
            let threads = 32, perThread = 10
            var generator = QueueIDGenerator()
            let ids = (0..<threads * perThread).map { _ in generator.next(nowMicroseconds: 1_700_000_000_000_000) }
            let lock = NSLock()
            nonisolated(unsafe) var errors: [String] = []
            let group = DispatchGroup()
            for t in 0..<threads {
                group.enter()
                Thread {
                    for i in 0..<perThread {
                        let id = ids[t * perThread + i]
                        do {
                            let file = try spool.create(id)
                            try file.write(Array("m \(id)\r\n".utf8))
                            try spool.commit(file, envelope: sampleEnvelope(id: id))
                        } catch {
                            lock.lock(); errors.append("\(id): \(error)"); lock.unlock()
                        }
                    }
                    group.leave()
                }.start()
            }
            #expect(group.wait(timeout: .now() + 120) == .success, "commits did not finish: deadlock?")
            #expect(errors == [])
            #expect(try spool.list() == ids)
            for id in ids { #expect(try spool.load(id).id == id) }
            #expect(spool.directorySyncCount <= ids.count)
            #expect(spool.directorySyncCount >= 1)
        }
    }

    @Test func commitsFromEightThreadsAtOnce() throws {
        try withTemporaryDirectory { dir in
            let spool = try Spool(path: dir)
            let threads = 8, perThread = 25
            var generator = QueueIDGenerator()
            let ids = (0..<threads * perThread).map { _ in generator.next(nowMicroseconds: 1_700_000_000_000_000) }
            let failures = NSLock()
            nonisolated(unsafe) var errors: [String] = []

            DispatchQueue.concurrentPerform(iterations: threads) { thread in
                for i in 0..<perThread {
                    let id = ids[thread * perThread + i]
                    do {
                        let file = try spool.create(id)
                        try file.write(Array("message \(id) from thread \(thread)\r\n".utf8))
                        var envelope = sampleEnvelope(id: id)
                        envelope.sender = "thread\(thread)@example.org"
                        try spool.commit(file, envelope: envelope)
                    } catch {
                        failures.lock(); errors.append("\(id): \(error)"); failures.unlock()
                    }
                }
            }

            #expect(errors == [])
            #expect(try spool.list() == ids)
            for (index, id) in ids.enumerated() {
                let thread = index / perThread
                let expected = Array("message \(id) from thread \(thread)\r\n".utf8)
                let envelope = try spool.load(id)
                #expect(envelope.sender == "thread\(thread)@example.org")
                #expect(envelope.size == expected.count)
                #expect(try readBytes(spool.messagePath(id)) == expected)
            }
            #expect(try queueFiles(spool).count == 2 * ids.count)
        }
    }
}

@Suite struct SpoolPrependTests {
    @Test func prefixGoesInFrontAndTheCommitTakesTheNewFile() throws {
        try withTemporaryDirectory { dir in
            let spool = try Spool(path: dir)
            let id = QueueID(microseconds: 0x42)
            let file = try spool.create(id)
            let body = (0..<3_000_000).map { UInt8(truncatingIfNeeded: $0 % 251) }
            try file.write(body)
            let prefix = Array("DKIM-Signature: v=1\r\n".utf8)
            let new = try spool.prepend(prefix, to: file)
            #expect(new.size == prefix.count + body.count)
            let stored = try spool.commit(new, envelope: sampleEnvelope(id: id))
            #expect(stored.size == prefix.count + body.count)
            #expect(try spool.readMessage(id) == prefix + body)
            #expect(try queueFiles(spool) == [id.rawValue + ".env", id.rawValue + ".msg"])
        }
    }

    @Test func aLeftOverTemporaryFileIsAnOrphan() throws {
        try withTemporaryDirectory { dir in
            let spool = try Spool(path: dir)
            let id = QueueID(microseconds: 0x43)
            try spool.commit(try spool.create(id), envelope: sampleEnvelope(id: id))
            _ = FileManager.default.createFile(atPath: spool.messagePath(id) + ".tmp", contents: Data([1, 2]))
            #expect(try spool.removeOrphans() == 1)
            #expect(try queueFiles(spool) == [id.rawValue + ".env", id.rawValue + ".msg"])
        }
    }
}
