// ShapingConfig.swift: traffic shaping's tables (issue 16), read into MailQueue's ShapingPolicy
// values: [[shaping]] (limits per destination), [[backoff]] (replies that say "slow down"), the
// dead-destination keys of [delivery] (Config.swift), [egress.sources], [egress.pools] and
// [egress.select]. Checked like every other table: an unknown key, a bad value or a name that refers to
// nothing is an error naming its key ("shaping[2].domains", "egress.pools.bulk.sources.c").
//
// [egress] is read with the other tables; the arrays of tables after them, because they name pools;
// routes' pools are checked last. Whether a source's address is on this machine is checked when the
// server starts or reloads (ConfigFiles.swift), not here: parsing opens nothing.

import MailQueue
import TOMLKit

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

// MARK: - [egress]

/// [egress.sources.NAME], [egress.pools.NAME] and [egress.select]. Sources and pools sorted by name
/// (TOML tables have no order).
public struct EgressConfig: Sendable, Equatable, ConfigSection {
    public var sources: [EgressSource] = []
    public var pools: [EgressPool] = []
    public var select = EgressSelect()

    public init(sources: [EgressSource] = [], pools: [EgressPool] = [], select: EgressSelect = EgressSelect()) {
        self.sources = sources
        self.pools = pools
        self.select = select
    }

    public var isEmpty: Bool { self == EgressConfig() }

    static let tableName = "egress"

    mutating func read(_ r: inout TableReader) throws {
        if let table = try r.read("sources", Decode.table) {
            var inner = TableReader(table, path: r.path + ["sources"], context: r.context)
            var addresses: [String: String] = [:]
            for name in table.keys.sorted() {
                guard let body = try inner.read(name, Decode.table) else { continue }
                try inner.check(name, isShapingName(name), "\"\(name)\" is not a name: \(Decode.nameRule)")
                var s = TableReader(body, path: inner.path + [name], context: r.context)
                guard let address = try s.read("address", Decode.ipAddress) else {
                    throw s.error("address", "is required: the local IPv4 or IPv6 address to send from")
                }
                if let other = addresses[address] {
                    throw s.error("address", "\(address) is also egress.sources.\(other)'s address")
                }
                addresses[address] = name
                let ehlo = try s.read("ehlo", Decode.hostName)
                try s.rejectUnknownKeys()
                sources.append(EgressSource(name: name, address: address, ehlo: ehlo))
            }
            try inner.rejectUnknownKeys()
        }
        let sourceNames = Set(sources.map(\.name))

        if let table = try r.read("pools", Decode.table) {
            var inner = TableReader(table, path: r.path + ["pools"], context: r.context)
            for name in table.keys.sorted() {
                guard let body = try inner.read(name, Decode.table) else { continue }
                try inner.check(name, isShapingName(name), "\"\(name)\" is not a name: \(Decode.nameRule)")
                var p = TableReader(body, path: inner.path + [name], context: r.context)
                guard let weights = try p.read("sources", Decode.table) else {
                    throw p.error("sources", "is required: the sources and their weights, e.g. sources = { a = 2, b = 1 }")
                }
                var w = TableReader(weights, path: p.path + ["sources"], context: r.context)
                var members: [(name: String, weight: Int)] = []
                for source in weights.keys.sorted() {
                    guard let weight = try w.read(source, Decode.positiveInt) else { continue }
                    try w.check(source, sourceNames.contains(source), "there is no [egress.sources.\(displayKey([source]))]")
                    members.append((source, weight))
                }
                try p.check("sources", !members.isEmpty, "must name at least one source")
                try p.rejectUnknownKeys()
                pools.append(EgressPool(name: name, sources: members))
            }
            try inner.rejectUnknownKeys()
        }
        let poolNames = Set(pools.map(\.name))

        if let table = try r.read("select", Decode.table) {
            var s = TableReader(table, path: r.path + ["select"], context: r.context)
            let pool = Decode.pool(in: poolNames)
            for (key, isDomain) in [("users", false), ("sender_domains", true)] {
                guard let map = try s.read(key, Decode.table) else { continue }
                var m = TableReader(map, path: s.path + [key], context: r.context)
                var chosen: [String: String] = [:]
                for name in map.keys.sorted() {
                    guard let value = try m.read(name, pool) else { continue }
                    var normalized = name
                    if isDomain {
                        try m.check(name, isPlausibleDomain(name), "\"\(name)\" is not a domain name")
                        normalized = normalizedDomain(name)
                        try m.check(name, chosen[normalized] == nil, "duplicate domain (domains are not case-sensitive)")
                    }
                    chosen[normalized] = value
                }
                try m.rejectUnknownKeys()
                if isDomain { select.senderDomains = chosen } else { select.users = chosen }
            }
            select.defaultPool = try s.read("default", pool)
            try s.rejectUnknownKeys()
        }
    }
}

// MARK: - The policy

extension TernConfig {
    /// Everything the shaping core needs: the rules, backoff and egress of the file, with the limits
    /// of a destination no rule matches and the dead-destination policy from [delivery]. Built on each
    /// access: keep it.
    public var shaping: ShapingPolicy {
        ShapingPolicy(rules: shapingRules, backoff: backoff, dead: delivery.deadDestination,
                      defaults: ShapingRule(name: Self.defaultShapingRuleName,
                                            maxConnections: delivery.maxConnectionsPerDestination,
                                            connectionCacheTime: delivery.connectionCacheTime),
                      sources: egress.sources, pools: egress.pools, select: egress.select)
    }

    /// The name of `ShapingPolicy.defaults`, so no [[shaping]] rule may take it.
    static let defaultShapingRuleName = "default"

    /// [[shaping]]: each table a rule; names unique; a domain or MX name claimed by one rule only.
    static func readShaping(_ config: inout TernConfig, _ root: inout TableReader) throws {
        guard let tables = try root.read("shaping", Decode.tables("shaping")) else { return }
        let pools = Set(config.egress.pools.map(\.name))
        var names: [String: Int] = [:]
        var claimed: [String: [String: Int]] = ["domains": [:], "mx": [:]]
        for (index, table) in tables.enumerated() {
            var r = TableReader(table, path: ["shaping[\(index)]"], context: root.context)
            guard let name = try r.read("name", Decode.shapingName) else {
                throw r.error("name", "is required: the rule's name in logs, metrics and [[backoff]] rules")
            }
            try r.check("name", name != defaultShapingRuleName,
                        "\"\(name)\" is the name of [delivery]'s limits for destinations no rule matches")
            if let other = names[name] { throw r.error("name", "\"\(name)\" is also shaping[\(other)]'s name") }
            names[name] = index

            var rule = ShapingRule(name: name)
            for key in ["domains", "mx"] {
                let patterns = try r.read(key, Decode.list(Decode.domainPattern)) ?? []
                for pattern in patterns {
                    if let other = claimed[key]![pattern] {
                        throw r.error(key, other == index ? "lists \"\(pattern)\" twice"
                            : "\"\(pattern)\" is also claimed by shaping[\(other)] (\"\(config.shapingRules[other].name)\")")
                    }
                    claimed[key]![pattern] = index
                }
                if key == "domains" { rule.domains = patterns } else { rule.mx = patterns }
            }
            try r.check("domains", !rule.domains.isEmpty || !rule.mx.isEmpty,
                        "a rule needs domains or mx: as it is, it matches no destination")
            rule.maxConnections = try r.read("max_connections", Decode.positiveInt)
            rule.maxMessagesPerConnection = try r.read("max_messages_per_connection", Decode.positiveInt)
            rule.maxMessageRate = try r.read("max_message_rate", Decode.rate)
            rule.maxConnectionRate = try r.read("max_connection_rate", Decode.rate)
            rule.connectionCacheTime = try r.read("connection_cache_time", Decode.durationOrZero)
            rule.tls = try r.read("tls", OutboundTLSPolicy.decode)
            rule.pool = try r.read("pool", Decode.pool(in: pools))
            try r.rejectUnknownKeys()
            config.shapingRules.append(rule)
        }
    }

    /// [[backoff]]: after [[shaping]], whose rule names `rules` refers to.
    static func readBackoff(_ config: inout TernConfig, _ root: inout TableReader) throws {
        guard let tables = try root.read("backoff", Decode.tables("backoff")) else { return }
        let ruleNames = Set(config.shapingRules.map(\.name))
        var names: [String: Int] = [:]
        for (index, table) in tables.enumerated() {
            var r = TableReader(table, path: ["backoff[\(index)]"], context: root.context)
            let name = try r.read("name", Decode.shapingName)
            if let name {
                if let other = names[name] { throw r.error("name", "\"\(name)\" is also backoff[\(other)]'s name") }
                names[name] = index
            }
            func required<T>(_ key: String, _ decode: (TOMLValueConvertible) throws -> T, _ what: String) throws -> T {
                guard let value = try r.read(key, decode) else { throw r.error(key, "is required: \(what)") }
                return value
            }
            let reply = try required("reply", Decode.regex, "a regular expression over the reply, e.g. \"^421 \"")
            let threshold = try required("threshold", Decode.threshold, "how many matching replies in how long, e.g. \"3 in 5m\"")
            let actionName = try required("action", Decode.string, "\"suspend\" or \"throttle\"")
            let rate = try r.read("rate", Decode.rate)
            let connections = try r.read("connections", Decode.positiveInt)
            let action: BackoffRule.Action
            switch actionName {
            case "suspend":
                for (key, given) in [("rate", rate != nil), ("connections", connections != nil)] where given {
                    throw r.error(key, "applies only to action = \"throttle\" (a suspended destination gets nothing)")
                }
                action = .suspend
            case "throttle":
                try r.check("action", rate != nil || connections != nil,
                            "\"throttle\" needs rate (e.g. \"1/s\"), connections (e.g. 1) or both")
                action = .throttle(rate: rate, connections: connections)
            default:
                throw r.error("action", "must be \"suspend\" or \"throttle\", got \"\(actionName)\"")
            }
            let duration = try required("duration", Decode.duration, "how long the action lasts, e.g. \"10m\"")
            let rules = try r.read("rules", Decode.list { text -> String in
                guard ruleNames.contains(text) else { throw ConfigError(message: "no [[shaping]] rule is named \"\(text)\"") }
                return text
            }) ?? []
            try r.rejectUnknownKeys()
            config.backoff.append(BackoffRule(name: name ?? "backoff[\(index)]", reply: reply, threshold: threshold,
                                              action: action, duration: duration, rules: rules))
        }
    }

    /// A [routes] table's `pool` names an [egress.pools] pool.
    func checkRoutePools(_ root: TableReader) throws {
        let pools = Set(egress.pools.map(\.name))
        for (route, pool) in routes.pools.sorted(by: { $0.key < $1.key }) where !pools.contains(pool) {
            let path = ["routes", route, "pool"]
            throw ConfigError(key: displayKey(path), line: KeyLocator.line(of: path, in: root.context.text)
                                ?? KeyLocator.line(of: ["routes", route], in: root.context.text),
                              message: "there is no [egress.pools.\(displayKey([pool]))]", source: root.context.source)
        }
    }
}

/// A rule's, source's or pool's name: it shows in log lines and metric labels.
func isShapingName(_ name: String) -> Bool {
    (1...64).contains(name.utf8.count) && name.utf8.allSatisfy {
        ($0 >= 0x30 && $0 <= 0x39) || ($0 | 0x20 >= 0x61 && $0 | 0x20 <= 0x7a)
            || $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: ".")
    }
}

// MARK: - Value decoders

extension Decode {
    static let nameRule = "a name is 1 to 64 letters, digits, '-', '_' and '.' (it shows in logs and metrics)"

    /// An array of tables: [[shaping]] written out, or an inline array of inline tables.
    static func tables(_ name: String) -> (TOMLValueConvertible) throws -> [TOMLTable] {
        return { value in
            guard let array = value.array else {
                throw ConfigError(message: "expected [[\(name)]] tables (an array of tables), got \(typeName(value))"
                                  + (value.type == .table ? ": write [[\(name)]], with two brackets" : ""))
            }
            return try array.enumerated().map { index, element in
                guard let table = element.table else {
                    throw ConfigError(message: "item \(index + 1): expected a table, got \(typeName(element))")
                }
                return table
            }
        }
    }

    static func shapingName(_ value: TOMLValueConvertible) throws -> String {
        let text = try string(value)
        guard isShapingName(text) else { throw ConfigError(message: "\"\(text)\" is not a name: \(nameRule)") }
        return text
    }

    /// The name of an [egress.pools] pool.
    static func pool(in pools: Set<String>) -> (TOMLValueConvertible) throws -> String {
        return { value in
            let name = try string(value)
            guard pools.contains(name) else { throw ConfigError(message: "there is no [egress.pools.\(displayKey([name]))]") }
            return name
        }
    }

    /// "gmail.com" (that domain) or ".example.com" (every domain below it): lowercased, no trailing dot.
    static func domainPattern(_ text: String) throws -> String {
        let isSuffix = text.hasPrefix(".")
        let name = isSuffix ? String(text.dropFirst()) : text
        guard isPlausibleDomain(name), !name.hasPrefix(".") else {
            throw ConfigError(message: "\"\(text)\" is not a domain name, or a suffix with its leading dot (\".example.com\")")
        }
        return (isSuffix ? "." : "") + normalizedDomain(name)
    }

    /// An EHLO name: a host name, kept as written but for a trailing dot.
    static func hostName(_ value: TOMLValueConvertible) throws -> String {
        let text = try string(value)
        guard isPlausibleDomain(text) else { throw ConfigError(message: "\"\(text)\" is not a host name") }
        return text.hasSuffix(".") ? String(text.dropLast()) : text
    }

    /// A numeric IPv4 or IPv6 address, no zone, in its canonical form (IPv4-mapped IPv6 as IPv4).
    static func ipAddress(_ value: TOMLValueConvertible) throws -> String {
        let text = try string(value)
        guard let address = IPAddress.parseRaw(text) else {
            throw ConfigError(message: "\"\(text)\" is not an IPv4 or IPv6 address (like \"192.0.2.10\" or \"2001:db8::10\")")
        }
        return address.unmapped.description
    }

    static let rateForms = "write a count per period: \"20/s\", \"300/min\", \"5000/h\" or \"100000/d\""

    static func rate(_ value: TOMLValueConvertible) throws -> Rate {
        let text = try string(value)
        guard let rate = Rate(parsing: text) else { throw ConfigError(message: "\"\(text)\" is not a rate; \(rateForms)") }
        return rate
    }

    /// "3 in 5m": a positive count of replies within a duration.
    static func threshold(_ value: TOMLValueConvertible) throws -> Threshold {
        let text = try string(value)
        guard let (count, window) = Threshold.split(text) else {
            throw ConfigError(message: "\"\(text)\" is not a threshold; write a count of replies in a duration, like \"3 in 5m\"")
        }
        let seconds = try duration(window)
        return Threshold(count: count, window: seconds)
    }

    /// A regular expression Swift's Regex compiles; kept as written (the core compiles it again).
    static func regex(_ value: TOMLValueConvertible) throws -> String {
        let text = try nonEmptyString(value)
        do {
            _ = try Regex(text)
        } catch {
            throw ConfigError(message: "\"\(text)\" is not a regular expression: \(error)")
        }
        return text
    }
}
