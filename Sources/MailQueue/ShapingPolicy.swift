// Traffic shaping's configuration as plain values: what the config file says ([[shaping]],
// [[backoff]], [egress]), already checked by Relay's config reader, handed to the pure shaping core.
// No logic here beyond parsing the small value syntaxes ("300/min", "3 in 5m") that both the config
// reader and the tests use.

/// A count per period: "300/min", "20/s", "5000/h". Enforced smoothly: one permit every
/// `interval` seconds, with a burst of at most `burst` permits (GCRA's tolerance).
public struct Rate: Sendable, Equatable, Hashable, CustomStringConvertible {
    public var count: Int
    /// Seconds.
    public var period: Double

    public init(count: Int, period: Double) {
        self.count = count
        self.period = period
    }

    /// "N/s", "N/sec", "N/m", "N/min", "N/h", "N/hour", "N/d", "N/day"; N a positive integer. Nil otherwise.
    public init?(parsing text: String) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2,
              let n = Int(parts[0].trimmingSpaces), n > 0,
              let seconds = Self.periods[String(parts[1].trimmingSpaces).lowercased()] else { return nil }
        self.init(count: n, period: seconds)
    }

    static let periods: [String: Double] = [
        "s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60,
        "h": 3600, "hour": 3600, "d": 86400, "day": 86400,
    ]

    /// Seconds between two permits at the steady rate.
    public var interval: Double { period / Double(count) }

    /// How far ahead of its steady schedule a rate may run (GCRA's burst tolerance): the loop's timer
    /// granularity, 1 ms. Without it a lane waits for a timer (1 ms at the least) whenever two
    /// connections finish in the same loop iteration, so a rate of thousands a second delivered far
    /// fewer; with it a window of T seconds still carries at most rate × (T + 1 ms) + 1 permits.
    public static let tolerance = 0.001
    /// Permits per second.
    public var perSecond: Double { Double(count) / period }

    public var description: String {
        switch period {
        case 1: return "\(count)/s"
        case 60: return "\(count)/min"
        case 3600: return "\(count)/h"
        case 86400: return "\(count)/d"
        default: return "\(count)/\(period)s"
        }
    }
}

/// "3 in 5m": `count` matching replies within `window` seconds. The duration syntax is the config's
/// ("30s", "5m", "1h"), parsed by the caller and passed in.
public struct Threshold: Sendable, Equatable, Hashable {
    public var count: Int
    public var window: Double

    public init(count: Int, window: Double) {
        self.count = count
        self.window = window
    }

    /// Splits "3 in 5m" into 3 and "5m"; nil when it is not "<positive integer> in <text>".
    public static func split(_ text: String) -> (count: Int, window: String)? {
        let words = text.split(separator: " ", omittingEmptySubsequences: true)
        guard words.count == 3, words[1].lowercased() == "in", let n = Int(words[0]), n > 0 else { return nil }
        return (n, String(words[2]))
    }
}

/// One [[shaping]] table: limits for the destinations it matches.
public struct ShapingRule: Sendable, Equatable {
    public var name: String
    /// Recipient domains, lowercased: "gmail.com" matches that domain only, ".example.com" every
    /// domain below example.com (not example.com itself).
    public var domains: [String]
    /// MX host names, lowercased, same syntax: the rule matches a domain whose MX hosts include one
    /// (every domain hosted at one provider shares one set of limits: "MX rollup").
    public var mx: [String]
    /// nil: [delivery]'s value (max_connections_per_destination, connection_cache_time), or no limit.
    public var maxConnections: Int?
    public var maxMessagesPerConnection: Int?
    public var maxMessageRate: Rate?
    public var maxConnectionRate: Rate?
    public var connectionCacheTime: Double?
    /// The egress pool for this destination's mail when the message itself does not name one.
    public var pool: String?
    /// TLS with this destination's hosts, as a [routes] table's `tls`; nil: as without the rule
    /// (the route's, else [delivery]'s). The config reader fills it; delivery applies it.
    public var tls: OutboundTLSPolicy?

    public init(name: String, domains: [String] = [], mx: [String] = [], maxConnections: Int? = nil,
                maxMessagesPerConnection: Int? = nil, maxMessageRate: Rate? = nil, maxConnectionRate: Rate? = nil,
                connectionCacheTime: Double? = nil, pool: String? = nil, tls: OutboundTLSPolicy? = nil) {
        self.name = name
        self.domains = domains
        self.mx = mx
        self.maxConnections = maxConnections
        self.maxMessagesPerConnection = maxMessagesPerConnection
        self.maxMessageRate = maxMessageRate
        self.maxConnectionRate = maxConnectionRate
        self.connectionCacheTime = connectionCacheTime
        self.pool = pool
        self.tls = tls
    }
}

/// How delivery uses TLS with a next hop: [delivery] tls, a [routes] table's tls, a [[shaping]] rule's
/// tls. Here rather than in Relay so that a ShapingRule can carry it; Relay reads it from the config.
public enum OutboundTLSPolicy: String, Sendable, Equatable, CaseIterable {
    /// Never STARTTLS.
    case none
    /// STARTTLS when offered; any certificate; in the clear otherwise.
    case opportunistic
    /// STARTTLS or fail (temporarily); any certificate.
    case require
    /// STARTTLS with a certificate that chains to the system CA store and names the host, or fail.
    case verify
}

/// One [[backoff]] table: replies that say "slow down", and what to do when enough of them come.
public struct BackoffRule: Sendable, Equatable {
    public enum Action: Sendable, Equatable {
        /// No connection and no message to the destination for `duration`.
        case suspend
        /// Lower limits for `duration` (each nil keeps the configured one).
        case throttle(rate: Rate?, connections: Int?)
    }

    /// The rule's name in logs and metrics: "backoff[0]" unless the table names it.
    public var name: String
    /// A regular expression, matched case-insensitively anywhere in "code enhanced text" of a reply
    /// ("421 4.7.0 Try again later"). Checked to compile by the config reader.
    public var reply: String
    public var threshold: Threshold
    public var action: Action
    public var duration: Double
    /// Only for destinations under these [[shaping]] rules; empty: every destination.
    public var rules: [String]

    public init(name: String, reply: String, threshold: Threshold, action: Action, duration: Double,
                rules: [String] = []) {
        self.name = name
        self.reply = reply
        self.threshold = threshold
        self.action = action
        self.duration = duration
        self.rules = rules
    }
}

/// A destination that does not answer: after `failures` attempts in a row that reached no host
/// (connection refused, timed out, no greeting), it is suspended for `initial` seconds, doubling after
/// each failed probe up to `maximum`; one probe connection at a time tests it; a success resumes it.
public struct DeadDestinationPolicy: Sendable, Equatable {
    public var failures: Int
    public var initial: Double
    public var maximum: Double

    public init(failures: Int = 5, initial: Double = 60, maximum: Double = 3600) {
        self.failures = failures
        self.initial = initial
        self.maximum = maximum
    }
}

/// [egress.sources.NAME]: a local address to send from and the name to say in EHLO from it.
public struct EgressSource: Sendable, Equatable {
    public var name: String
    public var address: String
    /// nil: [server] hostname.
    public var ehlo: String?

    public init(name: String, address: String, ehlo: String? = nil) {
        self.name = name
        self.address = address
        self.ehlo = ehlo
    }
}

/// [egress.pools.NAME]: sources with weights, taken in smooth weighted round-robin.
public struct EgressPool: Sendable, Equatable {
    public var name: String
    /// (source name, weight > 0), in the config's order (sorted by name: TOML tables have no order).
    public var sources: [(name: String, weight: Int)]

    public init(name: String, sources: [(name: String, weight: Int)]) {
        self.name = name
        self.sources = sources
    }

    public static func == (a: EgressPool, b: EgressPool) -> Bool {
        a.name == b.name && a.sources.map(\.name) == b.sources.map(\.name)
            && a.sources.map(\.weight) == b.sources.map(\.weight)
    }
}

/// [egress.select]: which pool a message uses. The first that applies: its authenticated user, its
/// sender's domain, the destination's [[shaping]] rule or route, then `default`.
public struct EgressSelect: Sendable, Equatable {
    public var users: [String: String]
    /// Lowercased sender domains → pool.
    public var senderDomains: [String: String]
    public var defaultPool: String?

    public init(users: [String: String] = [:], senderDomains: [String: String] = [:], defaultPool: String? = nil) {
        self.users = users
        self.senderDomains = senderDomains
        self.defaultPool = defaultPool
    }
}

/// Everything the shaping core needs from the config. An empty policy (no rules, no backoff, no
/// egress) shapes nothing beyond `defaults`: Tern's behaviour before shaping existed.
public struct ShapingPolicy: Sendable, Equatable {
    public var rules: [ShapingRule]
    public var backoff: [BackoffRule]
    public var dead: DeadDestinationPolicy
    /// Limits of a destination no rule matches: [delivery] max_connections_per_destination and
    /// connection_cache_time (no rate, no per-connection message limit).
    public var defaults: ShapingRule
    public var sources: [EgressSource]
    public var pools: [EgressPool]
    public var select: EgressSelect

    public init(rules: [ShapingRule] = [], backoff: [BackoffRule] = [], dead: DeadDestinationPolicy = .init(),
                defaults: ShapingRule = ShapingRule(name: "default", maxConnections: 20, connectionCacheTime: 2),
                sources: [EgressSource] = [], pools: [EgressPool] = [], select: EgressSelect = .init()) {
        self.rules = rules
        self.backoff = backoff
        self.dead = dead
        self.defaults = defaults
        self.sources = sources
        self.pools = pools
        self.select = select
    }
}

extension Substring {
    fileprivate var trimmingSpaces: Substring {
        var s = self
        while s.first == " " { s.removeFirst() }
        while s.last == " " { s.removeLast() }
        return s
    }
}

extension Rate {
    /// How a cluster hands out this rate's permits (issue 20): the GCRA's interval and burst tolerance
    /// in microseconds (20 ms of the rate, at least one interval), the permits one round trip to Redis
    /// asks for (as many as the tolerance holds), and the seconds they may wait before use (the
    /// tolerance and 20 ms more; unused ones are dropped: a late one could push the cluster over).
    public var sharedPermits: (intervalMicros: Int, toleranceMicros: Int, batch: Int, lifetime: Double) {
        let interval = Swift.max(1, Int((self.interval * 1_000_000).rounded()))
        let tolerance = Swift.max(interval, 20_000)
        return (interval, tolerance, Swift.max(1, tolerance / interval), Double(tolerance) / 1_000_000 + 0.02)
    }
}
