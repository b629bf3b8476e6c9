// `tern queue` and `tern health` talk to the admin endpoint here: one HTTP/1.1 request on a blocking
// socket, "Connection: close", the whole answer read to EOF. A command-line tool, not the relay:
// blocking is fine here, and no loop is involved. Where to connect and how to read the answer are
// Relay's AdminClient (pure, unit-tested).

import Foundation
import Relay
#if canImport(Glibc)
import Glibc
#endif

extension AdminClient {
    func request(_ method: String, _ target: String, body: [UInt8] = []) throws -> AdminResponse {
        let fd = try connect()
        defer { close(fd) }
        let host = unixPath != nil ? "localhost" : address.description
        var head = "\(method) \(target) HTTP/1.1\r\nHost: \(host)\r\nConnection: close\r\n"
        if method == "POST" { head += "Content-Length: \(body.count)\r\n" }
        head += "\r\n"
        let bytes = Array(head.utf8) + body
        var sent = 0
        while sent < bytes.count {
            let n = bytes[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                if errno == EINTR { continue }
                throw AdminClientError(message: "sending to the admin endpoint at \(endpointName): \(errorText(errno))", unreachable: false)
            }
            sent += n
        }
        var answer: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 {
                if errno == EINTR { continue }
                throw AdminClientError(message: "reading from the admin endpoint at \(endpointName): \(errorText(errno))", unreachable: false)
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

    private func connect() throws -> Int32 {
        let family = unixPath != nil ? AF_UNIX : address.family == .ipv6 ? AF_INET6 : AF_INET
        let fd = socket(family, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw AdminClientError(message: "socket: \(errorText(errno))", unreachable: false) }
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
            result = connectSocket(fd, to: &sa)
        } else if address.family == .ipv6 {
            var sa = sockaddr_in6()
            sa.sin6_family = sa_family_t(AF_INET6)
            sa.sin6_port = address.port.bigEndian
            inet_pton(AF_INET6, address.host, &sa.sin6_addr)
            result = connectSocket(fd, to: &sa)
        } else {
            var sa = sockaddr_in()
            sa.sin_family = sa_family_t(AF_INET)
            sa.sin_port = address.port.bigEndian
            inet_pton(AF_INET, address.host, &sa.sin_addr)
            result = connectSocket(fd, to: &sa)
        }
        if result != 0 {
            let e = errno
            close(fd)
            let unreachable = e == ECONNREFUSED || e == ENOENT || e == ENETUNREACH || e == EHOSTUNREACH
            throw AdminClientError(
                message: "cannot reach the admin endpoint at \(endpointName): \(errorText(e))"
                    + (unreachable ? "; is `tern serve` running, with this [admin] listen?" : ""),
                unreachable: unreachable)
        }
        return fd
    }
}

private func errorText(_ code: Int32) -> String { String(cString: strerror(code)) }

/// connect(2) with any sockaddr_* type: its size is the type's.
private func connectSocket<Address>(_ fd: Int32, to address: inout Address) -> Int32 {
    withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<Address>.size)) }
    }
}
