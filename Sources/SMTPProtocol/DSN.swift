// Delivery Status Notification parameters (RFC 3461): what the sender asked to hear about each
// recipient and how much of the message a notice returns. They arrive on MAIL and RCPT, travel with
// the envelope through the spool, and go on to a next hop that offers DSN.
//
//   MAIL FROM:<a@x> RET=HDRS ENVID=QQ314159        RET: FULL or HDRS; ENVID: xtext, at most 100 octets
//   RCPT TO:<b@y> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;b@y
//                  NOTIFY: NEVER, or any of SUCCESS, FAILURE, DELAY; ORCPT: addr-type ";" xtext
//
// ENVID and ORCPT are kept as they arrived (xtext), since that is the form passed on; `xtextDecode`
// gives the text for a delivery-status report.

/// NOTIFY= (RFC 3461 §4.1). Absent (nil where it is held) means "as the MTA sees fit": failures and
/// delays, never successes (§4.1, and what Postfix does).
public struct DSNNotify: OptionSet, Sendable, Hashable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    public static let success = DSNNotify(rawValue: 1)
    public static let failure = DSNNotify(rawValue: 2)
    public static let delay = DSNNotify(rawValue: 4)
    /// NOTIFY=NEVER: the empty set.
    public static let never: DSNNotify = []

    /// "NEVER" or the keywords in RFC order, comma-separated: the parameter's value.
    public var keyword: String {
        guard !isEmpty else { return "NEVER" }
        var words: [String] = []
        if contains(.success) { words.append("SUCCESS") }
        if contains(.failure) { words.append("FAILURE") }
        if contains(.delay) { words.append("DELAY") }
        return words.joined(separator: ",")
    }

    /// Parses NOTIFY's value: "NEVER" alone, or SUCCESS/FAILURE/DELAY each at most once, any case.
    public init?(keyword value: String) {
        let words = value.uppercased().split(separator: ",", omittingEmptySubsequences: false)
        if words == ["NEVER"] {
            self = .never
            return
        }
        var set: DSNNotify = []
        for w in words {
            let one: DSNNotify
            switch w {
            case "SUCCESS": one = .success
            case "FAILURE": one = .failure
            case "DELAY": one = .delay
            default: return nil  // NEVER with others, an empty word, or an unknown one
            }
            guard !set.contains(one) else { return nil }
            set.insert(one)
        }
        guard !set.isEmpty else { return nil }
        self = set
    }
}

/// RET= (RFC 3461 §4.3): what a failure notice returns of the message.
public enum DSNReturn: String, Sendable, Equatable {
    case full = "FULL"
    case headers = "HDRS"
}

/// The DSN parameters of one RCPT.
public struct RecipientDSN: Sendable, Equatable {
    /// nil: NOTIFY not given.
    public var notify: DSNNotify?
    /// ORCPT as it arrived: "rfc822;" and the address in xtext. nil: not given.
    public var orcpt: String?

    public init(notify: DSNNotify? = nil, orcpt: String? = nil) {
        self.notify = notify
        self.orcpt = orcpt
    }

    public var isEmpty: Bool { notify == nil && orcpt == nil }
}

/// xtext (RFC 3461 §4): printable US-ASCII but "+" and "=", and "+XX" for any other octet (two
/// upper-case hex digits). Nil for anything else, so a malformed value is refused, not guessed at.
public func xtextDecode(_ text: String) -> String? {
    var out: [UInt8] = []
    var bytes = text.utf8.makeIterator()
    while let b = bytes.next() {
        switch b {
        case UInt8(ascii: "+"):
            guard let h = bytes.next().flatMap(upperHexValue), let l = bytes.next().flatMap(upperHexValue) else {
                return nil
            }
            out.append(h << 4 | l)
        case 33...126 where b != UInt8(ascii: "="):
            out.append(b)
        default:
            return nil
        }
    }
    return String(decoding: out, as: UTF8.self)
}

/// xtext for any string: "+", "=", controls, space and non-ASCII octets become "+XX".
public func xtextEncode(_ text: String) -> String {
    var out = ""
    for b in text.utf8 {
        if b >= 33 && b <= 126 && b != UInt8(ascii: "+") && b != UInt8(ascii: "=") {
            out.unicodeScalars.append(Unicode.Scalar(b))
        } else {
            let hex = Array("0123456789ABCDEF".utf8)
            out += "+"
            out.unicodeScalars.append(Unicode.Scalar(hex[Int(b >> 4)]))
            out.unicodeScalars.append(Unicode.Scalar(hex[Int(b & 15)]))
        }
    }
    return out
}

private func upperHexValue(_ b: UInt8) -> UInt8? {
    switch b {
    case UInt8(ascii: "0")...UInt8(ascii: "9"): return b - UInt8(ascii: "0")
    case UInt8(ascii: "A")...UInt8(ascii: "F"): return b - UInt8(ascii: "A") + 10
    default: return nil
    }
}

/// Checks ORCPT's value (RFC 3461 §4.2): an addr-type (atom), ";", and xtext that decodes; at most
/// 500 octets. Returns the value with the addr-type as given, or nil.
public func validORCPT(_ value: String) -> String? {
    guard value.utf8.count <= 500, let semicolon = value.firstIndex(of: ";") else { return nil }
    let type = value[..<semicolon]
    let address = String(value[value.index(after: semicolon)...])
    guard !type.isEmpty, type.utf8.allSatisfy({ isAtext($0) }), !address.isEmpty,
          xtextDecode(address) != nil else { return nil }
    return value
}

/// Checks ENVID's value: xtext that decodes, at most 100 octets (RFC 3461 §4.4).
public func validENVID(_ value: String) -> String? {
    guard !value.isEmpty, value.utf8.count <= 100, xtextDecode(value) != nil else { return nil }
    return value
}

