import SMTPProtocol
import Testing
@testable import MailQueue

// NOTIFY (RFC 3461) decides which notices the delivery core asks for: a bounce only for FAILURE (or
// no NOTIFY), a delay warning only for DELAY (or no NOTIFY), a "relayed" notice for SUCCESS when the
// next hop did not offer DSN. ORCPT travels into the notices.

private let t0 = 1_800_000_000.0
private func qid(_ n: Int) -> QueueID { QueueID(microseconds: 1_800_000_000_000_000 + UInt64(n)) }

private func envelope(_ n: Int, _ recipients: [(String, DSNNotify?)], sender: String = "app@example.org") -> Envelope {
    Envelope(id: qid(n), sender: sender,
             recipients: recipients.map { Recipient(address: $0.0, notify: $0.1, orcpt: "rfc822;" + xtextEncode($0.0)) },
             arrival: t0, client: ClientInfo(ip: "127.0.0.1", helo: "client.example"))
}

private func core(warnAfter: Double = 0) -> DeliveryCore {
    DeliveryCore(settings: .init(retry: RetryPolicy(schedule: [60, 300], maxLifetime: 5 * 86400),
                                 delayWarningTime: warnAfter),
                 scheduler: Scheduler(maxConnections: 10, maxConnectionsPerDestination: 2), seed: 1)
}

private let ok = RecipientResult(Reply(250, "2.0.0", "ok"))
private let later = RecipientResult(Reply(451, "4.3.0", "try later"))
private let unknown = RecipientResult(Reply(550, "5.1.1", "no such user"))

/// Runs one attempt of every recipient of `e` (one destination) with `results` and returns the notices
/// of the write that follows.
private func notices(_ e: Envelope, _ results: [Int: RecipientResult], nextHopDSN: Bool = false,
                     warnAfter: Double = 0, at now: Double = t0 + 1) -> [Notice] {
    var c = core(warnAfter: warnAfter)
    c.queue(e)
    var out: [DeliveryAction] = []
    for started in c.dispatchConnections(now: now) {
        let a = c.begin(started.job)
        if a.contains(.load(started.job.id)) { out += c.loaded(started.job.id, e, now: now) }
        out += c.attemptFinished(started.job, AttemptResult(results: results, relay: "mx.x.example[127.0.0.9]:25",
                                                              nextHopDSN: nextHopDSN), now: now)
    }
    return out.compactMap { if case .write(let w) = $0 { return w.notices } else { return nil } }.flatMap { $0 }
}

@Suite struct DeliveryCoreDSNTests {
    @Test func failuresBounceOnlyWhenNotifyAsksForThem() {
        let e = envelope(1, [("a@x.example", nil), ("b@x.example", .never), ("c@x.example", [.failure]),
                             ("d@x.example", [.success, .delay])])
        let n = notices(e, [0: unknown, 1: unknown, 2: unknown, 3: unknown])
        guard case .bounce(let failed)? = n.first, n.count == 1 else { Issue.record("\(n)"); return }
        #expect(failed.map(\.address) == ["a@x.example", "c@x.example"])
        #expect(failed.map(\.originalRecipient) == ["rfc822;a@x.example", "rfc822;c@x.example"])
        // NOTIFY=NEVER for everyone: bounced, and no notice at all.
        #expect(notices(envelope(2, [("a@x.example", .never)]), [0: unknown]).isEmpty)
    }

    @Test func delayWarningsOnlyWhenNotifyAsksForThem() {
        let e = envelope(3, [("a@x.example", nil), ("b@x.example", [.failure]), ("c@x.example", [.delay])])
        let n = notices(e, [0: later, 1: later, 2: later], warnAfter: 10, at: t0 + 60)
        guard case .delayWarning(let late)? = n.first, n.count == 1 else { Issue.record("\(n)"); return }
        #expect(late.map(\.address) == ["a@x.example", "c@x.example"])
    }

    @Test func successIsRelayedOnlyWithoutDSNAtTheNextHop() {
        let e = envelope(4, [("a@x.example", [.success]), ("b@x.example", nil), ("c@x.example", [.failure])])
        let n = notices(e, [0: ok, 1: ok, 2: ok])
        #expect(n.count == 1)
        guard case .relayed(let done)? = n.first else { Issue.record("\(n)"); return }
        #expect(done == [FailedRecipient(address: "a@x.example", status: "2.0.0", diagnostic: "smtp; 250 2.0.0 ok",
                                         remoteMTA: "dns; mx.x.example[127.0.0.9]:25",
                                         originalRecipient: "rfc822;a@x.example")])
        // c@ failed and asked for FAILURE too: its bounce comes with the relayed notice.
        let mixed = notices(envelope(5, [("a@x.example", [.success]), ("c@x.example", [.success, .failure])]),
                            [0: ok, 1: unknown])
        #expect(mixed.count == 2)
        #expect(mixed.contains { if case .bounce(let f) = $0 { return f.map(\.address) == ["c@x.example"] } else { return false } })
        // The next hop offered DSN: it heard NOTIFY=SUCCESS and answers for it; we say nothing.
        #expect(notices(e, [0: ok, 1: ok, 2: ok], nextHopDSN: true).isEmpty)
        // Never a notice to the null sender.
        #expect(notices(envelope(6, [("a@x.example", [.success])], sender: ""), [0: ok]).isEmpty)
    }
}
