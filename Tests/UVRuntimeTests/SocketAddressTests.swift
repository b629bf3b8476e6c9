import Testing
@testable import UVRuntime
#if canImport(Glibc)
import Glibc
#endif

@Suite struct SocketAddressTests {
    @Test(arguments: [
        ("127.0.0.1:2525", "127.0.0.1", UInt16(2525), false, "127.0.0.1:2525"),
        ("0.0.0.0:25", "0.0.0.0", 25, false, "0.0.0.0:25"),
        ("[::1]:2525", "::1", 2525, true, "[::1]:2525"),
        ("[::]:25", "::", 25, true, "[::]:25"),
        ("[0:0:0:0:0:0:0:1]:0", "::1", 0, true, "[::1]:0"),
        ("[2001:DB8::A]:65535", "2001:db8::a", 65535, true, "[2001:db8::a]:65535"),
        ("10.1.2.3:00025", "10.1.2.3", 25, false, "10.1.2.3:25"),
    ])
    func parsesValidAddresses(text: String, ip: String, port: UInt16, isIPv6: Bool, description: String) throws {
        let address = try SocketAddress(parsing: text)
        #expect(address.ip == ip)
        #expect(address.port == port)
        #expect(address.isIPv6 == isIPv6)
        #expect(address.description == description)
    }

    @Test(arguments: [
        "", "127.0.0.1", "127.0.0.1:", ":25", "127.0.0.1:65536", "127.0.0.1:99999", "127.0.0.1:-1",
        "127.0.0.1:+25", "127.0.0.1:25x", "127.0.0.1: 25", "256.0.0.1:25", "1.2.3:25", "1.2.3.4.5:25",
        "localhost:25", "::1:25", "[::1]", "[::1]25", "[::1]:", "[127.0.0.1]:25", "[::1:25",
        "[fe80::1%eth0]:25", "[:::1]:25", "[::1]:123456",
    ])
    func rejectsBadInput(text: String) {
        #expect(throws: UVError.invalidArgument) { try SocketAddress(parsing: text) }
    }

    @Test func initWithIPCanonicalisesAndHashes() throws {
        let a = try SocketAddress(ip: "0::1", port: 25)
        let b = try SocketAddress(ip: "::1", port: 25)
        let c = try SocketAddress(ip: "::1", port: 26)
        #expect(a == b)
        #expect(a != c)
        #expect(Set([a, b, c]).count == 2)
        #expect(throws: UVError.self) { try SocketAddress(ip: "example.org", port: 25) }
        #expect(throws: UVError.self) { try SocketAddress(ip: "[::1]", port: 25) }
    }

    @Test func errorDescriptionNamesTheError() {
        #expect(UVError.connectionRefused.description == "ECONNREFUSED: connection refused")
        // libuv codes are negated errno on Unix.
        #expect(UVError(code: -ETIMEDOUT) == UVError.timedOut)
    }
}
