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
        #expect(!text.contains("shared limits"), "no rule shared: no section")
    }

    @Test func tableShowsTheSharedLimitsPerNodeAndInTotal() throws {
        func use(_ leases: Int, _ connections: Int, waiting: Bool, permits: Int) -> ClusterLimitUse {
            ClusterLimitUse(rule: "wide", source: "", maxConnections: 6, leases: leases, connections: connections,
                            waiting: waiting, messageRate: "50/s", permitsLastMinute: permits)
        }
        let view = ClusterView(node: "n1", redis: "127.0.0.1:6379", redisUp: true, nodes: [
            ClusterNodeInfo(node: "n1", time: 1000, version: "0.1.0", queued: 12, held: 0, sessions: 3, limits: [use(3, 3, waiting: false, permits: 1000)]),
            ClusterNodeInfo(node: "n2", time: 1000, version: "0.1.0", queued: 40, held: 0, sessions: 0, limits: [use(2, 2, waiting: true, permits: 900)]),
            ClusterNodeInfo(node: "n3", time: 1000, version: "0.1.0", queued: 0, held: 0, sessions: 0, limits: [
                ClusterLimitUse(rule: "x\u{1B}", source: "ip1", maxConnections: nil, leases: 0, connections: 0, waiting: false,
                                messageRate: "10/s", permitsLastMinute: 7)]),
            ClusterNodeInfo(node: "old", time: 1000, version: "0.0.9", queued: 0, held: 0, sessions: 0),  // no limits: an older node
        ])
        let text = ClusterFormat.table(view, now: 1001)
        let lines = text.split(separator: "\n").map { $0.split(separator: " ").map(String.init) }
        #expect(lines.contains(["wide", "-", "n1", "3/6", "3", "no", "1000"]))
        #expect(lines.contains(["wide", "-", "n2", "2/6", "2", "yes", "900"]))
        #expect(lines.contains(["wide", "-", "(cluster)", "5/6", "5", "1", "1900", "(max", "50/s)"]))
        #expect(lines.contains(["x\\u{1B}", "ip1", "n3", "0", "0", "no", "7"]))
        #expect(!text.contains("\u{1B}"))
        // The JSON of GET /cluster: every key present, null where there is no limit; an older node's
        // heartbeat without limits is read all the same.
        let json = String(decoding: try JSONEncoder().encode(view.nodes[2]), as: UTF8.self)
        #expect(json.contains("\"max_connections\":null") && json.contains("\"permits_last_minute\":7"))
        let old = try JSONDecoder().decode(ClusterNodeInfo.self, from: Data(#"{"node":"o","time":1,"version":"v","queued":null,"held":null,"sessions":0}"#.utf8))
        #expect(old.limits == nil)
        let back = try JSONDecoder().decode(ClusterNodeInfo.self, from: JSONEncoder().encode(view.nodes[0]))
        #expect(back == view.nodes[0])
    }

    @Test func stateFileRoundTrips() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tern-cluster-state-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = ClusterState.path(spool: dir.path)
        #expect(try StateFile.read(ClusterState.self, at: path) == nil, "a first start has none")
        let state = ClusterState(redis: "127.0.0.1:6379", epoch: "5f3a", suppression: "1700000000000-3", shaping: "0-0", listShared: true)
        try StateFile.write(state, to: path)
        #expect(try StateFile.read(ClusterState.self, at: path) == state)
        #expect(try String(contentsOfFile: path, encoding: .utf8).contains("\"list_shared\":true"))
        try Data("{not json".utf8).write(to: URL(fileURLWithPath: path))
        #expect(throws: (any Error).self) { try StateFile.read(ClusterState.self, at: path) }
    }

    @Test func minuteCountForgetsWhatIsOlderThanAMinute() {
        var c = MinuteCount()
        c.add(5, at: 1000.2)
        c.add(3, at: 1000.9)
        c.add(2, at: 1030)
        #expect(c.total(at: 1030.5) == 10)
        #expect(c.total(at: 1059.9) == 10)
        #expect(c.total(at: 1060) == 2, "the second 1000 is over")
        #expect(c.total(at: 1089) == 2)
        #expect(c.total(at: 1090) == 0)
        c.add(1, at: 5000)
        #expect(c.total(at: 5000) == 1, "after a long gap, only the new one")
    }

    @Test func route() throws {
        #expect(try AdminRoute.parse(method: "GET", target: "/cluster") == .cluster)
        #expect(throws: AdminError.self) { try AdminRoute.parse(method: "POST", target: "/cluster") }
        #expect(throws: AdminError.self) { try AdminRoute.parse(method: "GET", target: "/cluster?x=1") }
    }
}
