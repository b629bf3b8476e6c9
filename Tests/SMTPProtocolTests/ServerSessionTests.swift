import Randomness
import Testing
@testable import SMTPProtocol

let transaction = lines(
    "EHLO client.test", "MAIL FROM:<alice@example.org>", "RCPT TO:<bob@example.net>",
    "RCPT TO:<carol@example.net>", "DATA", "Subject: hi", "", "Hello", "..dot", ".", "QUIT")

@Suite struct ServerSessionTests {
    @Test func greetingNamesHost() {
        let d = Driver()
        #expect(d.replies == "220 relay.test ESMTP Tern\r\n")
    }

    @Test func ehloAdvertisesExtensions() {
        var d = Driver()
        _ = d.takeReplies()
        d.send("EHLO client.test\r\n")
        let r = d.replies
        #expect(r.hasPrefix("250-relay.test\r\n"))
        for ext in ["PIPELINING", "SIZE 52428800", "8BITMIME", "ENHANCEDSTATUSCODES", "SMTPUTF8"] {
            #expect(r.contains("250-\(ext)\r\n"), "missing \(ext)")
        }
        #expect(r.hasSuffix("250 HELP\r\n"))
    }

    @Test func heloGivesSMTPProtocol() {
        var d = Driver()
        d.send(lines("HELO client.test", "MAIL FROM:<a@b.test>", "RCPT TO:<c@d.test>", "DATA", "x", "."))
        #expect(d.codes == ["220", "250", "250", "250", "354", "250"])
        #expect(d.messages.first?.start.protocolName == "SMTP")
    }

    @Test func fullTransaction() {
        var d = Driver()
        d.send(transaction)
        #expect(d.codes == ["220", "250", "250", "250", "250", "354", "250", "221"])
        #expect(d.replies.contains("250 2.0.0 Ok: queued as Q1\r\n"))
        #expect(d.closed)
        #expect(d.messages.count == 1)
        let m = d.messages[0]
        #expect(m.start.sender.address == "alice@example.org")
        #expect(m.start.recipients == ["bob@example.net", "carol@example.net"])
        #expect(m.start.protocolName == "ESMTP")
        #expect(String(decoding: m.data, as: UTF8.self) == "Subject: hi\r\n\r\nHello\r\n.dot\r\n")
    }

    /// Pipelined input split at every byte boundary gives the same replies and the same message.
    @Test func pipelinedSplitAtEveryBoundary() {
        let whole = expectSameAnySplit(transaction)
        #expect(whole.messages.count == 1)
    }

    @Test func twoMessagesPipelinedOnOneConnection() {
        var d = Driver()
        let one = lines("MAIL FROM:<a@b.test>", "RCPT TO:<c@d.test>", "DATA", "one", ".")
        let two = lines("MAIL FROM:<>", "RCPT TO:<e@f.test>", "DATA", "two", ".")
        d.send(lines("EHLO x.test") + one + two + lines("QUIT"))
        #expect(d.codes == ["220", "250", "250", "250", "354", "250", "250", "250", "354", "250", "221"])
        #expect(d.messages.count == 2)
        #expect(d.messages[1].start.sender.isNull)
        #expect(d.replies.contains("queued as Q2"))
    }

    @Test func commitFailureGives451AndResetsTransaction() {
        var d = Driver()
        d.failCommits = true
        d.send(lines("EHLO x.test", "MAIL FROM:<a@b.test>", "RCPT TO:<c@d.test>", "DATA", "x", ".", "RCPT TO:<e@f.test>"))
        #expect(d.replies.contains("451 4.3.0 "))
        #expect(d.codes.last == "503")  // the transaction is gone
        #expect(d.messages.isEmpty)
    }

    @Test func commitFailureThatMakesTooManyErrorsLeavesTheSessionClosed() {
        var d = Driver(ServerConfiguration(hostname: "relay.test", maxErrors: 1))
        d.failCommits = true
        d.send(lines("EHLO x.test", "MAIL FROM:<a@b.test>", "RCPT TO:<c@d.test>", "DATA", "x", "."))
        #expect(d.replies.contains("451 4.3.0 ") && d.replies.contains("421 4.7.0 "))
        #expect(d.closed)
        #expect(d.session.phase == .closed)  // not back to .ready after the close
        #expect(!d.session.wantsInput)
    }

    @Test func commandsAreCaseInsensitive() {
        var d = Driver()
        d.send(lines("ehlo x.test", "mail from:<a@b.test>", "rcpt to:<c@d.test>", "data", "x", ".", "quit"))
        #expect(d.codes == ["220", "250", "250", "250", "354", "250", "221"])
    }

    @Test func outOfOrderCommands() {
        var d = Driver()
        d.send(lines("MAIL FROM:<a@b.test>"))
        #expect(d.lastReply.hasPrefix("503 5.5.1 "))
        d.send(lines("EHLO x.test", "RCPT TO:<c@d.test>"))
        #expect(d.lastReply.hasPrefix("503 5.5.1 "))
        d.send(lines("DATA"))
        #expect(d.lastReply.hasPrefix("503 5.5.1 "))
        d.send(lines("MAIL FROM:<a@b.test>", "MAIL FROM:<a@b.test>"))
        #expect(d.lastReply.hasPrefix("503 5.5.1 "))
        d.send(lines("DATA"))
        #expect(d.lastReply == "503 5.5.1 Error: need RCPT command")
    }

    @Test func dataAfterOnlyRefusedRecipientsIs554() {
        var d = Driver(client: PeerInfo(ip: "192.0.2.9", trusted: false))
        d.send(lines("EHLO x.test", "MAIL FROM:<a@b.test>", "RCPT TO:<c@elsewhere.test>", "DATA"))
        #expect(d.codes.suffix(2) == ["554", "554"])
        #expect(d.lastReply.hasPrefix("554 5.5.1 "))
    }

    @Test func unknownCommandAndSyntaxErrors() {
        var d = Driver()
        d.send(lines("BOGUS"))
        #expect(d.lastReply.hasPrefix("500 5.5.2 "))
        d.send(lines("EHLO"))
        #expect(d.lastReply.hasPrefix("501 5.5.4 "))
        d.send(lines("EHLO x.test", "MAIL FROM:a@b.test"))
        #expect(d.lastReply.hasPrefix("501 5.5.4 "))
        d.send(lines("MAIL TO:<a@b.test>"))
        #expect(d.lastReply.hasPrefix("501 5.5.4 "))
        d.send(lines("MAIL FROM:<a@b.test> FOO=bar"))
        #expect(d.lastReply.hasPrefix("555 5.5.4 "))
        d.send(lines("MAIL FROM:<a@b.test> BODY=BINARY"))
        #expect(d.lastReply.hasPrefix("501 5.5.4 "))
        d.send(lines("MAIL FROM:<a@b.test> SIZE=abc"))
        #expect(d.lastReply.hasPrefix("501 5.5.4 "))
        d.send(lines("MAIL FROM:<a@b.test> SIZE=10 SIZE=10"))
        #expect(d.lastReply.hasPrefix("501 5.5.4 "))
        d.send(lines("MAIL FROM:<a@b.test> BODY=8bitmime SMTPUTF8 SIZE=100"))
        #expect(d.lastReply == "250 2.1.0 Ok")
        d.send(lines("RCPT TO:<c@d.test> XNOTIFY=NEVER"))
        #expect(d.lastReply.hasPrefix("555 5.5.4 "))
        d.send(lines("DATA extra"))
        #expect(d.lastReply.hasPrefix("501 5.5.4 "))
    }

    @Test func everyReplyAfterGreetingHasEnhancedCode() {
        var d = Driver()
        _ = d.takeReplies()
        d.send(lines("NOOP", "RSET", "HELP", "VRFY x", "EXPN x", "BOGUS", "HELO x.test", "MAIL FROM:<a@b.test>",
                     "RCPT TO:<c@d.test>", "DATA", "x", ".", "QUIT"))
        for line in d.replies.split(separator: "\r\n") {
            let s = String(line)
            if s.hasPrefix("354") || s.hasPrefix("250 relay.test") { continue }  // RFC 2034 §3 exceptions
            let code = s.dropFirst(4).prefix(while: { $0 != " " })
            #expect(code.split(separator: ".").count == 3 && code.first == s.first, "no enhanced code: \(s)")
        }
    }

    @Test func sizeLimitAtMail() {
        var d = Driver(ServerConfiguration(hostname: "relay.test", maxMessageSize: 1000))
        d.send(lines("EHLO x.test", "MAIL FROM:<a@b.test> SIZE=1001"))
        #expect(d.lastReply.hasPrefix("552 5.3.4 "))
        d.send(lines("MAIL FROM:<a@b.test> SIZE=99999999999999999999"))
        #expect(d.lastReply.hasPrefix("552 5.3.4 "))
        d.send(lines("MAIL FROM:<a@b.test> SIZE=1000"))
        #expect(d.lastReply.hasPrefix("250 "))
    }

    @Test func sizeLimitAtEndOfData() {
        var d = Driver(ServerConfiguration(hostname: "relay.test", maxMessageSize: 1000))
        let body = String(repeating: String(repeating: "x", count: 98) + "\r\n", count: 20)
        d.send(lines("EHLO x.test", "MAIL FROM:<a@b.test>", "RCPT TO:<c@d.test>", "DATA") + body + ".\r\n")
        #expect(d.lastReply.hasPrefix("552 5.3.4 "))
        #expect(d.messages.isEmpty)
        #expect(d.aborted == 1)
        // The session is usable again.
        d.send(lines("MAIL FROM:<a@b.test>", "RCPT TO:<c@d.test>", "DATA", "small", "."))
        #expect(d.messages.count == 1)
    }

    @Test func tooManyRecipients() {
        var d = Driver(ServerConfiguration(hostname: "relay.test", maxRecipients: 3))
        d.send(lines("EHLO x.test", "MAIL FROM:<a@b.test>"))
        for i in 0..<4 { d.send(lines("RCPT TO:<r\(i)@d.test>")) }
        #expect(d.codes.suffix(4) == ["250", "250", "250", "452"])
        #expect(d.lastReply.hasPrefix("452 4.5.3 "))
        d.send(lines("DATA", "x", "."))
        #expect(d.messages.first?.start.recipients.count == 3)
    }

    @Test func commandLineLimit() {
        var d = Driver()
        let ok = "NOOP " + String(repeating: "a", count: 512 - 7)  // exactly 512 with CRLF
        d.send(ok + crlf)
        #expect(d.lastReply == "250 2.0.0 Ok")
        d.send("NOOP " + String(repeating: "a", count: 512 - 6) + crlf)
        #expect(d.lastReply.hasPrefix("500 5.5.2 "))
        // A huge line without any CRLF is discarded, not buffered; one reply when it ends.
        _ = d.takeReplies()
        for _ in 0..<100 { d.send(String(repeating: "b", count: 1000)) }
        #expect(d.session.inbox.count < 1024)
        d.send("\r\nNOOP\r\n")
        #expect(d.codes == ["500", "250"])
    }

    @Test func longLineDiscardKeepsCRAcrossReads() {
        var d = Driver()
        _ = d.takeReplies()
        d.send(String(repeating: "b", count: 600) + "\r")
        d.send("\nNOOP\r\n")
        #expect(d.codes == ["500", "250"])
    }

    @Test func bareLineEndsInCommandsAreRefused() {
        var d = Driver()
        _ = d.takeReplies()
        d.send("NOOP\nNOOP\r\n")
        #expect(d.codes == ["500"])
        #expect(d.lastReply.hasPrefix("500 5.5.2 "))
        d.send("NOOP\rNOOP\r\n")
        #expect(d.codes == ["500", "500"])
        d.send("\nNOOP\r\n")
        #expect(d.codes == ["500", "500", "500"])
    }

    @Test func tooManyErrorsCloses() {
        var d = Driver(ServerConfiguration(hostname: "relay.test", maxErrors: 3))
        d.send(lines("BAD1", "BAD2"))
        #expect(!d.closed)
        d.send(lines("BAD3", "NOOP"))
        #expect(d.closed)
        #expect(d.lastReply.hasPrefix("421 4.7.0 "))
        #expect(!d.replies.contains("250 2.0.0 Ok"))  // nothing after close is answered
    }

    @Test func timeoutGives421AndCloses() {
        var d = Driver()
        d.apply(d.session.timedOut())
        #expect(d.lastReply.hasPrefix("421 4.4.2 "))
        #expect(d.closed)
    }

    @Test func timeoutDuringDataAbortsMessage() {
        var d = Driver()
        d.send(lines("EHLO x.test", "MAIL FROM:<a@b.test>", "RCPT TO:<c@d.test>", "DATA", "partial"))
        d.apply(d.session.timedOut())
        #expect(d.aborted == 1)
        #expect(d.closed)
    }

    @Test func relayControl() {
        let policy = RelayPolicy(hostname: "relay.test", acceptDomains: ["Local.Test"])
        let config = ServerConfiguration(hostname: "relay.test", policy: policy)
        var d = Driver(config, client: PeerInfo(ip: "192.0.2.7", trusted: false))
        d.send(lines("EHLO x.test", "MAIL FROM:<>"))
        let cases: [(String, String)] = [
            ("<user@local.test>", "250"), ("<USER@LOCAL.TEST>", "250"), ("<Postmaster>", "250"),
            ("<postmaster@relay.test>", "250"), ("<user@other.test>", "554"),
            ("<user%other.test@local.test>", "554"), ("<\"user@other.test\"@local.test>", "554"),
            ("<@local.test:user@other.test>", "554"), ("<other.test!user@local.test>", "554"),
            ("<user@other.test@[127.0.0.1]>", "501"), ("<user@[127.0.0.1]>", "554"),
            ("<user@local.test.>", "501"), ("<user@sub.local.test>", "554"),
        ]
        for (rcpt, code) in cases {
            d.send(lines("RCPT TO:\(rcpt)"))
            #expect(d.lastReply.hasPrefix(code), "\(rcpt): \(d.lastReply)")
            if code == "554" { #expect(d.lastReply.hasPrefix("554 5.7.1 ")) }
        }
        // A trusted client may relay anywhere, sender routing included (it is not acted on).
        var t = Driver(config, client: PeerInfo(ip: "127.0.0.1", trusted: true))
        t.send(lines("EHLO x.test", "MAIL FROM:<a@b.test>", "RCPT TO:<user@other.test>", "RCPT TO:<u%v@other.test>"))
        #expect(t.codes.suffix(2) == ["250", "250"])
    }

    @Test func aliasesExpandAtRcpt() {
        let policy = RelayPolicy(hostname: "relay.test", acceptDomains: ["lists.test"],
                                 aliases: ["team@lists.test": ["ann@x.test", "bob@y.test", "ann@x.test"],
                                           "all@lists.test": ["team@lists.test", "cid@z.test"],
                                           "postmaster": ["root@admin.test"]])
        var d = Driver(ServerConfiguration(hostname: "relay.test", policy: policy),
                       client: PeerInfo(ip: "192.0.2.7", trusted: false))
        d.send(lines("EHLO x.test", "MAIL FROM:<s@a.test>", "RCPT TO:<ALL@lists.test>", "RCPT TO:<Postmaster>",
                     "RCPT TO:<bob@y.test>", "DATA", "x", "."))
        #expect(d.codes.suffix(5) == ["250", "250", "554", "354", "250"])
        #expect(d.messages.first?.start.recipients == ["ann@x.test", "bob@y.test", "cid@z.test", "root@admin.test"])
    }

    @Test func vrfyAndExpnOffByDefault() {
        var d = Driver()
        d.send(lines("VRFY root"))
        #expect(d.lastReply.hasPrefix("252 2.5.2 "))
        d.send(lines("EXPN staff"))
        #expect(d.lastReply.hasPrefix("502 5.5.1 "))
    }

    @Test func vrfyAndExpnFromAliases() {
        let policy = RelayPolicy(hostname: "relay.test", aliases: ["staff@relay.test": ["a@x.test", "b@x.test"]])
        var d = Driver(ServerConfiguration(hostname: "relay.test", vrfy: true, expn: true, policy: policy))
        _ = d.takeReplies()
        d.send(lines("VRFY <staff@relay.test>"))
        #expect(d.lastReply == "250 2.1.5 <staff@relay.test>")
        d.send(lines("VRFY a@x.test"))
        #expect(d.lastReply == "250 2.1.5 <a@x.test>")
        d.send(lines("VRFY nobody@relay.test"))
        #expect(d.lastReply.hasPrefix("550 5.1.1 "))
        _ = d.takeReplies()
        d.send(lines("EXPN staff@relay.test"))
        #expect(d.replies == "250-2.1.5 <a@x.test>\r\n250 2.1.5 <b@x.test>\r\n")
        d.send(lines("EXPN a@x.test"))
        #expect(d.lastReply.hasPrefix("550 5.1.1 "))
    }

    @Test func smtputf8Addresses() {
        var d = Driver()
        d.send(lines("EHLO x.test", "MAIL FROM:<jörg@bücher.test>"))
        #expect(d.lastReply.hasPrefix("553 5.6.7 "))
        d.send(lines("MAIL FROM:<jörg@bücher.test> SMTPUTF8", "RCPT TO:<δοκιμή@παράδειγμα.test>", "DATA", "x", "."))
        #expect(d.messages.first?.start.smtputf8 == true)
        #expect(d.messages.first?.start.protocolName == "UTF8SMTP")
        d.send(lines("MAIL FROM:<a@b.test>", "RCPT TO:<δοκιμή@παράδειγμα.test>"))
        #expect(d.lastReply.hasPrefix("553 5.6.7 "))
    }

    @Test func dataProblemsRefuseTheMessage() {
        let bodies: [(String, String)] = [
            ("bare\nLF\r\n", "554 5.6.0 "), ("bare\rCR\r\n", "554 5.6.0 "), ("nul\0byte\r\n", "554 5.6.0 "),
            (String(repeating: "y", count: 999) + "\r\n", "554 5.6.0 "),
        ]
        for (body, expected) in bodies {
            var d = Driver()
            d.send(lines("EHLO x.test", "MAIL FROM:<a@b.test>", "RCPT TO:<c@d.test>", "DATA") + body + ".\r\n")
            #expect(d.lastReply.hasPrefix(expected), "\(body.debugDescription): \(d.lastReply)")
            #expect(d.messages.isEmpty)
            #expect(d.aborted == 1)
        }
        var ok = Driver()
        ok.send(lines("EHLO x.test", "MAIL FROM:<a@b.test>", "RCPT TO:<c@d.test>", "DATA")
                + String(repeating: "y", count: 998) + "\r\n.\r\n")
        #expect(ok.messages.count == 1)
    }

    /// The smuggling sequences never end DATA: the smuggled MAIL is part of the (refused) message.
    @Test func smugglingSequencesNeverEndData() {
        let sequences = ["\n.\n", "\n.\r\n", "\r.\r", "\r.\n", "\r\n.\n", "\r\n.\r", "\r\n\0.\r\n"]
        for seq in sequences {
            var d = Driver()
            d.send(lines("EHLO x.test", "MAIL FROM:<a@b.test>", "RCPT TO:<c@d.test>", "DATA"))
            _ = d.takeReplies()
            d.send("Subject: test\r\n\r\nbody" + seq + "MAIL FROM:<evil@x.test>\r\nRCPT TO:<victim@y.test>\r\nDATA\r\n")
            #expect(d.replies == "", "\(seq.debugDescription) ended DATA: \(d.replies)")
            d.send("\r\n.\r\n")
            #expect(d.codes == ["554"], "\(seq.debugDescription): \(d.replies)")
            #expect(d.messages.isEmpty)
        }
    }

    @Test func mailLoopRefused() {
        let hops = String(repeating: "Received: from a by b; Thu, 1 Jan 2026 00:00:00 +0000\r\n", count: 4)
        var d = Driver(ServerConfiguration(hostname: "relay.test", maxHops: 3))
        d.send(lines("EHLO x.test", "MAIL FROM:<a@b.test>", "RCPT TO:<c@d.test>", "DATA") + hops + "\r\nbody\r\n.\r\n")
        #expect(d.lastReply.hasPrefix("554 5.4.6 "))
        #expect(d.messages.isEmpty)
        var ok = Driver(ServerConfiguration(hostname: "relay.test", maxHops: 4))
        ok.send(lines("EHLO x.test", "MAIL FROM:<a@b.test>", "RCPT TO:<c@d.test>", "DATA") + hops + "\r\nbody\r\n.\r\n")
        #expect(ok.messages.count == 1)
    }

    @Test func bccRemovedUnlessKept() {
        let msg = lines("From: a@b.test", "Bcc: hidden@x.test,", "  other@y.test", "To: c@d.test", "", "Bcc: in body", ".")
        var d = Driver()
        d.send(lines("EHLO x.test", "MAIL FROM:<a@b.test>", "RCPT TO:<c@d.test>", "DATA") + msg)
        #expect(String(decoding: d.messages[0].data, as: UTF8.self)
                == "From: a@b.test\r\nTo: c@d.test\r\n\r\nBcc: in body\r\n")
        var k = Driver(ServerConfiguration(hostname: "relay.test", keepBcc: true))
        k.send(lines("EHLO x.test", "MAIL FROM:<a@b.test>", "RCPT TO:<c@d.test>", "DATA") + msg)
        #expect(String(decoding: k.messages[0].data, as: UTF8.self)
                == "From: a@b.test\r\nBcc: hidden@x.test,\r\n  other@y.test\r\nTo: c@d.test\r\n\r\nBcc: in body\r\n")
    }

    @Test func inputWaitsWhileCommitting() {
        var s = ServerSession(config: ServerConfiguration(hostname: "relay.test"),
                              client: PeerInfo(ip: "127.0.0.1", trusted: true))
        _ = s.greeting()
        let actions = s.receive(Array(lines("EHLO x.test", "MAIL FROM:<a@b.test>", "RCPT TO:<c@d.test>", "DATA",
                                            "x", ".", "NOOP", "QUIT").utf8))
        #expect(actions.contains(.commitMessage))
        #expect(!s.wantsInput)
        // Replies stay in order with the other actions: the 354 goes out before the commit is asked for.
        let lastReply = actions.lastIndex { if case .reply = $0 { return true } else { return false } }
        #expect(lastReply != nil && lastReply! < actions.firstIndex(of: .commitMessage)!)
        let text = actions.compactMap { if case .reply(let b) = $0 { return String(decoding: b, as: UTF8.self) } else { return nil } }.joined()
        #expect(!text.contains("250 2.0.0 Ok\r\n"))  // NOOP not answered before the message is queued
        let after = s.commitFinished(queueID: "ABC")
        let afterText = after.compactMap { if case .reply(let b) = $0 { return String(decoding: b, as: UTF8.self) } else { return nil } }.joined()
        #expect(afterText == "250 2.0.0 Ok: queued as ABC\r\n250 2.0.0 Ok\r\n221 2.0.0 Bye\r\n")
        #expect(after.last == .close)
    }

    /// The session says a message is wire-ready exactly when no line of it came dot-stuffed; when it
    /// says so, the stored bytes must need no encoding (delivery sends them without looking again).
    @Test func wireReadyFollowsTheDotStuffedLines() {
        var rng = SplitMix64(seed: 5)
        var ready = 0, notReady = 0
        for round in 0..<400 {
            var body = ""
            var stuffed = false
            for _ in 0..<Int(rng.next() % 20) {
                let r = rng.next()
                switch r % 9 {
                case 0: body += "..leading dot\r\n"; stuffed = true
                case 1: body += "..\r\n"; stuffed = true
                case 2: body += "\r\n"
                case 3: body += "mid.dot. and .\r\n"
                default: body += String(repeating: "w", count: Int(r % 70)) + "\r\n"
                }
            }
            var d = Driver()
            let header = round % 2 == 0 ? "Subject: r\(round)\r\n\r\n" : ""
            d.send(lines("EHLO x.test", "MAIL FROM:<a@b.test>", "RCPT TO:<c@d.test>", "DATA") + header + body + ".\r\n")
            #expect(d.wireReady.count == 1 && d.messages.count == 1, "round \(round)")
            guard let flag = d.wireReady.first, let data = d.messages.first?.data else { return }
            #expect(flag == !stuffed, "round \(round)")
            if flag { #expect(isWireReady(data), "round \(round)") } else { #expect(!isWireReady(data), "round \(round)") }
            if flag { ready += 1 } else { notReady += 1 }
        }
        #expect(ready > 50 && notReady > 50)
    }

    @Test func largeMessageStreamsInChunks() {
        var s = ServerSession(config: ServerConfiguration(hostname: "relay.test"),
                              client: PeerInfo(ip: "127.0.0.1", trusted: true))
        _ = s.greeting()
        _ = s.receive(Array(lines("EHLO x.test", "MAIL FROM:<a@b.test>", "RCPT TO:<c@d.test>", "DATA").utf8))
        let line = Array((String(repeating: "z", count: 998) + "\r\n").utf8)
        var chunks = 0
        var total = 0
        for _ in 0..<1000 {  // 1 MB
            for a in s.receive(line) { if case .messageData(let b) = a { chunks += 1; total += b.count } }
        }
        for a in s.receive(Array(".\r\n".utf8)) { if case .messageData(let b) = a { chunks += 1; total += b.count } }
        #expect(total == 1000 * 1000)
        #expect(chunks >= 4)  // streamed, not held whole
        #expect(s.dataOut.capacity < 512 * 1024)
    }

    @Test func mtPriorityFromTrustedClientsOnly() {
        var d = Driver()
        d.send(lines("EHLO x.test"))
        #expect(d.replies.contains("250-MT-PRIORITY\r\n"))
        d.send(lines("MAIL FROM:<a@b.test> MT-PRIORITY=5", "RCPT TO:<c@d.test>", "DATA", "x", "."))
        d.send(lines("MAIL FROM:<a@b.test> MT-PRIORITY=-9", "RCPT TO:<c@d.test>", "DATA", "x", "."))
        d.send(lines("MAIL FROM:<a@b.test>", "RCPT TO:<c@d.test>", "DATA", "x", "."))
        #expect(d.messages.map(\.start.priority) == [5, -9, nil])
        for bad in ["10", "-10", "x", "1.5", ""] {
            d.send(lines("MAIL FROM:<a@b.test> MT-PRIORITY=\(bad)"))
            #expect(d.lastReply.hasPrefix("501 5.5.4 ") || bad.isEmpty && d.lastReply.hasPrefix("501 "), "\(bad)")
        }
        let policy = RelayPolicy(hostname: "relay.test", acceptDomains: ["d.test"])
        var u = Driver(ServerConfiguration(hostname: "relay.test", policy: policy),
                       client: PeerInfo(ip: "192.0.2.1", trusted: false))
        u.send(lines("EHLO x.test", "MAIL FROM:<a@b.test> MT-PRIORITY=9", "RCPT TO:<c@d.test>", "DATA", "x", "."))
        #expect(u.messages.first?.start.priority == nil)
    }

    @Test func shuttingDownSays421() {
        var d = Driver()
        d.apply(d.session.shuttingDown())
        #expect(d.lastReply.hasPrefix("421 4.3.2 "))
        #expect(d.closed)
    }

    /// Issue 14: a client pipelining thousands of commands gets at most ~32 KiB of replies per call;
    /// the commands left over wait in the session (hasBacklog) and are answered, in order, by
    /// continueInput, so memory for unsent replies stays bounded whatever the client sends.
    @Test func inputPendingSinceCountsFromTheFirstByteOfALine() {
        var s = ServerSession(config: ServerConfiguration(hostname: "relay.test"),
                              client: PeerInfo(ip: "127.0.0.1", trusted: true))
        _ = s.greeting()
        // Bytes that complete nothing start the deadline; more of them do not move it.
        var lines = s.linesRead
        _ = s.receive(Array("NO".utf8))
        var since = s.inputPendingSince(nil, linesBefore: lines, handshaking: false, handshakeDone: false, now: 100)
        #expect(since == 100)
        lines = s.linesRead
        _ = s.receive(Array("O".utf8))
        since = s.inputPendingSince(since, linesBefore: lines, handshaking: false, handshakeDone: false, now: 900)
        #expect(since == 100)
        // The line completes: nothing pending; a partial next line starts again from now.
        lines = s.linesRead
        _ = s.receive(Array("P\r\nRS".utf8))
        #expect(s.inputPendingSince(since, linesBefore: lines, handshaking: false, handshakeDone: false, now: 1000) == 1000)
        lines = s.linesRead
        _ = s.receive(Array("ET\r\n".utf8))
        #expect(s.inputPendingSince(1000, linesBefore: lines, handshaking: false, handshakeDone: false, now: 1100) == nil)
        // A TLS record that decrypts to nothing: no line, so the deadline runs from its first byte.
        #expect(s.inputPendingSince(nil, linesBefore: s.linesRead, handshaking: true, handshakeDone: false, now: 5) == 5)
        #expect(s.inputPendingSince(5, linesBefore: s.linesRead, handshaking: true, handshakeDone: false, now: 9) == 5)
        // The handshake done with nothing pending: the deadline ends.
        #expect(s.inputPendingSince(5, linesBefore: s.linesRead, handshaking: false, handshakeDone: true, now: 9) == nil)
    }

    @Test func repliesPerCallAreCappedAndTheRestFollows() {
        var s = ServerSession(config: ServerConfiguration(hostname: "relay.test"),
                              client: PeerInfo(ip: "127.0.0.1", trusted: true))
        _ = s.greeting()
        func replyBytes(_ actions: [ServerAction]) -> [UInt8] {
            actions.flatMap { action -> [UInt8] in if case .reply(let b) = action { return b } else { return [] } }
        }
        let count = 10_000  // 140 KB of replies
        let cap = ServerSession.maxRepliesPerCall
        var out = replyBytes(s.receive(Array(String(repeating: "NOOP\r\n", count: count).utf8) + Array("NO".utf8)))
        #expect(out.count >= cap && out.count < cap + 64, "\(out.count) bytes of replies in one call")
        #expect(s.hasBacklog)
        var calls = 1
        while s.hasBacklog && calls < 100 {  // 5 calls needed: bounded
            let more = replyBytes(s.continueInput())
            #expect(more.count > 0 && more.count < cap + 64)
            out += more
            calls += 1
        }
        #expect(!s.hasBacklog)
        #expect(calls == 5)
        #expect(out == Array(String(repeating: "250 2.0.0 Ok\r\n", count: count).utf8))
        // The partial line behind the backlog was kept.
        #expect(replyBytes(s.receive(Array("OP\r\nQUIT\r\n".utf8))) == Array("250 2.0.0 Ok\r\n221 2.0.0 Bye\r\n".utf8))
    }
}
