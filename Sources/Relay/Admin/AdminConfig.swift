// [admin]: where the relay's admin endpoint (GET /metrics, the /queue API that `tern queue` uses)
// listens. Loopback by default: the queue API can delete mail, so it is on a public address only when
// the operator writes one here. An absolute path is a unix-domain socket instead (who may connect is
// then up to the file's permissions). "" switches the endpoint off.

public struct AdminConfig: Sendable, Equatable, ConfigSection {
    /// "ip:port", "[ipv6]:port", or "/path/to/admin.sock"; "" for no admin endpoint.
    public var listen = "127.0.0.1:8025"
    /// Seconds a request (head and body) may take to arrive, from its first byte; then 408.
    public var requestTimeout: Double = 10

    public init() {}

    static let tableName = "admin"

    mutating func read(_ r: inout TableReader) throws {
        try r.read("listen", into: &listen) { value in
            let text = try Decode.string(value)
            if text.isEmpty { return text }
            if text.hasPrefix("/") {
                // sockaddr_un holds 107 bytes and a NUL.
                guard text.utf8.count <= 107, !text.utf8.contains(0) else {
                    throw ConfigError(message: "a unix socket path must be at most 107 bytes")
                }
                return text
            }
            do {
                return try Decode.listenAddress(text)
            } catch let error as ConfigError {
                throw ConfigError(message: error.message + ", or an absolute path for a unix socket")
            }
        }
        try r.read("request_timeout", into: &requestTimeout, Decode.duration)
    }

    /// A unix-domain socket's path, nil for TCP.
    public var unixPath: String? { listen.hasPrefix("/") ? listen : nil }

    /// True when only this machine can reach it: a unix socket, or 127.0.0.0/8 or ::1.
    public var isLoopback: Bool {
        if unixPath != nil { return true }
        guard let address = try? ListenAddress(parsing: listen) else { return false }
        return address.host.hasPrefix("127.") || address.host == "::1"
    }
}
