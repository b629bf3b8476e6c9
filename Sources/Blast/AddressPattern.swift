// Sender and recipient patterns for `tern blast --from` / `--to`.
//
//   {n}     the message's number in the run (1, 2, 3, …)
//   {c}     the connection's number in the run
//   {r}     the recipient's number within the message (1 … --recipients)
//   {n%K}   the same modulo K (0 … K-1), to cycle through K mailboxes: user{n%1000}@example.test
//
// Numbers make every address predictable, so both sides of a test can count what they saw. The text
// around the placeholders is kept as is; it may not hold spaces, control characters, "<" or ">",
// which would not survive the trip inside MAIL FROM:<…> / RCPT TO:<…>. An empty --from is the null
// sender <>.

public struct AddressPattern: Equatable, Sendable, CustomStringConvertible {
    public enum Variable: String, Sendable { case message = "n", connection = "c", recipient = "r" }

    enum Part: Equatable, Sendable {
        case literal(String)
        case number(Variable, modulo: Int?)
    }

    let parts: [Part]
    public let description: String

    public init(parsing text: String, option: String = "--to") throws(BlastOptionError) {
        var parts: [Part] = []
        var literal = ""
        var i = text.startIndex
        while i < text.endIndex {
            let ch = text[i]
            if ch == "{" {
                guard let close = text[i...].firstIndex(of: "}") else {
                    throw BlastOptionError("\(option): \"{\" without \"}\" in \"\(text)\"")
                }
                let inside = String(text[text.index(after: i)..<close])
                var name = inside
                var modulo: Int?
                if let pct = inside.firstIndex(of: "%") {
                    name = String(inside[..<pct])
                    guard let k = Int(inside[inside.index(after: pct)...]), k > 0 else {
                        throw BlastOptionError("\(option): \"{\(inside)}\" needs a positive number after %")
                    }
                    modulo = k
                }
                guard let v = Variable(rawValue: name) else {
                    throw BlastOptionError("\(option): unknown placeholder \"{\(inside)}\" (use {n}, {c}, {r}, optionally {n%K})")
                }
                if !literal.isEmpty { parts.append(.literal(literal)); literal = "" }
                parts.append(.number(v, modulo: modulo))
                i = text.index(after: close)
                continue
            }
            if ch == "}" || ch == "<" || ch == ">" || ch == " " || ch.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) {
                throw BlastOptionError("\(option): \(ch.debugDescription) is not allowed in an address pattern (\"\(text)\")")
            }
            literal.append(ch)
            i = text.index(after: i)
        }
        if !literal.isEmpty { parts.append(.literal(literal)) }
        self.parts = parts
        description = text
    }

    /// Whether the pattern names {r}, i.e. gives each recipient of one message its own address.
    public var usesRecipientNumber: Bool {
        parts.contains { if case .number(.recipient, _) = $0 { return true } else { return false } }
    }

    public func render(message: Int, connection: Int, recipient: Int = 1) -> String {
        if parts.count == 1, case .literal(let s) = parts[0] { return s }
        var out = ""
        for part in parts {
            switch part {
            case .literal(let s): out += s
            case .number(let v, let modulo):
                var n: Int
                switch v {
                case .message: n = message
                case .connection: n = connection
                case .recipient: n = recipient
                }
                if let modulo { n %= modulo }
                out += String(n)
            }
        }
        return out
    }
}
