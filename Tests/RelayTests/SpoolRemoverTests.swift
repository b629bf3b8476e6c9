import Foundation
import MailQueue
import Testing
import UVRuntime
@testable import Relay

/// The server stops only once the removals it started are on disk (SMTPServer.finishStopping waits for
/// `whenIdle`): otherwise the last batch's messages would be delivered again after the restart.
@Suite struct SpoolRemoverTests {
    @Test func whenIdleWaitsForTheBatchesThatWereQueued() throws {
        var template = Array("\(NSTemporaryDirectory())/tern-remover-XXXXXX".utf8CString)
        let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        try #require(made != nil)
        let dir = String(cString: template)
        defer { try? FileManager.default.removeItem(atPath: dir) }

        let spool = try Spool(path: dir)
        _ = try spool.recover()
        let ids = (0..<200).map { QueueID(microseconds: 1_700_000_000_000_000 + UInt64($0)) }
        let envelopes = ids.map { id in
            Envelope(id: id, sender: "a@b.test", recipients: [Recipient(address: "c@d.test")], priority: 0,
                     arrival: 1_700_000_000, nextAttempt: 1_700_000_000,
                     client: ClientInfo(ip: "127.0.0.1", helo: "x.test", protocolName: "ESMTP"))
        }
        _ = try spool.commit(journaling: envelopes.map { ($0, Array("Subject: x\r\n\r\nhi\r\n".utf8)) })
        #expect(try spool.list().count == 200)

        let loop = try EventLoop()
        defer { loop.close() }
        let remover = SpoolRemover(loop: loop, spool: spool)
        var removed = 0
        var listedWhenIdle: Int?
        var idleCalls = 0
        // Nothing queued: at once.
        remover.whenIdle { idleCalls += 1 }
        #expect(idleCalls == 1)
        for id in ids { remover.remove(id) { error in if error == nil { removed += 1 } } }
        remover.whenIdle {
            idleCalls += 1
            listedWhenIdle = try? spool.list().count
        }
        #expect(idleCalls == 1, "not before the removals ran")
        remover.close()
        var turns = 0
        while idleCalls < 2 && turns < 10_000 {  // bounded
            loop.runOnce(nowait: false)
            turns += 1
        }
        #expect(idleCalls == 2)
        #expect(removed == 200)
        #expect(listedWhenIdle == 0, "every message was out of the spool before the server may stop")
    }
}
