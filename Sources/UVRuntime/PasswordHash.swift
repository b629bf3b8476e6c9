// Password hashes for SMTP AUTH: scrypt (RFC 7914) from OpenSSL, salted, one line per hash:
//
//   $scrypt$ln=15,r=8,p=1$<salt, 16 bytes, hex>$<key, 32 bytes, hex>
//
// ln is log2 of N. With ln=15, r=8 one check costs 32 MiB and tens of milliseconds of CPU: slow
// enough to make guessing from a stolen file expensive, fast enough for logins. Checks run on the
// thread pool, never on the loop thread. Other cost parameters in a file are honoured (within limits
// that keep one check from taking the machine's memory: 128 * N * r at most 256 MiB), so the cost
// can be raised later.

import COpenSSL

public enum PasswordHash {
    public static let defaultLogN = 15
    public static let defaultR = 8
    public static let defaultP = 1
    static let keyLength = 32
    static let saltLength = 16

    /// A new hash of `password` with a random salt.
    public static func make(_ password: String, logN: Int = defaultLogN, r: Int = defaultR, p: Int = defaultP) throws -> String {
        var salt = [UInt8](repeating: 0, count: saltLength)
        guard RAND_bytes(&salt, Int32(saltLength)) == 1 else { throw TLSError.fromQueue("RAND_bytes") }
        let key = try derive(password, salt: salt, logN: logN, r: r, p: p)
        return "$scrypt$ln=\(logN),r=\(r),p=\(p)$\(hex(salt))$\(hex(key))"
    }

    /// Whether `password` matches `hash`. A malformed hash never matches. Compares in constant time.
    public static func verify(_ password: String, against hash: String) -> Bool {
        guard let parsed = parse(hash),
              let key = try? derive(password, salt: parsed.salt, logN: parsed.logN, r: parsed.r, p: parsed.p),
              key.count == parsed.key.count
        else { return false }
        return key.withUnsafeBytes { a in parsed.key.withUnsafeBytes { b in
            CRYPTO_memcmp(a.baseAddress, b.baseAddress, a.count) == 0
        } }
    }

    /// Whether the text has the form above, within the cost bound (`verify` refuses anything else).
    public static func isWellFormed(_ hash: String) -> Bool { parse(hash) != nil }

    /// The most memory one check may ask for: scrypt needs 128 * N * r bytes.
    public static let maxMemoryCost = 256 << 20

    /// The memory one check of `hash` needs (128 * N * r bytes), whatever its size; nil if the text
    /// does not have the form above. A users file names the hash over `maxMemoryCost` with this.
    public static func memoryCost(_ hash: String) -> Int? {
        parseForm(hash).map { 128 << $0.logN * $0.r }
    }

    struct Parsed {
        var logN: Int, r: Int, p: Int
        var salt: [UInt8], key: [UInt8]
    }

    /// The form above within the cost bound.
    static func parse(_ hash: String) -> Parsed? {
        guard let parsed = parseForm(hash), 128 << parsed.logN * parsed.r <= maxMemoryCost else { return nil }
        return parsed
    }

    /// The form above, each field within its own range; the memory cost is not checked.
    static func parseForm(_ hash: String) -> Parsed? {
        let parts = hash.split(separator: "$", omittingEmptySubsequences: false)
        guard parts.count == 5, parts[0].isEmpty, parts[1] == "scrypt" else { return nil }
        var logN = 0, r = 0, p = 0
        for field in parts[2].split(separator: ",") {
            let kv = field.split(separator: "=", maxSplits: 1)
            guard kv.count == 2, let v = Int(kv[1]) else { return nil }
            switch kv[0] {
            case "ln": logN = v
            case "r": r = v
            case "p": p = v
            default: return nil
            }
        }
        // Each parameter's own range; `parse` also bounds 128 * N * r by maxMemoryCost (256 MiB).
        guard (10...20).contains(logN), (1...32).contains(r), (1...16).contains(p),
              let salt = unhex(parts[3]), salt.count >= 8, let key = unhex(parts[4]), key.count >= 16
        else { return nil }
        return Parsed(logN: logN, r: r, p: p, salt: salt, key: key)
    }

    static func derive(_ password: String, salt: [UInt8], logN: Int, r: Int, p: Int) throws -> [UInt8] {
        var key = [UInt8](repeating: 0, count: keyLength)
        // A NUL-terminated copy, so an empty password still has a valid pointer.
        let pw = Array(password.utf8CString)
        let n = UInt64(1) << UInt64(logN)
        // scrypt needs 128 * N * r bytes (plus a little); allow that and no more.
        let maxMemory = 128 * n * UInt64(r) * UInt64(p) + (1 << 20)
        let ok = pw.withUnsafeBufferPointer { pwp in
            salt.withUnsafeBufferPointer { sp in
                EVP_PBE_scrypt(pwp.baseAddress, pw.count - 1, sp.baseAddress, salt.count, n, UInt64(r), UInt64(p),
                               maxMemory, &key, key.count)
            }
        }
        guard ok == 1 else { throw TLSError.fromQueue("scrypt") }
        return key
    }

    /// Lower-case hex, two digits an octet (also the tokens file's).
    public static func hex(_ bytes: [UInt8]) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count * 2)
        for b in bytes {
            out.append(digits[Int(b >> 4)])
            out.append(digits[Int(b & 15)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    public static func unhex(_ text: Substring) -> [UInt8]? {
        let chars = Array(text.utf8)
        guard chars.count % 2 == 0, !chars.isEmpty else { return nil }
        func value(_ c: UInt8) -> UInt8? {
            switch c {
            case 48...57: return c - 48
            case 97...102: return c - 87
            case 65...70: return c - 55
            default: return nil
            }
        }
        var out: [UInt8] = []
        var i = 0
        while i < chars.count {
            guard let hi = value(chars[i]), let lo = value(chars[i + 1]) else { return nil }
            out.append(hi << 4 | lo)
            i += 2
        }
        return out
    }
}

/// Random bytes from OpenSSL's CSPRNG.
public func secureRandomBytes(_ count: Int) -> [UInt8] {
    var bytes = [UInt8](repeating: 0, count: count)
    precondition(RAND_bytes(&bytes, Int32(count)) == 1, "RAND_bytes failed")
    return bytes
}
