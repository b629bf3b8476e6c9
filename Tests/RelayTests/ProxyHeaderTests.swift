import Testing
@testable import Relay

/// ProxyHeader: HAProxy's PROXY protocol v1 and v2, every way a header can be whole, cut short or wrong.
@Suite struct ProxyHeaderTests {
    static let signature: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]

    static func v2(command: UInt8 = 0x21, family: UInt8, block: [UInt8]) -> [UInt8] {
        signature + [command, family, UInt8(block.count >> 8), UInt8(block.count & 0xFF)] + block
    }

    @Test func v1TCP4() {
        let text = Array("PROXY TCP4 192.0.2.7 198.51.100.1 40312 25\r\n".utf8)
        #expect(ProxyHeader.parse(text + Array("EHLO x\r\n".utf8))
                == .header(client: .init(ip: "192.0.2.7", port: 40312), length: text.count))
    }

    @Test func v1TCP6AndMapped() {
        let text = Array("PROXY TCP6 2001:db8::7 2001:db8::1 65535 25\r\n".utf8)
        #expect(ProxyHeader.parse(text) == .header(client: .init(ip: "2001:db8::7", port: 65535), length: text.count))
        let mapped = Array("PROXY TCP6 ::ffff:192.0.2.9 ::1 1 25\r\n".utf8)
        #expect(ProxyHeader.parse(mapped) == .header(client: .init(ip: "192.0.2.9", port: 1), length: mapped.count))
    }

    @Test func v1Unknown() {
        let text = Array("PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n".utf8)
        #expect(ProxyHeader.parse(text) == .header(client: nil, length: text.count))
        #expect(ProxyHeader.parse(Array("PROXY UNKNOWN\r\n".utf8)) == .header(client: nil, length: 15))
    }

    @Test func v1Incomplete() {
        let text = Array("PROXY TCP4 192.0.2.7 198.51.100.1 40312 25\r\n".utf8)
        for n in 1..<text.count { #expect(ProxyHeader.parse(Array(text[..<n])) == .incomplete, "\(n) bytes") }
    }

    @Test func v1Invalid() {
        func invalid(_ s: String) -> Bool {
            if case .invalid = ProxyHeader.parse(Array(s.utf8)) { return true }
            return false
        }
        #expect(invalid("EHLO client.example\r\n"))
        #expect(invalid("PROXY TCP4 192.0.2.7 198.51.100.1 40312 25\n"))        // bare LF
        #expect(invalid("PROXY TCP4 2001:db8::7 198.51.100.1 40312 25\r\n"))    // IPv6 under TCP4
        #expect(invalid("PROXY TCP6 192.0.2.7 2001:db8::1 40312 25\r\n"))       // IPv4 under TCP6
        #expect(invalid("PROXY TCP4 192.0.2.7 198.51.100.1 65536 25\r\n"))      // port out of range
        #expect(invalid("PROXY TCP4 192.0.2.7 198.51.100.1 -1 25\r\n"))
        #expect(invalid("PROXY TCP4 192.0.2.7 198.51.100.1 40312\r\n"))         // a field missing
        #expect(invalid("PROXY TCP4 192.0.2.7  198.51.100.1 40312 25\r\n"))     // two spaces
        #expect(invalid("PROXY UDP4 192.0.2.7 198.51.100.1 40312 25\r\n"))
        #expect(invalid("PROXY TCP4 192.0.2.7\u{1B}[31m 198.51.100.1 1 25\r\n"))  // escape
        #expect(invalid("PROXY TCP4 256.0.2.7 198.51.100.1 40312 25\r\n"))
        // No CRLF within 107 bytes: refused, not read on forever.
        #expect(invalid("PROXY UNKNOWN " + String(repeating: "a", count: 100)))
        #expect(ProxyHeader.parse(Array(("PROXY UNKNOWN " + String(repeating: "a", count: 90)).utf8)) == .incomplete)
    }

    @Test func v2TCP4() {
        let block: [UInt8] = [192, 0, 2, 7, 198, 51, 100, 1, 0x9D, 0x78, 0, 25]
        let header = Self.v2(family: 0x11, block: block)
        #expect(ProxyHeader.parse(header + [0x16, 0x03]) == .header(client: .init(ip: "192.0.2.7", port: 40312), length: 28))
    }

    @Test func v2TCP6WithTLVs() {
        var block = [UInt8](repeating: 0, count: 36)
        block[0] = 0x20; block[1] = 0x01; block[2] = 0x0d; block[3] = 0xb8; block[15] = 7
        block[32] = 0x01; block[33] = 0xBB
        block += [0x05, 0x00, 0x03, 0x61, 0x62, 0x63]  // PP2_TYPE_UNIQUE_ID "abc": skipped
        let header = Self.v2(family: 0x21, block: block)
        #expect(ProxyHeader.parse(header) == .header(client: .init(ip: "2001:db8::7", port: 443), length: header.count))
    }

    @Test func v2LocalAndUnspecNameNoClient() {
        let local = Self.v2(command: 0x20, family: 0x11, block: [UInt8](repeating: 0, count: 12))
        #expect(ProxyHeader.parse(local) == .header(client: nil, length: 28))
        let unspec = Self.v2(family: 0x00, block: [])
        #expect(ProxyHeader.parse(unspec) == .header(client: nil, length: 16))
    }

    @Test func v2IncompleteThenWhole() {
        let header = Self.v2(family: 0x11, block: [192, 0, 2, 7, 198, 51, 100, 1, 0, 1, 0, 25])
        for n in 1..<header.count { #expect(ProxyHeader.parse(Array(header[..<n])) == .incomplete, "\(n) bytes") }
    }

    @Test func v2Invalid() {
        func invalid(_ b: [UInt8]) -> Bool {
            if case .invalid = ProxyHeader.parse(b) { return true }
            return false
        }
        #expect(invalid(Self.v2(command: 0x11, family: 0x11, block: [UInt8](repeating: 0, count: 12))))  // version 1
        #expect(invalid(Self.v2(command: 0x22, family: 0x11, block: [UInt8](repeating: 0, count: 12))))  // command 2
        #expect(invalid(Self.v2(family: 0x11, block: [1, 2, 3, 4])))                                      // too short
        #expect(invalid(Self.v2(family: 0x21, block: [UInt8](repeating: 0, count: 12))))
        #expect(invalid(Self.v2(family: 0x12, block: [UInt8](repeating: 0, count: 12))))                 // UDP
        #expect(invalid([0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0B]))       // bad signature
        // A length past the bound is refused at once, without waiting for the bytes.
        #expect(invalid(Self.signature + [0x21, 0x11, 0xFF, 0xFF]))
    }

    @Test func looksLikeHeader() {
        #expect(ProxyHeader.looksLikeHeader(Array("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n".utf8)))
        #expect(ProxyHeader.looksLikeHeader(Self.v2(family: 0x00, block: [])))
        #expect(!ProxyHeader.looksLikeHeader(Array("EHLO proxy.example\r\n".utf8)))
        #expect(!ProxyHeader.looksLikeHeader(Array("\r\n".utf8)))
    }
}
