import Testing
@testable import MailQueue

// The scheduler's gates with traffic shaping: blocked gates leave the candidates and come back once,
// at their wake time or when their group changes; groups share limits; MX classification; pools.

private let t0 = 1_800_000_000.0

private func qid(_ n: Int) -> QueueID { QueueID(microseconds: 1_800_000_000_000_000 + UInt64(n)) }

private func job(_ n: Int, _ destination: String, priority: Int = 0, pool: String? = nil) -> DeliveryJob {
    DeliveryJob(id: qid(n), destination: destination, recipients: [0], priority: priority, arrival: Double(n), pool: pool)
}

/// Counts the admission's answers, to show a blocked gate is not asked again and again.
private struct Counting: ShapingAdmission {
    var inner: Shaper
    var connectionQuestions = 0
    mutating func group(of destination: String) -> ShapingGroup? { inner.group(of: destination) }
    mutating func admitConnection(group: ShapingGroup, pool: String?, connections: Int, now: Double,
                                  commit: Bool) -> ConnectionAdmission {
        connectionQuestions += 1
        return inner.admitConnection(group: group, pool: pool, connections: connections, now: now, commit: commit)
    }
    mutating func admitMessage(on lane: ShapingLane, sent: Int, now: Double) -> MessageAdmission {
        inner.admitMessage(on: lane, sent: sent, now: now)
    }
    mutating func connectionClosed(_ lane: ShapingLane) { inner.connectionClosed(lane) }
    mutating func notAttempted(_ lane: ShapingLane) { inner.notAttempted(lane) }
}

private func shaper(_ rules: [ShapingRule], defaultConnections: Int = 10, sources: [EgressSource] = [],
                    pools: [EgressPool] = []) -> Shaper {
    Shaper(policy: ShapingPolicy(rules: rules, defaults: ShapingRule(name: "default", maxConnections: defaultConnections),
                                 sources: sources, pools: pools))
}

@Suite struct ShapingSchedulerTests {
    @Test func aRateBlockedGateWaitsForItsTimeWithoutBeingAskedAgain() {
        var a = Counting(inner: shaper([ShapingRule(name: "slow", domains: ["slow.example"], maxConnections: 100,
                                                    maxMessageRate: Rate(count: 1, period: 10))]))
        var s = Scheduler(maxConnections: 1000, maxConnectionsPerDestination: 10)
        for n in 0..<10_000 { s.add(job(n, "slow.example"), due: 0, shaping: &a) }  // older: first by arrival
        for n in 10_000..<10_100 { s.add(job(n, "d\(n % 50).example"), due: 0, shaping: &a) }
        let first = s.dispatch(now: t0, shaping: &a)
        // slow.example gets one connection (its message rate), then its gate is blocked until t0 + 10;
        // every other destination gets up to 10 connections.
        #expect(first.filter { $0.job.destination == "slow.example" }.count == 1)
        #expect(first.count == 1 + 100)
        #expect(first[0].connection.lane == ShapingLane(group: .rule("slow"), source: ""))
        #expect(first[1].connection.lane == ShapingLane(group: .domain("d0.example"), source: ""))
        #expect(s.nextDueTime == t0 + 10 - Rate.tolerance)
        let asked = a.connectionQuestions
        // Many dispatches before the wake time: the blocked gate is not a candidate, nothing is asked.
        for i in 1..<100 { #expect(s.dispatch(now: t0 + Double(i) / 10, shaping: &a).isEmpty) }
        #expect(a.connectionQuestions == asked)
        let later = s.dispatch(now: t0 + 10, shaping: &a)
        #expect(later.map(\.job.id) == [qid(1)])
        #expect(s.nextDueTime == t0 + 20 - Rate.tolerance)
    }

    @Test func destinationsOfOneRuleShareItsConnectionLimit() {
        var a = shaper([ShapingRule(name: "provider", domains: [".provider.example"], maxConnections: 2)],
                       defaultConnections: 1)
        var s = Scheduler(maxConnections: 100, maxConnectionsPerDestination: 1)
        for n in 0..<6 { s.add(job(n, n % 2 == 0 ? "a.provider.example" : "b.provider.example"), due: 0, shaping: &a) }
        s.add(job(10, "other.example"), due: 0, shaping: &a)
        s.add(job(11, "other.example"), due: 0, shaping: &a)
        let started = s.dispatch(now: t0, shaping: &a)
        #expect(started.map(\.job.id) == [qid(0), qid(1), qid(10)], "two for the rule, one for the unmatched domain")
        #expect(s.dispatch(now: t0, shaping: &a).isEmpty)
        // A connection of the group closes: the gate opens again, best job first across its destinations.
        s.release(started[1].connection, shaping: &a)
        #expect(s.dispatch(now: t0, shaping: &a).map(\.job.id) == [qid(2)])
        // An open connection keeps taking its own destination's jobs.
        #expect(s.next(on: started[0].connection, sent: 1, now: t0, shaping: &a)?.id == qid(4))
        #expect(s.next(on: started[0].connection, sent: 2, now: t0, shaping: &a) == nil)
    }

    @Test func messageRateStopsAnOpenConnectionAndReportsItWhenItMayGoOn() {
        var a = shaper([ShapingRule(name: "r", domains: ["a.example"], maxMessageRate: Rate(count: 1, period: 5))])
        var s = Scheduler(maxConnections: 10, maxConnectionsPerDestination: 10)
        for n in 0..<3 { s.add(job(n, "a.example"), due: 0, shaping: &a) }
        let started = s.dispatch(now: t0, shaping: &a)
        #expect(started.count == 1)
        #expect(s.next(on: started[0].connection, sent: 1, now: t0 + 1, shaping: &a) == nil)
        #expect(s.promoteReadyForConnections(now: t0 + 4).isEmpty)
        #expect(s.nextDueTime == t0 + 5 - Rate.tolerance)
        #expect(s.promoteReadyForConnections(now: t0 + 5) == ["a.example"], "its idle connection may take the job")
        #expect(s.next(on: started[0].connection, sent: 1, now: t0 + 5, shaping: &a)?.id == qid(1))
        #expect(s.dispatch(now: t0 + 5, shaping: &a).isEmpty, "the rate is spent")
    }

    @Test func mxRollupWaitsForTheNamesThenJoinsTheRule() {
        var a = shaper([ShapingRule(name: "google", mx: [".google.com"], maxConnections: 1)])
        var s = Scheduler(maxConnections: 10, maxConnectionsPerDestination: 10)
        s.add(job(1, "one.example"), due: 0, shaping: &a)
        s.add(job(2, "two.example"), due: 0, shaping: &a)
        s.add(job(3, "one.example"), due: 0, shaping: &a)
        #expect(s.takeUnclassified() == ["one.example", "two.example"], "each once")
        #expect(s.takeUnclassified().isEmpty)
        #expect(s.dispatch(now: t0, shaping: &a).isEmpty, "waiting for MX names")
        a.classified("one.example", mxHosts: ["aspmx.l.google.com"], now: t0)
        s.regroup(destination: "one.example", shaping: &a)
        a.classified("two.example", mxHosts: ["alt1.aspmx.l.google.com"], now: t0)
        s.regroup(destination: "two.example", shaping: &a)
        let started = s.dispatch(now: t0, shaping: &a)
        #expect(started.map(\.job.id) == [qid(1)], "both under google's one connection")
        s.release(started[0].connection, shaping: &a)
        #expect(s.dispatch(now: t0, shaping: &a).map(\.job.id) == [qid(2)])
    }

    @Test func poolsQueueApartAndSourcesAlternate() {
        var a = shaper([], defaultConnections: 1,
                       sources: [EgressSource(name: "a", address: "127.0.0.21"), EgressSource(name: "b", address: "127.0.0.22")],
                       pools: [EgressPool(name: "both", sources: [("a", 1), ("b", 1)]),
                               EgressPool(name: "onlya", sources: [("a", 1)])])
        var s = Scheduler(maxConnections: 10, maxConnectionsPerDestination: 10)
        for n in 0..<4 { s.add(job(n, "x.example", pool: "both"), due: 0, shaping: &a) }
        s.add(job(9, "x.example", pool: "onlya"), due: 0, shaping: &a)
        let started = s.dispatch(now: t0, shaping: &a)
        // One connection per lane (group × source): a and b for pool "both"; "onlya" waits for a.
        #expect(started.map(\.connection.lane.source) == ["a", "b"])
        #expect(started.allSatisfy { $0.job.pool == "both" })
        let onA = started.first { $0.connection.lane.source == "a" }!
        s.release(onA.connection, shaping: &a)
        let next = s.dispatch(now: t0, shaping: &a)
        #expect(next.map(\.job.id) == [qid(2)], "pool both's next job, on a again; onlya still waits for a")
        #expect(next.map(\.connection.lane.source) == ["a"])
        #expect(s.queuedJobs(of: qid(9)).count == 1)
    }

    @Test func regroupAfterANewPolicyMovesQueues() {
        var a = shaper([], defaultConnections: 5)
        var s = Scheduler(maxConnections: 10, maxConnectionsPerDestination: 10)
        for n in 0..<4 { s.add(job(n, "a.example"), due: 0, shaping: &a) }
        a.updatePolicy(ShapingPolicy(rules: [ShapingRule(name: "tight", domains: ["a.example"], maxConnections: 1)],
                                     defaults: ShapingRule(name: "default", maxConnections: 5)))
        s.regroupAll(shaping: &a)
        let started = s.dispatch(now: t0, shaping: &a)
        #expect(started.count == 1)
        #expect(started[0].connection.lane.group == .rule("tight"))
        #expect(s.groupCounts()[.rule("tight")]?.queued == 3)
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Issue 16's scale case, measured and printed (bench/scheduler-shaping.sh runs it in a release build at
/// 1,000,000 messages; the unit suite runs it small): jobs over 1,000 destinations, each its own rule
/// (1,000 rules), 100 of them blocked (50 suspended by the postmaster, 50 throttled to 1/h), beside
/// the same queue without shaping (max_connections_per_destination alone). A pick is a connection
/// closing and `dispatch` handing its slot to the best job of any open gate; and `next(on:)` on
/// an open connection. Bounds are loose: a benchmark, not a timed assertion.
@Suite struct ShapingSchedulerScaleTests {
    @Test func pickCostWithBlockedDestinations() {
        let counts = (getenv("TERN_SHAPING_SCALE").map { String(cString: $0) } ?? "")
            .split(separator: " ").compactMap { Int($0) }.filter { $0 >= 20_000 }
        for count in counts.isEmpty ? [20_000] : counts {
            for shaped in [false, true] { measure(count: count, shaped: shaped) }
        }
    }

    func measure(count: Int, shaped: Bool) {
        let destinations = (0..<1000).map { "dest\($0).example.net" }
        let rules = destinations.enumerated().map { i, d in
            ShapingRule(name: "r\(i)", domains: [d], maxMessageRate: i >= 50 && i < 100 ? Rate(count: 1, period: 3600) : nil)
        }
        var shaper = Shaper(policy: ShapingPolicy(rules: rules, defaults: ShapingRule(name: "default", maxConnections: 1_000_000)))
        for i in 0..<50 { shaper.suspend("r\(i)", until: t0 + 86400, reason: "bench", now: t0) }
        var plain = PerDestinationLimit(limit: 1_000_000)
        var s = Scheduler(maxConnections: 1000, maxConnectionsPerDestination: 1_000_000)
        for n in 0..<count {
            let j = DeliveryJob(id: qid(n), destination: destinations[n % 1000], recipients: [0], priority: n % 19 - 9,
                                arrival: Double(n))
            if shaped { s.add(j, due: 0, shaping: &shaper) } else { s.add(j, due: 0, shaping: &plain) }
        }
        var open = shaped ? s.dispatch(now: t0, shaping: &shaper) : s.dispatch(now: t0, shaping: &plain)
        #expect(open.count == 1000)
        #expect(!shaped || open.allSatisfy { Int($0.connection.lane.group.name.dropFirst())! >= 50 })
        let footprint = Double(s.indexFootprint) / Double(count)

        // Picks on new connections: one closes, dispatch fills its slot from the best open gate.
        let picks = min(100_000, count / 5)
        var clock = ContinuousClock.now
        var done = 0
        for i in 0..<picks {
            let k = i % open.count
            if shaped { s.release(open[k].connection, shaping: &shaper) } else { s.release(open[k].connection, shaping: &plain) }
            let got = shaped ? s.dispatch(now: t0, shaping: &shaper) : s.dispatch(now: t0, shaping: &plain)
            guard got.count == 1 else { break }
            open[k] = got[0]
            done += 1
        }
        let dispatchTime = ContinuousClock.now - clock
        #expect(done == picks)

        // Picks on open connections.
        clock = ContinuousClock.now
        var nexts = 0
        for i in 0..<picks {
            let c = open[i % open.count].connection
            let got = shaped ? s.next(on: c, sent: 1, now: t0, shaping: &shaper) : s.next(on: c, sent: 1, now: t0, shaping: &plain)
            if got != nil { nexts += 1 }
        }
        let nextTime = ContinuousClock.now - clock
        func ns(_ d: Duration, _ n: Int) -> Int {
            Int((Double(d.components.seconds) * 1e9 + Double(d.components.attoseconds) / 1e9) / Double(max(n, 1)))
        }
        print("shaping scheduler at \(count) messages, \(shaped ? "1000 rules, 100 blocked" : "no shaping"): index "
            + "\(Int(footprint)) bytes/message; release+dispatch \(ns(dispatchTime, done)) ns/pick, "
            + "next(on:) \(ns(nextTime, nexts)) ns/pick (\(nexts) picks)")
        #expect(footprint < 400)
        #expect(nexts > 0)
    }
}
