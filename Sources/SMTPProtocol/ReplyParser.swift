// The client's reply reader (RFC 5321 §4.2): assembles replies from bytes split anywhere.
//
//   reply-line = *( Reply-code "-" [ textstring ] CRLF ) Reply-code [ SP textstring ] CRLF
//
// Every line of a multi-line reply must carry the same code. The first digit is 2–5 and the second
// 0–5 (§4.2.1); anything else is not SMTP and the connection is given up. Lines end in CRLF; a bare
// LF is taken as a line end too (what a next hop sends is not ours to police, and reading it
// leniently cannot desynchronise us). Lines are bounded (§4.5.3.1.5 says 512 octets; the default
// here is more generous) and so is the number of lines in one reply, so a hostile peer cannot make
// us buffer without limit.
//
// The enhanced status code (RFC 2034 §3, RFC 3463) is taken from the start of the first line's text
// when it looks like "x.y.z" with x the reply's class digit, and removed from every line that
// repeats it, so `Reply.wireBytes` gives the line back as it was sent.

public enum ReplyParseError: Error, Equatable, Sendable, CustomStringConvertible {
    /// A line (CRLF included) longer than `maxLineLength`.
    case lineTooLong
    /// A reply of more than `maxLines` lines.
    case tooManyLines
    /// A line that does not start with a reply code followed by SP, "-" or the line end.
    case badLine(String)
    /// A continuation line whose code differs from the first line's.
    case codeMismatch(String)

    public var description: String {
        switch self {
        case .lineTooLong: return "reply line too long"
        case .tooManyLines: return "too many lines in one reply"
        case .badLine(let l): return "not a reply line: \(l.debugDescription)"
        case .codeMismatch(let l): return "continuation line with another code: \(l.debugDescription)"
        }
    }
}

public struct ReplyParser {
    public let maxLineLength: Int
    public let maxLines: Int

    /// Bytes received and not yet parsed start at `start`.
    var buffer: [UInt8] = []
    var start = 0
    /// The reply being assembled: its code and its lines so far (text after "250-" / "250 ").
    var code = 0
    var lines: [[UInt8]] = []
    /// Once the input stopped being SMTP, it stays that way.
    var failure: ReplyParseError?

    public init(maxLineLength: Int = 4096, maxLines: Int = 100) {
        self.maxLineLength = maxLineLength
        self.maxLines = maxLines
    }

    /// Every reply completed by `bytes`, in order. Throws at the first line that is not a reply line;
    /// replies completed before it in the same call are then lost, which is why `ClientSession` uses
    /// `append` and `next` and handles each reply as soon as it is complete.
    public mutating func feed(_ bytes: UnsafeRawBufferPointer) throws(ReplyParseError) -> [Reply] {
        append(bytes)
        var replies: [Reply] = []
        while let r = try next() { replies.append(r) }
        return replies
    }

    public mutating func feed(_ bytes: [UInt8]) throws(ReplyParseError) -> [Reply] {
        append(bytes)
        var replies: [Reply] = []
        while let r = try next() { replies.append(r) }
        return replies
    }

    /// Adds received bytes; `next()` takes the replies out.
    public mutating func append(_ bytes: UnsafeRawBufferPointer) {
        compact()
        buffer.append(contentsOf: bytes)
    }

    public mutating func append(_ bytes: [UInt8]) {
        compact()
        buffer.append(contentsOf: bytes)
    }

    /// Whether a reply has been started and not finished, or bytes of a line are waiting for its end.
    public var hasPartialInput: Bool { start < buffer.count || !lines.isEmpty }

    /// The next complete reply, or nil when more bytes are needed.
    public mutating func next() throws(ReplyParseError) -> Reply? {
        if let failure { throw failure }
        while true {
            guard let lf = buffer[start...].firstIndex(of: 10) else {
                // No line end yet: the line will be at least one byte longer than what is here.
                if buffer.count - start >= maxLineLength { return try fail(.lineTooLong) }
                return nil
            }
            let lineStart = start
            start = lf + 1
            if lf + 1 - lineStart > maxLineLength { return try fail(.lineTooLong) }
            var end = lf
            if end > lineStart && buffer[end - 1] == 13 { end -= 1 }
            let line = buffer[lineStart..<end]
            guard let (lineCode, last) = Self.parseCode(line) else {
                return try fail(.badLine(String(decoding: line, as: UTF8.self)))
            }
            if lines.isEmpty {
                code = lineCode
            } else if lineCode != code {
                return try fail(.codeMismatch(String(decoding: line, as: UTF8.self)))
            }
            if lines.count == maxLines { return try fail(.tooManyLines) }
            lines.append(line.count > 4 ? Array(line[(line.startIndex + 4)...]) : [])
            if last { return finishReply() }
        }
    }

    mutating func fail(_ error: ReplyParseError) throws(ReplyParseError) -> Reply? {
        failure = error
        buffer = []
        start = 0
        lines = []
        throw error
    }

    mutating func compact() {
        if start == buffer.count {
            buffer.removeAll(keepingCapacity: true)
            start = 0
        } else if start >= 4096 {
            buffer.removeFirst(start)
            start = 0
        }
    }

    /// The code of a reply line and whether the line is the reply's last, or nil if it is no reply line.
    static func parseCode(_ line: ArraySlice<UInt8>) -> (Int, Bool)? {
        guard line.count >= 3 else { return nil }
        let i = line.startIndex
        let d1 = Int(line[i]) - 48, d2 = Int(line[i + 1]) - 48, d3 = Int(line[i + 2]) - 48
        guard (2...5).contains(d1), (0...5).contains(d2), (0...9).contains(d3) else { return nil }
        let last: Bool
        if line.count == 3 {
            last = true
        } else if line[i + 3] == UInt8(ascii: " ") {
            last = true
        } else if line[i + 3] == UInt8(ascii: "-") {
            last = false
        } else {
            return nil
        }
        return (d1 * 100 + d2 * 10 + d3, last)
    }

    mutating func finishReply() -> Reply? {
        var texts = lines
        lines = []
        let enhanced = Self.enhancedCode(in: texts[0], replyClass: UInt8(code / 100) + 48)
        if let enhanced {
            let n = enhanced.count
            for j in texts.indices where texts[j].starts(with: enhanced)
                && (texts[j].count == n || texts[j][n] == UInt8(ascii: " ")) {
                texts[j].removeFirst(min(n + 1, texts[j].count))
            }
        }
        return Reply(code, enhanced.map { String(decoding: $0, as: UTF8.self) },
                     texts.map { String(decoding: $0, as: UTF8.self) })
    }

    /// "x.y.z" at the start of `text` (x the reply class: 2, 4 or 5; y and z one to three digits),
    /// followed by SP or the end of the text (RFC 3463 §2).
    static func enhancedCode(in text: [UInt8], replyClass: UInt8) -> [UInt8]? {
        guard replyClass != UInt8(ascii: "3"), text.count >= 5, text[0] == replyClass,
              text[1] == UInt8(ascii: ".") else { return nil }
        var i = 2
        for part in 0..<2 {
            let digitsStart = i
            while i < text.count, i - digitsStart < 4, text[i] >= 48, text[i] <= 57 { i += 1 }
            let digits = i - digitsStart
            guard digits >= 1, digits <= 3 else { return nil }
            if part == 0 {
                guard i < text.count, text[i] == UInt8(ascii: ".") else { return nil }
                i += 1
            }
        }
        guard i == text.count || text[i] == UInt8(ascii: " ") else { return nil }
        return Array(text[..<i])
    }
}
