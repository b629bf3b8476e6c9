// ClusterLimits.swift: the shaping rules' limits held by the cluster (issue 20). The decisions are the
// Shaper's (`Sharing`: a rule's connection needs a lease, each message a permit); here they are fetched
// from Redis, with two Lua scripts called by EVALSHA:
//
//   permits   GCRA on the rule × source's key (its theoretical arrival time, µs, Redis's clock):
//             a batch of permits per round trip, as many as fit in the burst tolerance (20 ms of the
//             rate, at least one interval): at 50/s one or two a trip, at 10,000/s about 200. Permits
//             not used within the batch's time (tolerance + 20 ms) are dropped, not handed back: a
//             permit used late would let the cluster exceed the rate; one dropped only lowers it.
//   leases    a sorted set per rule × source: member "node:n", score its expiry (ms, Redis's clock);
//             taken while fewer than max_connections are alive, renewed every `renewMilliseconds`
//             while the connection lives, removed when it closes. A node that dies gives its leases
//             back within `leaseMilliseconds`.
//
// Only [[shaping]] rules are shared (a destination no rule matches keeps [delivery]'s per-node limits:
// one Redis key per destination domain would grow without bound). Redis down: the Shaper falls back to
// this node's share, the limits divided by the nodes last seen; when Redis answers again, shared.

import Logging
import MailQueue
import UVRuntime

extension Cluster {
    static let permitScript = RedisScript("""
        local t = redis.call('TIME')
        local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
        local interval = tonumber(ARGV[1])
        local tolerance = tonumber(ARGV[2])
        local wanted = tonumber(ARGV[3])
        local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
        if tat < now then tat = now end
        local room = math.floor((now + tolerance - tat) / interval) + 1
        if room < 0 then room = 0 end
        local granted = math.min(wanted, room)
        if granted > 0 then
          tat = tat + granted * interval
          redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.floor((tat - now) / 1000) + 1000)
        end
        local wait = tat - tolerance - now
        if wait < 0 then wait = 0 end
        return {granted, math.floor(wait)}
        """)

    /// Takes a lease for ARGV[3] when one is free and no node waits ahead of ARGV[4]: the nodes
    /// refused wait in a queue (KEYS[2], by when they first asked, in µs; KEYS[3], when they last asked,
    /// forgotten after ARGV[5] ms of silence), so a freed lease goes to the node waiting longest, not to
    /// the one that just gave it back. Answers {1, 0} granted, {0, nodes ahead} refused.
    static let leaseScript = RedisScript("""
        local t = redis.call('TIME')
        local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
        local ttl = tonumber(ARGV[1])
        local node = ARGV[4]
        redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
        for _, gone in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now - tonumber(ARGV[5]))) do
          redis.call('ZREM', KEYS[2], gone)
          redis.call('ZREM', KEYS[3], gone)
        end
        local free = tonumber(ARGV[2]) - redis.call('ZCARD', KEYS[1])
        local ahead = redis.call('ZRANK', KEYS[2], node)
        if not ahead then ahead = redis.call('ZCARD', KEYS[2]) end
        if free <= ahead then
          redis.call('ZADD', KEYS[2], 'NX', tonumber(t[1]) * 1000000 + tonumber(t[2]), node)
          redis.call('ZADD', KEYS[3], now, node)
          redis.call('PEXPIRE', KEYS[2], ttl * 2)
          redis.call('PEXPIRE', KEYS[3], ttl * 2)
          return {0, ahead}
        end
        redis.call('ZADD', KEYS[1], now + ttl, ARGV[3])
        redis.call('PEXPIRE', KEYS[1], ttl * 2)
        redis.call('ZREM', KEYS[2], node)
        redis.call('ZREM', KEYS[3], node)
        return {1, 0}
        """)

    /// Renews the members still held (ARGV[3...]); answers {how many were gone (expired and taken
    /// back), Redis's time in seconds, {node, leases held, ...} for every node, {nodes waiting}}: what
    /// LeaseShare needs to tell whether this node holds more than its share.
    static let renewScript = RedisScript("""
        local t = redis.call('TIME')
        local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
        local ttl = tonumber(ARGV[1])
        redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
        for _, gone in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now - tonumber(ARGV[2]))) do
          redis.call('ZREM', KEYS[2], gone)
          redis.call('ZREM', KEYS[3], gone)
        end
        local lost = 0
        for i = 3, #ARGV do
          if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
            redis.call('ZADD', KEYS[1], 'XX', now + ttl, ARGV[i])
          else
            lost = lost + 1
          end
        end
        redis.call('PEXPIRE', KEYS[1], ttl * 2)
        local held = {}
        for _, member in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
          local n = string.match(member, '^(.*):[^:]*$') or member
          held[n] = (held[n] or 0) + 1
        end
        local flat = {}
        for n, c in pairs(held) do
          flat[#flat + 1] = n
          flat[#flat + 1] = c
        end
        return {lost, tonumber(t[1]), flat, redis.call('ZRANGE', KEYS[2], 0, -1)}
        """)

    static let leaseMilliseconds = 10_000
    /// Leases are renewed (and the shares looked at) every second.
    static let renewMilliseconds: UInt64 = 1000
    /// A waiting node that has not asked for this long is out of the queue.
    static let waiterMilliseconds = 1000

    static func leaseKeys(_ lane: ShapingLane) -> [String] {
        [key("lease", lane), key("lease-wait", lane), key("lease-seen", lane)]
    }

    static func key(_ kind: String, _ lane: ShapingLane) -> String {
        "tern:\(kind):\(lane.group.name):\(lane.source)"
    }

    /// The Shaper's mode for the state of Redis.
    var sharing: Shaper.Sharing { redis.isConnected ? .shared : .fallback(nodes: nodeCount) }

    /// After a step of the delivery driver: what lanes wait for is asked of Redis (each once until it
    /// is answered), and the leases of closed connections go back.
    func serviceShared(_ delivery: DeliveryManager) {
        giveBack(delivery.core.takeSharedReleases())
        for want in delivery.core.takeSharedWants() where !asking.contains(want) {
            ask(want, delivery)
        }
    }

    /// Leases of closed connections (or never used) go back to Redis.
    private func giveBack(_ released: [ShapingLane: Int]) {
        for (lane, count) in released {
            for _ in 0..<count {
                guard var held = leases[lane], !held.isEmpty else { break }
                let member = held.removeLast()
                leases[lane] = held
                if redis.isConnected { redis.command(["ZREM", Self.key("lease", lane), member]) { _ in } }
            }
        }
    }

    private func ask(_ want: Shaper.SharedWant, _ delivery: DeliveryManager) {
        guard redis.isConnected else { return }
        let limits = delivery.core.configuredLimits(want.lane.group)
        asking.insert(want)
        metrics.clusterRequest()
        switch want.kind {
        case .lease:
            guard let max = limits.connections else {
                asking.remove(want)
                return
            }
            leaseNumber += 1
            let member = "\(node):\(leaseNumber)"
            redis.eval(Self.leaseScript, keys: Self.leaseKeys(want.lane),
                       args: [String(Self.leaseMilliseconds), String(max), member, node,
                              String(Self.waiterMilliseconds)]) { [weak self, weak delivery] result in
                guard let self, let delivery, let (granted, ahead) = answer(result, want, delivery) else { return }
                guard granted == 1 else { return retry(want, delivery, after: LeaseShare.retryMilliseconds(ahead: Int(ahead))) }
                asking.remove(want)
                guard delivery.core.shaper.sharing == .shared else {
                    // Limits stopped being shared meanwhile: the lease is not kept.
                    redis.command(["ZREM", Self.key("lease", want.lane), member]) { _ in }
                    return
                }
                leases[want.lane, default: []].append(member)
                delivery.grantShared(want, count: 1, until: .infinity)
            }
        case .message, .connection:
            guard let rate = want.kind == .message ? limits.messageRate : limits.connectionRate else {
                asking.remove(want)
                return
            }
            let permits = rate.sharedPermits
            let kind = want.kind == .message ? "rate-m" : "rate-c"
            redis.eval(Self.permitScript, keys: [Self.key(kind, want.lane)],
                       args: [String(permits.intervalMicros), String(permits.toleranceMicros), String(permits.batch)]) { [weak self, weak delivery] result in
                guard let self, let delivery, let (granted, wait) = answer(result, want, delivery) else { return }
                if granted > 0 {
                    asking.remove(want)
                    if want.kind == .message { permitsTaken[want.lane, default: MinuteCount()].add(Int(granted), at: delivery.now) }
                    delivery.grantShared(want, count: Int(granted), until: delivery.now + permits.lifetime)
                } else {
                    retry(want, delivery, after: UInt64(max(1, wait / 1000)))
                }
            }
        }
    }

    /// The two integers both scripts answer; nil when there are none, the want then dealt with: Redis
    /// went (forgotten: the Shaper falls back, and asks anew when it is back), or it answered something
    /// else (-LOADING while it reloads its data, -BUSY, -OOM, -MISCONF): still connected, so the lane
    /// asks again after `errorRetryMilliseconds`, the first such answer in a row logged.
    private func answer(_ result: Result<RedisReply, RedisFailure>, _ want: Shaper.SharedWant,
                        _ delivery: DeliveryManager) -> (Int64, Int64)? {
        guard case .success(let reply) = result else {
            asking.remove(want)
            return nil
        }
        if case .array(let pair) = reply, pair.count == 2, let a = pair[0].integer, let b = pair[1].integer {
            lastAnswerWasError = false
            return (a, b)
        }
        if !lastAnswerWasError {
            lastAnswerWasError = true
            var text = "an answer of another kind"
            if case .error(let e) = reply { text = String(e.prefix(200)) }  // the log line escapes it
            log.warning("cluster: Redis answered a \(want.kind.rawValue) request for \(want.lane) with \(text); asking again every \(Self.errorRetryMilliseconds) ms")
        }
        retry(want, delivery, after: Self.errorRetryMilliseconds)
        return nil
    }

    static let errorRetryMilliseconds: UInt64 = 250

    /// After `milliseconds` (none was free) the lane is checked again: it asks again only if its mail
    /// still waits (a node whose mail went leaves the lease queue). One timer per want.
    private func retry(_ want: Shaper.SharedWant, _ delivery: DeliveryManager, after milliseconds: UInt64) {
        let timer = UVRuntime.Timer(loop: loop)
        retryTimers[want] = timer
        timer.start(afterMilliseconds: milliseconds) { [weak self, weak delivery] in
            guard let self else { return }
            retryTimers[want]?.close()
            retryTimers[want] = nil
            asking.remove(want)
            guard let delivery, redis.isConnected else { return }
            delivery.recheckShared(want.lane)
        }
    }

    /// Every `renewMilliseconds`: the leases of live connections are renewed (one script per lane),
    /// and a lane holding more than this node's share while another node waits closes the extra
    /// connections (LeaseShare).
    func renewLeases() {
        guard redis.isConnected, let delivery = server?.delivery else { return }
        giveBack(delivery.core.takeIdleLeases())
        for (lane, members) in leases where !members.isEmpty {
            redis.eval(Self.renewScript, keys: Self.leaseKeys(lane),
                       args: [String(Self.leaseMilliseconds), String(Self.waiterMilliseconds)] + members) { [weak self, weak delivery] result in
                guard let self, let delivery, case .success(.array(let answer)) = result,
                      let renewal = LeaseRenewal(answer) else { return }
                if renewal.lost > 0 {
                    log.warning("cluster: \(renewal.lost) connection lease(s) of \(lane) expired before they were renewed; the cluster may briefly count fewer connections than are open")
                }
                guard let max = delivery.core.configuredLimits(lane.group).connections else { return }
                let mine = Swift.max(0, members.count - renewal.lost)  // the leases it renewed
                let excess = LeaseShare.excess(node: node, mine: mine, max: max, held: renewal.held,
                                               waiting: renewal.waiting, time: renewal.time)
                if excess > 0 {
                    metrics.clusterConnectionsShed(excess)
                    log.debug("cluster: \(lane): this node holds \(mine) of \(max) connections while another node waits for its share: closing \(excess)")
                }
                delivery.shed(lane, count: excess)  // 0: an earlier ask not carried out yet is dropped
            }
        }
    }

    /// This node's use of the shared limits, for its heartbeat: every lane holding leases, waiting for
    /// one, or that took permits in the last minute.
    func limitUse() -> [ClusterLimitUse] {
        guard let delivery = server?.delivery else { return [] }
        let now = delivery.now
        let held = delivery.core.shaper.sharedUse()
        var lanes = Set(held.keys).union(permitsTaken.keys)
        for want in asking where want.kind == .lease { lanes.insert(want.lane) }
        var out: [ClusterLimitUse] = []
        for lane in lanes where lane.group.kind == .rule {
            let limits = delivery.core.configuredLimits(lane.group)
            let permits = permitsTaken[lane]?.total(at: now) ?? 0
            if permits == 0 { permitsTaken[lane] = nil }
            out.append(ClusterLimitUse(rule: lane.group.name, source: lane.source, maxConnections: limits.connections,
                                       leases: held[lane]?.leases ?? 0, connections: held[lane]?.connections ?? 0,
                                       waiting: asking.contains(.init(lane: lane, kind: .lease)),
                                       messageRate: limits.messageRate.map { "\($0)" }, permitsLastMinute: permits))
        }
        return out.sorted { ($0.rule, $0.source) < ($1.rule, $1.source) }
    }

    /// Redis up or down: the Shaper's limits follow, and what was held or asked is forgotten when down.
    func sharingChanged() {
        guard let delivery = server?.delivery else { return }
        if !redis.isConnected {
            leases = [:]
            asking = []
            for timer in retryTimers.values { timer.close() }
            retryTimers = [:]
        }
        delivery.setSharing(sharing)
    }
}

/// The renewal script's answer.
struct LeaseRenewal: Equatable {
    var lost: Int
    var time: Int
    var held: [String: Int]
    var waiting: Set<String>

    init(lost: Int, time: Int, held: [String: Int], waiting: Set<String>) {
        self.lost = lost
        self.time = time
        self.held = held
        self.waiting = waiting
    }

    init?(_ answer: [RedisReply]) {
        guard answer.count == 4, let lost = answer[0].integer, let time = answer[1].integer,
              case .array(let flat) = answer[2], case .array(let waiting) = answer[3] else { return nil }
        var held: [String: Int] = [:]
        var i = 0
        while i + 1 < flat.count {
            if let node = flat[i].text, let count = flat[i + 1].integer { held[node] = Int(count) }
            i += 2
        }
        self.init(lost: Int(lost), time: Int(time), held: held, waiting: Set(waiting.compactMap(\.text)))
    }
}
