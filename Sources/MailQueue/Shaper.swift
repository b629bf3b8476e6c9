// Traffic shaping's decisions (issue 16), pure: which [[shaping]] rule a destination falls under,
// which egress source a new connection uses, whether a lane (group × source) may open a connection or
// send a message now, and how it backs off when a destination fails or says "slow down". No I/O, no
// clock: `now` (wall-clock seconds) is a parameter, so every rule has a test on virtual time.
//
// A *group* is what limits apply to: a rule's name, or the destination domain itself when no rule
// matches (each unmatched domain has its own limits, as max_connections_per_destination always had).
// A *lane* is a group × egress source: connection counts, rates, dead-destination counters,
// suspensions and throttles are kept per lane, as PowerMTA and MailerQ do.
//
// Rates are GCRA (a theoretical arrival time per lane) with a burst tolerance of one permit: permits
// come evenly spaced, never a minute's worth at once; a lane that was idle does not save up a burst.
//
// State changes (suspended, resumed, throttled, throttle ended) are recorded as `ShapingEvent`s once
// per change, for the driver to log; `takeEvents` hands them out.

/// What limits apply to: a [[shaping]] rule, or one destination domain that no rule matched.
public struct ShapingGroup: Hashable, Sendable, Codable, CustomStringConvertible {
    public enum Kind: String, Sendable, Codable {
        case rule, domain
        /// A destination waiting for its MX names before a rule can be chosen (scheduler-internal).
        case unclassified
    }

    public var kind: Kind
    public var name: String

    public init(kind: Kind, name: String) {
        self.kind = kind
        self.name = name
    }

    public static func rule(_ name: String) -> ShapingGroup { ShapingGroup(kind: .rule, name: name) }
    public static func domain(_ name: String) -> ShapingGroup { ShapingGroup(kind: .domain, name: name) }

    /// The label for metrics: the rule's name, "default" for unmatched domains (never a raw domain).
    public var ruleLabel: String { kind == .rule ? name : "default" }
    public var description: String { name }
}

/// A group × an egress source name ("" when no egress is configured: the OS picks the address).
public struct ShapingLane: Hashable, Sendable, Codable, CustomStringConvertible {
    public var group: ShapingGroup
    public var source: String

    public init(group: ShapingGroup, source: String) {
        self.group = group
        self.source = source
    }

    public var description: String { source.isEmpty ? group.name : "\(group.name)/\(source)" }
}

/// One change of a lane's or group's state, logged once.
public enum ShapingEvent: Sendable, Equatable {
    /// No connection and no message until `until`. `source` nil: every source (the postmaster).
    case suspended(ShapingGroup, source: String?, until: Double, reason: String)
    /// Back to its configured limits: `why` is "probe succeeded", "suspension ended", "postmaster".
    case resumed(ShapingGroup, source: String?, why: String)
    case throttled(ShapingGroup, source: String, rule: String, rate: Rate?, connections: Int?, until: Double)
    case throttleEnded(ShapingGroup, source: String, rule: String)

    /// What queued mail of a suspended destination says (no attempt is made, no line per message).
    public static func deferral(_ reason: String) -> String { "delivery temporarily suspended: \(reason)" }

    /// One log line.
    public var logText: String {
        func lane(_ g: ShapingGroup, _ s: String?) -> String {
            "\(g.kind == .rule ? "rule" : "destination")=\(g.name)\(s.map { $0.isEmpty ? "" : " source=\($0)" } ?? "")"
        }
        switch self {
        case .suspended(let g, let s, let until, let reason):
            return "\(lane(g, s)): \(Self.deferral(reason)) until \(Int(until))"
        case .resumed(let g, let s, let why):
            return "\(lane(g, s)): delivery resumed (\(why))"
        case .throttled(let g, let s, let rule, let rate, let connections, let until):
            let limits = [rate.map { "rate=\($0)" }, connections.map { "connections=\($0)" }].compactMap { $0 }
            return "\(lane(g, s)): throttled by \(rule) (\(limits.joined(separator: " "))) until \(Int(until))"
        case .throttleEnded(let g, let s, let rule):
            return "\(lane(g, s)): throttle by \(rule) ended, configured limits again"
        }
    }
}

/// The answer to "may this gate (group × pool) open a connection now?".
public enum ConnectionAdmission: Sendable, Equatable {
    /// Yes, from this source (already counted as open when `commit` was asked).
    case open(source: String)
    /// Not now: ask again at `until`, or (nil) when a connection of the group closes or its state changes.
    case blocked(until: Double?)
}

/// The answer to "may this open connection carry another message now?".
public enum MessageAdmission: Sendable, Equatable {
    case go
    /// Its messages-per-connection limit is reached: close it.
    case close
    /// Not now (rate, suspension): ask again at `until` (nil: when the group's state changes).
    case wait(until: Double?)
}

/// What the scheduler asks of traffic shaping. `Shaper` is the real one; `PerDestinationLimit` is
/// max_connections_per_destination alone (the scheduler's behaviour before shaping).
public protocol ShapingAdmission {
    /// The group a destination's jobs wait under; nil while it waits for its MX names.
    mutating func group(of destination: String) -> ShapingGroup?
    /// A new connection for the gate (group × pool), which has `connections` open (all its sources).
    /// With `commit`, an `.open` answer counts the connection and its first message.
    mutating func admitConnection(group: ShapingGroup, pool: String?, connections: Int, now: Double,
                                  commit: Bool) -> ConnectionAdmission
    /// Another message on an open connection of `lane` that has sent `sent` so far.
    mutating func admitMessage(on lane: ShapingLane, sent: Int, now: Double) -> MessageAdmission
    /// A connection opened by `admitConnection` closed.
    mutating func connectionClosed(_ lane: ShapingLane)
    /// The message counted with a connection or `admitMessage` will not be attempted.
    mutating func notAttempted(_ lane: ShapingLane)
}

/// Only a per-destination connection limit: what the scheduler did before shaping.
public struct PerDestinationLimit: ShapingAdmission {
    public let limit: Int
    public init(limit: Int) { self.limit = limit }
    public func group(of destination: String) -> ShapingGroup? { .domain(destination) }
    public func admitConnection(group: ShapingGroup, pool: String?, connections: Int, now: Double,
                                commit: Bool) -> ConnectionAdmission {
        connections < limit ? .open(source: "") : .blocked(until: nil)
    }
    public func admitMessage(on lane: ShapingLane, sent: Int, now: Double) -> MessageAdmission { .go }
    public func connectionClosed(_ lane: ShapingLane) {}
    public func notAttempted(_ lane: ShapingLane) {}
}

/// The per-connection limits a driver applies to a connection of a lane.
public struct LaneLimits: Sendable, Equatable {
    public var maxMessagesPerConnection: Int?
    public var connectionCacheTime: Double?

    public init(maxMessagesPerConnection: Int? = nil, connectionCacheTime: Double? = nil) {
        self.maxMessagesPerConnection = maxMessagesPerConnection
        self.connectionCacheTime = connectionCacheTime
    }
}

public struct Shaper: Sendable, ShapingAdmission {
    public private(set) var policy: ShapingPolicy
    // Rule matching: indexes by name, built once per policy (1,000 rules must not cost 1,000 compares).
    private var exactDomains: [String: Int] = [:]
    private var suffixDomains: [String: Int] = [:]
    private var exactMX: [String: Int] = [:]
    private var suffixMX: [String: Int] = [:]
    private var ruleIndex: [String: Int] = [:]
    private var backoffPatterns: [Pattern?] = []
    private var poolSources: [String: [(name: String, weight: Int)]] = [:]
    private static let noEgress: [(name: String, weight: Int)] = [("", 1)]

    /// MX rollup answers: destination → the rule its MX hosts matched (nil: none), until `expires`.
    private var classifications: [String: (rule: Int?, expires: Double)] = [:]
    /// How long an MX answer is trusted, so a destination follows DNS changes.
    public static let classificationLifetime = 3600.0
    static let classificationLimit = 100_000

    private var lanes: [ShapingLane: LaneState] = [:]
    private var lanesAfterSweep = 0
    /// The postmaster's suspensions, per group (every source); `since` for the suspended-seconds metric.
    private var groupSuspensions: [ShapingGroup: (until: Double, reason: String, since: Double)] = [:]
    /// Smooth weighted round-robin state per gate (group × pool), for pools of several sources.
    private var roundRobin: [RoundRobinKey: [Int]] = [:]
    /// Times at which a suspension or throttle ends, so its event is not held back until mail comes.
    private var expiries = BinaryHeap<Expiry>(by: { $0.time < $1.time })
    private var events: [ShapingEvent] = []
    /// Groups whose state changed in a way that may let blocked mail go (the scheduler wakes them).
    private var changed: Set<ShapingGroup> = []
    /// Per rule label × source: bounded, for metrics. A lane counts its own messages while it lives
    /// (one lookup per message, the lane's) and adds them here when it is forgotten.
    private var counters: [ShapingMetricKey: ShapingCounters] = [:]
    /// The latest `now` seen: for calls that have none (classification expiry when a job is added).
    public private(set) var lastNow = -Double.infinity

    public init(policy: ShapingPolicy) {
        self.policy = policy
        index()
    }

    // MARK: - Rule matching

    private mutating func index() {
        exactDomains = [:]; suffixDomains = [:]; exactMX = [:]; suffixMX = [:]; ruleIndex = [:]
        for (i, rule) in policy.rules.enumerated() {
            if ruleIndex[rule.name] == nil { ruleIndex[rule.name] = i }
            // The rule listed first wins a tie: later ones do not overwrite.
            for d in rule.domains.map({ $0.lowercased() }) {
                if d.hasPrefix(".") { if suffixDomains[d] == nil { suffixDomains[d] = i } }
                else if exactDomains[d] == nil { exactDomains[d] = i }
            }
            for h in rule.mx.map({ Self.trimDot($0.lowercased()) }) {
                if h.hasPrefix(".") { if suffixMX[h] == nil { suffixMX[h] = i } }
                else if exactMX[h] == nil { exactMX[h] = i }
            }
        }
        // A pattern the config reader let through but that does not compile matches nothing.
        backoffPatterns = policy.backoff.map { Pattern($0.reply) }
        poolSources = [:]
        let known = Set(policy.sources.map(\.name))
        for pool in policy.pools {
            let usable = pool.sources.filter { $0.weight > 0 && known.contains($0.name) }
            if !usable.isEmpty { poolSources[pool.name] = usable }
        }
        classifications = [:]
        roundRobin = [:]
    }

    /// "mx.example.com." → "mx.example.com".
    private static func trimDot(_ s: String) -> String { s.hasSuffix(".") && s.count > 1 ? String(s.dropLast()) : s }

    /// The rule matching a destination by its name: exact, then the longest ".suffix". O(labels).
    public func ruleByName(_ destination: String) -> Int? {
        if let i = exactDomains[destination] { return i }
        guard !suffixDomains.isEmpty else { return nil }
        var rest = Substring(destination)
        while let dot = rest.firstIndex(of: ".") {
            if let i = suffixDomains[String(rest[dot...])] { return i }
            rest = rest[rest.index(after: dot)...]
        }
        return nil
    }

    /// The rule matching any of the MX host names: an exact host beats a suffix, a longer suffix a
    /// shorter one, and the rule listed first breaks ties.
    public func ruleByMX(_ hosts: [String]) -> Int? {
        var best: (level: Int, length: Int, rule: Int)?
        func consider(_ level: Int, _ length: Int, _ rule: Int) {
            if let b = best, (b.level, b.length, -b.rule) >= (level, length, -rule) { return }
            best = (level, length, rule)
        }
        for raw in hosts {
            let host = Self.trimDot(raw.lowercased())
            if let i = exactMX[host] { consider(2, host.utf8.count, i) }
            var rest = Substring(host)
            while let dot = rest.firstIndex(of: ".") {
                let suffix = rest[dot...]
                if let i = suffixMX[String(suffix)] {
                    consider(1, suffix.utf8.count, i)
                    break  // the longest suffix of this host
                }
                rest = rest[rest.index(after: dot)...]
            }
        }
        return best?.rule
    }

    private var hasMXRules: Bool { !exactMX.isEmpty || !suffixMX.isEmpty }

    /// The destination matched no rule by name and some rule has `mx`: its MX names are needed (ask
    /// the resolver once, then `classified`). Its jobs wait queued until then.
    public func needsClassification(_ destination: String) -> Bool {
        guard hasMXRules, ruleByName(destination) == nil else { return false }
        guard let c = classifications[destination] else { return true }
        return c.expires <= lastNow
    }

    /// The MX host names of a destination (empty: none or the lookup failed, so no MX rule applies).
    public mutating func classified(_ destination: String, mxHosts: [String], now: Double) {
        see(now)
        if classifications.count >= Self.classificationLimit {
            classifications = classifications.filter { $0.value.expires > now }
            if classifications.count >= Self.classificationLimit { classifications = [:] }
        }
        classifications[destination] = (ruleByMX(mxHosts), now + Self.classificationLifetime)
    }

    /// The group of a destination: its rule, or itself; nil while its MX names are needed.
    public mutating func group(of destination: String) -> ShapingGroup? {
        if let i = ruleByName(destination) { return .rule(policy.rules[i].name) }
        guard hasMXRules else { return .domain(destination) }
        guard let c = classifications[destination], c.expires > lastNow else { return nil }
        return c.rule.map { .rule(policy.rules[$0].name) } ?? .domain(destination)
    }

    /// The rule of a group (the defaults for a destination group).
    public func rule(of group: ShapingGroup) -> ShapingRule {
        guard group.kind == .rule, let i = ruleIndex[group.name] else { return policy.defaults }
        return policy.rules[i]
    }

    // MARK: - Egress pool of a message

    /// The pool a message's mail to `destination` goes out from: its authenticated user's, its sender
    /// domain's, the destination rule's, the route's, else the default; nil: no egress pool.
    public func pool(sender: String, authenticatedUser: String?, destination: String, routePool: String? = nil) -> String? {
        guard !policy.pools.isEmpty else { return nil }  // no egress: the OS picks the address
        let select = policy.select
        if let user = authenticatedUser, let p = select.users[user] { return p }
        if !select.senderDomains.isEmpty, let p = select.senderDomains[DeliveryCore.domain(of: sender)] { return p }
        if let i = ruleByName(destination) ?? classifications[destination]?.rule, let p = policy.rules[i].pool { return p }
        return routePool ?? select.defaultPool
    }

    // MARK: - Limits

    /// What a connection of the lane may carry, and how long it may idle.
    public func limits(of group: ShapingGroup) -> LaneLimits {
        let r = rule(of: group)
        return LaneLimits(maxMessagesPerConnection: r.maxMessagesPerConnection ?? policy.defaults.maxMessagesPerConnection,
                          connectionCacheTime: r.connectionCacheTime ?? policy.defaults.connectionCacheTime)
    }

    struct Effective {
        var connections: Int?
        var connectionRate: Rate?
        var messageRate: Rate?
        /// A rule's limits held by a cluster: a lease and permits from it are needed as well.
        var shared = false
    }

    private func effective(_ lane: ShapingLane, _ state: LaneState?) -> Effective {
        let r = rule(of: lane.group)
        let d = policy.defaults
        var e = Effective(connections: r.maxConnections ?? d.maxConnections,
                          connectionRate: r.maxConnectionRate ?? d.maxConnectionRate,
                          messageRate: r.maxMessageRate ?? d.maxMessageRate)
        if lane.group.kind == .rule {
            switch sharing {
            case .alone: break
            case .shared: e.shared = true
            case .fallback(let nodes): e.divide(by: nodes)
            }
        }
        if let t = state?.throttle {
            if let c = t.connections { e.connections = min(e.connections ?? c, c) }
            if let rate = t.rate, rate.interval > (e.messageRate?.interval ?? 0) { e.messageRate = rate }
        }
        return e
    }

    // MARK: - Admission (the scheduler asks)

    private mutating func see(_ now: Double) { if now > lastNow { lastNow = now } }

    /// Ends suspensions and throttles whose time has come (events), for the lane and its group.
    private mutating func refresh(_ lane: ShapingLane, now: Double) {
        if !groupSuspensions.isEmpty, let s = groupSuspensions[lane.group], s.until <= now {
            countSuspended(ShapingLane(group: lane.group, source: ""), s.until - s.since)
            groupSuspensions[lane.group] = nil
            events.append(.resumed(lane.group, source: nil, why: "suspension ended"))
            changed.insert(lane.group)
        }
        guard let i = lanes.index(forKey: lane) else { return }
        // Nothing ends now (the usual case, per message): no copy of the state.
        guard Self.somethingEnds(&lanes.values[i], now: now) else { return }
        var s = lanes.values[i]
        var touched = false
        if let t = s.throttle, t.until <= now {
            s.throttle = nil
            events.append(.throttleEnded(lane.group, source: lane.source, rule: t.rule))
            touched = true
        }
        if s.suspendedUntil > -.infinity, s.suspendedUntil <= now {
            countSuspended(lane, s.suspendedUntil - s.suspendedSince)
            s.suspendedUntil = -.infinity
            // A dead destination is not resumed by time: one probe connection tests it first.
            if !s.dead { events.append(.resumed(lane.group, source: lane.source, why: "suspension ended")) }
            touched = true
        }
        if touched {
            lanes[lane] = s
            changed.insert(lane.group)
        }
    }

    private static func somethingEnds(_ s: inout LaneState, now: Double) -> Bool {
        (s.throttle.map { $0.until <= now } ?? false) || (s.suspendedUntil > -.infinity && s.suspendedUntil <= now)
    }

    /// Whether the lane may open a connection now; nil wake: when a connection closes or state changes.
    private mutating func check(_ lane: ShapingLane, now: Double) -> (open: Bool, wake: Double?) {
        refresh(lane, now: now)
        if !groupSuspensions.isEmpty, let s = groupSuspensions[lane.group] { return (false, s.until) }
        let s = lanes[lane]
        if let s {
            if s.suspendedUntil > now { return (false, s.suspendedUntil) }
            if s.dead && s.probing { return (false, nil) }  // one probe at a time
        }
        let e = effective(lane, s)
        let connections = s?.connections ?? 0
        if let max = e.connections, connections >= max {
            // A throttle that lowered the limit ends at a known time.
            return (false, s?.throttle?.until)
        }
        // The cluster's lease and permits: asked for, and the gate woken when they come.
        if e.shared && !sharedAllows(lane, e, connections: connections, now: now) { return (false, nil) }
        var wake = -Double.infinity
        if e.connectionRate != nil, let tat = s?.connectionTAT, tat - Rate.tolerance > now { wake = tat - Rate.tolerance }
        if e.messageRate != nil, let tat = s?.messageTAT, tat - Rate.tolerance > now {
            wake = Swift.max(wake, tat - Rate.tolerance)
        }
        if wake > now { return (false, wake) }
        return (true, nil)
    }

    private mutating func open(_ lane: ShapingLane, now: Double) {
        var s = lanes[lane] ?? LaneState()
        let e = effective(lane, s)
        if e.shared { consumeShared(lane, e) }
        s.connections += 1
        s.inFlight += 1  // its first message
        if let r = e.connectionRate { s.connectionTAT = Swift.max(s.connectionTAT, now) + r.interval }
        if s.dead { s.probing = true }
        lanes[lane] = s
        countMessage(lane, e, now: now)
    }

    private mutating func countMessage(_ lane: ShapingLane, _ e: Effective, now: Double) {
        guard let i = lanes.index(forKey: lane) else { return }
        lanes.values[i].countMessage(rate: e.messageRate, now: now)
    }

    public mutating func admitConnection(group: ShapingGroup, pool: String?, connections: Int, now: Double,
                                         commit: Bool) -> ConnectionAdmission {
        see(now)
        let sources = pool.flatMap { poolSources[$0] } ?? Self.noEgress
        if sources.count == 1 {
            let lane = ShapingLane(group: group, source: sources[0].name)
            let (ok, wake) = check(lane, now: now)
            guard ok else { return .blocked(until: wake) }
            if commit { open(lane, now: now) }
            return .open(source: lane.source)
        }
        // Smooth weighted round-robin (nginx) among the sources whose lane is open.
        let key = RoundRobinKey(group: group, pool: pool ?? "")
        var current = roundRobin[key] ?? Array(repeating: 0, count: sources.count)
        if current.count != sources.count { current = Array(repeating: 0, count: sources.count) }
        var best = -1, total = 0
        var wake: Double? = .infinity
        for (i, source) in sources.enumerated() {
            let (ok, w) = check(ShapingLane(group: group, source: source.name), now: now)
            guard ok else {
                if let w, let current = wake { wake = Swift.min(current, w) } else { wake = nil }
                continue
            }
            current[i] += source.weight
            total += source.weight
            if best < 0 || current[i] > current[best] { best = i }
        }
        guard best >= 0 else {
            // Some lane waits for a connection to close (nil): that close wakes the gate anyway, but a
            // lane with a time is woken by time too.
            return .blocked(until: wake == .infinity ? nil : wake)
        }
        if !commit { return .open(source: sources[best].name) }
        current[best] -= total
        roundRobin[key] = current
        let lane = ShapingLane(group: group, source: sources[best].name)
        open(lane, now: now)
        return .open(source: lane.source)
    }

    public mutating func admitMessage(on lane: ShapingLane, sent: Int, now: Double) -> MessageAdmission {
        see(now)
        // This runs for every message: one hash of the lane, its state changed in place, the rule's
        // fields read where they are (no copy of the rule or of the state).
        var found = lanes.index(forKey: lane)
        var ends = !groupSuspensions.isEmpty
        if !ends, let i = found { ends = Self.somethingEnds(&lanes.values[i], now: now) }
        if ends {  // a suspension or throttle may end now: `refresh` may change the table
            refresh(lane, now: now)
            found = lanes.index(forKey: lane)
        }
        if !groupSuspensions.isEmpty, let s = groupSuspensions[lane.group] { return .wait(until: s.until) }
        if found == nil {  // not expected: an open connection has a lane
            lanes[lane] = LaneState()
            found = lanes.index(forKey: lane)
        }
        guard let i = found else { return .go }
        let r = lane.group.kind == .rule ? ruleIndex[lane.group.name] : nil
        let maxMessages = r.flatMap { policy.rules[$0].maxMessagesPerConnection } ?? policy.defaults.maxMessagesPerConnection
        var rate = r.flatMap { policy.rules[$0].maxMessageRate } ?? policy.defaults.maxMessageRate
        if sharing != .alone && lane.group.kind == .rule {
            switch sharing {
            case .fallback(let nodes):
                if let r = rate, nodes > 1 { rate = Rate(count: r.count, period: r.period * Double(nodes)) }
            case .shared where rate != nil && lanes.values[i].suspendedUntil <= now:
                // One of the cluster's permits for each message (and the local spacing as well).
                guard hasPermit(lane, .message, now: now) else {
                    wants.insert(SharedWant(lane: lane, kind: .message))
                    return .wait(until: nil)
                }
                let answer = Self.admit(&lanes.values[i], sent: sent, maxMessages: maxMessages, rate: rate, now: now)
                if answer == .go { allowances[lane]?.messages -= 1 }
                return answer
            default:
                break
            }
        }
        return Self.admit(&lanes.values[i], sent: sent, maxMessages: maxMessages, rate: rate, now: now)
    }

    /// The lane's state is changed where it lives (inout: reading a field through the dictionary's
    /// getter would copy the whole state first).
    private static func admit(_ s: inout LaneState, sent: Int, maxMessages: Int?, rate configured: Rate?,
                              now: Double) -> MessageAdmission {
        if s.suspendedUntil > now { return .wait(until: s.suspendedUntil) }
        if let maxMessages, sent >= maxMessages { return .close }
        var rate = configured
        if let t = s.throttle?.rate, t.interval > (rate?.interval ?? 0) { rate = t }
        if rate != nil, s.messageTAT - Rate.tolerance > now { return .wait(until: s.messageTAT - Rate.tolerance) }
        s.countMessage(rate: rate, now: now)
        s.inFlight += 1
        return .go
    }

    public mutating func connectionClosed(_ lane: ShapingLane) {
        guard var s = lanes[lane] else { return }
        s.connections = Swift.max(0, s.connections - 1)
        if !closingToShed.isEmpty, let c = closingToShed[lane] { closingToShed[lane] = c > 1 ? c - 1 : nil }
        // Its lease goes back to the cluster (a connection opened before the cluster answered has none).
        if let a = allowances[lane], a.leases > s.connections {
            allowances[lane]?.leases -= 1
            releases[lane, default: 0] += 1
        }
        // Its message, if any, stays in flight until it is attempted or given up (`notAttempted`).
        // A probe that closed without a verdict: the next connection probes again.
        if s.probing { s.probing = false }
        lanes[lane] = s
        changed.insert(lane.group)
        if s.isPlain(now: lastNow) {
            lanes[lane] = nil
            fold(lane, s)
        }
        sweepIfGrown()
    }

    /// Groups whose state changed since the last call: the scheduler wakes their gates.
    public mutating func takeChangedGroups() -> Set<ShapingGroup> {
        // Asked after every step: nothing changed must cost nothing (no copy of a shared buffer).
        guard !changed.isEmpty else { return [] }
        defer { changed.removeAll() }
        return changed
    }

    /// State changes since the last call, for the log.
    public mutating func takeEvents() -> [ShapingEvent] {
        guard !events.isEmpty else { return [] }
        defer { events.removeAll() }
        return events
    }

    /// Events wait to be taken (a check without a copy).
    public var hasEvents: Bool { !events.isEmpty }

    // MARK: - Dead destinations

    /// A connection of the lane reached no host (refused, timed out, no greeting).
    public mutating func connectionFailed(_ lane: ShapingLane, reason: String, now: Double) {
        see(now)
        refresh(lane, now: now)
        var s = lanes[lane] ?? LaneState()
        s.failures += 1
        s.lastFailure = reason
        let dead = policy.dead
        if s.probing {
            // The probe failed: suspended again, twice as long.
            s.probing = false
            s.deadInterval = Backoff(initial: dead.initial, maximum: dead.maximum).next(after: s.deadInterval)
            suspend(&s, lane, until: now + s.deadInterval, reason: reason, now: now)
        } else if !s.dead && s.failures >= Swift.max(dead.failures, 1) {
            s.dead = true
            s.deadInterval = Swift.min(dead.initial, dead.maximum)
            suspend(&s, lane, until: now + s.deadInterval, reason: reason, now: now)
        }
        // Else already dead: a connection opened before the suspension failed too; counted only.
        lanes[lane] = s
    }

    /// A connection of the lane reached a host: the failure count starts over; a dead lane resumes.
    /// True when there were failures to forget (state worth saving).
    @discardableResult
    public mutating func connectionSucceeded(_ lane: ShapingLane, now: Double) -> Bool {
        see(now)
        guard var s = lanes[lane] else { return false }
        guard s.failures > 0 || s.dead || s.probing || s.deadInterval > 0 else { return false }
        let wasDead = s.dead
        s.failures = 0
        s.dead = false
        s.probing = false
        s.deadInterval = 0
        lanes[lane] = s
        if wasDead {
            events.append(.resumed(lane.group, source: lane.source, why: "probe succeeded"))
            changed.insert(lane.group)
        }
        return true
    }

    private mutating func suspend(_ s: inout LaneState, _ lane: ShapingLane, until: Double, reason: String, now: Double) {
        if s.suspendedUntil <= now { s.suspendedSince = now }
        s.suspendedUntil = Swift.max(s.suspendedUntil, until)
        s.reason = reason
        events.append(.suspended(lane.group, source: lane.source, until: s.suspendedUntil, reason: reason))
        expiries.push(Expiry(time: s.suspendedUntil, lane: lane))
        changed.insert(lane.group)
    }

    /// Lowers a lane's limits until `until` (a throttle running longer is kept), with its event.
    private mutating func throttle(_ s: inout LaneState, _ lane: ShapingLane, rule: String, rate: Rate?,
                                   connections: Int?, until: Double, now: Double) {
        let until = Swift.max(s.throttle?.until ?? now, until)
        s.throttle = Throttle(rule: rule, until: until, rate: rate, connections: connections)
        events.append(.throttled(lane.group, source: lane.source, rule: rule, rate: rate, connections: connections, until: until))
        expiries.push(Expiry(time: until, lane: lane))
        changed.insert(lane.group)
    }

    // MARK: - Replies that say slow down

    /// A reply from a next hop of the lane ("421", "4.7.0", "Try again later"). Call it for every
    /// reply that is not 2xx/3xx; 2xx ones match no sensible rule and cost a regex each.
    public mutating func replySeen(_ lane: ShapingLane, code: Int, enhanced: String?, text: String, now: Double) {
        see(now)
        guard !policy.backoff.isEmpty else { return }
        let line = enhanced.map { "\(code) \($0) \(text)" } ?? "\(code) \(text)"
        let label = lane.group.ruleLabel
        for (i, rule) in policy.backoff.enumerated() {
            if !rule.rules.isEmpty && !rule.rules.contains(label) { continue }
            guard let pattern = backoffPatterns[i], pattern.matches(line) else { continue }
            var s = lanes[lane] ?? LaneState()
            var hits = s.hits[i] ?? []
            hits.append(now)
            hits.removeAll { $0 <= now - rule.threshold.window }
            if hits.count >= rule.threshold.count {
                hits = []
                switch rule.action {
                case .suspend:
                    suspend(&s, lane, until: now + rule.duration, reason: "\(rule.name): \(line)", now: now)
                case .throttle(let rate, let connections):
                    throttle(&s, lane, rule: rule.name, rate: rate, connections: connections, until: now + rule.duration, now: now)
                }
            }
            s.hits[i] = hits.isEmpty ? nil : hits
            lanes[lane] = s
        }
    }

    // MARK: - The postmaster

    /// The group a postmaster's target names: a rule by name, else the group of that destination.
    public mutating func target(_ name: String) -> ShapingGroup {
        let lower = name.lowercased()
        if ruleIndex[name] != nil { return .rule(name) }
        return group(of: lower) ?? .domain(lower)
    }

    /// Suspends a group on every source until `until`.
    @discardableResult
    public mutating func suspend(_ target: String, until: Double, reason: String, now: Double) -> ShapingGroup {
        see(now)
        let g = self.target(target)
        // Extended while it holds: counted from when it began. One that ran out unnoticed is counted.
        var since = now
        if let old = groupSuspensions[g] {
            if old.until > now { since = old.since } else { countSuspended(ShapingLane(group: g, source: ""), old.until - old.since) }
        }
        groupSuspensions[g] = (until, reason, since)
        events.append(.suspended(g, source: nil, until: until, reason: reason))
        expiries.push(Expiry(time: until, lane: ShapingLane(group: g, source: "")))
        changed.insert(g)
        return g
    }

    /// Lifts the postmaster's suspension and every lane's suspension, throttle and dead state of a group.
    @discardableResult
    public mutating func resume(_ target: String, now: Double) -> ShapingGroup {
        see(now)
        let g = self.target(target)
        if let s = groupSuspensions.removeValue(forKey: g) {
            countSuspended(ShapingLane(group: g, source: ""), Swift.min(now, s.until) - s.since)
        }
        for (lane, var s) in lanes where lane.group == g {
            if s.suspendedUntil > now { countSuspended(lane, now - s.suspendedSince) }
            s.suspendedUntil = -.infinity
            s.throttle = nil
            s.dead = false
            s.probing = false
            s.failures = 0
            s.deadInterval = 0
            s.hits = [:]
            lanes[lane] = s
        }
        events.append(.resumed(g, source: nil, why: "postmaster"))
        changed.insert(g)
        return g
    }

    // MARK: - Limits shared by a cluster (issue 20)

    /// Where a rule's rates and connection count come from.
    public enum Sharing: Sendable, Equatable {
        /// This node's own limits (no [cluster]).
        case alone
        /// The cluster's: before a connection opens it needs a lease, and every message (the first
        /// one with the connection) a permit, which the driver fetches from Redis.
        case shared
        /// Redis unreachable: this node's share of the limits, divided by the nodes last seen.
        case fallback(nodes: Int)
    }

    public enum SharedKind: String, Sendable { case message, connection, lease }

    /// What a lane waits for from the cluster.
    public struct SharedWant: Hashable, Sendable {
        public var lane: ShapingLane
        public var kind: SharedKind
        public init(lane: ShapingLane, kind: SharedKind) {
            self.lane = lane
            self.kind = kind
        }
    }

    /// Permits (each usable until its batch's time) and leases a lane holds.
    struct Allowance: Sendable {
        var messages = 0
        var messagesUntil = -Double.infinity
        var connections = 0
        var connectionsUntil = -Double.infinity
        var leases = 0
    }

    public private(set) var sharing: Sharing = .alone
    private var allowances: [ShapingLane: Allowance] = [:]
    private var wants: Set<SharedWant> = []
    private var releases: [ShapingLane: Int] = [:]
    /// Connections each lane is to close after their current message: above this node's share of the
    /// cluster's leases while another node waits (LeaseShare); and those told to close for it that
    /// have not closed yet (their leases still count in Redis: the next renewal must not ask again).
    private var shedding: [ShapingLane: Int] = [:]
    private var closingToShed: [ShapingLane: Int] = [:]

    /// The driver says where limits come from: the cluster (Redis answers), this node's share (it does
    /// not), or this node alone. Leaving `.shared` forgets every permit and lease (Redis's leases
    /// expire by themselves); every rule's gate is woken, its limits having changed.
    public mutating func setSharing(_ new: Sharing) {
        guard new != sharing else { return }
        if sharing == .shared {
            allowances = [:]
            wants = []
            releases = [:]
            shedding = [:]
            closingToShed = [:]
        }
        sharing = new
        for name in ruleIndex.keys { changed.insert(.rule(name)) }
    }

    /// Leases and permits lanes wait for since the last call (each once until it is granted).
    public mutating func takeSharedWants() -> Set<SharedWant> {
        guard !wants.isEmpty else { return [] }
        defer { wants.removeAll() }
        return wants
    }

    public var hasSharedWants: Bool { !wants.isEmpty || !releases.isEmpty }

    /// Leases to give back (connections closed), per lane.
    public mutating func takeSharedReleases() -> [ShapingLane: Int] {
        guard !releases.isEmpty else { return [:] }
        defer { releases.removeAll() }
        return releases
    }

    /// Leases held beyond the lane's open connections (granted when its mail had gone meanwhile), to
    /// give back: the driver asks every few seconds, so an unused lease is not kept from other nodes.
    public mutating func takeIdleLeases() -> [ShapingLane: Int] {
        var idle: [ShapingLane: Int] = [:]
        for (lane, a) in allowances where a.leases > (lanes[lane]?.connections ?? 0) {
            let extra = a.leases - (lanes[lane]?.connections ?? 0)
            idle[lane] = extra
            allowances[lane]?.leases -= extra
        }
        return idle
    }

    /// The cluster refused a lease or permit a while ago: the lane's gate is woken to be checked again,
    /// which asks again only if mail still waits for it (a lane whose mail went asks no more).
    public mutating func recheckShared(_ lane: ShapingLane) {
        changed.insert(lane.group)
    }

    /// This node holds `excess` leases of the lane above its share while another node waits: the
    /// connections to close for it, besides those already closing for it (at most the open ones). The
    /// driver closes idle ones at once (`closingIdle`); the rest close after their current message
    /// (`takeShed`). 0: any earlier ask not carried out yet is dropped.
    @discardableResult
    public mutating func shed(_ lane: ShapingLane, count excess: Int) -> Int {
        guard sharing == .shared else { return 0 }
        let closing = closingToShed[lane] ?? 0
        let open = lanes[lane]?.connections ?? 0
        let n = Swift.max(0, Swift.min(excess - closing, open - closing))
        shedding[lane] = n > 0 ? n : nil
        return n
    }

    /// The driver closed `count` idle connections of the lane for `shed`.
    public mutating func closingIdle(_ lane: ShapingLane, count: Int) {
        guard count > 0 else { return }
        let left = (shedding[lane] ?? 0) - count
        shedding[lane] = left > 0 ? left : nil
        closingToShed[lane, default: 0] += count
    }

    /// Whether a connection of the lane that finished a message should close (one of those `shed`
    /// asked for) rather than carry another.
    public mutating func takeShed(_ lane: ShapingLane) -> Bool {
        guard !shedding.isEmpty, let n = shedding[lane] else { return false }
        shedding[lane] = n > 1 ? n - 1 : nil
        closingToShed[lane, default: 0] += 1
        return true
    }

    /// Per lane holding the cluster's leases: leases held, connections open (GET /cluster).
    public func sharedUse() -> [ShapingLane: (leases: Int, connections: Int)] {
        var use: [ShapingLane: (leases: Int, connections: Int)] = [:]
        for (lane, a) in allowances where a.leases > 0 { use[lane] = (a.leases, lanes[lane]?.connections ?? 0) }
        return use
    }

    /// The cluster granted `count` permits usable until `until`, or `count` leases: the lane's gate
    /// is woken. Ignored unless limits are shared (an answer that comes after Redis went down).
    public mutating func grantShared(_ want: SharedWant, count: Int, until: Double) {
        guard sharing == .shared, count > 0 else { return }
        var a = allowances[want.lane] ?? Allowance()
        switch want.kind {
        case .message:
            a.messages = (a.messagesUntil > lastNow ? a.messages : 0) + count
            a.messagesUntil = until
        case .connection:
            a.connections = (a.connectionsUntil > lastNow ? a.connections : 0) + count
            a.connectionsUntil = until
        case .lease:
            a.leases += count
        }
        allowances[want.lane] = a
        changed.insert(want.lane.group)
    }

    /// A rule's limits as configured (for the cluster's keys): connections, connection rate, message rate.
    public func configuredLimits(_ group: ShapingGroup) -> (connections: Int?, connectionRate: Rate?, messageRate: Rate?) {
        let r = rule(of: group), d = policy.defaults
        return (r.maxConnections ?? d.maxConnections, r.maxConnectionRate ?? d.maxConnectionRate,
                r.maxMessageRate ?? d.maxMessageRate)
    }

    private func hasPermit(_ lane: ShapingLane, _ kind: SharedKind, now: Double) -> Bool {
        guard let a = allowances[lane] else { return false }
        switch kind {
        case .message: return a.messages > 0 && a.messagesUntil > now
        case .connection: return a.connections > 0 && a.connectionsUntil > now
        case .lease: return true
        }
    }

    private mutating func sharedAllows(_ lane: ShapingLane, _ e: Effective, connections: Int, now: Double) -> Bool {
        var ok = true
        if e.connections != nil, (allowances[lane]?.leases ?? 0) <= connections {
            wants.insert(SharedWant(lane: lane, kind: .lease))
            ok = false
        }
        if e.connectionRate != nil, !hasPermit(lane, .connection, now: now) {
            wants.insert(SharedWant(lane: lane, kind: .connection))
            ok = false
        }
        // A connection carries its first message.
        if e.messageRate != nil, !hasPermit(lane, .message, now: now) {
            wants.insert(SharedWant(lane: lane, kind: .message))
            ok = false
        }
        return ok
    }

    private mutating func consumeShared(_ lane: ShapingLane, _ e: Effective) {
        guard allowances[lane] != nil else { return }
        if e.connectionRate != nil { allowances[lane]!.connections -= 1 }
        if e.messageRate != nil { allowances[lane]!.messages -= 1 }
    }

    // MARK: - Shared with other nodes

    /// A suspension, throttle or postmaster's resume that another node decided (a cluster shares them,
    /// issue 20): the same state here, with its own event for this node's log. A lane-level one goes
    /// to the lane of the same source name; one for a rule this node does not have, or already over,
    /// changes nothing.
    public mutating func applyShared(_ event: ShapingEvent, now: Double) {
        see(now)
        func known(_ g: ShapingGroup) -> Bool { g.kind == .domain || (g.kind == .rule && ruleIndex[g.name] != nil) }
        switch event {
        case .suspended(let g, nil, let until, let reason):
            guard until > now, known(g) else { return }
            suspend(g.name, until: until, reason: reason, now: now)
        case .suspended(let g, let source?, let until, let reason):
            guard until > now, known(g) else { return }
            let lane = ShapingLane(group: g, source: source)
            var s = lanes[lane] ?? LaneState()
            suspend(&s, lane, until: until, reason: reason, now: now)
            lanes[lane] = s
        case .throttled(let g, let source, let rule, let rate, let connections, let until):
            guard until > now, known(g) else { return }
            let lane = ShapingLane(group: g, source: source)
            var s = lanes[lane] ?? LaneState()
            throttle(&s, lane, rule: rule, rate: rate, connections: connections, until: until, now: now)
            lanes[lane] = s
        case .resumed(let g, nil, "postmaster"):
            guard known(g) else { return }
            resume(g.name, now: now)
        default:
            break
        }
    }

    // MARK: - Time

    /// Ends the suspensions and throttles due by `now` (their events), even for groups with no mail.
    public mutating func tick(now: Double) {
        see(now)
        while let e = expiries.top, e.time <= now {
            expiries.pop()
            refresh(e.lane, now: now)
        }
    }

    /// The next suspension or throttle end (for the driver's timer).
    public var nextExpiry: Double? { expiries.top?.time }

    private mutating func sweepIfGrown() {
        guard lanes.count > 2 * lanesAfterSweep + 256 else { return }
        let now = lastNow
        forgetLanes { _, s in s.isPlain(now: now) }
        let groups = Set(lanes.keys.map(\.group))
        roundRobin = roundRobin.filter { groups.contains($0.key.group) }
        if expiries.count > 2 * lanes.count + 256 { expiries.removeAll { $0.time <= now } }
        lanesAfterSweep = lanes.count
    }

    // MARK: - SIGHUP, restart

    /// A new policy (SIGHUP): state of groups that still exist is kept.
    public mutating func updatePolicy(_ new: ShapingPolicy) {
        policy = new
        index()
        let names = Set(new.rules.map(\.name))
        func exists(_ g: ShapingGroup) -> Bool { g.kind != .rule || names.contains(g.name) }
        forgetLanes { lane, _ in !exists(lane.group) }
        for (g, s) in groupSuspensions where !exists(g) {
            countSuspended(ShapingLane(group: g, source: ""), Swift.min(lastNow, s.until) - s.since)
        }
        groupSuspensions = groupSuspensions.filter { exists($0.key) }
        for (lane, var s) in lanes {
            s.hits = s.hits.filter { $0.key < new.backoff.count }
            lanes[lane] = s
        }
        changed.formUnion(lanes.keys.map(\.group))
    }

    /// The state worth keeping across a restart: suspensions, throttles, dead counters, rate times.
    public func snapshot(now: Double) -> ShapingSnapshot {
        var out = ShapingSnapshot(savedAt: now)
        for (lane, s) in lanes.sorted(by: { $0.key.description < $1.key.description }) where !s.isPlain(now: now) || s.connectionTAT > now || s.messageTAT > now {
            out.lanes.append(.init(lane: lane, suspendedUntil: s.suspendedUntil > now ? s.suspendedUntil : nil,
                                   reason: s.reason.isEmpty ? nil : s.reason, failures: s.failures, dead: s.dead,
                                   deadInterval: s.deadInterval, throttle: s.throttle,
                                   connectionTAT: s.connectionTAT > now ? s.connectionTAT : nil,
                                   messageTAT: s.messageTAT > now ? s.messageTAT : nil))
        }
        for (g, s) in groupSuspensions.sorted(by: { $0.key.name < $1.key.name }) where s.until > now {
            out.groups.append(.init(group: g, until: s.until, reason: s.reason))
        }
        return out
    }

    /// Start-up: the state a snapshot kept, for groups the policy still has.
    public mutating func restore(_ snapshot: ShapingSnapshot, now: Double) {
        see(now)
        let names = Set(policy.rules.map(\.name))
        func exists(_ g: ShapingGroup) -> Bool { g.kind == .domain || (g.kind == .rule && names.contains(g.name)) }
        for r in snapshot.lanes where exists(r.lane.group) {
            var s = lanes[r.lane] ?? LaneState()
            if let until = r.suspendedUntil, until > now {
                s.suspendedUntil = until
                s.suspendedSince = now
                expiries.push(Expiry(time: until, lane: r.lane))
            }
            s.reason = r.reason ?? ""
            s.failures = r.failures
            s.dead = r.dead
            s.deadInterval = r.deadInterval
            if let t = r.throttle, t.until > now {
                s.throttle = t
                expiries.push(Expiry(time: t.until, lane: r.lane))
            }
            s.connectionTAT = r.connectionTAT ?? s.connectionTAT
            s.messageTAT = r.messageTAT ?? s.messageTAT
            lanes[r.lane] = s
            changed.insert(r.lane.group)
        }
        for g in snapshot.groups where exists(g.group) && g.until > now {
            groupSuspensions[g.group] = (g.until, g.reason, now)
            expiries.push(Expiry(time: g.until, lane: ShapingLane(group: g.group, source: "")))
            changed.insert(g.group)
        }
    }

    // MARK: - The view and the metrics

    /// Every lane with connections or state, and every suspended group, by group then source.
    public func laneViews(now: Double) -> [ShapingLaneView] {
        var rows: [ShapingLaneView] = []
        for (lane, s) in lanes {
            let e = effective(lane, s)
            var row = ShapingLaneView(group: lane.group, rule: lane.group.ruleLabel, source: lane.source,
                                      connections: s.connections, messagesLastMinute: s.lastMinute(now: now),
                                      maxConnections: e.connections, messageRate: e.messageRate?.description)
            row.inFlight = s.inFlight
            if let g = groupSuspensions[lane.group], g.until > now {
                row.state = .suspended(until: g.until, reason: g.reason)
            } else if s.suspendedUntil > now {
                row.state = .suspended(until: s.suspendedUntil, reason: s.reason)
            } else if s.dead {
                row.state = .probing(reason: s.reason)
            } else if let t = s.throttle, t.until > now {
                row.state = .throttled(until: t.until, rule: t.rule, rate: t.rate?.description, connections: t.connections)
            }
            rows.append(row)
        }
        for (g, s) in groupSuspensions where s.until > now && !lanes.keys.contains(where: { $0.group == g }) {
            var row = ShapingLaneView(group: g, rule: g.ruleLabel, source: "", connections: 0, messagesLastMinute: 0,
                                      maxConnections: effective(ShapingLane(group: g, source: ""), nil).connections,
                                      messageRate: nil)
            row.state = .suspended(until: s.until, reason: s.reason)
            rows.append(row)
        }
        return rows.sorted { ($0.group.name, $0.source) < ($1.group.name, $1.source) }
    }

    /// A message a connection of the lane carried was attempted: no longer in flight; its recipients
    /// sent and deferred are counted for the metrics. Runs for every message: one lookup, the lane's.
    public mutating func countAttempt(_ lane: ShapingLane, sent: Int, deferred: Int) {
        guard let i = lanes.index(forKey: lane) else {  // not expected: its connection is still open
            let key = ShapingMetricKey(rule: lane.group.ruleLabel, source: lane.source)
            counters[key, default: ShapingCounters()].sent += sent
            counters[key, default: ShapingCounters()].deferred += deferred
            return
        }
        lanes.values[i].attempted(sent: sent, deferred: deferred)
        if lanes.values[i].connections == 0 { forgetIfPlain(at: i) }  // its connection closed first
    }

    /// A message handed to a connection of the lane will not be attempted (skipped: deleted or held
    /// meanwhile; or its connection closed before it began): no longer in flight.
    public mutating func notAttempted(_ lane: ShapingLane) {
        guard let i = lanes.index(forKey: lane) else { return }
        lanes.values[i].attempted(sent: 0, deferred: 0)
        if lanes.values[i].connections == 0 { forgetIfPlain(at: i) }
    }

    private mutating func forgetIfPlain(at i: Dictionary<ShapingLane, LaneState>.Index) {
        guard lanes.values[i].isPlain(now: lastNow) else { return }
        let (lane, s) = lanes.remove(at: i)
        fold(lane, s)
    }

    /// Lanes about to be forgotten add their counts to their rule × source's.
    private mutating func fold(_ lane: ShapingLane, _ s: LaneState) {
        guard s.sent > 0 || s.deferred > 0 else { return }
        let key = ShapingMetricKey(rule: lane.group.ruleLabel, source: lane.source)
        counters[key, default: ShapingCounters()].sent += s.sent
        counters[key, default: ShapingCounters()].deferred += s.deferred
    }

    private mutating func forgetLanes(where gone: (ShapingLane, LaneState) -> Bool) {
        var kept: [ShapingLane: LaneState] = [:]
        for (lane, s) in lanes {
            if gone(lane, s) { fold(lane, s) } else { kept[lane] = s }
        }
        lanes = kept
    }

    private mutating func countSuspended(_ lane: ShapingLane, _ seconds: Double) {
        counters[ShapingMetricKey(rule: lane.group.ruleLabel, source: lane.source), default: ShapingCounters()]
            .suspendedSeconds += Swift.max(0, seconds)
    }

    /// Per rule label × source: recipients sent, deferred, seconds suspended (a postmaster's
    /// suspension, which holds every source, under source ""), connections open now.
    public func metrics(now: Double) -> [ShapingMetricKey: ShapingCounters] {
        var out = counters
        for (key, _) in out { out[key]!.connections = 0 }
        for (lane, s) in lanes {
            let key = ShapingMetricKey(rule: lane.group.ruleLabel, source: lane.source)
            var c = out[key] ?? ShapingCounters()
            c.connections += s.connections
            c.sent += s.sent
            c.deferred += s.deferred
            c.suspendedSeconds += s.suspendedUntil > now ? now - s.suspendedSince : 0
            out[key] = c
        }
        for (g, s) in groupSuspensions where s.until > now {
            out[ShapingMetricKey(rule: g.ruleLabel, source: ""), default: ShapingCounters()].suspendedSeconds += Swift.max(0, now - s.since)
        }
        return out
    }
}

// MARK: - Values

public struct ShapingMetricKey: Hashable, Sendable {
    public var rule: String
    public var source: String
}

public struct ShapingCounters: Sendable, Equatable {
    /// Recipients (not messages) delivered and deferred.
    public var sent = 0
    public var deferred = 0
    public var suspendedSeconds = 0.0
    public var connections = 0
}

/// One row of `tern queue destinations` (per group × source); the core adds the queue's counts.
public struct ShapingLaneView: Sendable, Equatable, Codable {
    public enum State: Sendable, Equatable, Codable {
        case active
        case suspended(until: Double, reason: String)
        /// Dead: the suspension ended; one probe connection tests it.
        case probing(reason: String)
        case throttled(until: Double, rule: String, rate: String?, connections: Int?)
        /// Its jobs wait for its MX names to choose a rule.
        case classifying
    }

    public var group: ShapingGroup
    public var rule: String
    public var source: String
    public var queued = 0
    /// Messages handed to a connection and not answered yet (one per busy connection).
    public var inFlight = 0
    public var connections: Int
    public var messagesLastMinute: Int
    public var maxConnections: Int?
    public var messageRate: String?
    public var state: State = .active

    public init(group: ShapingGroup, rule: String, source: String, connections: Int, messagesLastMinute: Int,
                maxConnections: Int?, messageRate: String?) {
        self.group = group
        self.rule = rule
        self.source = source
        self.connections = connections
        self.messagesLastMinute = messagesLastMinute
        self.maxConnections = maxConnections
        self.messageRate = messageRate
    }
}

/// A throttle from a [[backoff]] rule: lower limits until `until`.
public struct Throttle: Sendable, Equatable, Codable {
    public var rule: String
    public var until: Double
    public var rate: Rate?
    public var connections: Int?
}

extension Rate: Codable {
    public init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        let text = try c.decode(String.self)
        if let r = Rate(parsing: text) {
            self = r
        } else {
            let parts = text.split(separator: "/")
            guard parts.count == 2, let n = Int(parts[0]), let p = Double(parts[1].dropLast()), n > 0, p > 0 else {
                throw DecodingError.dataCorruptedError(in: c, debugDescription: "not a rate: \(text)")
            }
            self.init(count: n, period: p)
        }
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(description)
    }
}

/// Shaping state written to the spool's state file, so a restart keeps suspensions and throttles.
public struct ShapingSnapshot: Sendable, Equatable, Codable {
    public struct Lane: Sendable, Equatable, Codable {
        public var lane: ShapingLane
        public var suspendedUntil: Double?
        public var reason: String?
        public var failures: Int
        public var dead: Bool
        public var deadInterval: Double
        public var throttle: Throttle?
        public var connectionTAT: Double?
        public var messageTAT: Double?
    }

    public struct Group: Sendable, Equatable, Codable {
        public var group: ShapingGroup
        public var until: Double
        public var reason: String
    }

    public var savedAt: Double
    public var lanes: [Lane] = []
    public var groups: [Group] = []

    public init(savedAt: Double) { self.savedAt = savedAt }
}

struct LaneState: Sendable {
    var connections = 0
    /// Messages handed to its connections and not attempted yet.
    var inFlight = 0
    /// Recipients sent and deferred, not yet added to the rule × source's counters.
    var sent = 0
    var deferred = 0
    var connectionTAT = -Double.infinity
    var messageTAT = -Double.infinity
    var failures = 0
    var lastFailure = ""
    var dead = false
    var probing = false
    var deadInterval = 0.0
    var suspendedUntil = -Double.infinity
    var suspendedSince = 0.0
    var reason = ""
    var throttle: Throttle?
    /// Per [[backoff]] rule index: the times of matching replies within its window.
    var hits: [Int: [Double]] = [:]
    var minute = -Double.infinity
    var minuteCount = 0
    var previousMinuteCount = 0

    /// One message more: the rate's next permit time and the minute's count.
    mutating func countMessage(rate: Rate?, now: Double) {
        if let rate { messageTAT = Swift.max(messageTAT, now) + rate.interval }
        let m = (now / 60).rounded(.down)
        if m != minute {
            previousMinuteCount = m == minute + 1 ? minuteCount : 0
            minute = m
            minuteCount = 0
        }
        minuteCount += 1
    }

    mutating func attempted(sent: Int, deferred: Int) {
        inFlight = Swift.max(0, inFlight - 1)
        self.sent += sent
        self.deferred += deferred
    }

    /// Nothing to remember: the lane can be forgotten (its defaults come back identical; its
    /// counts go to the rule × source's).
    func isPlain(now: Double) -> Bool {
        connections == 0 && inFlight == 0 && failures == 0 && !dead && throttle == nil && suspendedUntil <= now && hits.isEmpty
            && connectionTAT <= now && messageTAT <= now
    }

    /// Messages in the last 60 s, estimated from this and the previous minute's counts.
    func lastMinute(now: Double) -> Int {
        let m = (now / 60).rounded(.down)
        let previous = m == minute ? previousMinuteCount : (m == minute + 1 ? minuteCount : 0)
        let current = m == minute ? minuteCount : 0
        let fraction = now / 60 - m
        return current + Int((Double(previous) * (1 - fraction)).rounded())
    }
}

private struct RoundRobinKey: Hashable, Sendable {
    var group: ShapingGroup
    var pool: String
}

private struct Expiry: Sendable {
    var time: Double
    var lane: ShapingLane
}

/// A [[backoff]] reply pattern, compiled once per policy, case-insensitive.
final class Pattern: @unchecked Sendable {
    // Immutable after init and used from the loop thread only; Regex's Sendability varies by toolchain.
    private let regex: Regex<AnyRegexOutput>

    init?(_ text: String) {
        guard let r = try? Regex(text) else { return nil }
        regex = r.ignoresCase()
    }

    func matches(_ line: String) -> Bool { line.contains(regex) }
}

extension Shaper.Effective {
    /// This node's share of a cluster's limits while Redis is down: connections and rates divided by
    /// the nodes last seen (at least one connection, a rate's period stretched).
    mutating func divide(by nodes: Int) {
        guard nodes > 1 else { return }
        if let c = connections { connections = Swift.max(1, c / nodes) }
        if let r = connectionRate { connectionRate = Rate(count: r.count, period: r.period * Double(nodes)) }
        if let r = messageRate { messageRate = Rate(count: r.count, period: r.period * Double(nodes)) }
    }
}
