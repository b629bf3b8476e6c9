// EventsConfig.swift: [events], where message events go: a JSON Lines file (EventLog.swift) and
// webhooks (Webhook.swift).
//
//   [events]
//   file = "/var/log/tern/events.jsonl"   # JSON Lines; "" (the default): none; SIGUSR1 reopens it
//
//   [[events.webhook]]
//   url = "http://127.0.0.1:9000/hook"    # POSTed JSON arrays of events
//   events = ["delivery", "bounce"]       # the kinds wanted (default: all)
//   batch_size = 100                      # events per POST at most
//   interval = "1s"                       # a batch waits at most this long to fill
//   timeout = "30s"                       # for one POST
//   max_outbox_size = 268435456           # bytes of unsent events kept in the spool; then oldest dropped
//   headers = { Authorization = "Bearer …" }
//   name = "crm"                          # the outbox's directory, spool/outbox/NAME (default: from the URL)

import UVRuntime

public struct EventsConfig: Equatable, Sendable {
    /// The JSON Lines file; "" writes none. A relative path is from the config file's directory.
    public var file = ""
    public var webhooks: [WebhookConfig] = []

    public init() {}

    /// Every event type, in the order the documentation lists them.
    public static let types = ["reception", "delivery", "transient_failure", "bounce", "expiration", "rejection",
                               "suppression", "admin"]
}

public struct WebhookConfig: Equatable, Sendable {
    public var name: String
    public var url: String
    public var events: [String] = EventsConfig.types
    public var batchSize = 100
    public var interval: Double = 1
    public var timeout: Double = 30
    public var maxOutboxSize = 256 << 20
    /// Sorted by name (TOML tables have no order).
    public var headers: [String: String] = [:]

    public init(url: String, name: String? = nil) {
        self.url = url
        self.name = name ?? Self.defaultName(url)
    }

    /// "webhook-" and the URL's CRC-32: the outbox stays with its URL across restarts.
    static func defaultName(_ url: String) -> String {
        let crc = Array(url.utf8).withUnsafeBytes { ISAL.crc32($0, following: 0) }
        let hex = String(crc, radix: 16)
        return "webhook-" + String(repeating: "0", count: 8 - hex.count) + hex
    }

    static func isName(_ text: String) -> Bool {
        (1...64).contains(text.utf8.count) && text.first != "." && text.utf8.allSatisfy {
            ($0 >= 48 && $0 <= 57) || ($0 >= 65 && $0 <= 90) || ($0 >= 97 && $0 <= 122) || $0 == 45 || $0 == 95 || $0 == 46
        }
    }
}

extension TernConfig {
    static func readEvents(_ config: inout TernConfig, _ reader: inout TableReader) throws {
        if let path = try reader.readPath("file") { config.events.file = path }
        guard let tables = try reader.read("webhook", Decode.tables("events.webhook")) else { return }
        var names: Set<String> = []
        for (index, table) in tables.enumerated() {
            var r = TableReader(table, path: reader.path + ["webhook[\(index)]"], context: reader.context)
            guard let url = try r.read("url", Decode.string) else {
                throw r.error("url", "is required: where the events are POSTed, e.g. \"http://127.0.0.1:9000/hook\"")
            }
            let lower = url.lowercased()
            try r.check("url", (lower.hasPrefix("http://") || lower.hasPrefix("https://")) && url.count > 8
                            && !url.unicodeScalars.contains { $0.value <= 32 || $0.value == 127 },
                        "\"\(url)\" is not an http:// or https:// URL")
            var hook = WebhookConfig(url: url, name: try r.read("name", Decode.string))
            try r.check("name", WebhookConfig.isName(hook.name),
                        "\"\(hook.name)\" is not a name (1-64 letters, digits, '-', '_' or '.'; the outbox's directory)")
            try r.check("name", names.insert(hook.name).inserted,
                        "\"\(hook.name)\" is used by another webhook: each has an outbox of its own")
            try r.read("events", into: &hook.events, Decode.list { kind in
                guard EventsConfig.types.contains(kind) else {
                    throw ConfigError(message: "\"\(kind)\" is not an event type (\(EventsConfig.types.joined(separator: ", ")))")
                }
                return kind
            })
            try r.check("events", !hook.events.isEmpty, "must name at least one event type")
            try r.read("batch_size", into: &hook.batchSize, Decode.positiveInt)
            try r.check("batch_size", hook.batchSize <= 10_000, "at most 10000 events in one POST")
            try r.read("interval", into: &hook.interval, Decode.duration)
            try r.read("timeout", into: &hook.timeout, Decode.duration)
            try r.read("max_outbox_size", into: &hook.maxOutboxSize,
                       Decode.int(atLeast: 16384, why: "the outbox keeps whole files of events"))
            if let headers = try r.read("headers", Decode.table) {
                for key in headers.keys {
                    guard let value = headers[key]?.string else {
                        throw r.error("headers", "\"\(key)\" must be a string")
                    }
                    let field = key.utf8.allSatisfy { $0 > 32 && $0 < 127 && $0 != 58 }
                    try r.check("headers", !key.isEmpty && field && !value.unicodeScalars.contains { $0.value < 32 || $0.value == 127 },
                                "\"\(key)\" is not a header field with a one-line value")
                    hook.headers[key] = value
                }
            }
            try r.rejectUnknownKeys()
            config.events.webhooks.append(hook)
        }
    }

    func renderEvents(_ out: inout TOMLWriter) {
        out.table("events")
        out.key("file", string: events.file)
        for hook in events.webhooks {
            out.arrayTable("events.webhook")
            out.key("name", string: hook.name)
            out.key("url", string: hook.url)
            out.key("events", strings: hook.events)
            out.key("batch_size", hook.batchSize)
            out.key("interval", duration: hook.interval)
            out.key("timeout", duration: hook.timeout)
            out.key("max_outbox_size", hook.maxOutboxSize)
            let headers = hook.headers.keys.sorted().map { "\(TOMLWriter.key($0)) = \(TOMLWriter.quoted(hook.headers[$0]!))" }
            if !headers.isEmpty { out.raw("headers = { " + headers.joined(separator: ", ") + " }") }
        }
    }
}
