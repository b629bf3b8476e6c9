// Delivery status notifications: the bounce (Action: failed), the delay warning (Action: delayed) and
// the relayed notice (Action: relayed, RFC 3461 §5.2.2: NOTIFY=SUCCESS, and the next hop does not offer
// DSN) sent from the null sender to a message's sender.
//
// RFC 3461: ENVID goes in Original-Envelope-Id and each ORCPT in Original-Recipient, decoded from
// xtext. A bounce of a message sent with RET=FULL returns the whole message (message/rfc822) when it
// is at most `fullReturnLimit` octets, like Postfix's bounce_size_limit; otherwise, and for RET=HDRS or
// no RET, the header section. A BINARYMIME message is never returned whole: its body may not survive
// as a 7-bit or 8-bit MIME part (RFC 3030 §3), so the bounce has its header section.
//
// The shape is RFC 3464 (DSN) inside RFC 6522 multipart/report (which obsoletes RFC 3462):
//
//     multipart/report; report-type=delivery-status
//       1. text/plain               for people: what happened to which recipient
//       2. message/delivery-status  for programs: per-message fields, then one block per recipient
//       3. text/rfc822-headers      the original message's header section
//
// Every line ends in CRLF and stays within 998 octets (RFC 5322 section 2.1.1): long field values are
// folded at spaces (a word longer than 900 octets is split), text is wrapped. The report is 7-bit:
//   - the text part is us-ascii, or quoted-printable UTF-8 when an address or diagnostic is not ASCII;
//   - in message/delivery-status a non-ASCII address is written as RFC 6533's "utf-8" address type in
//     its 7-bit form (`\x{HEX}` escapes); other non-ASCII characters and controls become "?";
//   - the original headers go verbatim when they are 7-bit with short lines, else quoted-printable.
// The exception: a report to a UTF-8 sender address. Such a sender can only be reached over SMTPUTF8
// (RFC 6531), so the report is internationalized (RFC 6532, RFC 6533 section 6), and its envelope asks
// for SMTPUTF8 (`requiresSMTPUTF8`): no downgrade, a next hop without it fails the report with 5.6.7.
//   - the address goes as is into the To: field, and the message is labelled 8bit;
//   - part 2 is message/global-delivery-status (8bit): UTF-8 addresses in RFC 6533's utf-8-addr-unitext
//     form (only ASCII controls, space, "\", "+" and "=" escaped), UTF-8 diagnostics kept;
//   - part 3 is message/global-headers, the original header section as is, when it is valid UTF-8
//     with short lines (else text/rfc822-headers, quoted-printable, as above).
// A report to an ASCII sender stays 7-bit even when the message was SMTPUTF8: RFC 6533's 7-bit
// address form carries its UTF-8 recipients, and it reaches any next hop.
//
// Never bounce a bounce (RFC 5321 section 4.5.5): there is no report for the null sender.

import SMTPProtocol

/// A recipient to report on.
public struct FailedRecipient: Sendable, Equatable {
    public var address: String
    /// RFC 3463 enhanced status code, "5.1.1" (failed) or "4.4.1" (delayed).
    public var status: String
    /// "smtp; 550 5.1.1 no such user"; a value without a "type;" prefix gets "smtp; ".
    public var diagnostic: String?
    /// "dns; mx.example.net"; a value without a "type;" prefix gets "dns; ".
    public var remoteMTA: String?
    /// The recipient's ORCPT= as it arrived ("rfc822;" and xtext), for Original-Recipient.
    public var originalRecipient: String?
    /// The failure's class (BounceClass.swift), for the report's X-Tern-Bounce-Class header.
    public var bounceClass: String?

    public init(address: String, status: String, diagnostic: String? = nil, remoteMTA: String? = nil,
                originalRecipient: String? = nil) {
        self.address = address
        self.status = status
        self.diagnostic = diagnostic
        self.remoteMTA = remoteMTA
        self.originalRecipient = originalRecipient
    }
}

public enum DSN {
    /// The bounce message (bytes with CRLF line ends) to send from the null sender to `envelope.sender`;
    /// nil when the sender is null (never bounce a bounce) or there is no recipient to report.
    /// `boundary` should be unique (random); characters RFC 2046 does not allow are dropped, and a
    /// suffix is added if it occurs in the content.
    /// `original`: the whole message, returned instead of its headers for RET=FULL.
    public static func bounce(for envelope: Envelope, failed: [FailedRecipient], originalHeaders: [UInt8],
                              original: [UInt8]? = nil, reportingMTA: String, now: Int, boundary: String) -> [UInt8]? {
        let binary = envelope.bodyType?.uppercased() == "BINARYMIME"
        let full = envelope.ret == .full && !binary
            ? original.flatMap { !$0.isEmpty && $0.count <= fullReturnLimit ? $0 : nil } : nil
        return report(.failed, envelope: envelope, recipients: failed, originalHeaders: originalHeaders,
                      fullMessage: full, reportingMTA: reportingMTA, now: now, boundary: boundary)
    }

    /// The largest message a RET=FULL bounce returns whole (Postfix's bounce_size_limit).
    public static let fullReturnLimit = 50_000

    /// The relayed notice (Action: relayed), same shape.
    public static func relayed(for envelope: Envelope, relayed: [FailedRecipient], originalHeaders: [UInt8],
                               reportingMTA: String, now: Int, boundary: String) -> [UInt8]? {
        report(.relayed, envelope: envelope, recipients: relayed, originalHeaders: originalHeaders,
               reportingMTA: reportingMTA, now: now, boundary: boundary)
    }

    /// A delay warning (Action: delayed), same shape.
    public static func delayWarning(for envelope: Envelope, delayed: [FailedRecipient], originalHeaders: [UInt8],
                                    reportingMTA: String, now: Int, boundary: String) -> [UInt8]? {
        report(.delayed, envelope: envelope, recipients: delayed, originalHeaders: originalHeaders,
               reportingMTA: reportingMTA, now: now, boundary: boundary)
    }

    /// Whether the report to `envelope.sender` must go over SMTPUTF8 with RFC 6532 headers: the sender's
    /// address is not ASCII. The caller sets the report's envelope to match (SMTPUTF8, BODY=8BITMIME).
    public static func requiresSMTPUTF8(_ envelope: Envelope) -> Bool {
        envelope.sender.utf8.contains { $0 >= 0x80 }
    }

    /// The header section of a stored message: the bytes up to and including the empty line that ends it
    /// (CRLF, or a bare LF). The whole message when it has no empty line.
    public static func headerSection(of message: [UInt8]) -> [UInt8] {
        var lineStart = 0
        while lineStart < message.count {
            if message[lineStart] == lf { return Array(message[...lineStart]) }
            if message[lineStart] == cr, lineStart + 1 < message.count, message[lineStart + 1] == lf {
                return Array(message[...(lineStart + 1)])
            }
            guard let end = message[lineStart...].firstIndex(of: lf) else { break }
            lineStart = end + 1
        }
        return message
    }

    // MARK: Building the report

    enum Action: String {
        case failed, delayed, relayed

        var subject: String {
            switch self {
            case .failed: return "Undelivered Mail Returned to Sender"
            case .delayed: return "Delayed Mail (still being retried)"
            case .relayed: return "Successful Mail Delivery Report"
            }
        }
        /// In the report's Message-ID.
        var tag: String {
            switch self {
            case .failed: return "bounce"
            case .delayed: return "delay"
            case .relayed: return "relayed"
            }
        }
        var headersDescription: String {
            switch self {
            case .failed: return "Undelivered Message Headers"
            case .delayed: return "Delayed Message Headers"
            case .relayed: return "Message Headers"
            }
        }
    }

    static func report(_ action: Action, envelope: Envelope, recipients: [FailedRecipient], originalHeaders: [UInt8],
                       fullMessage: [UInt8]? = nil, reportingMTA: String, now: Int,
                       boundary requestedBoundary: String) -> [UInt8]? {
        guard !envelope.sender.isEmpty, !recipients.isEmpty else { return nil }
        let global = requiresSMTPUTF8(envelope)
        let mta = ascii(reportingMTA).replacingOccurrences(" ", with: "")
        let date = rfc5322Date(now)
        let arrival = envelope.arrival.isFinite && abs(envelope.arrival) < 1e15 ? Int(envelope.arrival.rounded(.down)) : now

        // Part 1: for people.
        var text: [String] = []
        text += wrap("This is the mail system at host \(mta).")
        text.append("")
        switch action {
        case .failed:
            text += wrap("I'm sorry to have to inform you that your message could not be delivered to one or "
                + "more recipients. The headers of your message are attached below.")
        case .delayed:
            text += wrap("This is a warning only; you do not need to send your message again. It could not be "
                + "delivered yet to one or more recipients, and the mail system will keep trying. If it "
                + "still cannot be delivered, you will get another message. The headers of your message "
                + "are attached below.")
        case .relayed:
            text += wrap("Your message was delivered to the mail systems below, as you asked to be told. They do "
                + "not report delivery further, so this is the last notice you will get about these "
                + "recipients. The headers of your message are attached below.")
        }
        text.append("")
        text += wrap("Queue ID \(envelope.id), received \(rfc5322Date(arrival)).")
        text.append("")
        for r in recipients {
            var line = "<\(printable(r.address))>: \(action.rawValue), status \(ascii(r.status))"
            if let host = r.remoteMTA { line += ", host \(printable(untyped(host)))" }
            if let diagnostic = r.diagnostic { line += " said: \(printable(untyped(diagnostic)))" }
            text += wrap(line, continuation: "    ")
            text.append("")
        }
        let textBody = lines(text)
        let textIsASCII = textBody.allSatisfy { $0 < 0x80 }
        let textPart = textIsASCII ? textBody : quotedPrintable(textBody)

        // Part 2: for programs (RFC 3464 section 2.2 and 2.3, fields in the order listed there).
        var status: [String] = []
        if let envid = envelope.envid { status += field("Original-Envelope-Id", fromXtext(envid)) }
        status += field("Reporting-MTA", "dns; \(mta)")
        if !envelope.client.helo.isEmpty {
            status += field("Received-From-MTA", "dns; \(ascii(envelope.client.helo)) ([\(ascii(envelope.client.ip))])")
        }
        status += field("Arrival-Date", rfc5322Date(arrival))
        status += field("X-Tern-Queue-ID", envelope.id.rawValue)  // extension fields come last
        for r in recipients {
            status.append("")
            if let orcpt = r.originalRecipient, let semicolon = orcpt.firstIndex(of: ";") {
                let type = ascii(String(orcpt[..<semicolon]))
                status += field("Original-Recipient", "\(type); \(fromXtext(String(orcpt[orcpt.index(after: semicolon)...])))")
            }
            status += field("Final-Recipient", typedAddress(r.address, unitext: global))
            status += field("Action", action.rawValue)
            status += field("Status", ascii(r.status))
            if let host = r.remoteMTA { status += field("Remote-MTA", typed(host, default: "dns", utf8: global)) }
            if let diagnostic = r.diagnostic {
                status += field("Diagnostic-Code", typed(diagnostic, default: "smtp", utf8: global))
            }
            status += field("Last-Attempt-Date", date)
        }
        let statusPart = lines(status)

        // Part 3: the original header section.
        let headerLines = splitLines(originalHeaders)
        let headersAre7Bit = headerLines.allSatisfy { line in line.count <= 998 && line.allSatisfy { $0 != 0 && $0 < 0x80 } }
        // RFC 6533 section 6.3: UTF-8 header fields (RFC 6532) as they are, in an internationalized report.
        let globalHeaders = global && !headersAre7Bit && headerLines.allSatisfy { line in
            line.count <= 998 && !line.contains(0) && String(validating: line, as: UTF8.self) != nil
        }
        var headersPart: [UInt8] = []
        for line in headerLines { headersPart += line + crlf }
        if !headersAre7Bit && !globalHeaders { headersPart = quotedPrintable(headersPart) }
        // RET=FULL: the message itself (message/rfc822 takes 8bit, never an encoding, RFC 2046 §5.2.1).
        let fullIs8Bit = fullMessage?.contains { $0 >= 0x80 } ?? false
        if let fullMessage { headersPart = fullMessage }

        let boundary = uniqueBoundary(requestedBoundary, notIn: [textPart, statusPart, headersPart])

        var out: [UInt8] = []
        out.reserveCapacity(textPart.count + statusPart.count + headersPart.count + 2048)
        func put(_ s: String) { out += Array(s.utf8) + crlf }
        put("From: MAILER-DAEMON@\(mta)")
        put("To: \(headerSafe(envelope.sender))")
        put("Subject: \(action.subject)")
        put("Date: \(date)")
        put("Message-ID: <\(now).\(envelope.id).\(action.tag)@\(mta)>")
        put("MIME-Version: 1.0")
        put("Content-Type: multipart/report; report-type=delivery-status;")
        put("\tboundary=\"\(boundary)\"")
        if global || fullIs8Bit { put("Content-Transfer-Encoding: 8bit") }  // its parts may be 8bit (RFC 2045 section 6.4)
        put("Auto-Submitted: auto-replied")
        // The failures' classes, once each in the recipients' order: a reader sorts the report without
        // parsing its replies. Class names are letters, digits and '_' (BounceConfig checks them).
        var classes: [String] = []
        for r in recipients { if let c = r.bounceClass, !classes.contains(c) { classes.append(c) } }
        if !classes.isEmpty { put("X-Tern-Bounce-Class: \(classes.joined(separator: ", "))") }
        put("")
        put("This is a MIME-encapsulated message.")
        put("")
        put("--\(boundary)")
        put("Content-Description: Notification")
        if textIsASCII {
            put("Content-Type: text/plain; charset=us-ascii")
        } else {
            put("Content-Type: text/plain; charset=utf-8")
            put("Content-Transfer-Encoding: quoted-printable")
        }
        put("")
        out += textPart
        put("")
        put("--\(boundary)")
        put("Content-Description: Delivery report")
        if global {
            put("Content-Type: message/global-delivery-status")
            put("Content-Transfer-Encoding: 8bit")
        } else {
            put("Content-Type: message/delivery-status")
        }
        put("")
        out += statusPart
        put("")
        put("--\(boundary)")
        if fullMessage != nil {
            put("Content-Description: Undelivered Message")
            put("Content-Type: message/rfc822")
            if fullIs8Bit { put("Content-Transfer-Encoding: 8bit") }
        } else {
            put("Content-Description: \(action.headersDescription)")
            if globalHeaders {
                put("Content-Type: message/global-headers")
                put("Content-Transfer-Encoding: 8bit")
            } else {
                put("Content-Type: text/rfc822-headers")
                if !headersAre7Bit { put("Content-Transfer-Encoding: quoted-printable") }
            }
        }
        put("")
        out += headersPart
        // A returned message whose last line has no CRLF gets one before the delimiter's.
        if fullMessage != nil && !headersPart.isEmpty && headersPart.suffix(2) != crlf[...] { put("") }
        put("")
        put("--\(boundary)--")
        return out
    }

    // MARK: Text helpers

    static let cr: UInt8 = 0x0D, lf: UInt8 = 0x0A
    static let crlf: [UInt8] = [0x0D, 0x0A]
    /// The longest word a folded or wrapped line carries whole; longer ones are split.
    static let maxWord = 900

    /// An xtext value (ENVID, ORCPT's address) decoded for a report when it decodes to printable
    /// ASCII; otherwise as it is (xtext is printable ASCII already).
    static func fromXtext(_ value: String) -> String {
        guard let decoded = xtextDecode(value), decoded.utf8.allSatisfy({ $0 >= 0x20 && $0 < 0x7F }) else {
            return ascii(value)
        }
        return decoded
    }

    /// Lines to bytes, each ending in CRLF.
    static func lines(_ lines: [String]) -> [UInt8] {
        var out: [UInt8] = []
        for line in lines { out += Array(line.utf8) + crlf }
        return out
    }

    /// Control characters (CR, LF and TAB included) become spaces, so a value stays on its line.
    static func printable(_ s: String) -> String {
        String(String.UnicodeScalarView(s.unicodeScalars.map { $0.value < 0x20 || $0.value == 0x7F ? " " : $0 }))
    }

    /// `printable`, and non-ASCII characters become "?".
    static func ascii(_ s: String) -> String {
        String(String.UnicodeScalarView(s.unicodeScalars.map {
            $0.value < 0x20 || $0.value == 0x7F ? " " : $0.value >= 0x80 ? "?" : $0
        }))
    }

    /// For header fields that keep UTF-8 (the To: address): no controls, and short enough for one line.
    static func headerSafe(_ s: String) -> String {
        let clean = printable(s)
        return clean.utf8.count <= maxWord ? clean : String(decoding: clean.utf8.prefix(maxWord), as: UTF8.self)
    }

    /// The "type;" prefix of a DSN value ("smtp; 550 ...", "dns; mx.example.net"), or nil.
    static func typePrefix(_ s: String) -> Substring? {
        guard let semicolon = s.firstIndex(of: ";") else { return nil }
        let type = s[..<semicolon]
        guard !type.isEmpty, type.utf8.allSatisfy({
            ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x41 && $0 <= 0x5A) || ($0 >= 0x61 && $0 <= 0x7A) || $0 == 0x2D
        }) else { return nil }
        return type
    }

    /// "type; value" with `default` as the type when the value has none; `utf8`: non-ASCII characters
    /// are kept (message/global-delivery-status), else they become "?".
    static func typed(_ s: String, default type: String, utf8: Bool = false) -> String {
        let clean = (utf8 ? printable(s) : ascii(s)).trimmingSpaces
        return typePrefix(clean) == nil ? "\(type); \(clean)" : clean
    }

    /// The value without its "type;" prefix, for the text part.
    static func untyped(_ s: String) -> String {
        guard let type = typePrefix(s) else { return s }
        return String(s[type.endIndex...].dropFirst()).trimmingSpaces
    }

    /// "rfc822; addr", or for a non-ASCII address RFC 6533's "utf-8; " with the 7-bit utf-8-addr-xtext:
    /// every character outside QCHAR (%x21-2A / %x2C-3C / %x3E-5B / %x5D-7E) as \x{HEX}. With `unitext`
    /// (message/global-delivery-status), utf-8-addr-unitext: non-ASCII characters stay as they are.
    static func typedAddress(_ address: String, unitext: Bool = false) -> String {
        let clean = printable(address)
        guard clean.utf8.contains(where: { $0 >= 0x80 }) else { return "rfc822; \(clean)" }
        var out = "utf-8; "
        for scalar in clean.unicodeScalars {
            let v = scalar.value
            if ((0x21...0x7E).contains(v) && v != 0x2B && v != 0x3D && v != 0x5C) || (unitext && v >= 0x80) {
                out.unicodeScalars.append(scalar)
            } else {
                out += "\\x{" + String(v, radix: 16, uppercase: true) + "}"
            }
        }
        return out
    }

    /// "Name: value" folded at spaces (RFC 5322 section 2.2.3) to lines of about 78 octets; runs of
    /// whitespace collapse to one space, and a word longer than `maxWord` octets is split.
    static func field(_ name: String, _ value: String) -> [String] {
        fill(words(value), first: name + ": ", continuation: " ", width: 78)
    }

    /// A paragraph wrapped to 76 octets; continuation lines start with `continuation`.
    static func wrap(_ text: String, continuation: String = "") -> [String] {
        fill(words(text), first: "", continuation: continuation, width: 76)
    }

    /// Greedy fill: the first line starts with `first`, the others with `continuation`; a word goes on
    /// the current line when it fits in `width` octets or is the line's first word.
    private static func fill(_ words: [Substring], first: String, continuation: String, width: Int) -> [String] {
        var lines: [String] = []
        var line = first
        var lineHasWord = false
        for word in words {
            if lineHasWord && line.utf8.count + 1 + word.utf8.count > width {
                lines.append(line)
                line = continuation
                lineHasWord = false
            }
            if lineHasWord { line += " " }
            line += word
            lineHasWord = true
        }
        lines.append(line)
        return lines
    }

    /// Words split at whitespace (controls count as whitespace); a word over `maxWord` octets is cut into
    /// pieces at character boundaries.
    private static func words(_ text: String) -> [Substring] {
        var out: [Substring] = []
        for word in printable(text).split(separator: " ", omittingEmptySubsequences: true) {
            var pieceStart = word.startIndex
            var octets = 0
            for i in word.unicodeScalars.indices {
                let n = word.unicodeScalars[i].utf8.count
                if octets + n > maxWord {
                    out.append(word[pieceStart..<i])
                    pieceStart = i
                    octets = 0
                }
                octets += n
            }
            out.append(word[pieceStart...])
        }
        return out
    }

    /// Lines of a byte string without their ends; CRLF, a bare LF and a bare CR all end a line. A final
    /// line without an end counts; a final line end does not start another line.
    static func splitLines(_ bytes: [UInt8]) -> [[UInt8]] {
        var lines: [[UInt8]] = []
        var start = 0
        var i = 0
        while i < bytes.count {
            if bytes[i] == cr || bytes[i] == lf {
                lines.append(Array(bytes[start..<i]))
                if bytes[i] == cr, i + 1 < bytes.count, bytes[i + 1] == lf { i += 1 }
                start = i + 1
            }
            i += 1
        }
        if start < bytes.count { lines.append(Array(bytes[start...])) }
        return lines
    }

    /// Quoted-printable (RFC 2045 section 6.7) of text with CRLF line ends: encoded lines of at most 76
    /// octets, soft line breaks ("=" at the end) where a line is longer.
    static func quotedPrintable(_ bytes: [UInt8]) -> [UInt8] {
        let hex = Array("0123456789ABCDEF".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count * 3 / 2)
        for line in splitLines(bytes) {
            var length = 0
            for (i, byte) in line.enumerated() {
                let atEnd = i == line.count - 1
                let literal = (byte >= 0x21 && byte <= 0x7E && byte != 0x3D) || ((byte == 0x20 || byte == 0x09) && !atEnd)
                let width = literal ? 1 : 3
                // Keep room for the "=" of a soft break unless this is the last octet of the line.
                if length + width > (atEnd ? 76 : 75) {
                    out += [0x3D] + crlf
                    length = 0
                }
                if literal {
                    out.append(byte)
                } else {
                    out += [0x3D, hex[Int(byte >> 4)], hex[Int(byte & 0xF)]]
                }
                length += width
            }
            out += crlf
        }
        return out
    }

    /// `requested` reduced to RFC 2046 bchars (no space) and 60 octets, with "=_N" appended until the
    /// delimiter does not occur in any part.
    static func uniqueBoundary(_ requested: String, notIn parts: [[UInt8]]) -> String {
        let allowed = Set("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=?".utf8)
        var base = String(decoding: requested.utf8.filter { allowed.contains($0) }.prefix(60), as: UTF8.self)
        if base.isEmpty { base = "tern-dsn" }
        var candidate = base
        var n = 0
        while parts.contains(where: { contains($0, Array(("--" + candidate).utf8)) }) {
            n += 1
            candidate = base + "=_\(n)"
        }
        return candidate
    }

    static func contains(_ haystack: [UInt8], _ needle: [UInt8]) -> Bool {
        guard !needle.isEmpty, haystack.count >= needle.count else { return needle.isEmpty }
        var i = 0
        while i + needle.count <= haystack.count {
            if haystack[i] == needle[0] && haystack[i ..< i + needle.count].elementsEqual(needle) { return true }
            i += 1
        }
        return false
    }
}

extension String {
    fileprivate func replacingOccurrences(_ target: Character, with replacement: String) -> String {
        var out = ""
        for c in self { if c == target { out += replacement } else { out.append(c) } }
        return out
    }

    fileprivate var trimmingSpaces: String {
        var s = Substring(self)
        while s.first == " " { s = s.dropFirst() }
        while s.last == " " { s = s.dropLast() }
        return String(s)
    }
}
