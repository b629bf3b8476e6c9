import Foundation
import MailQueue
import Testing
@testable import Relay

/// The cluster's pure parts: its config, the shaping changes as they travel, its table, its route.
@Suite struct ClusterTests {
    @Test func configNamesTheKeyItRefuses() throws {
        let c = try TernConfig.parse("[cluster]\nredis = \"127.0.0.1:6379\"\nnode = \"mta-1.east_2\"\ntimeout = \"250ms\"\n")
        #expect(c.cluster.enabled && c.cluster.nodeName == "mta-1.east_2" && c.cluster.timeout == 0.25)
        #expect(try TernConfig.parse("[cluster]\nredis = \"/run/redis.sock\"\n").cluster.redis == "/run/redis.sock")
        #expect(try !TernConfig.parse("").cluster.enabled)
        #expect(try TernConfig.parse("").cluster.nodeName == TernConfig.systemHostname())
        for (text, key) in [("redis = \"localhost\"", "cluster.redis"), ("node = \"a b\"", "cluster.node"),
                            ("node = \"\(String(repeating: "n", count: 65))\"", "cluster.node"),
                            ("timeout = \"5ms\"", "cluster.timeout"), ("timeout = \"2m\"", "cluster.timeout"),
                            ("nodes = 3", "cluster.nodes")] {
            #expect(throws: (any Error).self, "\(text)") { try TernConfig.parse("[cluster]\n\(text)\n") }
            do {
                _ = try TernConfig.parse("[cluster]\n\(text)\n")
            } catch {
                #expect("\(error)".contains(key), "\(text): \(error)")
            }
        }
    }

    @Test func shapingChangesTravelWhole() throws {
        let events: [ShapingEvent] = [
            .suspended(.rule("gmail"), source: nil, until: 1_800_000_600, reason: "postmaster: \"quoted\"\u{1B}"),
            .suspended(.domain("b.example"), source: "ip2", until: 1_800_000_300.5, reason: "dead"),
            .throttled(.rule("r"), source: "", rule: "slow", rate: Rate(count: 10, period: 60), connections: 2, until: 1_800_000_100),
            .throttled(.rule("r"), source: "", rule: "fewer", rate: nil, connections: 1, until: 1_800_000_100),
            .resumed(.rule("gmail"), source: nil, why: "postmaster"),
        ]
        for e in events {
            let shared = try #require(SharedShapingEvent(e))
            let decoded = try JSONDecoder().decode(SharedShapingEvent.self, from: JSONEncoder().encode(shared))
            #expect(decoded.event == e)
        }
        // A node's own recoveries are not shared: each node's timers end them.
        #expect(SharedShapingEvent(.resumed(.rule("r"), source: "", why: "probe succeeded")) == nil)
        #expect(SharedShapingEvent(.throttleEnded(.rule("r"), source: "", rule: "slow")) == nil)
    }

    @Test func tableShowsEveryNodeEscaped() {
        let view = ClusterView(node: "n1", redis: "127.0.0.1:6379", redisUp: false, nodes: [
            ClusterNodeInfo(node: "n1", time: 1000, version: "0.1.0", queued: 12, held: 1, sessions: 3),
            ClusterNodeInfo(node: "evil\u{1B}[2J", time: 998, version: "0.1.0", queued: 0, held: 0, sessions: 0),
        ])
        let text = ClusterFormat.table(view, now: 1001)
        #expect(text.contains("NOT answering"))
        let lines = text.split(separator: "\n").map { $0.split(separator: " ").map(String.init) }
        #expect(lines.contains(["n1", "12", "1", "3", "1s", "ago", "0.1.0"]))
        #expect(text.contains("3s ago"))
        #expect(!text.contains("\u{1B}"))
    }

    @Test func route() throws {
        #expect(try AdminRoute.parse(method: "GET", target: "/cluster") == .cluster)
        #expect(throws: AdminError.self) { try AdminRoute.parse(method: "POST", target: "/cluster") }
        #expect(throws: AdminError.self) { try AdminRoute.parse(method: "GET", target: "/cluster?x=1") }
    }
}
