// How DATA's decoded bytes are handed on: a message of up to a chunk as one array (with the relay's
// Received header in front when it asks in time), larger ones in chunks that never outgrow their
// buffer, and no buffer held outside DATA.

import Testing
@testable import SMTPProtocol

private func session() -> ServerSession {
    var s = ServerSession(config: ServerConfiguration(hostname: "relay.test"),
                          client: PeerInfo(ip: "127.0.0.1", trusted: true))
    _ = s.greeting()
    return s
}

private func starts(_ actions: [ServerAction]) -> [MessageStart] {
    actions.compactMap { if case .beginMessage(let start) = $0 { return start } else { return nil } }
}

private func chunks(_ actions: [ServerAction]) -> [[UInt8]] {
    actions.compactMap { if case .messageData(let b) = $0 { return b } else { return nil } }
}

/// A message of `size` bytes in 78-octet lines.
private func message(_ size: Int) -> [UInt8] {
    var out = Array("Subject: chunks\r\n\r\n".utf8)
    let line = Array((String(repeating: "y", count: 76) + "\r\n").utf8)
    while out.count + line.count <= size { out += line }
    return out
}

@Suite struct DataChunkTests {
    @Test func aMessageUnderAChunkArrivesAsOneArrayWithThePrefixInFront() throws {
        for size in [100, 100 * 1024, ServerSession.dataChunk - 1024] {
            var s = session()
            let begin = s.receive(Array(lines("EHLO x.test", "MAIL FROM:<a@b.test>", "RCPT TO:<c@d.test>", "DATA").utf8))
            let start = try #require(starts(begin).first)
            let received = Array("Received: from x.test\r\n\tby relay.test; now\r\n".utf8)
            let prefixed1 = s.prefixMessageData(received, for: start)
            #expect(prefixed1)
            #expect(s.dataOut.capacity >= ServerSession.dataReserve)
            let body = message(size)
            var got: [[UInt8]] = []
            var at = 0
            while at < body.count {  // reads of up to 64 KiB, as from the socket
                let end = min(body.count, at + 65536)
                got += chunks(s.receive(Array(body[at..<end])))
                at = end
            }
            let last = s.receive(Array(".\r\n".utf8))
            got += chunks(last)
            #expect(last.contains(.commitMessage))
            #expect(got.count == 1)
            #expect(got.first == received + body)
            // A small message is handed on in an array of about its size, not the 64 KiB DATA buffer
            // (it stays in memory in the journal batch and delivery's cache).
            if let only = got.first { #expect(only.capacity <= 2 * only.count + 4096, "size \(size)") }
            // Nothing is kept for the next message.
            #expect(s.dataOut.capacity == 0)
        }
    }

    @Test func largerMessagesComeInChunksThatNeverOutgrowTheirBuffer() throws {
        var s = session()
        let begin = s.receive(Array(lines("EHLO x.test", "MAIL FROM:<a@b.test>", "RCPT TO:<c@d.test>", "DATA").utf8))
        let prefixed2 = s.prefixMessageData(Array("Received: x\r\n".utf8), for: try #require(starts(begin).first))
        #expect(prefixed2)
        let body = message(1_000_000)
        var got: [[UInt8]] = []
        var at = 0
        var largestBuffer = 0
        var pieces = SplitSizes()
        while at < body.count {
            let end = min(body.count, at + pieces.next())
            got += chunks(s.receive(Array(body[at..<end])))
            largestBuffer = max(largestBuffer, s.dataOut.capacity)
            at = end
        }
        got += chunks(s.receive(Array(".\r\n".utf8)))
        #expect(Array(got.joined()) == Array("Received: x\r\n".utf8) + body)
        #expect(got.count == 4)
        #expect(got.dropLast().allSatisfy { $0.count >= ServerSession.dataChunk && $0.count <= ServerSession.dataBuffer })
        #expect(largestBuffer < 2 * ServerSession.dataBuffer)
    }

    /// The memory budget's view: no buffer before data arrives (a session the relay stops right after
    /// the 354 holds nothing), and a session stopped mid-message hands on what it holds and keeps no
    /// buffer, without losing or reordering a byte.
    @Test func theBufferIsReservedWhenDataArrivesAndCanBeTakenAtAnyPoint() throws {
        var s = session()
        _ = s.receive(Array(lines("EHLO x.test", "MAIL FROM:<a@b.test>", "RCPT TO:<c@d.test>", "DATA").utf8))
        #expect(s.phase == .data)
        #expect(s.dataBufferCapacity == 0)
        #expect(s.takeBufferedData() == nil)
        let body = message(700_000)
        var got: [[UInt8]] = []
        var at = 0
        var takes = 0
        while at < body.count {
            let end = min(body.count, at + 50_000)
            got += chunks(s.receive(Array(body[at..<end])))
            #expect(s.dataBufferCapacity >= s.dataOut.count)
            if at % 150_000 == 0, let taken = s.takeBufferedData() {
                takes += 1
                #expect(taken.capacity <= taken.count + 4096, "handed on in an array of its own size")
                #expect(s.dataBufferCapacity == 0)
                got.append(taken)
            }
            at = end
        }
        got += chunks(s.receive(Array(".\r\n".utf8)))
        #expect(takes >= 3)
        #expect(Array(got.joined()) == body)
        #expect(s.dataBufferCapacity == 0)
    }

    @Test func thePrefixIsRefusedOnceDataWasHandedOnOrTheMessageEnded() throws {
        // The whole message in the same read as DATA (no wait for the 354): it is over before the
        // relay could ask, and the prefix stays with the caller.
        var s = session()
        let actions = s.receive(Array(lines("EHLO x.test", "MAIL FROM:<a@b.test>", "RCPT TO:<c@d.test>", "DATA",
                                            "Subject: early", "", "body", ".").utf8))
        #expect(actions.contains(.commitMessage))
        let prefixed3 = s.prefixMessageData(Array("Received: x\r\n".utf8), for: try #require(starts(actions).first))
        #expect(!prefixed3)
        #expect(chunks(actions) == [Array("Subject: early\r\n\r\nbody\r\n".utf8)])

        // More than a chunk already handed on.
        var t = session()
        let tBegin = t.receive(Array(lines("EHLO x.test", "MAIL FROM:<a@b.test>", "RCPT TO:<c@d.test>", "DATA").utf8))
        let early = chunks(t.receive(message(ServerSession.dataChunk + 5000)))
        #expect(early.count == 1)
        let prefixed4 = t.prefixMessageData(Array("Received: x\r\n".utf8), for: try #require(starts(tBegin).first))
        #expect(!prefixed4)

        // Some data early, none handed on yet: the prefix goes in front of it.
        var u = session()
        let uBegin = u.receive(Array(lines("EHLO x.test", "MAIL FROM:<a@b.test>", "RCPT TO:<c@d.test>", "DATA", "Subject: s").utf8))
        let uStart = try #require(starts(uBegin).first)
        let prefixed5 = u.prefixMessageData(Array("Received: x\r\n".utf8), for: uStart)
        #expect(prefixed5)
        let rest = u.receive(Array(lines("", "body", ".").utf8))
        #expect(chunks(rest) == [Array("Received: x\r\nSubject: s\r\n\r\nbody\r\n".utf8)])

        // Outside DATA there is nothing to put it in front of.
        var v = session()
        _ = v.receive(Array(lines("EHLO x.test").utf8))
        let prefixed6 = v.prefixMessageData(Array("Received: x\r\n".utf8), for: uStart)
        #expect(!prefixed6)
        #expect(v.dataOut.capacity == 0)
    }

    /// A client that does not wait for the 354: message 1 refused (bare LF), then message 2 begun,
    /// all in one read. The relay acts on message 1's start after the session is in message 2: its
    /// header must not land in front of message 2's data.
    @Test func aLaterMessagesBufferRefusesAnEarlierMessagesPrefix() throws {
        var s = session()
        let actions = s.receive(Array(("EHLO x.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n"
            + "bare\nLF\r\n.\r\n"
            + "MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\nSubject: two\r\n").utf8))
        let begun = starts(actions)
        #expect(begun.count == 2 && actions.contains(.abortMessage))
        guard begun.count == 2 else { return }
        let first = s.prefixMessageData(Array("Received: one\r\n".utf8), for: begun[0])
        #expect(!first)
        let second = s.prefixMessageData(Array("Received: two\r\n".utf8), for: begun[1])
        #expect(second)
        let rest = s.receive(Array("\r\nbody\r\n.\r\n".utf8))
        #expect(chunks(rest) == [Array("Received: two\r\nSubject: two\r\n\r\nbody\r\n".utf8)])
    }
}

/// Read sizes that vary (1 byte to 64 KiB), so chunk boundaries land anywhere, CR-LF pairs included.
private struct SplitSizes {
    var state: UInt64 = 1
    mutating func next() -> Int {
        state = state &* 6364136223846793005 &+ 1442695040888963407
        let r = Int(state >> 33)
        return r % 7 == 0 ? 1 + r % 3 : 1 + r % 65536
    }
}
