// SocketAddress: a numeric IPv4 or IPv6 address and a port. No host names (those go to the resolver).

import CLibUV
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

public struct SocketAddress: Hashable, Sendable, CustomStringConvertible {
    /// Canonical text form ("127.0.0.1", "::1"): equal addresses have equal `ip`.
    public let ip: String
    public let port: UInt16
    public let isIPv6: Bool

    /// `ip` is a numeric IPv4 or IPv6 address (no brackets, no zone); throws EINVAL otherwise.
    public init(ip: String, port: UInt16) throws {
        if ip.contains(":") {
            guard !ip.contains("%") else { throw UVError.invalidArgument }
            var address = sockaddr_in6()
            try uvCheck(uv_ip6_addr(ip, 0, &address))
            self.ip = SocketAddress.name(of: address)
            self.isIPv6 = true
        } else {
            var address = sockaddr_in()
            try uvCheck(uv_ip4_addr(ip, 0, &address))
            self.ip = SocketAddress.name(of: address)
            self.isIPv6 = false
        }
        self.port = port
    }

    /// Parses "127.0.0.1:2525", "[::1]:2525", "0.0.0.0:25", "[::]:25". IPv6 needs brackets; the
    /// port is 1 to 5 decimal digits up to 65535. Throws EINVAL for anything else.
    public init(parsing text: String) throws {
        let host: Substring
        let portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { throw UVError.invalidArgument }
            host = text[text.index(after: text.startIndex)..<close]
            let rest = text[text.index(after: close)...]
            guard rest.hasPrefix(":"), host.contains(":") else { throw UVError.invalidArgument }
            portText = rest.dropFirst()
        } else {
            guard let colon = text.firstIndex(of: ":") else { throw UVError.invalidArgument }
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
        }
        guard !host.isEmpty, (1...5).contains(portText.utf8.count),
              portText.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }),
              let port = UInt32(portText), port <= UInt32(UInt16.max)
        else { throw UVError.invalidArgument }
        try self.init(ip: String(host), port: UInt16(port))
    }

    /// "127.0.0.1:25" or "[::1]:25".
    public var description: String {
        isIPv6 ? "[\(ip)]:\(port)" : "\(ip):\(port)"
    }

    // MARK: Conversion to and from sockaddr

    /// Calls `body` with this address as a `sockaddr` (sockaddr_in or sockaddr_in6).
    func withSockAddr<R>(_ body: (UnsafePointer<sockaddr>) -> R) -> R {
        if isIPv6 {
            var address = sockaddr_in6()
            _ = uv_ip6_addr(ip, Int32(port), &address)
            return withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1, body) }
        } else {
            var address = sockaddr_in()
            _ = uv_ip4_addr(ip, Int32(port), &address)
            return withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1, body) }
        }
    }

    /// The address in a sockaddr_storage filled by getsockname/getpeername; nil for other families.
    init?(storage: UnsafePointer<sockaddr_storage>) {
        switch Int32(storage.pointee.ss_family) {
        case AF_INET:
            let address = UnsafeRawPointer(storage).load(as: sockaddr_in.self)
            ip = SocketAddress.name(of: address)
            port = UInt16(bigEndian: address.sin_port)
            isIPv6 = false
        case AF_INET6:
            let address = UnsafeRawPointer(storage).load(as: sockaddr_in6.self)
            ip = SocketAddress.name(of: address)
            port = UInt16(bigEndian: address.sin6_port)
            isIPv6 = true
        default:
            return nil
        }
    }

    /// Reads an address with getsockname/getpeername-style calls.
    static func read(_ call: (UnsafeMutablePointer<sockaddr>, UnsafeMutablePointer<Int32>) -> Int32) -> SocketAddress? {
        var storage = sockaddr_storage()
        var length = Int32(MemoryLayout<sockaddr_storage>.size)
        let result = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { call($0, &length) }
        }
        guard result == 0 else { return nil }
        return withUnsafePointer(to: &storage) { SocketAddress(storage: $0) }
    }

    private static func name(of address: sockaddr_in) -> String {
        var address = address
        var text = [CChar](repeating: 0, count: 16)
        _ = uv_ip4_name(&address, &text, text.count)
        return String(cString: text)
    }

    private static func name(of address: sockaddr_in6) -> String {
        var address = address
        var text = [CChar](repeating: 0, count: 64)
        _ = uv_ip6_name(&address, &text, text.count)
        return String(cString: text)
    }
}

// MARK: Addresses of this machine

/// Why an address to send from cannot be used: not an IP address, not one of this machine's
/// (EADDRNOTAVAIL), or not bindable for another reason.
public struct LocalAddressError: Error, CustomStringConvertible, Equatable, Sendable {
    public let ip: String
    public let error: UVError

    public var isNotLocal: Bool { error.code == UV_EADDRNOTAVAIL.rawValue }

    public var description: String {
        if isNotLocal { return "\(ip) is not an address of this machine" }
        if error == .invalidArgument { return "\(ip) is not an IP address" }
        return "cannot bind \(ip): \(error)"
    }
}

extension SocketAddress {
    /// Checks that `ip` is an address of this machine, so that connections can be sent from it (an
    /// egress source): binds a socket to it with port 0 and closes it. For start-up and config checks
    /// (a few blocking system calls), not for the loop's hot paths. Linux takes every 127/8 address
    /// as local; a host with `net.ipv4.ip_nonlocal_bind` set takes any address.
    public static func checkLocal(_ ip: String) throws {
        let address: SocketAddress
        do {
            address = try SocketAddress(ip: ip, port: 0)
        } catch {
            throw LocalAddressError(ip: ip, error: error as? UVError ?? .invalidArgument)
        }
        #if canImport(Glibc)
        let kind = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
        #else
        let kind = SOCK_STREAM
        #endif
        let fd = socket(address.isIPv6 ? AF_INET6 : AF_INET, kind, 0)
        guard fd >= 0 else { throw LocalAddressError(ip: address.ip, error: UVError(code: -errno)) }
        defer { _ = close(fd) }
        let result = address.withSockAddr { sockaddr in
            bind(fd, sockaddr, socklen_t(address.isIPv6 ? MemoryLayout<sockaddr_in6>.size : MemoryLayout<sockaddr_in>.size))
        }
        if result != 0 { throw LocalAddressError(ip: address.ip, error: UVError(code: -errno)) }
    }
}
