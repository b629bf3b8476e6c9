// The DKIM-Signature header field (RFC 6376 §3.5): which header fields it signs, its tags, how it is
// folded, and the bytes that the signing algorithm signs (§3.7).

public enum DKIMAlgorithm: String, Sendable, Equatable, CaseIterable {
    case rsaSHA256 = "rsa-sha256"
    /// RFC 8463: Ed25519 over the SHA-256 of the data.
    case ed25519SHA256 = "ed25519-sha256"

    /// The k= tag of the key record.
    public var keyType: String {
        switch self {
        case .rsaSHA256: "rsa"
        case .ed25519SHA256: "ed25519"
        }
    }
}

public enum SignedHeaders {
    /// The fields signed when present (RFC 6376 §5.4.1, plus RFC 8058's List-Unsubscribe-Post), in
    /// the order h= lists them.
    public static let defaults: [String] = [
        "from", "reply-to", "subject", "date", "to", "cc",
        "resent-date", "resent-from", "resent-sender", "resent-to", "resent-cc",
        "in-reply-to", "references", "message-id",
        "mime-version", "content-type", "content-transfer-encoding", "content-id", "content-description",
        "list-id", "list-help", "list-unsubscribe", "list-unsubscribe-post", "list-subscribe",
        "list-post", "list-owner", "list-archive",
    ]

    /// Signed once more than they appear, so that another one cannot be added without breaking the
    /// signature (§8.15). From is always signed (§5.4), even when the message has none.
    public static let oversigned: Set<String> = ["from"]

    /// The h= list for `fields`: each name of `names` (lowercase) once per instance in the message,
    /// those in `oversigned` once more; names absent from the message are left out unless oversigned.
    public static func list(for fields: [HeaderField], names: [String] = defaults,
                            oversigned: Set<String> = oversigned) -> [String] {
        // Linear scans: a handful of fields and a few dozen names cost less than hashing them.
        var out: [String] = []
        for raw in names {
            let name = asciiLowercased(raw)
            var n = 0
            for f in fields where f.lowercasedName == name { n += 1 }
            if oversigned.contains(name) { n += 1 }
            guard n > 0, !out.contains(name) else { continue }
            out.append(contentsOf: repeatElement(name, count: n))
        }
        return out
    }

    /// The fields that h= names, in h= order (§5.4.2): the k-th time a name appears in h= selects
    /// the k-th instance of it counting from the bottom; a name with no instance left selects nothing.
    public static func select(_ h: [String], from fields: [HeaderField]) -> [HeaderField] {
        var out: [HeaderField] = []
        for (i, raw) in h.enumerated() {
            let name = asciiLowercased(raw)
            var k = 0  // earlier occurrences of the name in h=
            for earlier in h[..<i] where asciiLowercased(earlier) == name { k += 1 }
            var j = fields.count - 1
            while j >= 0 {
                if fields[j].lowercasedName == name {
                    if k == 0 {
                        out.append(fields[j])
                        break
                    }
                    k -= 1
                }
                j -= 1
            }
        }
        return out
    }
}

/// The tags of one DKIM-Signature, everything but b=.
public struct DKIMSignatureTags: Sendable, Equatable {
    public var algorithm: DKIMAlgorithm
    public var canonicalization: CanonicalizationPair
    public var domain: String
    public var selector: String
    /// t=: seconds since the Unix epoch.
    public var timestamp: UInt64
    /// x=: seconds since the Unix epoch; after t=.
    public var expiration: UInt64?
    /// h=, lowercase names.
    public var signedHeaders: [String]
    /// bh=: the hash of the canonical body.
    public var bodyHash: [UInt8]

    public init(algorithm: DKIMAlgorithm, canonicalization: CanonicalizationPair, domain: String,
                selector: String, timestamp: UInt64, expiration: UInt64? = nil,
                signedHeaders: [String], bodyHash: [UInt8]) {
        self.algorithm = algorithm
        self.canonicalization = canonicalization
        self.domain = domain
        self.selector = selector
        self.timestamp = timestamp
        self.expiration = expiration
        self.signedHeaders = signedHeaders
        self.bodyHash = bodyHash
    }

    /// d= and s= must be domain names (s= may have underscores), h= must name fields, x= must follow
    /// t=: a config error otherwise, never a malformed header.
    public func validate() throws {
        guard Self.isDomainName(domain) else { throw DKIMError("d=\(domain) is not a domain name") }
        guard Self.isSelector(selector) else { throw DKIMError("s=\(selector) is not a selector") }
        for name in signedHeaders where !Self.isHeaderName(name) {
            throw DKIMError("h= entry \"\(name)\" is not a header field name")
        }
        if let x = expiration, x <= timestamp { throw DKIMError("x= must be later than t=") }
    }

    /// An ASCII domain name (A-labels for an IDN): letters, digits, hyphens, dots between labels.
    public static func isDomainName(_ s: String) -> Bool { isDotted(s, underscore: false) }

    /// A selector: as a domain name, underscores allowed (it is only ever a DNS label before _domainkey).
    public static func isSelector(_ s: String) -> Bool { isDotted(s, underscore: true) }

    /// A header field name: printable ASCII but colon, and no semicolon (it ends the h= tag).
    public static func isHeaderName(_ s: String) -> Bool {
        !s.isEmpty && s.utf8.allSatisfy { $0 > 32 && $0 < 127 && $0 != 0x3A && $0 != 0x3B }
    }

    private static func isDotted(_ s: String, underscore: Bool) -> Bool {
        let u = s.utf8
        guard !u.isEmpty, u.count <= 253, u.first != 0x2E, u.last != 0x2E else { return false }
        var previous: UInt8 = 0
        for b in u {
            let ok = (b >= 0x61 && b <= 0x7A) || (b >= 0x41 && b <= 0x5A) || (b >= 0x30 && b <= 0x39)
                || b == 0x2D || (b == 0x2E && previous != 0x2E) || (underscore && b == 0x5F)
            guard ok else { return false }
            previous = b
        }
        return true
    }

    /// The whole field, its CRLF included, with `signature` as b=; with an empty signature, the
    /// field as signed (§3.7) plus CRLF. Folded before a tag (or inside h=, bh= and b=) at 76 columns.
    public func field(signature: [UInt8]) -> [UInt8] {
        var f = Folder(start: "DKIM-Signature:")
        f.add(" v=1;")
        f.add(" a=\(algorithm.rawValue);")
        f.add(" c=\(canonicalization);")
        f.add(" d=\(domain);")
        f.add(" s=\(selector);")
        f.add(" t=\(timestamp);")
        if let x = expiration { f.add(" x=\(x);") }
        for (i, name) in signedHeaders.enumerated() {
            // FWS is allowed around the colons of h= (§3.5), so a long list folds between names.
            f.add((i == 0 ? " h=" : "") + name + (i == signedHeaders.count - 1 ? ";" : ":"))
        }
        f.add(" bh=" + base64(bodyHash) + ";")
        // b= last and with nothing after it, so the unsigned form ends with "b=" (§3.7).
        f.add(" b=", breakable: true)
        let b64 = Array(base64(signature).utf8)
        var i = 0
        while i < b64.count {
            let room = max(8, Folder.width - f.column)
            let take = min(room, b64.count - i)
            f.add(String(decoding: b64[i..<i + take], as: UTF8.self), breakable: i > 0, space: false)
            i += take
        }
        f.bytes += [cr, lf]
        return f.bytes
    }
}

/// Folds a header at `width` columns: a piece that would go past it starts a new line (CRLF TAB).
struct Folder {
    static let width = 76
    var bytes: [UInt8]
    var column: Int

    init(start: String) {
        bytes = Array(start.utf8)
        column = bytes.count
    }

    /// `piece` starting with a space: the space is where the line may break.
    mutating func add(_ piece: String, breakable: Bool = true, space: Bool = true) {
        var p = Array(piece.utf8)
        if breakable && column + p.count > Folder.width && column > 1 {
            if space && p.first == sp { p.removeFirst() }
            bytes += [cr, lf, htab]
            column = 8
        }
        bytes += p
        column += p.count
    }
}

public enum DKIMSigningData {
    /// The bytes the signature algorithm signs (§3.7): the selected fields canonicalized, then the
    /// DKIM-Signature field (b= empty) canonicalized without its final CRLF.
    public static func data(fields: [HeaderField], tags: DKIMSignatureTags) throws -> [UInt8] {
        var out: [UInt8] = []
        let mode = tags.canonicalization.header
        for f in SignedHeaders.select(tags.signedHeaders, from: fields) {
            out += HeaderCanonicalizer.canonicalize(f, mode)
        }
        let unsigned = try HeaderField(raw: tags.field(signature: []))
        var sig = HeaderCanonicalizer.canonicalize(unsigned, mode)
        sig.removeLast(2)
        out += sig
        return out
    }
}

/// The TXT record at selector._domainkey.domain (RFC 6376 §3.6.1): `publicKey` is the base64 of the
/// DER SubjectPublicKeyInfo for RSA, the raw 32-byte key for Ed25519 (RFC 8463 §4.2).
public func dkimKeyRecord(algorithm: DKIMAlgorithm, publicKey: [UInt8]) -> String {
    "v=DKIM1; k=\(algorithm.keyType); p=\(base64(publicKey))"
}

private let base64Alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)

public func base64(_ bytes: [UInt8]) -> String {
    let length = (bytes.count + 2) / 3 * 4
    return String(unsafeUninitializedCapacity: length) { out in
        var i = 0, k = 0
        func put(_ v: UInt32) {
            out[k] = base64Alphabet[Int(v & 63)]
            k += 1
        }
        while i + 2 < bytes.count {
            let v = UInt32(bytes[i]) << 16 | UInt32(bytes[i + 1]) << 8 | UInt32(bytes[i + 2])
            put(v >> 18); put(v >> 12); put(v >> 6); put(v)
            i += 3
        }
        let rest = bytes.count - i
        if rest > 0 {
            let v = UInt32(bytes[i]) << 16 | (rest == 2 ? UInt32(bytes[i + 1]) << 8 : 0)
            put(v >> 18); put(v >> 12)
            if rest == 2 { put(v >> 6) } else { out[k] = 0x3D; k += 1 }
            out[k] = 0x3D
            k += 1
        }
        return k
    }
}

/// Whether a published key record (RFC 6376 §3.6.1) is the one for this key: nil when it is, else
/// why not. Tags are compared as verifiers read them: v= (if present) DKIM1, k= (default rsa) the
/// key's type, p= (whitespace ignored) the key; an empty p= is a revoked key.
public func dkimKeyRecordMismatch(_ record: String, algorithm: DKIMAlgorithm, publicKey: [UInt8]) -> String? {
    var tags: [String: String] = [:]
    for part in record.split(separator: ";") {
        guard let eq = part.firstIndex(of: "=") else {
            if part.allSatisfy({ $0 == " " || $0 == "\t" || $0 == "\r" || $0 == "\n" }) { continue }
            return "\"\(part)\" is not a tag=value pair"
        }
        let name = part[..<eq].filter { !" \t\r\n".contains($0) }
        let value = part[part.index(after: eq)...].filter { !" \t\r\n".contains($0) }
        if tags[name] != nil { return "the tag \(name)= appears twice" }
        tags[name] = value
    }
    if let v = tags["v"], v != "DKIM1" { return "v=\(v), not DKIM1" }
    let k = tags["k"] ?? "rsa"
    if k != algorithm.keyType { return "k=\(k), but the key is \(algorithm.keyType)" }
    guard let p = tags["p"] else { return "no p= tag" }
    if p.isEmpty { return "p= is empty: the key is revoked" }
    if p != base64(publicKey) { return "p= is another key" }
    return nil
}
