// The header block of a message (RFC 5322 §2.2): fields in order, each with its continuation lines,
// kept byte for byte because simple canonicalization signs them as they are.

public struct DKIMError: Error, Sendable, Equatable, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// One header field as it appears: name, colon, value, continuation lines, final CRLF.
public struct HeaderField: Sendable, Equatable {
    /// The field's bytes, its final CRLF included.
    public let raw: [UInt8]
    /// The field name without whitespace before the colon (obsolete syntax allows it, §3.4.2 drops it).
    public let name: String
    /// Index in `raw` of the first byte after the colon.
    public let valueStart: Int
    /// The name lowercased (ASCII), for matching h= entries.
    public let lowercasedName: String

    /// `raw` must be one field: a name of printable ASCII, optional WSP, a colon, and lines that end
    /// with CRLF, each line after the first starting with WSP.
    public init(raw: [UInt8]) throws {
        guard let colon = raw.firstIndex(of: 0x3A) else { throw DKIMError("header field without a colon") }
        var end = colon
        while end > 0 && isWSP(raw[end - 1]) { end -= 1 }
        guard end > 0 else { throw DKIMError("header field without a name") }
        for b in raw[0..<end] where b < 33 || b > 126 {
            throw DKIMError("header field name with a byte that is not printable ASCII")
        }
        guard raw.count >= 2 && raw[raw.count - 2] == cr && raw[raw.count - 1] == lf else {
            throw DKIMError("header field that does not end with CRLF")
        }
        self.raw = raw
        self.name = String(decoding: raw[0..<end], as: UTF8.self)
        self.valueStart = colon + 1
        self.lowercasedName = asciiLowercased(name)
    }
}

/// `s` with ASCII capitals lowercased; `s` itself (no copy) when it has none, as h= names usually are.
func asciiLowercased(_ s: String) -> String {
    guard s.utf8.contains(where: { $0 >= 0x41 && $0 <= 0x5A }) else { return s }
    return String(decoding: s.utf8.map { $0 >= 0x41 && $0 <= 0x5A ? $0 + 0x20 : $0 }, as: UTF8.self)
}

public enum HeaderBlock {
    /// The fields of a header block: the bytes up to and including the CRLF that ends the last field
    /// (not the empty line). A CR or LF that is not part of a CRLF, a first line that is a continuation,
    /// or a line without a colon is an error that says which line.
    public static func parse(_ block: UnsafeRawBufferPointer) throws -> [HeaderField] {
        var fields: [HeaderField] = []
        var fieldStart = 0
        var lineStart = 0
        var line = 1
        var i = 0
        let n = block.count
        while i < n {
            let b = block[i]
            if b == lf { throw DKIMError("header line \(line): LF without CR") }
            if b != cr { i += 1; continue }
            guard i + 1 < n, block[i + 1] == lf else { throw DKIMError("header line \(line): CR without LF") }
            // A line ends at i + 2; the field goes on if the next line starts with WSP.
            i += 2
            if lineStart == fieldStart && isWSP(block[lineStart]) {
                throw DKIMError("header line \(line): a continuation line with no field before it")
            }
            line += 1
            lineStart = i
            if i < n && isWSP(block[i]) { continue }
            do {
                fields.append(try HeaderField(raw: Array(block[fieldStart..<i])))
            } catch let error as DKIMError {
                throw DKIMError("header line \(line - 1): \(error.message)")
            }
            fieldStart = i
        }
        if fieldStart < n { throw DKIMError("header line \(line): the header block does not end with CRLF") }
        return fields
    }

    public static func parse(_ block: [UInt8]) throws -> [HeaderField] {
        try block.withUnsafeBytes { try parse($0) }
    }

    /// Where the header block of a whole message ends and its body starts: (end of the header block,
    /// CRLF of its last field included; start of the body). A message with no empty line is all header.
    public static func split(_ message: UnsafeRawBufferPointer) -> (headerEnd: Int, bodyStart: Int) {
        let n = message.count
        if n >= 2 && message[0] == cr && message[1] == lf { return (0, 2) }  // no header fields at all
        var i = 0
        while i + 3 < n {
            if message[i] == cr && message[i + 1] == lf && message[i + 2] == cr && message[i + 3] == lf {
                return (i + 2, i + 4)
            }
            i += 1
        }
        return (n, n)
    }
}
