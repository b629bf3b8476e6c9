// The envelope record: the text stored in <spool>/queue/<h>/<id>.env.
//
// UTF-8, one field per line, `key<TAB>value`, every line ending in "\n", written in this order:
//
//     tern-envelope	1
//     id	060A2418202240
//     arrival	1700000000.123456            seconds since the epoch, always 6 decimals
//     sender	alice@example.org             empty for the null sender <>; no angle brackets
//     priority	0                           -9...9 (RFC 6710)
//     size	1234                            bytes of <id>.msg
//     body	8BITMIME                        omitted when the client gave no BODY=
//     smtputf8	0                           0 or 1
//     client	192.0.2.7
//     helo	mail.example.org
//     rdns	mail.example.org                omitted when the reverse lookup gave no name
//     protocol	ESMTP
//     auth	alice                          the AUTH identity; omitted when the client did not authenticate
//     attempts	0
//     next-attempt	1700000000.123456
//     warned	1                             only once a delay warning went to the sender
//     held	1                               only while the postmaster holds the message
//     ret	HDRS                            RET= (RFC 3461), FULL or HDRS; omitted when not given
//     envid	QQ314159                      ENVID= as it arrived (xtext); omitted when not given
//     requiretls	1                        REQUIRETLS (RFC 8689); omitted when not asked for
//     tlsoptional	1                       "TLS-Required: No" (RFC 8689 §5); omitted when absent
//     msgid	<a1@example.org>                   the Message-ID field as received; omitted when none
//     rcpt	pending	bob@example.net             one per recipient: state, address, and the last
//     rcpt	deferred	carol@example.net	451 4.3.0 try later    reply when there is one
//     notify	SUCCESS,DELAY                  NOTIFY= of the rcpt line just before; omitted when not given
//     orcpt	rfc822;carol@example.net       ORCPT= of the rcpt line just before; omitted when not given
//     end
//
// Records written before DSN (no ret, envid, notify or orcpt lines) read as they always did.
//
// Values never contain TAB, CR or LF: `encode` replaces each with a space (a multi-line reply from a
// next hop becomes one line). Everything else, spaces, quotes and non-ASCII UTF-8 included, is kept.
// `decode` requires the version line first and `end` last (a record cut short is rejected, not
// half-read), every required field exactly once, and well-formed numbers; errors name the field.
// Encoding builds the bytes directly: it runs for every message received and every delivery attempt.

import SMTPProtocol

public struct EnvelopeRecordError: Error, CustomStringConvertible, Equatable, Sendable {
    /// The key of the offending line ("end" when the record is cut short, "line N" when unparsable).
    public var field: String
    public var reason: String

    public init(field: String, reason: String) {
        self.field = field
        self.reason = reason
    }

    public var description: String { "envelope record: \(field): \(reason)" }
}

public enum EnvelopeRecord {
    public static let magic = "tern-envelope"
    public static let version = 1

    // MARK: Encoding

    public static func encode(_ e: Envelope) -> [UInt8] {
        var out: [UInt8] = []
        var capacity = 256 + e.sender.utf8.count + e.client.helo.utf8.count
        for r in e.recipients { capacity += 24 + r.address.utf8.count + (r.lastReply?.utf8.count ?? 0) }
        out.reserveCapacity(capacity)

        field(&out, "tern-envelope\t") { appendInt(&$0, version) }
        field(&out, "id\t") { appendText(&$0, e.id.rawValue) }
        field(&out, "arrival\t") { appendSeconds(&$0, e.arrival) }
        field(&out, "sender\t") { appendText(&$0, e.sender) }
        field(&out, "priority\t") { appendInt(&$0, e.priority) }
        field(&out, "size\t") { appendInt(&$0, e.size) }
        if let body = e.bodyType { field(&out, "body\t") { appendText(&$0, body) } }
        field(&out, "smtputf8\t") { $0.append(e.smtputf8 ? 0x31 : 0x30) }
        field(&out, "client\t") { appendText(&$0, e.client.ip) }
        field(&out, "helo\t") { appendText(&$0, e.client.helo) }
        if let rdns = e.client.reverseName { field(&out, "rdns\t") { appendText(&$0, rdns) } }
        field(&out, "protocol\t") { appendText(&$0, e.client.protocolName) }
        if let user = e.client.authenticatedUser { field(&out, "auth\t") { appendText(&$0, user) } }
        field(&out, "attempts\t") { appendInt(&$0, e.attempts) }
        field(&out, "next-attempt\t") { appendSeconds(&$0, e.nextAttempt) }
        if e.delayWarned { field(&out, "warned\t") { $0.append(0x31) } }
        if e.held { field(&out, "held\t") { $0.append(0x31) } }
        if let ret = e.ret { field(&out, "ret\t") { $0.append(contentsOf: ret.rawValue.utf8) } }
        if let envid = e.envid { field(&out, "envid\t") { appendText(&$0, envid) } }
        if e.requireTLS { field(&out, "requiretls\t") { $0.append(0x31) } }
        if e.tlsOptional { field(&out, "tlsoptional\t") { $0.append(0x31) } }
        if let id = e.messageID { field(&out, "msgid\t") { appendText(&$0, id) } }
        for r in e.recipients {
            field(&out, "rcpt\t") { out in
                out.append(contentsOf: r.state.rawValue.utf8)
                out.append(tab)
                appendText(&out, r.address)
                if let reply = r.lastReply {
                    out.append(tab)
                    appendText(&out, reply)
                }
            }
            if let notify = r.notify { field(&out, "notify\t") { $0.append(contentsOf: notify.keyword.utf8) } }
            if let orcpt = r.orcpt { field(&out, "orcpt\t") { appendText(&$0, orcpt) } }
        }
        out.append(contentsOf: "end\n".utf8)
        return out
    }

    @inline(__always)
    private static func field(_ out: inout [UInt8], _ key: StaticString, _ value: (inout [UInt8]) -> Void) {
        out.append(contentsOf: UnsafeBufferPointer(start: key.utf8Start, count: key.utf8CodeUnitCount))
        value(&out)
        out.append(newline)
    }

    /// Appends the string's UTF-8, turning TAB, CR and LF into spaces so they cannot break the framing.
    private static func appendText(_ out: inout [UInt8], _ s: String) {
        let start = out.count
        out.append(contentsOf: s.utf8)
        for i in start..<out.count where out[i] == tab || out[i] == newline || out[i] == cr {
            out[i] = space
        }
    }

    static func appendInt(_ out: inout [UInt8], _ value: Int) {
        if value < 0 { out.append(minus) }
        appendDigits(&out, value.magnitude, minimumWidth: 1)
    }

    private static func appendDigits(_ out: inout [UInt8], _ value: UInt, minimumWidth: Int) {
        // At most 20 digits for a 64-bit value; fill a small buffer from the right.
        var buffer: (UInt64, UInt64, UInt64) = (0, 0, 0)
        withUnsafeMutableBytes(of: &buffer) { raw in
            var v = value
            var i = raw.count
            repeat {
                i -= 1
                raw[i] = 0x30 + UInt8(v % 10)
                v /= 10
            } while v > 0 || raw.count - i < minimumWidth
            out.append(contentsOf: raw[i...])
        }
    }

    /// Seconds with exactly six decimals, from the value rounded to whole microseconds.
    /// Values that are not finite or beyond ±9e12 s (year 287,000) are written as 0.
    static func appendSeconds(_ out: inout [UInt8], _ seconds: Double) {
        let scaled = (seconds * 1_000_000).rounded()
        let micros: Int64 = scaled.isFinite && abs(scaled) < 9e18 ? Int64(scaled) : 0
        if micros < 0 { out.append(minus) }
        let magnitude = UInt(micros.magnitude)
        appendDigits(&out, magnitude / 1_000_000, minimumWidth: 1)
        out.append(dot)
        appendDigits(&out, magnitude % 1_000_000, minimumWidth: 6)
    }

    // MARK: Decoding

    public static func decode(_ bytes: [UInt8]) throws -> Envelope {
        try bytes.withUnsafeBytes { try decode($0) }
    }

    public static func decode(_ bytes: UnsafeRawBufferPointer) throws -> Envelope {
        var lines = LineReader(bytes: bytes)

        // The version line comes first, so a file that is not an envelope fails with a clear error.
        guard let first = try lines.next() else { throw missing("tern-envelope") }
        guard first.key == magic else {
            throw EnvelopeRecordError(field: "tern-envelope", reason: "not an envelope record")
        }
        guard let versionText = first.value, versionText.elementsEqual(String(version).utf8) else {
            let text = first.value.map { String(decoding: $0, as: UTF8.self) } ?? ""
            throw EnvelopeRecordError(field: "tern-envelope", reason: "unsupported version \"\(text)\"")
        }

        var id: QueueID?, sender: String?, body: String?, client: String?, helo: String?, rdns: String?
        var protocolName: String?, auth: String?, arrival: Double?, nextAttempt: Double?
        var priority: Int?, size: Int?, attempts: Int?, smtputf8: Bool?, warned: Bool?, held: Bool?
        var ret: DSNReturn?, envid: String?, requireTLS: Bool?, tlsOptional: Bool?, messageID: String?
        var recipients: [Recipient] = []
        var ended = false

        while let (key, valueBytes) = try lines.next() {
            if ended { throw EnvelopeRecordError(field: "end", reason: "data after the end line") }
            if key == "end" {
                guard valueBytes == nil else { throw EnvelopeRecordError(field: "end", reason: "unexpected value") }
                ended = true
                continue
            }
            guard let value = valueBytes else { throw EnvelopeRecordError(field: key, reason: "expected key<TAB>value") }
            switch key {
            case "id":
                guard let parsed = QueueID(rawValue: try text(value, key)) else { throw malformed(key, value) }
                try set(&id, parsed, key)
            case "arrival": try set(&arrival, try seconds(value, key), key)
            case "sender": try set(&sender, try text(value, key), key)
            case "priority":
                let parsed = try integer(value, key)
                guard (-9...9).contains(parsed) else {
                    throw EnvelopeRecordError(field: key, reason: "\(parsed) is outside -9...9")
                }
                try set(&priority, parsed, key)
            case "size": try set(&size, try count(value, key), key)
            case "body":
                guard !value.isEmpty else { throw malformed(key, value) }
                try set(&body, try text(value, key), key)
            case "smtputf8":
                guard value.count == 1, value[0] == 0x30 || value[0] == 0x31 else { throw malformed(key, value) }
                try set(&smtputf8, value[0] == 0x31, key)
            case "client": try set(&client, try text(value, key), key)
            case "helo": try set(&helo, try text(value, key), key)
            case "rdns": try set(&rdns, try text(value, key), key)
            case "protocol": try set(&protocolName, try text(value, key), key)
            case "auth":
                guard !value.isEmpty else { throw malformed(key, value) }
                try set(&auth, try text(value, key), key)
            case "attempts": try set(&attempts, try count(value, key), key)
            case "next-attempt": try set(&nextAttempt, try seconds(value, key), key)
            case "warned":
                guard value.count == 1, value[0] == 0x31 else { throw malformed(key, value) }
                try set(&warned, true, key)
            case "held":
                guard value.count == 1, value[0] == 0x31 else { throw malformed(key, value) }
                try set(&held, true, key)
            case "ret":
                guard let parsed = DSNReturn(rawValue: try text(value, key)) else { throw malformed(key, value) }
                try set(&ret, parsed, key)
            case "envid":
                guard !value.isEmpty else { throw malformed(key, value) }
                try set(&envid, try text(value, key), key)
            case "requiretls":
                guard value.count == 1, value[0] == 0x31 else { throw malformed(key, value) }
                try set(&requireTLS, true, key)
            case "msgid":
                try set(&messageID, try text(value, key), key)
            case "tlsoptional":
                guard value.count == 1, value[0] == 0x31 else { throw malformed(key, value) }
                try set(&tlsOptional, true, key)
            case "rcpt": recipients.append(try recipient(value))
            case "notify", "orcpt":
                // The DSN parameters of the recipient on the line before.
                guard !recipients.isEmpty else {
                    throw EnvelopeRecordError(field: key, reason: "comes before any rcpt line")
                }
                let i = recipients.count - 1
                if key == "notify" {
                    guard let parsed = DSNNotify(keyword: try text(value, key)) else { throw malformed(key, value) }
                    guard recipients[i].notify == nil else {
                        throw EnvelopeRecordError(field: key, reason: "appears twice for one recipient")
                    }
                    recipients[i].notify = parsed
                } else {
                    guard !value.isEmpty else { throw malformed(key, value) }
                    guard recipients[i].orcpt == nil else {
                        throw EnvelopeRecordError(field: key, reason: "appears twice for one recipient")
                    }
                    recipients[i].orcpt = try text(value, key)
                }
            default: throw EnvelopeRecordError(field: key, reason: "unknown field")
            }
        }
        guard ended else { throw EnvelopeRecordError(field: "end", reason: "record is truncated (no end line)") }

        func required<T>(_ value: T?, _ key: String) throws -> T {
            guard let value else { throw missing(key) }
            return value
        }
        var envelope = Envelope(
            id: try required(id, "id"),
            sender: try required(sender, "sender"),
            recipients: recipients,
            priority: try required(priority, "priority"),
            arrival: try required(arrival, "arrival"),
            attempts: try required(attempts, "attempts"),
            nextAttempt: try required(nextAttempt, "next-attempt"),
            size: try required(size, "size"),
            bodyType: body,
            smtputf8: try required(smtputf8, "smtputf8"),
            client: ClientInfo(ip: try required(client, "client"), helo: try required(helo, "helo"),
                               reverseName: rdns, protocolName: try required(protocolName, "protocol"),
                               authenticatedUser: auth))
        envelope.ret = ret
        envelope.envid = envid
        envelope.requireTLS = requireTLS ?? false
        envelope.tlsOptional = tlsOptional ?? false
        envelope.messageID = messageID
        envelope.delayWarned = warned ?? false
        envelope.held = held ?? false
        return envelope
    }

    /// `<state>\t<address>[\t<last reply>]`
    private static func recipient(_ value: UnsafeRawBufferPointer) throws -> Recipient {
        let key = "rcpt"
        guard let tab1 = value.firstIndex(of: tab),
              let state = RecipientState(rawValue: try text(UnsafeRawBufferPointer(rebasing: value[..<tab1]), key))
        else {
            throw EnvelopeRecordError(field: key, reason: "expected <state>\\t<address>, got \"\(String(decoding: value, as: UTF8.self))\"")
        }
        let rest = UnsafeRawBufferPointer(rebasing: value[(tab1 + 1)...])
        let tab2 = rest.firstIndex(of: tab)
        let address = try text(UnsafeRawBufferPointer(rebasing: rest[..<(tab2 ?? rest.count)]), key)
        guard !address.isEmpty else { throw EnvelopeRecordError(field: key, reason: "empty address") }
        let reply = try tab2.map { try text(UnsafeRawBufferPointer(rebasing: rest[($0 + 1)...]), key) }
        return Recipient(address: address, state: state, lastReply: reply)
    }

    /// Stores a field's value, refusing a second line with the same key.
    private static func set<T>(_ slot: inout T?, _ value: T, _ key: String) throws {
        guard slot == nil else { throw EnvelopeRecordError(field: key, reason: "appears twice") }
        slot = value
    }

    private static func text(_ bytes: UnsafeRawBufferPointer, _ key: String) throws -> String {
        let utf8 = bytes.assumingMemoryBound(to: UInt8.self)
        // The generic validating initializer is slow; most values are ASCII, which needs no validation.
        if utf8.allSatisfy({ $0 < 0x80 }) { return String(decoding: utf8, as: UTF8.self) }
        guard let string = String(validating: utf8, as: UTF8.self) else {
            throw EnvelopeRecordError(field: key, reason: "value is not valid UTF-8")
        }
        return string
    }

    private static func integer(_ bytes: UnsafeRawBufferPointer, _ key: String) throws -> Int {
        guard let value = parseInt(bytes) else { throw malformed(key, bytes) }
        return value
    }

    /// A non-negative integer (size, attempts).
    private static func count(_ bytes: UnsafeRawBufferPointer, _ key: String) throws -> Int {
        guard let value = parseInt(bytes), value >= 0 else { throw malformed(key, bytes) }
        return value
    }

    private static func seconds(_ bytes: UnsafeRawBufferPointer, _ key: String) throws -> Double {
        guard let value = parseSeconds(bytes) else { throw malformed(key, bytes) }
        return value
    }

    private static func missing(_ key: String) -> EnvelopeRecordError {
        EnvelopeRecordError(field: key, reason: "required field is missing")
    }

    private static func malformed(_ key: String, _ bytes: UnsafeRawBufferPointer) -> EnvelopeRecordError {
        EnvelopeRecordError(field: key, reason: "malformed value \"\(String(decoding: bytes, as: UTF8.self))\"")
    }

    /// An optional '-' and 1...18 decimal digits; nothing else (no '+', no spaces).
    static func parseInt(_ bytes: UnsafeRawBufferPointer) -> Int? {
        let negative = bytes.first == minus
        let digits = negative ? UnsafeRawBufferPointer(rebasing: bytes.dropFirst()) : bytes
        guard (1...18).contains(digits.count) else { return nil }
        var value = 0
        for byte in digits {
            guard byte >= 0x30, byte <= 0x39 else { return nil }
            value = value * 10 + Int(byte - 0x30)
        }
        return negative ? -value : value
    }

    /// `[-]<digits>.<1 to 6 digits>`: what `encode` writes, with the decimals allowed to be fewer.
    static func parseSeconds(_ bytes: UnsafeRawBufferPointer) -> Double? {
        guard let dot = bytes.firstIndex(of: dot),
              let whole = parseInt(UnsafeRawBufferPointer(rebasing: bytes[..<dot])),
              whole.magnitude < 9_000_000_000_000
        else { return nil }
        let fraction = UnsafeRawBufferPointer(rebasing: bytes[(dot + 1)...])
        guard (1...6).contains(fraction.count) else { return nil }
        var micros = 0
        for byte in fraction {
            guard byte >= 0x30, byte <= 0x39 else { return nil }
            micros = micros * 10 + Int(byte - 0x30)
        }
        for _ in fraction.count..<6 { micros *= 10 }
        let total = Int(whole.magnitude) * 1_000_000 + micros
        // Dividing the exact integer gives the double nearest the decimal: the value encode started from
        // whenever that value had microsecond precision.
        return Double(bytes.first == minus ? -total : total) / 1_000_000
    }

    private static let tab: UInt8 = 0x09
    private static let newline: UInt8 = 0x0A
    private static let cr: UInt8 = 0x0D
    private static let space: UInt8 = 0x20
    private static let minus: UInt8 = 0x2D
    private static let dot: UInt8 = 0x2E
}

/// Splits a record into lines: `key<TAB>value`, or a bare key (only `end` has one). Checks that every
/// line, the last one included, ends in a newline. Keys are short ASCII, so as Strings they stay inline.
private struct LineReader {
    let bytes: UnsafeRawBufferPointer
    var position = 0
    var lineNumber = 0

    init(bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

    mutating func next() throws -> (key: String, value: UnsafeRawBufferPointer?)? {
        guard position < bytes.count else { return nil }
        lineNumber += 1
        guard let end = bytes[position...].firstIndex(of: 0x0A) else {
            throw EnvelopeRecordError(field: "end", reason: "record is truncated (last line has no newline)")
        }
        let line = UnsafeRawBufferPointer(rebasing: bytes[position..<end])
        position = end + 1
        guard !line.isEmpty else { throw EnvelopeRecordError(field: "line \(lineNumber)", reason: "empty line") }
        let tab = line.firstIndex(of: 0x09)
        // Invalid UTF-8 in a key becomes U+FFFD and then fails as an unknown field.
        let key = String(decoding: UnsafeRawBufferPointer(rebasing: line[..<(tab ?? line.count)]), as: UTF8.self)
        return (key, tab.map { UnsafeRawBufferPointer(rebasing: line[($0 + 1)...]) })
    }
}
