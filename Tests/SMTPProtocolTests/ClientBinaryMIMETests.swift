import Testing
@testable import SMTPProtocol

// BODY=BINARYMIME out (RFC 3030 §3): only with BDAT, unchanged, to a next hop that offers BINARYMIME
// and CHUNKING; to any other a permanent 554 5.6.3 before anything is sent.

@Suite struct ClientBinaryMIMETests {
    /// Octets that are not lines: NUL, bare CR and LF, 0xFF, no CRLF at the end.
    static let message: [UInt8] = Array("Subject: bin\r\n\r\n".utf8) + [0, 13, 10, 10, 13, 0xFF, 46, 13, 10, 46]
    static let binary = OutboundTransaction(sender: "alice@example.org", recipients: ["bob@example.net"],
                                            size: message.count, bodyType: "BINARYMIME")

    func ready(_ ehlo: String, configure: (inout ClientSession) -> Void = { _ in }) -> ClientSession {
        var s = ClientSession(hostname: "relay.test")
        configure(&s)
        _ = s.receive(Array(clientGreeting.utf8))
        _ = s.receive(Array(ehlo.utf8))
        #expect(s.phase == .ready)
        return s
    }

    static let binaryEHLO = "250-mx.test\r\n250-PIPELINING\r\n250-BINARYMIME\r\n250 CHUNKING\r\n"

    @Test func readFromEHLO() {
        #expect(NextHopCapabilities(ehloReply: Reply(250, nil, ["mx", "binarymime"])).binaryMIME)
        #expect(!NextHopCapabilities(ehloReply: Reply(250, nil, ["mx", "CHUNKING"])).binaryMIME)
    }

    @Test func goesUnchangedWithBDAT() {
        var s = ready(Self.binaryEHLO)
        let first = s.send(Self.binary, message: Self.message)
        #expect(first == [.send(Array("MAIL FROM:<alice@example.org> BODY=BINARYMIME\r\nRCPT TO:<bob@example.net>\r\n".utf8))])
        let chunk = s.receive(Array("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n".utf8))
        // Not a byte repaired: the bare CR and LF stay as they are.
        #expect(chunk == [.send(Array("BDAT \(Self.message.count) LAST\r\n".utf8)), .sendChunk(Self.message)])
        let done = s.receive(Array("250 2.0.0 Ok\r\n".utf8))
        #expect(done.contains { if case .transactionFinished(let o) = $0 { o.dataReply?.code == 250 } else { false } })
    }

    /// useChunking = false switches BDAT off for other mail; a binary body has no other way to go.
    @Test func bdatEvenWhenChunkingIsSwitchedOff() {
        var s = ready(Self.binaryEHLO) { $0.useChunking = false }
        _ = s.send(Self.binary, message: Self.message)
        let chunk = s.receive(Array("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n".utf8))
        #expect(chunk.first == .send(Array("BDAT \(Self.message.count) LAST\r\n".utf8)))
    }

    @Test func refusedWhereNotOffered() {
        for ehlo in ["250-mx.test\r\n250-PIPELINING\r\n250 CHUNKING\r\n",  // CHUNKING only
                     "250-mx.test\r\n250-PIPELINING\r\n250 BINARYMIME\r\n",  // BINARYMIME without CHUNKING
                     "250-mx.test\r\n250 8BITMIME\r\n"] {
            var s = ready(ehlo)
            let actions = s.send(Self.binary, message: Self.message)
            // Nothing sent: the outcome is a synthetic permanent refusal, which bounces the message.
            #expect(!actions.contains { if case .send = $0 { true } else { false } }, "\(ehlo)")
            let refusal = Reply(554, "5.6.3", "The next hop does not support BINARYMIME, which this message requires")
            var expected = TransactionOutcome(mailReply: refusal, recipientReplies: [nil], dataReply: nil)
            expected.refusedHere = true
            expected.thisHostOnly = true  // another MX host may offer BINARYMIME
            #expect(actions.contains(.transactionFinished(expected)), "\(ehlo)")
            #expect(s.phase == .ready)
        }
    }

    /// An 8BITMIME message with the same kind of octets still has its line ends repaired for BDAT.
    @Test func eightBitStillRepaired() {
        var s = ready(Self.binaryEHLO + "")
        var t = Self.binary
        t.bodyType = "8BITMIME"
        _ = s.send(t, message: Array("Subject: x\r\n\r\na\nb\r\n".utf8))
        let chunk = s.receive(Array("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n".utf8))
        #expect(chunk.last == .sendChunk(Array("Subject: x\r\n\r\na\r\nb\r\n".utf8)))
    }
}
