// EventsConfig.swift: [events], where message events go (EventLog.swift).
//
//   [events]
//   file = "/var/log/tern/events.jsonl"   # JSON Lines; "" (the default): none; SIGUSR1 reopens it

public struct EventsConfig: Equatable, Sendable {
    /// The JSON Lines file; "" writes none. A relative path is from the config file's directory.
    public var file = ""

    public init() {}
}

extension TernConfig {
    static func readEvents(_ config: inout TernConfig, _ reader: inout TableReader) throws {
        if let path = try reader.readPath("file") { config.events.file = path }
    }

    func renderEvents(_ out: inout TOMLWriter) {
        out.table("events")
        out.key("file", string: events.file)
    }
}
