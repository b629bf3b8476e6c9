// ClusterConfig.swift: [cluster], several Tern nodes sharing their state through one Redis (issue 20).
// Off by default. Each node keeps its own spool: no mail crosses between nodes.
//
//   [cluster]
//   redis = "127.0.0.1:6379"    # "host:port", "[v6]:port" or a unix socket's path; "" (default): off
//   node = "mta1"               # unique per node; "" (default): the machine's host name
//   timeout = "500ms"           # a Redis command not answered by then: Redis counts as down

public struct ClusterConfig: Sendable, Equatable, ConfigSection {
    public var redis = ""
    public var node = ""
    public var timeout: Double = 0.5

    public init() {}

    static let tableName = "cluster"

    public var enabled: Bool { !redis.isEmpty }

    /// The node's name: `node`, else the machine's host name.
    public var nodeName: String { node.isEmpty ? TernConfig.systemHostname() : node }

    mutating func read(_ r: inout TableReader) throws {
        try r.read("redis", into: &redis) { value in
            let text = try Decode.string(value)
            guard !text.isEmpty, !text.hasPrefix("/") else { return text }
            _ = try Decode.listenAddress(text)  // host:port, [v6]:port
            return text
        }
        try r.read("node", into: &node) { value in
            let text = try Decode.string(value)
            guard text.utf8.count <= 64, text.utf8.allSatisfy({ b in
                (b >= 0x30 && b <= 0x39) || ((b | 0x20) >= 0x61 && (b | 0x20) <= 0x7A) || b == 0x2D || b == 0x2E || b == 0x5F
            }) else {
                throw ConfigError(message: "\"\(text)\" is not a node name: up to 64 letters, digits, '-', '.' and '_'")
            }
            return text
        }
        try r.read("timeout", into: &timeout, Decode.duration)
        try r.check("timeout", timeout >= 0.01 && timeout <= 60, "must be 10ms to 60s")
    }
}

extension TernConfig {
    func renderCluster(_ out: inout TOMLWriter) {
        out.table("cluster")
        out.key("redis", string: cluster.redis)
        out.key("node", string: cluster.node)
        out.key("timeout", duration: cluster.timeout)
    }
}
