// RouterTests.swift: the Router against a real dnsmasq on 127.0.0.1 at a free high port (never the
// machine's resolver), a black hole that never answers, and a responder that answers SERVFAIL.

import Foundation
import Testing
import UVRuntime
@testable import Relay

#if canImport(Glibc)
import Glibc
#endif

// MARK: - Harness

private struct RouterTestFailure: Error, CustomStringConvertible {
    let description: String
}

/// dnsmasq in the foreground, answering only from its own records (--no-resolv, nothing to forward
/// to). Stopped with SIGKILL (Foundation's Process starts it with SIGTERM blocked).
private final class RouterDNSMasq {
    let port: UInt16
    let logPath: String
    private let process: Process

    static let records = [
        // multi.test: two usable hosts and one that does not exist.
        "--mx-host=multi.test,mx-a.multi.test,10",
        "--mx-host=multi.test,mx-b.multi.test,20",
        "--mx-host=multi.test,gone.multi.test,30",
        "--host-record=mx-a.multi.test,127.0.0.11,fd00::11",
        "--host-record=mx-b.multi.test,127.0.0.12",
        // equal.test: two hosts at one preference.
        "--mx-host=equal.test,e1.equal.test,10",
        "--mx-host=equal.test,e2.equal.test,10",
        "--host-record=e1.equal.test,127.0.0.21",
        "--host-record=e2.equal.test,127.0.0.22",
        // implicit.test: an address and no MX.
        "--host-record=implicit.test,127.0.0.20",
        "--mx-host=null.test,.,0",
        "--cname=alias.test,multi.test",
        "--cname=implicit-alias.test,implicit.test",
        "--host-record=relay.test,127.0.0.30",
        // selfish.test lists this host (mx-self) between a better and a worse host.
        "--mx-host=selfish.test,mx-good.selfish.test,10",
        "--mx-host=selfish.test,mx-self.selfish.test,20",
        "--mx-host=selfish.test,mx-worse.selfish.test,30",
        "--host-record=mx-good.selfish.test,127.0.0.41",
        "--host-record=mx-self.selfish.test,127.0.0.42",
        "--host-record=mx-worse.selfish.test,127.0.0.43",
        // loop.test's best MX is this host.
        "--mx-host=loop.test,mx-self.selfish.test,10",
        "--mx-host=loop.test,mx-worse.selfish.test,20",
        // unresolvable.test: its only MX host does not exist.
        "--mx-host=unresolvable.test,nothing.unresolvable.test,10",
        "--local=/test/",  // other names under .test: NXDOMAIN; outside .test: REFUSED
        "--local-ttl=300",
    ]

    init() throws {
        logPath = "/tmp/tern-router-dnsmasq-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).log"
        for _ in 0..<5 {
            let port = freeUDPPort()
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/usr/sbin/dnsmasq")
            process.arguments = [
                "--keep-in-foreground", "--no-resolv", "--no-hosts", "--conf-file=/dev/null", "--pid-file=",
                "--port=\(port)", "--listen-address=127.0.0.1", "--bind-interfaces",
                "--log-queries", "--log-facility=\(logPath)",
            ] + RouterDNSMasq.records
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
            try process.run()
            let deadline = Date().addingTimeInterval(5)
            while process.isRunning, !udpPortTaken(port), Date() < deadline { usleep(10_000) }
            if process.isRunning, udpPortTaken(port) {
                self.port = port
                self.process = process
                return
            }
            if process.isRunning { kill(process.processIdentifier, SIGKILL) }
            process.waitUntilExit()
        }
        throw RouterTestFailure(description: "dnsmasq did not start")
    }

    var server: String { "127.0.0.1:\(port)" }

    /// Queries dnsmasq logged so far, as "query[MX] multi.test".
    func queries() -> [String] {
        guard let text = try? String(contentsOfFile: logPath, encoding: .utf8) else { return [] }
        return text.split(separator: "\n").compactMap { line in
            guard let start = line.range(of: "query[") else { return nil }
            let rest = line[start.lowerBound...]
            guard let from = rest.range(of: " from ") else { return nil }
            return String(rest[..<from.lowerBound])
        }
    }

    func stop() {
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }

    deinit {
        stop()
        unlink(logPath)
    }
}

private func loopbackAddress(port: UInt16) -> sockaddr_in {
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = port.bigEndian
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    return address
}

/// A UDP socket bound to 127.0.0.1 on a free port.
private func boundUDPSocket() -> (fd: Int32, port: UInt16) {
    let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
    var address = loopbackAddress(port: 0)
    _ = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
    }
    return (fd, UInt16(bigEndian: address.sin_port))
}

private func freeUDPPort() -> UInt16 {
    let (fd, port) = boundUDPSocket()
    close(fd)
    return port
}

private func udpPortTaken(_ port: UInt16) -> Bool {
    let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
    defer { close(fd) }
    var address = loopbackAddress(port: port)
    let rc = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    return rc != 0 && errno == EADDRINUSE
}

/// Receives queries and never answers (and, being bound, draws no ICMP port-unreachable either).
private final class BlackHole {
    let fd: Int32
    let port: UInt16
    init() { (fd, port) = boundUDPSocket() }
    var server: String { "127.0.0.1:\(port)" }
    deinit { close(fd) }
}

/// Answers every query with SERVFAIL (RCODE 2), on a thread of its own; a byte on `wake` stops it.
private final class ServFailResponder {
    let port: UInt16
    private let fd: Int32
    private var wake: [Int32] = [-1, -1]
    private var thread: Thread?
    private let done = DispatchSemaphore(value: 0)

    init() {
        (fd, port) = boundUDPSocket()
        _ = pipe(&wake)
        let fd = self.fd, wakeRead = wake[0], done = self.done
        let thread = Thread {
            var buffer = [UInt8](repeating: 0, count: 1500)
            while true {
                var fds = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0),
                           pollfd(fd: wakeRead, events: Int16(POLLIN), revents: 0)]
                guard poll(&fds, 2, 1000) >= 0, fds[1].revents == 0 else { break }
                guard fds[0].revents != 0 else { continue }
                var from = sockaddr_storage()
                var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
                let n = withUnsafeMutablePointer(to: &from) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { recvfrom(fd, &buffer, buffer.count, 0, $0, &length) }
                }
                guard n >= 12 else { continue }
                var reply = Array(buffer[0..<n])
                reply[2] = 0x80 | (reply[2] & 0x79)  // QR, keep opcode and RD
                reply[3] = 0x80 | 2                  // RA, RCODE 2 = SERVFAIL
                for i in 6..<12 { reply[i] = 0 }      // no answer, authority or additional records
                _ = withUnsafePointer(to: &from) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(fd, reply, reply.count, 0, $0, length) }
                }
            }
            done.signal()
        }
        self.thread = thread
        thread.start()
    }

    var server: String { "127.0.0.1:\(port)" }

    func stop() {
        guard thread != nil else { return }
        var byte: UInt8 = 1
        _ = write(wake[1], &byte, 1)
        done.wait()
        thread = nil
        close(fd)
        close(wake[0])
        close(wake[1])
    }

    deinit { stop() }
}

private let ignoreSIGPIPE: Void = { signal(SIGPIPE, SIG_IGN); return () }()

/// A fake clock for cache expiry.
private final class TestClock {
    var now: Double = 1000
}

/// One loop, one resolver and one router; `plan(for:)` runs the loop until the answer comes.
private final class RouterHarness {
    let loop: EventLoop
    let resolver: Resolver
    let router: Router
    let clock = TestClock()

    init(servers: [String], routes: [String: String] = [:], hostname: String = "relay.example",
         ownAddresses: [String] = [], port: UInt16 = 2600, timeoutMilliseconds: Int = 2000, tries: Int = 2) throws {
        _ = ignoreSIGPIPE
        loop = try EventLoop()
        resolver = try Resolver(loop: loop, servers: servers, timeoutMilliseconds: timeoutMilliseconds, tries: tries)
        var config = TernConfig(hostname: hostname)
        config.delivery.port = port
        for (domain, text) in routes {
            config.routes.routes[domain] = try NextHopSpec(parsing: text)
        }
        let clock = self.clock
        router = Router(resolver: resolver, config: config, ownAddresses: ownAddresses, now: { clock.now })
    }

    /// Runs the loop until `done()` or `seconds` pass; a 10 ms timer bounds each turn.
    @discardableResult
    func run(seconds: Double = 10, until done: () -> Bool) -> Bool {
        let tick = UVRuntime.Timer(loop: loop)
        tick.start(afterMilliseconds: 10, repeatMilliseconds: 10) {}
        let deadline = Date().addingTimeInterval(seconds)
        while !done(), Date() < deadline { loop.runOnce(nowait: false) }
        tick.close()
        loop.runOnce(nowait: true)
        return done()
    }

    func plan(for domain: String, seconds: Double = 10) -> RoutePlan? {
        var plan: RoutePlan?
        var calls = 0
        router.route(domain: domain) {
            plan = $0
            calls += 1
        }
        run(seconds: seconds) { plan != nil }
        #expect(calls <= 1, "done ran \(calls) times")
        return plan
    }

    func mxHosts(of domain: String, seconds: Double = 10) -> [String]? {
        var hosts: [String]?
        router.mxHosts(domain: domain) { hosts = $0 }
        run(seconds: seconds) { hosts != nil }
        return hosts
    }

    func close() {
        resolver.close()
        loop.close()
    }
}

private func withDNSMasq(routes: [String: String] = [:], hostname: String = "relay.example",
                         ownAddresses: [String] = [], timeoutMilliseconds: Int = 2000,
                         _ body: (RouterHarness, RouterDNSMasq) throws -> Void) throws {
    let dns = try RouterDNSMasq()
    defer { dns.stop() }
    let harness = try RouterHarness(servers: [dns.server], routes: routes, hostname: hostname,
                                    ownAddresses: ownAddresses, timeoutMilliseconds: timeoutMilliseconds)
    defer { harness.close() }
    try body(harness, dns)
}

private func target(_ host: String, _ address: String, _ port: UInt16 = 2600, _ preference: Int) -> DeliveryTarget {
    DeliveryTarget(host: host, address: address, port: port, preference: preference)
}

private let multiTargets = [target("mx-a.multi.test", "127.0.0.11", 2600, 10),
                            target("mx-a.multi.test", "fd00::11", 2600, 10),
                            target("mx-b.multi.test", "127.0.0.12", 2600, 20)]

private func retryReason(_ plan: RoutePlan?) -> String? {
    if case .retry(let reason)? = plan { return reason }
    return nil
}

// MARK: - Tests

@Suite(.serialized)
struct RouterTests {
    @Test func mxPreferenceOrderSkippingAHostThatDoesNotResolve() throws {
        try withDNSMasq { h, _ in
            #expect(h.plan(for: "multi.test") == .deliver(multiTargets))
            #expect(h.plan(for: "MULTI.test.") == .deliver(multiTargets))
        }
    }

    @Test func equalPreferencesComeInBothOrders() throws {
        try withDNSMasq { h, _ in
            var firsts = Set<String>()
            for _ in 0..<64 {
                guard case .deliver(let targets)? = h.plan(for: "equal.test") else {
                    Issue.record("equal.test did not route")
                    return
                }
                #expect(Set(targets.map(\.address)) == ["127.0.0.21", "127.0.0.22"])
                firsts.insert(targets[0].host)
            }
            #expect(firsts == ["e1.equal.test", "e2.equal.test"])
        }
    }

    @Test func implicitMXIsTheDomainsOwnAddress() throws {
        try withDNSMasq { h, _ in
            #expect(h.plan(for: "implicit.test") == .deliver([target("implicit.test", "127.0.0.20", 2600, 0)]))
        }
    }

    @Test func nullMXBounces() throws {
        try withDNSMasq { h, _ in
            guard case .bounce(let status, let reason)? = h.plan(for: "null.test") else {
                Issue.record("null.test did not bounce")
                return
            }
            #expect(status == "5.1.10")
            #expect(reason.contains("null.test"))
        }
    }

    @Test func nxdomainBounces() throws {
        try withDNSMasq { h, _ in
            guard case .bounce(let status, _)? = h.plan(for: "nosuch.test") else {
                Issue.record("nosuch.test did not bounce")
                return
            }
            #expect(status == "5.1.2")
        }
    }

    @Test func refusedRetries() throws {
        try withDNSMasq { h, _ in
            let reason = retryReason(h.plan(for: "example.com"))
            #expect(reason?.contains("REFUSED") == true, "\(reason ?? "no retry")")
        }
    }

    @Test func mxHostsThatDoNotResolveRetry() throws {
        try withDNSMasq { h, _ in
            let reason = retryReason(h.plan(for: "unresolvable.test"))
            #expect(reason?.contains("nothing.unresolvable.test") == true, "\(reason ?? "no retry")")
        }
    }

    @Test func servfailRetries() throws {
        let responder = ServFailResponder()
        defer { responder.stop() }
        let h = try RouterHarness(servers: [responder.server], timeoutMilliseconds: 500, tries: 1)
        defer { h.close() }
        let reason = retryReason(h.plan(for: "multi.test"))
        #expect(reason?.contains("SERVFAIL") == true, "\(reason ?? "no retry")")
    }

    @Test func timeoutRetries() throws {
        let hole = BlackHole()
        let h = try RouterHarness(servers: [hole.server], timeoutMilliseconds: 200, tries: 1)
        defer { h.close() }
        let started = Date()
        let reason = retryReason(h.plan(for: "multi.test", seconds: 5))
        #expect(reason?.contains("timed out") == true, "\(reason ?? "no retry")")
        #expect(Date().timeIntervalSince(started) < 3)
    }

    @Test func cnameDomainsFollowTheChain() throws {
        try withDNSMasq { h, _ in
            #expect(h.plan(for: "alias.test") == .deliver(multiTargets))
            #expect(h.plan(for: "implicit-alias.test")
                    == .deliver([target("implicit-alias.test", "127.0.0.20", 2600, 0)]))
        }
    }

    @Test func bracketRouteBypassesDNS() throws {
        // The only name server never answers: a DNS lookup would time out into a retry.
        let hole = BlackHole()
        let h = try RouterHarness(servers: [hole.server], routes: ["routed.test": "[127.0.0.9]:2600",
                                                                   "v6.test": "[::1]"],
                                  timeoutMilliseconds: 200, tries: 1)
        defer { h.close() }
        #expect(h.plan(for: "Routed.Test") == .deliver([target("127.0.0.9", "127.0.0.9", 2600, 0)]))
        #expect(h.plan(for: "v6.test") == .deliver([target("::1", "::1", 2600, 0)]))
        #expect(h.router.lookupsStarted == 0)
        // Not routed: this one does ask, and times out.
        #expect(retryReason(h.plan(for: "other.test", seconds: 5)) != nil)
        #expect(h.router.lookupsStarted == 1)
    }

    @Test func addressLiteralDomain() throws {
        let hole = BlackHole()
        let h = try RouterHarness(servers: [hole.server], ownAddresses: ["0.0.0.0", "127.0.0.1"])
        defer { h.close() }
        #expect(h.plan(for: "[192.0.2.1]") == .deliver([target("[192.0.2.1]", "192.0.2.1", 2600, 0)]))
        #expect(h.plan(for: "[IPv6:2001:db8::1]") == .deliver([target("[ipv6:2001:db8::1]", "2001:db8::1", 2600, 0)]))
        guard case .bounce(let loop, _)? = h.plan(for: "[127.0.0.1]"),
              case .bounce(let bad, _)? = h.plan(for: "[192.0.2.300]") else {
            Issue.record("a literal of ours or a bad literal did not bounce")
            return
        }
        #expect(loop == "5.4.6")
        #expect(bad == "5.1.2")
        #expect(h.router.lookupsStarted == 0)
    }

    @Test func wildcardRouteAndExactRouteFirst() throws {
        try withDNSMasq(routes: ["*": "[relay.test]:2525", "multi.test": "[127.0.0.9]"]) { h, _ in
            #expect(h.plan(for: "anything.example") == .deliver([target("relay.test", "127.0.0.30", 2525, 0)]))
            #expect(h.plan(for: "implicit.test") == .deliver([target("relay.test", "127.0.0.30", 2525, 0)]))
            #expect(h.plan(for: "multi.test") == .deliver([target("127.0.0.9", "127.0.0.9", 2600, 0)]))
        }
    }

    @Test func hostPortRouteLooksUpTheHostsMX() throws {
        try withDNSMasq(routes: ["via.example": "multi.test:2526", "bare.example": "implicit.test",
                                 "broken.example": "nosuch.test"]) { h, _ in
            let expected = multiTargets.map { target($0.host, $0.address, 2526, $0.preference) }
            #expect(h.plan(for: "via.example") == .deliver(expected))
            #expect(h.plan(for: "bare.example") == .deliver([target("implicit.test", "127.0.0.20", 2600, 0)]))
            // NXDOMAIN for a configured next hop defers instead of bouncing the recipient's mail.
            let reason = retryReason(h.plan(for: "broken.example"))
            #expect(reason?.contains("nosuch.test") == true, "\(reason ?? "no retry")")
        }
    }

    /// Traffic shaping's MX rollup: the host names a destination's mail goes to, by route or MX.
    @Test func mxHostsForShapingRules() throws {
        try withDNSMasq(routes: ["static.example": "[relay.test]:2525", "via.example": "multi.test",
                                 "literal.example": "[127.0.0.9]"]) { h, _ in
            #expect(h.mxHosts(of: "multi.test") == ["mx-a.multi.test", "mx-b.multi.test", "gone.multi.test"])
            #expect(h.mxHosts(of: "implicit.test") == ["implicit.test"], "no MX: the domain itself")
            #expect(h.mxHosts(of: "static.example") == ["relay.test"], "a static route: its host, no lookup")
            #expect(h.mxHosts(of: "via.example") == ["mx-a.multi.test", "mx-b.multi.test", "gone.multi.test"])
            #expect(h.mxHosts(of: "literal.example") == [], "an address names no host")
            #expect(h.mxHosts(of: "null.test") == [], "a null MX names no host")
            #expect(h.mxHosts(of: "nosuch.test") == [], "NXDOMAIN: no MX rule applies")
            #expect(h.mxHosts(of: "[127.0.0.1]") == [])
        }
    }

    @Test func mxListStopsBeforeOurOwnHostname() throws {
        try withDNSMasq(hostname: "MX-Self.Selfish.Test.") { h, _ in
            #expect(h.plan(for: "selfish.test") == .deliver([target("mx-good.selfish.test", "127.0.0.41", 2600, 10)]))
            guard case .bounce(let status, let reason)? = h.plan(for: "loop.test") else {
                Issue.record("loop.test did not bounce")
                return
            }
            #expect(status == "5.4.6")
            #expect(reason.contains("loops back to myself"))
        }
    }

    @Test func mxListStopsBeforeOurOwnAddress() throws {
        try withDNSMasq(ownAddresses: ["0.0.0.0", "::", "127.0.0.42"]) { h, _ in
            #expect(h.plan(for: "selfish.test") == .deliver([target("mx-good.selfish.test", "127.0.0.41", 2600, 10)]))
            // Without the address, the whole list is used.
        }
        try withDNSMasq(ownAddresses: ["0.0.0.0", "::"]) { h, _ in
            guard case .deliver(let targets)? = h.plan(for: "selfish.test") else {
                Issue.record("selfish.test did not route")
                return
            }
            #expect(targets.map(\.address) == ["127.0.0.41", "127.0.0.42", "127.0.0.43"])
        }
    }

    @Test func answersAreCachedForTheirTTL() throws {
        try withDNSMasq(timeoutMilliseconds: 200) { h, dns in
            #expect(h.plan(for: "multi.test") == .deliver(multiTargets))
            #expect(h.plan(for: "nosuch.test").map { if case .bounce = $0 { true } else { false } } == true)
            let asked = h.router.lookupsStarted
            #expect(asked == 5)  // MX multi.test, 3 hosts' addresses, MX nosuch.test

            dns.stop()
            h.clock.now += 59
            #expect(h.plan(for: "multi.test") == .deliver(multiTargets))
            #expect(h.plan(for: "alias.test") != .deliver(multiTargets))  // never asked: no cache
            guard case .bounce(let status, _)? = h.plan(for: "nosuch.test") else {
                Issue.record("the cached NXDOMAIN was not used")
                return
            }
            #expect(status == "5.1.2")

            // NXDOMAIN is kept 60 s; the MX answer for its TTL of 300 s.
            h.clock.now += 2
            #expect(retryReason(h.plan(for: "nosuch.test", seconds: 5)) != nil)
            #expect(h.plan(for: "multi.test") == .deliver(multiTargets))
            h.clock.now += 300
            #expect(retryReason(h.plan(for: "multi.test", seconds: 5)) != nil)
        }
    }

    @Test func concurrentLookupsShareOneQuery() throws {
        try withDNSMasq { h, dns in
            var plans: [RoutePlan] = []
            for _ in 0..<5 {
                h.router.route(domain: "multi.test") { plans.append($0) }
            }
            #expect(plans.isEmpty, "answered before any query was made")
            h.run { plans.count == 5 }
            #expect(plans == Array(repeating: .deliver(multiTargets), count: 5))
            #expect(h.router.lookupsStarted == 4)

            // What dnsmasq saw: one MX query, and one A and one AAAA query per host.
            var queries: [String] = []
            let deadline = Date().addingTimeInterval(3)
            while Date() < deadline {
                queries = dns.queries()
                if queries.count >= 7 { break }
                usleep(20_000)
            }
            #expect(queries.filter { $0 == "query[MX] multi.test" }.count == 1, "\(queries)")
            #expect(queries.filter { $0 == "query[A] mx-a.multi.test" }.count == 1, "\(queries)")
            #expect(queries.filter { $0 == "query[AAAA] mx-b.multi.test" }.count == 1, "\(queries)")
            #expect(queries.count == 7, "\(queries)")
        }
    }
}
