// STARTTLS and AUTH in the pure server state machine.

import Testing
@testable import SMTPProtocol

func secureConfig(requireAuth: Bool = false, startTLS: Bool = true, auth: Bool = true) -> ServerConfiguration {
    var c = ServerConfiguration(hostname: "relay.test")
    c.startTLS = startTLS
    c.authEnabled = auth
    c.requireAuth = requireAuth
    return c
}

let outsider = PeerInfo(ip: "192.0.2.7", trusted: false)

func b64(_ s: String) -> String { Base64.encode(s) }

extension Driver {
    /// STARTTLS accepted and the handshake done.
    mutating func establishTLS() {
        apply(session.tlsEstablished("TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)"))
    }
}

@Suite struct ServerSecurityTests {
    @Test func base64RoundTripAndStrictness() {
        for s in ["", "f", "fo", "foo", "foob", "fooba", "foobar", "\0user\0pass"] {
            #expect(Base64.decode(Array(Base64.encode(s).utf8)) == Array(s.utf8))
        }
        #expect(Base64.encode("foobar") == "Zm9vYmFy")
        #expect(Base64.decode(Array("Zm9vYmE=".utf8)) == Array("fooba".utf8))
        for bad in ["Zm9", "Zm9v!mFy", "Zg=a", "Zh==", "Z===", "Zm=v"] {
            #expect(Base64.decode(Array(bad.utf8)) == nil, "\(bad)")
        }
    }

    @Test func startTLSOfferedOnlyWithCertificateAndOnlyOnce() {
        var plain = Driver(ServerConfiguration(hostname: "relay.test"))
        plain.send("EHLO c.test\r\n")
        #expect(!plain.replies.contains("STARTTLS"))
        plain.send("STARTTLS\r\n")
        #expect(plain.lastReply == "454 4.7.0 TLS not available")
        #expect(plain.tlsStarts == 0)

        var d = Driver(secureConfig(), client: outsider)
        d.send("EHLO c.test\r\n")
        #expect(d.replies.contains("250-STARTTLS\r\n"))
        // AUTH is not offered in the clear.
        #expect(!d.replies.contains("AUTH"))
        d.send("STARTTLS\r\n")
        #expect(d.lastReply == "220 2.0.0 Ready to start TLS")
        #expect(d.tlsStarts == 1)
        d.establishTLS()
        _ = d.takeReplies()
        d.send("EHLO c.test\r\n")
        #expect(!d.replies.contains("STARTTLS"))
        #expect(d.replies.contains("250-AUTH PLAIN LOGIN\r\n"))
        d.send("STARTTLS\r\n")
        #expect(d.lastReply == "503 5.5.1 Error: TLS already active")
        #expect(d.tlsStarts == 1)
    }

    @Test func startTLSArgumentAndTransactionRules() {
        var d = Driver(secureConfig(), client: outsider)
        d.send("STARTTLS now\r\n")
        #expect(d.lastReply.hasPrefix("501 5.5.4"))
        d.send(lines("EHLO c.test", "MAIL FROM:<a@b.test>", "STARTTLS"))
        #expect(d.lastReply == "503 5.5.1 Error: MAIL transaction in progress")
        #expect(d.tlsStarts == 0)
    }

    /// CVE-2011-0411: commands pipelined behind STARTTLS in the clear are never executed, however the
    /// bytes are split; after the handshake the session starts over and wants EHLO again.
    @Test func pipelinedAfterStartTLSIsDiscardedAndSessionResets() {
        let injected = lines("EHLO c.test", "MAIL FROM:<a@b.test>", "STARTTLS", "RSET", "MAIL FROM:<evil@b.test>",
                             "RCPT TO:<victim@example.net>")
        for split in [injected.utf8.count] + Array(stride(from: 1, to: injected.utf8.count, by: 3)) {
            var d = Driver(secureConfig(), client: PeerInfo(ip: "127.0.0.1", trusted: true))
            let bytes = Array(injected.utf8)
            var pos = 0
            while pos < bytes.count {
                d.send(Array(bytes[pos..<min(bytes.count, pos + split)]))
                pos += split
            }
            _ = d.takeReplies()
            // MAIL was open, so STARTTLS was refused: and the rest ran in the clear as usual.
            #expect(d.tlsStarts == 0)
        }
        let attack = lines("EHLO c.test", "STARTTLS", "RSET", "MAIL FROM:<evil@b.test>", "RCPT TO:<victim@example.net>")
        let bytes = Array(attack.utf8)
        for split in [bytes.count, 1, 2, 5, 13] {
            var d = Driver(secureConfig(), client: PeerInfo(ip: "127.0.0.1", trusted: true))
            var pos = 0
            while pos < bytes.count {
                d.send(Array(bytes[pos..<min(bytes.count, pos + split)]))
                pos += split
            }
            #expect(d.codes == ["220", "250", "220"], "split \(split)")
            #expect(d.tlsStarts == 1)
            d.establishTLS()
            _ = d.takeReplies()
            // The injected MAIL was not executed and the EHLO from the clear is forgotten.
            #expect(d.session.phase == .connected)
            #expect(d.session.helo == nil)
            d.send("MAIL FROM:<a@b.test>\r\n")
            #expect(d.lastReply == "503 5.5.1 Error: send HELO/EHLO first")
            d.send(lines("EHLO c.test", "MAIL FROM:<a@b.test>", "RCPT TO:<x@example.net>", "DATA", "hi", "."))
            #expect(d.messages.count == 1)
            #expect(d.messages[0].start.protocolName == "ESMTPS")
            #expect(d.messages[0].start.tls?.hasPrefix("TLSv1.3") == true)
        }
    }

    @Test func authRefusedInTheClearAndWithoutUsers() {
        var d = Driver(secureConfig(), client: outsider)
        d.send(lines("EHLO c.test", "AUTH PLAIN \(b64("\0alice\0pw"))"))
        #expect(d.lastReply.hasPrefix("538 5.7.11"))
        #expect(d.authRequests.isEmpty)

        var none = Driver(secureConfig(auth: false), client: outsider)
        none.send("EHLO c.test\r\n")
        none.establishTLS()
        none.send(lines("EHLO c.test", "AUTH PLAIN \(b64("\0alice\0pw"))"))
        #expect(none.lastReply == "503 5.5.1 Error: authentication not enabled")

        // A loopback client the config allows may authenticate in the clear.
        var local = Driver(secureConfig(startTLS: false),
                           client: PeerInfo(ip: "127.0.0.1", trusted: false, cleartextAuthAllowed: true))
        local.send("EHLO c.test\r\n")
        #expect(local.replies.contains("250-AUTH PLAIN LOGIN\r\n"))
        local.send("AUTH PLAIN \(b64("\0alice\0pw"))\r\n")
        #expect(local.authRequests.count == 1)
    }

    func tlsDriver(_ config: ServerConfiguration = secureConfig()) -> Driver {
        var d = Driver(config, client: outsider)
        d.send(lines("EHLO c.test", "STARTTLS"))
        d.establishTLS()
        d.send("EHLO c.test\r\n")
        _ = d.takeReplies()
        return d
    }

    @Test func authPlainWithInitialResponse() {
        var d = tlsDriver()
        d.send("AUTH PLAIN \(b64("\0alice\0s3cret pw"))\r\n")
        #expect(d.authRequests.count == 1)
        #expect(d.authRequests[0].user == "alice" && d.authRequests[0].password == "s3cret pw")
        #expect(d.replies.isEmpty)
        #expect(!d.session.wantsInput)
        d.apply(d.session.authFinished(.success(allowedSenders: nil)))
        #expect(d.lastReply == "235 2.7.0 Authentication successful")
        // Authenticated: relays anywhere, and says ESMTPSA.
        d.send(lines("MAIL FROM:<alice@example.org>", "RCPT TO:<bob@elsewhere.test>", "DATA", "x", "."))
        #expect(d.messages.count == 1)
        #expect(d.messages[0].start.protocolName == "ESMTPSA")
        #expect(d.messages[0].start.authenticatedUser == "alice")
        d.send("AUTH PLAIN \(b64("\0alice\0pw"))\r\n")
        #expect(d.lastReply == "503 5.5.1 Error: already authenticated")
    }

    @Test func authPlainWithChallengeAndLogin() {
        var d = tlsDriver()
        d.send("AUTH PLAIN\r\n")
        #expect(d.lastReply == "334 ")
        d.send("\(b64("alice\0alice\0pw"))\r\n")
        #expect(d.authRequests.last?.user == "alice")
        d.apply(d.session.authFinished(.failure))
        #expect(d.lastReply == "535 5.7.8 Error: authentication failed")

        d.send("AUTH LOGIN\r\n")
        #expect(d.lastReply == "334 VXNlcm5hbWU6")
        d.send("\(b64("bob"))\r\n")
        #expect(d.lastReply == "334 UGFzc3dvcmQ6")
        d.send("\(b64("hunter2"))\r\n")
        #expect(d.authRequests.last! == ("bob", "hunter2"))
        d.apply(d.session.authFinished(.success(allowedSenders: nil)))
        #expect(d.session.authenticatedUser == "bob")

        var e = tlsDriver()
        e.send("AUTH LOGIN \(b64("carol"))\r\n")
        #expect(e.lastReply == "334 UGFzc3dvcmQ6")
    }

    /// A user name no users file can hold is refused before any check (issue 14: such a name, logged,
    /// imitated a log field: "root from [203.0.113.9]\e[2J\r\nX").
    @Test func userNamesThatCannotExistAreRefusedBeforeTheCheck() {
        let forged = "root from [203.0.113.9]\u{1B}[2J\r\nX"
        for name in [forged, "a b", "a:b", "tab\there", "c1\u{9B}x", String(repeating: "u", count: 257),
                     "\u{FEFF}alice", "ali\u{202E}ce", "a\u{2066}b", "zero\u{200B}width", "rlm\u{200F}", "line\u{2028}sep",
                     "para\u{2029}", "soft\u{AD}hyphen"] {
            var d = tlsDriver()
            d.send("AUTH LOGIN\r\n\(b64(name))\r\n")
            #expect(d.lastReply == "535 5.7.8 Error: authentication failed: invalid user name", "\(name)")
            d.send("AUTH PLAIN \(b64("\0\(name)\0pw"))\r\n")
            #expect(d.lastReply == "535 5.7.8 Error: authentication failed: invalid user name", "\(name)")
            #expect(d.authRequests.isEmpty, "no password check for \(name)")
            #expect(d.refusals.map(\.reason) == [.authFailed, .authFailed])
            d.send("NOOP\r\n")
            #expect(d.lastReply == "250 2.0.0 Ok", "the exchange is over: the next line is a command")
        }
        var d = tlsDriver()
        let longest = String(repeating: "u", count: 256)
        d.send("AUTH PLAIN \(b64("\0\(longest)\0pw"))\r\n")
        d.send("AUTH PLAIN \(b64("\0älice@example.org\0pw"))\r\n")
        #expect(d.authRequests.map(\.user) == [longest], "the first is still being checked")
    }

    @Test func authCancelBadBase64AndUnknownMechanism() {
        var d = tlsDriver()
        d.send(lines("AUTH LOGIN", "*"))
        #expect(d.lastReply == "501 5.0.0 Authentication aborted")
        d.send(lines("AUTH PLAIN", "not base64!"))
        #expect(d.lastReply == "501 5.5.2 Error: cannot decode response")
        d.send("AUTH CRAM-MD5\r\n")
        #expect(d.lastReply == "504 5.5.4 Error: unsupported authentication mechanism")
        // authzid other than the user, or a missing field.
        d.send("AUTH PLAIN \(b64("root\0alice\0pw"))\r\n")
        #expect(d.lastReply == "535 5.7.8 Error: authentication failed")
        d.send("AUTH PLAIN \(b64("alice\0pw"))\r\n")
        #expect(d.lastReply == "535 5.7.8 Error: authentication failed")
        #expect(d.authRequests.isEmpty)
        d.send(lines("AUTH PLAIN \(b64("\0alice\0pw"))"))
        d.apply(d.session.authFinished(.lockedOut))
        #expect(d.lastReply.hasPrefix("454 4.7.0"))
        // Still usable afterwards: NOOP answers.
        d.send("NOOP\r\n")
        #expect(d.lastReply == "250 2.0.0 Ok")
    }

    @Test func longAuthLinesUpTo12288() {
        var d = tlsDriver()
        let password = String(repeating: "p", count: 3000)
        d.send("AUTH PLAIN \(b64("\0alice\0" + password))\r\n")
        #expect(d.authRequests.last?.password == password)
        d.apply(d.session.authFinished(.failure))
        d.send("AUTH LOGIN\r\n\(b64("alice"))\r\n\(b64(password))\r\n")
        #expect(d.authRequests.count == 2)
        d.apply(d.session.authFinished(.failure))
        // Beyond 12288 octets: refused as too long, and the session goes on.
        d.send("AUTH PLAIN \(String(repeating: "A", count: 13000))\r\n")
        #expect(d.lastReply == "500 5.5.2 Error: line too long")
        #expect(d.authRequests.count == 2)
        // Outside AUTH the 512 limit stands.
        var plain = Driver(ServerConfiguration(hostname: "relay.test"))
        plain.send("NOOP \(String(repeating: "x", count: 600))\r\n")
        #expect(plain.lastReply == "500 5.5.2 Error: line too long")
    }

    @Test func lineTooLongEndsTheAuthExchange() {
        var d = tlsDriver()
        // AUTH LOGIN, a user name over 12288 octets, then what would be the password.
        d.send("AUTH LOGIN\r\n\(String(repeating: "A", count: 13000))\r\n")
        #expect(d.lastReply == "500 5.5.2 Error: line too long")
        d.send("NOOP\r\n")
        #expect(d.lastReply == "250 2.0.0 Ok")
        #expect(d.authRequests.isEmpty)
        // Same after the user name, and when the long line comes in several reads.
        d.send("AUTH LOGIN \(b64("alice"))\r\n")
        d.send(String(repeating: "B", count: 8000))
        d.send(String(repeating: "B", count: 8000) + "\r\n")
        #expect(d.lastReply == "500 5.5.2 Error: line too long")
        d.send("\(b64("guess"))\r\n")
        #expect(d.lastReply.hasPrefix("500 5.5.2"))
        #expect(d.authRequests.isEmpty)
    }

    @Test func commandsPipelinedBehindAuthWaitForTheAnswer() {
        var d = tlsDriver()
        d.send(lines("AUTH PLAIN \(b64("\0alice\0pw"))", "MAIL FROM:<alice@example.org>", "RCPT TO:<x@far.test>"))
        #expect(d.replies.isEmpty)
        d.apply(d.session.authFinished(.success(allowedSenders: nil)))
        #expect(d.codes == ["235", "250", "250"])
    }

    @Test func submissionRequiresAuthBeforeMail() {
        var d = Driver(secureConfig(requireAuth: true), client: PeerInfo(ip: "127.0.0.1", trusted: true))
        d.send(lines("EHLO c.test", "MAIL FROM:<a@b.test>"))
        #expect(d.lastReply == "530 5.7.0 Must issue a STARTTLS command first")
        d.send("STARTTLS\r\n")
        d.establishTLS()
        d.send(lines("EHLO c.test", "MAIL FROM:<a@b.test>"))
        #expect(d.lastReply == "530 5.7.0 Authentication required")
        d.send("AUTH PLAIN \(b64("\0a\0pw"))\r\n")
        d.apply(d.session.authFinished(.success(allowedSenders: nil)))
        d.send("MAIL FROM:<a@b.test>\r\n")
        #expect(d.lastReply == "250 2.1.0 Ok")
    }

    @Test func implicitTLSNeedsNoStartTLS() {
        var d = Driver(secureConfig(requireAuth: true), client: outsider, greet: false)
        d.session = ServerSession(config: secureConfig(requireAuth: true), client: outsider, implicitTLS: true)
        d.apply(d.session.greeting())
        d.establishTLS()
        d.send("EHLO c.test\r\n")
        #expect(!d.replies.contains("STARTTLS"))
        #expect(d.replies.contains("AUTH PLAIN LOGIN"))
        d.send("MAIL FROM:<a@b.test>\r\n")
        #expect(d.lastReply == "530 5.7.0 Authentication required")
    }

    @Test func allowedSendersPerUser() {
        var d = tlsDriver()
        d.send("AUTH PLAIN \(b64("\0alice\0pw"))\r\n")
        d.apply(d.session.authFinished(.success(allowedSenders: ["alice@example.org", "@alice.test"])))
        d.send("MAIL FROM:<mallory@example.org>\r\n")
        #expect(d.lastReply.hasPrefix("553 5.7.1 <mallory@example.org>: Sender address rejected"))
        d.send("MAIL FROM:<>\r\n")
        #expect(d.lastReply.hasPrefix("553 5.7.1"))
        d.send(lines("MAIL FROM:<Alice@Example.ORG>", "RSET", "MAIL FROM:<any@alice.test>"))
        #expect(d.codes.suffix(3) == ["250", "250", "250"])
    }

    @Test func unauthenticatedOutsiderCannotRelayUnderTLS() {
        var d = tlsDriver()
        d.send(lines("MAIL FROM:<a@b.test>", "RCPT TO:<x@far.test>"))
        #expect(d.lastReply.hasPrefix("554 5.7.1"))
    }

    @Test func receivedHeaderNamesTLS() {
        let h = ReceivedHeader(helo: "c.test", reverseName: nil, clientIP: "192.0.2.7", hostname: "relay.test",
                               protocolName: "ESMTPS", queueID: "Q1", recipients: ["a@b.test"], time: 0,
                               tls: "TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)")
        let text = String(decoding: h.bytes, as: UTF8.self)
        #expect(text.contains("[192.0.2.7])\r\n\t(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits))\r\n\tby relay.test (Tern) with ESMTPS id Q1"))
    }
}
