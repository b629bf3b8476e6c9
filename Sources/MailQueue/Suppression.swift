// The suppression list: addresses and whole domains Tern will not send to, globally or for one sender
// domain, each with why and since when. Pure: the relay checks it at RCPT and at injection, fills it
// from hard bounces of chosen classes and by hand, and keeps it on disk (SuppressionRecord below).
//
// Built for a million entries: no String or dictionary per entry. Each entry is a key in one byte
// arena ("scope NUL address", lowercased), a few fixed-size fields in parallel arrays, and its reason
// as an index into a table of distinct reasons (a hard bounce's reason is its class and status, so
// there are few). An open-addressing table of entry numbers finds a key by a 64-bit FNV-1a hash of its
// bytes. About 60 bytes an entry for 25-byte addresses; a lookup hashes and compares bytes in place,
// without allocating.
//
// Keys: an address "local@domain" or a domain "@domain" (every address at it), in ASCII lower case
// (other bytes as they are); the scope is "" (every sender) or a sender domain. A recipient is
// suppressed for a sender when any of four keys is listed: its address or its domain, globally or
// for the sender's domain.

public struct SuppressionEntry: Sendable, Equatable {
    public enum Source: UInt8, Sendable {
        /// Added by the postmaster (CLI, admin API, import).
        case manual = 0
        /// Added by a hard bounce of a class in [suppression] auto_classes.
        case bounce = 1
    }

    /// "local@domain" or "@domain", lower case.
    public var address: String
    /// "" for every sender, else the sender domain it applies to, lower case.
    public var scope: String
    public var reason: String
    /// Unix seconds when it was added.
    public var time: Int
    public var source: Source

    public init(address: String, scope: String = "", reason: String, time: Int, source: Source = .manual) {
        self.address = SuppressionList.normalized(address)
        self.scope = SuppressionList.normalized(scope)
        self.reason = reason
        self.time = time
        self.source = source
    }
}

extension SuppressionEntry {
    /// The entry a hard bounce makes ([suppression] auto_classes), or nil: only a permanent failure that
    /// was the recipient's own (its RCPT reply, or routing of its domain; not MAIL or DATA refused),
    /// of a listed class, and never x.1.7/x.1.8 (RFC 3463: the sender's address). For every sender, with
    /// the class and status as its reason ("InvalidRecipient 5.1.1").
    public static func fromHardBounce(_ e: RecipientEvent, autoClasses: [String], time: Int) -> SuppressionEntry? {
        guard e.status == .bounced, e.recipientSpecific, let kind = e.bounceClass, autoClasses.contains(kind),
              !e.dsn.hasSuffix(".1.7"), !e.dsn.hasSuffix(".1.8") else { return nil }
        return SuppressionEntry(address: e.to, reason: "\(kind) \(e.dsn)", time: time, source: .bounce)
    }
}

public struct SuppressionList: Sendable {
    /// "scope NUL address" of every entry ever added since the last compaction, back to back.
    private var arena: [UInt8] = []
    /// Per entry number: where its key starts in `arena` and how long it is.
    private var keyStart: [UInt32] = []
    private var keyLength: [UInt16] = []
    private var time: [UInt32] = []
    private var reasonIndex: [UInt32] = []
    private var source: [UInt8] = []
    /// Distinct reasons, and their numbers.
    private var reasons: [String] = []
    private var reasonNumbers: [String: UInt32] = [:]
    /// Open addressing: 0 empty, `tombstone` removed, else entry number + 1.
    private var slots: [UInt32] = Array(repeating: 0, count: 16)
    private var live = 0
    private var used = 0  // live + tombstones in `slots`
    private static let tombstone = UInt32.max

    public init() {}

    /// Entries listed now.
    public var count: Int { live }

    /// The longest address or scope kept (RFC 5321's path limit); longer ones are refused by `add`.
    public static let maxKeyLength = 512

    /// ASCII lower case; other bytes as they are.
    public static func normalized(_ text: String) -> String {
        guard text.utf8.contains(where: { $0 >= 65 && $0 <= 90 }) else { return text }
        return String(decoding: text.utf8.map { $0 >= 65 && $0 <= 90 ? $0 | 0x20 : $0 }, as: UTF8.self)
    }

    // MARK: Changes

    /// Adds the entry, or replaces the one with the same address and scope. False when the address
    /// or scope is empty, too long, or holds a NUL, CR or LF.
    @discardableResult
    public mutating func add(_ entry: SuppressionEntry) -> Bool {
        guard Self.isValidKey(entry.address, scope: entry.scope) else { return false }
        let reason = internedReason(entry.reason)
        let t = UInt32(clamping: max(0, entry.time))
        if let n = find(scope: entry.scope, address: entry.address) {
            time[n] = t
            reasonIndex[n] = reason
            source[n] = entry.source.rawValue
            return true
        }
        if (used + 1) * 2 > slots.count { grow() }
        let n = keyStart.count
        keyStart.append(UInt32(arena.count))
        arena.append(contentsOf: entry.scope.utf8)
        arena.append(0)
        arena.append(contentsOf: entry.address.utf8)
        keyLength.append(UInt16(arena.count - Int(keyStart[n])))
        time.append(t)
        reasonIndex.append(reason)
        source.append(entry.source.rawValue)
        insertSlot(for: n)
        live += 1
        return true
    }

    /// Removes the entry for this address and scope; false when there was none.
    @discardableResult
    public mutating func remove(address: String, scope: String = "") -> Bool {
        let address = Self.normalized(address), scope = Self.normalized(scope)
        guard let slot = findSlot(scope: scope, address: address) else { return false }
        slots[slot] = Self.tombstone
        live -= 1
        // Many removals: the arena and slots are rebuilt from what is left.
        if keyStart.count > 1024 && live * 2 < keyStart.count { compact() }
        return true
    }

    // MARK: Lookups

    /// The entry that suppresses `recipient` for mail from `senderDomain` ("" or nil: no sender
    /// domain), or nil. Checked in order: the address globally, its domain globally, then both for the
    /// sender's domain.
    public func suppressing(recipient: String, senderDomain: String?) -> SuppressionEntry? {
        guard let n = entryNumber(recipient: recipient, senderDomain: senderDomain) else { return nil }
        return entry(n)
    }

    /// Whether `recipient` is suppressed for mail from `senderDomain`, without allocating.
    public func isSuppressed(recipient: String, senderDomain: String?) -> Bool {
        entryNumber(recipient: recipient, senderDomain: senderDomain) != nil
    }

    /// The entry for exactly this address (or "@domain") and scope.
    public func entry(address: String, scope: String = "") -> SuppressionEntry? {
        find(scope: Self.normalized(scope), address: Self.normalized(address)).map(entry)
    }

    /// Every entry, in the order they were added (for export and the list command).
    public var entries: [SuppressionEntry] { entries(from: 0, limit: live) }

    /// `limit` entries from the `offset`-th, in the order they were added: only those are made (a
    /// page of a million-entry list costs a pass over its slots, not a million entries).
    public func entries(from offset: Int, limit: Int) -> [SuppressionEntry] {
        var listed = [Bool](repeating: false, count: keyStart.count)
        for s in slots where s != 0 && s != Self.tombstone { listed[Int(s - 1)] = true }
        var out: [SuppressionEntry] = []
        out.reserveCapacity(max(0, min(limit, live - offset)))
        var seen = 0
        for n in keyStart.indices where listed[n] {
            if seen >= offset {
                if out.count >= limit { break }
                out.append(entry(n))
            }
            seen += 1
        }
        return out
    }

    /// Bytes held, for the memory figure (arrays' element storage, not their capacity slack).
    public var bytesHeld: Int {
        arena.count + keyStart.count * (4 + 2 + 4 + 4 + 1) + slots.count * 4 + reasons.reduce(0) { $0 + $1.utf8.count + 16 }
    }

    // MARK: Inside

    static func isValidKey(_ address: String, scope: String) -> Bool {
        let bad: (UInt8) -> Bool = { $0 == 0 || $0 == 10 || $0 == 13 }
        return !address.isEmpty && address.utf8.count <= maxKeyLength && scope.utf8.count <= maxKeyLength
            && !address.utf8.contains(where: bad) && !scope.utf8.contains(where: bad)
    }

    private mutating func internedReason(_ reason: String) -> UInt32 {
        if let n = reasonNumbers[reason] { return n }
        let n = UInt32(reasons.count)
        reasons.append(reason)
        reasonNumbers[reason] = n
        return n
    }

    private func entry(_ n: Int) -> SuppressionEntry {
        let start = Int(keyStart[n]), end = start + Int(keyLength[n])
        let nul = arena[start..<end].firstIndex(of: 0)!
        var e = SuppressionEntry(address: "", reason: reasons[Int(reasonIndex[n])], time: Int(time[n]),
                                 source: SuppressionEntry.Source(rawValue: source[n]) ?? .manual)
        e.scope = String(decoding: arena[start..<nul], as: UTF8.self)
        e.address = String(decoding: arena[(nul + 1)..<end], as: UTF8.self)
        return e
    }

    /// The four keys of a recipient, as (scope, "@" or not, the address or its domain), hashed and
    /// compared over the recipient's own bytes.
    private func entryNumber(recipient: String, senderDomain: String?) -> Int? {
        var recipient = recipient, sender = senderDomain ?? ""
        return recipient.withUTF8 { r in
            sender.withUTF8 { s in
                let at = r.lastIndex(of: UInt8(ascii: "@"))
                let domain = at.map { UnsafeBufferPointer(rebasing: r[($0 + 1)...]) }
                func listed(_ scope: UnsafeBufferPointer<UInt8>) -> Int? {
                    if let n = lookup(scope: scope, prefix: nil, key: r) { return n }
                    if let domain { return lookup(scope: scope, prefix: UInt8(ascii: "@"), key: domain) }
                    return nil
                }
                if let n = listed(UnsafeBufferPointer(start: nil, count: 0)) { return n }
                return s.isEmpty ? nil : listed(s)
            }
        }
    }

    private func find(scope: String, address: String) -> Int? {
        findSlot(scope: scope, address: address).map { Int(slots[$0] - 1) }
    }

    private func findSlot(scope: String, address: String) -> Int? {
        var scope = scope, address = address
        return scope.withUTF8 { s in address.withUTF8 { a in lookupSlot(scope: s, prefix: nil, key: a) } }
    }

    private func lookup(scope: UnsafeBufferPointer<UInt8>, prefix: UInt8?, key: UnsafeBufferPointer<UInt8>) -> Int? {
        lookupSlot(scope: scope, prefix: prefix, key: key).map { Int(slots[$0] - 1) }
    }

    /// The slot of the entry whose key is scope NUL [prefix] key (compared in ASCII lower case).
    private func lookupSlot(scope: UnsafeBufferPointer<UInt8>, prefix: UInt8?, key: UnsafeBufferPointer<UInt8>) -> Int? {
        let length = scope.count + 1 + (prefix == nil ? 0 : 1) + key.count
        guard length <= Int(UInt16.max) else { return nil }
        let mask = slots.count - 1
        var i = Int(truncatingIfNeeded: Self.hash(scope: scope, prefix: prefix, key: key)) & mask
        while true {
            let s = slots[i]
            if s == 0 { return nil }
            if s != Self.tombstone {
                let n = Int(s - 1)
                if Int(keyLength[n]) == length && matches(n, scope: scope, prefix: prefix, key: key) { return i }
            }
            i = (i + 1) & mask
        }
    }

    private func matches(_ n: Int, scope: UnsafeBufferPointer<UInt8>, prefix: UInt8?, key: UnsafeBufferPointer<UInt8>) -> Bool {
        var p = Int(keyStart[n])
        for b in scope {
            guard arena[p] == Self.lower(b) else { return false }
            p += 1
        }
        guard arena[p] == 0 else { return false }
        p += 1
        if let prefix {
            guard arena[p] == prefix else { return false }
            p += 1
        }
        for b in key {
            guard arena[p] == Self.lower(b) else { return false }
            p += 1
        }
        return true
    }

    @inline(__always) static func lower(_ b: UInt8) -> UInt8 { b >= 65 && b <= 90 ? b | 0x20 : b }

    static func hash(scope: UnsafeBufferPointer<UInt8>, prefix: UInt8?, key: UnsafeBufferPointer<UInt8>) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        @inline(__always) func mix(_ b: UInt8) {
            h ^= UInt64(lower(b))
            h &*= 0x0000_0100_0000_01b3
        }
        for b in scope { mix(b) }
        mix(0)
        if let prefix { mix(prefix) }
        for b in key { mix(b) }
        return h ^ (h >> 29)
    }

    private func hashOfEntry(_ n: Int) -> UInt64 {
        let start = Int(keyStart[n]), end = start + Int(keyLength[n])
        return arena.withUnsafeBufferPointer { a in
            let nul = a[start..<end].firstIndex(of: 0)!
            return Self.hash(scope: UnsafeBufferPointer(rebasing: a[start..<nul]), prefix: nil,
                             key: UnsafeBufferPointer(rebasing: a[(nul + 1)..<end]))
        }
    }

    private mutating func insertSlot(for n: Int) {
        let mask = slots.count - 1
        var i = Int(truncatingIfNeeded: hashOfEntry(n)) & mask
        while slots[i] != 0 && slots[i] != Self.tombstone { i = (i + 1) & mask }
        if slots[i] == 0 { used += 1 }
        slots[i] = UInt32(n + 1)
    }

    /// Twice the slots (or as many again, when mostly tombstones), every live entry placed anew.
    private mutating func grow() {
        let size = live * 4 > slots.count ? slots.count * 2 : slots.count
        var listed: [Int] = []
        listed.reserveCapacity(live)
        for s in slots where s != 0 && s != Self.tombstone { listed.append(Int(s - 1)) }
        slots = Array(repeating: 0, count: size)
        used = 0
        for n in listed { insertSlot(for: n) }
    }

    /// The arena and per-entry arrays rebuilt from the live entries only.
    private mutating func compact() {
        let kept = entries
        self = SuppressionList()
        for e in kept { add(e) }
    }
}

// MARK: - On disk

/// One line of the suppression file (an append-only log, replayed at start-up and rewritten whole
/// when it has grown much larger than the list):
///
///     +<TAB>scope<TAB>address<TAB>time<TAB>source<TAB>reason     added or replaced
///     -<TAB>scope<TAB>address                                    removed
///
/// Tabs, CR and LF in a reason are written as spaces; a line without its LF (a write cut short by a
/// crash) is not a record.
public enum SuppressionRecord: Sendable, Equatable {
    case add(SuppressionEntry)
    case remove(address: String, scope: String)

    public var line: [UInt8] {
        switch self {
        case .add(let e):
            let reason = e.reason.utf8.map { $0 == 9 || $0 == 10 || $0 == 13 ? 32 : $0 }
            return Array("+\t\(e.scope)\t\(e.address)\t\(e.time)\t\(e.source == .bounce ? "bounce" : "manual")\t".utf8)
                + reason + [10]
        case .remove(let address, let scope):
            return Array("-\t\(scope)\t\(address)\n".utf8)
        }
    }

    /// Parses one line (without its LF); nil for a line that is not a record.
    public static func parse(_ line: ArraySlice<UInt8>) -> SuppressionRecord? {
        let fields = line.split(separator: 9, maxSplits: 5, omittingEmptySubsequences: false)
        guard let kind = fields.first, kind.count == 1 else { return nil }
        func text(_ i: Int) -> String { String(decoding: fields[i], as: UTF8.self) }
        switch kind.first {
        case UInt8(ascii: "+"):
            guard fields.count == 6, let t = Int(text(3)), t >= 0, !fields[2].isEmpty else { return nil }
            let source: SuppressionEntry.Source
            switch text(4) {
            case "bounce": source = .bounce
            case "manual": source = .manual
            default: return nil
            }
            return .add(SuppressionEntry(address: text(2), scope: text(1), reason: text(5), time: t, source: source))
        case UInt8(ascii: "-"):
            guard fields.count == 3, !fields[2].isEmpty else { return nil }
            return .remove(address: text(2), scope: text(1))
        default:
            return nil
        }
    }

    /// Replays a whole file into `list`: every complete line in order. Returns how many lines were not
    /// records (a damaged line is skipped, not fatal) and whether the last line was cut short.
    public static func replay(_ bytes: [UInt8], into list: inout SuppressionList) -> (bad: Int, cutShort: Bool) {
        var bad = 0
        var start = 0
        while let end = bytes[start...].firstIndex(of: 10) {
            switch parse(bytes[start..<end]) {
            case .add(let e)?: if !list.add(e) { bad += 1 }
            case .remove(let address, let scope)?: list.remove(address: address, scope: scope)
            case nil: bad += 1
            }
            start = end + 1
        }
        return (bad, start < bytes.count)
    }
}
