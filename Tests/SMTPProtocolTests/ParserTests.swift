import Testing
@testable import SMTPProtocol

@Suite struct AddressTests {
    @Test(arguments: [
        ("<a@b.test>", "a", "b.test"),
        ("<first.last+tag@Sub.Example.COM>", "first.last+tag", "Sub.Example.COM"),
        ("<\"john doe\"@example.com>", "\"john doe\"", "example.com"),
        ("<\"a\\\"b\"@example.com>", "\"a\\\"b\"", "example.com"),
        ("<user@[192.0.2.1]>", "user", "[192.0.2.1]"),
        ("<user@[IPv6:2001:db8::1]>", "user", "[IPv6:2001:db8::1]"),
        ("<user@[IPv6:::1]>", "user", "[IPv6:::1]"),
        ("<Postmaster>", "Postmaster", ""),
        ("<x-y_z!#$%&'*/=?^`{|}~@a-b.c>", "x-y_z!#$%&'*/=?^`{|}~", "a-b.c"),
    ])
    func valid(_ text: String, _ local: String, _ domain: String) throws {
        let p = try parsePath(text)
        #expect(p.localPart == local)
        #expect(p.domain == domain)
        #expect(!p.isNull)
    }

    @Test(arguments: [
        "a@b.test", "<a@b.test", "<a@>", "<@b.test>", "<a.@b.test>", "<.a@b.test>", "<a..b@c.test>",
        "<a@b..test>", "<a@b.test.>", "<a@-b.test>", "<a@b-.test>", "<a b@c.test>", "<a@[300.1.1.1]>",
        "<a@[1.2.3]>", "<a@[IPv6:1:2:3]>", "<a@[IPv6:1::2::3]>", "<a@[tag:stuff]>", "<\"unterminated@b.test>",
        "<a@b.test@c.test>", "<user>", "<a@b_c.test>",
    ])
    func invalid(_ text: String) {
        #expect(throws: AddressError.self) { try parsePath(text) }
    }

    @Test func nullPath() throws {
        #expect(try parsePath("<>").isNull)
        #expect(throws: AddressError.self) { try parsePath("<>", allowNull: false) }
    }

    @Test func postmasterOnlyWhereAllowed() {
        #expect(throws: AddressError.self) { try parsePath("<postmaster>", allowPostmaster: false) }
    }

    @Test func lengthLimits() throws {
        let local64 = String(repeating: "a", count: 64)
        #expect(try parsePath("<\(local64)@b.test>").localPart == local64)
        #expect(throws: AddressError.tooLong) { try parsePath("<\(local64)a@b.test>") }
        #expect(throws: AddressError.self) { try parsePath("<a@\(String(repeating: "b", count: 64)).test>") }
    }

    @Test func senderRouting() throws {
        #expect(try parsePath("<@a.test,@b.test:u@c.test>").sourceRoute == ["a.test", "b.test"])
        #expect(try parsePath("<@a.test:u@c.test>").hasSenderRouting)
        #expect(try parsePath("<u%v@c.test>").hasSenderRouting)
        #expect(try parsePath("<v!u@c.test>").hasSenderRouting)
        #expect(try parsePath("<\"u@v\"@c.test>").hasSenderRouting)
        #expect(try !parsePath("<u.v@c.test>").hasSenderRouting)
    }

    @Test func utf8NeedsPermission() throws {
        #expect(try parsePath("<jörg@b.test>", utf8: true).localPart == "jörg")
        #expect(throws: AddressError.needsSMTPUTF8) { try parsePath("<jörg@b.test>", utf8: false) }
        #expect(throws: AddressError.needsSMTPUTF8) { try parsePath("<a@bücher.test>", utf8: false) }
    }
}

@Suite struct CommandTests {
    func parse(_ s: String) throws(CommandError) -> Command { try CommandParser.parse(Array(s.utf8)[...]) }

    @Test func verbs() throws {
        #expect(try parse("HELO a.test") == .helo("a.test"))
        #expect(try parse("ehlo [127.0.0.1]") == .ehlo("[127.0.0.1]"))
        #expect(try parse("DATA") == .data)
        #expect(try parse("rset") == .rset)
        #expect(try parse("NOOP anything") == .noop)
        #expect(try parse("QUIT") == .quit)
        #expect(try parse("HELP") == .help(""))
        #expect(try parse("VRFY <a@b.test>") == .vrfy("<a@b.test>"))
        #expect(try parse("EXPN list") == .expn("list"))
    }

    @Test func mailAndRcpt() throws {
        let mail = try parse("MAIL FROM:<a@b.test> SIZE=100 body=8BITMIME SMTPUTF8")
        guard case .mail(let path, let params) = mail else { Issue.record("not MAIL"); return }
        #expect(path.address == "a@b.test")
        #expect(params == [ESMTPParameter("SIZE", "100"), ESMTPParameter("BODY", "8BITMIME"), ESMTPParameter("SMTPUTF8", nil)])
        #expect(try parse("mail from: <>") == .mail(.null, []))
        guard case .rcpt(let r, []) = try parse("RCPT To:<Postmaster>") else { Issue.record("not RCPT"); return }
        #expect(r.isBarePostmaster)
    }

    @Test(arguments: ["FOO", "MAILFROM:<a@b.test>", "STARTTLSX"])
    func unknown(_ s: String) {
        #expect { try parse(s) } throws: { if case CommandError.unknown = $0 { return true } else { return false } }
    }

    @Test(arguments: ["HELO", "EHLO a b", "MAIL FROM:", "MAIL <a@b.test>", "RCPT TO:<>", "MAIL FROM:<a@b.test>X",
                      "MAIL FROM:<a@b.test> =x", "MAIL FROM:<a@b.test> SIZE=", "QUIT now", "VRFY", "MAIL FROM:<a@b.test> _X"])
    func syntax(_ s: String) {
        #expect(throws: CommandError.self) { try parse(s) }
    }
}

@Suite struct DataDecoderTests {
    func decode(_ text: String, limits: DataDecoder.Limits = .init(), chunk: Int = .max)
        -> (out: String, consumed: Int, decoder: DataDecoder)
    {
        var d = DataDecoder(limits: limits)
        var out: [UInt8] = []
        let bytes = Array(text.utf8)
        var consumed = 0
        var i = 0
        while i < bytes.count, !d.isFinished {
            let end = min(bytes.count, i + chunk)
            let n = bytes[i..<end].withUnsafeBytes { d.decode($0, into: &out) }
            consumed += n
            i = end
        }
        return (String(decoding: out, as: UTF8.self), consumed, d)
    }

    @Test func endsOnlyAtCRLFDotCRLF() {
        let r = decode("a\r\nb\r\n.\r\nQUIT\r\n")
        #expect(r.decoder.isFinished)
        #expect(r.out == "a\r\nb\r\n")
        #expect(r.consumed == 9)
        #expect(decode(".\r\n").decoder.isFinished)  // empty message
        #expect(decode(".\r\n").out == "")
    }

    @Test func dotUnstuffing() {
        #expect(decode("..\r\n...x\r\n.y\r\n.\r\n").out == ".\r\n..x\r\ny\r\n")
    }

    @Test(arguments: ["\n.\n", "\n.\r\n", "\r.\r", "\r.\n", "\r\n.\n", "\r\n.\r", "\r\n\0.\r\n"])
    func smugglingNeverEnds(_ seq: String) {
        for chunk in [1, 2, 3, 1000] {
            let r = decode("x" + seq + "MAIL FROM:<a@b>\r\n", chunk: chunk)
            #expect(!r.decoder.isFinished, "\(seq.debugDescription) chunk \(chunk)")
            #expect(r.decoder.problem != nil)
        }
    }

    @Test func problems() {
        #expect(decode("a\nb\r\n.\r\n").decoder.problem == .bareLF)
        #expect(decode("a\rb\r\n.\r\n").decoder.problem == .bareCR)
        #expect(decode("a\r\r\n.\r\n").decoder.problem == .bareCR)
        #expect(decode("a\0b\r\n.\r\n").decoder.problem == .nul)
        #expect(decode(String(repeating: "x", count: 9) + "\r\n.\r\n", limits: .init(maxLineLength: 10)).decoder.problem == .lineTooLong)
        #expect(decode(String(repeating: "x", count: 8) + "\r\n.\r\n", limits: .init(maxLineLength: 10)).decoder.problem == nil)
        let big = decode(String(repeating: "abcdefg\r\n", count: 20) + ".\r\n", limits: .init(maxMessageSize: 100))
        #expect(big.decoder.problem == .tooBig)
        #expect(big.decoder.isFinished)
        #expect(big.out.count <= 100)
    }

    @Test func byteByByteEqualsWhole() {
        let text = "Received: x\r\nBcc: y\r\n z\r\nSubject: s\r\n\r\n..body\r\nline\r\n.\r\n"
        let whole = decode(text)
        for chunk in 1...7 {
            let r = decode(text, chunk: chunk)
            #expect(r.out == whole.out)
            #expect(r.decoder.receivedCount == 1)
        }
        #expect(whole.out == "Received: x\r\nSubject: s\r\n\r\n.body\r\nline\r\n")
    }

    @Test func receivedCountedOnlyInHeaders() {
        let r = decode("Received: a\r\nreceived: b\r\nX-Received: c\r\n\r\nReceived: body\r\n.\r\n")
        #expect(r.decoder.receivedCount == 2)
    }
}

@Suite struct ReceivedHeaderTests {
    @Test func format() {
        let h = ReceivedHeader(helo: "client.test", reverseName: nil, clientIP: "192.0.2.1", hostname: "relay.test",
                               protocolName: "ESMTP", queueID: "0001", recipients: ["bob@x.test"], time: 1_795_711_574)
        #expect(String(decoding: h.bytes, as: UTF8.self) == "Received: from client.test (unknown [192.0.2.1])\r\n"
            + "\tby relay.test (Tern) with ESMTP id 0001\r\n\tfor <bob@x.test>; Thu, 26 Nov 2026 16:46:14 +0000\r\n")
        var many = h
        many.recipients = ["a@x.test", "b@x.test"]
        many.reverseName = "mail.client.test"
        many.clientIP = "2001:db8::1"
        let s = String(decoding: many.bytes, as: UTF8.self)
        #expect(s.hasPrefix("Received: from client.test (mail.client.test [IPv6:2001:db8::1])\r\n"))
        #expect(!s.contains("for <"))
    }

    @Test func dates() {
        #expect(rfc5322Date(0) == "Thu, 1 Jan 1970 00:00:00 +0000")
        #expect(rfc5322Date(951_782_400) == "Tue, 29 Feb 2000 00:00:00 +0000")
        #expect(rfc5322Date(-1) == "Wed, 31 Dec 1969 23:59:59 +0000")
        #expect(rfc5322Date(4_102_444_799) == "Thu, 31 Dec 2099 23:59:59 +0000")
    }

    @Test func controlCharactersInHeloAreNeutralised() {
        let h = ReceivedHeader(helo: "evil\r\nX-Injected: 1", reverseName: nil, clientIP: "192.0.2.1",
                               hostname: "relay.test", protocolName: "SMTP", queueID: "1", recipients: [], time: 0)
        #expect(!String(decoding: h.bytes, as: UTF8.self).contains("\r\nX-Injected"))
    }
}
