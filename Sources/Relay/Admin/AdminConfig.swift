// [admin]: where the relay's admin endpoint (GET /metrics, the /queue API that `tern queue` uses)
// listens. Loopback by default: the queue API can delete mail, so it is on a public address only when
// the operator writes one here. "" switches the endpoint off.

public struct AdminConfig: Sendable, Equatable, ConfigSection {
    /// "ip:port" or "[ipv6]:port"; "" for no admin endpoint.
    public var listen = "127.0.0.1:8025"

    public init() {}

    static let tableName = "admin"

    mutating func read(_ r: inout TableReader) throws {
        try r.read("listen", into: &listen) { value in
            let text = try Decode.string(value)
            if text.isEmpty { return text }
            return try Decode.listenAddress(text)
        }
    }

    /// True when the address is a loopback one (127.0.0.0/8, ::1): the only kind that is safe unasked.
    public var isLoopback: Bool {
        guard let address = try? ListenAddress(parsing: listen) else { return false }
        return address.host.hasPrefix("127.") || address.host == "::1"
    }
}
