// The other end of the admin endpoint, for `tern queue` and `tern health`: where the endpoint is and
// how its HTTP/1.1 answer is read. The blocking socket that carries the request is the tern
// executable's (Sources/tern/AdminConnection.swift): the relay itself never blocks.

import Foundation

public struct AdminClientError: Error, CustomStringConvertible, Equatable {
    public var message: String
    /// True when nothing answers at the address: the daemon is not running (or listens elsewhere).
    public var unreachable: Bool
    public var description: String { message }

    public init(message: String, unreachable: Bool) {
        self.message = message
        self.unreachable = unreachable
    }
}

public struct AdminResponse: Equatable, Sendable {
    public var status: Int
    public var body: [UInt8]
    public var text: String { String(decoding: body, as: UTF8.self) }
}

public struct AdminClient {
    /// The TCP address, unless `unixPath` is set.
    public let address: ListenAddress
    /// A unix-domain socket to connect to instead.
    public let unixPath: String?
    public var timeoutSeconds = 60

    public init(address: ListenAddress) {
        self.address = address
        unixPath = nil
    }

    public init(unixPath: String) {
        self.unixPath = unixPath
        address = try! ListenAddress(parsing: "127.0.0.1:0")
    }

    /// The client for an [admin] listen value (or --admin): "ip:port" or a socket's absolute path.
    public static func forListen(_ listen: String) throws -> AdminClient {
        if listen.hasPrefix("/") { return AdminClient(unixPath: listen) }
        return AdminClient(address: try address(forListen: listen))
    }

    /// What the messages call the endpoint.
    public var endpointName: String { unixPath ?? address.description }

    /// Where to reach the endpoint of a config's [admin] listen: a wildcard address is reached on
    /// loopback.
    public static func address(forListen listen: String) throws -> ListenAddress {
        let parsed = try ListenAddress(parsing: listen)
        switch parsed.host {
        case "0.0.0.0": return try ListenAddress(parsing: "127.0.0.1:\(parsed.port)")
        case "::": return try ListenAddress(parsing: "[::1]:\(parsed.port)")
        default: return parsed
        }
    }

    /// An HTTP/1.1 response: nil while more bytes are needed (with Content-Length; else until EOF).
    public static func parse(_ bytes: [UInt8], complete: Bool) throws -> AdminResponse? {
        let crlf2: [UInt8] = [13, 10, 13, 10]
        guard let end = (0..<max(0, bytes.count - 3)).first(where: { Array(bytes[$0..<$0 + 4]) == crlf2 }) else {
            if complete { throw AdminClientError(message: "a truncated answer from the admin endpoint", unreachable: false) }
            return nil
        }
        let head = String(decoding: bytes[0..<end], as: UTF8.self)
        let lines = head.components(separatedBy: "\r\n")
        let statusParts = lines[0].split(separator: " ", maxSplits: 2)
        guard statusParts.count >= 2, statusParts[0].hasPrefix("HTTP/1."), let status = Int(statusParts[1]) else {
            throw AdminClientError(message: "not an HTTP answer from the admin endpoint: \(lines[0])", unreachable: false)
        }
        var length: Int?
        for line in lines.dropFirst() {
            let kv = line.split(separator: ":", maxSplits: 1)
            if kv.count == 2, kv[0].lowercased() == "content-length" {
                length = Int(kv[1].trimmingCharacters(in: .whitespaces))
            }
        }
        let bodyStart = end + 4
        if let length {
            guard bytes.count >= bodyStart + length else {
                if complete { throw AdminClientError(message: "a truncated answer from the admin endpoint", unreachable: false) }
                return nil
            }
            return AdminResponse(status: status, body: Array(bytes[bodyStart..<bodyStart + length]))
        }
        return complete ? AdminResponse(status: status, body: Array(bytes[bodyStart...])) : nil
    }
}
