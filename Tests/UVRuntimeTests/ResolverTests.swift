// Resolver against a real dnsmasq on 127.0.0.1 at a free high port, answering only from its own
// records (--no-resolv, no --server: it forwards nothing), plus the decoder on hand-built replies.

import CCAres
import CLibUV
import Foundation
import Randomness
import Testing
@testable import UVRuntime

#if canImport(Glibc)
import Glibc
#endif

// MARK: - Harness

/// dnsmasq in the foreground; stopped by stop() (and deinit).
private final class ResolverDNSMasq {
    let port: UInt16
    private let process: Process

    static let records = [
        "--mx-host=mx.test,mx1.mx.test,10",
        "--mx-host=mx.test,mx2.mx.test,20",
        "--host-record=mx1.mx.test,127.0.0.2",
        "--host-record=mx2.mx.test,127.0.0.3,::1",
        "--cname=alias.test,mx.test,60",
        "--cname=alias2.test,mx2.mx.test,30",
        "--mx-host=null.test,.,0",          // RFC 7505 null MX: "MX 0 ."
        "--txt-record=s1._domainkey.txt.test,v=DKIM1; k=rsa; ,p=AB==",  // two character-strings
        "--txt-record=s1._domainkey.txt.test,second record",
        "--local=/test/",                   // unknown names under .test get NXDOMAIN, not REFUSED
        "--local-ttl=300",
    ]

    init() throws {
        var lastPort: UInt16 = 0
        for _ in 0..<5 {
            let port = resolverFreeUDPPort()
            lastPort = port
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/usr/sbin/dnsmasq")
            process.arguments = [
                "--keep-in-foreground", "--no-resolv", "--no-hosts", "--conf-file=/dev/null", "--pid-file=",
                "--port=\(port)", "--listen-address=127.0.0.1,::1", "--bind-interfaces",
            ] + ResolverDNSMasq.records
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
            try process.run()
            // Ready once it holds the UDP port.
            let deadline = Date().addingTimeInterval(5)
            while process.isRunning, !resolverUDPPortTaken(port), Date() < deadline {
                usleep(10_000)
            }
            if process.isRunning, resolverUDPPortTaken(port) {
                self.port = port
                self.process = process
                return
            }
            if process.isRunning { kill(process.processIdentifier, SIGKILL) }
            process.waitUntilExit()
        }
        throw ResolverTestFailure("dnsmasq did not start (last port \(lastPort))")
    }

    var server: String { "127.0.0.1:\(port)" }

    /// SIGKILL: Foundation's Process starts the child with the test thread's signal mask, in which
    /// SIGTERM is blocked, so terminate() would leave dnsmasq running.
    func stop() {
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }

    deinit { stop() }
}

private struct ResolverTestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

private func resolverFreeUDPPort() -> UInt16 {
    let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
    defer { close(fd) }
    var address = resolverLoopback(port: 0)
    _ = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
    }
    return UInt16(bigEndian: address.sin_port)
}

private func resolverUDPPortTaken(_ port: UInt16) -> Bool {
    let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
    defer { close(fd) }
    var address = resolverLoopback(port: port)
    let rc = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    return rc != 0 && errno == EADDRINUSE
}

private func resolverLoopback(port: UInt16) -> sockaddr_in {
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = port.bigEndian
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    return address
}

/// A UDP socket on 127.0.0.1 that receives queries and never answers (so the kernel sends no
/// port-unreachable either).
private final class ResolverBlackHole {
    let fd: Int32
    let port: UInt16
    init() {
        let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        self.fd = fd
        var address = resolverLoopback(port: 0)
        _ = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        port = UInt16(bigEndian: address.sin_port)
    }
    var server: String { "127.0.0.1:\(port)" }
    deinit { close(fd) }
}

/// An EventLoop of the test's own, run a turn at a time.
private final class ResolverTestLoop {
    let eventLoop: EventLoop
    var loop: UnsafeMutablePointer<uv_loop_t> { eventLoop.raw }
    private let ticker: UnsafeMutablePointer<uv_timer_t>

    init() throws {
        eventLoop = try EventLoop()
        ticker = .allocate(capacity: 1)
        UnsafeMutableRawPointer(ticker).initializeMemory(as: UInt8.self, repeating: 0, count: MemoryLayout<uv_timer_t>.size)
        uv_timer_init(eventLoop.raw, ticker)
    }

    /// Runs the loop until `done()` or `seconds` have passed; a 10 ms ticker bounds each turn.
    @discardableResult
    func run(seconds: Double, until done: () -> Bool) -> Bool {
        uv_timer_start(ticker, { _ in }, 10, 10)
        let deadline = Date().addingTimeInterval(seconds)
        while !done(), Date() < deadline {
            uv_run(loop, UV_RUN_ONCE)
        }
        uv_timer_stop(ticker)
        return done()
    }

    /// Runs the loop until `value` is set (at most 5 s) and returns it.
    func wait<T>(_ start: (@escaping (T) -> Void) -> Void) -> T? {
        var value: T?
        start { value = $0 }
        run(seconds: 5) { value != nil }
        return value
    }

    /// Closes the ticker, runs pending close callbacks, and returns the number of libuv handles still
    /// on the loop: not 0 if anything (a resolver's poll or timer) was left open. The EventLoop closes
    /// the loop itself when it goes.
    func close() -> Int {
        uv_close(UnsafeMutableRawPointer(ticker).assumingMemoryBound(to: uv_handle_t.self)) {
            UnsafeMutableRawPointer($0!).deallocate()
        }
        for _ in 0..<20 { uv_run(loop, UV_RUN_NOWAIT) }
        var open = 0
        uv_walk(loop, { _, count in count!.assumingMemoryBound(to: Int.self).pointee += 1 }, &open)
        return open
    }
}

private let resolverIgnoreSIGPIPE: Void = { signal(SIGPIPE, SIG_IGN); return () }()

/// dnsmasq, a loop and a Resolver pointed at that dnsmasq; `finish` closes and checks all three.
private func withDNSMasq(timeoutMilliseconds: Int = 2000, maxInFlight: Int = 256,
                         _ body: (Resolver, ResolverTestLoop, ResolverDNSMasq) throws -> Void) throws {
    _ = resolverIgnoreSIGPIPE
    let dns = try ResolverDNSMasq()
    defer { dns.stop() }
    let loop = try ResolverTestLoop()
    let resolver = try Resolver(loop: loop.eventLoop, servers: [dns.server], timeoutMilliseconds: timeoutMilliseconds,
                                tries: 2, maxInFlight: maxInFlight)
    try body(resolver, loop, dns)
    resolver.close()
    #expect(loop.close() == 0, "the resolver left a libuv handle open")
}

// MARK: - Tests against dnsmasq

// Closures are kept out of #expect/#require arguments: Swift 6.3 gave a closure inside #require the
// same symbol as a later closure outside it, so the later call ran the earlier closure's code.
@Suite(.serialized)
struct ResolverTests {
    @Test func mxWithTwoPreferences() throws {
        try withDNSMasq { resolver, loop, _ in
            var result: Result<DNSAnswer<[MXRecord]>, DNSError>?
            resolver.lookupMX("mx.test") { result = $0 }
            #expect(result == nil, "the callback ran before lookupMX returned")
            loop.run(seconds: 5) { result != nil }
            let answer = try #require(result).get()
            #expect(answer.records == [MXRecord(preference: 10, host: "mx1.mx.test"),
                                       MXRecord(preference: 20, host: "mx2.mx.test")])
            #expect(answer.ttl == 300)
            #expect(answer.canonicalName == nil)
            #expect(!answer.records[0].isNullMX)
        }
    }

    @Test func mxThroughCNAMETakesTheSmallestTTL() throws {
        try withDNSMasq { resolver, loop, _ in
            let answerResult = loop.wait { resolver.lookupMX("alias.test", $0) }
            let answer = try #require(answerResult).get()
            #expect(answer.records.map(\.host) == ["mx1.mx.test", "mx2.mx.test"])
            #expect(answer.canonicalName == "mx.test")
            #expect(answer.ttl == 60)
        }
    }

    @Test func addressesAAndAAAA() throws {
        try withDNSMasq { resolver, loop, _ in
            let bothResult = loop.wait { resolver.lookupAddresses("mx2.mx.test", $0) }
            let both = try #require(bothResult).get()
            #expect(both.records == ["127.0.0.3", "::1"])
            #expect(both.ttl == 300)
            #expect(both.canonicalName == nil)

            // AAAA is empty here: still a success with the A record alone.
            let v4Result = loop.wait { resolver.lookupAddresses("mx1.mx.test", $0) }
            let v4 = try #require(v4Result).get()
            #expect(v4.records == ["127.0.0.2"])

            let aliasResult = loop.wait { resolver.lookupAddresses("alias2.test", $0) }
            let alias = try #require(aliasResult).get()
            #expect(alias.records == ["127.0.0.3", "::1"])
            #expect(alias.canonicalName == "mx2.mx.test")
            #expect(alias.ttl == 30)
        }
    }

    @Test func ptrOfIPv4AndIPv6() throws {
        try withDNSMasq { resolver, loop, _ in
            let v4 = loop.wait { resolver.lookupPTR("127.0.0.2", $0) }
            let v4Names = try #require(v4).get()
            #expect(v4Names == ["mx1.mx.test"])
            let v6 = loop.wait { resolver.lookupPTR("::1", $0) }
            let v6Names = try #require(v6).get()
            #expect(v6Names == ["mx2.mx.test"])

            var bad: Result<[String], DNSError>?
            resolver.lookupPTR("not-an-address") { bad = $0 }
            #expect(bad == nil, "the callback ran before lookupPTR returned")
            loop.run(seconds: 5) { bad != nil }
            #expect(bad == .failure(.other(TERN_ARES_EBADNAME)))
        }
    }

    @Test func cname() throws {
        try withDNSMasq { resolver, loop, _ in
            let answerResult = loop.wait { resolver.lookupCNAME("alias.test", $0) }
            let answer = try #require(answerResult).get()
            #expect(answer.records == "mx.test")
            #expect(answer.canonicalName == "mx.test")
            #expect(answer.ttl == 60)
            let notAlias = loop.wait { resolver.lookupCNAME("mx1.mx.test", $0) }
            #expect(notAlias.flatMap(resolverError) == .noData)
        }
    }

    @Test func txtRecordsWithTheirStringsJoined() throws {
        try withDNSMasq { resolver, loop, _ in
            let answerResult = loop.wait { resolver.lookupTXT("s1._domainkey.txt.test", $0) }
            let answer = try #require(answerResult).get()
            #expect(Set(answer.records.map { String(decoding: $0, as: UTF8.self) })
                    == ["v=DKIM1; k=rsa; p=AB==", "second record"])
            let none = loop.wait { resolver.lookupTXT("mx.test", $0) }
            #expect(resolverError(try #require(none)) == .noData)
        }
    }

    @Test func nxdomainNoDataAndRefused() throws {
        try withDNSMasq { resolver, loop, _ in
            let mx = loop.wait { resolver.lookupMX("unknown.test", $0) }
            #expect(mx.flatMap(resolverError) == .nxdomain)
            let addresses = loop.wait { resolver.lookupAddresses("unknown.test", $0) }
            #expect(addresses.flatMap(resolverError) == .nxdomain)
            // The name has an A record but no MX.
            let noMX = loop.wait { resolver.lookupMX("mx1.mx.test", $0) }
            #expect(noMX.flatMap(resolverError) == .noData)
            // Outside .test dnsmasq has nowhere to forward to and refuses.
            let outside = loop.wait { resolver.lookupMX("example.com", $0) }
            #expect(outside.flatMap(resolverError) == .refused)
        }
    }

    @Test func nullMX() throws {
        try withDNSMasq { resolver, loop, _ in
            let answerResult = loop.wait { resolver.lookupMX("null.test", $0) }
            let answer = try #require(answerResult).get()
            #expect(answer.records == [MXRecord(preference: 0, host: "")])
            #expect(answer.records.first?.isNullMX == true)
        }
    }

    @Test func serverOverIPv6() throws {
        _ = resolverIgnoreSIGPIPE
        let dns = try ResolverDNSMasq()
        defer { dns.stop() }
        let loop = try ResolverTestLoop()
        let resolver = try Resolver(loop: loop.eventLoop, servers: ["[::1]:\(dns.port)"])
        let answer = loop.wait { resolver.lookupMX("mx.test", $0) }
        let records = try #require(answer).get().records
        #expect(records.count == 2)
        resolver.close()
        #expect(loop.close() == 0)
    }

    @Test func resolvConfChannelOpensAndCloses() throws {
        // No lookup: the machine's resolver is never asked anything.
        let loop = try ResolverTestLoop()
        let resolver = try Resolver(loop: loop.eventLoop, servers: [])
        resolver.close()
        #expect(resolver.core.closed)
        #expect(loop.close() == 0)
    }

    @Test func badServerStringThrows() throws {
        let loop = try ResolverTestLoop()
        #expect(throws: DNSError.self) { try Resolver(loop: loop.eventLoop, servers: ["not a server"]) }
        #expect(loop.close() == 0)
    }

    @Test func timeoutWithoutBlockingTheLoop() throws {
        let hole = ResolverBlackHole()
        let loop = try ResolverTestLoop()
        let resolver = try Resolver(loop: loop.eventLoop, servers: [hole.server], timeoutMilliseconds: 200, tries: 1)
        // A timer of the test's own keeps ticking while the lookup waits.
        let ticks = UnsafeMutablePointer<uv_timer_t>.allocate(capacity: 1)
        UnsafeMutableRawPointer(ticks).initializeMemory(as: UInt8.self, repeating: 0, count: MemoryLayout<uv_timer_t>.size)
        uv_timer_init(loop.loop, ticks)
        let counter = UnsafeMutablePointer<Int>.allocate(capacity: 1)
        counter.initialize(to: 0)
        ticks.pointee.data = UnsafeMutableRawPointer(counter)
        uv_timer_start(ticks, { $0!.pointee.data!.assumingMemoryBound(to: Int.self).pointee += 1 }, 20, 20)

        let started = Date()
        var result: Result<DNSAnswer<[MXRecord]>, DNSError>?
        resolver.lookupMX("mx.test") { result = $0 }
        #expect(Date().timeIntervalSince(started) < 0.05, "lookupMX blocked")
        loop.run(seconds: 5) { result != nil }
        let elapsed = Date().timeIntervalSince(started)

        #expect(result.flatMap(resolverError) == .timeout)
        #expect(elapsed >= 0.15 && elapsed < 2, "took \(elapsed) s")
        #expect(counter.pointee >= 4, "the loop ticked only \(counter.pointee) times while waiting")

        uv_close(UnsafeMutableRawPointer(ticks).assumingMemoryBound(to: uv_handle_t.self)) {
            UnsafeMutableRawPointer($0!).deallocate()
        }
        counter.deallocate()
        resolver.close()
        #expect(loop.close() == 0)
    }

    @Test func fiveHundredLookupsWithSixteenInFlight() throws {
        try withDNSMasq(maxInFlight: 16) { resolver, loop, _ in
            var mx: [Result<DNSAnswer<[MXRecord]>, DNSError>] = []
            var addresses: [Result<DNSAnswer<[String]>, DNSError>] = []
            for i in 0..<500 {
                if i % 2 == 0 {
                    resolver.lookupMX("mx.test") { mx.append($0) }
                } else {
                    resolver.lookupAddresses("mx2.mx.test") { addresses.append($0) }
                }
            }
            #expect(resolver.core.queuedCount == 500)
            loop.run(seconds: 20) { mx.count + addresses.count == 500 }
            #expect(mx.count == 250)
            #expect(addresses.count == 250)
            let mxGood = mx.allSatisfy { (try? $0.get().records.count) == 2 }
            #expect(mxGood)
            let addressesGood = addresses.allSatisfy { (try? $0.get().records) == ["127.0.0.3", "::1"] }
            #expect(addressesGood)
            #expect(resolver.core.peakInFlight == 16)
            #expect(resolver.core.inFlight == 0)
            #expect(resolver.core.queuedCount == 0)
        }
    }

    @Test func closeCancelsRunningAndQueuedLookups() throws {
        let hole = ResolverBlackHole()
        let loop = try ResolverTestLoop()
        let resolver = try Resolver(loop: loop.eventLoop, servers: [hole.server], timeoutMilliseconds: 5000,
                                    maxInFlight: 4)
        var results: [Result<DNSAnswer<[MXRecord]>, DNSError>] = []
        for i in 0..<20 {
            resolver.lookupMX("n\(i).test") { results.append($0) }
        }
        // Four queries are on the wire, sixteen wait.
        loop.run(seconds: 1) { resolver.core.inFlight == 4 }
        #expect(resolver.core.inFlight == 4)
        #expect(resolver.core.queuedCount == 16)
        #expect(results.isEmpty)

        resolver.close()
        loop.run(seconds: 1) { results.count == 20 }
        #expect(results.count == 20)
        let allCancelled = results.allSatisfy { resolverError($0) == .cancelled }
        #expect(allCancelled)

        var late: Result<DNSAnswer<[String]>, DNSError>?
        resolver.lookupAddresses("mx.test") { late = $0 }
        #expect(late.flatMap(resolverError) == .cancelled)
        #expect(loop.close() == 0)
    }

    @Test func closeFromInsideACallback() throws {
        try withDNSMasq(maxInFlight: 3) { resolver, loop, _ in
            var results: [Result<DNSAnswer<[MXRecord]>, DNSError>] = []
            for _ in 0..<10 {
                resolver.lookupMX("mx.test") { result in
                    results.append(result)
                    if results.count == 1 { resolver.close() }
                }
            }
            loop.run(seconds: 5) { results.count == 10 }
            #expect(results.count == 10)
            #expect((try? results.first?.get())?.records.count == 2)
            let restCancelled = results.dropFirst().allSatisfy { resolverError($0) == .cancelled }
            #expect(restCancelled)
            #expect(resolver.core.closed)
        }
    }

    @Test func droppingTheResolverClosesIt() throws {
        let hole = ResolverBlackHole()
        let loop = try ResolverTestLoop()
        var result: Result<DNSAnswer<[MXRecord]>, DNSError>?
        do {
            let resolver = try Resolver(loop: loop.eventLoop, servers: [hole.server], timeoutMilliseconds: 5000)
            resolver.lookupMX("mx.test") { result = $0 }
            loop.run(seconds: 1) { resolver.core.inFlight == 1 }
        }
        loop.run(seconds: 1) { result != nil }
        #expect(result.flatMap(resolverError) == .cancelled)
        #expect(loop.close() == 0)
    }
}

private func resolverError<T>(_ result: Result<T, DNSError>) -> DNSError? {
    if case .failure(let error) = result { return error }
    return nil
}

// MARK: - Decoder on hand-built replies

/// A reply to "x.test MX": x.test CNAME y.test (TTL 50), y.test MX 0 . (TTL 100), names compressed.
private let nullMXThroughCNAME: [UInt8] = {
    var m: [UInt8] = [0x12, 0x34, 0x81, 0x80, 0, 1, 0, 2, 0, 0, 0, 0]
    m += [1, UInt8(ascii: "x"), 4] + Array("test".utf8) + [0, 0, 15, 0, 1]  // question at offset 12
    m += [0xC0, 12, 0, 5, 0, 1, 0, 0, 0, 50, 0, 4]                          // x.test CNAME
    let target = m.count
    m += [1, UInt8(ascii: "y"), 0xC0, 14]                                     // y + pointer to "test"
    m += [0xC0, UInt8(target), 0, 15, 0, 1, 0, 0, 0, 100, 0, 3, 0, 0, 0]       // y.test MX 0 .
    return m
}()

@Suite struct ResolverDecodeTests {
    @Test func nullMXFollowedThroughACompressedCNAME() throws {
        let answer = try ResolverDecode.mx(.success(nullMXThroughCNAME), queried: "x.test").get()
        #expect(answer.records == [MXRecord(preference: 0, host: "")])
        #expect(answer.records[0].isNullMX)
        #expect(answer.canonicalName == "y.test")
        #expect(answer.ttl == 50)
    }

    @Test func truncatedRepliesAreBadResponses() {
        for length in 0..<nullMXThroughCNAME.count {
            let result = ResolverDecode.mx(.success(Array(nullMXThroughCNAME.prefix(length))), queried: "x.test")
            #expect(resolverError(result) != nil, "a reply cut at \(length) bytes was accepted")
        }
    }

    /// Damaged replies from fixed seeds (the seed is the test case's argument and in each message, so
    /// a failure replays): the decoders neither crash nor give two answers for the same bytes.
    @Test(arguments: 1...20 as ClosedRange<UInt64>)
    func randomBytesNeverCrashTheDecoders(seed: UInt64) {
        var generator = SplitMix64(seed: seed)
        let reverse = ResolverReverseName("127.0.0.2")!
        func decoded(_ bytes: [UInt8]) -> String {
            "\(ResolverDecode.mx(.success(bytes), queried: "x.test"))"
                + "\(ResolverDecode.addresses(a: .success(bytes), aaaa: .success(bytes), queried: "x.test"))"
                + "\(ResolverDecode.ptr(.success(bytes), reverse: reverse))"
                + "\(ResolverDecode.cname(.success(bytes), queried: "x.test"))"
                + "\(ResolverDecode.txt(.success(bytes), queried: "x.test"))"
        }
        for round in 0..<100 {
            var bytes = nullMXThroughCNAME
            for _ in 0..<3 {
                bytes[Int.random(in: 0..<bytes.count, using: &generator)] = UInt8.random(in: 0...255, using: &generator)
            }
            let first = decoded(bytes)
            #expect(decoded(bytes) == first, "seed \(seed), round \(round)")
        }
    }

    @Test func addressHalvesCombine() {
        let a: ResolverDecode.Reply = .failure(.noData)
        #expect(resolverError(ResolverDecode.addresses(a: a, aaaa: .failure(.noData), queried: "h")) == .noData)
        #expect(resolverError(ResolverDecode.addresses(a: a, aaaa: .failure(.nxdomain), queried: "h")) == .nxdomain)
        #expect(resolverError(ResolverDecode.addresses(a: a, aaaa: .failure(.timeout), queried: "h")) == .timeout)
        #expect(resolverError(ResolverDecode.addresses(a: .failure(.cancelled), aaaa: .failure(.nxdomain),
                                                       queried: "h")) == .cancelled)
    }

    @Test func reverseNames() {
        #expect(ResolverReverseName("192.0.2.1")?.name == "1.2.0.192.in-addr.arpa")
        #expect(ResolverReverseName("2001:db8::1")?.name
                == "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa")
        #expect(ResolverReverseName("[::1]")?.family == Int32(AF_INET6))
        #expect(ResolverReverseName("mx.test") == nil)
    }

    @Test func errorMapping() {
        #expect(DNSError(aresStatus: TERN_ARES_ENOTFOUND) == .nxdomain)
        #expect(DNSError(aresStatus: TERN_ARES_ENODATA) == .noData)
        #expect(DNSError(aresStatus: TERN_ARES_ESERVFAIL) == .serverFailure)
        #expect(DNSError(aresStatus: TERN_ARES_EREFUSED) == .refused)
        #expect(DNSError(aresStatus: TERN_ARES_ETIMEOUT) == .timeout)
        #expect(DNSError(aresStatus: TERN_ARES_EBADRESP) == .badResponse)
        #expect(DNSError(aresStatus: TERN_ARES_ECANCELLED) == .cancelled)
        #expect(DNSError(aresStatus: TERN_ARES_EDESTRUCTION) == .cancelled)
        #expect(DNSError(aresStatus: TERN_ARES_ECONNREFUSED) == .other(TERN_ARES_ECONNREFUSED))
    }
}

@Suite struct DNSErrorTextTests {
    @Test func cAresSaysWhatAStatusMeans() {
        // ARES_ECONNREFUSED is 11 in every c-ares release: what an unreachable resolver gives.
        #expect(DNSError.text(ofStatus: 11) == "Could not contact DNS servers")
        #expect(!DNSError.text(ofStatus: 4).isEmpty)  // ARES_ENOTFOUND
    }
}
