// A message assembled from its parts, as an injection API's "content" object describes them (KumoMTA's
// /api/inject/v1 builder; issue 19): From, To, Subject, Reply-To, more header fields, a text and/or an
// HTML body, attachments. Pure: the caller gives the date, the Message-ID and the boundaries' seed.
//
// The shape (RFC 5322, RFC 2045-2049, CRLF lines):
// - a text or an HTML body alone is the message's one part; both are multipart/alternative, the text
//   first (RFC 2046 §5.1.4: the last part is the preferred one);
// - with attachments, multipart/mixed around that, each attachment base64 with its filename;
// - a body is 7bit when it is ASCII in lines of at most 998 octets, else quoted-printable (UTF-8);
// - a header value with non-ASCII characters becomes RFC 2047 encoded words (UTF-8, "B"), each at most
//   75 characters, folded between words; in From, To and Reply-To only the display name is encoded;
// - CR and LF inside a header value become spaces: no field is ever injected through a value.

public struct MessageParts: Sendable, Equatable {
    public struct Attachment: Sendable, Equatable {
        public var filename: String
        public var contentType: String
        public var data: [UInt8]

        public init(filename: String, contentType: String = "application/octet-stream", data: [UInt8]) {
            self.filename = filename
            self.contentType = contentType
            self.data = data
        }
    }

    /// "Name <address>" or "address".
    public var from: String
    public var to: [String]
    public var subject: String
    public var replyTo: String?
    /// More header fields, in order (names as given; values encoded as needed).
    public var headers: [(name: String, value: String)]
    public var textBody: String?
    public var htmlBody: String?
    public var attachments: [Attachment]

    public init(from: String, to: [String], subject: String, replyTo: String? = nil,
                headers: [(name: String, value: String)] = [], textBody: String? = nil, htmlBody: String? = nil,
                attachments: [Attachment] = []) {
        self.from = from
        self.to = to
        self.subject = subject
        self.replyTo = replyTo
        self.headers = headers
        self.textBody = textBody
        self.htmlBody = htmlBody
        self.attachments = attachments
    }

    public static func == (a: MessageParts, b: MessageParts) -> Bool {
        a.from == b.from && a.to == b.to && a.subject == b.subject && a.replyTo == b.replyTo
            && a.headers.map(\.name) == b.headers.map(\.name) && a.headers.map(\.value) == b.headers.map(\.value)
            && a.textBody == b.textBody && a.htmlBody == b.htmlBody && a.attachments == b.attachments
    }
}

/// The assembled message. `date` is an RFC 5322 date, `messageID` a "<…@…>"; `boundarySeed` makes the
/// boundaries (which are also checked against the content).
public func assembleMessage(_ parts: MessageParts, date: String, messageID: String, boundarySeed: UInt64) -> [UInt8] {
    var out: [UInt8] = []
    func field(_ name: String, _ value: String) { appendField(name, value, to: &out) }
    field("From", addressValue(parts.from))
    if !parts.to.isEmpty { field("To", parts.to.map(addressValue).joined(separator: ", ")) }
    if let replyTo = parts.replyTo { field("Reply-To", addressValue(replyTo)) }
    field("Subject", encodedWords(parts.subject))
    field("Date", date)
    field("Message-ID", messageID)
    for (name, value) in parts.headers { field(name, encodedWords(value)) }
    field("MIME-Version", "1.0")

    var seed = boundarySeed
    func boundary() -> String {
        seed = seed &* 6364136223846793005 &+ 1442695040888963407
        return "=_tern_\(String(seed, radix: 36))"
    }
    // The alternative (or the one body), then the mixed part around it.
    var bodies: [[UInt8]] = []
    if let text = parts.textBody { bodies.append(textPart("text/plain", text)) }
    if let html = parts.htmlBody { bodies.append(textPart("text/html", html)) }
    if bodies.isEmpty { bodies.append(textPart("text/plain", "")) }
    var content = bodies.count == 1 ? bodies[0] : multipart("alternative", bodies, boundary())
    if !parts.attachments.isEmpty {
        content = multipart("mixed", [content] + parts.attachments.map(attachmentPart), boundary())
    }
    out += content
    return out
}

private let crlf: [UInt8] = [13, 10]

/// "Name: value" folded at spaces to lines of at most 78 characters where it can be.
private func appendField(_ name: String, _ value: String, to out: inout [UInt8]) {
    let clean = value.map { $0 == "\r" || $0 == "\n" || $0 == "\r\n" ? " " : String($0) }.joined()
    var line = name + ":"
    for word in clean.split(separator: " ", omittingEmptySubsequences: true) {
        if line.utf8.count + 1 + word.utf8.count > 78 && line.utf8.count > name.utf8.count + 1 {
            out += Array(line.utf8) + crlf
            line = ""
        }
        line += " " + word
    }
    out += Array(line.utf8) + crlf
}

/// "Name <address>": the name as encoded words when it is not ASCII (quoted when it has specials);
/// an address alone as it is.
func addressValue(_ text: String) -> String {
    guard let open = text.lastIndex(of: "<"), text.hasSuffix(">") else { return text.trimmingSpaces }
    let name = String(text[..<open]).trimmingSpaces.trimmingQuotes
    let address = String(text[open...])
    guard !name.isEmpty else { return address }
    if name.unicodeScalars.allSatisfy({ $0.value < 128 }) {
        let special = name.contains { "()<>[]:;@\\,.\"".contains($0) }
        return (special ? "\"" + name.replacingQuotes + "\"" : name) + " " + address
    }
    return encodedWords(name) + " " + address
}

/// RFC 2047: the text as it is when it is ASCII, else "=?UTF-8?B?…?=" words of 60 characters at most,
/// never splitting a character.
func encodedWords(_ text: String) -> String {
    guard text.unicodeScalars.contains(where: { $0.value >= 128 }) else { return text }
    do {
        var words: [String] = []
        var chunk: [UInt8] = []
        // 36 octets are 48 base64 characters, a word of 60: it fits on a line after any field name
        // of up to 16 characters within 78 (RFC 2047 allows 75 a word).
        for character in text {
            let bytes = Array(String(character).utf8)
            if chunk.count + bytes.count > 36 && !chunk.isEmpty {
                words.append(encodedWord(chunk))
                chunk = []
            }
            chunk += bytes
        }
        if !chunk.isEmpty { words.append(encodedWord(chunk)) }
        return words.joined(separator: " ")
    }
}

private func encodedWord(_ bytes: [UInt8]) -> String {
    var b64: [UInt8] = []
    appendBase64(bytes[...], to: &b64)
    let text = String(decoding: b64.filter { $0 != 13 && $0 != 10 }, as: UTF8.self)
    return "=?UTF-8?B?\(text)?="
}

/// A text body: 7bit when ASCII in short lines, else quoted-printable; lines end in CRLF.
private func textPart(_ type: String, _ text: String) -> [UInt8] {
    var body = Array(text.utf8)
    body = canonicalizeLineEnds(body)
    if !body.isEmpty && body.suffix(2) != crlf[...] { body += crlf }
    let sevenBit = body.allSatisfy { $0 < 128 } && longestLine(body) <= 998
    var out = Array("Content-Type: \(type); charset=utf-8\r\n".utf8)
    if sevenBit {
        out += Array("Content-Transfer-Encoding: 7bit\r\n\r\n".utf8) + body
    } else {
        out += Array("Content-Transfer-Encoding: quoted-printable\r\n\r\n".utf8)
        appendQuotedPrintable(body[...], to: &out)
    }
    return out
}

private func attachmentPart(_ a: MessageParts.Attachment) -> [UInt8] {
    // Control characters (a CR LF would start a field of its own) become "_".
    let filename = String(String.UnicodeScalarView(a.filename.unicodeScalars.map {
        $0.value < 32 || $0.value == 127 ? "_" : $0
    }))
    let name = filename.unicodeScalars.allSatisfy { $0.value < 128 && $0 != "\"" && $0 != "\\" }
        ? "\"\(filename)\"" : "\"\(encodedWords(filename.replacingQuotes))\""
    let type = a.contentType.contains(where: { $0 == "\r" || $0 == "\n" || $0 == ";" }) ? "application/octet-stream" : a.contentType
    var out = Array("Content-Type: \(type); name=\(name)\r\nContent-Transfer-Encoding: base64\r\n".utf8)
    out += Array("Content-Disposition: attachment; filename=\(name)\r\n\r\n".utf8)
    appendBase64(a.data[...], to: &out)
    return out
}

private func multipart(_ subtype: String, _ parts: [[UInt8]], _ candidate: String) -> [UInt8] {
    var boundary = candidate
    // The boundary must not occur in the parts (RFC 2046 §5.1.1); a collision is vanishingly rare.
    while parts.contains(where: { contains($0, Array(boundary.utf8)) }) { boundary += "_" }
    var out = Array("Content-Type: multipart/\(subtype); boundary=\"\(boundary)\"\r\n\r\n".utf8)
    for part in parts {
        // The CRLF before a delimiter belongs to the delimiter (RFC 2046 §5.1.1): a part that ends
        // in a line break gets a second CRLF, or its last line break would be lost.
        out += Array("--\(boundary)\r\n".utf8) + part + crlf
    }
    out += Array("--\(boundary)--\r\n".utf8)
    return out
}

private func contains(_ haystack: [UInt8], _ needle: [UInt8]) -> Bool {
    guard needle.count <= haystack.count else { return false }
    var i = 0
    while i + needle.count <= haystack.count {
        if haystack[i] == needle[0] && haystack[i..<(i + needle.count)].elementsEqual(needle) { return true }
        i += 1
    }
    return false
}

private func longestLine(_ bytes: [UInt8]) -> Int {
    var longest = 0, current = 0
    for b in bytes {
        if b == 10 { longest = max(longest, current); current = 0 } else { current += 1 }
    }
    return max(longest, current)
}

private extension String {
    var trimmingSpaces: String {
        var s = Substring(self)
        while s.first == " " || s.first == "\t" { s = s.dropFirst() }
        while s.last == " " || s.last == "\t" { s = s.dropLast() }
        return String(s)
    }

    var trimmingQuotes: String {
        hasPrefix("\"") && hasSuffix("\"") && count >= 2 ? String(dropFirst().dropLast()) : self
    }

    /// Quotes and backslashes out of a quoted string's content (they would need escaping).
    var replacingQuotes: String { String(map { $0 == "\"" ? "'" : $0 == "\\" ? "/" : $0 }) }
}
