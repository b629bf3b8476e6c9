// The SMTP AUTH users file and the per-IP failure count.
//
// Users file, one user a line, written by `tern passwd`:
//
//   # comment
//   alice:$scrypt$ln=15,r=8,p=1$<salt hex>$<key hex>
//
// A user name is 1-256 printable characters without ':' or spaces. Never plain text: a line whose
// hash is not in that form, or whose cost asks for more than 256 MiB per check, stops start-up (or a
// reload) with the line number. A leading UTF-8 byte order mark is skipped.

import SMTPProtocol
import UVRuntime
#if canImport(Glibc)
import Glibc
#endif

public struct UsersFile: Sendable, Equatable {
    public var hashes: [String: String] = [:]
    /// Lines in the file's order, so that `tern passwd` rewrites the file without reordering it.
    public var order: [String] = []

    public init() {}

    public static func isValidUserName(_ name: String) -> Bool {
        // One rule for the file, `tern passwd` and AUTH (which refuses any other name before a check).
        isAcceptableUserName(name)
    }

    public init(text: String, source: String) throws {
        // An editor's UTF-8 byte order mark is not part of the first user's name.
        let text = text.hasPrefix("\u{FEFF}") ? String(text.dropFirst()) : text
        // "\r\n" is one Character in Swift: split on both.
        let lines = text.split(omittingEmptySubsequences: false, whereSeparator: { $0 == "\n" || $0 == "\r\n" })
        for (index, line) in lines.enumerated() {
            let trimmed = line.drop(while: { $0 == " " || $0 == "\t" })
            if trimmed.isEmpty || trimmed.hasPrefix("#") { continue }
            guard let colon = line.firstIndex(of: ":") else {
                throw ConfigError(line: index + 1, message: "expected user:hash", source: source)
            }
            let user = String(line[..<colon])
            let hash = String(line[line.index(after: colon)...])
            guard Self.isValidUserName(user) else {
                // Escaped: a name refused for a BOM or a bidi override would print as a good one.
                throw ConfigError(line: index + 1, message: "bad user name \"\(terminalSafe(user))\"", source: source)
            }
            guard let cost = PasswordHash.memoryCost(hash) else {
                throw ConfigError(line: index + 1, message: "the hash of \(user) is not a $scrypt$ hash made by tern passwd",
                                  source: source)
            }
            // A check that asks for more would take the machine's memory (several run at once).
            guard cost <= PasswordHash.maxMemoryCost else {
                throw ConfigError(line: index + 1, message: "the hash of \(user) asks for \(cost >> 20) MiB per check "
                                  + "(128 * N * r), over the bound of \(PasswordHash.maxMemoryCost >> 20) MiB",
                                  source: source)
            }
            guard hashes[user] == nil else {
                throw ConfigError(line: index + 1, message: "user \(user) is listed twice", source: source)
            }
            hashes[user] = hash
            order.append(user)
        }
    }

    public static func load(path: String) throws -> UsersFile {
        try UsersFile(text: try readTextFile(path), source: path)
    }

    public mutating func set(user: String, hash: String) {
        if hashes[user] == nil { order.append(user) }
        hashes[user] = hash
    }

    public var text: String {
        order.map { "\($0):\(hashes[$0]!)\n" }.joined()
    }
}

/// Failed AUTH attempts per client (see `key(for:)`): a delay before each 535 that doubles with every
/// failure, and a lockout after `maxFailures` for `lockoutTime`. Times are seconds on any monotonic
/// clock. Entries expire `lockoutTime` after the last failure; the table holds at most `maxEntries`.
struct AuthThrottle {
    struct Entry {
        var failures: Int
        var lastFailure: Double
        var lockedUntil: Double?
        /// Checks started and not yet finished: they count toward `maxFailures`, so parallel
        /// connections cannot all be checked before the first failure is recorded.
        var inFlight = 0
        /// Failures per user name tried: a success clears only that user's, so logging in as
        /// yourself does not forgive guesses at someone else. At most `maxFailures` keys.
        var byUser: [String: Int] = [:]
    }

    let maxFailures: Int
    let lockoutTime: Double
    let maxEntries: Int
    var entries: [String: Entry] = [:]
    static let maxEntries = 100_000
    static let baseDelay = 0.5
    static let maxDelay = 8.0

    init(maxFailures: Int, lockoutTime: Double, maxEntries: Int = Self.maxEntries) {
        self.maxFailures = maxFailures
        self.lockoutTime = lockoutTime
        self.maxEntries = maxEntries
    }

    /// The key failures are counted under: an IPv4 address (an IPv4-mapped IPv6 address counts as
    /// the IPv4 address it carries), or an IPv6 client's /64, the block one host or one customer
    /// usually gets, so that hopping between addresses in it does not buy new guesses.
    static func key(for ip: String) -> String {
        guard let address = IPAddress(ip) else { return ip }
        guard address.family == .ipv6 else { return address.description }
        return IPAddress(family: .ipv6, bytes: CIDR.mask(address.bytes, 64)).description + "/64"
    }

    func isLockedOut(_ ip: String, now: Double) -> Bool {
        guard let until = entries[ip]?.lockedUntil else { return false }
        return now < until
    }

    /// Starts a password check: false (answer 454) when the IP is locked out or when the failures
    /// so far plus the checks in flight already reach `maxFailures`. Each true is followed by
    /// exactly one `failed` or `succeeded`.
    mutating func begin(_ ip: String, now: Double) -> Bool {
        if isLockedOut(ip, now: now) { return false }
        if entries.count >= maxEntries { prune(now: now) }
        var e = entries[ip] ?? Entry(failures: 0, lastFailure: now, lockedUntil: nil)
        if e.inFlight == 0, now - e.lastFailure > lockoutTime || (e.lockedUntil.map { now >= $0 } ?? false) {
            e = Entry(failures: 0, lastFailure: now, lockedUntil: nil)
        }
        guard e.failures + e.inFlight < maxFailures else { return false }
        e.inFlight += 1
        entries[ip] = e
        return true
    }

    private mutating func end(_ ip: String) {
        if let n = entries[ip]?.inFlight, n > 0 { entries[ip]!.inFlight = n - 1 }
    }

    /// Records a failure; returns how long to wait before answering, and whether the IP is now locked out.
    mutating func failed(_ ip: String, user: String = "", now: Double) -> (delay: Double, lockedOut: Bool) {
        end(ip)
        if entries.count >= maxEntries { prune(now: now) }
        var e = entries[ip] ?? Entry(failures: 0, lastFailure: now, lockedUntil: nil)
        if now - e.lastFailure > lockoutTime || (e.lockedUntil.map { now >= $0 } ?? false) {
            e = Entry(failures: 0, lastFailure: now, lockedUntil: nil, inFlight: e.inFlight)
        }
        e.failures += 1
        e.byUser[user, default: 0] += 1
        e.lastFailure = now
        if e.failures >= maxFailures { e.lockedUntil = now + lockoutTime }
        entries[ip] = e
        let delay = min(Self.baseDelay * Double(1 << min(e.failures - 1, 10)), Self.maxDelay)
        return (delay, e.lockedUntil != nil)
    }

    mutating func succeeded(_ ip: String, user: String = "") {
        end(ip)
        guard var e = entries[ip] else { return }
        e.failures -= e.byUser.removeValue(forKey: user) ?? 0
        entries[ip] = e.failures <= 0 && e.inFlight == 0 ? nil : e
    }

    mutating func prune(now: Double) {
        entries = entries.filter { _, e in
            if e.inFlight > 0 { return true }
            if let until = e.lockedUntil { return now < until }
            return now - e.lastFailure <= lockoutTime
        }
        // Still mostly full (an attack from very many addresses): forget the oldest half, so that
        // each prune frees a quarter of the table or more and a full table is not filtered per insert.
        if entries.count > maxEntries * 3 / 4 {
            let keep = entries.sorted { $0.value.lastFailure > $1.value.lastFailure }.prefix(maxEntries / 2)
            entries = Dictionary(uniqueKeysWithValues: keep.map { ($0.key, $0.value) })
        }
    }
}

/// A whole small text file, read synchronously (start-up and reload only).
func readTextFile(_ path: String) throws -> String {
    try TernConfig.readFile(path)
}
