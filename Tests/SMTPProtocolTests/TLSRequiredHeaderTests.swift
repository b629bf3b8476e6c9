import Testing
@testable import SMTPProtocol

/// "TLS-Required: No" (RFC 8689 §5) noticed in the header section, and ignored beside REQUIRETLS.
@Suite struct TLSRequiredHeaderTests {
    func decoded(_ message: String) -> DataDecoder {
        var d = DataDecoder(limits: .init())
        var out: [UInt8] = []
        _ = Array((message + ".\r\n").utf8).withUnsafeBytes { d.decode($0, into: &out) }
        #expect(d.isFinished)
        return d
    }

    @Test(arguments: [
        ("TLS-Required: No\r\n\r\nbody\r\n", true),
        ("Subject: x\r\ntls-required:no\r\n\r\nbody\r\n", true),
        ("TLS-REQUIRED: \t nO  \r\n\r\n", true),
        ("TLS-Required: Yes\r\n\r\n", false),
        ("TLS-Required: No thanks\r\n\r\n", false),
        ("X-TLS-Required: No\r\n\r\n", false),
        ("Subject: x\r\n\r\nTLS-Required: No\r\n", false),  // in the body: not a header field
        ("Subject: x\r\n TLS-Required: No\r\n\r\n", false),  // a folded continuation of Subject
    ])
    func theFieldIsNoticedOnlyInTheHeaderSection(message: String, expected: Bool) {
        #expect(decoded(message).tlsRequiredNo == expected)
    }

    /// The first Message-ID field's value on its first line, for events.
    @Test(arguments: [
        ("Message-ID: <a1@example.org>\r\nMessage-ID: <second@x>\r\n\r\n", "<a1@example.org>"),
        ("Subject: x\r\nmessage-id:\t<b2@example.org>  \r\n\r\n", "<b2@example.org>"),
        ("Message-ID:\r\n <folded@example.org>\r\n\r\n", nil),
        ("Subject: x\r\n\r\nMessage-ID: <in-body@x>\r\n", nil),
    ] as [(String, String?)])
    func messageIDIsTakenFromTheFirstField(message: String, expected: String?) {
        #expect(decoded(message).messageID.map { String(decoding: $0, as: UTF8.self) } == expected)
    }

    @Test func ignoredWithRequireTLSAndOtherwiseKept() {
        var d = Driver()
        d.send(lines("EHLO client.test", "MAIL FROM:<a@example.org>", "RCPT TO:<b@example.net>", "DATA",
                     "TLS-Required: No", "", "hi", "."))
        #expect(d.messages.count == 1)
        #expect(d.session.lastMessageTLSOptional)
        d.send(lines("MAIL FROM:<a@example.org>", "RCPT TO:<b@example.net>", "DATA", "Subject: x", "", "hi", "."))
        #expect(d.messages.count == 2)
        #expect(!d.session.lastMessageTLSOptional)
        // RFC 8689 §4.1: with REQUIRETLS on MAIL the header field is ignored.
        var secure = Driver(secureConfig(auth: false))
        secure.send("EHLO client.test\r\nSTARTTLS\r\n")
        secure.establishTLS()
        secure.send(lines("EHLO client.test", "MAIL FROM:<a@x.test> REQUIRETLS", "RCPT TO:<b@y.test>", "DATA",
                          "TLS-Required: No", "", "hi", "."))
        #expect(secure.messages.first?.start.requireTLS == true)
        #expect(!secure.session.lastMessageTLSOptional)
    }
}
