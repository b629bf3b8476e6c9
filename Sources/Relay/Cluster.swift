// Cluster.swift: this node's part in a cluster of Tern nodes sharing one Redis ([cluster], issue 20).
// Each node keeps its own spool; what a mailbox provider must see as one sender's goes through Redis:
//
//   tern:nodes               sorted set: node name -> when its heartbeat expires (ms); the nodes seen
//   tern:node:NAME           the node's heartbeat, JSON (ClusterNodeInfo), expiring after 3 s
//   tern:suppression         stream of suppression changes (field r: a SuppressionRecord line)
//   tern:shaping             stream of suspensions, throttles and postmaster resumes (field e: JSON)
//   tern:epoch               a random value set by the first node: a new or emptied Redis has another
//
// Every second a heartbeat (and the list of nodes alive); every 250 ms the streams are read from the
// last entry seen, and other nodes' changes applied here: a suppression added on one node is refused
// by every node within a second, a suspension holds on every node at once. The local suppression
// list stays the fallback (each change applied is written to it too).
//
// Where each stream was read to is kept in the spool (cluster.state), so a restart reads only what it
// missed; when tern:epoch is not the one kept (a new or emptied Redis, or a first join) the streams are
// read from their start and the node shares the suppression entries it has (a new cluster starts from
// the union of its nodes' lists).
//
// Redis down (refused, or no answer within [cluster] timeout): said once in the log, counted in
// tern_cluster_redis_up and tern_cluster_redis_failures_total; the node goes on alone (nothing is
// refused for it) and rejoins by itself when Redis answers again, reading the streams from where it
// stopped. Changes made meanwhile are sent when it is back (at most `maxBacklog` of them).

import BuildInfo
import SMTPProtocol
import Foundation
import Logging
import MailQueue
import UVRuntime

/// One node's heartbeat, as GET /cluster shows it.
public struct ClusterNodeInfo: Codable, Equatable, Sendable {
    public var node: String
    /// Unix seconds of the heartbeat.
    public var time: Double
    public var version: String
    /// Messages in this node's queue, held ones among them (nil: delivery is off, the queue is not
    /// in memory), and SMTP sessions open.
    public var queued: Int?
    public var held: Int?
    public var sessions: Int
    /// This node's use of the rules' shared limits (empty without shaping rules in use; missing from a
    /// node of an older version).
    public var limits: [ClusterLimitUse]?

    public init(node: String, time: Double, version: String, queued: Int?, held: Int?, sessions: Int,
                limits: [ClusterLimitUse]? = nil) {
        self.node = node
        self.time = time
        self.version = version
        self.queued = queued
        self.held = held
        self.sessions = sessions
        self.limits = limits
    }

    /// nil written as null: every node's object has the same keys.
    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(node, forKey: .node)
        try c.encode(time, forKey: .time)
        try c.encode(version, forKey: .version)
        try c.encode(queued, forKey: .queued)
        try c.encode(held, forKey: .held)
        try c.encode(sessions, forKey: .sessions)
        try c.encode(limits ?? [], forKey: .limits)
    }
}

/// One node's use of one rule × source's shared limits.
public struct ClusterLimitUse: Codable, Equatable, Sendable {
    public var rule: String
    public var source: String
    /// The rule's max_connections (nil: none), connection leases this node holds, its connections open.
    public var maxConnections: Int?
    public var leases: Int
    public var connections: Int
    /// Whether this node is waiting for a lease (in the rule's queue).
    public var waiting: Bool
    /// The rule's max_message_rate ("50/s"; nil: none) and the message permits this node took in the
    /// last 60 seconds.
    public var messageRate: String?
    public var permitsLastMinute: Int

    public init(rule: String, source: String, maxConnections: Int?, leases: Int, connections: Int, waiting: Bool,
                messageRate: String?, permitsLastMinute: Int) {
        self.rule = rule
        self.source = source
        self.maxConnections = maxConnections
        self.leases = leases
        self.connections = connections
        self.waiting = waiting
        self.messageRate = messageRate
        self.permitsLastMinute = permitsLastMinute
    }

    enum CodingKeys: String, CodingKey {
        case rule, source, leases, connections, waiting
        case maxConnections = "max_connections"
        case messageRate = "max_message_rate"
        case permitsLastMinute = "permits_last_minute"
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(rule, forKey: .rule)
        try c.encode(source, forKey: .source)
        try c.encode(maxConnections, forKey: .maxConnections)
        try c.encode(leases, forKey: .leases)
        try c.encode(connections, forKey: .connections)
        try c.encode(waiting, forKey: .waiting)
        try c.encode(messageRate, forKey: .messageRate)
        try c.encode(permitsLastMinute, forKey: .permitsLastMinute)
    }
}

/// Permits taken in each of the last 60 seconds (a ring of counts), for the cluster view.
struct MinuteCount {
    private var counts = [Int](repeating: 0, count: 60)
    private var second = 0

    mutating func add(_ n: Int, at time: Double) {
        advance(to: time)
        counts[second % 60] += n
    }

    mutating func total(at time: Double) -> Int {
        advance(to: time)
        return counts.reduce(0, +)
    }

    private mutating func advance(to time: Double) {
        let now = Int(time)
        guard now > second else { return }
        if now - second >= 60 {
            counts = [Int](repeating: 0, count: 60)
        } else {
            for s in (second + 1)...now { counts[s % 60] = 0 }
        }
        second = now
    }
}

/// GET /cluster.
public struct ClusterView: Codable, Equatable, Sendable {
    public var node: String
    public var redis: String
    public var redisUp: Bool
    public var nodes: [ClusterNodeInfo]

    enum CodingKeys: String, CodingKey {
        case node, redis, nodes
        case redisUp = "redis_up"
    }
}

/// A shaping change as it travels between nodes.
struct SharedShapingEvent: Codable, Equatable {
    var kind: String  // suspended, throttled, resumed
    var group: ShapingGroup
    var source: String?
    var until: Double?
    var reason: String?
    var rule: String?
    var rateCount: Int?
    var ratePeriod: Double?
    var connections: Int?

    init?(_ event: ShapingEvent) {
        switch event {
        case .suspended(let g, let source, let until, let reason):
            self.init(kind: "suspended", group: g, source: source, until: until, reason: reason)
        case .throttled(let g, let source, let rule, let rate, let connections, let until):
            self.init(kind: "throttled", group: g, source: source, until: until, rule: rule,
                      rateCount: rate?.count, ratePeriod: rate?.period, connections: connections)
        case .resumed(let g, nil, "postmaster"):
            self.init(kind: "resumed", group: g)
        default:
            return nil
        }
    }

    init(kind: String, group: ShapingGroup, source: String? = nil, until: Double? = nil, reason: String? = nil,
         rule: String? = nil, rateCount: Int? = nil, ratePeriod: Double? = nil, connections: Int? = nil) {
        self.kind = kind
        self.group = group
        self.source = source
        self.until = until
        self.reason = reason
        self.rule = rule
        self.rateCount = rateCount
        self.ratePeriod = ratePeriod
        self.connections = connections
    }

    var event: ShapingEvent? {
        switch kind {
        case "suspended":
            guard let until else { return nil }
            return .suspended(group, source: source, until: until, reason: reason ?? "")
        case "throttled":
            guard let until, let source, let rule else { return nil }
            let rate = rateCount.flatMap { c in ratePeriod.map { Rate(count: c, period: $0) } }
            return .throttled(group, source: source, rule: rule, rate: rate, connections: connections, until: until)
        case "resumed":
            return .resumed(group, source: nil, why: "postmaster")
        default:
            return nil
        }
    }
}

final class Cluster {
    let config: ClusterConfig
    let node: String
    let loop: EventLoop
    let redis: RedisClient
    let log: Logger
    let metrics: RelayMetrics
    weak var server: SMTPServer?
    // Shared limits (ClusterLimits.swift): leases held per lane, wants being asked, their retries.
    var leases: [ShapingLane: [String]] = [:]
    var asking: Set<Shaper.SharedWant> = []
    var retryTimers: [Shaper.SharedWant: UVRuntime.Timer] = [:]
    var leaseNumber = 0
    /// The last lease or permit request got an error reply (logged once until one succeeds).
    var lastAnswerWasError = false
    /// Message permits taken per lane (the cluster view's last minute).
    var permitsTaken: [ShapingLane: MinuteCount] = [:]
    private var renewTimer: UVRuntime.Timer?

    private var heartbeatTimer: UVRuntime.Timer?
    private var pollTimer: UVRuntime.Timer?
    private var polling = false
    private(set) var nodes: [ClusterNodeInfo] = []
    /// Nodes alive at the last heartbeat (this one included); kept while Redis is down.
    private(set) var nodeCount = 1
    private var downSince: Double?
    /// The last entry read of each stream, kept in the spool (cluster.state); not read before they are
    /// checked against Redis (`checkPositions`).
    private var lastSuppression = "0-0"
    private var lastShaping = "0-0"
    private var positionsChecked = false
    private var checkingPositions = false
    /// The streams were read up to their end since the last connect: this node's list may be shared
    /// (after the removals other nodes made, so none is brought back).
    private var caughtUp = false
    private var state = ClusterState()
    private var stateDirty = false
    private var stateWriting = false
    private let stateWriter = StateFileWriter<ClusterState>()
    private var statePath: String?
    /// Sharing this node's suppression list with a Redis it joined: the list as it was before the
    /// streams were read (a value: its storage is copied only if the live list changes meanwhile, so
    /// entries read from other nodes are not sent back, and a removal cannot shift an entry past the
    /// offset unshared), and how far it went. Sent once the streams are caught up, a page a poll,
    /// skipping what another node removed; never a million entries made at once.
    private var listShareOffset: Int?
    private var listToShare: SuppressionList?
    private var listSharedCount = 0
    static let listShareChunk = 5000
    /// Changes made here while Redis could not take them, sent when it is back.
    private var backlog: [[String]] = []
    static let maxBacklog = 100_000
    private var backlogDropped = 0

    static let heartbeatMilliseconds: UInt64 = 1000
    static let heartbeatTTL = 3000
    static let pollMilliseconds: UInt64 = 250
    static let suppressionStream = "tern:suppression"
    static let shapingStream = "tern:shaping"
    static let epochKey = "tern:epoch"

    init(config: ClusterConfig, loop: EventLoop, log: Logger, metrics: RelayMetrics) {
        self.config = config
        node = config.nodeName
        self.loop = loop
        self.log = log
        self.metrics = metrics
        let address: RedisClient.Address
        if config.redis.hasPrefix("/") {
            address = .unix(config.redis)
        } else if let parsed = try? ListenAddress(parsing: config.redis) {
            address = .tcp(host: parsed.host, port: Int(parsed.port))
        } else {
            address = .unix(config.redis)  // refused by the config reader already
        }
        redis = RedisClient(loop: loop, address: address, timeoutMilliseconds: UInt64(config.timeout * 1000))
    }

    var redisUp: Bool { redis.isConnected }

    func start(server: SMTPServer) {
        self.server = server
        let path = ClusterState.path(spool: server.spool.path)
        statePath = path
        do {
            if let saved = try StateFile.read(ClusterState.self, at: path), saved.redis == config.redis {
                state = saved
                lastSuppression = saved.suppression
                lastShaping = saved.shaping
            }
        } catch {
            log.warning("cluster: cannot read \(path), reading the streams from their start: \(error)")
        }
        state.redis = config.redis
        metrics.clusterRedisUp(false)
        redis.onStateChange = { [weak self] up, why in self?.redisChanged(up: up, why: why) }
        redis.start()
        let heartbeat = UVRuntime.Timer(loop: loop)
        heartbeat.start(afterMilliseconds: Self.heartbeatMilliseconds, repeatMilliseconds: Self.heartbeatMilliseconds) { [weak self] in
            self?.heartbeat()
        }
        heartbeatTimer = heartbeat
        let poll = UVRuntime.Timer(loop: loop)
        poll.start(afterMilliseconds: Self.pollMilliseconds, repeatMilliseconds: Self.pollMilliseconds) { [weak self] in
            self?.poll()
        }
        pollTimer = poll
        server.suppression.onLocalChange = { [weak self] record in self?.shareSuppression(record) }
        server.delivery?.cluster = self
        server.delivery?.setSharing(sharing)
        let renew = UVRuntime.Timer(loop: loop)
        renew.start(afterMilliseconds: Self.renewMilliseconds, repeatMilliseconds: Self.renewMilliseconds) { [weak self] in
            self?.renewLeases()
        }
        renewTimer = renew
        log.info("cluster: node \(node), Redis at \(config.redis)")
    }

    func close() {
        if stateDirty, let statePath {  // at stop, on the loop: a small file, once; a pool write running late is dropped
            do {
                try stateWriter.write(state, generation: stateWriter.nextGeneration(), to: statePath)
            } catch {
                log.error("cluster: cannot write \(statePath): \(error)")
            }
        }
        heartbeatTimer?.close()
        pollTimer?.close()
        renewTimer?.close()
        for timer in retryTimers.values { timer.close() }
        retryTimers = [:]
        heartbeatTimer = nil
        pollTimer = nil
        renewTimer = nil
        redis.onStateChange = nil  // a stop is not an outage
        redis.close()
    }

    var view: ClusterView {
        ClusterView(node: node, redis: config.redis, redisUp: redis.isConnected, nodes: nodes)
    }

    // MARK: Redis up and down

    private func redisChanged(up: Bool, why: String?) {
        metrics.clusterRedisUp(up)
        let now = loop.clock.wallSeconds()
        if up {
            if let since = downSince {
                log.notice("cluster: Redis at \(config.redis) answers again after \(formatDuration((now - since).rounded())); shared state again")
            } else {
                log.info("cluster: connected to Redis at \(config.redis)")
            }
            downSince = nil
            heartbeat()
            sendBacklog()
            sharingChanged()
            checkPositions()
        } else if downSince == nil {
            downSince = now
            metrics.clusterRedisFailure()
            log.error("cluster: Redis at \(config.redis) unreachable (\(why ?? "no answer")): going on alone with its share of the rules' limits (1/\(nodeCount), \(nodeCount) nodes last seen) until it answers again")
        }
        if !up {
            positionsChecked = false
            checkingPositions = false
            caughtUp = false
            sharingChanged()
        }
    }

    // MARK: Where the streams were read to

    /// After each connect: the Redis is the one the kept positions are for if its tern:epoch (a random
    /// value the first node sets, living and dying with the streams) is the one kept. Otherwise (a new
    /// or emptied Redis, or a first join) the streams are read from their start and the local
    /// suppression list is shared.
    private func checkPositions() {
        guard !checkingPositions else { return }
        checkingPositions = true
        let candidate = (0..<4).map { _ in String(UInt32.random(in: 0...UInt32.max), radix: 16) }.joined()
        redis.command(["SET", Self.epochKey, candidate, "NX"]) { _ in }
        redis.command(["GET", Self.epochKey]) { [weak self] result in
            guard let self else { return }
            checkingPositions = false
            // No epoch (Redis went, or answered -LOADING while it reloads): asked again at the next
            // heartbeat; the streams are not read meanwhile.
            guard case .success(let value) = result, let epoch = value.text else { return }
            if epoch != state.epoch {
                if !state.epoch.isEmpty {
                    log.notice("cluster: Redis at \(config.redis) is not the one this node read from before (its \(Self.epochKey) changed: a new or emptied Redis): reading the streams from their start and sharing this node's suppression list")
                }
                state.epoch = epoch
                lastSuppression = "0-0"
                lastShaping = "0-0"
                state.listShared = false
                listShareOffset = nil  // from the start, for this Redis
                listToShare = nil
                noteState()
            }
            positionsChecked = true
            if !state.listShared, listShareOffset == nil {
                // The list as it is now, before anything is read from the streams: what this node had.
                listShareOffset = 0
                listSharedCount = 0
                listToShare = server?.suppression.list
            }
            poll()
        }
    }

    /// A page of the list to share each poll, until it is all sent.
    private func shareListChunk() {
        guard caughtUp, let offset = listShareOffset, let list = listToShare, let live = server?.suppression.list else { return }
        let page = list.entries(from: offset, limit: Self.listShareChunk)
        // Not one another node removed meanwhile (read from the stream before sharing began).
        for entry in page where live.entry(address: entry.address, scope: entry.scope) != nil {
            shareSuppression(.add(entry))
            listSharedCount += 1
        }
        listShareOffset = offset + page.count
        guard page.count < Self.listShareChunk else { return }
        listShareOffset = nil
        listToShare = nil
        state.listShared = true
        noteState()
        if listSharedCount > 0 {
            log.info("cluster: shared the \(listSharedCount) suppression entries this node had before it joined")
        }
        listSharedCount = 0
    }

    private func noteState() {
        state.suppression = lastSuppression
        state.shaping = lastShaping
        stateDirty = true
    }

    /// Written on the thread pool, at most once a heartbeat.
    private func saveState() {
        guard stateDirty, !stateWriting, let statePath else { return }
        stateDirty = false
        stateWriting = true
        let snapshot = state
        let writer = stateWriter
        let generation = writer.nextGeneration()
        var failure: Error?
        loop.queueWork({
            do { try writer.write(snapshot, generation: generation, to: statePath) } catch { failure = error }
        }, done: { [weak self] in
            guard let self else { return }
            stateWriting = false
            if let failure { log.error("cluster: cannot write \(statePath): \(failure)") }
        })
    }

    // MARK: Heartbeat

    private func heartbeat() {
        saveState()
        guard redis.isConnected, let server else { return }
        if !positionsChecked { checkPositions() }
        let info = ClusterNodeInfo(node: node, time: loop.clock.wallSeconds(), version: BuildInfo.version,
                                   queued: server.delivery?.core.messagesInQueue,
                                   held: server.delivery?.core.held.count, sessions: server.sessions.count,
                                   limits: limitUse())
        let nowMs = Int(loop.clock.wallSeconds() * 1000)
        let json = (try? JSONEncoder().encode(info)).map { Array($0) } ?? []
        redis.command([Array("SET".utf8), Array("tern:node:\(node)".utf8), json, Array("PX".utf8),
                       Array(String(Self.heartbeatTTL).utf8)]) { _ in }
        redis.command(["ZADD", "tern:nodes", String(nowMs + Self.heartbeatTTL), node]) { _ in }
        redis.command(["ZREMRANGEBYSCORE", "tern:nodes", "-inf", String(nowMs)]) { _ in }
        redis.command(["ZRANGE", "tern:nodes", "0", "-1"]) { [weak self] result in
            guard let self, case .success(.array(let names)) = result else { return }
            let keys = names.compactMap(\.text).map { "tern:node:\($0)" }
            guard !keys.isEmpty else { return }
            redis.command(["MGET"] + keys) { [weak self] result in
                guard let self, case .success(.array(let values)) = result else { return }
                let decoder = JSONDecoder()
                nodes = values.compactMap { v in
                    guard case .string(let b) = v else { return nil }
                    return try? decoder.decode(ClusterNodeInfo.self, from: Data(b))
                }.sorted { $0.node < $1.node }
                nodeCount = max(1, nodes.count)
                metrics.clusterNodes(nodeCount)
            }
        }
    }

    // MARK: Sharing

    func shareSuppression(_ record: SuppressionRecord) {
        send(["XADD", Self.suppressionStream, "MAXLEN", "~", "2000000", "*", "node", node,
              "r", String(decoding: record.line.dropLast(), as: UTF8.self)])
    }

    func shareShaping(_ event: ShapingEvent) {
        guard let shared = SharedShapingEvent(event), let json = try? JSONEncoder().encode(shared) else { return }
        send(["XADD", Self.shapingStream, "MAXLEN", "~", "100000", "*", "node", node,
              "e", String(decoding: json, as: UTF8.self)])
    }

    private func send(_ command: [String]) {
        guard redis.isConnected else {
            if backlog.count < Self.maxBacklog { backlog.append(command) } else { backlogDropped += 1 }
            return
        }
        redis.command(command) { [weak self] result in
            guard let self, case .failure = result else { return }
            // Lost with the connection: again when it is back.
            if backlog.count < Self.maxBacklog { backlog.append(command) } else { backlogDropped += 1 }
        }
    }

    private func sendBacklog() {
        let waiting = backlog
        backlog = []
        if backlogDropped > 0 {
            log.warning("cluster: \(backlogDropped) changes made while Redis was down were not shared (more than \(Self.maxBacklog))")
            backlogDropped = 0
        }
        for command in waiting { send(command) }
    }

    // MARK: Reading the others' changes

    private func poll() {
        guard redis.isConnected, positionsChecked, !polling else { return }
        shareListChunk()
        polling = true
        redis.command(["XREAD", "COUNT", "1000", "STREAMS", Self.suppressionStream, Self.shapingStream,
                       lastSuppression, lastShaping]) { [weak self] result in
            guard let self else { return }
            polling = false
            if case .success(.null) = result { caughtUp = true }  // nothing new in either stream
            guard case .success(.array(let streams)) = result else { return }
            var more = false
            for stream in streams {
                guard case .array(let pair) = stream, pair.count == 2, let name = pair[0].text,
                      case .array(let entries) = pair[1] else { continue }
                if entries.count >= 1000 { more = true }
                for entry in entries {
                    guard case .array(let idAndFields) = entry, idAndFields.count == 2, let id = idAndFields[0].text,
                          case .array(let fields) = idAndFields[1] else { continue }
                    var values: [String: [UInt8]] = [:]
                    var i = 0
                    while i + 1 < fields.count {
                        if let key = fields[i].text, case .string(let v) = fields[i + 1] { values[key] = v }
                        i += 2
                    }
                    if name == Self.suppressionStream {
                        lastSuppression = id
                    } else {
                        lastShaping = id
                    }
                    let from = values["node"].map { String(decoding: $0, as: UTF8.self) } ?? "?"
                    guard from != node else { continue }
                    apply(stream: name, values, from: from)
                }
            }
            noteState()
            if more {
                poll()
            } else {
                caughtUp = true
            }
        }
    }

    private func apply(stream: String, _ values: [String: [UInt8]], from: String) {
        if stream == Self.suppressionStream {
            guard let line = values["r"], let record = SuppressionRecord.parse(line[...]) else { return }
            if server?.suppression.applyShared(record) == true {
                metrics.clusterChangesApplied("suppression")
                switch record {
                case .add(let e): log.info("suppression: \(e.address)\(e.scope.isEmpty ? "" : " (for \(e.scope))") added by cluster node \(from)")
                case .remove(let a, let s): log.info("suppression: \(a)\(s.isEmpty ? "" : " (for \(s))") removed by cluster node \(from)")
                }
            }
        } else {
            guard let json = values["e"], let shared = try? JSONDecoder().decode(SharedShapingEvent.self, from: Data(json)),
                  let event = shared.event, let delivery = server?.delivery else { return }
            metrics.clusterChangesApplied("shaping")
            delivery.applySharedShaping(event, from: from)
        }
    }
}

/// `tern queue destinations --cluster`: one line per node. Node names are checked when configured,
/// but another node's heartbeat is read from Redis: printed escaped all the same.
public enum ClusterFormat {
    public static func table(_ view: ClusterView, now: Double) -> String {
        var out = "cluster: node \(terminalSafe(view.node)), Redis at \(terminalSafe(view.redis)) "
            + (view.redisUp ? "answering" : "NOT answering: this node goes on alone") + "\n"
        let header = ["NODE", "QUEUED", "HELD", "SESSIONS", "HEARTBEAT", "VERSION"]
        var rows = [header]
        for n in view.nodes {
            rows.append([terminalSafe(n.node), n.queued.map(String.init) ?? "-", n.held.map(String.init) ?? "-", String(n.sessions),
                         "\(max(0, Int((now - n.time).rounded())))s ago", terminalSafe(n.version)])
        }
        if view.nodes.isEmpty { return out + "(no heartbeat seen yet)\n" }
        out += columns(rows)
        // The shared limits: each node's use of each rule, and the cluster's total.
        var byLimit: [String: [(node: String, use: ClusterLimitUse)]] = [:]
        for n in view.nodes {
            for use in n.limits ?? [] { byLimit["\(use.rule)\u{0}\(use.source)", default: []].append((n.node, use)) }
        }
        guard !byLimit.isEmpty else { return out }
        var limitRows = [["RULE", "SOURCE", "NODE", "LEASES", "CONNECTIONS", "WAITING", "PERMITS/MIN"]]
        for key in byLimit.keys.sorted() {
            let uses = byLimit[key]!.sorted { $0.node < $1.node }
            let first = uses[0].use
            func cap(_ n: Int, _ use: ClusterLimitUse) -> String { use.maxConnections.map { "\(n)/\($0)" } ?? String(n) }
            for (name, use) in uses {
                limitRows.append([terminalSafe(use.rule), use.source.isEmpty ? "-" : terminalSafe(use.source), terminalSafe(name),
                                  cap(use.leases, use), String(use.connections), use.waiting ? "yes" : "no",
                                  String(use.permitsLastMinute)])
            }
            limitRows.append([terminalSafe(first.rule), first.source.isEmpty ? "-" : terminalSafe(first.source), "(cluster)",
                              // &+: the numbers come from other nodes' heartbeats; a wild one must not trap.
                              cap(uses.map(\.use.leases).reduce(0, &+), first), String(uses.map(\.use.connections).reduce(0, &+)),
                              String(uses.filter(\.use.waiting).count),
                              String(uses.map(\.use.permitsLastMinute).reduce(0, &+))
                                + (first.messageRate.map { " (max \(terminalSafe($0)))" } ?? "")])
        }
        return out + "\nshared limits:\n" + columns(limitRows)
    }

    private static func columns(_ rows: [[String]]) -> String {
        let widths = (0..<rows[0].count).map { c in rows.map { $0[c].count }.max() ?? 0 }
        var out = ""
        for row in rows {
            out += zip(row, widths).map { $0.padding(toLength: $1, withPad: " ", startingAt: 0) }.joined(separator: "  ")
                .trimmingCharacters(in: .whitespaces) + "\n"
        }
        return out
    }
}

/// What the node keeps in its spool of its part in the cluster (cluster.state, a StateFile): the
/// Redis it was for, where it read each stream to, whether it shared its list there.
struct ClusterState: Codable, Equatable {
    var redis = ""
    var epoch = ""
    var suppression = "0-0"
    var shaping = "0-0"
    var listShared = false

    enum CodingKeys: String, CodingKey {
        case redis, epoch, suppression, shaping
        case listShared = "list_shared"
    }

    static let name = "cluster.state"
    static func path(spool: String) -> String { "\(spool)/\(name)" }
}
