// The other end of the admin endpoint, for `tern queue`: one HTTP/1.1 request on a blocking socket,
// "Connection: close", the whole answer read to EOF. A command-line tool, not the relay: blocking is
// fine here, and the loop is never involved.

import Foundation
#if canImport(Glibc)
import Glibc
#endif

public struct AdminClientError: Error, CustomStringConvertible, Equatable {
    public var message: String
    /// True when nothing answers at the address: the daemon is not running (or listens elsewhere).
    public var unreachable: Bool
    public var description: String { message }
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
    var endpointName: String { unixPath ?? address.description }

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

    public func request(_ method: String, _ target: String) throws -> AdminResponse {
        let fd = try connect()
        defer { close(fd) }
        let host = unixPath != nil ? "localhost" : address.description
        var head = "\(method) \(target) HTTP/1.1\r\nHost: \(host)\r\nConnection: close\r\n"
        if method == "POST" { head += "Content-Length: 0\r\n" }
        head += "\r\n"
        let bytes = Array(head.utf8)
        var sent = 0
        while sent < bytes.count {
            let n = bytes[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                if errno == EINTR { continue }
                throw AdminClientError(message: "sending to the admin endpoint at \(endpointName): \(Self.errorText(errno))", unreachable: false)
            }
            sent += n
        }
        var answer: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 {
                if errno == EINTR { continue }
                throw AdminClientError(message: "reading from the admin endpoint at \(endpointName): \(Self.errorText(errno))", unreachable: false)
            }
            if n == 0 { break }
            answer.append(contentsOf: buffer[0..<n])
            if let parsed = try Self.parse(answer, complete: false) { return parsed }
        }
        guard let parsed = try Self.parse(answer, complete: true) else {
            throw AdminClientError(message: "the admin endpoint at \(endpointName) closed the connection without an answer", unreachable: false)
        }
        return parsed
    }

    /// An HTTP/1.1 response: nil while more bytes are needed (with Content-Length; else until EOF).
    static func parse(_ bytes: [UInt8], complete: Bool) throws -> AdminResponse? {
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

    private func connect() throws -> Int32 {
        let family = unixPath != nil ? AF_UNIX : address.family == .ipv6 ? AF_INET6 : AF_INET
        let fd = socket(family, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw AdminClientError(message: "socket: \(Self.errorText(errno))", unreachable: false) }
        var tv = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var result: Int32
        if let unixPath {
            var sa = sockaddr_un()
            sa.sun_family = sa_family_t(AF_UNIX)
            let bytes = Array(unixPath.utf8)
            guard bytes.count < MemoryLayout.size(ofValue: sa.sun_path) else {
                close(fd)
                throw AdminClientError(message: "socket path too long: \(unixPath)", unreachable: false)
            }
            withUnsafeMutableBytes(of: &sa.sun_path) { $0.copyBytes(from: bytes) }
            result = withUnsafePointer(to: &sa) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
        } else if address.family == .ipv6 {
            var sa = sockaddr_in6()
            sa.sin6_family = sa_family_t(AF_INET6)
            sa.sin6_port = address.port.bigEndian
            inet_pton(AF_INET6, address.host, &sa.sin6_addr)
            result = withUnsafePointer(to: &sa) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) }
            }
        } else {
            var sa = sockaddr_in()
            sa.sin_family = sa_family_t(AF_INET)
            sa.sin_port = address.port.bigEndian
            inet_pton(AF_INET, address.host, &sa.sin_addr)
            result = withUnsafePointer(to: &sa) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
        }
        if result != 0 {
            let e = errno
            close(fd)
            let unreachable = e == ECONNREFUSED || e == ENOENT || e == ENETUNREACH || e == EHOSTUNREACH
            throw AdminClientError(
                message: "cannot reach the admin endpoint at \(endpointName): \(Self.errorText(e))"
                    + (unreachable ? "; is `tern serve` running, with this [admin] listen?" : ""),
                unreachable: unreachable)
        }
        return fd
    }

    static func errorText(_ code: Int32) -> String { String(cString: strerror(code)) }
}
