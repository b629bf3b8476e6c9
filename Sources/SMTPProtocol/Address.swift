// Mailbox and path syntax of RFC 5321 §4.1.2, with the UTF-8 extension of RFC 6531 §3.3.
//
//   Path       = "<" [ A-d-l ":" ] Mailbox ">"
//   Mailbox    = Local-part "@" ( Domain / address-literal )
//   Local-part = Dot-string / Quoted-string
//
// A source route (A-d-l) and the characters '%', '!' and a quoted '@' in the local part are
// "sender-specified routing": they are parsed, kept as written, never acted on, and reported
// through `hasSenderRouting` so that relay control can refuse them from untrusted clients.

public struct MailPath: Equatable, Sendable, CustomStringConvertible {
    /// The local part as written, quotes and backslashes included.
    public var localPart: String
    /// The domain as written ("Example.COM", "[192.0.2.1]", "[IPv6:2001:db8::1]"); empty only for <Postmaster>.
    public var domain: String
    /// The at-domains of an obsolete source route, without the '@'.
    public var sourceRoute: [String]
    public var isNull: Bool

    public static let null = MailPath(localPart: "", domain: "", sourceRoute: [], isNull: true)

    /// "local@domain" (no source route, no angle brackets); "" for the null path.
    public var address: String {
        if isNull { return "" }
        return domain.isEmpty ? localPart : localPart + "@" + domain
    }

    public var description: String { "<" + address + ">" }

    public var isAddressLiteral: Bool { domain.hasPrefix("[") }

    /// '%' or '!' or '@' inside the local part, or a source route: routing chosen by the sender.
    public var hasSenderRouting: Bool {
        if !sourceRoute.isEmpty { return true }
        for b in localPart.utf8 where b == UInt8(ascii: "%") || b == UInt8(ascii: "!") || b == UInt8(ascii: "@") {
            return true
        }
        return false
    }

    public var isASCII: Bool { localPart.utf8.allSatisfy { $0 < 0x80 } && domain.utf8.allSatisfy { $0 < 0x80 } }

    /// The bare, domain-less <Postmaster> that RFC 5321 §4.1.1.3 requires a server to accept.
    public var isBarePostmaster: Bool { domain.isEmpty && !isNull && localPart.lowercased() == "postmaster" }
}

public enum AddressError: Error, Equatable, Sendable {
    case syntax(String)
    case tooLong
    case needsSMTPUTF8
}

/// Parses a path starting at `start` in `bytes`; returns the path and the index just after '>'.
/// `allowNull` is true for MAIL FROM, `allowPostmaster` for RCPT TO, `utf8` when SMTPUTF8 was given.
public func parsePath(_ bytes: ArraySlice<UInt8>, allowNull: Bool, allowPostmaster: Bool, utf8: Bool)
    throws(AddressError) -> (MailPath, ArraySlice<UInt8>.Index)
{
    var i = bytes.startIndex
    let end = bytes.endIndex
    guard i < end, bytes[i] == UInt8(ascii: "<") else { throw .syntax("path must be enclosed in <>") }
    i += 1
    if i < end, bytes[i] == UInt8(ascii: ">") {
        guard allowNull else { throw .syntax("null path not allowed here") }
        return (.null, i + 1)
    }
    // Source route: "@a.example,@b.example:"
    var route: [String] = []
    if i < end, bytes[i] == UInt8(ascii: "@") {
        while true {
            guard i < end, bytes[i] == UInt8(ascii: "@") else { throw .syntax("bad source route") }
            i += 1
            let domainStart = i
            i = try scanDomain(bytes, from: i, utf8: utf8)
            route.append(String(decoding: bytes[domainStart..<i], as: UTF8.self))
            guard i < end else { throw .syntax("bad source route") }
            if bytes[i] == UInt8(ascii: ",") { i += 1; continue }
            if bytes[i] == UInt8(ascii: ":") { i += 1; break }
            throw .syntax("bad source route")
        }
    }
    // Local part
    let localStart = i
    var hasNonASCII = false
    if i < end, bytes[i] == UInt8(ascii: "\"") {
        i += 1
        while true {
            guard i < end else { throw .syntax("unterminated quoted string") }
            let b = bytes[i]
            if b == UInt8(ascii: "\"") { i += 1; break }
            if b == UInt8(ascii: "\\") {
                guard i + 1 < end, bytes[i + 1] >= 32, bytes[i + 1] <= 126 else { throw .syntax("bad quoted pair") }
                i += 2
                continue
            }
            if b >= 0x80 {
                hasNonASCII = true
            } else if b < 32 || b > 126 {
                throw .syntax("bad character in quoted string")
            }
            i += 1
        }
    } else {
        var atomLength = 0
        while i < end {
            let b = bytes[i]
            if b == UInt8(ascii: ".") {
                guard atomLength > 0 else { throw .syntax("empty atom in local part") }
                atomLength = 0
            } else if isAtext(b) {
                atomLength += 1
            } else if b >= 0x80 {
                hasNonASCII = true
                atomLength += 1
            } else {
                break
            }
            i += 1
        }
        guard atomLength > 0 else { throw .syntax("bad local part") }
    }
    let localEnd = i
    if localEnd - localStart > 64 { throw .tooLong }
    let localPart = String(decoding: bytes[localStart..<localEnd], as: UTF8.self)

    guard i < end else { throw .syntax("missing >") }
    if bytes[i] == UInt8(ascii: ">") {
        // Only <Postmaster> may lack a domain (RFC 5321 §4.1.1.3).
        guard allowPostmaster, route.isEmpty, localPart.lowercased() == "postmaster" else {
            throw .syntax("address must have a domain")
        }
        return (MailPath(localPart: localPart, domain: "", sourceRoute: [], isNull: false), i + 1)
    }
    guard bytes[i] == UInt8(ascii: "@") else { throw .syntax("bad character in local part") }
    i += 1
    let domainStart = i
    if i < end, bytes[i] == UInt8(ascii: "[") {
        i = try scanAddressLiteral(bytes, from: i)
    } else {
        i = try scanDomain(bytes, from: i, utf8: utf8)
    }
    let domainEnd = i
    if domainEnd - domainStart > 255 { throw .tooLong }
    guard i < end, bytes[i] == UInt8(ascii: ">") else { throw .syntax("bad character in domain") }
    i += 1
    if i - bytes.startIndex > 256 + 2 { throw .tooLong }
    let domain = String(decoding: bytes[domainStart..<domainEnd], as: UTF8.self)
    if !utf8 && (hasNonASCII || !domain.utf8.allSatisfy({ $0 < 0x80 })) { throw .needsSMTPUTF8 }
    return (MailPath(localPart: localPart, domain: domain, sourceRoute: route, isNull: false), i)
}

/// Convenience for a whole string such as "<a@b.example>".
public func parsePath(_ text: String, allowNull: Bool = true, allowPostmaster: Bool = true, utf8: Bool = true)
    throws(AddressError) -> MailPath
{
    let bytes = Array(text.utf8)
    let (path, next) = try parsePath(bytes[...], allowNull: allowNull, allowPostmaster: allowPostmaster, utf8: utf8)
    guard next == bytes.endIndex else { throw .syntax("trailing characters after path") }
    return path
}

// atext of RFC 5322 §3.2.3.
@inline(__always)
func isAtext(_ b: UInt8) -> Bool {
    switch b {
    case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"):
        return true
    case UInt8(ascii: "!"), UInt8(ascii: "#"), UInt8(ascii: "$"), UInt8(ascii: "%"), UInt8(ascii: "&"),
         UInt8(ascii: "'"), UInt8(ascii: "*"), UInt8(ascii: "+"), UInt8(ascii: "-"), UInt8(ascii: "/"),
         UInt8(ascii: "="), UInt8(ascii: "?"), UInt8(ascii: "^"), UInt8(ascii: "_"), UInt8(ascii: "`"),
         UInt8(ascii: "{"), UInt8(ascii: "|"), UInt8(ascii: "}"), UInt8(ascii: "~"):
        return true
    default:
        return false
    }
}

@inline(__always)
func isLetDig(_ b: UInt8) -> Bool {
    (b >= UInt8(ascii: "a") && b <= UInt8(ascii: "z")) || (b >= UInt8(ascii: "A") && b <= UInt8(ascii: "Z"))
        || (b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9"))
}

/// Domain = sub-domain *("." sub-domain); sub-domain = Let-dig [Ldh-str]. No trailing dot.
func scanDomain(_ bytes: ArraySlice<UInt8>, from start: Int, utf8: Bool) throws(AddressError) -> Int {
    var i = start
    let end = bytes.endIndex
    var labelLength = 0
    var lastWasHyphen = false
    while i < end {
        let b = bytes[i]
        if b == UInt8(ascii: ".") {
            guard labelLength > 0, !lastWasHyphen else { throw .syntax("bad domain") }
            labelLength = 0
        } else if isLetDig(b) || b >= 0x80 {  // UTF-8 is checked by the caller against SMTPUTF8
            labelLength += 1
            lastWasHyphen = false
        } else if b == UInt8(ascii: "-") {
            guard labelLength > 0 else { throw .syntax("bad domain") }
            labelLength += 1
            lastWasHyphen = true
        } else {
            break
        }
        if labelLength > 63 { throw .syntax("domain label too long") }
        i += 1
    }
    guard labelLength > 0, !lastWasHyphen else { throw .syntax("bad domain") }
    return i
}

/// "[" IPv4 / "IPv6:" IPv6 "]". General address literals are refused.
func scanAddressLiteral(_ bytes: ArraySlice<UInt8>, from start: Int) throws(AddressError) -> Int {
    var i = start + 1
    let end = bytes.endIndex
    let contentStart = i
    while i < end, bytes[i] != UInt8(ascii: "]") { i += 1 }
    guard i < end else { throw .syntax("unterminated address literal") }
    let content = String(decoding: bytes[contentStart..<i], as: UTF8.self)
    let valid: Bool
    if content.count > 5, content.prefix(5).lowercased() == "ipv6:" {
        valid = isIPv6Text(content.dropFirst(5))
    } else {
        valid = isIPv4Text(content[...])
    }
    guard valid else { throw .syntax("bad address literal") }
    return i + 1
}

func isIPv4Text(_ s: Substring) -> Bool {
    let parts = s.split(separator: ".", omittingEmptySubsequences: false)
    guard parts.count == 4 else { return false }
    for p in parts {
        guard !p.isEmpty, p.count <= 3, p.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }), let v = Int(p), v <= 255 else {
            return false
        }
    }
    return true
}

func isIPv6Text(_ s: Substring) -> Bool {
    guard !s.isEmpty, s.count <= 45 else { return false }
    var groups = 0
    var sawDoubleColon = false
    var rest = s
    if rest.hasPrefix("::") {
        sawDoubleColon = true
        rest = rest.dropFirst(2)
    } else if rest.hasSuffix("::") {
        sawDoubleColon = true
        rest = rest.dropLast(2)
    }
    if rest.isEmpty { return sawDoubleColon }
    let parts = rest.split(separator: ":", omittingEmptySubsequences: false)
    for (index, p) in parts.enumerated() {
        if p.isEmpty {
            // "a::b": one empty part between two colons, allowed once.
            guard !sawDoubleColon else { return false }
            sawDoubleColon = true
            continue
        }
        if index == parts.count - 1, p.contains(".") {
            guard isIPv4Text(p) else { return false }
            groups += 2
            continue
        }
        guard p.count <= 4, p.utf8.allSatisfy({ ($0 >= 48 && $0 <= 57) || ($0 | 0x20 >= 97 && $0 | 0x20 <= 102) }) else {
            return false
        }
        groups += 1
    }
    return sawDoubleColon ? groups < 8 : groups == 8
}
