// 8-bit MIME to 7-bit (RFC 6152 §3, RFC 2045 §6): for a next hop that does not offer 8BITMIME, a
// message received with BODY=8BITMIME is rewritten so that every byte is 7-bit, its MIME structure
// kept: a text part with 8-bit octets becomes quoted-printable, any other part base64, and its
// Content-Transfer-Encoding says so. Parts that are 7-bit already are copied as they are.
//
// Not MIME (no MIME-Version field), 8-bit octets in a header block (only SMTPUTF8 allows them, RFC
// 6532), in a multipart preamble or epilogue, or a multipart without a boundary that is found: the
// message cannot be converted faithfully, `sevenBitMessage` returns nil and the caller sends it as it
// is (what Postfix does too), saying so in its log.

/// The message with every 8-bit MIME part re-encoded, or the same bytes when it has no 8-bit octet;
/// nil when it holds 8-bit octets that cannot be converted (see above).
public func sevenBitMessage(_ message: [UInt8]) -> [UInt8]? {
    guard message.contains(where: { $0 >= 0x80 }) else { return message }
    return convertMIME(message)
}

/// `sevenBitMessage` with what became of the message for the transaction's outcome: the converted
/// message, or the message as it is when it needed nothing (nil) or could not be converted.
public func convertToSevenBit(_ message: [UInt8]) -> (message: [UInt8], conversion: SevenBitConversion?) {
    guard message.contains(where: { $0 >= 0x80 }) else { return (message, nil) }
    guard let converted = convertMIME(message) else { return (message, .sentAsIs) }
    return (converted, .converted)
}

private func convertMIME(_ message: [UInt8]) -> [UInt8]? {
    let entity = MIMEEntity(message[...])
    guard entity.field("mime-version") != nil else { return nil }
    var out: [UInt8] = []
    out.reserveCapacity(message.count + message.count / 3)
    guard entity.appendSevenBit(to: &out, depth: 0) else { return nil }
    return out
}

/// One MIME entity: its header block (with the blank line that ends it) and its body.
struct MIMEEntity {
    var header: ArraySlice<UInt8>
    var body: ArraySlice<UInt8>
    /// Unfolded fields, names lower-cased.
    var fields: [(name: String, value: String)]

    init(_ bytes: ArraySlice<UInt8>) {
        // The header block ends at the first empty line; without one it is all header.
        var i = bytes.startIndex
        var end = bytes.endIndex
        var bodyStart = bytes.endIndex
        while i < bytes.endIndex {
            if bytes[i] == 13, i + 1 < bytes.endIndex, bytes[i + 1] == 10 {
                end = i + 2
                bodyStart = i + 2
                break
            }
            if bytes[i] == 10 {
                end = i + 1
                bodyStart = i + 1
                break
            }
            guard let lf = bytes[i...].firstIndex(of: 10) else { break }
            i = lf + 1
        }
        header = bytes[bytes.startIndex..<end]
        body = bytes[bodyStart...]
        fields = []
        for line in header.split(separator: 10, omittingEmptySubsequences: true) {
            var text = String(decoding: line, as: UTF8.self)
            if text.hasSuffix("\r") { text.removeLast() }
            if text.isEmpty { continue }
            if text.first == " " || text.first == "\t", !fields.isEmpty {
                fields[fields.count - 1].value += " " + text.trimmingWhitespace
            } else if let colon = text.firstIndex(of: ":") {
                fields.append((text[..<colon].lowercased().trimmingWhitespace,
                               String(text[text.index(after: colon)...]).trimmingWhitespace))
            }
        }
    }

    func field(_ name: String) -> String? { fields.first { $0.name == name }?.value }

    /// "text/plain" when absent (RFC 2045 §5.2), lower-cased, without parameters.
    var mediaType: String {
        guard let v = field("content-type") else { return "text/plain" }
        return v.split(separator: ";", maxSplits: 1).first.map { String($0).lowercased().trimmingWhitespace } ?? "text/plain"
    }

    /// A Content-Type parameter (boundary=...), quotes removed.
    func contentTypeParameter(_ name: String) -> String? {
        guard let v = field("content-type") else { return nil }
        for piece in v.split(separator: ";").dropFirst() {
            let kv = piece.split(separator: "=", maxSplits: 1)
            guard kv.count == 2, kv[0].lowercased().trimmingWhitespace == name else { continue }
            var value = String(kv[1]).trimmingWhitespace
            if value.hasPrefix("\"") && value.hasSuffix("\"") && value.count >= 2 { value = String(value.dropFirst().dropLast()) }
            return value
        }
        return nil
    }

    /// Appends the entity in 7-bit form; false when that cannot be done faithfully.
    func appendSevenBit(to out: inout [UInt8], depth: Int) -> Bool {
        guard depth < 50, !header.contains(where: { $0 >= 0x80 }) else { return false }
        guard body.contains(where: { $0 >= 0x80 }) else {
            out += header
            out += body
            return true
        }
        let type = mediaType
        if type.hasPrefix("multipart/") {
            guard let boundary = contentTypeParameter("boundary"), !boundary.isEmpty else { return false }
            appendCompositeHeader(to: &out)
            return appendMultipart(boundary: Array(boundary.utf8), to: &out, depth: depth)
        }
        if type == "message/rfc822" {
            // An encapsulated message: its own parts are converted (RFC 2046 §5.2.1 allows no encoding).
            appendCompositeHeader(to: &out)
            return MIMEEntity(body).appendSevenBit(to: &out, depth: depth + 1)
        }
        // A leaf with 8-bit octets: re-encoded, its Content-Transfer-Encoding replaced.
        let encoding = field("content-transfer-encoding")?.lowercased() ?? "7bit"
        guard encoding == "7bit" || encoding == "8bit" || encoding == "binary" else { return false }
        let useQP = type.hasPrefix("text/") && !body.contains(0)
        appendHeader(replacingEncodingWith: useQP ? "quoted-printable" : "base64", to: &out)
        if useQP { appendQuotedPrintable(body, to: &out) } else { appendBase64(body, to: &out) }
        return true
    }

    /// A multipart or message header: as it is, or relabelled 7bit when it said 8bit or binary (its
    /// content is 7-bit once its parts are).
    func appendCompositeHeader(to out: inout [UInt8]) {
        if field("content-transfer-encoding") == nil { out += header } else { appendHeader(replacingEncodingWith: "7bit", to: &out) }
    }

    /// The header block without its Content-Transfer-Encoding field (folded lines too), then the new
    /// one, then the blank line.
    func appendHeader(replacingEncodingWith encoding: String, to out: inout [UInt8]) {
        var skipping = false
        var lines = header.split(separator: 10, omittingEmptySubsequences: false).map { Array($0) + [10] }
        if lines.last == [10] { lines.removeLast() }  // after the final LF
        for line in lines {
            let isBlank = line == [13, 10] || line == [10]
            if isBlank { break }
            if line.first == 32 || line.first == 9 {
                if !skipping { out += line }
                continue
            }
            let name = String(decoding: line.prefix { $0 != UInt8(ascii: ":") }, as: UTF8.self)
            skipping = name.lowercased().trimmingWhitespace == "content-transfer-encoding"
            if !skipping { out += line }
        }
        out += Array("Content-Transfer-Encoding: \(encoding)\r\n\r\n".utf8)
    }

    /// The body of a multipart: the parts between the boundary lines converted, the delimiters, the
    /// preamble and the epilogue as they are (which must be 7-bit).
    func appendMultipart(boundary: [UInt8], to out: inout [UInt8], depth: Int) -> Bool {
        let dash: [UInt8] = [45, 45]
        let delimiter = dash + boundary
        var lineStart = body.startIndex
        var partStart: Int?  // where the current part's bytes begin
        var closed = false
        while lineStart < body.endIndex {
            let lf = body[lineStart...].firstIndex(of: 10) ?? body.endIndex - 1
            let lineEnd = lf + 1
            var line = body[lineStart..<lineEnd]
            while let last = line.last, last == 10 || last == 13 || last == 32 || last == 9 { line = line.dropLast() }
            let isClose = line.elementsEqual(delimiter + dash)
            if !closed && (line.elementsEqual(delimiter) || isClose) {
                // The CRLF before a delimiter belongs to the delimiter (RFC 2046 §5.1.1).
                if let start = partStart {
                    var end = lineStart
                    if end - 2 >= start, body[end - 2] == 13, body[end - 1] == 10 { end -= 2 } else if end - 1 >= start, body[end - 1] == 10 { end -= 1 }
                    guard MIMEEntity(body[start..<end]).appendSevenBit(to: &out, depth: depth + 1) else { return false }
                    out += body[end..<lineStart]
                } else {
                    guard !body[body.startIndex..<lineStart].contains(where: { $0 >= 0x80 }) else { return false }
                    out += body[body.startIndex..<lineStart]
                }
                out += body[lineStart..<lineEnd]
                partStart = isClose ? nil : lineEnd
                if isClose {
                    closed = true
                    // The epilogue.
                    guard !body[lineEnd...].contains(where: { $0 >= 0x80 }) else { return false }
                    out += body[lineEnd...]
                    return true
                }
            }
            lineStart = lineEnd
        }
        return false  // no closing delimiter: the structure is not what it claims
    }
}

/// Quoted-printable (RFC 2045 §6.7) of CRLF-delimited text: line breaks kept as they are, lines of at
/// most 76 characters with soft breaks, "=", controls other than TAB and every 8-bit octet as =XX,
/// and a space or TAB at the end of a line encoded.
func appendQuotedPrintable(_ body: ArraySlice<UInt8>, to out: inout [UInt8]) {
    let hex: StaticString = "0123456789ABCDEF"
    out.reserveCapacity(out.count + body.count + body.count / 8)
    var column = 0
    var i = body.startIndex
    while i < body.endIndex {
        let b = body[i]
        if b == 13, i + 1 < body.endIndex, body[i + 1] == 10 {
            out.append(13)
            out.append(10)
            column = 0
            i += 2
            continue
        }
        let atLineEnd = i + 1 == body.endIndex || (body[i + 1] == 13 && i + 2 < body.endIndex && body[i + 2] == 10)
        let literal = (b >= 33 && b <= 126 && b != UInt8(ascii: "=")) || ((b == 32 || b == 9) && !atLineEnd)
        let width = literal ? 1 : 3
        if column + width > 75 {  // a soft line break keeps lines at 76 characters with its "="
            out.append(UInt8(ascii: "="))
            out.append(13)
            out.append(10)
            column = 0
        }
        if literal {
            out.append(b)
        } else {
            out.append(UInt8(ascii: "="))
            out.append(hex.utf8Start[Int(b >> 4)])
            out.append(hex.utf8Start[Int(b & 15)])
        }
        column += width
        i += 1
    }
}

/// Base64 (RFC 2045 §6.8) in lines of 76 characters, each ending in CRLF.
func appendBase64(_ body: ArraySlice<UInt8>, to out: inout [UInt8]) {
    let encoded = Array(Base64.encode(Array(body)).utf8)
    var i = 0
    while i < encoded.count {
        let end = min(encoded.count, i + 76)
        out += encoded[i..<end]
        out += [13, 10]
        i = end
    }
}

private extension StringProtocol {
    var trimmingWhitespace: String {
        var s = Substring(self)
        while let f = s.first, f == " " || f == "\t" { s = s.dropFirst() }
        while let l = s.last, l == " " || l == "\t" { s = s.dropLast() }
        return String(s)
    }
}
