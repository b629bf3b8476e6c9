// The queue as the postmaster sees it through the admin endpoint and `tern queue`: one entry per
// queued message (its envelope, per-recipient state and last reply, and where it stands: active,
// queued, deferred or held, as Postfix's mailq marks them), the filters of GET /queue, and the
// qshape-style summary. Pure: no I/O, `now` is a parameter; the JSON is what the CLI decodes.

import Foundation
import MailQueue
import SMTPProtocol

/// One queued message. JSON keys are snake_case.
public struct QueueEntry: Codable, Equatable, Sendable {
    public struct RecipientEntry: Codable, Equatable, Sendable {
        public var address: String
        /// pending, deferred, delivered, bounced
        public var state: String
        public var lastReply: String?

        enum CodingKeys: String, CodingKey {
            case address, state
            case lastReply = "last_reply"
        }
    }

    public var id: String
    public var sender: String
    /// Seconds since the epoch.
    public var arrival: Double
    public var size: Int
    public var priority: Int
    /// active (a delivery attempt is running), queued (never tried), deferred (tried, waiting for
    /// its retry), held (on hold until released).
    public var state: String
    public var attempts: Int
    public var nextAttempt: Double
    public var clientIP: String
    public var helo: String
    public var recipients: [RecipientEntry]
    /// false when the relay does not deliver ([delivery] enabled = false): nothing is tried. Only in
    /// GET /queue/ID (the listing says it once).
    public var deliveryEnabled: Bool?

    enum CodingKeys: String, CodingKey {
        case id, sender, arrival, size, priority, state, attempts, recipients, helo
        case nextAttempt = "next_attempt"
        case clientIP = "client_ip"
        case deliveryEnabled = "delivery_enabled"
    }

    public init(_ e: Envelope, state: String) {
        id = e.id.rawValue
        sender = e.sender
        arrival = e.arrival
        size = e.size
        priority = e.priority
        self.state = state
        attempts = e.attempts
        nextAttempt = e.nextAttempt
        clientIP = e.client.ip
        helo = e.client.helo
        recipients = e.recipients.map { RecipientEntry(address: $0.address, state: $0.state.rawValue, lastReply: $0.lastReply) }
    }

    /// Where a message stands, from what the relay knows of it.
    public static func state(of e: Envelope, inFlight: Bool, held: Bool) -> String {
        if inFlight { return "active" }
        if held || e.held { return "held" }
        return e.attempts > 0 ? "deferred" : "queued"
    }

    /// Lowercased domains of the recipients still to deliver, each once, in order.
    public var pendingDomains: [String] {
        var seen = Set<String>()
        return recipients.filter { $0.state == "pending" || $0.state == "deferred" }
            .map { DeliveryManager.domain(of: $0.address) }
            .filter { seen.insert($0).inserted }
    }
}

public struct QueueListing: Codable, Equatable, Sendable {
    public var count: Int
    public var messages: [QueueEntry]
    /// false when the relay does not deliver ([delivery] enabled = false).
    public var deliveryEnabled: Bool? = nil

    enum CodingKeys: String, CodingKey {
        case count, messages
        case deliveryEnabled = "delivery_enabled"
    }
}

/// The filters of GET /queue, from its query string: domain (a recipient still to deliver is at this
/// domain), sender (the address, or "@domain" for any sender there; "<>" or "" for the null sender),
/// state, priority, min_age and max_age (seconds, or a duration as in the config: "90s", "5m", "1h30m").
public struct QueueFilter: Equatable, Sendable {
    public var domain: String?
    public var sender: String?
    public var state: String?
    public var priority: Int?
    public var minAge: Double?
    public var maxAge: Double?

    public init() {}

    public static let states = ["active", "queued", "deferred", "held"]

    /// Parses "domain=example.org&state=deferred"; an unknown key or a bad value is an error naming it.
    public init(query: String) throws {
        try self.init(pairs: try AdminQuery.pairs(query))
    }

    init(pairs: [(String, String)]) throws {
        for (key, value) in pairs {
            switch key {
            case "domain":
                domain = value.lowercased().trimmingTrailingDot
            case "sender":
                sender = value == "<>" ? "" : value.lowercased()
            case "state":
                guard Self.states.contains(value) else {
                    throw AdminError(400, "state must be one of \(Self.states.joined(separator: ", ")), got \"\(value)\"")
                }
                state = value
            case "priority":
                guard let p = Int(value), (-9...9).contains(p) else {
                    throw AdminError(400, "priority must be an integer from -9 to 9, got \"\(value)\"")
                }
                priority = p
            case "min_age", "max_age":
                guard let seconds = try? parseDuration(value) else {
                    throw AdminError(400, "\(key) must be seconds or a duration like 30m, 2h, 1d; got \"\(value)\"")
                }
                if key == "min_age" { minAge = seconds } else { maxAge = seconds }
            default:
                throw AdminError(400, "unknown filter \"\(key)\" (domain, sender, state, priority, min_age, max_age)")
            }
        }
    }

    public func matches(_ e: QueueEntry, now: Double) -> Bool {
        if let state, e.state != state { return false }
        if let priority, e.priority != priority { return false }
        let age = now - e.arrival
        if let minAge, age < minAge { return false }
        if let maxAge, age > maxAge { return false }
        if let sender {
            let s = e.sender.lowercased()
            if sender.hasPrefix("@") {
                guard s.hasSuffix(sender) else { return false }
            } else if s != sender {
                return false
            }
        }
        if let domain, !e.pendingDomains.contains(domain) { return false }
        return true
    }
}

/// Counts by destination domain and age, like Postfix's qshape: each message counts once per domain
/// it still has recipients at, in the bucket of its age. Buckets are minutes: 0-5, 5-10, 10-20, ...
/// doubling up to 1280, then "1280+".
public struct QueueShape: Equatable, Sendable {
    /// Upper bounds of the buckets in minutes; the last bucket has none.
    public static let bucketMinutes: [Double] = [5, 10, 20, 40, 80, 160, 320, 640, 1280]
    public static var bucketCount: Int { bucketMinutes.count + 1 }

    public struct Row: Equatable, Sendable {
        public var domain: String
        public var total: Int
        public var buckets: [Int]
    }

    public var total: Row
    /// Busiest domains first, then by name.
    public var rows: [Row]

    public static func bucket(ageSeconds: Double) -> Int {
        let minutes = max(0, ageSeconds) / 60
        return bucketMinutes.firstIndex { minutes < $0 } ?? bucketMinutes.count
    }

    public init(_ entries: [QueueEntry], now: Double) {
        var byDomain: [String: [Int]] = [:]
        var all = Array(repeating: 0, count: Self.bucketCount)
        for e in entries {
            let b = Self.bucket(ageSeconds: now - e.arrival)
            let domains = e.pendingDomains
            if domains.isEmpty { continue }
            for d in domains { byDomain[d, default: Array(repeating: 0, count: Self.bucketCount)][b] += 1 }
            all[b] += 1
        }
        rows = byDomain.map { Row(domain: $0.key, total: $0.value.reduce(0, +), buckets: $0.value) }
            .sorted { $0.total != $1.total ? $0.total > $1.total : $0.domain < $1.domain }
        total = Row(domain: "TOTAL", total: all.reduce(0, +), buckets: all)
    }

    /// `tern queue summary --json`: the bucket limits in minutes (the last bucket has none), the total
    /// and the domains, each with its count per bucket.
    public func json(deliveryEnabled: Bool) -> String {
        struct Shape: Encodable {
            var bucketMinutes: [Int]
            var deliveryEnabled: Bool
            var total: RowJSON
            var domains: [RowJSON]
            enum CodingKeys: String, CodingKey {
                case total, domains
                case bucketMinutes = "bucket_minutes"
                case deliveryEnabled = "delivery_enabled"
            }
        }
        struct RowJSON: Encodable {
            var domain: String
            var total: Int
            var buckets: [Int]
        }
        let row = { (r: Row) in RowJSON(domain: r.domain, total: r.total, buckets: r.buckets) }
        let shape = Shape(bucketMinutes: Self.bucketMinutes.map { Int($0) }, deliveryEnabled: deliveryEnabled,
                          total: row(total), domains: rows.map(row))
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return (try? encoder.encode(shape)).map {
            String(decoding: TernLogHandler.escapingHiddenCharacters(json: Array($0)), as: UTF8.self)
        } ?? "{}"
    }

    /// The qshape table: a header of bucket limits, the total, then one line per domain.
    public var text: String {
        let width = max(6, rows.map { terminalSafe($0.domain).count }.max() ?? 0, total.domain.count)
        func pad(_ s: String, _ w: Int) -> String { String(repeating: " ", count: max(0, w - s.count)) + s }
        let header = Self.bucketMinutes.map { String(Int($0)) } + ["\(Int(Self.bucketMinutes.last!))+"]
        var out = pad("", width) + " " + pad("T", 6) + header.map { " " + pad($0, 6) }.joined() + "\n"
        for row in [total] + rows {
            out += pad(terminalSafe(row.domain), width) + " " + pad(String(row.total), 6) + row.buckets.map { " " + pad(String($0), 6) }.joined() + "\n"
        }
        return out
    }
}

/// An answer of the admin endpoint other than 200: its status and a line for the postmaster.
public struct AdminError: Error, Equatable, Sendable {
    public var status: Int
    public var message: String
    public init(_ status: Int, _ message: String) {
        self.status = status
        self.message = message
    }
}

enum AdminQuery {
    /// "a=1&b=x%40y" → [("a", "1"), ("b", "x@y")]; "+" is a space (HTML forms).
    static func pairs(_ query: String) throws -> [(String, String)] {
        var out: [(String, String)] = []
        for part in query.split(separator: "&") where !part.isEmpty {
            let kv = part.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard let key = percentDecoded(kv[0]), let value = percentDecoded(kv.count > 1 ? kv[1] : "") else {
                throw AdminError(400, "bad percent-encoding in the query")
            }
            out.append((key, value))
        }
        return out
    }

    static func percentDecoded(_ s: Substring) -> String? {
        var bytes: [UInt8] = []
        var it = Array(s.utf8)[...]
        while let b = it.popFirst() {
            if b == UInt8(ascii: "%") {
                guard it.count >= 2, let hi = hex(it.popFirst()!), let lo = hex(it.popFirst()!) else { return nil }
                bytes.append(hi << 4 | lo)
            } else {
                bytes.append(b == UInt8(ascii: "+") ? 0x20 : b)
            }
        }
        return String(validating: bytes, as: UTF8.self)
    }

    private static func hex(_ b: UInt8) -> UInt8? {
        switch b {
        case 0x30...0x39: return b - 0x30
        case 0x41...0x46: return b - 0x41 + 10
        case 0x61...0x66: return b - 0x61 + 10
        default: return nil
        }
    }
}

extension String {
    var trimmingTrailingDot: String { hasSuffix(".") ? String(dropLast()) : self }
}
