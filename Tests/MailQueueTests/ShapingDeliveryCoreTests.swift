import SMTPProtocol
import Testing
@testable import MailQueue

// The delivery core's shaping calls, as the driver makes them: new connections with their lanes and
// limits, a dead destination held back without attempts, backoff, the postmaster, MX rollup, state
// across a restart, the view and the metrics.

private let t0 = 1_800_000_000.0

private func qid(_ n: Int) -> QueueID { QueueID(microseconds: 1_800_000_000_000_000 + UInt64(n)) }

private func envelope(_ n: Int, _ recipients: [String], sender: String = "app@example.org", user: String? = nil) -> Envelope {
    Envelope(id: qid(n), sender: sender, recipients: recipients.map { Recipient(address: $0) }, arrival: t0,
             client: ClientInfo(ip: "127.0.0.1", helo: "client.example", authenticatedUser: user))
}

private func core(_ policy: ShapingPolicy) -> DeliveryCore {
    DeliveryCore(settings: .init(retry: RetryPolicy(schedule: [60, 300], maxLifetime: 86400), delayWarningTime: 0),
                 scheduler: Scheduler(maxConnections: 100, maxConnectionsPerDestination: 100), shaping: policy, seed: 1)
}

private let defaults = ShapingRule(name: "default", maxConnections: 3, connectionCacheTime: 2)

@Suite struct ShapingDeliveryCoreTests {
    @Test func newConnectionsCarryTheirLaneAndLimits() {
        var c = core(ShapingPolicy(rules: [ShapingRule(name: "big", domains: ["big.example"], maxConnections: 2,
                                                       maxMessagesPerConnection: 2, connectionCacheTime: 5, pool: "bulk")],
                                   defaults: defaults,
                                   sources: [EgressSource(name: "s1", address: "127.0.0.21", ehlo: "mta1.example")],
                                   pools: [EgressPool(name: "bulk", sources: [("s1", 1)])]))
        for n in 0..<5 { c.queue(envelope(n, ["u\(n)@big.example"])) }
        c.queue(envelope(9, ["x@small.example"]))
        let started = c.dispatchConnections(now: t0)
        #expect(started.count == 3)
        let big = started.filter { $0.job.destination == "big.example" }
        #expect(big.count == 2)
        #expect(big.allSatisfy { $0.source == "s1" && $0.rule == "big" && $0.job.pool == "bulk" })
        #expect(big[0].limits == LaneLimits(maxMessagesPerConnection: 2, connectionCacheTime: 5))
        let small = started.first { $0.job.destination == "small.example" }!
        #expect(small.source == "" && small.rule == "default" && small.limits.connectionCacheTime == 2)
        // Messages per connection: the second message goes, the third does not (close it).
        #expect(c.next(on: big[0].connection, sent: 1, now: t0) != nil)
        #expect(c.next(on: big[0].connection, sent: 2, now: t0) == nil)
        c.release(big[0].connection)
        #expect(c.dispatchConnections(now: t0).count == 1, "its slot opens one more")
    }

    /// A connection's nil from `next(on:)` is its own (messages per connection) or its lane's (nothing
    /// ready): the driver asks `hasReadyJob` to know whether the lane's other idle connections may ask.
    @Test func aLaneSaysWhetherItHasAJobReady() {
        var c = core(ShapingPolicy(rules: [ShapingRule(name: "big", domains: ["big.example"], maxConnections: 1,
                                                       maxMessagesPerConnection: 2)],
                                   defaults: defaults))
        for n in 0..<3 { c.queue(envelope(n, ["u\(n)@big.example"])) }
        let lane = c.dispatchConnections(now: t0)[0].connection
        let ready = c.hasReadyJob(on: lane)
        #expect(ready)
        #expect(c.next(on: lane, sent: 2, now: t0) == nil, "this connection carried its two")
        let stillReady = c.hasReadyJob(on: lane)
        #expect(stillReady, "another connection of the lane may take the rest")
        #expect(c.next(on: lane, sent: 1, now: t0) != nil)
        #expect(c.next(on: lane, sent: 1, now: t0) != nil)
        let readyAfter = c.hasReadyJob(on: lane)
        #expect(!readyAfter, "all three are out: none left")
        #expect(c.next(on: lane, sent: 1, now: t0) == nil)
    }

    @Test func aDeadDestinationWaitsWithoutAttemptsThenOneProbe() {
        var c = core(ShapingPolicy(dead: DeadDestinationPolicy(failures: 2, initial: 60, maximum: 600), defaults: defaults))
        for n in 0..<2000 { c.queue(envelope(n, ["u@dead.example"])) }
        var attempts = 0
        var now = t0
        // Connections fail: after two, nothing more opens for 60 s.
        for _ in 0..<2 {
            let started = c.dispatchConnections(now: now)
            attempts += started.count
            for s in started {
                c.connectionFailed(s.connection.lane, reason: "connection refused", now: now)
                c.release(s.connection)
            }
        }
        #expect(attempts <= 6)
        let events = c.takeShapingEvents()
        #expect(events == [.suspended(.domain("dead.example"), source: "", until: t0 + 60, reason: "connection refused")])
        #expect(events[0].logText.contains("delivery temporarily suspended: connection refused"))
        now += 30
        #expect(c.dispatchConnections(now: now).isEmpty)
        let due = c.nextDueTime
        #expect(due == t0 + 60)
        #expect(c.shapingView(now: now).first { $0.group == .domain("dead.example") }?.state
                == .suspended(until: t0 + 60, reason: "connection refused"))
        // At 60 s one probe; it succeeds and the destination opens up at once.
        now = t0 + 60
        let probe = c.dispatchConnections(now: now)
        #expect(probe.count == 1)
        #expect(c.dispatchConnections(now: now).isEmpty, "one probe at a time")
        c.connectionSucceeded(probe[0].connection.lane, now: now)
        #expect(c.takeShapingEvents() == [.resumed(.domain("dead.example"), source: "", why: "probe succeeded")])
        #expect(c.dispatchConnections(now: now).count == 2, "the other two connections of its limit")
    }

    @Test func backoffThrottleThenExpiry() {
        let rule = BackoffRule(name: "toomany", reply: "too many connections", threshold: Threshold(count: 2, window: 60),
                               action: .throttle(rate: nil, connections: 1), duration: 300)
        var c = core(ShapingPolicy(backoff: [rule], defaults: defaults))
        for n in 0..<10 { c.queue(envelope(n, ["u@busy.example"])) }
        let started = c.dispatchConnections(now: t0)
        #expect(started.count == 3)
        for s in started {
            c.replySeen(s.connection.lane, code: 421, enhanced: "4.7.0", text: "Too many connections", now: t0)
            c.release(s.connection)
        }
        #expect(c.takeShapingEvents().count == 1, "one throttle event, not one per reply")
        #expect(c.dispatchConnections(now: t0 + 1).count == 1, "one connection while throttled")
        let dueAgain = c.nextDueTime
        #expect(dueAgain == t0 + 300)
        #expect(c.dispatchConnections(now: t0 + 300).count == 2, "the throttle ended: three again")
        #expect(c.takeShapingEvents() == [.throttleEnded(.domain("busy.example"), source: "", rule: "toomany")])
    }

    @Test func postmasterSuspendAndResume() {
        var c = core(ShapingPolicy(rules: [ShapingRule(name: "prov", domains: [".prov.example"])], defaults: defaults))
        c.queue(envelope(1, ["u@a.prov.example"]))
        #expect(c.suspend("prov", until: t0 + 3600, reason: "asked by the provider", now: t0) == .rule("prov"))
        #expect(c.dispatchConnections(now: t0 + 10).isEmpty)
        #expect(c.resume("a.prov.example", now: t0 + 20) == .rule("prov"))
        #expect(c.dispatchConnections(now: t0 + 20).map(\.job.id) == [qid(1)])
    }

    @Test func mxRollupThroughTheCore() {
        var c = core(ShapingPolicy(rules: [ShapingRule(name: "google", mx: [".google.com"], maxConnections: 1)],
                                   defaults: defaults))
        c.queue(envelope(1, ["a@one.example", "b@two.example"]))
        #expect(c.needsClassification("one.example"))
        #expect(c.dispatchConnections(now: t0).isEmpty)
        #expect(Set(c.destinationsToClassify()) == ["one.example", "two.example"])
        c.classified("one.example", mxHosts: ["aspmx.l.google.com"], now: t0)
        c.classified("two.example", mxHosts: ["mx.other.net"], now: t0)
        #expect(!c.needsClassification("one.example"))
        let started = c.dispatchConnections(now: t0)
        #expect(Set(started.map(\.rule)) == ["google", "default"])
    }

    @Test func stateSurvivesARestart() {
        let policy = ShapingPolicy(rules: [ShapingRule(name: "r", domains: ["a.example"])], defaults: defaults)
        var c = core(policy)
        c.suspend("r", until: t0 + 600, reason: "maintenance", now: t0)
        let snapshot = c.shapingSnapshot(now: t0 + 1)
        var restarted = core(policy)
        restarted.restoreShaping(snapshot, now: t0 + 2)
        restarted.queue(envelope(1, ["u@a.example"]))
        #expect(restarted.dispatchConnections(now: t0 + 3).isEmpty)
        #expect(restarted.dispatchConnections(now: t0 + 600).count == 1)
    }

    @Test func poolsBySenderAndUser() {
        let sources = [EgressSource(name: "s1", address: "127.0.0.21"), EgressSource(name: "s2", address: "127.0.0.22")]
        var c = core(ShapingPolicy(defaults: defaults, sources: sources,
                                   pools: [EgressPool(name: "p1", sources: [("s1", 1)]), EgressPool(name: "p2", sources: [("s2", 1)])],
                                   select: EgressSelect(users: ["alice": "p2"], senderDomains: ["news.example": "p1"],
                                                        defaultPool: "p2")))
        c.queue(envelope(1, ["u@x.example"], sender: "a@news.example"))
        c.queue(envelope(2, ["u@x.example"], sender: "a@news.example", user: "alice"))
        c.queue(envelope(3, ["u@x.example"], sender: "a@other.example"))
        let started = c.dispatchConnections(now: t0)
        #expect(Dictionary(uniqueKeysWithValues: started.map { ($0.job.id, $0.source) }) == [qid(1): "s1", qid(2): "s2", qid(3): "s2"])
    }

    @Test func metricsAndView() {
        var c = core(ShapingPolicy(rules: [ShapingRule(name: "r", domains: ["a.example"])], defaults: defaults))
        c.queue(envelope(1, ["u@a.example", "v@a.example"]))
        c.queue(envelope(2, ["u@b.example"]))
        c.queue(envelope(3, ["u@b.example"]))
        let started = c.dispatchConnections(now: t0)
        let onA = started.first { $0.rule == "r" }!
        _ = c.begin(onA.job)
        _ = c.loaded(qid(1), envelope(1, ["u@a.example", "v@a.example"]), now: t0)
        _ = c.attemptFinished(onA.job, AttemptResult(results: [0: RecipientResult(Reply(250, "2.0.0", "ok")),
                                                               1: RecipientResult(Reply(451, "4.0.0", "later"))]),
                              on: onA.connection.lane, now: t0)
        let m = c.shapingMetrics(now: t0)
        #expect(m[ShapingMetricKey(rule: "r", source: "")] == ShapingCounters(sent: 1, deferred: 1, suspendedSeconds: 0, connections: 1))
        #expect(m[ShapingMetricKey(rule: "default", source: "")]?.connections == 2)
        let view = c.shapingView(now: t0)
        #expect(Set(view.map(\.group)) == [.rule("r"), .domain("b.example")])
        #expect(view.first { $0.group == .rule("r") }?.queued == 1, "the deferred recipient is queued again")
        #expect(view.allSatisfy { $0.state == .active })
    }

    /// `tern queue destinations`' in flight: messages handed to connections of the lane and not yet
    /// attempted, counted by the core from the job's start to its attempt, skip or notStarted.
    @Test func inFlightFromTakenToAnswered() throws {
        var c = core(ShapingPolicy(rules: [ShapingRule(name: "r", domains: ["a.example"], maxConnections: 2)],
                                   defaults: defaults))
        let envelopes = (0..<4).map { envelope($0, ["u\($0)@a.example", "v\($0)@a.example"]) }
        for e in envelopes { c.queue(e) }
        let byID = Dictionary(uniqueKeysWithValues: envelopes.map { ($0.id, $0) })
        func inFlight() -> Int { c.shapingView(now: t0).first { $0.group == .rule("r") }?.inFlight ?? -1 }
        let started = c.dispatchConnections(now: t0)
        #expect(started.count == 2 && inFlight() == 2, "a message each, two recipients counting once")
        let first = started[0], second = started[1]
        #expect(c.begin(first.job) == [.load(first.job.id)])
        let attempt = c.loaded(first.job.id, byID[first.job.id], now: t0)
        #expect(attempt.contains { if case .attempt = $0 { return true } else { return false } })
        _ = c.attemptFinished(first.job, AttemptResult(results: [0: RecipientResult(Reply(250, "2.0.0", "ok")),
                                                                 1: RecipientResult(Reply(250, "2.0.0", "ok"))]),
                              on: first.connection.lane, now: t0 + 1)
        #expect(inFlight() == 1)
        // The first connection takes another, then closes while it is read from the spool: in flight
        // until the driver says it was not started; the second's still is.
        let taken = c.next(on: first.connection, sent: 1, now: t0 + 1)
        let next = try #require(taken)
        #expect(inFlight() == 2)
        _ = c.begin(next)
        c.release(first.connection)
        #expect(inFlight() == 2)
        _ = c.notStarted(next, on: first.connection.lane, now: t0 + 2)
        #expect(inFlight() == 1)
        // The second's job is skipped (deleted meanwhile).
        c.skipped(on: second.connection.lane)
        #expect(inFlight() == 0)
        c.release(second.connection)
        #expect(c.shapingView(now: t0 + 2).allSatisfy { $0.inFlight == 0 && $0.connections == 0 })
    }
}
