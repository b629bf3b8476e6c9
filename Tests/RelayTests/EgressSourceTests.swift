// EgressSourceTests.swift: delivery from an egress source (issue 16). The driver (DeliveryManager) on
// a loop with virtual time sends to a small SMTP peer on 127.0.0.1 that records each session's peer
// address and EHLO name; the source's address is bound and its name said, and the delivery line names
// it (source=NAME[ip]). Linux routes all of 127/8 to lo, so 127.0.0.21 is an address of every machine.

import Foundation
import Logging
import MailQueue
import Testing
import UVRuntime
@testable import Relay

#if canImport(Glibc)
import Glibc
#endif

/// A next hop that accepts everything and records who connected and what they said in EHLO/HELO.
private final class RecordingPeer {
    struct Session {
        var peer: String?
        var helo: String?
        var messages = 0
    }

    let listener: StreamListener
    private(set) var sessions: [Session] = []
    private var connections: [TCPConnection] = []

    init(loop: EventLoop) throws {
        listener = try StreamListener(loop: loop, address: try SocketAddress(ip: "127.0.0.1", port: 0))
        try listener.start { [unowned self] connection in self.accepted(connection) }
    }

    var port: UInt16 { listener.localAddress.port }

    private func accepted(_ connection: TCPConnection) {
        let index = sessions.count
        sessions.append(Session(peer: connection.peerAddress?.ip))
        connections.append(connection)
        var buffer: [UInt8] = []
        var inData = false
        connection.onRead = { [unowned self, unowned connection] bytes in
            buffer += bytes
            while let newline = buffer.firstIndex(of: 0x0A) {
                let line = String(decoding: buffer[..<newline], as: UTF8.self)
                    .trimmingCharacters(in: .whitespacesAndNewlines)
                buffer.removeSubrange(...newline)
                if inData {
                    if line == "." {
                        inData = false
                        sessions[index].messages += 1
                        connection.write(Array("250 2.0.0 Ok: queued\r\n".utf8))
                    }
                    continue
                }
                let verb = line.prefix(4).uppercased()
                switch verb {
                case "EHLO", "HELO":
                    sessions[index].helo = String(line.dropFirst(5))
                    connection.write(Array("250 hop.test\r\n".utf8))
                case "DATA":
                    inData = true
                    connection.write(Array("354 go ahead\r\n".utf8))
                case "QUIT":
                    connection.write(Array("221 2.0.0 Bye\r\n".utf8))
                    connection.closeAfterWrites()
                default:
                    connection.write(Array("250 2.0.0 Ok\r\n".utf8))
                }
            }
        }
        connection.write(Array("220 hop.test ESMTP\r\n".utf8))
        connection.startReading()
    }

    func close() {
        for c in connections { c.close() }
        listener.close()
    }
}

private let ignoringSIGPIPE: Void = { signal(SIGPIPE, SIG_IGN); return () }()

private final class EgressHarness {
    let clock = ManualClock()
    let directory: String
    let spool: Spool
    let loop: EventLoop
    let resolver: Resolver
    let manager: DeliveryManager
    let peer: RecordingPeer
    let lines = LockedLines()
    var last: UInt64 = 1_796_083_200_000_000

    /// `source`: the one source of the default egress pool (the core picks it for every connection).
    init(source: EgressSource? = nil) throws {
        _ = ignoringSIGPIPE
        var template = Array("\(NSTemporaryDirectory())/tern-egress-XXXXXX".utf8CString)
        let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        try #require(made != nil)
        directory = String(cString: template)
        spool = try Spool(path: directory)
        _ = try spool.recover()
        loop = try EventLoop(clock: clock.clock)
        peer = try RecordingPeer(loop: loop)
        // Never asked: the route names an address.
        resolver = try Resolver(loop: loop, servers: ["127.0.0.1:1"], timeoutMilliseconds: 500, tries: 1)
        var config = TernConfig(hostname: "relay.test")
        config.delivery.retrySchedule = [600]
        config.routes.routes["example.test"] = try NextHopSpec(parsing: "[127.0.0.1]:\(peer.port)")
        if let source {
            config.egress = EgressConfig(sources: [source], pools: [EgressPool(name: "p", sources: [(source.name, 1)])],
                                         select: EgressSelect(defaultPool: "p"))
        }
        let lines = self.lines
        let clock = self.clock.clock
        let log = Logger(label: "t") { _ in TernLogHandler(format: .plain, level: .info, clock: clock, sink: { lines.append($0) }) }
        var ids = last
        manager = DeliveryManager(loop: loop, spool: spool, config: config, log: log, resolver: resolver,
                                  ownAddresses: [], newQueueID: { ids += 1000; return QueueID(microseconds: ids) })
    }

    deinit {
        manager.stop()
        peer.close()
        resolver.close()
        loop.close()
        try? FileManager.default.removeItem(atPath: directory)
    }

    func queueMessage() throws -> Envelope {
        last += 1
        let envelope = Envelope(id: QueueID(microseconds: last), sender: "alice@sender.test",
                                recipients: [Recipient(address: "bob@example.test")],
                                arrival: clock.now.secondsSinceEpoch,
                                client: ClientInfo(ip: "127.0.0.1", helo: "client.test"))
        let message = Array("From: alice@sender.test\r\nSubject: hi\r\n\r\nhello\r\n".utf8)
        let stored = try spool.commit(journaling: [(envelope, message)])[0]
        manager.enqueue(stored, message: message)
        return stored
    }

    func run(until done: () -> Bool) { loop.run(until: done) }

    func deliveryLines(_ id: QueueID) -> [String] {
        lines.all.filter { $0.contains("\(id.rawValue): to=<bob@example.test>") }
    }
}

@Suite(.serialized) struct EgressSourceTests {
    @Test func aConnectionFromASourceBindsItsAddressAndSaysItsName() throws {
        let h = try EgressHarness(source: EgressSource(name: "a", address: "127.0.0.21", ehlo: "mta-a.example.net"))
        let e = try h.queueMessage()
        h.run { h.manager.delivered == 1 }
        #expect(h.manager.delivered == 1)
        #expect(h.peer.sessions.count == 1)
        #expect(h.peer.sessions.first?.peer == "127.0.0.21")
        #expect(h.peer.sessions.first?.helo == "mta-a.example.net")
        #expect(h.peer.sessions.first?.messages == 1)
        let logged = h.deliveryLines(e.id)
        #expect(logged.count == 1)
        #expect(logged.first?.contains("relay=127.0.0.1[127.0.0.1]:\(h.peer.port), source=a[127.0.0.21], delay=") == true,
                "\(logged)")
    }

    @Test func aSourceWithoutEHLONameSaysTheHostname() throws {
        let h = try EgressHarness(source: EgressSource(name: "b", address: "127.0.0.22"))
        let e = try h.queueMessage()
        h.run { h.manager.delivered == 1 }
        #expect(h.peer.sessions.first?.peer == "127.0.0.22")
        #expect(h.peer.sessions.first?.helo == "relay.test")
        #expect(h.deliveryLines(e.id).first?.contains(", source=b[127.0.0.22], ") == true)
    }

    @Test func withoutASourceNothingChanges() throws {
        let h = try EgressHarness()
        let e = try h.queueMessage()
        h.run { h.manager.delivered == 1 }
        #expect(h.peer.sessions.first?.peer == "127.0.0.1")
        #expect(h.peer.sessions.first?.helo == "relay.test")
        let logged = h.deliveryLines(e.id)
        #expect(logged.first?.contains("relay=127.0.0.1[127.0.0.1]:\(h.peer.port), delay=") == true, "\(logged)")
        #expect(logged.first?.contains("source=") == false)
    }

    @Test func aSourceNotOnThisMachineDefersWithItsNameInTheReason() throws {
        let h = try EgressHarness(source: EgressSource(name: "far", address: "192.0.2.10", ehlo: "far.example.net"))
        let e = try h.queueMessage()
        h.run { h.manager.deferred == 1 && h.manager.connections.isEmpty }
        #expect(h.manager.deferred == 1)
        #expect(h.peer.sessions.isEmpty)
        let logged = h.deliveryLines(e.id)
        #expect(logged.count == 1)
        #expect(logged.first?.contains(", source=far[192.0.2.10], delay=0.00, dsn=4.4.1, status=deferred") == true,
                "\(logged)")
        #expect(logged.first?.contains("from far[192.0.2.10]: EADDRNOTAVAIL") == true, "\(logged)")
    }

    @Test func aSourceOfTheOtherFamilyCannotReachTheHost() throws {
        let h = try EgressHarness(source: EgressSource(name: "six", address: "::1"))
        let e = try h.queueMessage()
        h.run { h.manager.deferred == 1 && h.manager.connections.isEmpty }
        #expect(h.peer.sessions.isEmpty)
        let logged = h.deliveryLines(e.id)
        #expect(logged.first?.contains("not reachable from egress source six[::1]: no IPv4 source address") == true,
                "\(logged)")
    }

    @Test func aSourceWhoseAddressIsNoAddressDefersTheAttempt() throws {
        let h = try EgressHarness(source: EgressSource(name: "typo", address: "192.0.2.300"))
        let e = try h.queueMessage()
        h.run { h.manager.deferred == 1 && h.manager.connections.isEmpty }
        #expect(h.peer.sessions.isEmpty)
        let logged = h.deliveryLines(e.id)
        #expect(logged.first?.contains("dsn=4.3.5, status=deferred (egress source typo: bad address 192.0.2.300") == true,
                "\(logged)")
    }

    @Test func theLineNamesTheSourceBeforeTLS() {
        let id = QueueID(rawValue: "060A2418202240")!
        #expect(DeliveryManager.resultText(id, to: "bob@example.net", relay: "mx.example.net[192.0.2.1]:25",
                                           tls: "TLSv1.3 TLS_AES_256_GCM_SHA384 verified", delay: "0.42", dsn: "2.0.0",
                                           status: "sent", reply: "250 2.0.0 Ok", source: "a[192.0.2.10]")
                == "060A2418202240: to=<bob@example.net>, relay=mx.example.net[192.0.2.1]:25, source=a[192.0.2.10], "
                + "tls=TLSv1.3 TLS_AES_256_GCM_SHA384 verified, delay=0.42, dsn=2.0.0, status=sent (250 2.0.0 Ok)")
    }
}
