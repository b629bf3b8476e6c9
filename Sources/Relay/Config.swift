// Config.swift: Tern's typed configuration, read from a TOML file.
//
// In the manner of maddy: every key has a default, an unknown key is an error, and a value of the
// wrong type or out of range is an error that names the key. A typo must never silently fall back
// to a default on a mail server. etc/tern.toml shows every key; DefaultConfig.text is that file.
//
// Adding a table ([dns], [delivery], ...): write a struct conforming to ConfigSection (its defaults
// and one `read` function), add a property to TernConfig, and one entry to TernConfig.sections.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import MailQueue
import TOMLKit

// MARK: - Errors

/// A configuration problem. `key` is the dotted key ("server.max_recipients") when one is at fault;
/// `line` is the line in the source when known (always for TOML syntax errors, best effort for keys).
public struct ConfigError: Error, CustomStringConvertible, Equatable, Sendable {
    public let key: String?
    public let line: Int?
    public let message: String
    /// The file the text came from, when it came from one.
    public let source: String?
    /// For "unknown key server.listne" the key is part of the sentence, not a prefix.
    let keyInMessage: Bool

    public init(key: String? = nil, line: Int? = nil, message: String, source: String? = nil) {
        self.init(key: key, line: line, message: message, source: source, keyInMessage: false)
    }

    init(key: String?, line: Int?, message: String, source: String?, keyInMessage: Bool) {
        self.key = key
        self.line = line
        self.message = message
        self.source = source
        self.keyInMessage = keyInMessage
    }

    /// "config: server.max_recipients: expected an integer, got string",
    /// "config: etc/tern.toml: line 7: unknown key server.listne".
    public var description: String {
        var parts = ["config"]
        if let source, source != TernConfig.unnamedSource { parts.append(source) }
        if let line { parts.append("line \(line)") }
        if let key, !keyInMessage { parts.append(key) }
        parts.append(message)
        return parts.joined(separator: ": ")
    }
}

// MARK: - The configuration

public struct TernConfig: Sendable, Equatable {
    /// The name in the greeting, EHLO and Received headers. Default: the machine's hostname.
    public var hostname: String
    public var server: ServerConfig
    public var spool: SpoolConfig
    public var dns: DNSConfig = DNSConfig()
    public var delivery: DeliveryConfig = DeliveryConfig()
    public var routes: RouteConfig = RouteConfig()
    public var priority: PriorityConfig = PriorityConfig()
    public var log: LogConfig = LogConfig()
    public var tls: TLSConfig = TLSConfig()
    public var auth: AuthConfig = AuthConfig()
    public var admin: AdminConfig = AdminConfig()
    /// Recipient rewrites. Keys are lowercased addresses or bare local parts ("postmaster").
    public var aliases: [String: [String]]
    /// [[shaping]] tables in the file's order: limits per destination (ShapingConfig.swift).
    public var shapingRules: [ShapingRule] = []
    /// [[backoff]] tables in the file's order: replies that say "slow down".
    public var backoff: [BackoffRule] = []
    /// [egress]: source addresses, pools of them, and which pool a message uses.
    public var egress: EgressConfig = EgressConfig()
    /// [[dkim.sign]] tables: the signatures to put on mail (DKIMConfig.swift).
    public var dkim: DKIMConfig = DKIMConfig()
    /// [bounce]: the rules that give failure replies a class (BounceConfig.swift).
    public var bounce = BounceConfig()
    /// [suppression]: the classes of hard bounces that suppress their recipient.
    public var suppression = SuppressionConfig()
    /// [events]: the JSON Lines file of message events.
    public var events = EventsConfig()
    /// [http]: the injection API's listener and its tokens.
    public var http = HTTPConfig()
    /// [cluster]: the Redis that nodes share their limits, suppression and state through.
    public var cluster = ClusterConfig()

    public init(hostname: String = TernConfig.systemHostname(), server: ServerConfig = ServerConfig(),
                spool: SpoolConfig = SpoolConfig(), aliases: [String: [String]] = [:]) {
        self.hostname = hostname
        self.server = server
        self.spool = spool
        self.aliases = aliases
    }

    /// The tables of the file, other than [aliases] whose keys are free-form. One entry per table.
    static var sections: [AnySection] {
        [
            AnySection(\.server),
            AnySection(\.spool),
            AnySection(\.dns),
            AnySection(\.delivery),
            AnySection(\.routes),
            AnySection(\.priority),
            AnySection(\.log),
            AnySection(\.tls),
            AnySection(\.auth),
            AnySection(\.admin),
            AnySection(\.http),
            AnySection(\.cluster),
            AnySection(\.egress),
            AnySection(name: "aliases", read: readAliases),
            AnySection(name: "dkim", read: readDKIM),
            AnySection(name: "bounce", read: readBounce),
            AnySection(name: "suppression", read: readSuppression),
            AnySection(name: "events", read: readEvents),
        ]
    }

    static let unnamedSource = "<config>"

    /// Reads and parses a file. A file that cannot be read is an error naming the path. Relative
    /// paths in it (spool, certificate, key, users file, password files) are from the file's directory.
    public static func load(path: String) throws -> TernConfig {
        let text = try readFile(path)
        return try parse(text, source: path, baseDirectory: directory(of: path))
    }

    /// `baseDirectory`: where relative paths in the text start (absolute); nil: the working directory,
    /// and the paths are kept relative (the built-in default's spool stays under the working directory).
    public static func parse(_ text: String, source: String = "<config>", baseDirectory: String? = nil) throws -> TernConfig {
        let document: TOMLTable
        do {
            document = try TOMLTable(string: text)
        } catch let error as TOMLParseError {
            throw ConfigError(line: error.source.begin.line, message: error.description, source: source)
        }
        var root = TableReader(document, path: [], context: ParseContext(text: text, source: source,
                                                                             baseDirectory: baseDirectory))

        var config = TernConfig(hostname: "")
        if let hostname = try root.read("hostname", Decode.string) {
            try root.check("hostname", isPlausibleDomain(hostname), "\"\(hostname)\" is not a valid domain name")
            config.hostname = hostname
        } else {
            let system = systemHostname()
            try root.check("hostname", isPlausibleDomain(system),
                           "not set, and the machine's hostname \"\(system)\" is not a valid domain name")
            config.hostname = system
        }
        for section in sections {
            guard let table = try root.read(section.name, Decode.table) else { continue }
            var reader = TableReader(table, path: [section.name], context: root.context)
            try section.read(&config, &reader)
            try reader.rejectUnknownKeys()
        }
        // Arrays of tables, after [egress] and [routes] whose names they refer to.
        try readShaping(&config, &root)
        try readBackoff(&config, &root)
        try config.checkRoutePools(root)
        try root.rejectUnknownKeys()
        // The default spool path is relative too: from the file's directory like a written one.
        config.spool.path = resolve(config.spool.path, from: baseDirectory)
        try config.checkSecurity(source: source)
        return config
    }

    /// The built-in configuration: the text of etc/tern.toml.
    public static var embeddedDefault: TernConfig {
        get throws { try parse(DefaultConfig.text, source: "<built-in tern.toml>") }
    }

    /// The machine's host name, fully qualified when the resolver knows it (as Postfix's myhostname):
    /// gethostname(2), and when that has no dot, its canonical name from getaddrinfo (/etc/hosts,
    /// then DNS). Asked once per process; "localhost" only if gethostname fails.
    public static func systemHostname() -> String { cachedSystemHostname }

    private static let cachedSystemHostname: String = {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count - 1) == 0 else { return "localhost" }
        let name = String(cString: buffer)
        if name.isEmpty { return "localhost" }
        if name.contains(".") { return name }
        var hints = addrinfo()
        hints.ai_flags = AI_CANONNAME
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var result: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(name, nil, &hints, &result) == 0, let first = result else { return name }
        defer { freeaddrinfo(result) }
        guard let canonical = first.pointee.ai_canonname.map({ String(cString: $0) }),
              canonical.contains("."), isPlausibleDomain(canonical) else { return name }
        return canonical
    }()

    /// The absolute directory of a config file's path: where its relative paths start.
    public static func directory(of path: String) -> String {
        var absolute = path.hasPrefix("/") ? path : currentDirectory() + "/" + path
        while let range = absolute.range(of: "/./") { absolute.replaceSubrange(range, with: "/") }
        guard let slash = absolute.lastIndex(of: "/") else { return "." }
        let dir = String(absolute[..<slash])
        if dir.isEmpty { return "/" }
        // "work/../chain" as the kernel resolves it (symbolic links followed), for readable paths in logs.
        guard let real = realpath(dir, nil) else { return dir }
        defer { free(real) }
        return String(cString: real)
    }

    static func currentDirectory() -> String {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        guard getcwd(&buffer, buffer.count) != nil else { return "." }
        return String(cString: buffer)
    }

    /// `path` from the config: as written when absolute or empty, else joined to `base` (nil: kept
    /// relative, so it is from the working directory).
    static func resolve(_ path: String, from base: String?) -> String {
        guard !path.isEmpty, !path.hasPrefix("/"), let base else { return path }
        var rest = Substring(path)
        while rest.hasPrefix("./") { rest = rest.dropFirst(2).drop(while: { $0 == "/" }) }
        if rest.isEmpty || rest == "." { return base }
        return (base.hasSuffix("/") ? base : base + "/") + rest
    }

    private static func readAliases(_ config: inout TernConfig, _ reader: inout TableReader) throws {
        for key in reader.table.keys.sorted() {
            guard let targets = try reader.read(key, Decode.stringOrStrings) else { continue }
            try reader.check(key, isAliasName(key),
                             "an alias must be an address (user@domain) or a bare local part like postmaster")
            try reader.check(key, !targets.isEmpty, "must name at least one address")
            for target in targets {
                try reader.check(key, isAliasName(target),
                                 "\"\(target)\" is not an address (user@domain) or a bare local part")
            }
            let name = key.lowercased()
            try reader.check(key, config.aliases[name] == nil, "duplicate alias (aliases are not case-sensitive)")
            config.aliases[name] = targets
        }
    }

    static func readFile(_ path: String) throws -> String {
        guard let file = fopen(path, "rb") else {
            throw ConfigError(message: String(cString: strerror(errno)), source: path)
        }
        defer { fclose(file) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = fread(&chunk, 1, chunk.count, file)
            if n > 0 { bytes.append(contentsOf: chunk[0..<n]) }
            if n < chunk.count {
                if ferror(file) != 0 { throw ConfigError(message: String(cString: strerror(errno)), source: path) }
                break
            }
        }
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw ConfigError(message: "not valid UTF-8", source: path)
        }
        return text
    }
}

// MARK: - [server]

public struct ServerConfig: Sendable, Equatable, ConfigSection {
    /// Loopback and unprivileged, as etc/tern.toml (the built-in default); production lists its own.
    public var listen: [String] = ["127.0.0.1:2525"]
    public var relayNetworks: [CIDR] = [CIDR.loopbackV4, CIDR.loopbackV6]
    /// Load balancers (HAProxy) whose connections start with a PROXY header naming the client.
    public var proxyProtocolFrom: [CIDR] = []
    public var acceptDomains: [String] = []
    public var maxMessageSize: Int = 52_428_800
    /// Bytes of message data all sessions may hold in memory together before they stop reading
    /// until the disk catches up (DataBudget.swift).
    public var maxBufferedData: Int = 268_435_456
    public var maxRecipients: Int = 1000
    /// RCPTs past max_recipients answered 452 without counting as errors (Postfix's
    /// smtpd_recipient_overshoot_limit).
    public var recipientOvershootLimit: Int = 1000
    public var maxConnections: Int = 20000
    public var maxConnectionsPerIP: Int = 100
    public var vrfy = false
    public var expn = false
    /// Errors in one session before 421 and close.
    public var maxErrors = 20
    /// Longest DATA text line, counting CRLF (RFC 5321 4.5.3.1.6: at least 1000).
    public var maxLineLength = 1000
    /// Received headers tolerated before 554 5.4.6.
    public var maxHops = 50
    public var keepBcc = false
    /// Seconds (RFC 5321 4.5.3.2.7: at least 5 minutes).
    public var commandTimeout: Double = 300
    public var dataTimeout: Double = 300
    public var reverseDNS = true
    /// Submission listeners (RFC 6409, port 587): STARTTLS, AUTH required before MAIL.
    public var submission: [String] = []
    /// Implicit-TLS submission listeners (RFC 8314, port 465): AUTH required before MAIL.
    public var submissions: [String] = []

    public init() {}

    static let tableName = "server"

    mutating func read(_ r: inout TableReader) throws {
        try r.read("listen", into: &listen, Decode.list(Decode.listenAddress))
        try r.check("listen", !listen.isEmpty, "must list at least one address")
        try r.check("listen", Set(listen.compactMap { try? ListenAddress(parsing: $0) }).count == listen.count,
                    "lists the same address twice")
        try r.read("relay_networks", into: &relayNetworks, Decode.list(Decode.cidr))
        try r.read("proxy_protocol_from", into: &proxyProtocolFrom, Decode.list(Decode.cidr))
        try r.read("accept_domains", into: &acceptDomains, Decode.list(Decode.domain))
        try r.read("max_message_size", into: &maxMessageSize, Decode.positiveInt)
        try r.read("max_buffered_data", into: &maxBufferedData, Decode.int(atLeast: 1_048_576,
                   why: "1 MiB; below that even one large message crawls"))
        try r.read("max_recipients", into: &maxRecipients, Decode.positiveInt)
        try r.read("recipient_overshoot_limit", into: &recipientOvershootLimit, Decode.int(atLeast: 0, why: nil))
        try r.read("max_connections", into: &maxConnections, Decode.positiveInt)
        try r.read("max_connections_per_ip", into: &maxConnectionsPerIP, Decode.positiveInt)
        try r.read("vrfy", into: &vrfy, Decode.bool)
        try r.read("expn", into: &expn, Decode.bool)
        try r.read("max_errors", into: &maxErrors, Decode.positiveInt)
        try r.read("max_line_length", into: &maxLineLength, Decode.int(atLeast: 1000,
                   why: "RFC 5321 4.5.3.1.6 requires lines of 1000 octets"))
        try r.read("max_hops", into: &maxHops, Decode.positiveInt)
        try r.read("keep_bcc", into: &keepBcc, Decode.bool)
        try r.read("command_timeout", into: &commandTimeout, Decode.duration)
        try r.read("data_timeout", into: &dataTimeout, Decode.duration)
        try r.read("reverse_dns", into: &reverseDNS, Decode.bool)
        try r.read("submission", into: &submission, Decode.list(Decode.listenAddress))
        try r.read("submissions", into: &submissions, Decode.list(Decode.listenAddress))
    }
}

extension CIDR {
    // These literals are valid; a failure here is a programming error caught by every test.
    static let loopbackV4 = try! CIDR(parsing: "127.0.0.0/8")
    static let loopbackV6 = try! CIDR(parsing: "::1/128")
}

// MARK: - [spool]

public struct SpoolConfig: Sendable, Equatable, ConfigSection {
    /// The queue directory; a relative path is from the config file's directory (the working
    /// directory for the built-in default). Tern creates it, not its parent.
    public var path: String = "var/spool"

    public init() {}

    static let tableName = "spool"

    mutating func read(_ r: inout TableReader) throws {
        if let resolved = try r.readPath("path", nonEmpty: true) { path = resolved }
    }
}

// MARK: - [dns]

public struct DNSConfig: Sendable, Equatable, ConfigSection {
    /// Name servers as "ip:port"; empty means those of /etc/resolv.conf.
    public var servers: [String] = []

    public init() {}

    static let tableName = "dns"

    mutating func read(_ r: inout TableReader) throws {
        try r.read("servers", into: &servers, Decode.list(Decode.listenAddress))
    }
}

// MARK: - [delivery]

/// Outbound delivery: where remote MX hosts listen, how many connections, the retry schedule and
/// the SMTP client's timeouts (RFC 5321 4.5.3.2). Durations are in seconds.
public struct DeliveryConfig: Sendable, Equatable, ConfigSection {
    /// Deliver queued mail; false keeps everything queued (maintenance, spool tests).
    public var enabled = true
    /// Port of remote MX hosts (tests point it elsewhere).
    public var port: UInt16 = 25
    /// Outbound connections open at once, in total.
    public var maxConnections: Int = 1000
    /// Outbound connections open at once to one destination.
    public var maxConnectionsPerDestination: Int = 20
    /// Waits between attempts; after the last one, its value repeats. Never empty.
    public var retrySchedule: [Double] = [60, 300, 900, 1800, 3600, 7200, 14400]
    /// A message still undelivered after this long bounces.
    public var maxQueueLifetime: Double = 432_000
    /// Warn the sender once a message has waited this long; 0 = never (Postfix's delay_warning_time).
    public var delayWarningTime: Double = 0
    public var connectTimeout: Double = 30
    /// RFC 5321 4.5.3.2.1: 5 minutes for the 220 greeting.
    public var greetingTimeout: Double = 300
    /// RFC 5321 4.5.3.2.2-4: 5 minutes for the reply to MAIL, RCPT and other commands.
    public var commandTimeout: Double = 300
    /// RFC 5321 4.5.3.2.5-6: per data block sent and for the reply to the final dot.
    public var dataTimeout: Double = 600
    /// An idle connection waits this long for the next message to its destination before it QUITs;
    /// 0 = QUIT at once (Postfix's smtp_connection_cache_time_limit).
    public var connectionCacheTime: Double = 2
    /// Send with BDAT (RFC 3030) to next hops that offer CHUNKING; false always uses DATA (Postfix:
    /// smtp_discard_ehlo_keywords = chunking).
    public var chunking = true
    /// TLS with next hops when the route says nothing else.
    public var tls: OutboundTLSPolicy = .opportunistic
    /// "TLS-Required: No" (RFC 8689 §5) turns require/verify into opportunistic for that message.
    public var honorTLSRequiredNo = false
    /// A next hop that does not answer is suspended instead of tried once per queued message
    /// (dead_destination_failures, dead_destination_initial, dead_destination_maximum).
    public var deadDestination = DeadDestinationPolicy()

    public init() {}

    static let tableName = "delivery"

    mutating func read(_ r: inout TableReader) throws {
        try r.read("enabled", into: &enabled, Decode.bool)
        try r.read("port", into: &port, Decode.port)
        try r.read("max_connections", into: &maxConnections, Decode.positiveInt)
        try r.read("max_connections_per_destination", into: &maxConnectionsPerDestination, Decode.positiveInt)
        try r.read("retry_schedule", into: &retrySchedule, Decode.durations)
        try r.check("retry_schedule", !retrySchedule.isEmpty, "must list at least one duration")
        try r.read("max_queue_lifetime", into: &maxQueueLifetime, Decode.duration)
        try r.read("delay_warning_time", into: &delayWarningTime, Decode.durationOrZero)
        try r.read("connect_timeout", into: &connectTimeout, Decode.duration)
        try r.read("greeting_timeout", into: &greetingTimeout, Decode.duration)
        try r.read("command_timeout", into: &commandTimeout, Decode.duration)
        try r.read("data_timeout", into: &dataTimeout, Decode.duration)
        try r.read("connection_cache_time", into: &connectionCacheTime, Decode.durationOrZero)
        try r.read("chunking", into: &chunking, Decode.bool)
        try r.read("honor_tls_required_no", into: &honorTLSRequiredNo, Decode.bool)
        try r.read("tls", into: &tls, OutboundTLSPolicy.decode)
        try r.read("dead_destination_failures", into: &deadDestination.failures, Decode.positiveInt)
        try r.read("dead_destination_initial", into: &deadDestination.initial, Decode.duration)
        try r.read("dead_destination_maximum", into: &deadDestination.maximum, Decode.duration)
        try r.check("dead_destination_initial", deadDestination.initial <= deadDestination.maximum,
                    "\(formatDuration(deadDestination.initial)) is longer than dead_destination_maximum "
                    + "(\(formatDuration(deadDestination.maximum)))")
    }
}

// MARK: - [routes]

/// Next hops chosen by the administrator instead of the recipient domain's MX.
public struct RouteConfig: Sendable, Equatable, ConfigSection {
    /// Keys: lowercased domains without a trailing dot, or "*" for every other domain.
    public var routes: [String: NextHopSpec] = [:]
    /// TLS policy and credentials of routes written as tables (SecurityConfig.swift), same keys.
    public var security: [String: RouteSecurity] = [:]
    /// The [egress.pools] pool of a route written as a table (`pool = "bulk"`), same keys.
    public var pools: [String: String] = [:]

    public init(routes: [String: NextHopSpec] = [:]) {
        self.routes = routes
    }

    static let tableName = "routes"

    mutating func read(_ r: inout TableReader) throws {
        for key in r.table.keys.sorted() {
            if r.table[key]?.type == .table, r.table[key]?.table?["next_hop"] != nil {
                try readTableRoute(key, &r)
                continue
            }
            guard let text = try r.read(key, Decode.routeValue) else { continue }
            let name = key == "*" ? key : normalizedDomain(key)
            try r.check(key, key == "*" || isPlausibleDomain(key), "\"\(key)\" is not a domain name or \"*\"")
            try r.check(key, routes[name] == nil, "duplicate route (domains are not case-sensitive)")
            do {
                routes[name] = try NextHopSpec(parsing: text)
            } catch let error as ConfigError {
                throw r.error(key, error.message)
            }
        }
    }
}

// MARK: - [priority]

/// RFC 6710 priority levels (-9 lowest to 9 highest) given to messages by envelope domain.
public struct PriorityConfig: Sendable, Equatable, ConfigSection {
    /// Keys: lowercased domains of the envelope sender.
    public var senderDomains: [String: Int] = [:]
    /// Keys: lowercased domains of a recipient.
    public var recipientDomains: [String: Int] = [:]

    public init(senderDomains: [String: Int] = [:], recipientDomains: [String: Int] = [:]) {
        self.senderDomains = senderDomains
        self.recipientDomains = recipientDomains
    }

    static let tableName = "priority"
    static let levels = -9...9

    mutating func read(_ r: inout TableReader) throws {
        try Self.readLevels("sender_domains", into: &senderDomains, &r)
        try Self.readLevels("recipient_domains", into: &recipientDomains, &r)
    }

    private static func readLevels(_ key: String, into levels: inout [String: Int], _ r: inout TableReader) throws {
        guard let table = try r.read(key, Decode.table) else { return }
        var inner = TableReader(table, path: r.path + [key], context: r.context)
        for domain in table.keys.sorted() {
            guard let level = try inner.read(domain, Decode.priorityLevel) else { continue }
            try inner.check(domain, isPlausibleDomain(domain), "\"\(domain)\" is not a domain name")
            let name = normalizedDomain(domain)
            try inner.check(domain, levels[name] == nil, "duplicate domain (domains are not case-sensitive)")
            levels[name] = level
        }
        try inner.rejectUnknownKeys()
    }
}

// MARK: - Durations

/// "30s", "5m", "2h", "5d", "1500ms", "1h30m", "1.5s" or a bare integer number of seconds.
/// Returns seconds. Rejects "", unknown units, signs and spaces.
public func parseDuration(_ text: String) throws -> Double {
    func bad(_ why: String) -> ConfigError {
        ConfigError(message: "\"\(text)\" is not a duration (\(why)); write e.g. \"30s\", \"5m\", \"2h\", \"1d\", \"1500ms\"")
    }
    let chars = Array(text.utf8)
    guard !chars.isEmpty else { throw bad("empty") }
    if chars.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) {
        guard let seconds = Double(text) else { throw bad("not a number") }
        return seconds
    }
    var total = 0.0
    var i = 0
    while i < chars.count {
        let start = i
        while i < chars.count, (chars[i] >= 0x30 && chars[i] <= 0x39) || chars[i] == UInt8(ascii: ".") { i += 1 }
        let number = String(decoding: chars[start..<i], as: UTF8.self)
        guard !number.isEmpty, number.first != ".", number.last != ".", let value = Double(number) else {
            throw bad(start < chars.count && chars[start] == UInt8(ascii: "-") ? "negative" : "expected a number")
        }
        let unitStart = i
        while i < chars.count, (chars[i] | 0x20) >= 0x61 && (chars[i] | 0x20) <= 0x7a { i += 1 }
        let scale: Double
        switch String(decoding: chars[unitStart..<i], as: UTF8.self) {
        case "ms": scale = 0.001
        case "s": scale = 1
        case "m": scale = 60
        case "h": scale = 3600
        case "d": scale = 86400
        case "": throw bad("missing unit after \(number)")
        case let unit: throw bad("unknown unit \"\(unit)\"")
        }
        total += value * scale
    }
    guard total.isFinite else { throw bad("too large") }
    return total
}

// MARK: - Names

/// A host or domain name: dot-separated LDH labels of 1-63 characters, 253 in all, one trailing dot
/// allowed, and not an IPv4 address (whose last label would be all digits).
func isPlausibleDomain(_ name: String) -> Bool {
    var name = Substring(name)
    if name.hasSuffix(".") { name = name.dropLast() }
    guard !name.isEmpty, name.utf8.count <= 253 else { return false }
    let labels = name.split(separator: ".", omittingEmptySubsequences: false)
    for label in labels {
        let bytes = Array(label.utf8)
        guard (1...63).contains(bytes.count), bytes.first != UInt8(ascii: "-"), bytes.last != UInt8(ascii: "-"),
              bytes.allSatisfy({ isASCIIAlnum($0) || $0 == UInt8(ascii: "-") })
        else { return false }
    }
    return !labels.last!.utf8.allSatisfy { $0 >= 0x30 && $0 <= 0x39 }
}

/// RFC 5322 dot-atom (unquoted local parts only), at most 64 octets (RFC 5321 4.5.3.1.1).
func isDotAtom(_ text: Substring) -> Bool {
    let specials = Set("!#$%&'*+-/=?^_`{|}~".utf8)
    let bytes = Array(text.utf8)
    guard (1...64).contains(bytes.count), bytes.first != UInt8(ascii: "."), bytes.last != UInt8(ascii: ".")
    else { return false }
    var previous: UInt8 = 0
    for b in bytes {
        guard isASCIIAlnum(b) || specials.contains(b) || b == UInt8(ascii: ".") else { return false }
        if b == UInt8(ascii: "."), previous == b { return false }
        previous = b
    }
    return true
}

/// "user@example.com" or a bare local part like "postmaster".
func isAliasName(_ text: String) -> Bool {
    guard let at = text.lastIndex(of: "@") else { return isDotAtom(text[...]) }
    return isDotAtom(text[..<at]) && isPlausibleDomain(String(text[text.index(after: at)...]))
}

private func isASCIIAlnum(_ b: UInt8) -> Bool {
    (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5a) || (b >= 0x61 && b <= 0x7a)
}

// MARK: - Reading tables

/// One table of the file: its defaults live in the struct, `read` overrides them from the file.
protocol ConfigSection {
    static var tableName: String { get }
    mutating func read(_ reader: inout TableReader) throws
}

/// A table of the file and how to store it into a TernConfig.
struct AnySection {
    let name: String
    let read: (inout TernConfig, inout TableReader) throws -> Void

    init(name: String, read: @escaping (inout TernConfig, inout TableReader) throws -> Void) {
        self.name = name
        self.read = read
    }

    init<S: ConfigSection>(_ property: WritableKeyPath<TernConfig, S>) {
        self.name = S.tableName
        self.read = { config, reader in try config[keyPath: property].read(&reader) }
    }
}

struct ParseContext {
    let text: String
    let source: String
    /// Where relative paths start (the config file's directory); nil: the working directory.
    var baseDirectory: String? = nil
}

/// Reads the keys of one table, remembering which were read so that the rest can be reported.
struct TableReader {
    let table: TOMLTable
    let path: [String]
    let context: ParseContext
    private var seen: Set<String> = []

    init(_ table: TOMLTable, path: [String], context: ParseContext) {
        self.table = table
        self.path = path
        self.context = context
    }

    /// The key's value decoded, or nil when the key is absent. A decoding failure names the key.
    mutating func read<T>(_ key: String, _ decode: (TOMLValueConvertible) throws -> T) throws -> T? {
        seen.insert(key)
        guard let value = table[key] else { return nil }
        do {
            return try decode(value)
        } catch let error as ConfigError {
            throw self.error(key, error.message)
        }
    }

    mutating func read<T>(_ key: String, into target: inout T, _ decode: (TOMLValueConvertible) throws -> T) throws {
        if let value = try read(key, decode) { target = value }
    }

    /// A path: a string resolved from the config file's directory when relative.
    mutating func readPath(_ key: String, nonEmpty: Bool = false) throws -> String? {
        guard let text = try read(key, nonEmpty ? Decode.nonEmptyString : Decode.string) else { return nil }
        try check(key, !text.utf8.contains(0), "a path must not contain NUL")
        return TernConfig.resolve(text, from: context.baseDirectory)
    }

    func check(_ key: String, _ condition: Bool, _ message: @autoclosure () -> String) throws {
        if !condition { throw error(key, message()) }
    }

    func error(_ key: String, _ message: String) -> ConfigError {
        ConfigError(key: displayKey(path + [key]), line: line(of: key), message: message, source: context.source)
    }

    /// The key's line; for a key inside an inline table (`sender_domains = { "a.example" = 50 }`),
    /// which KeyLocator cannot see into, the line of the inline table's own key; for a key missing
    /// from a [[shaping]] table, the line of its header.
    func line(of key: String) -> Int? {
        if let line = KeyLocator.line(of: path + [key], in: context.text) { return line }
        return path.count >= 2 || path.last.map(isArrayElement) == true ? KeyLocator.line(of: path, in: context.text) : nil
    }

    /// Throws for the first key (in sorted order) that no `read` asked for.
    func rejectUnknownKeys() throws {
        guard let unknown = table.keys.filter({ !seen.contains($0) }).sorted().first else { return }
        let name = displayKey(path + [unknown])
        let isTable = table[unknown]?.type == .table
        throw ConfigError(key: name, line: line(of: unknown),
                          message: isTable ? "unknown table [\(name)]" : "unknown key \(name)",
                          source: context.source, keyInMessage: true)
    }
}

/// A dotted key as TOML would accept it: aliases."root@example.com"; an element of an array of
/// tables as its index from 0: shaping[2].domains.
func displayKey(_ path: [String]) -> String {
    path.map { part in
        let bare = !part.isEmpty && part.utf8.allSatisfy {
            isASCIIAlnum($0) || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: "-")
        }
        return bare || isArrayElement(part) ? part : "\"\(part)\""
    }.joined(separator: ".")
}

/// "shaping[2]": the path part TableReader and KeyLocator give the third [[shaping]] table.
func isArrayElement(_ part: String) -> Bool {
    guard part.hasSuffix("]"), let open = part.firstIndex(of: "[") else { return false }
    let name = part[..<open].utf8, index = part[part.index(after: open)..<part.index(before: part.endIndex)].utf8
    return !name.isEmpty && name.allSatisfy({ isASCIIAlnum($0) || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: "-") })
        && !index.isEmpty && index.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 })
}

// MARK: - Value decoders

/// Each decoder turns one TOML value into a Swift value or throws a ConfigError whose message
/// says what was expected; TableReader adds the key and line.
enum Decode {
    static func typeName(_ value: TOMLValueConvertible) -> String {
        switch value.type {
        case .table: return "table"
        case .array: return "array"
        case .string: return "string"
        case .int: return "integer"
        case .double: return "float"
        case .bool: return "boolean"
        case .date: return "date"
        case .time: return "time"
        case .dateTime: return "date-time"
        }
    }

    static func wrongType(_ expected: String, _ value: TOMLValueConvertible) -> ConfigError {
        ConfigError(message: "expected \(expected), got \(typeName(value))")
    }

    static func table(_ value: TOMLValueConvertible) throws -> TOMLTable {
        guard let table = value.table else { throw wrongType("a table", value) }
        return table
    }

    static func bool(_ value: TOMLValueConvertible) throws -> Bool {
        guard let bool = value.bool else { throw wrongType("true or false", value) }
        return bool
    }

    static func string(_ value: TOMLValueConvertible) throws -> String {
        guard let string = value.string else { throw wrongType("a string", value) }
        return string
    }

    static func nonEmptyString(_ value: TOMLValueConvertible) throws -> String {
        let string = try self.string(value)
        guard !string.isEmpty else { throw ConfigError(message: "must not be empty") }
        return string
    }

    static func positiveInt(_ value: TOMLValueConvertible) throws -> Int {
        try int(atLeast: 1, why: nil)(value)
    }

    static func int(atLeast minimum: Int, why: String?) -> (TOMLValueConvertible) throws -> Int {
        return { value in
            guard let int = value.int else { throw wrongType("an integer", value) }
            guard int >= minimum else {
                let what = minimum == 1 ? "a positive integer" : "at least \(minimum)"
                throw ConfigError(message: "must be \(what), got \(int)" + (why.map { " (\($0))" } ?? ""))
            }
            return int
        }
    }

    /// A duration string ("5m") or an integer number of seconds; must be greater than zero.
    static func duration(_ value: TOMLValueConvertible) throws -> Double {
        let seconds: Double
        if let int = value.int {
            seconds = Double(int)
        } else if let string = value.string {
            seconds = try parseDuration(string)
        } else {
            throw wrongType("a duration like \"5m\" or an integer number of seconds", value)
        }
        guard seconds > 0 else { throw ConfigError(message: "must be greater than zero") }
        return seconds
    }

    /// Like `duration`, but 0 is allowed (it means "off").
    static func durationOrZero(_ value: TOMLValueConvertible) throws -> Double {
        if value.int == 0 { return 0 }
        if let string = value.string, let seconds = try? parseDuration(string), seconds == 0 { return 0 }
        return try duration(value)
    }

    /// An array of durations (strings or integers of seconds), each greater than zero.
    static func durations(_ value: TOMLValueConvertible) throws -> [Double] {
        guard let array = value.array else { throw wrongType("an array of durations like [\"1m\", \"5m\"]", value) }
        return try array.enumerated().map { index, element in
            do {
                return try duration(element)
            } catch let error as ConfigError {
                throw ConfigError(message: "item \(index + 1): \(error.message)")
            }
        }
    }

    /// A TCP port to connect to: 1 to 65535.
    static func port(_ value: TOMLValueConvertible) throws -> UInt16 {
        guard let int = value.int else { throw wrongType("an integer", value) }
        guard (1...65535).contains(int) else { throw ConfigError(message: "must be 1 to 65535, got \(int)") }
        return UInt16(int)
    }

    /// An RFC 6710 priority level.
    static func priorityLevel(_ value: TOMLValueConvertible) throws -> Int {
        guard let int = value.int else { throw wrongType("an integer from -9 to 9", value) }
        guard PriorityConfig.levels.contains(int) else {
            throw ConfigError(message: "must be -9..9 (RFC 6710 priority levels), got \(int)")
        }
        return int
    }

    /// A next hop string; a table here is almost always an unquoted domain with dots.
    static func routeValue(_ value: TOMLValueConvertible) throws -> String {
        if value.type == .table {
            throw ConfigError(message: "expected a string like \"[10.0.0.5]:25\", got table "
                              + "(quote a domain that has dots: \"corp.example\" = ...)")
        }
        guard let string = value.string else { throw wrongType("a string like \"[10.0.0.5]:25\"", value) }
        return string
    }

    /// An array whose items are strings, each checked by `item`.
    static func list<T>(_ item: @escaping (String) throws -> T) -> (TOMLValueConvertible) throws -> [T] {
        return { value in
            guard let array = value.array else { throw wrongType("an array of strings", value) }
            return try array.enumerated().map { index, element in
                guard let string = element.string else {
                    throw ConfigError(message: "item \(index + 1): expected a string, got \(typeName(element))")
                }
                return try item(string)
            }
        }
    }

    /// A string or an array of strings, as an alias target.
    static func stringOrStrings(_ value: TOMLValueConvertible) throws -> [String] {
        if let string = value.string { return [string] }
        guard value.array != nil else { throw wrongType("a string or an array of strings", value) }
        return try list { $0 }(value)
    }

    static func listenAddress(_ text: String) throws -> String {
        _ = try ListenAddress(parsing: text)
        return text
    }

    static func cidr(_ text: String) throws -> CIDR {
        try CIDR(parsing: text)
    }

    static func domain(_ text: String) throws -> String {
        guard isPlausibleDomain(text) else { throw ConfigError(message: "\"\(text)\" is not a valid domain name") }
        var domain = text.lowercased()
        if domain.hasSuffix(".") { domain.removeLast() }
        return domain
    }
}

// MARK: - Line numbers for keys

/// TOMLKit does not expose where a key was written, so this finds it in the text: tracking
/// [table] headers, skipping multi-line strings, matching `key =` and `dotted.key =` lines.
/// Best effort: nil when not found (an inline table, say), never a wrong table's line.
enum KeyLocator {
    static func line(of path: [String], in text: String) -> Int? {
        var header: [String] = []
        var arrayCounts: [[String]: Int] = [:]  // [[shaping]] headers seen: the next one's index
        var openString: String?  // inside a multi-line string that began on an earlier line
        for (index, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            if let delimiter = openString {
                if line.contains(delimiter) { openString = nil }
                continue
            }
            let trimmed = line.drop(while: { $0 == " " || $0 == "\t" })
            if trimmed.hasPrefix("[") {
                let isArray = trimmed.hasPrefix("[[")
                guard let (keys, rest) = parseKey(trimmed.dropFirst(isArray ? 2 : 1)),
                      rest.drop(while: { $0 == " " || $0 == "\t" }).hasPrefix("]")
                else { continue }
                header = keys
                if isArray {
                    let n = arrayCounts[keys, default: 0]
                    arrayCounts[keys] = n + 1
                    header[header.count - 1] += "[\(n)]"
                }
                if header.starts(with: path) { return index + 1 }
                continue
            }
            guard let (keys, rest) = parseKey(trimmed) else { continue }
            let afterKey = rest.drop(while: { $0 == " " || $0 == "\t" })
            guard afterKey.hasPrefix("=") else { continue }
            if (header + keys).starts(with: path) { return index + 1 }
            let value = afterKey.dropFirst().drop(while: { $0 == " " || $0 == "\t" })
            for delimiter in ["\"\"\"", "'''"] where value.hasPrefix(delimiter) {
                if !value.dropFirst(3).contains(delimiter) { openString = delimiter }
            }
        }
        return nil
    }

    /// A dotted key at the start of `text`: bare, "basic" or 'literal' parts.
    static func parseKey(_ text: Substring) -> ([String], Substring)? {
        var keys: [String] = []
        var rest = text
        while true {
            rest = rest.drop(while: { $0 == " " || $0 == "\t" })
            guard let first = rest.first else { return nil }
            if first == "\"" || first == "'" {
                var key = ""
                var i = rest.index(after: rest.startIndex)
                var closed = false
                while i < rest.endIndex {
                    let c = rest[i]
                    if c == first { closed = true; break }
                    if c == "\\" && first == "\"" {
                        i = rest.index(after: i)
                        guard i < rest.endIndex else { return nil }
                    }
                    key.append(rest[i])
                    i = rest.index(after: i)
                }
                guard closed else { return nil }
                keys.append(key)
                rest = rest[rest.index(after: i)...]
            } else {
                let bare = rest.prefix(while: {
                    $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_" || $0 == "-")
                })
                guard !bare.isEmpty else { return nil }
                keys.append(String(bare))
                rest = rest[bare.endIndex...]
            }
            let afterPart = rest.drop(while: { $0 == " " || $0 == "\t" })
            guard afterPart.hasPrefix(".") else { return (keys, rest) }
            rest = afterPart.dropFirst()
        }
    }
}
