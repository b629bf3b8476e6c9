// The transport (TCPConnection with its optional TLS engine) over loopback: plain echo, TLS both ways,
// close_notify, a failure reported with its reason, writes that arrive whole and in order, and every
// raw byte of a dripped handshake seen by the reader.

import Testing
@testable import UVRuntime
#if canImport(Glibc)
import Glibc
#endif

/// A listener on 127.0.0.1 and one connection to it, both ends handed back once accepted.
private func pair(_ loop: EventLoop) throws -> (listener: StreamListener, client: TCPConnection, server: TCPConnection) {
    let listener = try StreamListener(loop: loop, address: SocketAddress(parsing: "127.0.0.1:0"))
    var server: TCPConnection?
    try listener.start { server = $0 }
    let client = try #require(try connect(loop, to: listener.localAddress)?.get())
    #expect(run(loop) { server != nil })
    return (listener, client, try #require(server))
}

/// Collects what a connection reads, and its end.
private final class Reader {
    var bytes: [UInt8] = []
    var reads = 0
    var emptyReads = 0
    var eof = false
    var closed = false
    var handshakes = 0
    var errors: [TransportError] = []

    init(_ connection: TCPConnection) {
        connection.onRead = { [unowned self] in
            reads += 1
            if $0.isEmpty { emptyReads += 1 }
            bytes.append(contentsOf: $0)
        }
        connection.onEOF = { [unowned self] in eof = true }
        connection.onClose = { [unowned self] in closed = true }
        connection.onHandshake = { [unowned self] in handshakes += 1 }
        connection.onError = { [unowned self] in errors.append($0) }
        connection.startReading()
    }
}

@Suite struct TransportTests {
    static let certs = try! TestCertificates()

    init() { ignoreSIGPIPE() }

    func serverEngine() throws -> TLSEngine {
        try TLSEngine(context: .server(certificatePath: Self.certs.cert, keyPath: Self.certs.key))
    }

    func clientEngine() throws -> TLSEngine {
        try TLSEngine(context: .client(caFile: Self.certs.caCert), serverName: "mx.test")
    }

    @Test func plainEchoAndCloseAfterWrites() throws {
        let loop = try EventLoop()
        defer { loop.close() }
        let (listener, client, server) = try pair(loop)
        defer { listener.close() }
        server.onRead = { [unowned server] in server.write($0) }
        server.startReading()
        let reader = Reader(client)
        client.write(Array("EHLO client.test\r\n".utf8))
        #expect(run(loop) { reader.bytes.count >= 18 })
        #expect(reader.bytes == Array("EHLO client.test\r\n".utf8))
        #expect(client.tls == nil && reader.emptyReads == 0)
        client.closeAfterWrites(lingerMs: 100)
        #expect(run(loop) { reader.closed })
        #expect(reader.errors.isEmpty)
    }

    @Test func tlsHandshakeBothWaysThenPlaintextBothWays() throws {
        let loop = try EventLoop()
        defer { loop.close() }
        let (listener, client, server) = try pair(loop)
        defer { listener.close() }
        let atServer = Reader(server)
        let atClient = Reader(client)
        // The server switches first (as after its 220 to STARTTLS), then the client sends its ClientHello.
        #expect(server.startTLS(try serverEngine()))
        #expect(client.startTLS(try clientEngine()))
        // Written before the handshake completed: held by the engine, sent after it.
        client.write(Array("EHLO client.test\r\n".utf8))
        #expect(run(loop) { atServer.bytes.count >= 18 })
        #expect(atServer.bytes == Array("EHLO client.test\r\n".utf8))
        #expect(atServer.handshakes == 1 && atClient.handshakes == 1)
        #expect(client.tls?.peerVerified == true)
        #expect(client.tls?.handshakeComplete == true && server.tls?.handshakeComplete == true)
        server.write(Array("250 mx.test\r\n".utf8))
        #expect(run(loop) { atClient.bytes.count >= 13 })
        #expect(atClient.bytes == Array("250 mx.test\r\n".utf8))
        #expect(atServer.errors.isEmpty && atClient.errors.isEmpty)
        client.close()
        server.close()
        run(loop) { atServer.closed && atClient.closed }
    }

    @Test func closeNotifyIsSeenByThePeerBeforeTheSocketCloses() throws {
        let loop = try EventLoop()
        defer { loop.close() }
        let (listener, client, server) = try pair(loop)
        defer { listener.close() }
        let atServer = Reader(server)
        let atClient = Reader(client)
        server.startTLS(try serverEngine())
        client.startTLS(try clientEngine())
        #expect(run(loop) { atServer.handshakes == 1 && atClient.handshakes == 1 })
        var closeNotifyAtEOF: Bool?
        server.onEOF = { [unowned server] in closeNotifyAtEOF = server.tls?.peerClosed }
        // The last command and close_notify, in one write.
        client.corked {
            client.write(Array("QUIT\r\n".utf8))
            client.closeAfterWrites(lingerMs: 1000)
        }
        #expect(run(loop) { atServer.closed && atClient.closed })
        #expect(atServer.bytes == Array("QUIT\r\n".utf8))
        #expect(closeNotifyAtEOF == true, "the server saw close_notify, not only the TCP end of file")
        #expect(atServer.errors.isEmpty && atClient.errors.isEmpty)
    }

    @Test func garbageInsteadOfATLSRecordIsReportedWithItsReason() throws {
        let loop = try EventLoop()
        defer { loop.close() }
        let (listener, client, server) = try pair(loop)
        defer { listener.close() }
        let atServer = Reader(server)
        let atClient = Reader(client)
        server.startTLS(try serverEngine())
        // A client that never switched: its command reaches a server that expects a ClientHello.
        client.write(Array("EHLO client.test\r\nMAIL FROM:<a@b.test>\r\n".utf8))
        #expect(run(loop) { atServer.closed })
        #expect(atServer.errors.count == 1)
        guard case .tls(let reason, let handshake)? = atServer.errors.first else {
            Issue.record("expected a TLS error, got \(atServer.errors)")
            return
        }
        #expect(handshake)
        #expect(!reason.message.isEmpty)
        #expect(atServer.bytes.isEmpty, "no plaintext came out of garbage")
        // The server's alert, then its close, reach the client: nothing silent on either side.
        #expect(run(loop) { atClient.closed })
    }

    @Test(arguments: [false, true])
    func gatheredAndCorkedWritesArriveWholeAndInOrder(tls: Bool) throws {
        let loop = try EventLoop()
        defer { loop.close() }
        let (listener, client, server) = try pair(loop)
        defer { listener.close() }
        let atServer = Reader(server)
        let atClient = Reader(client)
        if tls {
            server.startTLS(try serverEngine())
            client.startTLS(try clientEngine())
            #expect(run(loop) { atServer.handshakes == 1 && atClient.handshakes == 1 })
        }
        // Commands, a large message and its terminator as pieces (one gathered write), then more
        // writes inside and outside a cork, larger than the socket takes at once.
        var expected: [UInt8] = []
        let message = pattern(count: 3 << 20, seed: 3)
        let pieces = [Array("MAIL FROM:<a@b.test>\r\n".utf8), Array("DATA\r\n".utf8), message, Array("\r\n.\r\n".utf8)]
        client.write(pieces: pieces)
        expected += pieces.flatMap { $0 }
        client.corked {
            for k in 0..<200 {
                let line = Array("RCPT TO:<r\(k)@b.test>\r\n".utf8)
                client.write(line)
                expected += line
            }
        }
        let tail = pattern(count: 100_000, seed: 9)
        client.write(tail)
        expected += tail
        #expect(run(loop, timeoutMs: 20_000) { atServer.bytes.count >= expected.count })
        #expect(atServer.bytes.count == expected.count)
        #expect(firstDifference(atServer.bytes, expected) == nil)
        #expect(run(loop) { client.pendingWriteBytes == 0 })
        #expect(atServer.errors.isEmpty && atClient.errors.isEmpty)
        client.close()
        server.close()
        run(loop) { atServer.closed && atClient.closed }
    }

    @Test func aHandshakeDrippedAByteAtATimeIsSeenByteByByte() throws {
        let loop = try EventLoop()
        defer { loop.close() }
        let (listener, client, server) = try pair(loop)
        defer { listener.close() }
        let atServer = Reader(server)
        server.startTLS(try serverEngine())
        // The client's ClientHello from an engine in memory, written to the socket one byte per turn.
        let engine = try clientEngine()
        try engine.start()
        let hello = engine.takeOutput()
        #expect(hello.count > 100)
        for (k, byte) in hello.prefix(20).enumerated() {
            client.write([byte])
            #expect(run(loop) { atServer.reads == k + 1 })
        }
        #expect(atServer.emptyReads == 20, "every read is delivered, with no plaintext yet")
        #expect(atServer.handshakes == 0)
        #expect(server.tls?.handshakeComplete == false)
        #expect(atServer.errors.isEmpty)
        client.close()
        run(loop) { atServer.closed }
    }

    @Test func aSecondConnectionResumesTheFirstOnesSession() throws {
        let loop = try EventLoop()
        defer { loop.close() }
        // One server context: its ticket keys decrypt the ticket it issued on the first connection.
        let serverContext = try TLSContext.server(certificatePath: Self.certs.cert, keyPath: Self.certs.key)
        let clientContext = try TLSContext.client(caFile: Self.certs.caCert)
        var firstClientEngine: TLSEngine?
        for round in 0..<2 {
            let (listener, client, server) = try pair(loop)
            defer { listener.close() }
            let atServer = Reader(server)
            let atClient = Reader(client)
            server.startTLS(try TLSEngine(context: serverContext))
            let engine = try TLSEngine(context: clientContext, serverName: "mx.test")
            if let firstClientEngine { #expect(engine.resume(from: firstClientEngine)) }
            client.startTLS(engine)
            // Data from the server after the handshake: the client reads the session ticket with it.
            #expect(run(loop) { atServer.handshakes == 1 && atClient.handshakes == 1 })
            server.write(Array("220 ready\r\n".utf8))
            #expect(run(loop) { atClient.bytes.count >= 11 })
            #expect(server.tls?.sessionReused == (round == 1))
            #expect(client.tls?.peerVerified == true)
            firstClientEngine = engine
            client.closeAfterWrites(lingerMs: 100)
            #expect(run(loop) { atServer.closed && atClient.closed })
            #expect(atServer.errors.isEmpty && atClient.errors.isEmpty)
        }
    }
}
