import Testing
@testable import UVRuntime
#if canImport(Glibc)
import Glibc
#endif

/// Connects to `address` and returns the connection once connected (or the error).
func connect(_ loop: EventLoop, to address: SocketAddress, timeoutMs: UInt64? = nil) -> Result<TCPConnection, UVError>? {
    var outcome: Result<TCPConnection, UVError>?
    TCPConnection.connect(loop: loop, to: address, timeoutMs: timeoutMs) { outcome = $0 }
    run(loop) { outcome != nil }
    return outcome
}

@Suite struct TCPTests {
    init() { ignoreSIGPIPE() }

    @Test(arguments: ["127.0.0.1", "::1"])
    func echoRoundTripsSmallAndLargeData(host: String) throws {
        let loop = try EventLoop()
        defer { loop.close() }
        let listener = try StreamListener(loop: loop, address: SocketAddress(ip: host, port: 0))
        #expect(listener.localAddress.port != 0)
        #expect(listener.localAddress.ip == host)

        // Echo server with back-pressure: stop reading while much is queued, resume when drained.
        var server: TCPConnection?
        var serverSawEOF = false
        var serverClosed = false
        var serverPaused = 0
        try listener.start { connection in
            server = connection
            connection.onRead = { [unowned connection] bytes in
                connection.write(bytes)
                if connection.pendingWriteBytes > 128 * 1024 {
                    serverPaused += 1
                    connection.stopReading()
                }
            }
            connection.onWritesDrained = { [unowned connection] in connection.startReading() }
            connection.onEOF = { serverSawEOF = true }
            connection.onClose = { serverClosed = true }
        }

        let client = try #require(try connect(loop, to: listener.localAddress)?.get())
        var received: [UInt8] = []
        var clientClosed = false
        client.onRead = { received.append(contentsOf: $0) }
        client.onClose = { clientClosed = true }
        client.setNoDelay(true)
        client.startReading()
        #expect(run(loop) { server != nil })
        #expect(client.peerAddress == listener.localAddress)
        #expect(server?.peerAddress == client.localAddress)
        #expect(server?.localAddress == listener.localAddress)

        // Small: before the server reads, so it queues in the kernel.
        client.write(Array("hello\r\n".utf8))
        server?.startReading()
        #expect(run(loop) { received.count >= 7 })
        #expect(received == Array("hello\r\n".utf8))

        // Large: with the server not reading, write 1 MiB chunks until the kernel's buffers are full
        // and libuv queues the rest (pendingWriteBytes > 0), then 2 MiB more.
        server?.stopReading()
        received.removeAll()
        var sent: [UInt8] = []
        var drained = 0
        client.onWritesDrained = { drained += 1 }
        var chunksAfterQueueing = 0
        while chunksAfterQueueing < 2 && sent.count < 64 << 20 {
            let chunk = pattern(count: 1 << 20, seed: UInt8(truncatingIfNeeded: sent.count >> 20))
            client.write(chunk)
            sent += chunk
            if client.pendingWriteBytes > 0 { chunksAfterQueueing += 1 }
        }
        #expect(client.pendingWriteBytes > 0)
        #expect(client.pendingWriteBytes <= sent.count)
        // The client does not read for a while, so the echo backs up and the server pauses too.
        client.stopReading()
        server?.startReading()
        run(loop, forMilliseconds: 100)
        #expect(serverPaused >= 1)
        client.startReading()
        #expect(run(loop, timeoutMs: 20_000) { received.count >= sent.count })
        #expect(received.count == sent.count)
        #expect(firstDifference(received, sent) == nil)
        #expect(client.pendingWriteBytes == 0)
        #expect(drained >= 1)

        // Client closes: the server sees EOF and closes itself.
        client.close()
        #expect(client.isClosed)
        client.write(Array("dropped".utf8))  // after close: ignored, no crash
        #expect(run(loop) { clientClosed && serverClosed })
        #expect(serverSawEOF)
        listener.close()
    }

    @Test func gatheringWriteKeepsOrder() throws {
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
        let parts = [Array("250-first\r\n".utf8), [], Array("250 second\r\n".utf8), pattern(count: 300_000)]
        let expected = parts.flatMap { $0 }
        parts[0].withUnsafeBytes { a in parts[1].withUnsafeBytes { b in parts[2].withUnsafeBytes { c in
            parts[3].withUnsafeBytes { d in client.write(gathering: [a, b, c, d]) } } } }
        client.write(Array("tail".utf8))  // must come after everything queued above
        client.closeAfterWrites()
        #expect(run(loop) { eof })
        #expect(firstDifference(received, expected + Array("tail".utf8)) == nil)
    }

    @Test(arguments: ["127.0.0.1", "::1"])
    func closeAfterWritesDeliversLastBytesBeforeEOF(host: String) throws {
        let loop = try EventLoop()
        defer { loop.close() }
        let listener = try StreamListener(loop: loop, address: SocketAddress(ip: host, port: 0))
        let farewell = pattern(count: 2 << 20, seed: 9) + Array("421 closing\r\n".utf8)
        var serverClosed = false
        var serverError: UVError?
        try listener.start { connection in
            connection.onClose = { [unowned connection] in
                serverClosed = true
                serverError = connection.lastError
            }
            connection.write(farewell)
            connection.closeAfterWrites()
            #expect(connection.isClosed)
        }
        let client = try #require(try connect(loop, to: listener.localAddress)?.get())
        // Data the server never reads: closing must not turn into a reset that loses our bytes.
        client.write(pattern(count: 100_000))
        var received: [UInt8] = []
        var receivedAtEOF = -1
        client.onRead = { received.append(contentsOf: $0) }
        client.onEOF = { receivedAtEOF = received.count }
        // Read slowly at first so the server really has writes queued when it asks to close.
        run(loop, forMilliseconds: 50)
        client.startReading()
        #expect(run(loop) { receivedAtEOF >= 0 && serverClosed })
        #expect(receivedAtEOF == farewell.count)
        #expect(firstDifference(received, farewell) == nil)
        #expect(client.lastError == nil)
        #expect(serverError == nil)
    }

    @Test func closeAfterWritesLingersAtMostTheGivenTime() throws {
        let loop = try EventLoop()
        defer { loop.close() }
        let listener = try StreamListener(loop: loop, address: SocketAddress(parsing: "127.0.0.1:0"))
        var closedAt: UInt64?
        var startedAt: UInt64 = 0
        try listener.start { connection in
            connection.onClose = { closedAt = loop.nowMilliseconds }
            connection.write(Array("421 bye\r\n".utf8))
            startedAt = loop.nowMilliseconds
            connection.closeAfterWrites(lingerMs: 150)
        }
        // The client never reads and never closes, so the server cannot see its EOF.
        let client = try #require(try connect(loop, to: listener.localAddress)?.get())
        #expect(run(loop) { closedAt != nil })
        let lingered = (closedAt ?? 0) - startedAt
        #expect(lingered >= 150)
        #expect(lingered < 1000)
        // The bytes and the FIN still arrive.
        var received: [UInt8] = []
        var eof = false
        client.onRead = { received.append(contentsOf: $0) }
        client.onEOF = { eof = true }
        client.startReading()
        #expect(run(loop) { eof })
        #expect(received == Array("421 bye\r\n".utf8))
    }

    @Test func connectToClosedPortFails() throws {
        let loop = try EventLoop()
        defer { loop.close() }
        // Find a free port, then close the listener so nothing listens there.
        let listener = try StreamListener(loop: loop, address: SocketAddress(parsing: "127.0.0.1:0"))
        let address = listener.localAddress
        listener.close()
        run(loop, forMilliseconds: 10)

        var outcome: Result<TCPConnection, UVError>?
        TCPConnection.connect(loop: loop, to: address) { outcome = $0 }
        #expect(outcome == nil)  // never synchronously
        #expect(run(loop) { outcome != nil })
        #expect(throws: UVError.connectionRefused) { try outcome?.get() }
        #expect(loop.openHandleCount == 0)  // the failed connection's handle was closed
    }

    @Test func connectTimesOutWhenTheBacklogIsFull() throws {
        let loop = try EventLoop()
        defer { loop.close() }
        // A listener that never accepts, with a tiny backlog: once its queue is full, Linux drops
        // further SYNs (retried after 1 s), so a connect with a shorter timeout times out.
        let listener = try StreamListener(loop: loop, address: SocketAddress(parsing: "127.0.0.1:0"), backlog: 1)
        var connected: [TCPConnection] = []
        var failure: UVError?
        var elapsed: UInt64 = 0
        for _ in 0..<8 where failure == nil {
            loop.updateTime()
            let started = loop.nowMilliseconds
            switch connect(loop, to: listener.localAddress, timeoutMs: 200) {
            case .success(let connection): connected.append(connection)
            case .failure(let error):
                failure = error
                elapsed = loop.nowMilliseconds - started
            case nil: break
            }
        }
        #expect(connected.count >= 1)
        #expect(failure == .timedOut)
        #expect(elapsed >= 200)
        #expect(elapsed < 900)
        #expect(loop.openHandleCount == 1 + connected.count)  // the timed-out handle and its timer are gone
        connected.forEach { $0.close() }
    }

    @Test func ipv4AndIPv6ListenersShareAPort() throws {
        let loop = try EventLoop()
        defer { loop.close() }
        let v4 = try StreamListener(loop: loop, address: SocketAddress(parsing: "0.0.0.0:0"))
        let port = v4.localAddress.port
        let v6 = try StreamListener(loop: loop, address: SocketAddress(ip: "::", port: port))
        #expect(v6.localAddress.port == port)
        #expect(v6.localAddress.isIPv6)
        // The same family twice is refused, from init.
        #expect(throws: UVError(code: -EADDRINUSE)) {
            try StreamListener(loop: loop, address: SocketAddress(ip: "0.0.0.0", port: port))
        }
        // Each family reaches its own listener.
        var accepted: [String] = []
        try v4.start { accepted.append("v4 \($0.peerAddress!.ip)"); $0.close() }
        try v6.start { accepted.append("v6 \($0.peerAddress!.ip)"); $0.close() }
        let a = try #require(try connect(loop, to: SocketAddress(ip: "127.0.0.1", port: port))?.get())
        let b = try #require(try connect(loop, to: SocketAddress(ip: "::1", port: port))?.get())
        #expect(run(loop) { accepted.count == 2 })
        #expect(Set(accepted) == ["v4 127.0.0.1", "v6 ::1"])
        a.close()
        b.close()
    }

    @Test func connectionLivesUntilClosedThenIsReleased() throws {
        let loop = try EventLoop()
        defer { loop.close() }
        let listener = try StreamListener(loop: loop, address: SocketAddress(parsing: "127.0.0.1:0"))
        weak var weakServer: TCPConnection?
        var serverClosed = false
        try listener.start { connection in
            // The caller keeps no reference: the connection keeps itself alive.
            weakServer = connection
            connection.onClose = { serverClosed = true }
            connection.startReading()
        }
        var client = try connect(loop, to: listener.localAddress)?.get()
        #expect(run(loop) { weakServer != nil })
        run(loop, forMilliseconds: 20)
        #expect(weakServer != nil)
        #expect(weakServer?.isClosed == false)

        weak let weakClient = client
        client?.close()
        client = nil
        #expect(weakClient != nil)  // alive until the close callback
        #expect(run(loop) { serverClosed && weakClient == nil })
        #expect(weakServer == nil)
    }

    @Test func loopCloseClosesRemainingHandles() throws {
        let loop = try EventLoop()
        let listener = try StreamListener(loop: loop, address: SocketAddress(parsing: "[::1]:0"))
        var serverClosed = false
        var accepted = false
        try listener.start { connection in
            accepted = true
            connection.onClose = { serverClosed = true }
        }
        var clientClosed = false
        let client = try #require(try connect(loop, to: listener.localAddress)?.get())
        client.onClose = { clientClosed = true }
        weak var weakTimer: UVRuntime.Timer?
        do {
            let timer = UVRuntime.Timer(loop: loop)
            timer.start(afterMilliseconds: 60_000) {}
            weakTimer = timer
        }
        #expect(run(loop) { accepted })
        #expect(loop.openHandleCount == 4)  // listener, two connections, timer
        #expect(weakTimer != nil)
        loop.close()
        #expect(clientClosed)
        #expect(serverClosed)
        #expect(weakTimer == nil)
    }
}
