// SMTP replies (RFC 5321 §4.2) with enhanced status codes (RFC 3463, RFC 2034).
//
// A reply is a three-digit code, an enhanced code such as "5.5.2" and one or more text lines.
// Multi-line replies use "250-" on every line but the last (RFC 5321 §4.2.1).

public struct Reply: Equatable, Sendable, CustomStringConvertible {
    public var code: Int
    /// "x.y.z", or nil for the greeting and the EHLO response, which carry none (RFC 2034 §3).
    public var enhanced: String?
    public var lines: [String]

    public init(_ code: Int, _ enhanced: String?, _ lines: [String]) {
        self.code = code
        self.enhanced = enhanced
        self.lines = lines.isEmpty ? [""] : lines
    }

    public init(_ code: Int, _ enhanced: String?, _ text: String) {
        self.init(code, enhanced, [text])
    }

    public var isPositive: Bool { code < 400 }
    public var isTransientFailure: Bool { code >= 400 && code < 500 }
    public var isPermanentFailure: Bool { code >= 500 }

    /// Wire form: every line "CODE-" or "CODE ", the enhanced code, the text, CRLF.
    public func appendWireBytes(to out: inout [UInt8]) {
        for (i, line) in lines.enumerated() {
            appendDecimal(code, to: &out)
            out.append(i == lines.count - 1 ? UInt8(ascii: " ") : UInt8(ascii: "-"))
            if let enhanced {
                out.append(contentsOf: enhanced.utf8)
                if !line.isEmpty { out.append(UInt8(ascii: " ")) }
            }
            out.append(contentsOf: line.utf8)
            out.append(13)
            out.append(10)
        }
    }

    public var wireBytes: [UInt8] {
        var out: [UInt8] = []
        appendWireBytes(to: &out)
        return out
    }

    public var description: String { String(decoding: wireBytes, as: UTF8.self) }
}

@inline(__always)
func appendDecimal(_ value: Int, to out: inout [UInt8]) {
    if value < 0 {
        out.append(UInt8(ascii: "-"))
        appendDecimal(-value, to: &out)
        return
    }
    if value >= 10 { appendDecimal(value / 10, to: &out) }
    out.append(UInt8(ascii: "0") + UInt8(value % 10))
}
