// DeliveryClockTests.swift: the delivery driver (DeliveryManager) on virtual time. The loop's clock is a
// ManualClock's; the next hop is a loopback port nothing listens on, so every attempt is refused at
// once. What is checked is when things happen in queue time, which only `advance` moves.

import Foundation
import Logging
import MailQueue
import Testing
import UVRuntime
@testable import Relay

#if canImport(Glibc)
import Glibc
#endif

private let ignoringSIGPIPE: Void = { signal(SIGPIPE, SIG_IGN); return () }()

/// A spool in a temporary directory, a loop on virtual time and a DeliveryManager routing every
/// domain of the test to [127.0.0.1]:<closed port>.
private final class DeliveryHarness {
    let clock = ManualClock()
    let directory: String
    let spool: Spool
    let loop: EventLoop
    let resolver: Resolver
    let manager: DeliveryManager
    let lines = LockedLines()
    let ids = IDs()

    /// Queue ids for the test's messages and the notices the driver makes: distinct, in order.
    final class IDs {
        var last: UInt64 = 1_796_083_200_000_000
        func next() -> QueueID {
            last += 1
            return QueueID(microseconds: last)
        }
    }

    init(retrySchedule: [Double], maxQueueLifetime: Double) throws {
        _ = ignoringSIGPIPE
        var template = Array("\(NSTemporaryDirectory())/tern-delivery-clock-XXXXXX".utf8CString)
        let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        try #require(made != nil)
        directory = String(cString: template)
        spool = try Spool(path: directory)
        _ = try spool.recover()
        loop = try EventLoop(clock: clock.clock)
        let port = try Self.closedPort(loop)
        // Never asked: every route below names an address.
        resolver = try Resolver(loop: loop, servers: ["127.0.0.1:1"], timeoutMilliseconds: 500, tries: 1)
        var config = TernConfig(hostname: "relay.test")
        config.delivery.retrySchedule = retrySchedule
        config.delivery.maxQueueLifetime = maxQueueLifetime
        for domain in ["example.test", "sender.test"] {
            config.routes.routes[domain] = try NextHopSpec(parsing: "[127.0.0.1]:\(port)")
        }
        let lines = self.lines
        let clock = self.clock.clock
        let log = Logger(label: "t") { _ in TernLogHandler(format: .plain, level: .info, clock: clock, sink: { lines.append($0) }) }
        let ids = self.ids
        manager = DeliveryManager(loop: loop, spool: spool, config: config, log: log, resolver: resolver,
                                  ownAddresses: [], newQueueID: { ids.next() })
    }

    deinit {
        manager.stop()
        resolver.close()
        loop.close()
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// A loopback port that was free a moment ago: bound, read, closed.
    static func closedPort(_ loop: EventLoop) throws -> UInt16 {
        let listener = try StreamListener(loop: loop, address: try SocketAddress(parsing: "127.0.0.1:0"), backlog: 1)
        let port = listener.localAddress.port
        listener.close()
        loop.runOnce(nowait: true)
        return port
    }

    /// A message from alice@sender.test to bob@example.test, arriving now (virtual), in the spool and queued.
    func queueMessage() throws -> Envelope {
        let envelope = Envelope(id: ids.next(), sender: "alice@sender.test",
                                recipients: [Recipient(address: "bob@example.test")],
                                arrival: clock.now.secondsSinceEpoch,
                                client: ClientInfo(ip: "127.0.0.1", helo: "client.test", protocolName: "ESMTP"))
        let message = Array("From: alice@sender.test\r\nSubject: hi\r\n\r\nhello\r\n".utf8)
        let stored = try spool.commit(journaling: [(envelope, message)])[0]
        manager.enqueue(stored, message: message)
        return stored
    }

    func run(until done: () -> Bool) { loop.run(until: done) }

    /// Nothing in flight: no connection, and the core holds no message in memory (it forgets one
    /// once its attempt ended and its spool write is done).
    var settled: Bool {
        manager.takenJobs.isEmpty && manager.connections.isEmpty && manager.core.inMemory == 0
    }

    func deliveryLines(_ id: QueueID) -> [String] {
        lines.all.filter { $0.contains("\(id.rawValue): to=<bob@example.test>") }
    }
}

@Suite(.serialized) struct DeliveryClockTests {
    @Test func aRefusedAttemptIsDueAgainAfterTheFirstRetryIntervalOfVirtualTime() throws {
        let h = try DeliveryHarness(retrySchedule: [600, 3600], maxQueueLifetime: 86400)
        let start = h.clock.now.secondsSinceEpoch
        let e = try h.queueMessage()
        h.run { h.manager.deferred == 1 && h.settled }
        #expect(h.manager.deferred == 1)
        #expect(h.manager.delivered == 0 && h.manager.bounced == 0)
        // Virtual time stood still during the attempt: the next one is the first interval (600 s, with
        // the policy's ±10 % jitter) after the arrival, in the scheduler and in the spool alike.
        let due = try #require(h.manager.core.scheduler.nextDueTime)
        #expect(due >= start + 540 && due <= start + 660)
        let stored = try h.spool.load(e.id)
        #expect(abs(stored.nextAttempt - due) < 0.001)  // the spool keeps microseconds
        #expect(stored.attempts == 1)
        #expect(stored.recipients[0].state == .deferred)
        let logged = h.deliveryLines(e.id)
        #expect(logged.count == 1)
        // The log line's time and delay= are the virtual clock's: 2026-12-01T00:00:00Z, no time passed.
        #expect(logged.first?.hasPrefix("2026-12-01T00:00:00.000Z info ") == true, "\(logged)")
        #expect(logged.first?.contains("delay=0.00, dsn=4.4.1, status=deferred") == true, "\(logged)")

        // Not due yet: a pump before the interval starts nothing.
        h.clock.advance(by: due - start - 1)
        h.manager.pump()
        #expect(h.manager.connections.isEmpty)
        #expect(h.manager.core.scheduler.nextDueTime == due)
        // Past it: the second attempt, also refused, is due after the second interval (3600 s ± 10 %).
        h.clock.advance(by: 2)
        h.manager.pump()
        #expect(h.manager.connections.count == 1)
        h.run { h.manager.deferred == 2 && h.settled }
        let now = h.clock.now.secondsSinceEpoch
        let second = try #require(h.manager.core.scheduler.nextDueTime)
        #expect(second >= now + 3240 && second <= now + 3960)
        #expect(try h.spool.load(e.id).attempts == 2)
    }

    @Test func pastTheMaximumQueueLifetimeTheNextAttemptExpiresTheMessage() throws {
        let h = try DeliveryHarness(retrySchedule: [60], maxQueueLifetime: 100)
        let start = h.clock.now.secondsSinceEpoch
        let e = try h.queueMessage()
        h.run { h.manager.deferred == 1 && h.settled }
        #expect(h.manager.deferred == 1)
        // 200 virtual seconds later, past the lifetime: the refused attempt ends the message.
        h.clock.advance(by: 200)
        h.manager.pump()
        // The notice to the sender is queued and tried at once, and deferred (the same refusing port).
        h.run { h.manager.bounced == 1 && h.manager.deferred == 2 && h.settled }
        #expect(h.manager.bounced == 1)
        #expect(h.manager.deferred == 2)
        #expect(!h.manager.core.isKnown(e.id))
        let logged = h.deliveryLines(e.id)
        #expect(logged.count == 2)
        #expect(logged.last?.hasPrefix("2026-12-01T00:03:20.000Z info ") == true, "\(logged)")
        #expect(logged.last?.contains("delay=200.00, dsn=4.4.7, status=expired, returned to sender") == true, "\(logged)")
        // The original left the spool; the non-delivery notice to the sender took its place, made at
        // the virtual time of the expiry.
        let left = try h.spool.list()
        #expect(!left.contains(e.id))
        #expect(left.count == 1)
        let notice = try h.spool.load(try #require(left.first))
        #expect(notice.sender == "")
        #expect(notice.recipients.map(\.address) == ["alice@sender.test"])
        #expect(notice.arrival == start + 200)
        // Built on the pool from the original's headers (DeliveryManager.notices).
        let report = String(decoding: try h.spool.readMessage(notice.id), as: UTF8.self)
        #expect(report.contains("Reporting-MTA: dns; relay.test"))
        #expect(report.contains("Final-Recipient: rfc822; bob@example.test"))
        #expect(report.contains("Subject: hi"))
    }
}
