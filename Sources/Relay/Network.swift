// Network.swift: IP addresses, CIDR blocks and listen addresses as the config names them.
//
// An IPv4-mapped IPv6 address (::ffff:a.b.c.d) is treated as the IPv4 address it carries, both in
// a CIDR and in an address being checked: a dual-stack socket reports IPv4 clients that way, and
// "127.0.0.0/8" in relay_networks must still match them. The other side of that choice: "::/0"
// matches IPv6 clients only; write "0.0.0.0/0" as well to mean every client.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// One IPv4 or IPv6 address. IPv4-mapped IPv6 addresses are stored as IPv4.
public struct IPAddress: Hashable, Sendable, CustomStringConvertible {
    public enum Family: Hashable, Sendable { case ipv4, ipv6 }

    public let family: Family
    /// 4 bytes for IPv4, 16 for IPv6, network byte order.
    public let bytes: [UInt8]

    /// Parses a numeric address: "192.0.2.1", "2001:db8::1", "::ffff:192.0.2.1" (becomes IPv4).
    /// A zone suffix ("fe80::1%eth0") is ignored. Host names are not addresses: nil.
    public init?(_ text: String) {
        var text = Substring(text)
        if let percent = text.firstIndex(of: "%"), text.contains(":") { text = text[..<percent] }
        guard let raw = IPAddress.parseRaw(String(text)) else { return nil }
        self = raw.unmapped
    }

    init(family: Family, bytes: [UInt8]) {
        self.family = family
        self.bytes = bytes
    }

    /// Exactly what inet_pton says, without unmapping.
    static func parseRaw(_ text: String) -> IPAddress? {
        guard !text.isEmpty, !text.utf8.contains(0) else { return nil }
        if !text.contains(":") {
            var v4 = in_addr()
            guard inet_pton(AF_INET, text, &v4) == 1 else { return nil }
            return IPAddress(family: .ipv4, bytes: withUnsafeBytes(of: &v4) { Array($0) })
        }
        var v6 = in6_addr()
        guard inet_pton(AF_INET6, text, &v6) == 1 else { return nil }
        return IPAddress(family: .ipv6, bytes: withUnsafeBytes(of: &v6) { Array($0) })
    }

    /// Whether this is ::ffff:a.b.c.d.
    var isIPv4Mapped: Bool {
        family == .ipv6 && bytes[0..<10].allSatisfy { $0 == 0 } && bytes[10] == 0xff && bytes[11] == 0xff
    }

    var unmapped: IPAddress {
        isIPv4Mapped ? IPAddress(family: .ipv4, bytes: Array(bytes[12..<16])) : self
    }

    public var description: String {
        switch family {
        case .ipv4:
            return bytes.map(String.init).joined(separator: ".")
        case .ipv6:
            var v6 = in6_addr()
            withUnsafeMutableBytes(of: &v6) { $0.copyBytes(from: bytes) }
            var buffer = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
            guard inet_ntop(AF_INET6, &v6, &buffer, socklen_t(buffer.count)) != nil else { return "?" }
            return String(cString: buffer)
        }
    }
}

/// A block of addresses, "192.0.2.0/24" or "2001:db8::/32"; a plain address is a /32 or /128.
/// Host bits after the prefix are ignored ("10.1.2.3/8" is 10.0.0.0/8), as Go's ParseCIDR does.
public struct CIDR: Hashable, Sendable, CustomStringConvertible {
    /// The network address, host bits zeroed.
    public let network: IPAddress
    public let prefixLength: Int

    public init(parsing text: String) throws {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count <= 2, let raw = IPAddress.parseRaw(String(parts[0])) else {
            throw ConfigError(message: "\"\(text)\" is not a CIDR block (like \"192.0.2.0/24\" or \"2001:db8::/32\")")
        }
        let maxPrefix = raw.family == .ipv4 ? 32 : 128
        var prefix = maxPrefix
        if parts.count == 2 {
            let digits = parts[1]
            guard !digits.isEmpty, digits.count <= 3, digits.allSatisfy({ $0.isASCII && $0.isNumber }),
                  let n = Int(digits), n <= maxPrefix
            else {
                throw ConfigError(message: "\"\(text)\": prefix length must be 0 to \(maxPrefix)")
            }
            prefix = n
        }
        // "::ffff:127.0.0.0/104" is the IPv4 block 127.0.0.0/8. A shorter prefix reaches outside
        // the mapped range and stays an IPv6 block.
        var address = raw
        if raw.isIPv4Mapped && prefix >= 96 {
            address = raw.unmapped
            prefix -= 96
        }
        self.prefixLength = prefix
        self.network = IPAddress(family: address.family, bytes: CIDR.mask(address.bytes, prefix))
    }

    /// Whether `ip` (a numeric address, IPv4-mapped counting as IPv4) is inside this block.
    /// Anything that is not an address is outside.
    public func contains(_ ip: String) -> Bool {
        guard let address = IPAddress(ip) else { return false }
        return contains(address)
    }

    public func contains(_ address: IPAddress) -> Bool {
        address.family == network.family && CIDR.mask(address.bytes, prefixLength) == network.bytes
    }

    public var description: String { "\(network)/\(prefixLength)" }

    static func mask(_ bytes: [UInt8], _ prefix: Int) -> [UInt8] {
        var out = bytes
        for i in out.indices {
            let bitsHere = min(max(prefix - i * 8, 0), 8)
            out[i] &= bitsHere == 0 ? 0 : UInt8(truncatingIfNeeded: 0xff << (8 - bitsHere))
        }
        return out
    }
}

/// A listen address, "ip:port" or "[ipv6]:port", numeric only: binding must not wait on DNS.
public struct ListenAddress: Hashable, Sendable, CustomStringConvertible {
    /// The address as written, without brackets ("0.0.0.0", "::").
    public let host: String
    public let family: IPAddress.Family
    public let port: UInt16

    public init(parsing text: String) throws {
        let bad = { (why: String) in
            ConfigError(message: "\"\(text)\" is not an \"ip:port\" or \"[ipv6]:port\" address: \(why)")
        }
        let host: Substring, portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { throw bad("missing \"]\"") }
            host = text[text.index(after: text.startIndex)..<close]
            let rest = text[text.index(after: close)...]
            guard rest.hasPrefix(":") else { throw bad("missing \":port\" after \"]\"") }
            portText = rest.dropFirst()
            guard let ip = IPAddress.parseRaw(String(host)), ip.family == .ipv6 else {
                throw bad("\"\(host)\" is not an IPv6 address")
            }
            self.family = .ipv6
        } else {
            guard let colon = text.lastIndex(of: ":") else { throw bad("missing \":port\"") }
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
            if host.contains(":") { throw bad("write an IPv6 address in brackets, like \"[::1]:25\"") }
            guard IPAddress.parseRaw(String(host)) != nil else {
                throw bad("\"\(host)\" is not an IPv4 address")
            }
            self.family = .ipv4
        }
        guard !portText.isEmpty, portText.count <= 5, portText.allSatisfy({ $0.isASCII && $0.isNumber }),
              let port = Int(portText), port <= 65535
        else { throw bad("port must be 0 to 65535") }
        self.host = String(host)
        self.port = UInt16(port)
    }

    public var description: String { family == .ipv6 ? "[\(host)]:\(port)" : "\(host):\(port)" }
}
