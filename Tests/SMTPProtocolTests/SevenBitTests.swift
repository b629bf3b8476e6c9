import Foundation
import Testing
@testable import SMTPProtocol

// 8-bit MIME to 7-bit for a next hop without 8BITMIME: every byte 7-bit, the structure kept, each part
// decoding to its original octets.

private func qpDecode(_ text: [UInt8]) -> [UInt8] {
    var out: [UInt8] = []
    var i = 0
    func hexValue(_ b: UInt8) -> UInt8? {
        switch b {
        case 48...57: return b - 48
        case 65...70: return b - 55
        default: return nil
        }
    }
    while i < text.count {
        if text[i] == UInt8(ascii: "=") {
            if i + 2 < text.count, text[i + 1] == 13, text[i + 2] == 10 { i += 3; continue }  // soft break
            if i + 2 < text.count, let h = hexValue(text[i + 1]), let l = hexValue(text[i + 2]) {
                out.append(h << 4 | l)
                i += 3
                continue
            }
        }
        out.append(text[i])
        i += 1
    }
    return out
}

private func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }

private func body(of entity: [UInt8]) -> [UInt8] {
    let e = MIMEEntity(entity[...])
    return Array(e.body)
}

private func longestLine(_ m: [UInt8]) -> Int {
    m.split(separator: 10, omittingEmptySubsequences: false).map { $0.last == 13 ? $0.count - 1 : $0.count }.max() ?? 0
}

@Suite struct SevenBitTests {
    @Test func sevenBitMessagesAreLeftAlone() {
        let m = bytes("MIME-Version: 1.0\r\nSubject: hi\r\n\r\nplain\r\n")
        #expect(sevenBitMessage(m) == m)
        // Not MIME at all, but 7-bit: fine too.
        #expect(sevenBitMessage(bytes("Subject: x\r\n\r\nbody\r\n")) == bytes("Subject: x\r\n\r\nbody\r\n"))
    }

    @Test func latin1TextBecomesQuotedPrintable() throws {
        let text: [UInt8] = bytes("Gr") + [0xFC, 0xDF] + bytes("e aus K") + [0xF6] + bytes("ln = 100% \r\n")
            + Array(repeating: 0xE9, count: 120) + bytes("\r\ntrailing space \r\n")
        let m = bytes("MIME-Version: 1.0\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
                      + "Content-Transfer-Encoding: 8bit\r\nSubject: hi\r\n\r\n") + text
        let out = try #require(sevenBitMessage(m))
        #expect(out.allSatisfy { $0 < 0x80 })
        #expect(longestLine(out) <= 76)
        let e = MIMEEntity(out[...])
        #expect(e.field("content-transfer-encoding") == "quoted-printable")
        #expect(e.field("content-type") == "text/plain; charset=iso-8859-1")
        #expect(e.fields.filter { $0.name == "content-transfer-encoding" }.count == 1)
        #expect(e.field("subject") == "hi")
        #expect(qpDecode(Array(e.body)) == text)
    }

    @Test func multipartPartsEachTheirWay() throws {
        let html = bytes("<p>Gr\u{FC}\u{DF}e, \u{65E5}\u{672C}</p>\r\n")  // UTF-8
        let binary: [UInt8] = (0..<300).map { UInt8($0 % 256) }.filter { $0 != 13 && $0 != 10 } + [13, 10]
        let m = bytes("MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n"
                      + "Content-Transfer-Encoding: 8bit\r\n\r\npreamble\r\n--b1\r\n"
                      + "Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n") + html
            + bytes("--b1\r\nContent-Type: text/plain\r\n\r\nseven bit part\r\n")
            + bytes("--b1\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: 8bit\r\n\r\n") + binary
            + bytes("--b1--\r\nepilogue\r\n")
        let out = try #require(sevenBitMessage(m))
        #expect(out.allSatisfy { $0 < 0x80 })
        #expect(longestLine(out) <= 76)
        let top = MIMEEntity(out[...])
        #expect(top.field("content-transfer-encoding") == "7bit")
        // Split the parts back on the boundary.
        let text = String(decoding: top.body, as: UTF8.self)
        let pieces = text.components(separatedBy: "\r\n--b1")
        try #require(pieces.count == 5)
        #expect(pieces[0] == "preamble")
        #expect(pieces[4] == "--\r\nepilogue\r\n")
        // Each part after the CRLF that ends its delimiter line.
        let parts = pieces[1...3].map { Array($0.utf8.dropFirst(2)) }  // "\r\n" is one Character
        let htmlPart = MIMEEntity(parts[0][...])
        #expect(htmlPart.field("content-transfer-encoding") == "quoted-printable")
        #expect(qpDecode(Array(htmlPart.body)) + [13, 10] == html)
        #expect(String(decoding: parts[1], as: UTF8.self) == "Content-Type: text/plain\r\n\r\nseven bit part")
        let binaryPart = MIMEEntity(parts[2][...])
        #expect(binaryPart.field("content-transfer-encoding") == "base64")
        let joined = String(decoding: binaryPart.body, as: UTF8.self).replacingOccurrences(of: "\r\n", with: "")
        #expect(Base64.decode(Array(joined.utf8)).map { $0 + [13, 10] } == binary)
    }

    @Test func whatCannotBeConvertedIsRefused() {
        let eightBit: [UInt8] = [0xE9]
        // Not MIME.
        #expect(sevenBitMessage(bytes("Subject: x\r\n\r\ncaf") + eightBit + bytes("\r\n")) == nil)
        // 8-bit in a header (only SMTPUTF8 may carry that).
        #expect(sevenBitMessage(bytes("MIME-Version: 1.0\r\nSubject: caf") + eightBit + bytes("\r\n\r\nx\r\n")) == nil)
        // A multipart whose closing delimiter never comes, or without a boundary.
        #expect(sevenBitMessage(bytes("MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=z\r\n\r\n--z\r\n\r\n")
                                + eightBit + bytes("\r\n")) == nil)
        #expect(sevenBitMessage(bytes("MIME-Version: 1.0\r\nContent-Type: multipart/mixed\r\n\r\n") + eightBit) == nil)
        // Already encoded parts cannot hold 8-bit octets: a base64 part with one is broken.
        #expect(sevenBitMessage(bytes("MIME-Version: 1.0\r\nContent-Transfer-Encoding: base64\r\n\r\n") + eightBit) == nil)
    }

    @Test func quotedPrintableEdges() {
        var out: [UInt8] = []
        appendQuotedPrintable(bytes("a=b \r\nc\t\r\n")[...], to: &out)
        #expect(String(decoding: out, as: UTF8.self) == "a=3Db=20\r\nc=09\r\n")
        out = []
        appendQuotedPrintable(ArraySlice(Array(repeating: UInt8(ascii: "x"), count: 200)), to: &out)
        #expect(longestLine(out) == 76)
        #expect(qpDecode(out) == Array(repeating: UInt8(ascii: "x"), count: 200))
    }
}

@Suite struct ClientSevenBitTests {
    static let latin1 = bytes("MIME-Version: 1.0\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
                              + "Content-Transfer-Encoding: 8bit\r\n\r\nK") + [0xF6] + bytes("ln\r\n")

    /// One transaction to a next hop with the given EHLO: the bytes after 354 and the outcome.
    func run(ehlo: String, message: [UInt8]) -> (mail: String, data: [UInt8], outcome: TransactionOutcome?) {
        var s = ClientSession(hostname: "relay.test")
        _ = s.receive(bytes("220 mx.test ESMTP\r\n"))
        _ = s.receive(bytes(ehlo))
        let t = OutboundTransaction(sender: "a@x.test", recipients: ["b@y.test"], size: message.count, bodyType: "8BITMIME")
        let group = s.send(t, message: message).flatMap(\.wirePieces).joined()
        let data = s.receive(bytes("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n")).flatMap(\.wirePieces).joined()
        let done = s.receive(bytes("250 2.0.0 queued\r\n"))
        let outcome = done.compactMap { if case .transactionFinished(let o) = $0 { return o } else { return nil } }.first
        return (String(decoding: group, as: UTF8.self), Array(data), outcome)
    }

    @Test func convertedForANextHopWithout8BITMIME() throws {
        let r = run(ehlo: "250-mx.test\r\n250 PIPELINING\r\n", message: Self.latin1)
        #expect(r.mail.hasPrefix("MAIL FROM:<a@x.test>\r\n"))  // no BODY=8BITMIME
        #expect(r.data.allSatisfy { $0 < 0x80 })
        #expect(String(decoding: r.data, as: UTF8.self).contains("Content-Transfer-Encoding: quoted-printable\r\n\r\nK=F6ln\r\n.\r\n"))
        #expect(r.outcome?.sevenBit == .converted)
    }

    @Test func leftAsItIsWith8BITMIME() {
        let r = run(ehlo: "250-mx.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n", message: Self.latin1)
        #expect(r.mail.contains("BODY=8BITMIME"))
        #expect(r.data == Self.latin1 + bytes(".\r\n"))
        #expect(r.outcome?.sevenBit == nil)
    }

    @Test func notMIMEGoesAsItIsAndSaysSo() {
        let m = bytes("Subject: x\r\n\r\nK") + [0xF6] + bytes("ln\r\n")
        let r = run(ehlo: "250-mx.test\r\n250 PIPELINING\r\n", message: m)
        #expect(r.data == m + bytes(".\r\n"))
        #expect(r.outcome?.sevenBit == .sentAsIs)
    }
}

@Suite struct ClientPreconvertedTests {
    @Test func aMessageConvertedByTheCallerIsSentAsGivenAndReported() throws {
        var s = ClientSession(hostname: "relay.test")
        _ = s.receive(bytes("220 mx.test ESMTP\r\n"))
        _ = s.receive(bytes("250-mx.test\r\n250 PIPELINING\r\n"))
        let converted = try #require(sevenBitMessage(ClientSevenBitTests.latin1))
        let t = OutboundTransaction(sender: "a@x.test", recipients: ["b@y.test"], size: converted.count, bodyType: "8BITMIME")
        _ = s.send(t, converted: converted, sevenBit: .converted)
        let data = s.receive(bytes("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n")).flatMap(\.wirePieces).joined()
        #expect(Array(data) == converted + bytes(".\r\n"))
        let done = s.receive(bytes("250 2.0.0 queued\r\n"))
        #expect(done.contains { if case .transactionFinished(let o) = $0 { return o.sevenBit == .converted } else { return false } })
    }
}
