import Foundation
@testable import MailQueue
import Testing
@testable import Relay

/// `tern queue destinations/suspend/resume`: the routes, their parameters, the table, the metrics.
@Suite struct ShapingAdminTests {
    @Test func routes() throws {
        #expect(try AdminRoute.parse(method: "GET", target: "/queue/destinations") == .destinations)
        #expect(try AdminRoute.parse(method: "POST", target: "/queue/suspend?destination=Example.COM.&for=30m&reason=asked+by+them")
            == .suspend(ShapingSuspendRequest(destination: "Example.COM", seconds: 1800, reason: "asked by them")))
        #expect(try AdminRoute.parse(method: "POST", target: "/queue/suspend?destination=google")
            == .suspend(ShapingSuspendRequest(destination: "google", seconds: 3600, reason: "suspended by the postmaster")))
        #expect(try AdminRoute.parse(method: "POST", target: "/queue/suspend?destination=a.test&for=1d")
            == .suspend(ShapingSuspendRequest(destination: "a.test", seconds: 86400)))
        #expect(try AdminRoute.parse(method: "POST", target: "/queue/resume?destination=a.test") == .resume(destination: "a.test"))
        // Not the queue id route; methods as for the other actions.
        for (method, target) in [("POST", "/queue/destinations"), ("GET", "/queue/suspend?destination=a.test"),
                                 ("GET", "/queue/resume?destination=a.test")] {
            #expect(throws: AdminError.self) { try AdminRoute.parse(method: method, target: target) }
            do { _ = try AdminRoute.parse(method: method, target: target) } catch let e as AdminError { #expect(e.status == 405) }
        }
        #expect(throws: AdminError(400, "this path takes no query")) {
            try AdminRoute.parse(method: "GET", target: "/queue/destinations?domain=a.test")
        }
    }

    @Test(arguments: [
        ("", "destination: required"),
        ("destination=", "destination: must not be empty"),
        ("destination=a%20b", "destination: \"a b\" is neither a domain nor a rule's name"),
        ("destination=..", "destination: \"..\" is neither a domain nor a rule's name"),
        ("destination=a%1Bb", "destination: \"a\\u{1B}b\" is neither a domain nor a rule's name"),
        ("destination=a.test&for=5x", "for: "),
        ("destination=a.test&for=-1m", "for: "),
        ("destination=a.test&for=0", "for: must be longer than 0s"),
        ("destination=a.test&for=31d", "for: at most 30d"),
        ("destination=a.test&reason=", "reason: must not be empty"),
        ("destination=a.test&reason=%1B%5B2J", "reason: must not contain control characters"),
        ("destination=a.test&reason=a%0Ab", "reason: must not contain control characters"),
        ("destination=a.test&until=5", "unknown parameter \"until\" (destination, for, reason)"),
        ("destination=a.test&reason=%ZZ", "bad percent-encoding in the query"),
    ])
    func badSuspendNamesTheField(query: String, error: String) {
        do {
            _ = try AdminRoute.parse(method: "POST", target: "/queue/suspend?" + query)
            Issue.record("accepted \(query)")
        } catch let e as AdminError {
            #expect(e.status == 400)
            #expect(e.message.hasPrefix(error), "\(e.message)")
        } catch {
            Issue.record("\(error)")
        }
    }

    @Test func reasonLengthAndResumeParameters() throws {
        let long = String(repeating: "x", count: 201)
        #expect(throws: AdminError(400, "reason: at most 200 characters")) {
            try ShapingSuspendRequest(query: "destination=a.test&reason=" + long)
        }
        #expect(try ShapingSuspendRequest(query: "destination=a.test&reason=" + long.dropLast()).reason.count == 200)
        #expect(throws: AdminError(400, "unknown parameter \"for\" (destination)")) {
            try ShapingSuspendRequest.resumeTarget(query: "destination=a.test&for=1h")
        }
        #expect(throws: AdminError(400, "destination: required (a domain or a [[shaping]] rule's name)")) {
            try ShapingSuspendRequest.resumeTarget(query: "")
        }
    }

    @Test func rowsFromTheCoresView() {
        var v = ShapingLaneView(group: .rule("google"), rule: "google", source: "a", connections: 2, messagesLastMinute: 40,
                                maxConnections: 20, messageRate: "300/min")
        v.queued = 7
        v.inFlight = 2
        #expect(ShapingDestination(v) == ShapingDestination(destination: "google", kind: "rule", rule: "google", source: "a",
                                                            queued: 7, inFlight: 2, connections: 2, maxConnections: 20,
                                                            messagesLastMinute: 40, messageRate: "300/min"))
        v.state = .suspended(until: 5000, reason: "421 too many")
        var row = ShapingDestination(v)
        #expect(row.state == "suspended" && row.until == 5000 && row.reason == "421 too many")
        v.state = .throttled(until: 6000, rule: "slow-down", rate: "1/s", connections: 1)
        row = ShapingDestination(v)
        #expect(row.state == "throttled" && row.until == 6000 && row.throttleRule == "slow-down"
                && row.throttleRate == "1/s" && row.throttleConnections == 1)
        v.state = .probing(reason: "connection refused")
        #expect(ShapingDestination(v).state == "dead")
        v.state = .classifying
        #expect(ShapingDestination(v).state == "classifying")
    }

    @Test func jsonKeys() throws {
        var row = ShapingDestination(destination: "a.test", kind: "domain", rule: "default", source: "", queued: 1, connections: 0)
        row.throttleRule = "x"
        let data = try JSONEncoder().encode(ShapingDestinationListing([row], deliveryEnabled: true))
        let object = try JSONSerialization.jsonObject(with: data) as! [String: Any]
        #expect(object["count"] as? Int == 1 && object["delivery_enabled"] as? Bool == true)
        let first = (object["destinations"] as! [[String: Any]])[0]
        #expect(Set(first.keys) == ["destination", "kind", "rule", "source", "queued", "in_flight", "connections",
                                    "messages_last_minute", "state", "throttle_rule"])
        #expect(try JSONDecoder().decode(ShapingDestinationListing.self, from: data).destinations == [row])
        // An older relay's rows have no in_flight.
        let older = #"{"count":1,"delivery_enabled":true,"destinations":[{"destination":"a.test","kind":"domain","rule":"default","source":"","queued":1,"connections":0,"messages_last_minute":0,"state":"active"}]}"#
        #expect(try JSONDecoder().decode(ShapingDestinationListing.self, from: Data(older.utf8)).destinations[0].inFlight == 0)
    }

    @Test func tableIsAlignedAndEscaped() {
        let now = 1_800_000_000.0
        var suspended = ShapingDestination(destination: "evil\u{1B}[2J.test", kind: "domain", rule: "default", source: "",
                                           queued: 12, connections: 0, state: "suspended", until: now + 3000,
                                           reason: "421 \u{1B}]0;owned\u{07} slow down")
        suspended.messageRate = nil
        var throttled = ShapingDestination(destination: "google", kind: "rule", rule: "google", source: "a", queued: 1234,
                                           inFlight: 2, connections: 3, maxConnections: 20, messagesLastMinute: 55,
                                           messageRate: "300/min", state: "throttled", until: now + 600)
        throttled.throttleRule = "slow-down"
        throttled.throttleRate = "1/s"
        throttled.throttleConnections = 1
        let dead = ShapingDestination(destination: "c.test", kind: "domain", rule: "default", source: "b", queued: 3,
                                      connections: 0, state: "dead", reason: "connection refused")
        let text = ShapingDestinationsFormat.table([suspended, throttled, dead], now: now, timeZone: TimeZone(identifier: "UTC")!)
        let lines = text.split(separator: "\n").map(String.init)
        #expect(lines.count == 4)
        #expect(!text.unicodeScalars.contains { $0.value < 0x20 && $0 != "\n" }, "a control character reached the terminal")
        #expect(lines[0] == "DESTINATION         SOURCE  RULE     QUEUED  INFLIGHT  CONNS  MSG/MIN           STATE")
        #expect(lines[1].hasPrefix("evil\\u{1B}[2J.test  -       default      12         0      0  0                 suspended until "))
        #expect(lines[1].hasSuffix("(in 50m): 421 \\u{1B}]0;owned\\u{7} slow down"))
        #expect(lines[2].hasPrefix("google (rule)       a       google     1234         2   3/20  55 (max 300/min)  throttled to rate 1/s, 1 connection until "))
        #expect(lines[2].hasSuffix("(in 10m) by slow-down"))
        #expect(lines[3].hasSuffix("  dead, probing: connection refused"))
        // Every column starts at the same place on every line.
        let stateColumn = lines[0].range(of: "STATE")!.lowerBound.utf16Offset(in: lines[0])
        for line in lines.dropFirst() {
            #expect(line.utf16.count > stateColumn && line.utf16[line.utf16.index(line.utf16.startIndex, offsetBy: stateColumn - 2)] == 0x20)
        }
        #expect(ShapingDestinationsFormat.table([], now: now, timeZone: .current) == "No destinations queued, connected or suspended\n")
    }

    @Test func durationsAndWhatWasSuspended() {
        #expect(ShapingDestinationsFormat.duration(3600) == "1h")
        #expect(ShapingDestinationsFormat.duration(1800) == "30m")
        #expect(ShapingDestinationsFormat.duration(86400 * 2) == "2d")
        #expect(ShapingDestinationsFormat.duration(5400) == "90m")
        #expect(ShapingDestinationsFormat.duration(45) == "45s")
        #expect(ShapingDestinationsFormat.describe(asked: "gmail.com", .rule("google")) == "gmail.com (rule google)")
        #expect(ShapingDestinationsFormat.describe(asked: "google", .rule("google")) == "rule google")
        #expect(ShapingDestinationsFormat.describe(asked: "a.test", .domain("a.test")) == "a.test")
    }

    /// Sample lines of the exposition as name{labels} → value.
    private func samples(_ m: RelayMetrics) -> [String: Double] {
        var out: [String: Double] = [:]
        for line in String(decoding: m.exposition(), as: UTF8.self).split(separator: "\n") where !line.hasPrefix("#") {
            let parts = line.split(separator: " ")
            out[String(parts[0])] = Double(parts[1])
        }
        return out
    }

    @Test func metricsFollowTheCoresTotals() {
        let m = RelayMetrics()
        let google = ShapingMetricKey(rule: "google", source: "a")
        let other = ShapingMetricKey(rule: "default", source: "")
        m.updateShapingMetrics([google: ShapingCounters(sent: 5, deferred: 1, suspendedSeconds: 2.5, connections: 3),
                                other: ShapingCounters(sent: 1, deferred: 0, suspendedSeconds: 0, connections: 1)])
        m.updateShapingMetrics([google: ShapingCounters(sent: 8, deferred: 1, suspendedSeconds: 4, connections: 2)])
        let s = samples(m)
        #expect(s["tern_shaping_recipients_delivered_total{rule=\"google\",source=\"a\"}"] == 8)
        #expect(s["tern_shaping_recipients_deferred_total{rule=\"google\",source=\"a\"}"] == 1)
        #expect(s["tern_shaping_suspended_seconds_total{rule=\"google\",source=\"a\"}"] == 4)
        #expect(s["tern_shaping_connections{rule=\"google\",source=\"a\"}"] == 2)
        // Gone from the core's answer: its connections are none, its counters stay.
        #expect(s["tern_shaping_connections{rule=\"default\",source=\"\"}"] == 0)
        #expect(s["tern_shaping_recipients_delivered_total{rule=\"default\",source=\"\"}"] == 1)
        // Counters never go down, even if the core's totals do.
        m.updateShapingMetrics([google: ShapingCounters(sent: 2, deferred: 0, suspendedSeconds: 0, connections: 0)])
        #expect(samples(m)["tern_shaping_recipients_delivered_total{rule=\"google\",source=\"a\"}"] == 8)
        let text = String(decoding: m.exposition(), as: UTF8.self)
        for family in ["tern_shaping_recipients_delivered_total", "tern_shaping_recipients_deferred_total",
                       "tern_shaping_suspended_seconds_total", "tern_shaping_connections"] {
            #expect(RelayMetrics.help[family] != nil && text.contains("# HELP \(family) "), "\(family)")
        }
    }
}
