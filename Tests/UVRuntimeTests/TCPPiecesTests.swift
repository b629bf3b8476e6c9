import Testing
@testable import UVRuntime

/// `write(pieces:)`: several arrays in order, whether the socket takes them at once or the rest is
/// queued, and in order with writes before and after.
@Suite struct TCPPiecesTests {
    init() { ignoreSIGPIPE() }

    @Test func piecesArriveInOrder() throws {
        let loop = try EventLoop()
        defer { loop.close() }
        let listener = try StreamListener(loop: loop, address: SocketAddress(parsing: "127.0.0.1:0"))
        var received: [UInt8] = []
        var eof = false
        try listener.start { connection in
            connection.onRead = { received.append(contentsOf: $0) }
            connection.onEOF = { eof = true }
            connection.startReading()
        }
        let client = try #require(try connect(loop, to: listener.localAddress)?.get())
        var expected: [UInt8] = []
        func send(_ pieces: [[UInt8]]) {
            client.write(pieces: pieces)
            expected += pieces.joined()
        }
        send([])
        send([Array("one piece\r\n".utf8)])
        send([Array("MAIL FROM:<a@b>\r\nDATA\r\n".utf8), pattern(count: 1000, seed: 1), Array(".\r\n".utf8)])
        send([[], pattern(count: 10, seed: 2), []])
        // Far more than the socket takes at once: the rest is queued, and what follows waits behind it.
        send([Array("big\r\n".utf8), pattern(count: 8 << 20, seed: 3), Array(".\r\n".utf8)])
        #expect(client.pendingWriteBytes > 0)
        send([Array("RSET\r\n".utf8), pattern(count: 70_000, seed: 4), Array(".\r\n".utf8)])
        client.write(Array("QUIT\r\n".utf8))
        expected += Array("QUIT\r\n".utf8)
        client.closeAfterWrites()
        #expect(run(loop, timeoutMs: 20_000) { eof })
        #expect(received.count == expected.count)
        #expect(firstDifference(received, expected) == nil)
    }

    /// A larger send buffer lets a whole 100 KiB message go to the kernel in one write: nothing is
    /// left pending, where a new socket's default (16 KiB, growing) leaves most of it queued.
    @Test func aLargerSendBufferTakesAWholeMessage() throws {
        let loop = try EventLoop()
        defer { loop.close() }
        let listener = try StreamListener(loop: loop, address: SocketAddress(parsing: "127.0.0.1:0"))
        var received = 0
        try listener.start { connection in
            connection.onRead = { received += $0.count }
            connection.startReading()
        }
        let client = try #require(try connect(loop, to: listener.localAddress)?.get())
        let before = client.sendBufferSize
        #expect(before > 0)
        client.setSendBufferSize(256 * 1024)
        #expect(client.sendBufferSize >= 256 * 1024)  // Linux reports twice what was asked
        client.write(pieces: [pattern(count: 100 * 1024, seed: 5)])
        #expect(client.pendingWriteBytes == 0)
        #expect(run(loop, timeoutMs: 20_000) { received == 100 * 1024 })
    }
}
