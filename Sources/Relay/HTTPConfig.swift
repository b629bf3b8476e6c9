// HTTPConfig.swift: [http], the listener of the injection API (POST /api/inject, InjectionEndpoint.swift).
// Off by default; on, it needs a tokens file (`tern token --file F NAME` adds one).
//
//   [http]
//   listen = "127.0.0.1:8080"
//   tokens_file = "/etc/tern/tokens"
//   max_body_size = 10485760     # bytes of one request's JSON; more: 413
//   max_connections = 16         # at once; each holds at most max_body_size
//   request_timeout = "30s"      # from a request's first byte to its last

public struct HTTPConfig: Sendable, Equatable, ConfigSection {
    /// "ip:port" or "[ipv6]:port"; "" for no injection API.
    public var listen = ""
    /// NAME:sha256$HEX lines; read again on SIGHUP.
    public var tokensFile = ""
    public var maxBodySize = 10 << 20
    public var maxConnections = 16
    public var requestTimeout: Double = 30

    public init() {}

    static let tableName = "http"

    mutating func read(_ r: inout TableReader) throws {
        try r.read("listen", into: &listen) { value in
            let text = try Decode.string(value)
            return text.isEmpty ? text : try Decode.listenAddress(text)
        }
        if let path = try r.readPath("tokens_file") { tokensFile = path }
        try r.read("max_body_size", into: &maxBodySize, Decode.int(atLeast: 1024, why: "a request of 1 KiB must fit"))
        try r.read("max_connections", into: &maxConnections, Decode.positiveInt)
        try r.read("request_timeout", into: &requestTimeout, Decode.duration)
        try r.check("tokens_file", listen.isEmpty || !tokensFile.isEmpty,
                    "is required with http.listen: the bearer tokens allowed to inject (`tern token --file F NAME` makes one)")
    }
}

extension TernConfig {
    func renderHTTP(_ out: inout TOMLWriter) {
        out.table("http")
        out.key("listen", string: http.listen)
        out.key("tokens_file", string: http.tokensFile)
        out.key("max_body_size", http.maxBodySize)
        out.key("max_connections", http.maxConnections)
        out.key("request_timeout", duration: http.requestTimeout)
    }
}
