import Testing
@testable import SMTPProtocol

/// Refusals reported as `.refused` actions (what InboundSession logs and counts), the recipient
/// overshoot (issue 13), HELO/EHLO names with control characters or invalid UTF-8, HELP.
@Suite struct ServerRefusalTests {
    func restricted(_ config: ServerConfiguration = ServerConfiguration(hostname: "relay.test")) -> Driver {
        Driver(config, client: PeerInfo(ip: "192.0.2.7", trusted: false))
    }

    @Test func relayDeniedCarriesTheEnvelopeSoFar() {
        var d = restricted()
        d.send(lines("EHLO printer.lan", "MAIL FROM:<scan@printer.lan>", "RCPT TO:<boss@elsewhere.test>"))
        #expect(d.lastReply.hasPrefix("554 5.7.1 "))
        let r = d.refusals.last
        #expect(r?.reason == .relayDenied)
        #expect(r?.command == "RCPT")
        #expect(r?.logged == true)
        #expect(r?.sender?.address == "scan@printer.lan")
        #expect(r?.recipient == "boss@elsewhere.test")
        #expect(r?.helo == "printer.lan")
        #expect(r?.protocolName == "ESMTP")
        #expect(r?.reply.code == 554 && r?.reply.enhanced == "5.7.1")
        #expect(r?.inMessage == false)
    }

    @Test func syntaxErrorsAreCountedNotLogged() {
        var d = Driver()
        d.send(lines("EHLO x.test", "MAIL FROM:bogus", "BOGUS", "RCPT TO:<a@b.test>"))
        #expect(d.refusals.map(\.reason) == [.syntaxError, .unrecognizedCommand, .badSequence])
        #expect(d.refusals.allSatisfy { !$0.logged })
        #expect(d.refusals.map(\.command) == ["MAIL", "BOGUS", "RCPT"])
    }

    @Test func endOfDataRefusalsNameTheMessage() {
        var d = Driver(ServerConfiguration(hostname: "relay.test", maxHops: 2))
        d.send(lines("EHLO x.test", "MAIL FROM:<a@b.test>", "RCPT TO:<c@d.test>", "RCPT TO:<e@d.test>", "DATA")
               + "Subject: x\nbare LF\r\n.\r\n")
        var r = d.refusals.last
        #expect(r?.reason == .badMessageData && r?.command == "END-OF-MESSAGE" && r?.inMessage == true)
        #expect(r?.sender?.address == "a@b.test" && r?.recipient == "c@d.test" && r?.acceptedRecipients == 2)
        d.send(lines("MAIL FROM:<a@b.test>", "RCPT TO:<c@d.test>", "DATA", "Received: 1", "Received: 2",
                     "Received: 3", "", "x", "."))
        r = d.refusals.last
        #expect(d.lastReply.hasPrefix("554 5.4.6 "))
        #expect(r?.reason == .tooManyHops && r?.logged == true && r?.inMessage == true)
    }

    /// The bug: the 421 for too many errors was never counted (the metrics read only the first reply
    /// of a batch). Now it is an event of its own.
    @Test func tooManyErrorsIsReported() {
        var d = Driver(ServerConfiguration(hostname: "relay.test", maxErrors: 3))
        d.send(lines("EHLO x.test", "BOGUS", "BOGUS", "RCPT TO:<a@b.test>"))
        #expect(d.closed)
        let last = d.refusals.last
        #expect(last?.reason == .tooManyErrors && last?.logged == true && last?.command == "RCPT")
        #expect(last?.reply.code == 421 && last?.reply.enhanced == "4.7.0")
    }

    @Test func timeoutIsReported() {
        var d = Driver()
        d.send(lines("EHLO x.test", "MAIL FROM:<a@b.test>", "RCPT TO:<c@d.test>", "DATA", "partial"))
        d.apply(d.session.timedOut())
        let r = d.refusals.last
        #expect(r?.reason == .timeout && r?.command == "DATA" && r?.inMessage == true && r?.logged == true)
        #expect(r?.sender?.address == "a@b.test")
    }

    @Test func authFailureNamesTheUser() {
        var config = ServerConfiguration(hostname: "relay.test")
        config.authEnabled = true
        var d = Driver(config, client: PeerInfo(ip: "127.0.0.1", trusted: false, cleartextAuthAllowed: true))
        d.send(lines("EHLO x.test", "AUTH PLAIN " + Base64.encode("\0bob\0wrong")))
        d.apply(d.session.authFinished(.failure))
        #expect(d.refusals.last?.reason == .authFailed && d.refusals.last?.user == "bob")
        d.send(lines("AUTH PLAIN " + Base64.encode("\0bob\0wrong")))
        d.apply(d.session.authFinished(.lockedOut))
        #expect(d.lastReply.hasPrefix("454 4.7.0 "))
        #expect(d.refusals.last?.reason == .authLockedOut && d.refusals.last?.logged == true)
    }

    /// The bug: 150 recipients with a limit of 100 ended in 421 too many errors before DATA. Now the
    /// excess gets 452 without counting as errors (up to the overshoot limit) and the 100 are queued.
    @Test func recipientsOverTheLimitDoNotEndTheSession() {
        var d = Driver(ServerConfiguration(hostname: "relay.test", maxRecipients: 100, maxErrors: 20))
        _ = d.takeReplies()
        d.send(lines("EHLO x.test", "MAIL FROM:<a@b.test>"))
        d.send((0..<150).map { "RCPT TO:<r\($0)@d.test>\r\n" }.joined())
        let codes = d.codes
        #expect(codes.filter { $0 == "250" }.count == 102)  // EHLO, MAIL, 100 RCPT
        #expect(codes.filter { $0 == "452" }.count == 50)
        #expect(!d.closed)
        d.send(lines("DATA", "x", "."))
        #expect(d.lastReply.hasPrefix("250 2.0.0 Ok: queued as"))
        #expect(d.messages.first?.start.recipients.count == 100)
        // Counted each time, logged once per transaction.
        let excess = d.refusals.filter { $0.reason == .tooManyRecipients }
        #expect(excess.count == 50 && excess.filter(\.logged).count == 1)
    }

    @Test func pastTheOvershootLimitExcessCountsAsErrors() {
        var config = ServerConfiguration(hostname: "relay.test", maxRecipients: 2, maxErrors: 3)
        config.recipientOvershootLimit = 2
        var d = Driver(config)
        d.send(lines("EHLO x.test", "MAIL FROM:<a@b.test>"))
        d.send((0..<7).map { "RCPT TO:<r\($0)@d.test>\r\n" }.joined())
        // 2 accepted, 2 overshoot free, then 3 errors: 421.
        #expect(d.closed)
        #expect(d.codes.suffix(6) == ["452", "452", "452", "452", "452", "421"])
    }

    @Test func overshootStartsOverWithEachTransaction() {
        var config = ServerConfiguration(hostname: "relay.test", maxRecipients: 1, maxErrors: 2)
        config.recipientOvershootLimit = 1
        var d = Driver(config)
        d.send("EHLO x.test\r\n")
        for _ in 0..<3 {
            d.send(lines("MAIL FROM:<a@b.test>", "RCPT TO:<a@d.test>", "RCPT TO:<b@d.test>", "DATA", "x", "."))
        }
        #expect(!d.closed)
        #expect(d.messages.count == 3)
    }

    @Test(arguments: [
        Array("EHLO a\0b.test\r\n".utf8), Array("HELO a\u{1}b.test\r\n".utf8), Array("EHLO a\u{7F}b\r\n".utf8),
        Array("EHLO a\tb\r\n".utf8), Array("EHLO a".utf8) + [0xC3, 0x28] + Array(".test\r\n".utf8),
        Array("HELO ".utf8) + [0xFF, 0xFE] + Array("\r\n".utf8), Array("EHLO x".utf8) + [0xED, 0xA0, 0x80] + Array("\r\n".utf8),
        // C1 controls in UTF-8 (issue 14): U+009B is a terminal's CSI ("\u{9B}2J" clears the screen), U+0085 NEL.
        Array("EHLO a".utf8) + [0xC2, 0x9B] + Array("2Jb.test\r\n".utf8), Array("HELO ".utf8) + [0xC2, 0x85] + Array("x\r\n".utf8),
        Array("EHLO x".utf8) + [0xC2, 0x80] + Array("\r\n".utf8), Array("EHLO é".utf8) + [0xC2, 0x9F] + Array("\r\n".utf8),
    ])
    func heloNamesWithControlsOrBadUTF8AreRefused(line: [UInt8]) {
        var d = Driver()
        _ = d.takeReplies()
        d.send(line)
        #expect(d.replies.hasPrefix("501 5.5.2 "), "\(line)")
        #expect(d.session.helo == nil)
        #expect(d.refusals.last?.reason == .badHelo)
        // Nothing of it reaches a Received header: MAIL still needs a HELO.
        d.send(lines("MAIL FROM:<a@b.test>"))
        #expect(d.lastReply.hasPrefix("503 5.5.1 "))
    }

    @Test func heloNamesThatAreFine() {
        // U+00A0 (0xC2 0xA0) and U+00BF follow the C1 block: refused are 0xC2 0x80-0x9F only.
        for name in ["client.test", "[192.0.2.1]", "[IPv6:2001:db8::1]", "bücher.test", "x", "a\u{A0}b", "¿x"] {
            var d = Driver()
            _ = d.takeReplies()
            d.send(Array("EHLO \(name)\r\n".utf8))
            #expect(d.replies.hasPrefix("250-relay.test\r\n"), "\(name)")
            #expect(d.session.helo == name)
        }
        var d = Driver()
        d.send("HELO  spaced.test \t\r\n")  // surrounding blanks are trimmed, as before
        #expect(d.lastReply == "250 relay.test")
    }

    @Test func helpListsOnlyEnabledCommands() {
        var d = Driver()
        _ = d.takeReplies()
        d.send("HELP\r\n")
        #expect(d.replies == "214 2.0.0 Commands: HELO EHLO MAIL RCPT DATA RSET NOOP QUIT HELP\r\n")
        var config = ServerConfiguration(hostname: "relay.test", vrfy: true, expn: true)
        config.startTLS = true
        d = Driver(config)
        _ = d.takeReplies()
        d.send("HELP\r\n")
        #expect(d.replies == "214 2.0.0 Commands: HELO EHLO MAIL RCPT DATA RSET NOOP QUIT HELP VRFY EXPN STARTTLS\r\n")
    }

    @Test func bareLineEndInCommandIsLogged() {
        var d = Driver()
        d.send("EHLO x.test\r\nNOOP\nMAIL FROM:<a@b.test>\r\n")
        #expect(d.refusals.last?.reason == .bareLineEnd && d.refusals.last?.logged == true)
    }
}
