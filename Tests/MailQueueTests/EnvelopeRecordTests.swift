import Foundation
import Testing
import Randomness
@testable import MailQueue

func sampleEnvelope(id: QueueID = QueueID(microseconds: 1_700_000_000_123_456)) -> Envelope {
    Envelope(
        id: id, sender: "alice@example.org",
        recipients: [Recipient(address: "bob@example.net"),
                     Recipient(address: "carol@example.net", state: .deferred, lastReply: "451 4.3.0 try later")],
        priority: 0, arrival: 1_700_000_000.123456, attempts: 1, nextAttempt: 1_700_000_300.5, size: 1234,
        bodyType: "8BITMIME", smtputf8: false,
        client: ClientInfo(ip: "192.0.2.7", helo: "mail.example.org", reverseName: "mx.example.org",
                           protocolName: "ESMTP"))
}

let sampleRecord = """
    tern-envelope\t1
    id\t060A2418202240
    arrival\t1700000000.123456
    sender\talice@example.org
    priority\t0
    size\t1234
    body\t8BITMIME
    smtputf8\t0
    client\t192.0.2.7
    helo\tmail.example.org
    rdns\tmx.example.org
    protocol\tESMTP
    attempts\t1
    next-attempt\t1700000300.500000
    rcpt\tpending\tbob@example.net
    rcpt\tdeferred\tcarol@example.net\t451 4.3.0 try later
    end

    """

@Suite struct EnvelopeRecordTests {
    @Test func encodesTheDocumentedFormatExactly() {
        #expect(String(decoding: EnvelopeRecord.encode(sampleEnvelope()), as: UTF8.self) == sampleRecord)
    }

    @Test func optionalLinesAreOmittedWhenNil() throws {
        var e = sampleEnvelope()
        e.bodyType = nil
        e.client.reverseName = nil
        e.recipients[1].lastReply = nil
        let text = String(decoding: EnvelopeRecord.encode(e), as: UTF8.self)
        #expect(!text.contains("body\t"))
        #expect(!text.contains("rdns\t"))
        #expect(text.contains("\nrcpt\tdeferred\tcarol@example.net\nend\n"))
        #expect(try EnvelopeRecord.decode(Array(text.utf8)) == e)
    }

    @Test func roundTripsUnusualAddressesAndManyRecipients() throws {
        let states = RecipientState.allCases
        let recipients = (0..<500).map { i in
            Recipient(address: i % 3 == 0 ? "\"john q. doe \(i)\"@example.com" : "用户\(i)@例子.广告",
                      state: states[i % states.count],
                      lastReply: i % 4 == 0 ? nil : (i % 4 == 1 ? "" : "250 2.0.0 Ok: queued as ÄÖÜ \(i)"))
        }
        let e = Envelope(id: QueueID(microseconds: 42), sender: "", recipients: recipients, priority: -9,
                         arrival: 0, attempts: 17, nextAttempt: 86_400.000001, size: 0, bodyType: nil,
                         smtputf8: true,
                         client: ClientInfo(ip: "2001:db8::1", helo: "[IPv6:2001:db8::1]", reverseName: nil,
                                            protocolName: "SMTP"))
        let bytes = EnvelopeRecord.encode(e)
        #expect(String(decoding: bytes, as: UTF8.self).contains("\nsender\t\n"))
        let decoded = try EnvelopeRecord.decode(bytes)
        #expect(decoded == e)
        #expect(decoded.sender == "")
        #expect(decoded.recipients[0].address == "\"john q. doe 0\"@example.com")
        #expect(decoded.recipients[1].lastReply == "")
        #expect(decoded.recipients[4].lastReply == nil)
    }

    @Test func secondsKeepMicrosecondPrecision() throws {
        var rng = SplitMix64(seed: 77)  // seeded: a failure replays
        for _ in 0..<2_000 {
            let micros = Int64.random(in: 0...4_102_444_800_000_000, using: &rng)  // up to year 2100
            var e = sampleEnvelope()
            e.arrival = Double(micros) / 1_000_000
            e.nextAttempt = Double(micros + 1) / 1_000_000
            let decoded = try EnvelopeRecord.decode(EnvelopeRecord.encode(e))
            #expect(decoded.arrival == e.arrival, "arrival \(micros)")
            #expect(decoded.nextAttempt == e.nextAttempt, "next-attempt \(micros + 1)")
        }
    }

    @Test(arguments: [
        (0.0, "0.000000"), (1.5, "1.500000"), (-1.5, "-1.500000"), (0.0000004, "0.000000"),
        (0.0000005, "0.000001"), (1_700_000_000.000001, "1700000000.000001"), (59.999_999_6, "60.000000"),
        (Double.nan, "0.000000"), (Double.infinity, "0.000000"),
    ])
    func formatsSeconds(value: Double, expected: String) {
        var out: [UInt8] = []
        EnvelopeRecord.appendSeconds(&out, value)
        #expect(String(decoding: out, as: UTF8.self) == expected)
    }

    @Test func tabsAndLineBreaksInValuesBecomeSpaces() throws {
        var e = sampleEnvelope()
        e.sender = "a\tb@example.org"
        e.client.helo = "evil\nrcpt\tpending\tvictim@example.com"
        e.recipients[1].lastReply = "550-5.1.1 no such user\r\n550 5.1.1 really"
        let decoded = try EnvelopeRecord.decode(EnvelopeRecord.encode(e))
        #expect(decoded.sender == "a b@example.org")
        #expect(decoded.client.helo == "evil rcpt pending victim@example.com")
        #expect(decoded.recipients.count == 2)
        #expect(decoded.recipients[1].lastReply == "550-5.1.1 no such user  550 5.1.1 really")
    }

    @Test func everyTruncationIsRejected() {
        let bytes = Array(sampleRecord.utf8)
        for length in 0..<bytes.count {
            #expect(throws: EnvelopeRecordError.self, "prefix of \(length) bytes") {
                try EnvelopeRecord.decode(Array(bytes[..<length]))
            }
        }
    }

    @Test func truncationErrorsNameTheEndLine() {
        let noEnd = sampleRecord.replacingOccurrences(of: "end\n", with: "")
        #expect(decodeError(noEnd)?.field == "end")
        #expect(decodeError(String(sampleRecord.dropLast()))?.field == "end")
    }

    @Test(arguments: [
        ("tern-envelope\t1\n", "tern-envelope\t2\n", "tern-envelope"),
        ("tern-envelope\t1\n", "", "tern-envelope"),
        ("tern-envelope\t1\n", "From alice@example.org\n", "tern-envelope"),
        ("helo\tmail.example.org\n", "", "helo"),
        ("id\t060A2418202240\n", "", "id"),
        ("id\t060A2418202240\n", "id\t../../etc/passwd\n", "id"),
        ("sender\talice@example.org\n", "", "sender"),
        ("priority\t0\n", "priority\tzero\n", "priority"),
        ("priority\t0\n", "priority\t10\n", "priority"),
        ("priority\t0\n", "priority\t+1\n", "priority"),
        ("size\t1234\n", "size\t12 34\n", "size"),
        ("size\t1234\n", "size\t-1\n", "size"),
        ("size\t1234\n", "size\t99999999999999999999999\n", "size"),
        ("attempts\t1\n", "attempts\t\n", "attempts"),
        ("arrival\t1700000000.123456\n", "arrival\t1700000000.1.2\n", "arrival"),
        ("arrival\t1700000000.123456\n", "arrival\t1700000000\n", "arrival"),
        ("arrival\t1700000000.123456\n", "arrival\t1e9.000000\n", "arrival"),
        ("next-attempt\t1700000300.500000\n", "next-attempt\t1700000300.5000000\n", "next-attempt"),
        ("smtputf8\t0\n", "smtputf8\tyes\n", "smtputf8"),
        ("rcpt\tpending\tbob@example.net\n", "rcpt\tsent\tbob@example.net\n", "rcpt"),
        ("rcpt\tpending\tbob@example.net\n", "rcpt\tbob@example.net\n", "rcpt"),
        ("client\t192.0.2.7\n", "client\t192.0.2.7\nclient\t192.0.2.8\n", "client"),
        ("client\t192.0.2.7\n", "client 192.0.2.7\n", "client 192.0.2.7"),
        ("helo\tmail.example.org\n", "helo\tmail.example.org\ncolour\tblue\n", "colour"),
        ("end\n", "end\nrcpt\tpending\tmallory@example.com\n", "end"),
        ("end\n", "end\textra\n", "end"),
        ("protocol\tESMTP\n", "protocol\tESMTP\n\n", "line 13"),
    ])
    func garbledRecordsNameTheField(original: String, replacement: String, field: String) {
        #expect(sampleRecord.contains(original))
        let garbled = sampleRecord.replacingOccurrences(of: original, with: replacement)
        let error = decodeError(garbled)
        #expect(error?.field == field, "\(String(describing: error))")
    }

    @Test func invalidUTF8IsRejected() {
        var bytes = Array(sampleRecord.utf8)
        let at = bytes.firstIndex(of: UInt8(ascii: "@"))!
        bytes[at] = 0xFF
        #expect(throws: EnvelopeRecordError.self) { try EnvelopeRecord.decode(bytes) }
    }

    @Test func decodesTheSampleRecord() throws {
        #expect(try EnvelopeRecord.decode(Array(sampleRecord.utf8)) == sampleEnvelope())
    }

    private func decodeError(_ text: String) -> EnvelopeRecordError? {
        do {
            _ = try EnvelopeRecord.decode(Array(text.utf8))
            return nil
        } catch {
            return error as? EnvelopeRecordError
        }
    }
}

@Suite struct EnvelopeRecordDSNTests {
    func dsnEnvelope() -> Envelope {
        var e = sampleEnvelope()
        e.ret = .headers
        e.envid = "QQ+2B314159"
        e.recipients[0].notify = [.success, .delay]
        e.recipients[0].orcpt = "rfc822;Bob+2B@example.net"
        e.recipients[1].notify = .never
        return e
    }

    @Test func dsnFieldsAreWrittenAndReadBack() throws {
        let text = String(decoding: EnvelopeRecord.encode(dsnEnvelope()), as: UTF8.self)
        #expect(text.contains("ret\tHDRS\nenvid\tQQ+2B314159\nrcpt\tpending\tbob@example.net\n"
                              + "notify\tSUCCESS,DELAY\norcpt\trfc822;Bob+2B@example.net\n"
                              + "rcpt\tdeferred\tcarol@example.net\t451 4.3.0 try later\nnotify\tNEVER\nend\n"))
        #expect(try EnvelopeRecord.decode(EnvelopeRecord.encode(dsnEnvelope())) == dsnEnvelope())
    }

    @Test func requireTLSIsWrittenAndReadBack() throws {
        var e = sampleEnvelope()
        e.requireTLS = true
        let bytes = EnvelopeRecord.encode(e)
        #expect(String(decoding: bytes, as: UTF8.self).contains("requiretls\t1\n"))
        #expect(try EnvelopeRecord.decode(bytes).requireTLS)
        #expect(try !EnvelopeRecord.decode(Array(sampleRecord.utf8)).requireTLS)
    }

    @Test func tlsOptionalIsWrittenAndReadBack() throws {
        var e = sampleEnvelope()
        e.tlsOptional = true
        let bytes = EnvelopeRecord.encode(e)
        #expect(String(decoding: bytes, as: UTF8.self).contains("tlsoptional\t1\n"))
        #expect(try EnvelopeRecord.decode(bytes).tlsOptional)
        #expect(try !EnvelopeRecord.decode(Array(sampleRecord.utf8)).tlsOptional)
        #expect(!String(decoding: EnvelopeRecord.encode(sampleEnvelope()), as: UTF8.self).contains("tlsoptional"))
    }

    @Test func messageIDIsWrittenAndReadBack() throws {
        var e = sampleEnvelope()
        e.messageID = "<a1.b2@example.org>"
        let bytes = EnvelopeRecord.encode(e)
        #expect(String(decoding: bytes, as: UTF8.self).contains("msgid\t<a1.b2@example.org>\n"))
        #expect(try EnvelopeRecord.decode(bytes).messageID == "<a1.b2@example.org>")
        #expect(try EnvelopeRecord.decode(Array(sampleRecord.utf8)).messageID == nil)
    }

    @Test func aRecordFromBeforeDSNReadsAsBefore() throws {
        let e = try EnvelopeRecord.decode(Array(sampleRecord.utf8))
        #expect(e.ret == nil && e.envid == nil)
        #expect(e.recipients.allSatisfy { $0.notify == nil && $0.orcpt == nil })
    }

    @Test(arguments: [
        ("notify\tSUCCESS\nrcpt\tpending\tb@x.test\n", "notify"),               // before any rcpt
        ("rcpt\tpending\tb@x.test\nnotify\tNEVER\nnotify\tNEVER\n", "notify"),  // twice for one
        ("rcpt\tpending\tb@x.test\nnotify\tSOMETIMES\n", "notify"),
        ("rcpt\tpending\tb@x.test\norcpt\t\n", "orcpt"),
        ("ret\tPARTIAL\nrcpt\tpending\tb@x.test\n", "ret"),
    ])
    func badDSNLinesNameTheField(lines: String, field: String) {
        let head = sampleRecord.components(separatedBy: "rcpt\t")[0]
        do {
            _ = try EnvelopeRecord.decode(Array((head + lines + "end\n").utf8))
            Issue.record("accepted \(lines)")
        } catch let e as EnvelopeRecordError {
            #expect(e.field == field, "\(e)")
        } catch {
            Issue.record("\(error)")
        }
    }
}
