import Foundation
import Testing
@testable import MailQueue

/// The AUTH identity a message was submitted under (egress pools are chosen by it) is kept in the
/// envelope record, in its own files and in the journal; records written before it existed still load.
@Suite struct EnvelopeAuthTests {
    func authenticated(_ user: String = "alice", id: QueueID = QueueID(microseconds: 1_700_000_000_123_456)) -> Envelope {
        var e = sampleEnvelope(id: id)
        e.client.protocolName = "ESMTPA"
        e.client.authenticatedUser = user
        return e
    }

    @Test func theIdentityFollowsTheProtocolLine() throws {
        let e = authenticated()
        let text = String(decoding: EnvelopeRecord.encode(e), as: UTF8.self)
        #expect(text.contains("\nprotocol\tESMTPA\nauth\talice\nattempts\t1\n"))
        #expect(try EnvelopeRecord.decode(Array(text.utf8)) == e)
    }

    @Test func aRecordWrittenBeforeTheFieldExistedLoadsWithoutIdentity() throws {
        // sampleRecord is the format as the previous version wrote it: no auth line.
        let e = try EnvelopeRecord.decode(Array(sampleRecord.utf8))
        #expect(e.client.authenticatedUser == nil)
        #expect(e == sampleEnvelope())
        // And one without it is written as before, byte for byte.
        #expect(!String(decoding: EnvelopeRecord.encode(e), as: UTF8.self).contains("auth"))
    }

    @Test func unusualIdentitiesRoundTrip() throws {
        for user in ["alice@example.org", "Jörg Müller", "user with spaces", "\"quoted\""] {
            let e = authenticated(user)
            #expect(try EnvelopeRecord.decode(EnvelopeRecord.encode(e)).client.authenticatedUser == user)
        }
        // TAB, CR and LF cannot break the framing: they become spaces, as in every other value.
        let e = authenticated("a\tb\r\nc")
        #expect(try EnvelopeRecord.decode(EnvelopeRecord.encode(e)).client.authenticatedUser == "a b  c")
    }

    @Test func anEmptyOrRepeatedIdentityIsRefused() {
        let empty = sampleRecord.replacingOccurrences(of: "protocol\tESMTP\n", with: "protocol\tESMTP\nauth\t\n")
        #expect(throws: EnvelopeRecordError(field: "auth", reason: "malformed value \"\"")) {
            try EnvelopeRecord.decode(Array(empty.utf8))
        }
        let twice = sampleRecord.replacingOccurrences(of: "protocol\tESMTP\n",
                                                      with: "protocol\tESMTP\nauth\talice\nauth\tbob\n")
        #expect(throws: EnvelopeRecordError(field: "auth", reason: "appears twice")) {
            try EnvelopeRecord.decode(Array(twice.utf8))
        }
    }

    @Test func anOldEnvelopeFileInTheSpoolLoads() throws {
        try withTemporaryDirectory { dir in
            let spool = try Spool(path: dir)
            let id = sampleEnvelope().id
            _ = FileManager.default.createFile(atPath: spool.envelopePath(id), contents: Data(sampleRecord.utf8))
            _ = FileManager.default.createFile(atPath: spool.messagePath(id), contents: Data(count: 1234))
            let loaded = try spool.load(id)
            #expect(loaded.client.authenticatedUser == nil)
            #expect(loaded == sampleEnvelope())
        }
    }

    @Test func theIdentitySurvivesTheJournalARestartAndAMoveToItsOwnFiles() throws {
        try withTemporaryDirectory { dir in
            var stored: [Envelope] = []
            do {
                let spool = try Spool(path: dir)
                _ = try spool.recover()
                var plain = journaledEnvelope(1)
                plain.client.authenticatedUser = nil
                var submitted = journaledEnvelope(2)
                submitted.client.authenticatedUser = "bob"
                stored = try spool.commit(journaling: [(plain, journaledMessage(1)), (submitted, journaledMessage(2))])
                #expect(try spool.load(stored[1].id).client.authenticatedUser == "bob")
            }
            let spool = try Spool(path: dir)
            let (_, journaled) = try spool.recover()
            #expect(journaled.count == 2)
            #expect(try spool.load(stored[0].id).client.authenticatedUser == nil)
            var e = try spool.load(stored[1].id)
            #expect(e == stored[1])
            // A deferral moves it out of the journal into its own .env: the identity goes along.
            e.attempts = 1
            e.recipients[0].state = .deferred
            try spool.update(e)
            #expect(try queueFiles(spool).contains("\(e.id.rawValue).env"))
            #expect(try spool.load(e.id).client.authenticatedUser == "bob")
        }
    }
}
