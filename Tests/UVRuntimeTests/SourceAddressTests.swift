import CLibUV
import Testing
@testable import UVRuntime

/// Connections sent from a chosen local address (an egress source), and the start-up check that the
/// address is this machine's. Linux routes all of 127/8 to lo, so 127.0.0.21 is local everywhere;
/// 192.0.2.10 (TEST-NET-1, RFC 5737) is on no machine.
@Suite struct SourceAddressTests {
    init() { ignoreSIGPIPE() }

    /// Connects from `source` to `address`; the outcome once it is known.
    func connect(_ loop: EventLoop, to address: SocketAddress, from source: SocketAddress)
        -> Result<TCPConnection, UVError>? {
        var outcome: Result<TCPConnection, UVError>?
        TCPConnection.connect(loop: loop, to: address, bindTo: source) { outcome = $0 }
        #expect(outcome == nil)  // never synchronously, a failed bind included
        run(loop) { outcome != nil }
        return outcome
    }

    @Test(arguments: ["127.0.0.21", "127.0.0.22"])
    func thePeerSeesTheSourceAddress(source: String) throws {
        let loop = try EventLoop()
        defer { loop.close() }
        let listener = try StreamListener(loop: loop, address: SocketAddress(ip: "127.0.0.1", port: 0))
        var peer: SocketAddress?
        try listener.start { connection in
            peer = connection.peerAddress
            connection.close()
        }
        let client = try #require(try connect(loop, to: listener.localAddress,
                                              from: SocketAddress(ip: source, port: 0))?.get())
        #expect(client.localAddress?.ip == source)
        #expect(client.localAddress?.port != 0)
        #expect(run(loop) { peer != nil })
        #expect(peer?.ip == source)
        #expect(peer == client.localAddress)
        client.close()
        listener.close()
        run(loop) { loop.openHandleCount == 0 }
    }

    @Test func twoConnectionsFromOneSourceToOneListener() throws {
        // With IP_BIND_ADDRESS_NO_PORT the port is picked at connect: two sockets bound to one source
        // address still get two different ports.
        let loop = try EventLoop()
        defer { loop.close() }
        let listener = try StreamListener(loop: loop, address: SocketAddress(ip: "127.0.0.1", port: 0))
        var accepted: [TCPConnection] = []
        try listener.start { accepted.append($0) }
        let source = try SocketAddress(ip: "127.0.0.23", port: 0)
        let a = try #require(try connect(loop, to: listener.localAddress, from: source)?.get())
        let b = try #require(try connect(loop, to: listener.localAddress, from: source)?.get())
        #expect(run(loop) { accepted.count == 2 })
        #expect(a.localAddress?.ip == "127.0.0.23" && b.localAddress?.ip == "127.0.0.23")
        #expect(a.localAddress?.port != b.localAddress?.port)
        for c in accepted + [a, b] { c.close() }
        listener.close()
        run(loop) { loop.openHandleCount == 0 }
    }

    @Test func aSourceNotOnThisMachineFailsTheConnect() throws {
        let loop = try EventLoop()
        defer { loop.close() }
        let listener = try StreamListener(loop: loop, address: SocketAddress(ip: "127.0.0.1", port: 0))
        var accepted = 0
        try listener.start { connection in
            accepted += 1
            connection.close()
        }
        let outcome = connect(loop, to: listener.localAddress, from: try SocketAddress(ip: "192.0.2.10", port: 0))
        #expect(throws: UVError(code: UV_EADDRNOTAVAIL.rawValue)) { try outcome?.get() }
        listener.close()
        #expect(run(loop) { loop.openHandleCount == 0 })  // the failed connection's handle was closed
        #expect(accepted == 0)
    }

    @Test func aSourceOfTheOtherFamilyFailsTheConnect() throws {
        let loop = try EventLoop()
        defer { loop.close() }
        let listener = try StreamListener(loop: loop, address: SocketAddress(ip: "127.0.0.1", port: 0))
        try listener.start { $0.close() }
        let outcome = connect(loop, to: listener.localAddress, from: try SocketAddress(ip: "::1", port: 0))
        #expect(throws: UVError.self) { try outcome?.get() }
        listener.close()
        #expect(run(loop) { loop.openHandleCount == 0 })
    }

    @Test(arguments: ["127.0.0.1", "127.0.0.21", "::1"])
    func anAddressOfThisMachineIsLocal(ip: String) throws {
        try SocketAddress.checkLocal(ip)
    }

    @Test func anAddressOfNoMachineIsNotLocal() {
        #expect {
            try SocketAddress.checkLocal("192.0.2.10")
        } throws: { error in
            guard let e = error as? LocalAddressError else { return false }
            return e.isNotLocal && e.ip == "192.0.2.10"
                && e.description == "192.0.2.10 is not an address of this machine"
        }
        #expect(throws: LocalAddressError.self) { try SocketAddress.checkLocal("2001:db8::10") }
    }

    @Test func textThatIsNoAddressIsSaidToBeNone() {
        #expect {
            try SocketAddress.checkLocal("mta-a.example.net")
        } throws: { error in
            (error as? LocalAddressError)?.description == "mta-a.example.net is not an IP address"
        }
    }
}
