import Randomness
import Testing
@testable import SMTPProtocol

/// After the 354 a message that needs no encoding goes out as `.sendMessage` with the caller's own
/// array; one that does goes out encoded as `.send`. Either way the next hop gets the same bytes.
@Suite struct ClientSessionMessagePiecesTests {
    static let ehlo = "250-mx.test\r\n250-PIPELINING\r\n250 SIZE 10240000\r\n"
    static let one = OutboundTransaction(sender: "a@x.test", recipients: ["b@y.test"], size: 10)

    func ready(pipelining: Bool = true) -> ClientSession {
        var s = ClientSession(hostname: "relay.test")
        _ = s.receive(Array(clientGreeting.utf8))
        _ = s.receive(Array((pipelining ? Self.ehlo : clientEHLOPlain).utf8))
        #expect(s.phase == .ready)
        return s
    }

    /// Sends `message` on a pipelining session and returns the actions that answer the 354.
    func actionsAfter354(_ message: [UInt8], wireReady: Bool = false) -> [ClientAction] {
        var s = ready()
        _ = s.send(Self.one, message: message, wireReady: wireReady)
        let actions = s.receive(Array("250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go\r\n".utf8))
        #expect(s.phase == .dataEnd)
        let end = s.receive(Array("250 2.0.0 queued\r\n".utf8))
        #expect(end == [.transactionFinished(TransactionOutcome(
            mailReply: Reply(250, "2.1.0", "ok"), recipientReplies: [Reply(250, "2.1.5", "ok")],
            dataReply: Reply(250, "2.0.0", "queued")))])
        return actions
    }

    static func storage(_ a: [UInt8]) -> UnsafePointer<UInt8>? { a.withUnsafeBufferPointer { $0.baseAddress } }

    static func bigCleanMessage() -> [UInt8] {
        var m = Array("Subject: big\r\n\r\n".utf8)
        for n in 0..<1400 { m += Array("line \(n): seventy-odd bytes of ordinary text, a.dot inside, nothing else\r\n".utf8) }
        return m
    }

    @Test func cleanMessageIsTheCallersArray() {
        let m = Self.bigCleanMessage()
        #expect(m.count > 100 * 1024)
        let actions = actionsAfter354(m)
        #expect(actions == [.sendMessage(m)])
        guard case .sendMessage(let sent)? = actions.first else { return }
        #expect(Self.storage(sent) == Self.storage(m), "the message was copied")
        #expect(actions.flatMap(\.wirePieces).joined().elementsEqual(referenceEncode(m)))
    }

    /// Said wire-ready by the receiving side: the same action and bytes as when checked here.
    @Test func aMessageKnownToBeWireReadyGoesOutTheSame() {
        let m = Self.bigCleanMessage()
        let known = actionsAfter354(m, wireReady: true)
        #expect(known == actionsAfter354(m))
        guard case .sendMessage(let sent)? = known.first else { return }
        #expect(Self.storage(sent) == Self.storage(m), "the message was copied")
    }

    @Test func messageNeedingEncodingGoesOutEncoded() {
        var m = Self.bigCleanMessage()
        m += Array(".dot at a line start\r\nbare LF\nno final line end".utf8)
        let actions = actionsAfter354(m)
        #expect(actions == [.send(referenceEncode(m))])
    }

    @Test func emptyMessageIsOnlyTheTerminator() {
        let actions = actionsAfter354([])
        #expect(actions == [.sendMessage([])])
        #expect(actions.flatMap(\.wirePieces).joined().elementsEqual(".\r\n".utf8))
    }

    @Test func wireDataIsTheCallersArray() {
        let wire = Self.bigCleanMessage() + ClientAction.endOfData
        var s = ready()
        _ = s.send(Self.one, wireData: wire)
        let actions = s.receive(Array("250 ok\r\n250 ok\r\n354 go\r\n".utf8))
        #expect(actions == [.send(wire)])
        guard case .send(let sent)? = actions.first else { return }
        #expect(Self.storage(sent) == Self.storage(wire), "the wire data was copied")
    }

    /// A server that answers MAIL, RCPT and DATA in one read although we do not pipeline: the RCPT and
    /// DATA commands go out before the message, in their own piece.
    @Test func commandsSoFarGoBeforeTheMessage() {
        var s = ready(pipelining: false)
        let m = Array("Subject: x\r\n\r\nhello\r\n".utf8)
        #expect(s.send(Self.one, message: m) == [.send(Array("MAIL FROM:<a@x.test> SIZE=10\r\n".utf8))])
        let actions = s.receive(Array("250 ok\r\n250 ok\r\n354 go\r\n".utf8))
        #expect(actions == [.send(Array("RCPT TO:<b@y.test>\r\nDATA\r\n".utf8)), .sendMessage(m)])
    }

    /// Whole conversations, each reply whole, byte by byte and split at every point (clientConverse),
    /// pipelined and not, two messages on one connection: the bytes on the wire are the reference
    /// encoding whichever path each message took.
    @Test func bothPathsPutTheSameBytesOnTheWire() {
        let messages = ["Subject: clean\r\n\r\nbody\r\n", ".starts with a dot\r\n", "bare\nLF\r\n",
                        "no final CRLF", "", "\r\n"]
        for first in messages {
            for second in messages {
                let wire = { (m: String) in String(decoding: referenceEncode(Array(m.utf8)), as: UTF8.self) }
                let pipelined = clientConverse(
                    [clientGreeting, clientEHLOPipelining, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n",
                     "250 2.0.0 one\r\n", "250 2.0.0 Ok\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n", "250 2.0.0 two\r\n"],
                    [(clientOne, first), (clientOne, second)])
                #expect(pipelined.sent == [
                    "EHLO relay.test\r\n",
                    "MAIL FROM:<alice@example.org> SIZE=33\r\nRCPT TO:<bob@example.net>\r\nDATA\r\n",
                    wire(first),
                    "RSET\r\nMAIL FROM:<alice@example.org> SIZE=33\r\nRCPT TO:<bob@example.net>\r\nDATA\r\n",
                    wire(second), "QUIT\r\n"])
                #expect(pipelined.outcomes.map { $0.dataReply?.code } == [250, 250])
                let plain = clientConverse(
                    [clientGreeting, clientEHLOPlain, "250 Ok\r\n", "250 Ok\r\n", "354 go\r\n", "250 one\r\n",
                     "250 reset\r\n", "250 Ok\r\n", "250 Ok\r\n", "354 go\r\n", "250 two\r\n"],
                    [(clientOne, first), (clientOne, second)])
                #expect(plain.sent == [
                    "EHLO relay.test\r\n", "MAIL FROM:<alice@example.org> SIZE=33\r\n",
                    "RCPT TO:<bob@example.net>\r\n", "DATA\r\n", wire(first),
                    "RSET\r\n", "MAIL FROM:<alice@example.org> SIZE=33\r\n", "RCPT TO:<bob@example.net>\r\n",
                    "DATA\r\n", wire(second), "QUIT\r\n"])
                #expect(plain.outcomes.map { $0.dataReply?.code } == [250, 250])
            }
        }
    }

    /// Random messages through a session: `.sendMessage` exactly when the message is wire-ready, and
    /// the reference encoding on the wire every time.
    @Test func randomMessagesTakeTheRightPath() {
        var rng = SplitMix64(seed: 99)
        let alphabet: [UInt8] = [13, 10, UInt8(ascii: "."), UInt8(ascii: "a")]
        var unencoded = 0
        for _ in 0..<500 {
            var m: [UInt8] = []
            for _ in 0..<Int(rng.next() % 8) {
                for _ in 0..<Int(rng.next() % 30) {
                    let r = rng.next()
                    m.append(r % 40 == 0 ? alphabet[Int((r >> 8) % 4)] : UInt8(ascii: "x"))
                }
                m += [13, 10]
            }
            let actions = actionsAfter354(m)
            #expect(actions.count == 1)
            if case .sendMessage = actions.first { unencoded += 1 }
            #expect((actions == [.sendMessage(m)]) == isWireReady(m), "message \(m)")
            #expect(actions.flatMap(\.wirePieces).joined().elementsEqual(referenceEncode(m)), "message \(m)")
        }
        #expect(unencoded > 100 && unencoded < 450)
    }
}
