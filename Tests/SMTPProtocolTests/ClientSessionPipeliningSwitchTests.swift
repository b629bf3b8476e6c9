import Testing
@testable import SMTPProtocol

/// `usePipelining = false` (tern blast --no-pipelining): one command at a time even when the next hop
/// offers PIPELINING.
@Suite struct ClientSessionPipeliningSwitchTests {
    static let ehlo = Array("220 mx ESMTP\r\n".utf8)
    static let caps = Array("250-mx\r\n250-PIPELINING\r\n250 8BITMIME\r\n".utf8)

    func ready(pipelining: Bool) -> ClientSession {
        var s = ClientSession(hostname: "blast.test")
        s.usePipelining = pipelining
        _ = s.receive(Self.ehlo)
        _ = s.receive(Self.caps)
        #expect(s.phase == .ready)
        #expect(s.capabilities?.pipelining == true)
        return s
    }

    static func sent(_ actions: [ClientAction]) -> String {
        actions.flatMap(\.wirePieces).map { String(decoding: $0, as: UTF8.self) }.joined()
    }

    @Test func offSendsOneCommandPerReply() {
        var s = ready(pipelining: false)
        let t = OutboundTransaction(sender: "a@x", recipients: ["b@y", "c@y"], size: 3)
        #expect(Self.sent(s.send(t, message: Array("hi\r\n".utf8))) == "MAIL FROM:<a@x>\r\n")
        #expect(Self.sent(s.receive(Array("250 ok\r\n".utf8))) == "RCPT TO:<b@y>\r\n")
        #expect(Self.sent(s.receive(Array("250 ok\r\n".utf8))) == "RCPT TO:<c@y>\r\n")
        #expect(Self.sent(s.receive(Array("250 ok\r\n".utf8))) == "DATA\r\n")
        #expect(Self.sent(s.receive(Array("354 go\r\n".utf8))) == "hi\r\n.\r\n")
        let end = s.receive(Array("250 queued\r\n".utf8))
        #expect(end.contains { if case .transactionFinished = $0 { true } else { false } })
        #expect(s.phase == .ready)
    }

    @Test func onSendsTheGroupInOneWrite() {
        var s = ready(pipelining: true)
        let t = OutboundTransaction(sender: "a@x", recipients: ["b@y", "c@y"], size: 3)
        #expect(Self.sent(s.send(t, message: Array("hi\r\n".utf8)))
                == "MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nRCPT TO:<c@y>\r\nDATA\r\n")
    }
}

/// `send(_:wireData:)`: a message already in wire form goes out as is after the 354.
@Suite struct ClientSessionWireDataTests {
    @Test func wireDataIsSentUnchanged() {
        for pipelining in [true, false] {
            var s = ClientSessionPipeliningSwitchTests().ready(pipelining: pipelining)
            let wire = Array("Subject: x\r\n\r\n..dot\r\n.\r\n".utf8)
            let t = OutboundTransaction(sender: "a@x", recipients: ["b@y"], size: 20)
            var sent = ClientSessionPipeliningSwitchTests.sent(s.send(t, wireData: wire))
            if !pipelining {
                sent += ClientSessionPipeliningSwitchTests.sent(s.receive(Array("250 ok\r\n".utf8)))
                sent += ClientSessionPipeliningSwitchTests.sent(s.receive(Array("250 ok\r\n".utf8)))
            }
            #expect(sent == "MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n")
            let afterData = pipelining
                ? ClientSessionPipeliningSwitchTests.sent(s.receive(Array("250 ok\r\n250 ok\r\n354 go\r\n".utf8)))
                : ClientSessionPipeliningSwitchTests.sent(s.receive(Array("354 go\r\n".utf8)))
            #expect(afterData == "Subject: x\r\n\r\n..dot\r\n.\r\n")
            let end = s.receive(Array("250 queued\r\n".utf8))
            #expect(end.contains { if case .transactionFinished(let o) = $0 { o.dataReply?.code == 250 } else { false } })
        }
    }
}
