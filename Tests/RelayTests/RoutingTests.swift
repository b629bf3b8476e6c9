// RoutingTests.swift: next-hop parsing, MX ordering and plans from DNS answers, without a network.

import Randomness
import Testing
import UVRuntime
@testable import Relay

private func mx(_ preference: UInt16, _ host: String) -> MXRecord { MXRecord(preference: preference, host: host) }

private func target(_ host: String, _ address: String, _ port: UInt16 = 25, _ preference: Int) -> DeliveryTarget {
    DeliveryTarget(host: host, address: address, port: port, preference: preference)
}

private let nobody = SelfIdentity(hostname: "relay.example", addresses: [])

@Suite struct RoutingNextHopSpecTests {
    @Test(arguments: [
        ("[::1]:2525", "::1", UInt16?(2525), false),
        ("[127.0.0.2]", "127.0.0.2", nil, false),
        ("mx.test", "mx.test", nil, true),
        ("mx.test:2525", "mx.test", 2525, true),
        ("[Relay.Example.]:587", "relay.example", 587, false),
        ("[IPv6:2001:DB8::1]", "2001:db8::1", nil, false),
        ("[10.0.0.5]:25", "10.0.0.5", 25, false),
        ("MX.Test.", "mx.test", nil, true),
    ])
    func parses(text: String, host: String, port: UInt16?, lookupMX: Bool) throws {
        let spec = try NextHopSpec(parsing: text)
        #expect(spec == NextHopSpec(host: host, port: port, lookupMX: lookupMX))
    }

    @Test(arguments: [
        ("", "no host"), ("[]", "no host"), ("[10.0.0.5", "missing \"]\""), ("10.0.0.5]", "without \"[\""),
        ("10.0.0.5", "brackets"), ("10.0.0.5:25", "brackets"), ("::1", "brackets"), ("2001:db8::1:25", "brackets"),
        ("[::1]25", "\":port\""), ("mx.test:", "port must be 1 to 65535"), ("mx.test:0", "port must be 1 to 65535"),
        ("mx.test:65536", "port must be 1 to 65535"), ("mx.test:+25", "port must be 1 to 65535"),
        ("[::1]:2525:1", "port must be 1 to 65535"), ("bad_host", "is not a host name"),
        ("mx .test", "is not a host name"), ("-mx.test", "is not a host name"),
    ])
    func rejects(text: String, fragment: String) {
        #expect {
            try NextHopSpec(parsing: text)
        } throws: { error in
            guard let error = error as? ConfigError else { return false }
            return error.message.contains(fragment) && error.message.contains("\"\(text)\"")
        }
    }

    @Test func description() throws {
        #expect(try NextHopSpec(parsing: "[::1]:2525").description == "[::1]:2525")
        #expect(try NextHopSpec(parsing: "mx.test").description == "mx.test")
    }
}

@Suite struct RoutingOrderMXTests {
    @Test func preferenceOrder() {
        var random = SplitMix64(seed: 1)
        let result = orderMX([mx(30, "c"), mx(10, "a"), mx(20, "b")], isSelf: { _ in false }, random: &random)
        #expect(result.hosts.map(\.host) == ["a", "b", "c"])
        #expect(result.loopsToSelf == false)
    }

    @Test func equalPreferencesAreShuffledBothWays() {
        var firsts = Set<String>()
        var orders = Set<[String]>()
        for seed in 0..<64 as Range<UInt64> {
            var random = SplitMix64(seed: seed)
            let hosts = orderMX([mx(10, "a"), mx(10, "b"), mx(20, "c"), mx(5, "z")], isSelf: { _ in false },
                                random: &random).hosts.map(\.host)
            #expect(hosts.first == "z" && hosts.last == "c", "\(hosts)")
            firsts.insert(hosts[1])
            orders.insert(hosts)
        }
        #expect(firsts == ["a", "b"])
        #expect(orders == [["z", "a", "b", "c"], ["z", "b", "a", "c"]])
    }

    @Test func sameSeedSameOrder() {
        let records = (0..<8).map { mx(10, "h\($0)") }
        var one = SplitMix64(seed: 42), two = SplitMix64(seed: 42)
        let first = orderMX(records, isSelf: { _ in false }, random: &one).hosts
        let second = orderMX(records, isSelf: { _ in false }, random: &two).hosts
        #expect(first == second)
        #expect(Set(first.map(\.host)) == Set(records.map(\.host)))
    }

    @Test func stopsBeforeItself() {
        var random = SplitMix64(seed: 7)
        let result = orderMX([mx(10, "a"), mx(20, "me"), mx(20, "peer"), mx(30, "c")], isSelf: { $0 == "me" },
                             random: &random)
        #expect(result.hosts.map(\.host) == ["a"])
        #expect(result.loopsToSelf == false)
    }

    @Test func selfAtTheTopLoops() {
        var random = SplitMix64(seed: 7)
        let best = orderMX([mx(10, "me"), mx(20, "b")], isSelf: { $0 == "me" }, random: &random)
        #expect(best.hosts.isEmpty)
        #expect(best.loopsToSelf == true)
        // A peer at our own preference is not better than us: RFC 5321 5.1 drops "equal to or greater".
        let tied = orderMX([mx(10, "peer"), mx(10, "me")], isSelf: { $0 == "me" }, random: &random)
        #expect(tied.hosts.isEmpty)
        #expect(tied.loopsToSelf == true)
    }

    @Test func nullEntriesAndDuplicatesDrop() {
        var random = SplitMix64(seed: 3)
        let result = orderMX([mx(0, ""), mx(30, "A.example"), mx(10, "a.example"), mx(20, "b.example")],
                             isSelf: { _ in false }, random: &random)
        #expect(result.hosts == [mx(10, "a.example"), mx(20, "b.example")])
    }
}

@Suite struct RoutingPlanTests {
    @Test func mxAnswers() {
        #expect(planForMX(domain: "null.test", .success([mx(0, "")]))
                == .done(.bounce(status: "5.1.10", reason: "null.test accepts no mail (null MX, RFC 7505)")))
        guard case .done(.bounce(let status, _)) = planForMX(domain: "no.test", .failure(.nxdomain)) else {
            Issue.record("NXDOMAIN did not bounce")
            return
        }
        #expect(status == "5.1.2")
        #expect(planForMX(domain: "bare.test", .failure(.noData))
                == .resolve([mx(0, "bare.test")], implicitMX: true))
        #expect(planForMX(domain: "m.test", .success([mx(10, "a"), mx(0, ""), mx(20, "b")]))
                == .resolve([mx(10, "a"), mx(20, "b")], implicitMX: false))
        for error in [DNSError.serverFailure, .timeout, .refused, .badResponse, .cancelled, .other(12)] {
            let step = planForMX(domain: "x.test", .failure(error))
            guard case .done(.retry(let reason)) = step else {
                Issue.record("\(error) gave \(step)")
                continue
            }
            #expect(reason.contains("x.test"))
        }
    }

    @Test func targetsInPreferenceOrderWithEveryAddress() {
        var random = SplitMix64(seed: 1)
        let plan = planDelivery(domain: "d.test", mx: [mx(20, "b.test"), mx(10, "a.test")], implicitMX: false,
                                addresses: ["a.test": .success(["192.0.2.1", "2001:db8::1"]),
                                            "b.test": .success(["192.0.2.2"])],
                                port: 2600, identity: nobody, random: &random)
        #expect(plan == .deliver([target("a.test", "192.0.2.1", 2600, 10), target("a.test", "2001:db8::1", 2600, 10),
                                  target("b.test", "192.0.2.2", 2600, 20)]))
    }

    @Test func hostsWithoutAddressesAreSkipped() {
        var random = SplitMix64(seed: 1)
        let plan = planDelivery(domain: "d.test", mx: [mx(10, "a.test"), mx(20, "b.test"), mx(30, "c.test")],
                                implicitMX: false,
                                addresses: ["a.test": .failure(.timeout), "b.test": .failure(.nxdomain),
                                            "c.test": .success(["192.0.2.3"])],
                                port: 25, identity: nobody, random: &random)
        #expect(plan == .deliver([target("c.test", "192.0.2.3", 25, 30)]))
    }

    @Test func noHostResolvesRetries() {
        var random = SplitMix64(seed: 1)
        for failures in [[DNSError.timeout, .nxdomain], [.nxdomain, .nxdomain], [.noData, .serverFailure]] {
            let plan = planDelivery(domain: "d.test", mx: [mx(10, "a.test"), mx(20, "b.test")], implicitMX: false,
                                    addresses: ["a.test": .failure(failures[0]), "b.test": .failure(failures[1])],
                                    port: 25, identity: nobody, random: &random)
            guard case .retry(let reason) = plan else {
                Issue.record("\(failures) gave \(plan)")
                continue
            }
            #expect(reason.contains("a.test") && reason.contains("b.test"), "\(reason)")
        }
    }

    @Test func implicitMX() {
        var random = SplitMix64(seed: 1)
        func plan(_ answer: Result<[String], DNSError>) -> RoutePlan {
            planDelivery(domain: "bare.test", mx: [mx(0, "bare.test")], implicitMX: true,
                         addresses: ["bare.test": answer], port: 25, identity: nobody, random: &random)
        }
        #expect(plan(.success(["192.0.2.7"])) == .deliver([target("bare.test", "192.0.2.7", 25, 0)]))
        #expect(plan(.failure(.nxdomain)) == .bounce(status: "5.1.2", reason: "domain bare.test does not exist (NXDOMAIN)"))
        #expect(plan(.failure(.noData)) == .bounce(status: "5.4.4", reason: "bare.test has no MX and no A/AAAA records"))
        guard case .retry = plan(.failure(.timeout)) else {
            Issue.record("a timeout did not retry")
            return
        }
    }

    @Test func selfByNameOrAddressCutsTheList() {
        var random = SplitMix64(seed: 1)
        let me = SelfIdentity(hostname: "MX2.d.test.", addresses: ["0.0.0.0", "::", "192.0.2.30"])
        let byName = planDelivery(domain: "d.test", mx: [mx(10, "mx1.d.test"), mx(20, "mx2.d.test"), mx(30, "mx3.d.test")],
                                  implicitMX: false,
                                  addresses: ["mx1.d.test": .success(["192.0.2.1"]), "mx2.d.test": .success(["192.0.2.2"]),
                                              "mx3.d.test": .success(["192.0.2.3"])],
                                  port: 25, identity: me, random: &random)
        #expect(byName == .deliver([target("mx1.d.test", "192.0.2.1", 25, 10)]))
        let byAddress = planDelivery(domain: "e.test", mx: [mx(10, "a.e.test"), mx(20, "b.e.test"), mx(30, "c.e.test")],
                                     implicitMX: false,
                                     addresses: ["a.e.test": .success(["192.0.2.1"]),
                                                 "b.e.test": .success(["2001:db8::9", "192.0.2.30"]),
                                                 "c.e.test": .success(["192.0.2.3"])],
                                     port: 25, identity: me, random: &random)
        #expect(byAddress == .deliver([target("a.e.test", "192.0.2.1", 25, 10)]))
    }

    @Test func loopToSelfBounces() {
        var random = SplitMix64(seed: 1)
        let me = SelfIdentity(hostname: "mx1.d.test", addresses: [])
        let plan = planDelivery(domain: "d.test", mx: [mx(10, "mx1.d.test"), mx(20, "mx2.d.test")], implicitMX: false,
                                addresses: ["mx1.d.test": .success(["192.0.2.1"]), "mx2.d.test": .success(["192.0.2.2"])],
                                port: 25, identity: me, random: &random)
        guard case .bounce(let status, let reason) = plan else {
            Issue.record("gave \(plan)")
            return
        }
        #expect(status == "5.4.6")
        #expect(reason.contains("loops back to myself"))
    }

    @Test func anAddressIsListedOnce() {
        var random = SplitMix64(seed: 1)
        let plan = planDelivery(domain: "d.test", mx: [mx(10, "a.test"), mx(20, "b.test")], implicitMX: false,
                                addresses: ["a.test": .success(["192.0.2.1"]), "b.test": .success(["192.0.2.1", "192.0.2.2"])],
                                port: 25, identity: nobody, random: &random)
        #expect(plan == .deliver([target("a.test", "192.0.2.1", 25, 10), target("b.test", "192.0.2.2", 25, 20)]))
    }

    @Test func routeBouncesAreSoftened() throws {
        let spec = try NextHopSpec(parsing: "relay.test:2525")
        guard case .retry(let reason) = softened(.bounce(status: "5.1.2", reason: "gone"), route: spec) else {
            Issue.record("a route's bounce was not softened")
            return
        }
        #expect(reason.contains("relay.test:2525") && reason.contains("gone"))
        let deliver = RoutePlan.deliver([target("relay.test", "192.0.2.1", 2525, 0)])
        #expect(softened(deliver, route: spec) == deliver)
    }

    @Test func hostRoute() {
        #expect(planForHost("relay.test", .success(["192.0.2.1", "::1"]), port: 587)
                == .deliver([target("relay.test", "192.0.2.1", 587, 0), target("relay.test", "::1", 587, 0)]))
        guard case .retry = planForHost("relay.test", .failure(.nxdomain), port: 587) else {
            Issue.record("a route host that does not resolve did not retry")
            return
        }
    }

    @Test func selfIdentity() {
        let me = SelfIdentity(hostname: "Relay.Example.", addresses: ["0.0.0.0", "::", "[::1]", "192.0.2.5", "junk"])
        #expect(me.addresses == ["::1", "192.0.2.5"])
        #expect(me.isSelf(host: "relay.example") && me.isSelf(host: "RELAY.example."))
        #expect(!me.isSelf(host: "relay.example.org"))
        #expect(me.isSelf(address: "0:0:0:0:0:0:0:1") && me.isSelf(address: "::ffff:192.0.2.5"))
        #expect(!me.isSelf(address: "0.0.0.0") && !me.isSelf(address: "192.0.2.6"))
        #expect(!SelfIdentity(hostname: "", addresses: []).isSelf(host: ""))
    }

    @Test func addressLiterals() {
        #expect(addressLiteral("[192.0.2.1]") == .some("192.0.2.1"))
        #expect(addressLiteral("[ipv6:2001:DB8::1]") == .some("2001:db8::1"))
        #expect(addressLiteral("[2001:db8::1]") == .some(nil))   // RFC 5321 4.1.3 wants the IPv6: tag
        #expect(addressLiteral("[IPv6:192.0.2.1]") == .some(nil))
        #expect(addressLiteral("[example.com]") == .some(nil))
        #expect(addressLiteral("example.com") == nil)
    }
}
