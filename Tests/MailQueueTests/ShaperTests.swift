import Testing
@testable import MailQueue

// The shaping decisions on virtual time: rule matching, GCRA spacing, source choice, dead
// destinations, backoff rules, the postmaster, snapshots.

private let t0 = 1_800_000_000.0

private func policy(rules: [ShapingRule] = [], backoff: [BackoffRule] = [], dead: DeadDestinationPolicy = .init(),
                    sources: [EgressSource] = [], pools: [EgressPool] = [], select: EgressSelect = .init()) -> ShapingPolicy {
    ShapingPolicy(rules: rules, backoff: backoff, dead: dead,
                  defaults: ShapingRule(name: "default", maxConnections: 2, connectionCacheTime: 2),
                  sources: sources, pools: pools, select: select)
}

@Suite struct ShaperMatchingTests {
    @Test func exactThenLongestSuffixThenMX() {
        var s = Shaper(policy: policy(rules: [
            ShapingRule(name: "broad", domains: [".example.com"]),
            ShapingRule(name: "narrow", domains: [".mail.example.com", "gmail.com"]),
            ShapingRule(name: "exact", domains: ["a.mail.example.com"]),
            ShapingRule(name: "dup", domains: ["gmail.com", ".example.com"]),  // listed later: loses ties
            ShapingRule(name: "google", mx: [".google.com", "aspmx.l.google.com"]),
            ShapingRule(name: "googlemail", mx: [".l.google.com"]),
        ]))
        #expect(s.group(of: "a.mail.example.com") == .rule("exact"))
        #expect(s.group(of: "b.mail.example.com") == .rule("narrow"))
        #expect(s.group(of: "x.example.com") == .rule("broad"))
        #expect(s.group(of: "gmail.com") == .rule("narrow"))
        #expect(!s.needsClassification("x.example.com"))
        // example.com itself is not below .example.com: it needs its MX names.
        #expect(s.needsClassification("example.com"))
        #expect(s.group(of: "example.com") == nil)
        s.classified("example.com", mxHosts: ["alt1.aspmx.l.google.com", "mx.other.net"], now: t0)
        #expect(s.group(of: "example.com") == .rule("googlemail"), "the longest MX suffix")
        s.classified("b.org", mxHosts: ["ASPMX.L.Google.com."], now: t0)
        #expect(s.group(of: "b.org") == .rule("google"), "an exact MX host beats any suffix")
        s.classified("c.org", mxHosts: [], now: t0)
        #expect(s.group(of: "c.org") == .domain("c.org"), "no MX rule: its own group")
        #expect(!s.needsClassification("c.org"))
        // The answer is trusted for an hour, then asked again.
        s.tick(now: t0 + Shaper.classificationLifetime + 1)
        #expect(s.needsClassification("c.org"))
        #expect(s.group(of: "c.org") == nil)
    }

    @Test func withoutMXRulesEveryUnmatchedDomainIsItsOwnGroup() {
        var s = Shaper(policy: policy(rules: [ShapingRule(name: "r", domains: ["a.example"])]))
        #expect(s.group(of: "b.example") == .domain("b.example"))
        #expect(!s.needsClassification("b.example"))
    }

    @Test func thousandRulesMatchByIndex() {
        let rules = (0..<1000).map { ShapingRule(name: "r\($0)", domains: ["d\($0).example", ".s\($0).example"]) }
        var s = Shaper(policy: policy(rules: rules))
        #expect(s.group(of: "d999.example") == .rule("r999"))
        #expect(s.group(of: "x.y.s500.example") == .rule("r500"))
        #expect(s.group(of: "nowhere.example") == .domain("nowhere.example"))
    }

    @Test func poolSelectionOrder() {
        let pools = ["userpool", "bulk", "rulepool", "rp", "main"].map { EgressPool(name: $0, sources: [("a", 1)]) }
        let s = Shaper(policy: policy(rules: [ShapingRule(name: "r", domains: ["to.example"], pool: "rulepool")],
                                      sources: [EgressSource(name: "a", address: "127.0.0.21")], pools: pools,
                                      select: EgressSelect(users: ["alice": "userpool"],
                                                           senderDomains: ["news.example.org": "bulk"],
                                                           defaultPool: "main")))
        #expect(s.pool(sender: "x@news.example.org", authenticatedUser: "alice", destination: "to.example") == "userpool")
        #expect(s.pool(sender: "x@NEWS.example.org", authenticatedUser: "bob", destination: "to.example") == "bulk")
        #expect(s.pool(sender: "x@other.org", authenticatedUser: nil, destination: "to.example") == "rulepool")
        #expect(s.pool(sender: "x@other.org", authenticatedUser: nil, destination: "b.example", routePool: "rp") == "rp")
        #expect(s.pool(sender: "x@other.org", authenticatedUser: nil, destination: "b.example") == "main")
    }
}

@Suite struct ShaperLimitTests {
    @Test func connectionLimitPerLane() {
        var s = Shaper(policy: policy())
        let g = ShapingGroup.domain("a.example")
        #expect(s.admitConnection(group: g, pool: nil, connections: 0, now: t0, commit: true) == .open(source: ""))
        #expect(s.admitConnection(group: g, pool: nil, connections: 1, now: t0, commit: true) == .open(source: ""))
        #expect(s.admitConnection(group: g, pool: nil, connections: 2, now: t0, commit: true) == .blocked(until: nil))
        s.connectionClosed(ShapingLane(group: g, source: ""))
        #expect(s.takeChangedGroups() == [g])
        #expect(s.admitConnection(group: g, pool: nil, connections: 1, now: t0, commit: false) == .open(source: ""))
    }

    @Test func messageRateIsSmoothNotBursty() {
        var s = Shaper(policy: policy(rules: [ShapingRule(name: "r", domains: ["a.example"], maxConnections: 100,
                                                          maxMessageRate: Rate(count: 20, period: 1))]))
        let g = ShapingGroup.rule("r")
        let lane = ShapingLane(group: g, source: "")
        #expect(s.admitConnection(group: g, pool: nil, connections: 0, now: t0, commit: true) == .open(source: ""))
        // The next message is allowed 1/20 s later, not before; a second connection waits too.
        // (Less GCRA's tolerance of 1 ms, the loop's timer granularity.)
        #expect(s.admitMessage(on: lane, sent: 1, now: t0 + 0.01) == .wait(until: t0 + 0.05 - Rate.tolerance))
        #expect(s.admitConnection(group: g, pool: nil, connections: 1, now: t0 + 0.01, commit: true)
                == .blocked(until: t0 + 0.05 - Rate.tolerance))
        // Over ten seconds of asking every millisecond: at most 20 per second, evenly.
        var times: [Double] = [t0]
        var now = t0
        while now < t0 + 10 {
            now += 0.001
            if s.admitMessage(on: lane, sent: 1, now: now) == .go { times.append(now) }
        }
        for start in stride(from: t0, to: t0 + 9, by: 0.1) {
            #expect(times.filter { $0 >= start && $0 < start + 1 }.count <= 21)
        }
        #expect(times.count >= 190)
        // Idle for a minute: no saved-up burst.
        now += 60
        #expect(s.admitMessage(on: lane, sent: 1, now: now) == .go)
        #expect(s.admitMessage(on: lane, sent: 1, now: now) != .go)
    }

    /// A high rate is not cut to one message per timer tick: connections that finish in the same loop
    /// iteration (the same `now`) go on within 1 ms of the steady schedule, and no further.
    @Test func aHighRateToleratesOneMillisecondOfBurst() {
        var s = Shaper(policy: policy(rules: [ShapingRule(name: "r", domains: ["a.example"], maxConnections: 100,
                                                          maxMessageRate: Rate(count: 100_000, period: 1))]))
        let g = ShapingGroup.rule("r")
        let lane = ShapingLane(group: g, source: "")
        #expect(s.admitConnection(group: g, pool: nil, connections: 0, now: t0, commit: true) == .open(source: ""))
        var admitted = 1
        while s.admitMessage(on: lane, sent: 1, now: t0) == .go { admitted += 1 }
        // 10 µs apart: the first, then as many as fit in 1 ms ahead (floating point may take one off).
        #expect(admitted >= 100 && admitted <= 101)
        if case .wait(let until?) = s.admitMessage(on: lane, sent: 1, now: t0) {
            #expect(until > t0 && until <= t0 + 0.0001)
        } else {
            Issue.record("the burst must end")
        }
        // Steady: at most 100,000 in a second, plus the burst.
        var now = t0
        var inSecond = 0
        while now < t0 + 1 {
            now += 0.0005
            while s.admitMessage(on: lane, sent: 1, now: now) == .go { inSecond += 1 }
        }
        #expect(inSecond <= 100_000 + 101)
        #expect(inSecond >= 99_000)
    }

    @Test func connectionRateAndMessagesPerConnection() {
        var s = Shaper(policy: policy(rules: [ShapingRule(name: "r", domains: ["a.example"], maxConnections: 10,
                                                          maxMessagesPerConnection: 3,
                                                          maxConnectionRate: Rate(count: 2, period: 1))]))
        let g = ShapingGroup.rule("r")
        #expect(s.admitConnection(group: g, pool: nil, connections: 0, now: t0, commit: true) == .open(source: ""))
        #expect(s.admitConnection(group: g, pool: nil, connections: 1, now: t0, commit: true)
                == .blocked(until: t0 + 0.5 - Rate.tolerance))
        #expect(s.admitConnection(group: g, pool: nil, connections: 1, now: t0 + 0.5, commit: true) == .open(source: ""))
        let lane = ShapingLane(group: g, source: "")
        #expect(s.admitMessage(on: lane, sent: 2, now: t0 + 1) == .go)
        #expect(s.admitMessage(on: lane, sent: 3, now: t0 + 1) == .close)
        #expect(s.limits(of: g) == LaneLimits(maxMessagesPerConnection: 3, connectionCacheTime: 2))
    }

    @Test func weightedSourcesTakeTurnsSmoothly() {
        let p = policy(rules: [ShapingRule(name: "r", domains: ["a.example"], maxConnections: 100)],
                       sources: [EgressSource(name: "a", address: "127.0.0.21"), EgressSource(name: "b", address: "127.0.0.22")],
                       pools: [EgressPool(name: "bulk", sources: [("a", 2), ("b", 1)])])
        var s = Shaper(policy: p)
        let g = ShapingGroup.rule("r")
        var picks: [String] = []
        for _ in 0..<6 {
            if case .open(let source) = s.admitConnection(group: g, pool: "bulk", connections: 0, now: t0, commit: true) {
                picks.append(source)
            }
        }
        #expect(picks == ["a", "b", "a", "a", "b", "a"])  // nginx: a a b spread as a b a
        // With a's lane suspended, b takes every connection.
        s.connectionFailed(ShapingLane(group: g, source: "a"), reason: "x", now: t0)
        for _ in 0..<4 { s.connectionFailed(ShapingLane(group: g, source: "a"), reason: "refused", now: t0) }
        #expect(s.admitConnection(group: g, pool: "bulk", connections: 0, now: t0, commit: true) == .open(source: "b"))
        #expect(s.admitConnection(group: g, pool: "bulk", connections: 0, now: t0, commit: true) == .open(source: "b"))
    }
}

@Suite struct ShaperBackoffTests {
    @Test func deadDestinationSuspendsProbesAndDoubles() {
        var s = Shaper(policy: policy(dead: DeadDestinationPolicy(failures: 3, initial: 60, maximum: 200)))
        let g = ShapingGroup.domain("dead.example")
        let lane = ShapingLane(group: g, source: "")
        for _ in 0..<2 { s.connectionFailed(lane, reason: "connection refused", now: t0) }
        #expect(s.admitConnection(group: g, pool: nil, connections: 0, now: t0, commit: false) == .open(source: ""))
        s.connectionFailed(lane, reason: "connection refused", now: t0)
        #expect(s.takeEvents() == [.suspended(g, source: "", until: t0 + 60, reason: "connection refused")])
        #expect(s.admitConnection(group: g, pool: nil, connections: 0, now: t0 + 59, commit: true) == .blocked(until: t0 + 60))
        #expect(s.admitMessage(on: lane, sent: 1, now: t0 + 59) == .wait(until: t0 + 60))
        // At 60 s: one probe, no second connection while it runs.
        #expect(s.admitConnection(group: g, pool: nil, connections: 0, now: t0 + 60, commit: true) == .open(source: ""))
        #expect(s.admitConnection(group: g, pool: nil, connections: 1, now: t0 + 60, commit: true) == .blocked(until: nil))
        s.connectionFailed(lane, reason: "timed out", now: t0 + 61)
        s.connectionClosed(lane)
        #expect(s.takeEvents() == [.suspended(g, source: "", until: t0 + 181, reason: "timed out")])
        #expect(s.admitConnection(group: g, pool: nil, connections: 0, now: t0 + 181, commit: true) == .open(source: ""))
        s.connectionFailed(lane, reason: "timed out", now: t0 + 182)
        #expect(s.takeEvents() == [.suspended(g, source: "", until: t0 + 382, reason: "timed out")], "capped at 200 s")
        s.connectionClosed(lane)
        #expect(s.admitConnection(group: g, pool: nil, connections: 0, now: t0 + 382, commit: true) == .open(source: ""))
        s.connectionSucceeded(lane, now: t0 + 383)
        #expect(s.takeEvents() == [.resumed(g, source: "", why: "probe succeeded")])
        #expect(s.admitConnection(group: g, pool: nil, connections: 1, now: t0 + 383, commit: true) == .open(source: ""))
    }

    @Test func thresholdInWindowThenThrottleThenExpiry() {
        let rule = BackoffRule(name: "slow", reply: "421 4\\.7\\.0|too many connections",
                               threshold: Threshold(count: 3, window: 300),
                               action: .throttle(rate: Rate(count: 1, period: 1), connections: 1), duration: 600)
        var s = Shaper(policy: policy(rules: [ShapingRule(name: "r", domains: ["a.example"], maxConnections: 5)],
                                      backoff: [rule]))
        let g = ShapingGroup.rule("r")
        let lane = ShapingLane(group: g, source: "")
        s.replySeen(lane, code: 421, enhanced: "4.7.0", text: "slow down", now: t0)
        s.replySeen(lane, code: 450, enhanced: nil, text: "mailbox busy", now: t0 + 1)  // no match
        s.replySeen(lane, code: 421, enhanced: nil, text: "Too Many Connections", now: t0 + 200)
        s.replySeen(lane, code: 421, enhanced: "4.7.0", text: "later", now: t0 + 301)  // the first fell out
        #expect(s.takeEvents().isEmpty)
        s.replySeen(lane, code: 421, enhanced: "4.7.0", text: "later", now: t0 + 302)
        #expect(s.takeEvents() == [.throttled(g, source: "", rule: "slow", rate: Rate(count: 1, period: 1),
                                              connections: 1, until: t0 + 902)])
        #expect(s.admitConnection(group: g, pool: nil, connections: 0, now: t0 + 303, commit: true) == .open(source: ""))
        #expect(s.admitConnection(group: g, pool: nil, connections: 1, now: t0 + 310, commit: true) == .blocked(until: t0 + 902))
        #expect(s.admitMessage(on: lane, sent: 1, now: t0 + 303.5) == .wait(until: t0 + 304 - Rate.tolerance))
        #expect(s.laneViews(now: t0 + 500).first?.state == .throttled(until: t0 + 902, rule: "slow", rate: "1/s", connections: 1))
        // A second trigger while it is active extends it.
        for t in [600.0, 601, 602] { s.replySeen(lane, code: 421, enhanced: "4.7.0", text: "later", now: t0 + t) }
        #expect(s.takeEvents() == [.throttled(g, source: "", rule: "slow", rate: Rate(count: 1, period: 1),
                                              connections: 1, until: t0 + 1202)])
        s.tick(now: t0 + 902)
        #expect(s.takeEvents().isEmpty, "extended")
        s.tick(now: t0 + 1202)
        #expect(s.takeEvents() == [.throttleEnded(g, source: "", rule: "slow")])
        #expect(s.admitConnection(group: g, pool: nil, connections: 1, now: t0 + 1202, commit: true) == .open(source: ""))
    }

    @Test func suspendRuleAndPostmaster() {
        let rule = BackoffRule(name: "stop", reply: "try again later", threshold: Threshold(count: 1, window: 60),
                               action: .suspend, duration: 600, rules: ["r"])
        var s = Shaper(policy: policy(rules: [ShapingRule(name: "r", domains: ["a.example"])], backoff: [rule]))
        let lane = ShapingLane(group: .rule("r"), source: "")
        s.replySeen(ShapingLane(group: .domain("other.example"), source: ""), code: 451, enhanced: nil,
                    text: "try again later", now: t0)
        #expect(s.takeEvents().isEmpty, "the rule is restricted to r")
        s.replySeen(lane, code: 451, enhanced: nil, text: "Try again LATER", now: t0)
        #expect(s.takeEvents() == [.suspended(.rule("r"), source: "", until: t0 + 600, reason: "stop: 451 Try again LATER")])
        #expect(ShapingEvent.deferral("x") == "delivery temporarily suspended: x")

        // The postmaster: a domain's group, every source, and resume lifts everything.
        let g = s.suspend("a.example", until: t0 + 3600, reason: "provider asked", now: t0)
        #expect(g == .rule("r"))
        #expect(s.admitConnection(group: g, pool: nil, connections: 0, now: t0 + 700, commit: true) == .blocked(until: t0 + 3600))
        s.resume("r", now: t0 + 800)
        #expect(s.admitConnection(group: g, pool: nil, connections: 0, now: t0 + 800, commit: true) == .open(source: ""))
        #expect(s.takeEvents().last == .resumed(g, source: nil, why: "postmaster"))
    }

    @Test func snapshotRestoreAndPolicyUpdate() throws {
        let backoff = BackoffRule(name: "slow", reply: "421", threshold: Threshold(count: 1, window: 60),
                                  action: .throttle(rate: Rate(count: 1, period: 60), connections: nil), duration: 600)
        let p = policy(rules: [ShapingRule(name: "r", domains: ["a.example"], maxMessageRate: Rate(count: 1, period: 10)),
                               ShapingRule(name: "gone", domains: ["b.example"])], backoff: [backoff])
        var s = Shaper(policy: p)
        s.replySeen(ShapingLane(group: .rule("r"), source: ""), code: 421, enhanced: nil, text: "x", now: t0)
        _ = s.admitConnection(group: .rule("r"), pool: nil, connections: 0, now: t0, commit: true)
        s.suspend("gone", until: t0 + 100, reason: "why", now: t0)
        for _ in 0..<5 { s.connectionFailed(ShapingLane(group: .domain("d.example"), source: ""), reason: "refused", now: t0) }
        let snap = s.snapshot(now: t0 + 1)
        let decoded = try JSONDecoder_roundTrip(snap)
        #expect(decoded == snap)

        var fresh = Shaper(policy: policy(rules: [ShapingRule(name: "r", domains: ["a.example"],
                                                              maxMessageRate: Rate(count: 1, period: 10))],
                                          backoff: [backoff]))
        fresh.restore(decoded, now: t0 + 2)
        // The throttle (1/min) and the rate time survive: no burst after a restart.
        #expect(fresh.admitConnection(group: .rule("r"), pool: nil, connections: 0, now: t0 + 2, commit: true) == .blocked(until: t0 + 60 - Rate.tolerance))
        #expect(fresh.admitConnection(group: .domain("d.example"), pool: nil, connections: 0, now: t0 + 2, commit: true) == .blocked(until: t0 + 60))
        #expect(fresh.laneViews(now: t0 + 2).allSatisfy { $0.group != .rule("gone") }, "a rule no longer configured")

        s.updatePolicy(policy(rules: [ShapingRule(name: "r", domains: ["a.example"])]))
        #expect(s.admitConnection(group: .rule("gone"), pool: nil, connections: 0, now: t0 + 3, commit: false) == .open(source: ""))
        #expect(s.admitConnection(group: .domain("d.example"), pool: nil, connections: 0, now: t0 + 3, commit: false) == .blocked(until: t0 + 60))
    }

    @Test func metricsPerRuleNeverPerDomain() {
        var s = Shaper(policy: policy(rules: [ShapingRule(name: "r", domains: ["a.example"])]))
        _ = s.admitConnection(group: .domain("x.example"), pool: nil, connections: 0, now: t0, commit: true)
        _ = s.admitConnection(group: .rule("r"), pool: nil, connections: 0, now: t0, commit: true)
        s.countAttempt(ShapingLane(group: .domain("y.example"), source: ""), sent: 2, deferred: 1)
        let m = s.metrics(now: t0)
        #expect(Set(m.keys.map(\.rule)) == ["default", "r"])
        #expect(m[ShapingMetricKey(rule: "default", source: "")] == ShapingCounters(sent: 2, deferred: 1, suspendedSeconds: 0, connections: 1))
    }

    /// In flight: a message handed to a connection (its first, or one more on it) until it was
    /// attempted or given up; a lane's counts outlive the lane in its rule's metrics.
    @Test func inFlightPerLaneAndCountsKeptWhenTheLaneGoes() {
        var s = Shaper(policy: policy(rules: [ShapingRule(name: "r", domains: ["a.example"], maxConnections: 3)]))
        let lane = ShapingLane(group: .rule("r"), source: "")
        func inFlight() -> Int? { s.laneViews(now: t0).first { $0.group == .rule("r") }?.inFlight }
        #expect(s.admitConnection(group: .rule("r"), pool: nil, connections: 0, now: t0, commit: true) == .open(source: ""))
        #expect(s.admitConnection(group: .rule("r"), pool: nil, connections: 1, now: t0, commit: true) == .open(source: ""))
        #expect(inFlight() == 2, "each new connection carries its first message")
        s.countAttempt(lane, sent: 1, deferred: 0)
        #expect(inFlight() == 1)
        #expect(s.admitMessage(on: lane, sent: 1, now: t0) == .go)
        #expect(inFlight() == 2, "a second message on the first connection")
        s.notAttempted(lane)  // skipped: deleted meanwhile
        s.countAttempt(lane, sent: 0, deferred: 2)
        #expect(inFlight() == 0)
        s.countAttempt(lane, sent: 0, deferred: 0)
        #expect(inFlight() == 0, "never below zero")
        // A connection that closes with its message not begun (read from the spool meanwhile): in
        // flight until the driver says it was not attempted, even with no connection left.
        #expect(s.admitMessage(on: lane, sent: 1, now: t0) == .go)
        s.connectionClosed(lane)
        s.connectionClosed(lane)
        #expect(inFlight() == 1)
        s.notAttempted(lane)
        #expect(inFlight() == nil, "no connection, nothing in flight: the lane is forgotten")
        #expect(s.metrics(now: t0)[ShapingMetricKey(rule: "r", source: "")]
                    == ShapingCounters(sent: 1, deferred: 2, suspendedSeconds: 0, connections: 0))
        // Counted again on a new lane: added to what the forgotten one left.
        _ = s.admitConnection(group: .rule("r"), pool: nil, connections: 0, now: t0, commit: true)
        s.countAttempt(lane, sent: 4, deferred: 0)
        #expect(s.metrics(now: t0)[ShapingMetricKey(rule: "r", source: "")]
                    == ShapingCounters(sent: 5, deferred: 2, suspendedSeconds: 0, connections: 1))
    }

    /// tern_shaping_suspended_seconds_total counts the postmaster's suspensions too (source "": every
    /// source), while they hold, when lifted, extended, or run out.
    @Test func postmasterSuspensionCountsSuspendedSeconds() {
        var s = Shaper(policy: policy(rules: [ShapingRule(name: "r", domains: ["a.example"])]))
        let key = ShapingMetricKey(rule: "r", source: "")
        func seconds(_ now: Double) -> Double? { s.metrics(now: now)[key]?.suspendedSeconds }
        s.suspend("a.example", until: t0 + 100, reason: "provider asked", now: t0)
        #expect(seconds(t0 + 30) == 30, "while it holds")
        s.suspend("r", until: t0 + 200, reason: "longer", now: t0 + 50)
        #expect(seconds(t0 + 60) == 60, "extended: counted from when it began")
        s.resume("r", now: t0 + 70)
        #expect(seconds(t0 + 500) == 70, "lifted by the postmaster")
        s.suspend("r", until: t0 + 600, reason: "again", now: t0 + 500)
        s.tick(now: t0 + 1000)
        #expect(seconds(t0 + 1000) == 170, "ran out at its time")
        s.suspend("r", until: t0 + 1010, reason: "short", now: t0 + 1000)
        s.suspend("r", until: t0 + 1100, reason: "after the last ran out unnoticed", now: t0 + 1050)
        #expect(seconds(t0 + 1060) == 190)
        // Unmatched destinations are "default", never their own name.
        s.suspend("b.example", until: t0 + 2000, reason: "x", now: t0 + 1055)
        #expect(s.metrics(now: t0 + 1060)[ShapingMetricKey(rule: "default", source: "")]?.suspendedSeconds == 5)
        #expect(s.metrics(now: t0 + 1060).keys.allSatisfy { $0.rule == "r" || $0.rule == "default" })
    }
}

import Foundation

private func JSONDecoder_roundTrip(_ s: ShapingSnapshot) throws -> ShapingSnapshot {
    try JSONDecoder().decode(ShapingSnapshot.self, from: JSONEncoder().encode(s))
}

/// Shaper.applyShared: another node's suspensions, throttles and resumes hold here too (issue 20).
@Suite struct ShaperSharedTests {
    @Test func anotherNodesDecisionsHoldHere() {
        var s = Shaper(policy: policy(rules: [ShapingRule(name: "r", domains: ["a.example"])]))
        // The postmaster's suspension of a rule (every source).
        s.applyShared(.suspended(.rule("r"), source: nil, until: t0 + 600, reason: "from n1"), now: t0)
        #expect(s.admitConnection(group: .rule("r"), pool: nil, connections: 0, now: t0 + 1, commit: true) == .blocked(until: t0 + 600))
        #expect(s.takeEvents() == [.suspended(.rule("r"), source: nil, until: t0 + 600, reason: "from n1")])
        // Its resume.
        s.applyShared(.resumed(.rule("r"), source: nil, why: "postmaster"), now: t0 + 2)
        #expect(s.admitConnection(group: .rule("r"), pool: nil, connections: 0, now: t0 + 2, commit: true) == .open(source: ""))
        // Automation's lane suspension (a dead destination, a [[backoff]] rule) of a domain.
        let lane = ShapingLane(group: .domain("b.example"), source: "")
        s.applyShared(.suspended(lane.group, source: "", until: t0 + 300, reason: "dead"), now: t0 + 3)
        #expect(s.admitConnection(group: lane.group, pool: nil, connections: 0, now: t0 + 4, commit: true) == .blocked(until: t0 + 300))
        s.tick(now: t0 + 300)
        #expect(s.admitConnection(group: lane.group, pool: nil, connections: 0, now: t0 + 300, commit: true) == .open(source: ""))
    }

    @Test func aThrottleLowersTheLimitsUntilItEnds() {
        var s = Shaper(policy: policy(rules: [ShapingRule(name: "r", domains: ["a.example"], maxConnections: 10)]))
        _ = s.takeEvents()
        s.applyShared(.throttled(.rule("r"), source: "", rule: "slow", rate: nil, connections: 1, until: t0 + 100), now: t0)
        #expect(s.takeEvents() == [.throttled(.rule("r"), source: "", rule: "slow", rate: nil, connections: 1, until: t0 + 100)])
        // One connection open: a second waits for the throttle to end.
        #expect(s.admitConnection(group: .rule("r"), pool: nil, connections: 0, now: t0 + 1, commit: true) == .open(source: ""))
        #expect(s.admitConnection(group: .rule("r"), pool: nil, connections: 1, now: t0 + 1, commit: false) == .blocked(until: t0 + 100))
        s.tick(now: t0 + 100)
        #expect(s.takeEvents() == [.throttleEnded(.rule("r"), source: "", rule: "slow")])
        #expect(s.admitConnection(group: .rule("r"), pool: nil, connections: 1, now: t0 + 100, commit: false) == .open(source: ""))
    }

    @Test func overOrUnknownChangesNothing() {
        var s = Shaper(policy: policy(rules: [ShapingRule(name: "r", domains: ["a.example"])]))
        s.applyShared(.suspended(.rule("r"), source: nil, until: t0 - 1, reason: "over"), now: t0)
        s.applyShared(.suspended(.rule("not-here"), source: nil, until: t0 + 600, reason: "unknown rule"), now: t0)
        s.applyShared(.throttled(.rule("not-here"), source: "", rule: "x", rate: nil, connections: 1, until: t0 + 60), now: t0)
        s.applyShared(.resumed(.rule("r"), source: nil, why: "probe succeeded"), now: t0)  // a node's own, not shared
        #expect(s.takeEvents().isEmpty)
        #expect(s.admitConnection(group: .rule("r"), pool: nil, connections: 0, now: t0, commit: true) == .open(source: ""))
    }
}

/// Shaper's shared limits: a rule's connections need the cluster's leases and its messages its permits;
/// with Redis down, this node's share (issue 20).
@Suite struct ShaperClusterLimitTests {
    let lane = ShapingLane(group: .rule("r"), source: "")
    func shaper() -> Shaper {
        var s = Shaper(policy: policy(rules: [ShapingRule(name: "r", domains: ["a.example"], maxConnections: 6,
                                                          maxMessageRate: Rate(count: 30, period: 1))]))
        s.setSharing(.shared)
        _ = s.takeChangedGroups()
        return s
    }

    @Test func aConnectionWaitsForALeaseAndAPermit() {
        var s = shaper()
        #expect(s.admitConnection(group: lane.group, pool: nil, connections: 0, now: t0, commit: true) == .blocked(until: nil))
        #expect(s.takeSharedWants() == [.init(lane: lane, kind: .lease), .init(lane: lane, kind: .message)])
        s.grantShared(.init(lane: lane, kind: .lease), count: 1, until: .infinity)
        #expect(s.takeChangedGroups() == [lane.group], "a grant wakes the gate")
        #expect(s.admitConnection(group: lane.group, pool: nil, connections: 0, now: t0, commit: true) == .blocked(until: nil))
        #expect(s.takeSharedWants() == [.init(lane: lane, kind: .message)], "the lease is held; the permit is still wanted")
        s.grantShared(.init(lane: lane, kind: .message), count: 2, until: t0 + 0.05)
        #expect(s.admitConnection(group: lane.group, pool: nil, connections: 0, now: t0, commit: true) == .open(source: ""))
        // A second connection needs a second lease.
        #expect(s.admitConnection(group: lane.group, pool: nil, connections: 1, now: t0, commit: false) == .blocked(until: nil))
        #expect(s.takeSharedWants() == [.init(lane: lane, kind: .lease)])
        // Messages: one permit left; then wait for more.
        #expect(s.admitMessage(on: lane, sent: 1, now: t0 + 0.04) == .go)
        #expect(s.admitMessage(on: lane, sent: 2, now: t0 + 0.05) == .wait(until: nil))
        #expect(s.takeSharedWants() == [.init(lane: lane, kind: .message)])
        // Permits not used in time are gone.
        s.grantShared(.init(lane: lane, kind: .message), count: 5, until: t0 + 0.1)
        #expect(s.admitMessage(on: lane, sent: 2, now: t0 + 0.2) == .wait(until: nil))
    }

    @Test func aClosedConnectionGivesItsLeaseBack() {
        var s = shaper()
        s.grantShared(.init(lane: lane, kind: .lease), count: 1, until: .infinity)
        s.grantShared(.init(lane: lane, kind: .message), count: 1, until: t0 + 1)
        #expect(s.admitConnection(group: lane.group, pool: nil, connections: 0, now: t0, commit: true) == .open(source: ""))
        #expect(s.takeSharedReleases().isEmpty)
        s.connectionClosed(lane)
        #expect(s.takeSharedReleases() == [lane: 1])
        #expect(s.takeSharedReleases().isEmpty)
    }

    @Test func leasesNotUsedGoBack() {
        var s = shaper()
        s.grantShared(.init(lane: lane, kind: .lease), count: 2, until: .infinity)
        s.grantShared(.init(lane: lane, kind: .message), count: 1, until: t0 + 1)
        #expect(s.admitConnection(group: lane.group, pool: nil, connections: 0, now: t0, commit: true) == .open(source: ""))
        #expect(s.takeIdleLeases() == [lane: 1], "one connection open, two leases held")
        #expect(s.takeIdleLeases().isEmpty)
        s.connectionClosed(lane)
        #expect(s.takeSharedReleases() == [lane: 1])
        #expect(s.takeIdleLeases().isEmpty)
    }

    /// Three connections open on the lane, each with its lease.
    func threeOpen() -> Shaper {
        var s = shaper()
        s.grantShared(.init(lane: lane, kind: .lease), count: 3, until: .infinity)
        s.grantShared(.init(lane: lane, kind: .message), count: 3, until: t0 + 1)
        for open in 0..<3 {
            #expect(s.admitConnection(group: lane.group, pool: nil, connections: open, now: t0 + Double(open) * 0.1,
                                      commit: true) == .open(source: ""))
        }
        return s
    }

    @Test func connectionsAboveTheShareCloseOneEach() {
        var s = threeOpen()
        var closes: [Bool] = [s.takeShed(lane)]  // nothing asked yet
        s.shed(lane, count: 5)  // more than are open: at most the three
        for _ in 0..<4 { closes.append(s.takeShed(lane)) }
        closes.append(s.takeShed(ShapingLane(group: .rule("other"), source: "")))
        #expect(closes == [false, true, true, true, false, false])
        // A later renewal that finds the share kept asks for none: what was asked and not done is dropped.
        s = threeOpen()
        s.shed(lane, count: 2)
        s.shed(lane, count: 0)
        let afterNone = s.takeShed(lane)
        #expect(!afterNone)
        // Not shared (Redis down): nothing to shed, and what was asked is forgotten.
        s.shed(lane, count: 1)
        s.setSharing(.fallback(nodes: 3))
        let afterFallback = s.takeShed(lane)
        s.shed(lane, count: 1)
        let whileFallback = s.takeShed(lane)
        #expect(!afterFallback && !whileFallback)
    }

    @Test func connectionsAlreadyClosingForTheShareAreNotAskedAgain() {
        var s = threeOpen()
        var answers: [Int] = [s.shed(lane, count: 1)]
        let first = s.takeShed(lane)  // a busy one finishes its message and closes
        // The next renewal comes before it has closed (its lease still in Redis): nothing more.
        answers.append(s.shed(lane, count: 1))
        s.connectionClosed(lane)
        // Closed, and the next renewal still finds one too many: one more.
        answers.append(s.shed(lane, count: 1))
        #expect(first && answers == [1, 0, 1])
        // Idle ones closed by the driver count as closing too; the marks left are for busy ones.
        let more = s.shed(lane, count: 2)
        s.closingIdle(lane, count: 1)
        let marks = [s.takeShed(lane), s.takeShed(lane)]
        #expect(more == 2 && marks == [true, false])
        #expect(s.shed(lane, count: 2) == 0, "both already closing")
    }

    @Test func aRefusedWantIsAskedAgainOnlyWhileMailWaits() {
        var s = shaper()
        #expect(s.admitConnection(group: lane.group, pool: nil, connections: 0, now: t0, commit: true) == .blocked(until: nil))
        #expect(s.takeSharedWants().contains(.init(lane: lane, kind: .lease)))
        // Refused: after a while the lane is woken to be checked again (the scheduler's gate).
        s.recheckShared(lane)
        #expect(s.takeChangedGroups() == [lane.group])
        #expect(s.takeSharedWants().isEmpty, "nothing asks by itself: only a check of a lane with mail does")
        #expect(s.admitConnection(group: lane.group, pool: nil, connections: 0, now: t0 + 0.05, commit: true) == .blocked(until: nil))
        #expect(s.takeSharedWants().contains(.init(lane: lane, kind: .lease)))
    }

    @Test func sharedUseReportsLeasesAndConnections() {
        var s = shaper()
        #expect(s.sharedUse().isEmpty)
        s.grantShared(.init(lane: lane, kind: .lease), count: 2, until: .infinity)
        s.grantShared(.init(lane: lane, kind: .message), count: 1, until: t0 + 1)
        #expect(s.admitConnection(group: lane.group, pool: nil, connections: 0, now: t0, commit: true) == .open(source: ""))
        let use = s.sharedUse()
        #expect(use.count == 1 && use[lane]?.leases == 2 && use[lane]?.connections == 1)
    }

    @Test func redisDownMeansThisNodesShare() {
        var s = shaper()
        s.grantShared(.init(lane: lane, kind: .lease), count: 5, until: .infinity)
        s.setSharing(.fallback(nodes: 3))
        #expect(s.takeChangedGroups().contains(lane.group))
        // 6 connections / 3 nodes = 2; 30/s / 3 = one message every 0.1 s (local spacing).
        #expect(s.admitConnection(group: lane.group, pool: nil, connections: 0, now: t0, commit: true) == .open(source: ""))
        #expect(s.admitConnection(group: lane.group, pool: nil, connections: 1, now: t0 + 1, commit: true) == .open(source: ""))
        #expect(s.admitMessage(on: lane, sent: 1, now: t0 + 1.05) == .wait(until: t0 + 1.1 - Rate.tolerance))
        #expect(s.admitConnection(group: lane.group, pool: nil, connections: 2, now: t0 + 2, commit: true) == .blocked(until: nil))
        #expect(s.takeSharedWants().isEmpty, "nothing is asked of the cluster while Redis is down")
        // Back: the leases held before were forgotten (Redis's expired): new ones are needed.
        s.setSharing(.shared)
        s.connectionClosed(lane)
        #expect(s.takeSharedReleases().isEmpty, "no lease is given back for a connection opened without one")
        #expect(s.admitConnection(group: lane.group, pool: nil, connections: 1, now: t0 + 3, commit: true) == .blocked(until: nil))
    }

    @Test func destinationsWithoutARuleKeepTheirOwnLimits() {
        var s = shaper()
        let other = ShapingGroup.domain("b.example")
        #expect(s.admitConnection(group: other, pool: nil, connections: 0, now: t0, commit: true) == .open(source: ""))
        #expect(s.takeSharedWants().isEmpty)
    }
}

@Suite struct SharedPermitBatchTests {
    @Test func batchesHoldTwentyMillisecondsOfTheRate() {
        let slow = Rate(count: 50, period: 1).sharedPermits
        #expect(slow.intervalMicros == 20_000 && slow.toleranceMicros == 20_000 && slow.batch == 1)
        #expect(abs(slow.lifetime - 0.04) < 1e-9)
        let fast = Rate(count: 20_000, period: 1).sharedPermits
        #expect(fast.intervalMicros == 50 && fast.toleranceMicros == 20_000 && fast.batch == 400)
        // Slower than one a 20 ms: one permit a trip, the tolerance one interval.
        let perMinute = Rate(count: 1, period: 60).sharedPermits
        #expect(perMinute.intervalMicros == 60_000_000 && perMinute.toleranceMicros == 60_000_000 && perMinute.batch == 1)
    }
}

/// How a rule's cluster-wide connections are shared between nodes (LeaseShare).
@Suite struct LeaseShareTests {
    @Test func sharesDivideTheLimitAndTurnTheRemainder() {
        let three: Set<String> = ["a", "b", "c"]
        #expect(LeaseShare.shares(max: 6, held: [:], waiting: three, time: 0) == ["a": 2, "b": 2, "c": 2])
        // 7 over three: one node has one more, a different one each slice.
        var extra: [String] = []
        for slice in 0..<3 {
            let s = LeaseShare.shares(max: 7, held: [:], waiting: three, time: slice * LeaseShare.slice)
            #expect(s.values.reduce(0, +) == 7 && s.values.min() == 2)
            extra += s.filter { $0.value == 3 }.keys
        }
        #expect(Set(extra) == three, "each node has the extra connection in turn: \(extra)")
        // Fewer connections than nodes: each node its turn at the one.
        var turns: [String] = []
        for slice in 0..<3 {
            let s = LeaseShare.shares(max: 1, held: ["a": 1], waiting: ["b", "c"], time: slice * LeaseShare.slice)
            turns += s.filter { $0.value == 1 }.keys
        }
        #expect(turns.sorted() == ["a", "b", "c"])
        // Nodes that neither hold nor wait have no share; no node: nothing.
        #expect(LeaseShare.shares(max: 6, held: ["a": 0, "b": 2], waiting: [], time: 0) == ["b": 6])
        #expect(LeaseShare.shares(max: 6, held: [:], waiting: [], time: 0).isEmpty)
    }

    @Test func aWaiterNearerTheFrontAsksSooner() {
        #expect((0..<7).map { LeaseShare.retryMilliseconds(ahead: $0) } == [50, 100, 150, 200, 250, 250, 250])
        #expect(LeaseShare.retryMilliseconds(ahead: -1) == 50)
    }

    @Test func aNodeAboveItsShareGivesWayOnlyToANodeBelowIts() {
        // n1 and n2 hold all six, n3 waits with none: each gives one back.
        let held = ["n1": 3, "n2": 3]
        #expect(LeaseShare.excess(node: "n1", max: 6, held: held, waiting: ["n3"], time: 0) == 1)
        #expect(LeaseShare.excess(node: "n2", max: 6, held: held, waiting: ["n3", "n1"], time: 0) == 1)
        #expect(LeaseShare.excess(node: "n3", max: 6, held: held, waiting: ["n3"], time: 0) == 0)
        // No one waits: nobody is asked to give anything back, however uneven.
        #expect(LeaseShare.excess(node: "n1", max: 6, held: ["n1": 5, "n2": 1], waiting: [], time: 0) == 0)
        // Only nodes holding their share wait (they want more): no one closes for them.
        #expect(LeaseShare.excess(node: "n1", max: 6, held: ["n1": 2, "n2": 2, "n3": 2], waiting: ["n2", "n3"], time: 0) == 0)
        // The waiter is this node itself: nothing.
        #expect(LeaseShare.excess(node: "n1", max: 6, held: ["n1": 6], waiting: ["n1"], time: 0) == 0)
        // One connection, three nodes: the holder gives it up when it is another's turn.
        let turnOfA = (0..<3).first { LeaseShare.shares(max: 1, held: [:], waiting: ["a", "b", "c"], time: $0 * LeaseShare.slice)["a"] == 1 }!
        #expect(LeaseShare.excess(node: "a", max: 1, held: ["a": 1], waiting: ["b", "c"], time: turnOfA * LeaseShare.slice) == 0)
        #expect(LeaseShare.excess(node: "a", max: 1, held: ["a": 1], waiting: ["b", "c"], time: (turnOfA + 1) * LeaseShare.slice) == 1)
    }

    @Test func aNodeCountsTheLeasesItRenewedNotAnEarlierRunsLeftInRedis() {
        // Redis still lists 4 of n1's members (2 from before its restart, expiring); n1 renewed 2.
        let held = ["n1": 4, "n2": 0]
        #expect(LeaseShare.excess(node: "n1", max: 4, held: held, waiting: ["n2"], time: 0) == 2)
        #expect(LeaseShare.excess(node: "n1", mine: 2, max: 4, held: held, waiting: ["n2"], time: 0) == 0)
        #expect(LeaseShare.excess(node: "n1", mine: 3, max: 4, held: held, waiting: ["n2"], time: 0) == 1)
    }
}
