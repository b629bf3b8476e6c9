import Testing
@testable import SMTPProtocol

/// "BDAT n[ LAST]\r\n" followed by the chunk.
func bdat(_ chunk: String, last: Bool = false) -> String {
    "BDAT \(chunk.utf8.count)\(last ? " LAST" : "")\r\n" + chunk
}

let envelope = lines("EHLO client.test", "MAIL FROM:<alice@example.org>", "RCPT TO:<bob@example.net>")

/// CHUNKING (RFC 3030) in ServerSession+Chunking.swift.
@Suite struct ServerChunkingTests {
    @Test func ehloOffersChunkingUnlessSwitchedOff() {
        var d = Driver()
        d.send("EHLO client.test\r\n")
        #expect(d.replies.contains("250-CHUNKING\r\n"))
        var config = ServerConfiguration(hostname: "relay.test")
        config.extensions = AdvertisedExtensions.all.subtracting(.chunking)
        var off = Driver(config)
        off.send("EHLO client.test\r\n")
        #expect(!off.replies.contains("CHUNKING"))
        // Not offered: 502, and the chunk's octets are not taken for commands.
        off.send(envelope + bdat("QUIT\r\n", last: true) + "NOOP\r\n")
        #expect(off.codes.suffix(2) == ["502", "250"])
        #expect(!off.closed && off.messages.isEmpty)
    }

    @Test func oneChunkWithLast() {
        var d = Driver()
        let message = "Subject: hi\r\n\r\nHello\r\n.dot stays\r\n"
        d.send(envelope + bdat(message, last: true) + "QUIT\r\n")
        #expect(d.codes == ["220", "250", "250", "250", "250", "221"])
        #expect(d.replies.contains("250 2.0.0 Ok: queued as Q1\r\n"))
        #expect(d.messages.count == 1)
        #expect(String(decoding: d.messages[0].data, as: UTF8.self) == message)
        // A line that starts with a dot needs stuffing when it goes on with DATA.
        #expect(d.wireReady == [false])
        var plain = Driver()
        plain.send(envelope + bdat("Subject: x\r\n\r\nno dots\r\n", last: true))
        #expect(plain.wireReady == [true])
    }

    /// Two chunks cut at every position: inside CRLF, inside "\r\n.\r\n", inside a header line.
    @Test func chunkBoundariesAnywhere() {
        let message = "Subject: x\r\nBcc: hidden@example.net\r\n\r\nline\r\n.\r\n..two\r\nend\r\n"
        let expected = "Subject: x\r\n\r\nline\r\n.\r\n..two\r\nend\r\n"
        let bytes = Array(message.utf8)
        for cut in 0...bytes.count {
            var d = Driver()
            let first = String(decoding: bytes[..<cut], as: UTF8.self)
            let second = String(decoding: bytes[cut...], as: UTF8.self)
            d.send(envelope + bdat(first) + bdat(second, last: true))
            #expect(d.codes == ["220", "250", "250", "250", "250", "250"], "cut at \(cut)")
            #expect(d.replies.contains("250 2.0.0 Ok: \(cut) octets received\r\n"), "cut at \(cut)")
            #expect(d.messages.map { String(decoding: $0.data, as: UTF8.self) } == [expected], "cut at \(cut)")
        }
    }

    /// The whole exchange pipelined, split at every byte, and dripped a byte at a time: the same.
    @Test func pipelinedAndSplitAnywhere() {
        let exchange = envelope + bdat("Subject: a\r\n\r\n") + bdat("body\r\n") + bdat("", last: true)
            + lines("MAIL FROM:<>", "RCPT TO:<c@d.test>") + bdat("Subject: b\r\n\r\nx\r\n", last: true) + "QUIT\r\n"
        let whole = expectSameAnySplit(exchange)
        #expect(whole.codes == ["220", "250", "250", "250", "250", "250", "250", "250", "250", "250", "221"])
        #expect(whole.messages.map { String(decoding: $0.data, as: UTF8.self) }
                == ["Subject: a\r\n\r\nbody\r\n", "Subject: b\r\n\r\nx\r\n"])
    }

    @Test func oneOctetChunks() {
        var body = "Subject: many\r\n\r\n"
        for i in 0..<200 { body += "line \(i) .\r\n" }
        var d = Driver()
        d.send(envelope)
        for b in body { d.send(bdat(String(b))) }
        d.send(bdat("", last: true))
        #expect(d.messages.count == 1)
        #expect(String(decoding: d.messages[0].data, as: UTF8.self) == body)
        #expect(d.refusals.isEmpty)
    }

    @Test func aLastLineWithoutCRLFIsEnded() {
        var d = Driver()
        d.send(envelope + bdat("Subject: x\r\n\r\nno line end", last: true))
        #expect(d.messages.map { String(decoding: $0.data, as: UTF8.self) } == ["Subject: x\r\n\r\nno line end\r\n"])
        var cr = Driver()
        cr.send(envelope + bdat("Subject: x\r\n\r\nends in CR\r", last: true))
        #expect(cr.messages.isEmpty)
        #expect(cr.replies.contains("554 5.6.0 Error: bare CR"))
    }

    @Test func outOfSequence() {
        var d = Driver()
        // BDAT before MAIL: 503, and the chunk ("QUIT") is read and dropped, not obeyed.
        d.send("EHLO x.test\r\n" + bdat("QUIT\r\n", last: true))
        #expect(d.codes.last == "503")
        #expect(!d.closed)
        // BDAT before RCPT: 503; after only refused RCPTs: 554.
        d.send("MAIL FROM:<a@b.test>\r\n" + bdat("RSET\r\n"))
        #expect(d.replies.hasSuffix("503 5.5.1 Error: need RCPT command\r\n"))
        // DATA and RCPT after BDAT: 503, the transaction stays until RSET.
        d.send("RCPT TO:<c@d.test>\r\n" + bdat("Subject: x\r\n\r\n") + "DATA\r\nRCPT TO:<e@f.test>\r\n")
        #expect(d.replies.hasSuffix("503 5.5.1 Error: DATA after BDAT\r\n503 5.5.1 Error: RCPT after BDAT\r\n"))
        #expect(d.session.hasOpenMessage)
        d.send("RSET\r\n")
        #expect(d.aborted == 1 && !d.session.hasOpenMessage)
        d.send(bdat("x", last: true))
        #expect(d.replies.hasSuffix("503 5.5.1 Error: need MAIL command\r\n"))
        #expect(d.messages.isEmpty)

        var none = Driver(ServerConfiguration(hostname: "relay.test"), client: PeerInfo(ip: "192.0.2.1", trusted: false))
        none.send("EHLO x.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@elsewhere.test>\r\n" + bdat("x", last: true) + "NOOP\r\n")
        #expect(none.codes.suffix(3) == ["554", "554", "250"])
        #expect(none.replies.contains("554 5.5.1 Error: no valid recipients\r\n"))
    }

    /// A chunk past max_message_size is answered 552 once read; the BDATs pipelined behind it are read,
    /// dropped and answered 503 without counting as errors; after RSET the session goes on.
    @Test func tooBigAtTheEndOfTheChunk() {
        var config = ServerConfiguration(hostname: "relay.test", maxMessageSize: 100, maxErrors: 3)
        config.extensions = .all
        var d = Driver(config)
        let big = String(repeating: "0123456789abcdef\r\n", count: 10)
        var exchange = envelope + bdat("Subject: x\r\n\r\n") + bdat(big)
        for _ in 0..<5 { exchange += bdat("more\r\n") }
        exchange += bdat("", last: true) + "RSET\r\n"
        d.send(exchange)
        #expect(d.codes == ["220", "250", "250", "250", "250", "552", "503", "503", "503", "503", "503", "503", "250"])
        #expect(d.replies.contains("552 5.3.4 "))
        #expect(!d.closed && d.aborted == 1 && d.messages.isEmpty)
        #expect(d.refusals.map(\.reason) == [.messageTooBig])
        #expect(d.refusals.first?.command == "BDAT")
        d.send(lines("MAIL FROM:<a@b.test>", "RCPT TO:<c@d.test>") + bdat("Subject: ok\r\n\r\n", last: true))
        #expect(d.messages.count == 1)
        // Too big in the LAST chunk: the refusal is of the end of the message.
        var last = Driver(config)
        last.send(envelope + bdat(big, last: true))
        #expect(last.codes.last == "552")
        #expect(last.refusals.first?.command == "END-OF-MESSAGE")
    }

    @Test func badDataRefusedAtTheEndOfItsChunk() {
        for (data, text) in [("Subject: x\r\n\r\nbare\nLF\r\n", "bare LF"), ("Subject: x\r\n\r\nNUL\u{0}\r\n", "NUL")] {
            var d = Driver()
            d.send(envelope + bdat(data) + bdat("", last: true))
            #expect(d.codes.suffix(2) == ["554", "503"], "\(text)")
            #expect(d.replies.contains("554 5.6.0 Error: \(text)"), "\(text)")
            #expect(d.messages.isEmpty && d.aborted == 1)
        }
        var loop = Driver(ServerConfiguration(hostname: "relay.test", maxHops: 2))
        loop.send(envelope + bdat("Received: a\r\nReceived: b\r\nReceived: c\r\n\r\nx\r\n", last: true))
        #expect(loop.replies.contains("554 5.4.6 "))
    }

    /// A BDAT whose size cannot be read: nothing tells where its chunk ends, so the session ends.
    @Test func unreadableSizeCloses() {
        for line in ["BDAT", "BDAT x", "BDAT -1", "BDAT 10 LAST more", "BDAT 10 FIRST", "BDAT 1234567890123456789"] {
            var d = Driver()
            d.send(envelope + line + "\r\nQUIT\r\n")
            #expect(d.codes.last == "501", "\(line)")
            #expect(d.replies.contains("closing the connection"), "\(line)")
            #expect(d.closed, "\(line)")
            #expect(d.refusals.last?.logged == true)
        }
        var lower = Driver()
        lower.send(envelope + "bdat 1 last\r\nx")
        #expect(lower.messages.count == 1)
    }

    @Test func anOpenMessageIsAbortedByTimeoutQuitOrEhlo() {
        var t = Driver()
        t.send(envelope + bdat("Subject: x\r\n"))
        #expect(t.session.phase == .mail && t.session.hasOpenMessage)
        t.apply(t.session.timedOut())
        #expect(t.aborted == 1 && t.closed)
        #expect(t.refusals.last?.inMessage == true)

        var mid = Driver()
        mid.send(envelope + "BDAT 100\r\nonly part")
        #expect(mid.session.phase == .data)
        mid.apply(mid.session.timedOut())
        #expect(mid.aborted == 1 && mid.closed)

        var q = Driver()
        q.send(envelope + bdat("Subject: x\r\n") + "QUIT\r\n")
        #expect(q.aborted == 1 && q.closed && q.codes.last == "221")

        var e = Driver()
        e.send(envelope + bdat("Subject: x\r\n") + "EHLO again.test\r\n")
        #expect(e.aborted == 1 && e.session.phase == .ready)
    }

    /// The session reads nothing while the message is committed, as after DATA.
    @Test func inputWaitsWhileCommitting() {
        var s = ServerSession(config: ServerConfiguration(hostname: "relay.test"), client: PeerInfo(ip: "127.0.0.1", trusted: true))
        _ = s.greeting()
        let actions = s.receive(Array((envelope + bdat("x\r\n", last: true) + "NOOP\r\n").utf8))
        #expect(actions.contains(.commitMessage))
        #expect(s.phase == .committing && !s.wantsInput)
        let after = s.commitFinished(queueID: "Q9")
        let text = after.compactMap { if case .reply(let b) = $0 { return String(decoding: b, as: UTF8.self) } else { return nil } }.joined()
        #expect(text == "250 2.0.0 Ok: queued as Q9\r\n250 2.0.0 Ok\r\n")
    }
}
