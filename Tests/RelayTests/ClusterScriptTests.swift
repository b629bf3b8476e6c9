import Foundation
import MailQueue
import RedisTestSupport
import Testing
import UVRuntime
@testable import Relay

/// The cluster's Lua scripts (ClusterLimits.swift) on Debian's redis-server, each on its own: the GCRA
/// permits, the lease queue, the renewal's report. The integration tests see them only through the
/// sink's counts.
@Suite(.serialized) struct ClusterScriptTests {
    let server: RedisServer
    let loop: EventLoop
    let client: RedisClient

    init() throws {
        server = try RedisServer()
        loop = try EventLoop()
        client = RedisClient(loop: loop, address: .tcp(host: "127.0.0.1", port: server.port), timeoutMilliseconds: 1000)
        client.start()
        let client = self.client
        loop.run { client.isConnected }
        guard client.isConnected else { throw RedisTestFailure("not connected to redis-server") }
    }

    func eval(_ script: RedisScript, keys: [String], args: [String]) throws -> [RedisReply] {
        var answer: Result<RedisReply, RedisFailure>?
        client.eval(script, keys: keys, args: args) { answer = $0 }
        loop.run { answer != nil }
        guard case .success(.array(let values))? = answer else { throw RedisTestFailure("answer: \(String(describing: answer))") }
        return values
    }

    func call(_ command: [String]) throws -> RedisReply {
        var answer: Result<RedisReply, RedisFailure>?
        client.command(command) { answer = $0 }
        loop.run { answer != nil }
        guard case .success(let value)? = answer else { throw RedisTestFailure("answer: \(String(describing: answer))") }
        return value
    }

    func permits(_ wanted: Int, interval: Int, tolerance: Int) throws -> (granted: Int64, waitMicros: Int64) {
        let a = try eval(Cluster.permitScript, keys: ["tern:rate-m:r:"], args: [String(interval), String(tolerance), String(wanted)])
        return (a[0].integer ?? -1, a[1].integer ?? -1)
    }

    /// 50/s (20 ms apart) with a 20 ms tolerance: two at once from an idle key, then none until the
    /// wait it names; asked again and again for a second, about 50 granted (never a second's worth at once).
    @Test func permitsFollowTheRate() throws {
        let first = try permits(10, interval: 20_000, tolerance: 20_000)
        #expect(first.granted == 2, "an idle key holds the tolerance's permits and one more")
        let second = try permits(10, interval: 20_000, tolerance: 20_000)
        #expect(second.granted == 0 && second.waitMicros > 0 && second.waitMicros <= 40_000, "\(second)")
        let start = Date()
        var granted = first.granted + second.granted
        while Date().timeIntervalSince(start) < 1.0 {
            let p = try permits(10, interval: 20_000, tolerance: 20_000)
            granted += p.granted
            if p.granted == 0 { usleep(useconds_t(max(1000, p.waitMicros))) }
        }
        #expect(granted >= 45 && granted <= 53, "\(granted) permits in about a second at 50/s")
        // The key expires a second after its theoretical arrival time: nothing left behind.
        let ttl = try call(["PTTL", "tern:rate-m:r:"]).integer ?? -2
        #expect(ttl > 0 && ttl <= 1100, "PTTL \(ttl)")
    }

    func lease(_ member: String, node: String, max: Int, ttl: Int = 10_000, stale: Int = 1000) throws -> (granted: Int64, ahead: Int64) {
        let a = try eval(Cluster.leaseScript, keys: ["tern:lease:r:", "tern:lease-wait:r:", "tern:lease-seen:r:"],
                         args: [String(ttl), String(max), member, node, String(stale)])
        return (a[0].integer ?? -1, a[1].integer ?? -1)
    }

    /// Two leases of two: n1 takes both; n2 then n3 wait in that order. A freed lease goes to n2 (the
    /// longest waiting), not to n1 that freed it nor to n3 behind n2; a waiter that stops asking is
    /// forgotten; an expired lease is free again.
    @Test func leasesGoToTheNodeWaitingLongest() throws {
        #expect(try lease("n1:1", node: "n1", max: 2) == (1, 0))
        #expect(try lease("n1:2", node: "n1", max: 2) == (1, 0))
        #expect(try lease("n2:1", node: "n2", max: 2) == (0, 0))
        #expect(try lease("n3:1", node: "n3", max: 2) == (0, 1))
        #expect(try lease("n2:2", node: "n2", max: 2) == (0, 0), "asking again keeps n2's place")
        _ = try call(["ZREM", "tern:lease:r:", "n1:2"])
        #expect(try lease("n1:3", node: "n1", max: 2) == (0, 2), "n1 gave it back: it waits behind n2 and n3")
        #expect(try lease("n3:2", node: "n3", max: 2) == (0, 1), "n2 is ahead of n3")
        #expect(try lease("n2:3", node: "n2", max: 2) == (1, 0))
        #expect(try call(["ZRANGE", "tern:lease-wait:r:", "0", "-1"]) == .array([.string(Array("n3".utf8)), .string(Array("n1".utf8))]))
        // n3 and n1 stop asking: after `stale` ms they are out of the queue, and n4 is first.
        usleep(150_000)
        _ = try call(["ZREM", "tern:lease:r:", "n2:3"])
        #expect(try lease("n4:1", node: "n4", max: 2, stale: 100) == (1, 0))
        #expect(try call(["ZCARD", "tern:lease-wait:r:"]) == .integer(0))
        // A lease not renewed expires: free again.
        _ = try call(["DEL", "tern:lease:r:"])
        #expect(try lease("n5:1", node: "n5", max: 1, ttl: 100) == (1, 0))
        #expect(try lease("n6:1", node: "n6", max: 1) == (0, 0))
        usleep(150_000)
        #expect(try lease("n6:2", node: "n6", max: 1) == (1, 0))
    }

    /// The renewal renews what is still held, counts what was lost, and reports every node's leases
    /// and the nodes waiting: what LeaseShare needs.
    @Test func renewalReportsHoldersAndWaiters() throws {
        _ = try lease("n1:1", node: "n1", max: 3)
        _ = try lease("n1:2", node: "n1", max: 3)
        _ = try lease("a:b:7", node: "a:b", max: 3)  // a node name with a colon: cut at the last one
        _ = try lease("n2:1", node: "n2", max: 3)
        let a = try eval(Cluster.renewScript, keys: ["tern:lease:r:", "tern:lease-wait:r:", "tern:lease-seen:r:"],
                         args: ["10000", "1000", "n1:1", "n1:2", "n1:gone"])
        let renewal = try #require(LeaseRenewal(a))
        #expect(renewal.lost == 1)
        #expect(renewal.held == ["n1": 2, "a:b": 1])
        #expect(renewal.waiting == ["n2"])
        #expect(abs(Double(renewal.time) - Date().timeIntervalSince1970) < 5, "Redis's clock, in seconds")
        let score = try call(["ZSCORE", "tern:lease:r:", "n1:1"]).integer ?? 0
        #expect(score > Int64(Date().timeIntervalSince1970 * 1000) + 9000, "renewed for the whole expiry")
        // With n2 waiting and n1 holding 2 of 3 (the share of three nodes is one each), n1 gives one back.
        #expect(LeaseShare.excess(node: "n1", max: 3, held: renewal.held, waiting: renewal.waiting, time: renewal.time) == 1)
        #expect(LeaseShare.excess(node: "a:b", max: 3, held: renewal.held, waiting: renewal.waiting, time: renewal.time) == 0)
    }
}
