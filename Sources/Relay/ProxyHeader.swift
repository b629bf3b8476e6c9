// ProxyHeader.swift: HAProxy's PROXY protocol (versions 1 and 2, haproxy.org/download/2.6/doc/
// proxy-protocol.txt), which a load balancer in front of the SMTP listeners sends before the client's
// first byte, naming the client it relays ([server] proxy_protocol_from). That address then stands for
// the client everywhere: relay control, connection limits, the Received field, the logs.
//
//   v1  "PROXY TCP4 192.0.2.7 198.51.100.1 40312 25\r\n"  (TCP6 likewise; "PROXY UNKNOWN…\r\n")
//   v2  12-byte signature, version/command, family, length (big-endian), addresses, then TLVs
//
// A connection the proxy makes on its own (v2 LOCAL, a health check; v1 UNKNOWN; v2 AF_UNSPEC or
// AF_UNIX) names no client: the proxy's own address stands, as the specification says.
// Pure: bytes in, a verdict out. Nothing after the header is looked at.

public enum ProxyHeader {
    public struct Client: Equatable, Sendable {
        /// Unmapped, as the listener writes client addresses ("192.0.2.7", "2001:db8::7").
        public var ip: String
        public var port: Int
    }

    public enum Parse: Equatable, Sendable {
        /// Not all of the header has arrived yet.
        case incomplete
        /// The header took `length` bytes; `client` is nil when it names none.
        case header(client: Client?, length: Int)
        /// Not a PROXY header, or a malformed one: why, for the log.
        case invalid(String)
    }

    static let v1Prefix = Array("PROXY ".utf8)
    static let v2Signature: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]
    /// The longest v1 line, CRLF included (the specification's figure for two IPv6 addresses).
    static let v1MaxLength = 107
    /// The longest v2 header accepted: its 16 bytes, the addresses and TLVs. HAProxy's TLVs (ALPN,
    /// authority, unique id, SSL details) come to a few hundred bytes; the field allows 64 KiB.
    public static let v2MaxLength = 16 + 2048
    /// Bytes a reader must hold at most before it has a verdict.
    public static let maxLength = v2MaxLength

    /// Whether a connection's first bytes start like a PROXY header of either version (a client not
    /// in proxy_protocol_from that sends one is refused).
    public static func looksLikeHeader<C: Collection<UInt8>>(_ bytes: C) -> Bool {
        bytes.starts(with: v1Prefix) || (bytes.count >= 12 && bytes.starts(with: v2Signature))
    }

    public static func parse(_ bytes: [UInt8]) -> Parse {
        guard let first = bytes.first else { return .incomplete }
        return first == v2Signature[0] ? parseV2(bytes) : parseV1(bytes)
    }

    // MARK: Version 1

    private static func parseV1(_ bytes: [UInt8]) -> Parse {
        let prefix = min(bytes.count, v1Prefix.count)
        guard bytes[..<prefix].elementsEqual(v1Prefix[..<prefix]) else { return .invalid("not a PROXY header") }
        let window = bytes.prefix(v1MaxLength)
        guard let lf = window.firstIndex(of: 10) else {
            return bytes.count >= v1MaxLength ? .invalid("v1 header longer than \(v1MaxLength) bytes") : .incomplete
        }
        guard lf > 0, bytes[lf - 1] == 13 else { return .invalid("v1 header ends in a bare LF") }
        let length = lf + 1
        let line = bytes[v1Prefix.count..<(lf - 1)]
        guard line.allSatisfy({ $0 >= 0x20 && $0 < 0x7F }) else { return .invalid("v1 header has control or 8-bit bytes") }
        let fields = line.split(separator: 0x20, omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
        switch fields.first {
        case "UNKNOWN":
            return .header(client: nil, length: length)
        case "TCP4", "TCP6":
            guard fields.count == 5 else { return .invalid("v1 header needs 2 addresses and 2 ports") }
            let family: IPAddress.Family = fields[0] == "TCP4" ? .ipv4 : .ipv6
            guard let source = IPAddress.parseRaw(fields[1]), source.family == family,
                  let destination = IPAddress.parseRaw(fields[2]), destination.family == family
            else { return .invalid("v1 header has an address that is not \(fields[0] == "TCP4" ? "IPv4" : "IPv6")") }
            guard let port = v1Port(fields[3]), v1Port(fields[4]) != nil else {
                return .invalid("v1 header has a port that is not 0 to 65535")
            }
            return .header(client: Client(ip: source.unmapped.description, port: port), length: length)
        default:
            return .invalid("v1 header has an unknown protocol")
        }
    }

    private static func v1Port(_ text: String) -> Int? {
        guard (1...5).contains(text.utf8.count), text.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }),
              let n = Int(text), n <= 65535 else { return nil }
        return n
    }

    // MARK: Version 2

    private static func parseV2(_ bytes: [UInt8]) -> Parse {
        let prefix = min(bytes.count, v2Signature.count)
        guard bytes[..<prefix].elementsEqual(v2Signature[..<prefix]) else { return .invalid("not a PROXY header") }
        guard bytes.count >= 16 else { return .incomplete }
        let version = bytes[12] >> 4, command = bytes[12] & 0x0F
        guard version == 2 else { return .invalid("v2 header has version \(version)") }
        guard command <= 1 else { return .invalid("v2 header has an unknown command") }
        let length = 16 + (Int(bytes[14]) << 8 | Int(bytes[15]))
        guard length <= v2MaxLength else { return .invalid("v2 header longer than \(v2MaxLength) bytes") }
        guard bytes.count >= length else { return .incomplete }
        // LOCAL: the proxy's own connection; the address block is ignored.
        if command == 0 { return .header(client: nil, length: length) }
        let block = bytes[16..<length]
        func port(_ at: Int) -> Int { Int(bytes[at]) << 8 | Int(bytes[at + 1]) }
        switch bytes[13] {
        case 0x11:  // TCP over IPv4: source, destination, source port, destination port
            guard block.count >= 12 else { return .invalid("v2 header too short for IPv4 addresses") }
            let source = IPAddress(family: .ipv4, bytes: Array(bytes[16..<20]))
            return .header(client: Client(ip: source.description, port: port(24)), length: length)
        case 0x21:  // TCP over IPv6
            guard block.count >= 36 else { return .invalid("v2 header too short for IPv6 addresses") }
            let source = IPAddress(family: .ipv6, bytes: Array(bytes[16..<32])).unmapped
            return .header(client: Client(ip: source.description, port: port(48)), length: length)
        case 0x00, 0x31:  // AF_UNSPEC, or a Unix socket (a path, not a client): the proxy stands
            return .header(client: nil, length: length)
        default:
            return .invalid("v2 header for a transport other than TCP (family byte \(bytes[13]))")
        }
    }
}
