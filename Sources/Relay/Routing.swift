// Routing.swift: where mail for a domain goes, as pure functions of the DNS answers.
//
// RFC 5321 5.1: look up the domain's MX records; try the hosts in order of preference, randomising
// among equal preferences; if this host is in the list, use only the hosts better than itself; with
// no MX records, the domain itself is the one host (the "implicit MX", preference 0). RFC 7505: a
// single "MX 0 ." says the domain takes no mail. Router (Router.swift) asks the questions; the
// answers are turned into a RoutePlan here, so every decision is tested without a network.
//
// A next hop from [routes] is written as Postfix writes relayhost: "[host]:port" is that host, no
// MX lookup; "host:port" is the MX lookup of host.

import UVRuntime

// MARK: - Next hops from [routes]

/// A next hop as the config names it: "[10.0.0.5]:25", "[::1]:2525", "[relay.example]",
/// "smtp.upstream.example:587", "mx.test".
public struct NextHopSpec: Equatable, Sendable, CustomStringConvertible {
    /// A host name (lowercased, no trailing dot) or, in brackets only, an IPv4 or IPv6 address.
    public var host: String
    /// nil: delivery.port.
    public var port: UInt16?
    /// false for "[host]": deliver to that host's addresses, no MX lookup.
    public var lookupMX: Bool

    public init(host: String, port: UInt16? = nil, lookupMX: Bool) {
        self.host = host
        self.port = port
        self.lookupMX = lookupMX
    }

    /// Throws a ConfigError whose message says what is wrong (the config reader adds the key).
    public init(parsing text: String) throws {
        func bad(_ why: String) -> ConfigError {
            ConfigError(message: "\"\(text)\" is not a next hop (\(why)); write \"[host]:port\", \"[ip]:port\" or \"host:port\"")
        }
        var host: Substring
        var portText: Substring?
        let bracketed = text.hasPrefix("[")
        if bracketed {
            guard let close = text.firstIndex(of: "]") else { throw bad("missing \"]\"") }
            host = text[text.index(after: text.startIndex)..<close]
            let rest = text[text.index(after: close)...]
            if !rest.isEmpty {
                guard rest.hasPrefix(":") else { throw bad("expected \":port\" after \"]\"") }
                portText = rest.dropFirst()
            }
            if host.lowercased().hasPrefix("ipv6:") { host = host.dropFirst(5) }  // RFC 5321 4.1.3 style
        } else {
            if text.contains("]") { throw bad("\"]\" without \"[\"") }
            if let colon = text.lastIndex(of: ":") {
                host = text[..<colon]
                portText = text[text.index(after: colon)...]
                if host.contains(":") { throw bad("write an IPv6 address in brackets, like \"[::1]:25\"") }
            } else {
                host = Substring(text)
            }
        }
        if let portText {
            guard !portText.isEmpty, portText.count <= 5, portText.allSatisfy({ $0.isASCII && $0.isNumber }),
                  let port = Int(portText), (1...65535).contains(port)
            else { throw bad("port must be 1 to 65535") }
            self.port = UInt16(port)
        } else {
            self.port = nil
        }
        let hostText = String(host)
        if let ip = IPAddress(hostText) {
            guard bracketed else { throw bad("an address has no MX records: write it in brackets, like \"[\(hostText)]\"") }
            self.host = ip.description
        } else {
            guard !hostText.isEmpty else { throw bad("no host") }
            guard isPlausibleDomain(hostText) else { throw bad("\"\(hostText)\" is not a host name or an IP address") }
            self.host = normalizedDomain(hostText)
        }
        self.lookupMX = !bracketed
    }

    public var description: String {
        let shown = lookupMX ? host : "[\(host)]"
        return port.map { "\(shown):\($0)" } ?? shown
    }
}

// MARK: - Plans

/// One address to try, in order.
public struct DeliveryTarget: Equatable, Sendable, CustomStringConvertible {
    /// The MX host (or the route's host, or the domain for an implicit MX) the address belongs to.
    public var host: String
    /// A numeric IPv4 or IPv6 address.
    public var address: String
    public var port: UInt16
    /// The MX preference (0 for an implicit MX, a route or an address literal).
    public var preference: Int

    public init(host: String, address: String, port: UInt16, preference: Int) {
        self.host = host
        self.address = address
        self.port = port
        self.preference = preference
    }

    public var description: String {
        let shown = address.contains(":") ? "[\(address)]" : address
        return "\(host) \(shown):\(port) (preference \(preference))"
    }
}

/// What to do with mail for a domain now.
public enum RoutePlan: Equatable, Sendable {
    /// Every address of every usable MX host: MX preference order, hosts of equal preference
    /// shuffled (RFC 5321 5.1), each host's addresses in the resolver's order (IPv4, then IPv6).
    /// Never empty.
    case deliver([DeliveryTarget])
    /// Permanent: the recipients bounce with this enhanced status code (RFC 3463).
    case bounce(status: String, reason: String)
    /// Temporary: the recipients stay deferred and are tried again later.
    case retry(reason: String)
}

/// Who "ourselves" is, for RFC 5321 5.1's "stop before itself": our hostname, or an address we
/// listen on. Wildcard listen addresses (0.0.0.0, ::) say nothing and are ignored.
public struct SelfIdentity: Equatable, Sendable {
    /// Lowercased, no trailing dot; "" matches no host.
    public let hostname: String
    /// Canonical text of each address (IPAddress.description).
    public let addresses: Set<String>

    public init(hostname: String, addresses: [String]) {
        self.hostname = normalizedDomain(hostname)
        var set = Set<String>()
        for text in addresses {
            var ip = text
            if ip.hasPrefix("[") && ip.hasSuffix("]") { ip = String(ip.dropFirst().dropLast()) }
            guard let address = IPAddress(ip), !address.bytes.allSatisfy({ $0 == 0 }) else { continue }
            set.insert(address.description)
        }
        self.addresses = set
    }

    public func isSelf(host: String) -> Bool {
        !hostname.isEmpty && normalizedDomain(host) == hostname
    }

    public func isSelf(address: String) -> Bool {
        guard let ip = IPAddress(address) else { return false }
        return addresses.contains(ip.description)
    }

    /// The host is us by name, or one of its addresses is ours.
    public func isSelf(host: String, addresses: [String]) -> Bool {
        isSelf(host: host) || addresses.contains(where: isSelf(address:))
    }
}

// MARK: - MX ordering

/// Orders MX records, drops those at or above our own preference when we are in the list (RFC 5321
/// 5.1: "stop before itself"), shuffles equal preferences with the given random generator.
/// Null MX entries are dropped (the caller decides on a lone null MX first); a host listed twice
/// keeps its best preference. loopsToSelf: we were in the list and nothing better was left.
public func orderMX(_ records: [MXRecord], isSelf: (String) -> Bool,
                    random: inout some RandomNumberGenerator) -> (hosts: [MXRecord], loopsToSelf: Bool) {
    var seen = Set<String>()
    let unique = records.filter { !$0.isNullMX }
        .sorted { $0.preference < $1.preference }  // stable: answer order among equals until shuffled
        .filter { seen.insert(normalizedDomain($0.host)).inserted }
    var ordered: [MXRecord] = []
    var start = 0
    while start < unique.count {
        var end = start
        while end < unique.count, unique[end].preference == unique[start].preference { end += 1 }
        ordered += unique[start..<end].shuffled(using: &random)
        start = end
    }
    guard let ourPreference = ordered.filter({ isSelf($0.host) }).map(\.preference).min() else {
        return (ordered, false)
    }
    let better = ordered.filter { $0.preference < ourPreference }
    return (better, better.isEmpty)
}

// MARK: - From DNS answers to a plan

/// What the MX answer says to do next.
public enum MXStep: Equatable {
    /// Resolve these hosts' addresses. implicitMX: the domain had no MX records and is its own host.
    case resolve([MXRecord], implicitMX: Bool)
    /// Decided without addresses.
    case done(RoutePlan)
}

/// Step one: the answer to "MX domain". NXDOMAIN bounces (5.1.2), a lone null MX bounces (5.1.10,
/// RFC 7505 3), no MX records means the implicit MX (RFC 5321 5.1), anything else is temporary.
public func planForMX(domain: String, _ answer: Result<[MXRecord], DNSError>) -> MXStep {
    switch answer {
    case .success(let records):
        let usable = records.filter { !$0.isNullMX }
        // RFC 7505 says a null MX stands alone; if a broken zone mixes it with real hosts, use those.
        if usable.isEmpty {
            return records.isEmpty
                ? .resolve([MXRecord(preference: 0, host: domain)], implicitMX: true)
                : .done(.bounce(status: "5.1.10", reason: "\(domain) accepts no mail (null MX, RFC 7505)"))
        }
        return .resolve(usable, implicitMX: false)
    case .failure(.noData):
        return .resolve([MXRecord(preference: 0, host: domain)], implicitMX: true)
    case .failure(.nxdomain):
        return .done(.bounce(status: "5.1.2", reason: "domain \(domain) does not exist (NXDOMAIN)"))
    case .failure(let error):
        return .done(.retry(reason: "MX lookup for \(domain) failed: \(dnsErrorText(error))"))
    }
}

/// Step two: the hosts' addresses (keyed by host name as in `mx`; a missing host counts as not
/// answered). Hosts that are ourselves by name or address cut the list (RFC 5321 5.1); a loop with
/// nothing better bounces 5.4.6. Hosts without addresses are skipped; if none has any, the plan is
/// a retry (an MX host that does not resolve is often a zone being fixed; the queue lifetime bounds
/// the wait), except for an implicit MX, where the domain itself has no address: NXDOMAIN bounces
/// 5.1.2, no A/AAAA bounces 5.4.4 (Postfix does the same), anything else retries.
/// An address already listed for a better host is not listed again.
public func planDelivery(domain: String, mx: [MXRecord], implicitMX: Bool,
                         addresses: [String: Result<[String], DNSError>], port: UInt16,
                         identity: SelfIdentity, random: inout some RandomNumberGenerator) -> RoutePlan {
    func addressesOf(_ host: String) -> [String] { (try? addresses[host]?.get()) ?? [] }
    let ordered = orderMX(mx, isSelf: { identity.isSelf(host: $0, addresses: addressesOf($0)) }, random: &random)
    if ordered.loopsToSelf {
        let what = implicitMX ? "\(domain) (no MX) is this host" : "best MX for \(domain) is this host"
        return .bounce(status: "5.4.6", reason: "mail for \(domain) loops back to myself: \(what)")
    }
    var targets: [DeliveryTarget] = []
    var listed = Set<String>()
    var failures: [String] = []
    for record in ordered.hosts {
        switch addresses[record.host] ?? .failure(.cancelled) {
        case .success(let list):
            for address in list where listed.insert(address).inserted {
                targets.append(DeliveryTarget(host: record.host, address: address, port: port,
                                              preference: Int(record.preference)))
            }
        case .failure(let error):
            failures.append("\(record.host): \(dnsErrorText(error))")
        }
    }
    if !targets.isEmpty { return .deliver(targets) }
    if implicitMX, let only = ordered.hosts.first {
        switch addresses[only.host] {
        case .failure(.nxdomain)?:
            return .bounce(status: "5.1.2", reason: "domain \(domain) does not exist (NXDOMAIN)")
        case .failure(.noData)?:
            return .bounce(status: "5.4.4", reason: "\(domain) has no MX and no A/AAAA records")
        default:
            return .retry(reason: "address lookup for \(domain) (no MX) failed: \(failures.joined(separator: "; "))")
        }
    }
    return .retry(reason: "no MX host of \(domain) has an address: \(failures.joined(separator: "; "))")
}

/// A route's next hop "[host]" resolved: every address of that host, preference 0.
public func planForHost(_ host: String, _ answer: Result<[String], DNSError>, port: UInt16) -> RoutePlan {
    switch answer {
    case .success(let list) where !list.isEmpty:
        var seen = Set<String>()
        return .deliver(list.filter { seen.insert($0).inserted }
            .map { DeliveryTarget(host: host, address: $0, port: port, preference: 0) })
    case .success:
        return .retry(reason: "address lookup for \(host) failed: \(dnsErrorText(.noData))")
    case .failure(let error):
        return .retry(reason: "address lookup for \(host) failed: \(dnsErrorText(error))")
    }
}

/// A next hop from [routes] is the administrator's choice: a DNS answer that would bounce mail for
/// a recipient's own domain (NXDOMAIN, null MX, a loop) only defers it until the config is fixed.
public func softened(_ plan: RoutePlan, route: NextHopSpec) -> RoutePlan {
    if case .bounce(let status, let reason) = plan {
        return .retry(reason: "route \(route): \(reason) (\(status); deferred, not bounced, for a configured route)")
    }
    return plan
}

// MARK: - Address literals

/// "[192.0.2.1]" or "[IPv6:2001:db8::1]" (RFC 5321 4.1.3) → the address's canonical text;
/// nil when `domain` is not in brackets. Throws nothing: a bad literal is `.some(nil)`.
func addressLiteral(_ domain: String) -> String?? {
    guard domain.hasPrefix("["), domain.hasSuffix("]"), domain.count >= 2 else { return nil }
    var inner = String(domain.dropFirst().dropLast())
    var wantIPv6 = false
    if inner.lowercased().hasPrefix("ipv6:") {
        inner = String(inner.dropFirst(5))
        wantIPv6 = true
    }
    guard let raw = IPAddress.parseRaw(inner), (raw.family == .ipv6) == wantIPv6 else { return .some(nil) }
    return .some(raw.unmapped.description)
}

// MARK: - Helpers

/// Lowercased, without a trailing dot.
func normalizedDomain(_ name: String) -> String {
    var name = name.lowercased()
    if name.hasSuffix(".") { name.removeLast() }
    return name
}

/// Words for a DNS failure in a deferral or bounce reason.
func dnsErrorText(_ error: DNSError) -> String {
    switch error {
    case .nxdomain: return "no such domain (NXDOMAIN)"
    case .noData: return "no records of that type"
    case .serverFailure: return "server failure (SERVFAIL)"
    case .refused: return "query refused (REFUSED)"
    case .timeout: return "timed out"
    case .badResponse: return "bad response"
    case .cancelled: return "lookup cancelled"
    case .other(let status): return "resolver error \(status): \(DNSError.text(ofStatus: status))"
    }
}
