import Foundation
import Testing
import SMTPProtocol
@testable import MailQueue

/// Just enough MIME to check a report's structure: header fields (unfolded), the multipart/report parts
/// split on the boundary, and RFC 3464's blocks of fields.
private struct ParsedMessage {
    var fields: [(name: String, value: String)]
    var body: [UInt8]

    init(_ bytes: [UInt8]) throws {
        let text = String(decoding: bytes, as: UTF8.self)
        let split = try #require(text.range(of: "\r\n\r\n"))
        fields = ParsedMessage.parseFields(String(text[..<split.lowerBound]))
        body = Array(text[split.upperBound...].utf8)
    }

    /// Unfolds CRLF + WSP (RFC 5322 section 2.2.3) and splits "Name: value" lines.
    static func parseFields(_ block: String) -> [(name: String, value: String)] {
        var out: [(String, String)] = []
        for line in block.components(separatedBy: "\r\n") {
            if line.first == " " || line.first == "\t", !out.isEmpty {
                out[out.count - 1].1 += line
            } else if let colon = line.firstIndex(of: ":") {
                out.append((String(line[..<colon]), String(line[line.index(after: colon)...])))
            } else {
                out.append((line, "<no colon>"))
            }
        }
        return out.map { ($0.0, $0.1.trimmingCharacters(in: .whitespaces)) }
    }

    func values(_ name: String) -> [String] {
        fields.filter { $0.name.lowercased() == name.lowercased() }.map(\.value)
    }

    func value(_ name: String) -> String? { values(name).count == 1 ? values(name)[0] : nil }

    var boundary: String? {
        guard let type = value("Content-Type"), let range = type.range(of: "boundary=\"") else { return nil }
        return String(type[range.upperBound...].prefix { $0 != "\"" })
    }

    /// The body parts between "--boundary" lines, up to "--boundary--".
    func parts() throws -> [ParsedMessage] {
        let boundary = try #require(boundary)
        let lines = String(decoding: body, as: UTF8.self).components(separatedBy: "\r\n")
        var parts: [[String]] = []
        var current: [String]?
        var closed = false
        for line in lines {
            if line == "--" + boundary + "--" {
                if let current { parts.append(current) }
                closed = true
                break
            } else if line == "--" + boundary {
                if let current { parts.append(current) }
                current = []
            } else {
                current?.append(line)
            }
        }
        #expect(closed, "the closing delimiter is missing")
        // The CRLF before a delimiter belongs to the delimiter (RFC 2046 section 5.1.1).
        return try parts.map { try ParsedMessage(Array($0.joined(separator: "\r\n").utf8)) }
    }

    var bodyText: String { String(decoding: body, as: UTF8.self) }

    /// RFC 3464 section 2.1: blocks of fields separated by empty lines.
    var statusBlocks: [[(name: String, value: String)]] {
        bodyText.components(separatedBy: "\r\n\r\n")
            .filter { !$0.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty }
            .map { ParsedMessage.parseFields($0.trimmingCharacters(in: .newlines)) }
    }
}

private func value(_ block: [(name: String, value: String)], _ name: String) -> String? {
    let found = block.filter { $0.name == name }
    return found.count == 1 ? found[0].value : nil
}

/// Every CR is followed by LF and every LF preceded by CR; no line (without its CRLF) over `limit` octets.
private func checkLines(_ bytes: [UInt8], limit: Int = 998, sourceLocation: SourceLocation = #_sourceLocation) {
    var lineLength = 0, longest = 0, bare = 0
    for (i, b) in bytes.enumerated() {
        if b == 0x0D {
            if i + 1 >= bytes.count || bytes[i + 1] != 0x0A { bare += 1 }
        } else if b == 0x0A {
            if i == 0 || bytes[i - 1] != 0x0D { bare += 1 }
            longest = max(longest, lineLength)
            lineLength = 0
            continue
        }
        if b != 0x0D { lineLength += 1 }
    }
    #expect(bare == 0, "bare CR or LF", sourceLocation: sourceLocation)
    #expect(longest <= limit, "a line of \(longest) octets", sourceLocation: sourceLocation)
    #expect(lineLength == 0, "the message must end with CRLF", sourceLocation: sourceLocation)
}

private func decodeQuotedPrintable(_ text: String) -> [UInt8] {
    var out: [UInt8] = []
    let lines = text.components(separatedBy: "\r\n")
    for (n, line) in lines.enumerated() {
        var bytes = Array(line.utf8)[...]
        var soft = false
        if bytes.last == 0x3D { soft = true; bytes = bytes.dropLast() }
        var i = bytes.startIndex
        while i < bytes.endIndex {
            if bytes[i] == 0x3D, i + 2 < bytes.endIndex,
               let v = UInt8(String(decoding: bytes[(i + 1)...(i + 2)], as: UTF8.self), radix: 16) {
                out.append(v)
                i += 3
            } else {
                out.append(bytes[i])
                i += 1
            }
        }
        if !soft && n < lines.count - 1 { out += [0x0D, 0x0A] }
    }
    return out
}

/// The text part with wrapped lines joined again.
private func unwrapped(_ text: String) -> String { text.replacingOccurrences(of: "\r\n    ", with: " ") }

private let arrival = 1_700_000_000.25
private let now = 1_700_086_400

private func envelope(sender: String = "alice@example.org") -> Envelope {
    Envelope(id: QueueID(microseconds: 1_700_000_000_250_000), sender: sender,
             recipients: [Recipient(address: "bob@example.net"), Recipient(address: "carol@example.com")],
             arrival: arrival, client: ClientInfo(ip: "192.0.2.7", helo: "client.example.org"))
}

private let originalHeaders = Array(("Received: from client.example.org ([192.0.2.7])\r\n\tby mx.tern.test; "
    + "Tue, 14 Nov 2023 22:13:20 +0000\r\nFrom: Alice <alice@example.org>\r\nTo: bob@example.net\r\n"
    + "Subject: Lunch\r\nMessage-ID: <1@example.org>\r\n\r\n").utf8)

private let failed = [
    FailedRecipient(address: "bob@example.net", status: "5.1.1", diagnostic: "smtp; 550 5.1.1 <bob@example.net>: no such user",
                    remoteMTA: "dns; mx.example.net"),
    FailedRecipient(address: "carol@example.com", status: "5.4.4", diagnostic: "no MX or address records for example.com"),
]

@Suite struct BounceTests {
    @Test func bounceIsAMultipartReportWithTheThreeParts() throws {
        let bytes = try #require(DSN.bounce(for: envelope(), failed: failed, originalHeaders: originalHeaders,
                                            reportingMTA: "mx.tern.test", now: now, boundary: "b-123/456"))
        checkLines(bytes)
        #expect(bytes.allSatisfy { $0 < 0x80 && $0 != 0 }, "7-bit")
        let message = try ParsedMessage(bytes)
        #expect(message.value("From") == "MAILER-DAEMON@mx.tern.test")
        #expect(message.value("To") == "alice@example.org")
        #expect(message.value("Subject") == "Undelivered Mail Returned to Sender")
        #expect(message.value("Date") == rfc5322Date(now))
        #expect(message.value("Message-ID") == "<\(now).060A2418221090.bounce@mx.tern.test>")
        #expect(message.value("MIME-Version") == "1.0")
        #expect(message.value("Auto-Submitted") == "auto-replied")
        let type = try #require(message.value("Content-Type"))
        #expect(type.hasPrefix("multipart/report;"))
        #expect(type.contains("report-type=delivery-status"))
        #expect(message.boundary == "b-123/456")

        let parts = try message.parts()
        try #require(parts.count == 3)
        #expect(parts.map { $0.value("Content-Type") }
            == ["text/plain; charset=us-ascii", "message/delivery-status", "text/rfc822-headers"])

        // 1: for people: each recipient with what the remote side said.
        let text = unwrapped(parts[0].bodyText)
        #expect(text.contains("<bob@example.net>: failed, status 5.1.1, host mx.example.net said: 550 5.1.1 <bob@example.net>: no such user"))
        #expect(text.contains("<carol@example.com>: failed, status 5.4.4 said: no MX or address records"))
        #expect(text.contains("060A2418221090"))

        // 2: per-message fields, then one block per recipient.
        let blocks = parts[1].statusBlocks
        try #require(blocks.count == 3)
        #expect(value(blocks[0], "Reporting-MTA") == "dns; mx.tern.test")
        #expect(value(blocks[0], "Arrival-Date") == rfc5322Date(1_700_000_000))
        #expect(value(blocks[0], "Received-From-MTA") == "dns; client.example.org ([192.0.2.7])")
        #expect(value(blocks[0], "X-Tern-Queue-ID") == "060A2418221090")
        #expect(blocks[0].map(\.name) == ["Reporting-MTA", "Received-From-MTA", "Arrival-Date", "X-Tern-Queue-ID"])
        #expect(value(blocks[1], "Final-Recipient") == "rfc822; bob@example.net")
        #expect(value(blocks[1], "Action") == "failed")
        #expect(value(blocks[1], "Status") == "5.1.1")
        #expect(value(blocks[1], "Remote-MTA") == "dns; mx.example.net")
        #expect(value(blocks[1], "Diagnostic-Code") == "smtp; 550 5.1.1 <bob@example.net>: no such user")
        #expect(value(blocks[1], "Last-Attempt-Date") == rfc5322Date(now))
        #expect(value(blocks[2], "Final-Recipient") == "rfc822; carol@example.com")
        #expect(value(blocks[2], "Status") == "5.4.4")
        #expect(value(blocks[2], "Remote-MTA") == nil)
        #expect(value(blocks[2], "Diagnostic-Code") == "smtp; no MX or address records for example.com")
        // Per-recipient fields come in RFC 3464's order.
        #expect(blocks[1].map(\.name) == ["Final-Recipient", "Action", "Status", "Remote-MTA", "Diagnostic-Code",
                                          "Last-Attempt-Date"])

        // 3: the original header section, byte for byte.
        #expect(parts[2].body == originalHeaders)
    }

    /// The failures' classes, each once, in the message's header; none without classes.
    @Test func bounceClassesInTheHeader() throws {
        var classified = failed + [FailedRecipient(address: "dave@example.net", status: "5.1.1", diagnostic: "smtp; 550 5.1.1 no")]
        classified[0].bounceClass = "InvalidRecipient"
        classified[1].bounceClass = "BadDomain"
        classified[2].bounceClass = "InvalidRecipient"
        let bytes = try #require(DSN.bounce(for: envelope(), failed: classified, originalHeaders: originalHeaders,
                                            reportingMTA: "mx.tern.test", now: now, boundary: "b"))
        #expect(try ParsedMessage(bytes).value("X-Tern-Bounce-Class") == "InvalidRecipient, BadDomain")
        let plain = try #require(DSN.bounce(for: envelope(), failed: failed, originalHeaders: originalHeaders,
                                            reportingMTA: "mx.tern.test", now: now, boundary: "b"))
        #expect(try ParsedMessage(plain).value("X-Tern-Bounce-Class") == nil)
    }

    @Test func delayWarningSaysDelayed() throws {
        let delayed = [FailedRecipient(address: "bob@example.net", status: "4.4.1", diagnostic: "connection timed out",
                                       remoteMTA: "mx.example.net")]
        let bytes = try #require(DSN.delayWarning(for: envelope(), delayed: delayed, originalHeaders: originalHeaders,
                                                  reportingMTA: "mx.tern.test", now: now, boundary: "xyz"))
        checkLines(bytes)
        let message = try ParsedMessage(bytes)
        #expect(message.value("Subject") == "Delayed Mail (still being retried)")
        #expect(message.value("Message-ID") == "<\(now).060A2418221090.delay@mx.tern.test>")
        let parts = try message.parts()
        try #require(parts.count == 3)
        #expect(parts[0].bodyText.replacingOccurrences(of: "\r\n", with: " ").contains("the mail system will keep trying"))
        let blocks = parts[1].statusBlocks
        try #require(blocks.count == 2)
        #expect(value(blocks[1], "Action") == "delayed")
        #expect(value(blocks[1], "Status") == "4.4.1")
        #expect(value(blocks[1], "Remote-MTA") == "dns; mx.example.net")
        #expect(value(blocks[1], "Diagnostic-Code") == "smtp; connection timed out")
    }

    @Test func neverBounceABounce() {
        #expect(DSN.bounce(for: envelope(sender: ""), failed: failed, originalHeaders: originalHeaders,
                           reportingMTA: "mx.tern.test", now: now, boundary: "b") == nil)
        #expect(DSN.delayWarning(for: envelope(sender: ""), delayed: failed, originalHeaders: originalHeaders,
                                 reportingMTA: "mx.tern.test", now: now, boundary: "b") == nil)
        #expect(DSN.bounce(for: envelope(), failed: [], originalHeaders: originalHeaders,
                           reportingMTA: "mx.tern.test", now: now, boundary: "b") == nil)
        #expect(DSN.bounce(for: envelope(), failed: failed, originalHeaders: originalHeaders,
                           reportingMTA: "mx.tern.test", now: now, boundary: "b") != nil)
    }

    @Test func longDiagnosticsAreFoldedNotLost() throws {
        let words = (0..<600).map { "word\($0)" }.joined(separator: " ")  // about 5 KB with spaces
        let unbroken = String(repeating: "x", count: 3000)                   // no place to fold
        let long = [FailedRecipient(address: "bob@example.net", status: "5.0.0", diagnostic: "smtp; 550 " + words),
                    FailedRecipient(address: "carol@example.com", status: "5.0.0", diagnostic: unbroken,
                                    remoteMTA: String(repeating: "m", count: 1200) + ".example")]
        let bytes = try #require(DSN.bounce(for: envelope(), failed: long, originalHeaders: originalHeaders,
                                            reportingMTA: "mx.tern.test", now: now, boundary: "b"))
        checkLines(bytes)
        let parts = try ParsedMessage(bytes).parts()
        try #require(parts.count == 3)
        checkLines(Array(parts[1].body) + [0x0D, 0x0A], limit: 998)
        let blocks = parts[1].statusBlocks
        try #require(blocks.count == 3)
        #expect(value(blocks[1], "Diagnostic-Code") == "smtp; 550 " + words)
        let pieces = try #require(value(blocks[2], "Diagnostic-Code"))
        #expect(pieces.replacingOccurrences(of: " ", with: "") == "smtp;" + unbroken)
        // Folding keeps to about 78 octets where there are spaces.
        let statusLines = parts[1].bodyText.components(separatedBy: "\r\n")
        let foldable = statusLines.filter { !$0.contains("xxxxxxxxxx") && !$0.contains("mmmmmmmmmm") }
        #expect(foldable.allSatisfy { $0.utf8.count <= 78 }, "\(foldable.map(\.utf8.count).max() ?? 0)")
        #expect(parts[0].bodyText.components(separatedBy: "\r\n")
            .filter { !$0.contains("xxxxxxxxxx") && !$0.contains("mmmmmmmmmm") }.allSatisfy { $0.utf8.count <= 78 })
    }

    @Test func controlCharactersCannotInjectFields() throws {
        let evil = [FailedRecipient(address: "bob@example.net\r\nX-Evil: 1", status: "5.1.1\r\nX-Evil: 2",
                                    diagnostic: "smtp; 550 no\r\nX-Evil: 3\r\n\r\n--b\r\nX-Evil: 4",
                                    remoteMTA: "dns; mx\nX-Evil: 5")]
        let bytes = try #require(DSN.bounce(for: envelope(sender: "alice@example.org\r\nBcc: x@y"), failed: evil,
                                            originalHeaders: originalHeaders, reportingMTA: "mx.tern.test\r\nX-Evil: 6",
                                            now: now, boundary: "b"))
        checkLines(bytes)
        let text = String(decoding: bytes, as: UTF8.self)
        #expect(!text.components(separatedBy: "\r\n").contains { $0.hasPrefix("X-Evil") || $0.hasPrefix("Bcc") })
        let message = try ParsedMessage(bytes)
        let parts = try message.parts()
        #expect(parts.count == 3)
        #expect(parts[1].statusBlocks.count == 2)
    }

    @Test func nonASCIIStaysSevenBitExceptTheSenderAddress() throws {
        let utf8 = [FailedRecipient(address: "jürgen@bücher.example", status: "5.1.1",
                                    diagnostic: "smtp; 550 Benutzer unbekannt: jürgen")]
        let headers = Array("Subject: Grüße\r\nX-Long: \(String(repeating: "ab ", count: 700))\nFrom: a@b\r\n\r\n".utf8)
        let bytes = try #require(DSN.bounce(for: envelope(), failed: utf8, originalHeaders: headers,
                                            reportingMTA: "mx.tern.test", now: now, boundary: "b"))
        checkLines(bytes)
        #expect(bytes.allSatisfy { $0 < 0x80 }, "a 7-bit report")
        let parts = try ParsedMessage(bytes).parts()
        try #require(parts.count == 3)

        #expect(parts[0].value("Content-Type") == "text/plain; charset=utf-8")
        #expect(parts[0].value("Content-Transfer-Encoding") == "quoted-printable")
        let text = unwrapped(String(decoding: decodeQuotedPrintable(parts[0].bodyText), as: UTF8.self))
        #expect(text.contains("<jürgen@bücher.example>: failed, status 5.1.1 said: 550 Benutzer unbekannt: jürgen"))

        let blocks = parts[1].statusBlocks
        #expect(value(blocks[1], "Final-Recipient") == "utf-8; j\\x{FC}rgen@b\\x{FC}cher.example")
        #expect(value(blocks[1], "Diagnostic-Code") == "smtp; 550 Benutzer unbekannt: j?rgen")

        #expect(parts[2].value("Content-Transfer-Encoding") == "quoted-printable")
        checkLines(Array(parts[2].body) + [0x0D, 0x0A], limit: 76)
        let normalised = Array(String(decoding: headers, as: UTF8.self).replacingOccurrences(of: "\n", with: "\r\n")
            .replacingOccurrences(of: "\r\r\n", with: "\r\n").utf8)
        #expect(decodeQuotedPrintable(parts[2].bodyText) == normalised)

        // An ASCII sender needs no SMTPUTF8 for its report, even when the message was an SMTPUTF8 one.
        var utf8Message = envelope()
        utf8Message.smtputf8 = true
        #expect(!DSN.requiresSMTPUTF8(utf8Message))
        let sevenBit = try #require(DSN.bounce(for: utf8Message, failed: utf8, originalHeaders: headers,
                                               reportingMTA: "mx.tern.test", now: now, boundary: "b"))
        #expect(sevenBit.allSatisfy { $0 < 0x80 })
    }

    /// A report to a UTF-8 sender is internationalized (RFC 6532, RFC 6533): To: as is, 8bit,
    /// message/global-delivery-status with utf-8-addr-unitext addresses, message/global-headers.
    @Test func utf8SenderGetsAGlobalReport() throws {
        let sender = envelope(sender: "zoë@example.org")
        #expect(DSN.requiresSMTPUTF8(sender))
        let utf8 = [FailedRecipient(address: "jürgen+x=y@bücher.example", status: "5.1.1",
                                    diagnostic: "smtp; 550 Benutzer unbekannt: jürgen", remoteMTA: "dns; mx.bücher.example")]
        let headers = Array("From: Zoë <zoë@example.org>\r\nSubject: Grüße\r\nTo: jürgen+x=y@bücher.example\r\n\r\n".utf8)
        let bytes = try #require(DSN.bounce(for: sender, failed: utf8, originalHeaders: headers,
                                            reportingMTA: "mx.tern.test", now: now, boundary: "b"))
        checkLines(bytes)
        #expect(String(validating: bytes, as: UTF8.self) != nil, "UTF-8 throughout")
        let message = try ParsedMessage(bytes)
        #expect(message.value("To") == "zoë@example.org")
        #expect(message.value("Content-Transfer-Encoding") == "8bit")
        let parts = try message.parts()
        try #require(parts.count == 3)

        #expect(parts[1].value("Content-Type") == "message/global-delivery-status")
        #expect(parts[1].value("Content-Transfer-Encoding") == "8bit")
        let blocks = parts[1].statusBlocks
        try #require(blocks.count == 2)
        // utf-8-addr-unitext: UTF-8 as is, "+" and "=" (not QCHAR) escaped.
        #expect(value(blocks[1], "Final-Recipient") == "utf-8; jürgen\\x{2B}x\\x{3D}y@bücher.example")
        #expect(value(blocks[1], "Diagnostic-Code") == "smtp; 550 Benutzer unbekannt: jürgen")
        #expect(value(blocks[1], "Remote-MTA") == "dns; mx.bücher.example")

        #expect(parts[2].value("Content-Type") == "message/global-headers")
        #expect(parts[2].value("Content-Transfer-Encoding") == "8bit")
        #expect(Array(parts[2].body) == headers, "the original header section, byte for byte")

        // Headers that are not valid UTF-8 still go quoted-printable, as text/rfc822-headers.
        let broken = Array("Subject: ".utf8) + [0xFF, 0xFE] + Array("\r\n\r\n".utf8)
        let fallback = try #require(DSN.bounce(for: sender, failed: utf8, originalHeaders: broken,
                                               reportingMTA: "mx.tern.test", now: now, boundary: "b"))
        let fallbackParts = try ParsedMessage(fallback).parts()
        try #require(fallbackParts.count == 3)
        #expect(fallbackParts[2].value("Content-Type") == "text/rfc822-headers")
        #expect(fallbackParts[2].value("Content-Transfer-Encoding") == "quoted-printable")
        #expect(String(validating: fallback, as: UTF8.self) != nil)

        // The delay warning is the same report.
        let delay = try #require(DSN.delayWarning(for: sender, delayed: utf8, originalHeaders: headers,
                                                  reportingMTA: "mx.tern.test", now: now, boundary: "b"))
        #expect(try ParsedMessage(delay).parts()[1].value("Content-Type") == "message/global-delivery-status")
    }

    @Test func boundaryIsSanitisedAndAvoidsTheContent() throws {
        let sneaky = Array("Subject: hi\r\nX-Trap: --b\r\n\r\n".utf8)
        let bytes = try #require(DSN.bounce(for: envelope(), failed: failed, originalHeaders: sneaky,
                                            reportingMTA: "mx.tern.test", now: now, boundary: "b"))
        let message = try ParsedMessage(bytes)
        let boundary = try #require(message.boundary)
        #expect(boundary != "b" && boundary.hasPrefix("b"))
        let parts = try message.parts()
        try #require(parts.count == 3)
        #expect(parts[2].bodyText.contains("X-Trap: --b"))

        let odd = try #require(DSN.bounce(for: envelope(), failed: failed, originalHeaders: originalHeaders,
                                          reportingMTA: "mx.tern.test", now: now, boundary: "a b\"c\r\nd"))
        #expect(try ParsedMessage(odd).boundary == "abcd")
        #expect(try ParsedMessage(odd).parts().count == 3)
    }

    @Test func headerSectionEndsAtTheFirstEmptyLine() {
        let message = Array("From: a@b\r\nSubject: x\r\n\r\nbody\r\n\r\nmore\r\n".utf8)
        #expect(DSN.headerSection(of: message) == Array("From: a@b\r\nSubject: x\r\n\r\n".utf8))
        #expect(DSN.headerSection(of: Array("A: 1\nB: 2\n\nbody".utf8)) == Array("A: 1\nB: 2\n\n".utf8))
        #expect(DSN.headerSection(of: Array("\r\nbody".utf8)) == Array("\r\n".utf8))
        #expect(DSN.headerSection(of: Array("A: 1\r\nB: 2\r\n".utf8)) == Array("A: 1\r\nB: 2\r\n".utf8))
        #expect(DSN.headerSection(of: Array("A: 1\r\nB: 2".utf8)) == Array("A: 1\r\nB: 2".utf8))
        #expect(DSN.headerSection(of: []) == [])
        // A CR that is not part of CRLF does not end the header section.
        #expect(DSN.headerSection(of: Array("A: 1\rX\r\n\r\nb".utf8)) == Array("A: 1\rX\r\n\r\n".utf8))
    }
}

@Suite struct BounceDSNTests {
    private func dsnEnvelope(ret: DSNReturn?) -> Envelope {
        var e = envelope()
        e.ret = ret
        e.envid = "QQ+2B314159"
        return e
    }

    private let withOrcpt = [FailedRecipient(address: "bob@example.net", status: "5.1.1", diagnostic: "smtp; 550 5.1.1 no",
                                             originalRecipient: "rfc822;Bob+2BAlias@example.net")]
    private let body = Array("Hello Bob,\r\n.see you at noon\r\n".utf8)

    @Test func envidAndOrcptAreInTheReport() throws {
        let bytes = try #require(DSN.bounce(for: dsnEnvelope(ret: nil), failed: withOrcpt, originalHeaders: originalHeaders,
                                            reportingMTA: "mx.tern.test", now: now, boundary: "b"))
        let blocks = try ParsedMessage(bytes).parts()[1].statusBlocks
        try #require(blocks.count == 2)
        // RFC 3464 order: Original-Envelope-Id first; Original-Recipient before Final-Recipient; xtext decoded.
        #expect(blocks[0].first?.name == "Original-Envelope-Id")
        #expect(value(blocks[0], "Original-Envelope-Id") == "QQ+314159")
        #expect(blocks[1].map(\.name).prefix(2) == ["Original-Recipient", "Final-Recipient"])
        #expect(value(blocks[1], "Original-Recipient") == "rfc822; Bob+Alias@example.net")
    }

    @Test func retFullReturnsTheWholeMessageAndHdrsTheHeaders() throws {
        let original = originalHeaders + body
        let full = try #require(DSN.bounce(for: dsnEnvelope(ret: .full), failed: withOrcpt, originalHeaders: originalHeaders,
                                           original: original, reportingMTA: "mx.tern.test", now: now, boundary: "b"))
        checkLines(full)
        let parts = try ParsedMessage(full).parts()
        #expect(parts[2].value("Content-Type") == "message/rfc822")
        #expect(parts[2].body == original)
        for ret in [DSNReturn.headers, nil] {
            let headers = try #require(DSN.bounce(for: dsnEnvelope(ret: ret), failed: withOrcpt,
                                                  originalHeaders: originalHeaders, original: original,
                                                  reportingMTA: "mx.tern.test", now: now, boundary: "b"))
            let p = try ParsedMessage(headers).parts()
            #expect(p[2].value("Content-Type") == "text/rfc822-headers")
            #expect(p[2].body == originalHeaders)
        }
        // Past the limit, headers only.
        let big = originalHeaders + Array(repeating: UInt8(ascii: "x"), count: DSN.fullReturnLimit) + [13, 10]
        let capped = try #require(DSN.bounce(for: dsnEnvelope(ret: .full), failed: withOrcpt, originalHeaders: originalHeaders,
                                             original: big, reportingMTA: "mx.tern.test", now: now, boundary: "b"))
        #expect(try ParsedMessage(capped).parts()[2].value("Content-Type") == "text/rfc822-headers")
    }

    @Test func anEightBitMessageReturnedWholeIsLabelled8bit() throws {
        let original = originalHeaders + Array("Grüße\r\n".utf8)
        let bytes = try #require(DSN.bounce(for: dsnEnvelope(ret: .full), failed: withOrcpt, originalHeaders: originalHeaders,
                                            original: original, reportingMTA: "mx.tern.test", now: now, boundary: "b"))
        let message = try ParsedMessage(bytes)
        #expect(message.value("Content-Transfer-Encoding") == "8bit")
        #expect(try message.parts()[2].value("Content-Transfer-Encoding") == "8bit")
    }

    @Test func relayedNoticeSaysRelayed() throws {
        let done = [FailedRecipient(address: "bob@example.net", status: "2.0.0", diagnostic: "smtp; 250 2.0.0 queued",
                                    remoteMTA: "dns; mx.example.net", originalRecipient: "rfc822;bob@example.net")]
        let bytes = try #require(DSN.relayed(for: dsnEnvelope(ret: .full), relayed: done, originalHeaders: originalHeaders,
                                             reportingMTA: "mx.tern.test", now: now, boundary: "b"))
        checkLines(bytes)
        let message = try ParsedMessage(bytes)
        #expect(message.value("Subject") == "Successful Mail Delivery Report")
        #expect(message.value("Message-ID") == "<\(now).060A2418221090.relayed@mx.tern.test>")
        let parts = try message.parts()
        #expect(unwrapped(parts[0].bodyText).contains("<bob@example.net>: relayed, status 2.0.0"))
        let blocks = parts[1].statusBlocks
        #expect(value(blocks[1], "Action") == "relayed")
        #expect(value(blocks[1], "Status") == "2.0.0")
        // RET=FULL is for failures: a relayed notice carries the headers only.
        #expect(parts[2].value("Content-Type") == "text/rfc822-headers")
    }
}
