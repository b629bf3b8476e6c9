// Router.swift: asks DNS where mail for a domain goes, on the loop, and caches the answers.
//
// The decisions are Routing.swift's pure functions; this file only asks the questions: [routes]
// first (the exact domain, then "*"), else the domain's MX records, then every MX host's A/AAAA
// records, all at once. CNAME chains are followed by the DNS server (a recursive server answers
// "MX alias" with the chain and the target's records; the resolver reports the canonical name).
//
// Answers are cached for their TTL; NXDOMAIN and no-data for negativeCacheSeconds (the resolver
// does not hand over the SOA minimum), failures (SERVFAIL, timeout) briefly, so a queue holding
// many messages for one broken domain asks once rather than once per message. Lookups of the same
// name that overlap share one query.

import UVRuntime

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Where mail goes. Use on the loop's thread only, like the Resolver it asks.
public final class Router {
    /// How long answers are kept.
    public struct CachePolicy: Equatable, Sendable {
        /// NXDOMAIN and no-data answers (RFC 2308 suggests the SOA minimum; we cannot see it).
        public var negativeSeconds: Double = 60
        /// SERVFAIL, REFUSED, timeouts and other failures.
        public var failureSeconds: Double = 5
        /// The longest any answer is kept, whatever its TTL.
        public var maxSeconds: Double = 86400
        public init() {}
    }

    public let identity: SelfIdentity
    public var cachePolicy = CachePolicy() {
        didSet {
            mx.policy = cachePolicy
            addresses.policy = cachePolicy
        }
    }

    private let resolver: Resolver
    private var routes: [String: NextHopSpec]
    private let defaultPort: UInt16
    private var random = SystemRandomNumberGenerator()
    private let mx: AnswerCache<[MXRecord]>
    private let addresses: AnswerCache<[String]>

    /// DNS lookups asked of the resolver so far (MX and address lookups; one address lookup is
    /// one A and one AAAA query). Answers from the cache or shared with a running lookup do not count.
    public var lookupsStarted: Int { mx.started + addresses.started }

    /// - Parameters:
    ///   - ownAddresses: the addresses we listen on ("192.0.2.1", "::1", "[::1]"); with
    ///     config.hostname they say which MX hosts are ourselves. 0.0.0.0 and :: are ignored.
    ///   - now: seconds on a monotonic clock, for cache expiry (the loop's clock; tests pass their own).
    public init(resolver: Resolver, config: TernConfig, ownAddresses: [String], now: @escaping () -> Double) {
        self.resolver = resolver
        self.routes = config.routes.routes
        self.defaultPort = config.delivery.port
        self.identity = SelfIdentity(hostname: config.hostname, addresses: ownAddresses)
        mx = AnswerCache(now: now, policy: cachePolicy) { [resolver] name, done in resolver.lookupMX(name, done) }
        addresses = AnswerCache(now: now, policy: cachePolicy) { [resolver] name, done in
            resolver.lookupAddresses(name, done)
        }
    }

    /// New [routes] (a config reload): later `route` calls follow them; DNS answers stay cached.
    public func replaceRoutes(_ routes: [String: NextHopSpec]) {
        self.routes = routes
    }

    /// Where mail for `domain` goes now. Follows [routes] (exact domain, then "*"), else the
    /// domain's MX (an address literal "[192.0.2.1]" goes to that address). `done` runs exactly
    /// once, on the loop thread; it may run before route returns when the answers are cached.
    public func route(domain: String, _ done: @escaping (RoutePlan) -> Void) {
        let name = normalizedDomain(domain)
        if let spec = routes[name] ?? routes["*"] {
            routeVia(spec, done)
            return
        }
        if let literal = addressLiteral(name) {
            guard let address = literal else {
                done(.bounce(status: "5.1.2", reason: "\(domain) is not a valid address literal"))
                return
            }
            if identity.isSelf(address: address) {
                done(.bounce(status: "5.4.6", reason: "mail for \(domain) loops back to myself"))
                return
            }
            done(.deliver([DeliveryTarget(host: name, address: address, port: defaultPort, preference: 0)]))
            return
        }
        guard isPlausibleDomain(name) else {
            done(.bounce(status: "5.1.2", reason: "\"\(domain)\" is not a valid domain name"))
            return
        }
        resolveMX(name, port: defaultPort, done)
    }

    /// The MX host names mail for `domain` goes to, for traffic shaping's MX rollup: a static route's
    /// host, a route's MX lookup, else the domain's MX (its own name when it has none). Empty when the
    /// lookup failed or the domain is an address literal: no MX rule applies. Answers share the cache.
    public func mxHosts(domain: String, _ done: @escaping ([String]) -> Void) {
        let name = normalizedDomain(domain)
        var target = name
        if let spec = routes[name] ?? routes["*"] {
            guard spec.lookupMX else {
                done(IPAddress(spec.host) == nil ? [spec.host] : [])
                return
            }
            target = spec.host
        } else if addressLiteral(name) != nil || !isPlausibleDomain(name) {
            done([])
            return
        }
        mx.lookup(target) { answer in
            switch answer {
            case .success(let records):
                let hosts = records.filter { !$0.isNullMX }.map { normalizedDomain($0.host) }
                done(records.isEmpty ? [target] : hosts)
            case .failure(.noData): done([target])
            case .failure: done([])
            }
        }
    }

    /// Counts every query asked of the resolver (not cache hits) and its failures, by kind.
    func countLookups(in metrics: RelayMetrics) {
        mx.observe = { metrics.dnsLookup(.mx, failed: $0) }
        addresses.observe = { metrics.dnsLookup(.address, failed: $0) }
    }

    /// Forgets every cached answer (running lookups still finish and are cached).
    public func flushCache() {
        mx.flush()
        addresses.flush()
    }

    // MARK: Steps

    private func routeVia(_ spec: NextHopSpec, _ done: @escaping (RoutePlan) -> Void) {
        let port = spec.port ?? defaultPort
        if spec.lookupMX {
            resolveMX(spec.host, port: port) { done(softened($0, route: spec)) }
        } else if IPAddress(spec.host) != nil {
            // "[10.0.0.5]:25": the administrator named the address; no DNS, and no self check, so
            // that a content filter on a local address and another port works.
            done(.deliver([DeliveryTarget(host: spec.host, address: spec.host, port: port, preference: 0)]))
        } else {
            addresses.lookup(spec.host) { done(planForHost(spec.host, $0, port: port)) }
        }
    }

    /// The MX records of `name`, then every host's addresses at once, then the plan.
    private func resolveMX(_ name: String, port: UInt16, _ done: @escaping (RoutePlan) -> Void) {
        mx.lookup(name) { [self] answer in
            switch planForMX(domain: name, answer) {
            case .done(let plan):
                done(plan)
            case .resolve(let records, let implicitMX):
                let hosts = records.map { MXRecord(preference: $0.preference, host: normalizedDomain($0.host)) }
                var seen = Set<String>()
                let names = hosts.map(\.host).filter { seen.insert($0).inserted }
                var results: [String: Result<[String], DNSError>] = [:]
                var remaining = names.count
                for host in names {
                    addresses.lookup(host) { [self] result in
                        results[host] = result
                        remaining -= 1
                        guard remaining == 0 else { return }
                        done(planDelivery(domain: name, mx: hosts, implicitMX: implicitMX, addresses: results,
                                          port: port, identity: identity, random: &random))
                    }
                }
            }
        }
    }
}

// MARK: - Cache

/// Answers by name, kept for their TTL, with overlapping lookups of one name sharing one query.
final class AnswerCache<T> {
    typealias Query = (String, @escaping (Result<DNSAnswer<T>, DNSError>) -> Void) -> Void

    private struct Entry {
        let result: Result<T, DNSError>
        let expires: Double
    }

    var policy: Router.CachePolicy
    private let now: () -> Double
    private let query: Query
    private var entries: [String: Entry] = [:]
    private var waiting: [String: [(Result<T, DNSError>) -> Void]] = [:]
    private(set) var started = 0
    /// Told of each answer to a query asked (true: an error answer, NXDOMAIN and timeouts included).
    var observe: ((Bool) -> Void)?
    private var sweepAt = 1024

    init(now: @escaping () -> Double, policy: Router.CachePolicy, query: @escaping Query) {
        self.now = now
        self.policy = policy
        self.query = query
    }

    /// `done` runs at once from the cache, else when the (possibly shared) query is answered.
    func lookup(_ name: String, _ done: @escaping (Result<T, DNSError>) -> Void) {
        if let entry = entries[name] {
            if entry.expires > now() {
                done(entry.result)
                return
            }
            entries[name] = nil
        }
        if waiting[name] != nil {
            waiting[name]!.append(done)
            return
        }
        waiting[name] = [done]
        started += 1
        // The resolver may answer inside this call (when closed): `waiting` is already set.
        query(name) { [self] answer in
            let result = answer.map(\.records)
            if let observe {
                if case .failure(let error) = answer { if error != .cancelled { observe(true) } } else { observe(false) }
            }
            let lifetime = self.lifetime(of: answer)
            if lifetime > 0 {
                entries[name] = Entry(result: result, expires: now() + lifetime)
                sweepIfLarge()
            }
            for waiter in waiting.removeValue(forKey: name) ?? [] {
                waiter(result)
            }
        }
    }

    func flush() { entries.removeAll() }

    private func lifetime(of answer: Result<DNSAnswer<T>, DNSError>) -> Double {
        let seconds: Double
        switch answer {
        case .success(let answer): seconds = Double(answer.ttl)
        case .failure(.nxdomain), .failure(.noData): seconds = policy.negativeSeconds
        case .failure(.cancelled): seconds = 0
        case .failure: seconds = policy.failureSeconds
        }
        return min(seconds, policy.maxSeconds)
    }

    /// Most names kept: a sender who picks many domains under a wildcard MX must not grow the cache
    /// without bound. Past it, the answers closest to expiring go first.
    static var maxEntries: Int { 100_000 }

    /// Drops expired entries once the table has doubled since the last sweep, and holds it to maxEntries.
    private func sweepIfLarge() {
        guard entries.count >= sweepAt else { return }
        let time = now()
        entries = entries.filter { $0.value.expires > time }
        if entries.count > Self.maxEntries {
            let keep = entries.sorted { $0.value.expires > $1.value.expires }.prefix(Self.maxEntries / 2)
            entries = Dictionary(uniqueKeysWithValues: keep.map { ($0.key, $0.value) })
        }
        sweepAt = min(max(1024, entries.count * 2), Self.maxEntries + 1)
    }
}
