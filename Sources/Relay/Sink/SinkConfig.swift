// SinkConfig: what `tern sink` does, from flags or from its own small TOML file with one [sink]
// table. It is a separate file rather than a table of tern.toml because a sink is a test tool that
// runs beside (or instead of) a relay, like Postfix's smtp-sink or MailHog, which are configured on
// their command line; a file is for fault plans too long for flags. The file is as strict as
// tern.toml: an unknown key or a bad value is an error that names the key.
//
//   [sink]
//   listen = ["127.0.0.1:2526"]
//   mode = "keep"                 # discard | keep | count
//   keep_path = "mail"            # keep: a directory of .eml files, or a maildir
//   keep_format = "eml"           # eml | maildir
//   metrics_listen = "127.0.0.1:8026"
//   seed = 42
//   [sink.advertise]
//   pipelining = false
//   [[sink.fault]]
//   stage = "rcpt"
//   fraction = 0.1
//   reply = 451

import SMTPProtocol
import TOMLKit

public struct SinkConfig: Sendable, Equatable {
    public enum Mode: String, Sendable, CaseIterable {
        /// Accept and forget (the data is still read and checked).
        case discard
        /// Write each message to keep_path.
        case keep
        /// Accept and count only: like discard, and the per-message log line is not even formatted.
        case count
    }
    public enum KeepFormat: String, Sendable, CaseIterable { case eml, maildir }

    public var listen: [String] = ["127.0.0.1:2526"]
    /// The machine's name unless set: looked up only when asked for (with no dot in it, that is a
    /// resolver query, which must not hold up `--hostname` or a config that sets it).
    public var hostname: String {
        get { hostnameSetting ?? Self.defaultHostname() }
        set { hostnameSetting = newValue }
    }
    private var hostnameSetting: String?
    public var mode: Mode = .discard
    public var keepPath: String?
    public var keepFormat: KeepFormat = .eml
    /// "ip:port" of the Prometheus endpoint; nil: none.
    public var metricsListen: String?
    /// nil: a random seed, printed at start so a run can be repeated.
    public var seed: UInt64?
    public var magicRecipients = true
    public var maxMessageSize = 52_428_800
    public var maxRecipients = 1000
    public var maxLineLength = 1000
    public var maxConnections = 20_000
    public var commandTimeout: Double = 300
    public var advertise: AdvertisedExtensions = .all
    /// PEM certificate and key: STARTTLS is offered when both are set (and `offerStartTLS`).
    public var tlsCertificate: String?
    public var tlsKey: String?
    /// `advertise.starttls` / `--disable starttls`: keep the certificate but do not offer STARTTLS.
    public var offerStartTLS = true
    /// Fault rules, banner delay and tarpit included (as greeting and all-stage delay rules).
    public var faults: [FaultRule] = []

    public init() {}

    static func defaultHostname() -> String {
        let name = TernConfig.systemHostname()
        return isPlausibleDomain(name) ? name : "localhost"
    }

    /// The advertise switches by their EHLO keyword, lower-cased, as keys and flags name them.
    public static let extensionNames: [(String, AdvertisedExtensions)] = [
        ("pipelining", .pipelining), ("size", .size), ("8bitmime", .eightBitMIME),
        ("enhancedstatuscodes", .enhancedStatusCodes), ("smtputf8", .smtputf8), ("mt-priority", .mtPriority),
        ("chunking", .chunking), ("dsn", .dsn), ("requiretls", .requireTLS), ("binarymime", .binaryMIME),
    ]

    /// A banner delay is a delay rule at the greeting.
    public static func bannerDelay(_ text: String) throws -> FaultRule {
        var rule = FaultRule(stage: .greeting)
        rule.delay = try DelaySpec.parse(text)
        return rule
    }

    /// A tarpit holds every reply.
    public static func tarpit(_ text: String) throws -> FaultRule {
        var rule = FaultRule(stage: .all)
        rule.delay = try DelaySpec.parse(text)
        return rule
    }

    /// Relative paths in the file (keep_path, tls_certificate, tls_key) are from its directory.
    public static func load(path: String) throws -> SinkConfig {
        try parse(TernConfig.readFile(path), source: path, baseDirectory: TernConfig.directory(of: path))
    }

    public static func parse(_ text: String, source: String = "<sink config>", baseDirectory: String? = nil) throws -> SinkConfig {
        let document: TOMLTable
        do {
            document = try TOMLTable(string: text)
        } catch let error as TOMLParseError {
            throw ConfigError(line: error.source.begin.line, message: error.description, source: source)
        }
        var root = TableReader(document, path: [], context: ParseContext(text: text, source: source,
                                                                          baseDirectory: baseDirectory))
        var config = SinkConfig()
        if let table = try root.read("sink", Decode.table) {
            var r = TableReader(table, path: ["sink"], context: root.context)
            try config.read(&r)
            try r.rejectUnknownKeys()
        }
        try root.rejectUnknownKeys()
        return config
    }

    mutating func read(_ r: inout TableReader) throws {
        try r.read("listen", into: &listen, Decode.list(Decode.listenAddress))
        try r.check("listen", !listen.isEmpty, "must list at least one address")
        try r.check("listen", Set(listen.compactMap { try? ListenAddress(parsing: $0) }).count == listen.count,
                    "lists the same address twice")
        if let name = try r.read("hostname", Decode.string) {
            try r.check("hostname", isPlausibleDomain(name), "\"\(name)\" is not a valid domain name")
            hostname = name
        }
        if let m = try r.read("mode", Decode.string) {
            guard let mode = Mode(rawValue: m) else {
                throw r.error("mode", "\"\(m)\" is not one of discard, keep, count")
            }
            self.mode = mode
        }
        keepPath = try r.readPath("keep_path", nonEmpty: true)
        if let f = try r.read("keep_format", Decode.string) {
            guard let format = KeepFormat(rawValue: f) else {
                throw r.error("keep_format", "\"\(f)\" is not one of eml, maildir")
            }
            keepFormat = format
        }
        if let m = try r.read("metrics_listen", Decode.string), !m.isEmpty {
            _ = try r.read("metrics_listen", { _ in try ListenAddress(parsing: m) })
            metricsListen = m
        }
        if let s = try r.read("seed", Decode.int(atLeast: 0, why: nil)) { seed = UInt64(s) }
        try r.read("magic_recipients", into: &magicRecipients, Decode.bool)
        try r.read("max_message_size", into: &maxMessageSize, Decode.positiveInt)
        try r.read("max_recipients", into: &maxRecipients, Decode.positiveInt)
        try r.read("max_connections", into: &maxConnections, Decode.positiveInt)
        try r.read("max_line_length", into: &maxLineLength, Decode.int(atLeast: 1000,
                   why: "RFC 5321 4.5.3.1.6 requires lines of 1000 octets"))
        try r.read("command_timeout", into: &commandTimeout, Decode.duration)
        tlsCertificate = try r.readPath("tls_certificate", nonEmpty: true)
        tlsKey = try r.readPath("tls_key", nonEmpty: true)
        // "0s" (the default) adds no rule.
        if let text = try r.read("banner_delay", Decode.string),
           let rule = try r.read("banner_delay", { _ in try SinkConfig.bannerDelay(text) }), rule.delay!.high > 0 {
            faults.append(rule)
        }
        if let text = try r.read("tarpit", Decode.string),
           let rule = try r.read("tarpit", { _ in try SinkConfig.tarpit(text) }), rule.delay!.high > 0 {
            faults.append(rule)
        }
        if let table = try r.read("advertise", Decode.table) {
            var a = TableReader(table, path: ["sink", "advertise"], context: r.context)
            for (name, bit) in Self.extensionNames {
                if let on = try a.read(name, Decode.bool) {
                    if on { advertise.insert(bit) } else { advertise.remove(bit) }
                }
            }
            try a.read("starttls", into: &offerStartTLS, Decode.bool)
            try a.rejectUnknownKeys()
        }
        if let value = try r.read("fault", { $0 }) {
            guard let array = value.array else { throw r.error("fault", "expected [[sink.fault]] tables") }
            for (index, element) in array.enumerated() {
                // "sink.fault[2].reply": which of the [[sink.fault]] tables, counting from 1.
                let key = "fault[\(index + 1)]"
                let source = r.context.source
                let error = { (k: String, message: String) in ConfigError(key: "sink.\(key).\(k)", message: message, source: source) }
                guard let table = element.table else { throw ConfigError(key: "sink.\(key)", message: "expected a table", source: source) }
                var fields: [String: FieldValue] = [:]
                for k in table.keys {
                    let v = table[k]!
                    if let s = v.string { fields[k] = .string(s) }
                    else if let i = v.int { fields[k] = .number(Double(i)) }
                    else if let d = v.double { fields[k] = .number(d) }
                    else if let b = v.bool { fields[k] = .bool(b) }
                    else { throw error(k, "expected a string, number or boolean") }
                }
                faults.append(try FaultRule.make(fields, error: error))
            }
        }
        try validate(error: { key, message in r.error(key, message) })
    }

    /// Checks that hold whichever way the values came (file or flags).
    public func validate(error: (String, String) -> ConfigError) throws {
        if mode == .keep && keepPath == nil { throw error("keep_path", "mode = \"keep\" needs keep_path") }
        if (tlsCertificate == nil) != (tlsKey == nil) {
            throw error(tlsKey == nil ? "tls_key" : "tls_certificate", "tls_certificate and tls_key go together")
        }
        for rule in faults {
            if let l = rule.listen, !listen.contains(where: { rule.applies(toListener: $0) }) {
                throw error("fault", "listen = \"\(l)\" is not one of the sink's listen addresses")
            }
        }
    }
}
