import SMTPProtocol
import Testing
@testable import MailQueue

// The delivery core on virtual time: every scenario drives DeliveryCore by hand, as the driver would,
// and checks the actions it asks for. `Drive` carries out the easy ones (load from a fixed envelope,
// record the rest) so each test states only what it is about.

private let t0 = 1_800_000_000.0

private func qid(_ n: Int) -> QueueID { QueueID(microseconds: 1_800_000_000_000_000 + UInt64(n)) }

private func envelope(_ n: Int, _ recipients: [String], sender: String = "app@example.org",
                      arrival: Double = t0) -> Envelope {
    Envelope(id: qid(n), sender: sender, recipients: recipients.map { Recipient(address: $0) },
             arrival: arrival, client: ClientInfo(ip: "127.0.0.1", helo: "client.example"))
}

private func core(lifetime: Double = 5 * 86400, warnAfter: Double = 0, seed: UInt64 = 1) -> DeliveryCore {
    DeliveryCore(settings: .init(retry: RetryPolicy(schedule: [60, 300], maxLifetime: lifetime),
                                 delayWarningTime: warnAfter),
                 scheduler: Scheduler(maxConnections: 10, maxConnectionsPerDestination: 2), seed: seed)
}

private let ok = RecipientResult(Reply(250, "2.0.0", "ok"))
private let later = RecipientResult(Reply(451, "4.3.0", "try later"))
private let unknown = RecipientResult(Reply(550, "5.1.1", "no such user"))

private extension [DeliveryAction] {
    var writes: [SpoolWrite] { compactMap { if case .write(let w) = $0 { return w } else { return nil } } }
    var removes: [QueueID] { compactMap { if case .remove(let id) = $0 { return id } else { return nil } } }
    var attempts: [DeliveryJob] { compactMap { if case .attempt(let j, _) = $0 { return j } else { return nil } } }
    var skips: [DeliveryJob] { compactMap { if case .skip(let j) = $0 { return j } else { return nil } } }
    var events: [RecipientEvent] {
        compactMap { if case .log(.recipient(let e)) = $0 { return e } else { return nil } }
    }
    func answers(_ ticket: UInt64) -> [PostmasterAnswer] {
        compactMap { if case .answer(ticket, let a) = $0 { return a } else { return nil } }
    }
}

/// Dispatches the due jobs and begins them, answering `load` with `envelope`: the jobs attempted.
private func startDue(_ c: inout DeliveryCore, _ e: Envelope, now: Double) -> (jobs: [DeliveryJob], actions: [DeliveryAction]) {
    let started = startDueOnConnections(&c, e, now: now)
    return (started.jobs, started.actions)
}

/// The same, with the connections the jobs were started on (to `release` them).
private func startDueOnConnections(_ c: inout DeliveryCore, _ e: Envelope, now: Double)
    -> (jobs: [DeliveryJob], actions: [DeliveryAction], connections: [ConnectionLane]) {
    var out: [DeliveryAction] = []
    var connections: [ConnectionLane] = []
    for started in c.dispatchConnections(now: now) {
        let job = started.job
        connections.append(started.connection)
        let a = c.begin(job)
        out += a
        if a.contains(.load(job.id)) { out += c.loaded(job.id, e, now: now) }
    }
    return (out.attempts, out, connections)
}

@Suite struct DeliveryCoreTests {
    /// A recipient's destination: the part after the last "@", lowercased (ASCII byte by byte, else Unicode).
    @Test func destinationOfAnAddress() {
        #expect(DeliveryCore.domain(of: "User@Example.COM") == "example.com")
        #expect(DeliveryCore.domain(of: "user@example.com") == "example.com")
        #expect(DeliveryCore.domain(of: "\"a@b\"@Mail.Example.org") == "mail.example.org")
        #expect(DeliveryCore.domain(of: "jürgen@ÜBER.example") == "über.example")
        #expect(DeliveryCore.domain(of: "用户@例子.广告") == "例子.广告")
        #expect(DeliveryCore.domain(of: "user@[192.0.2.1]") == "[192.0.2.1]")
        #expect(DeliveryCore.domain(of: "postmaster") == "")
        #expect(DeliveryCore.domain(of: "user@") == "")
    }

    @Test func deliveredDeferredAndBouncedInOneMessage() {
        var c = core()
        let e = envelope(1, ["a@x.example", "b@x.example", "c@x.example"])
        c.queue(e)
        let (jobs, _) = startDue(&c, e, now: t0)
        #expect(jobs.count == 1 && jobs[0].recipients == [0, 1, 2])
        let out = c.attemptFinished(jobs[0], AttemptResult(results: [0: ok, 1: later, 2: unknown],
                                                           relay: "mx.x.example[127.0.0.9]:25", tls: "TLSv1.3"),
                                    now: t0 + 2)
        #expect(out.events.map(\.status) == [.sent, .bounced, .deferred])
        #expect(out.events.map(\.dsn) == ["2.0.0", "5.1.1", "4.3.0"])
        #expect(out.events.allSatisfy { $0.tls == "TLSv1.3" && $0.delay == 2 })
        #expect(out.contains(.log(.attemptEnded(qid(1), delivered: 1, deferred: 1, bounced: 1))))
        // One write: the bounce for c@ and the envelope with b@ deferred; nothing removed.
        let w = out.writes
        #expect(w.count == 1 && !w[0].remove)
        #expect(w[0].notices == [.bounce([FailedRecipient(address: "c@x.example", status: "5.1.1",
                                                          diagnostic: "smtp; 550 5.1.1 no such user",
                                                          remoteMTA: "dns; mx.x.example[127.0.0.9]:25")])])
        #expect(w[0].envelope.recipients.map(\.state) == [.delivered, .deferred, .bounced])
        #expect(w[0].envelope.attempts == 1)
        // b@ is queued again on the retry schedule: 60 s ± 10 %.
        let retry = c.scheduler.queuedJobs(of: qid(1))
        #expect(retry.map(\.recipients) == [[1]] && retry[0].retry)
        let due = c.scheduler.nextDueTime ?? 0
        #expect(due >= t0 + 2 + 54 && due <= t0 + 2 + 66)
        #expect((c.delivered, c.deferred, c.bounced) == (1, 1, 1))
        // The write done: the message is forgotten (nothing in flight), not removed.
        let done = c.written(qid(1), failure: nil, notices: [], now: t0 + 3)
        #expect(done == [.forget(qid(1))])
        #expect(c.inMemory == 0 && c.isKnown(qid(1)))
    }

    @Test func severalFailuresInOneRoundMakeOneBounce() {
        var c = core()
        let e = envelope(2, ["a@x.example", "b@y.example"])
        c.queue(e)
        let (jobs, _) = startDue(&c, e, now: t0)
        #expect(jobs.count == 2)
        let first = c.attemptFinished(jobs[0], AttemptResult(results: [jobs[0].recipients[0]: unknown]), now: t0 + 1)
        // Another attempt is in flight: the state is written, but no bounce yet.
        #expect(first.writes.count == 1 && first.writes[0].notices.isEmpty && !first.writes[0].remove)
        let second = c.attemptFinished(jobs[1], AttemptResult(results: [jobs[1].recipients[0]: unknown]), now: t0 + 2)
        #expect(second.writes.isEmpty)  // the first write is still under way
        let after = c.written(qid(2), failure: nil, notices: [], now: t0 + 3)
        let w = after.writes
        #expect(w.count == 1 && w[0].remove)
        guard case .bounce(let failed) = w[0].notices.first else {
            Issue.record("no bounce in \(after)")
            return
        }
        #expect(w[0].notices.count == 1 && Set(failed.map(\.address)) == ["a@x.example", "b@y.example"])
    }

    @Test func noBounceToTheNullSender() {
        var c = core()
        let e = envelope(3, ["a@x.example"], sender: "")
        c.queue(e)
        let (jobs, _) = startDue(&c, e, now: t0)
        let out = c.attemptFinished(jobs[0], AttemptResult(results: [0: unknown]), now: t0 + 1)
        #expect(out.writes.isEmpty && out.removes == [qid(3)])
    }

    @Test func delayWarningIsSentOnce() {
        var c = core(warnAfter: 3600)
        let e = envelope(4, ["a@x.example"])
        c.queue(e)
        // Before delay_warning_time: no warning.
        var (jobs, _, connections) = startDueOnConnections(&c, e, now: t0)
        var out = c.attemptFinished(jobs[0], AttemptResult(results: [0: later]), now: t0 + 10)
        c.release(connections[0])
        #expect(out.writes.count == 1 && out.writes[0].notices.isEmpty)
        var stored = out.writes[0].envelope
        _ = c.written(qid(4), failure: nil, notices: [], now: t0 + 10)
        // Past it: one warning, and the envelope remembers it.
        (jobs, _, connections) = startDueOnConnections(&c, stored, now: t0 + 4000)
        out = c.attemptFinished(jobs[0], AttemptResult(results: [0: later], relay: "mx[127.0.0.9]:25"), now: t0 + 4000)
        c.release(connections[0])
        #expect(out.writes.count == 1)
        guard case .delayWarning(let late)? = out.writes.first?.notices.first else {
            Issue.record("no delay warning in \(out)")
            return
        }
        #expect(late.map(\.status) == ["4.3.0"] && out.writes[0].envelope.delayWarned)
        stored = out.writes[0].envelope
        _ = c.written(qid(4), failure: nil, notices: [], now: t0 + 4000)
        // Later still: no second warning.
        (jobs, _) = startDue(&c, stored, now: t0 + 9000)
        out = c.attemptFinished(jobs[0], AttemptResult(results: [0: later]), now: t0 + 9000)
        #expect(out.writes.count == 1 && out.writes[0].notices.isEmpty)
    }

    @Test func expiryDuringAnAttemptBouncesWithTheLastReply() {
        var c = core(lifetime: 1000)
        let e = envelope(5, ["a@x.example", "b@x.example"])
        c.queue(e)
        let (jobs, _) = startDue(&c, e, now: t0)
        let out = c.attemptFinished(jobs[0], AttemptResult(results: [0: ok, 1: later]), now: t0 + 2000)
        #expect(out.events.map(\.status) == [.sent, .expired])
        #expect(out.events[1].dsn == "4.4.7" && out.events[1].reply == "451 4.3.0 try later")
        let w = out.writes
        #expect(w.count == 1 && w[0].remove)
        guard case .bounce(let failed)? = w.first?.notices.first else {
            Issue.record("no bounce in \(out)")
            return
        }
        #expect(failed.map(\.status) == ["4.4.7"] && failed[0].diagnostic == "smtp; message expired: 451 4.3.0 try later")
        #expect(!c.scheduler.isQueued(qid(5)))
        let done = c.written(qid(5), failure: nil, notices: [], now: t0 + 2001)
        #expect(done.contains(.log(.removed(qid(5), delivered: true, bounced: true, deleted: false, residence: 2001))))
        #expect(!c.isKnown(qid(5)) && c.inMemory == 0)
    }

    /// Failures carry their class (BounceClass.swift) in the event and in the bounce's recipients; an
    /// expired message's is MessageExpired; Tern's own failures read as "<class>00 <status> <text>".
    @Test func failuresAreClassified() throws {
        let classes = try BounceClassifier(rules: [
            BounceRule(bounceClass: "InvalidRecipient", replies: ["no such user"]),
            BounceRule(bounceClass: "NoAnswerFromHost", replies: ["^400 4\\.4\\.1 connect to"]),
            BounceRule(bounceClass: "TransientFailure", replies: ["^4"]),
        ])
        var c = DeliveryCore(settings: .init(retry: RetryPolicy(schedule: [60, 300], maxLifetime: 1000),
                                             delayWarningTime: 0, bounceClasses: classes),
                             scheduler: Scheduler(maxConnections: 10, maxConnectionsPerDestination: 2), seed: 1)
        let e = envelope(40, ["a@x.example", "b@x.example", "c@x.example"])
        c.queue(e)
        let (jobs, _) = startDue(&c, e, now: t0)
        let refused = RecipientResult.deferred("connect to mx.x.example[127.0.0.9]:25: connection refused")
        let out = c.attemptFinished(jobs[0], AttemptResult(results: [0: ok, 1: unknown, 2: refused]), now: t0 + 2)
        #expect(out.events.map(\.bounceClass) == [nil, "InvalidRecipient", "NoAnswerFromHost"])
        guard case .bounce(let failed)? = out.writes.first?.notices.first else {
            Issue.record("no bounce in \(out)")
            return
        }
        #expect(failed.map(\.bounceClass) == ["InvalidRecipient"])
        _ = c.written(qid(40), failure: nil, notices: [], now: t0 + 3)
        let again = startDue(&c, e, now: t0 + 2000)
        let expired = c.attemptFinished(again.jobs[0], AttemptResult(results: [2: later]), now: t0 + 2000)
        #expect(expired.events.map(\.status) == [.expired])
        #expect(expired.events.map(\.bounceClass) == [BounceClassName.messageExpired])
        // Without a classifier, nothing is classified.
        var plain = core()
        plain.queue(e)
        let (plainJobs, _) = startDue(&plain, e, now: t0)
        let none = plain.attemptFinished(plainJobs[0], AttemptResult(results: [0: ok, 1: unknown, 2: later]), now: t0 + 2)
        #expect(none.events.allSatisfy { $0.bounceClass == nil })
    }

    @Test func holdWhileInFlightWaitsForTheAttempt() {
        var c = core()
        let e = envelope(6, ["a@x.example"])
        c.queue(e)
        let (jobs, _) = startDue(&c, e, now: t0)
        let asked = c.postmaster(.hold, qid(6), ticket: 7, now: t0 + 1)
        #expect(asked.answers(7) == [.pending])
        #expect(asked.contains(.log(.postmaster(qid(6), .hold, pending: true))))
        let out = c.attemptFinished(jobs[0], AttemptResult(results: [0: later]), now: t0 + 2)
        // Deferred, but held: not queued again; the hold is written.
        #expect(!c.scheduler.isQueued(qid(6)) && c.isHeld(qid(6)))
        #expect(out.writes.count == 1 && out.writes[0].envelope.held && !out.writes[0].remove)
        #expect(out.contains(.log(.postmaster(qid(6), .hold, pending: false))))
        // The answer was given already ("pending"); release later brings it back, due now.
        _ = c.written(qid(6), failure: nil, notices: [], now: t0 + 3)
        let rel = c.postmaster(.release, qid(6), ticket: 8, now: t0 + 10)
        #expect(rel == [.load(qid(6))])
        var stored = out.writes[0].envelope
        let loaded = c.loaded(qid(6), stored, now: t0 + 10)
        #expect(loaded.writes.count == 1 && !loaded.writes[0].envelope.held)
        #expect(loaded.answers(8).isEmpty)  // answered when written
        stored = loaded.writes[0].envelope
        let done = c.written(qid(6), failure: nil, notices: [], now: t0 + 11)
        #expect(done.answers(8) == [.done(jobs: nil)])
        #expect(c.scheduler.queuedJobs(of: qid(6)).count == 1 && !c.isHeld(qid(6)))
    }

    @Test func deleteWhileInFlightRemovesWithoutBounce() {
        var c = core()
        let e = envelope(7, ["a@x.example", "b@x.example"])
        c.queue(e)
        let (jobs, _) = startDue(&c, e, now: t0)
        #expect(c.postmaster(.delete, qid(7), ticket: 1, now: t0).answers(1) == [.pending])
        let out = c.attemptFinished(jobs[0], AttemptResult(results: [0: unknown, 1: later]), now: t0 + 1)
        // Deleted: the failure makes no bounce, and the files go in the remover's batch.
        #expect(out.writes.isEmpty && out.removes == [qid(7)])
        #expect(c.isLeaving(qid(7)) && !c.isKnown(qid(7)))
        let done = c.written(qid(7), failure: nil, notices: [], now: t0 + 2)
        #expect(done.contains(.log(.removed(qid(7), delivered: false, bounced: true, deleted: true, residence: 2))))
        #expect(c.postmaster(.delete, qid(7), ticket: 2, now: t0 + 3).answers(2) == [.notQueued])
    }

    @Test func bounceByThePostmasterWhileInFlight() {
        var c = core()
        let e = envelope(8, ["a@x.example", "b@y.example"])
        c.queue(e)
        let (jobs, _) = startDue(&c, e, now: t0)
        let x = jobs.first { $0.destination == "x.example" }!
        let y = jobs.first { $0.destination == "y.example" }!
        #expect(c.postmaster(.bounce, qid(8), ticket: 3, now: t0).answers(3) == [.pending])
        _ = c.attemptFinished(x, AttemptResult(results: [0: ok]), now: t0 + 1)
        let out = c.attemptFinished(y, AttemptResult(results: [1: later]), now: t0 + 2)
        let last = out.events.last
        #expect(last?.to == "b@y.example" && last?.status == .bounced && last?.dsn == "5.0.0")
        // The first write is still under way; the bounce goes in the next, with the removal.
        let next = c.written(qid(8), failure: nil, notices: [], now: t0 + 3)
        #expect(next.writes.count == 1 && next.writes[0].remove)
        #expect(next.writes[0].notices == [.bounce([FailedRecipient(address: "b@y.example", status: "5.0.0",
                                                                    diagnostic: "smtp; returned to the sender by the postmaster")])])
    }

    @Test func flushWhileInFlightIsPendingAndFlushQueuedIsDone() {
        var c = core()
        let e = envelope(9, ["a@x.example"])
        c.queue(e, due: t0 + 500)
        #expect(c.dispatchConnections(now: t0).isEmpty)
        let flushed = c.postmaster(.flush, qid(9), ticket: 1, now: t0)
        #expect(flushed.answers(1) == [.done(jobs: 1)])
        let (jobs, _) = startDue(&c, e, now: t0)
        #expect(jobs.count == 1)
        #expect(c.postmaster(.flush, qid(9), ticket: 2, now: t0).answers(2) == [.pending])
        #expect(c.postmaster(.flush, qid(99), ticket: 3, now: t0).answers(3) == [.notQueued])
    }

    @Test func postmasterActionsWhileTheMessageLoads() {
        var c = core()
        let e = envelope(10, ["a@x.example"])
        c.queue(e)
        // The postmaster's hold reads the message; a connection takes its job meanwhile.
        #expect(c.postmaster(.hold, qid(10), ticket: 4, now: t0) == [.load(qid(10))])
        let job = c.dispatchConnections(now: t0)[0].job
        #expect(c.begin(job).isEmpty)
        // In the order they came: the hold is carried out (and written), then the job is skipped.
        let out = c.loaded(qid(10), e, now: t0)
        #expect(out.attempts.isEmpty && out.skips == [job])
        #expect(out.answers(4).isEmpty && out.writes.count == 1 && out.writes[0].envelope.held)
        #expect(c.written(qid(10), failure: nil, notices: [], now: t0).answers(4) == [.done(jobs: nil)])
        #expect(c.isHeld(qid(10)) && c.inMemory == 0)
    }

    @Test func unreadableMessageSkipsItsJobsAndAnswersNotQueued() {
        var c = core()
        let e = envelope(11, ["a@x.example"])
        c.queue(e)
        let job = c.dispatchConnections(now: t0)[0].job
        _ = c.begin(job)
        _ = c.postmaster(.delete, qid(11), ticket: 5, now: t0)
        let out = c.loaded(qid(11), nil, error: "no such file", now: t0)
        #expect(out.skips == [job] && out.answers(5) == [.notQueued])
        #expect(out.contains(.log(.unreadable(qid(11), "no such file"))) && c.inMemory == 0)
    }

    @Test func aFailedWriteIsLoggedAndAnswered() {
        var c = core()
        let e = envelope(12, ["a@x.example"])
        c.queue(e)
        _ = c.postmaster(.hold, qid(12), ticket: 6, now: t0)
        _ = c.loaded(qid(12), e, now: t0)
        let out = c.written(qid(12), failure: "disk full", notices: [], now: t0)
        #expect(out.answers(6) == [.writeFailed("disk full")])
        #expect(out.contains(.log(.spoolWriteFailed(qid(12), "disk full"))))
        // A failed removal keeps the files and reports no removal.
        var d = core()
        let f = envelope(13, ["a@x.example"])
        d.queue(f)
        let (jobs, _) = startDue(&d, f, now: t0)
        #expect(d.attemptFinished(jobs[0], AttemptResult(results: [0: ok]), now: t0).removes == [qid(13)])
        let failed = d.written(qid(13), failure: "EIO", notices: [], now: t0)
        #expect(!failed.contains { if case .log(.removed) = $0 { return true } else { return false } })
        #expect(failed.contains(.forget(qid(13))))
    }

    @Test func noticesWrittenAreQueued() {
        var c = core()
        let e = envelope(14, ["a@x.example"])
        c.queue(e)
        let (jobs, _) = startDue(&c, e, now: t0)
        _ = c.attemptFinished(jobs[0], AttemptResult(results: [0: unknown]), now: t0)
        let notice = envelope(15, ["app@example.org"], sender: "", arrival: t0 + 1)
        let out = c.written(qid(14), failure: nil, notices: [notice], now: t0 + 1)
        #expect(out.contains(.log(.noticeQueued(original: qid(14), notice: qid(15)))))
        #expect(c.scheduler.queuedJobs(of: qid(15)).map(\.destination) == ["example.org"])
    }

    @Test func aJobWhoseConnectionClosedBeforeItStartedIsDueAgain() {
        var c = core()
        let e = envelope(16, ["a@x.example"])
        c.queue(e)
        let (jobs, _) = startDue(&c, e, now: t0)
        let out = c.notStarted(jobs[0], now: t0 + 1)
        #expect(out == [.forget(qid(16))])  // nothing changed: no write
        #expect(c.scheduler.queuedJobs(of: qid(16)).count == 1)
    }
}

@Suite struct NextHopTests {
    private func outcome(mail: Reply = Reply(250, "2.1.0", "ok"), rcpt: [Reply?], data: Reply?) -> TransactionOutcome {
        TransactionOutcome(mailReply: mail, recipientReplies: rcpt, dataReply: data)
    }

    @Test func fiveHundredPerRecipientIsFinalAndStays() {
        let v = NextHop.judge(outcome(rcpt: [Reply(550, "5.1.1", "no such user"), Reply(250, "2.1.5", "ok")],
                                      data: Reply(250, "2.0.0", "queued")))
        #expect(v.results.map(\.kind) == [.bounced, .delivered] && !v.tryNextHost)
        #expect(v.results[0].reply == "550 5.1.1 no such user" && v.results[1].status == "2.0.0")
    }

    @Test func someRecipientsDeferredDoNotMoveOn() {
        let v = NextHop.judge(outcome(rcpt: [Reply(450, "4.2.0", "busy"), Reply(250, "2.1.5", "ok")],
                                      data: Reply(250, "2.0.0", "queued")))
        #expect(v.results.map(\.kind) == [.deferred, .delivered] && !v.tryNextHost)
    }

    @Test func fourHundredForTheWholeTransactionMovesOn() {
        // MAIL refused for now (a 421 arrives here too when the host drops the session at MAIL).
        var v = NextHop.judge(outcome(mail: Reply(421, "4.7.0", "too many connections"), rcpt: [nil, nil], data: nil))
        #expect(v.tryNextHost && v.results.allSatisfy { $0.kind == .deferred && $0.status == "4.7.0" })
        // Every recipient refused for now.
        v = NextHop.judge(outcome(rcpt: [Reply(451, nil, "later"), Reply(452, "4.2.2", "full")], data: nil))
        #expect(v.tryNextHost && v.results.map(\.status) == ["4.0.0", "4.2.2"])
        // The end of data refused for now.
        v = NextHop.judge(outcome(rcpt: [Reply(250, "2.1.5", "ok")], data: Reply(451, "4.3.0", "local error")))
        #expect(v.tryNextHost && v.results.map(\.kind) == [.deferred])
    }

    /// A host that lacks what the message needs (REQUIRETLS, BINARYMIME): the next host is tried, and
    /// only the last one's refusal is final (RFC 8689 §4.2.1).
    @Test func thisHostOnlyMovesOnUntilTheLastHost() {
        var refused = outcome(mail: Reply(550, "5.7.30", "REQUIRETLS support required: no"), rcpt: [nil, nil], data: nil)
        refused.refusedHere = true
        refused.thisHostOnly = true
        let middle = NextHop.judge(refused, moreHosts: true)
        #expect(middle.tryNextHost)
        #expect(middle.results.map(\.kind) == [.deferred, .deferred])
        #expect(middle.results.map(\.status) == ["4.7.30", "4.7.30"])
        #expect(middle.results[0].reply == "550 5.7.30 REQUIRETLS support required: no")
        let last = NextHop.judge(refused, moreHosts: false)
        #expect(!last.tryNextHost && last.results.map(\.kind) == [.bounced, .bounced])
        #expect(last.results[0].status == "5.7.30")
        // Tern's own words, not the destination's: nothing for [[backoff]] rules.
        #expect(NextHop.backoffReplies(refused).isEmpty)
        // Any other 5xx before MAIL (SMTPUTF8, SIZE) stays final at once.
        refused.thisHostOnly = false
        #expect(NextHop.judge(refused, moreHosts: true).results.map(\.kind) == [.bounced, .bounced])
    }

    /// Only a recipient's own RCPT refusal is its own: what may put it on the suppression list.
    @Test func onlyARecipientsOwnRefusalIsItsOwn() {
        let v = NextHop.judge(outcome(rcpt: [Reply(550, "5.1.1", "no such user"), Reply(250, "2.1.5", "ok")],
                                      data: Reply(554, "5.7.1", "Sender address rejected: Access denied")))
        #expect(v.results.map(\.kind) == [.bounced, .bounced] && v.results.map(\.recipientSpecific) == [true, false])
        let mail = NextHop.judge(outcome(mail: Reply(550, "5.1.8", "Sender address rejected: Domain not found"),
                                         rcpt: [nil, nil], data: nil))
        #expect(mail.results.map(\.recipientSpecific) == [false, false])
    }

    @Test func aBounceAmongDeferralsStillMovesTheRestOn() {
        // Every recipient not refused for good was refused for now: the others may take them.
        let v = NextHop.judge(outcome(rcpt: [Reply(550, "5.1.1", "no"), Reply(451, "4.3.0", "later")], data: nil))
        #expect(v.results.map(\.kind) == [.bounced, .deferred])
        #expect(!v.tryNextHost)  // as before: a 5xx is an answer, so the transaction was not refused whole
    }

    /// The session-level rule: what ClientSession gives up the whole session on, the connection hands to
    /// the next host, with NextHop.sessionFailed's result for the recipients meanwhile.
    private func sessionFailure(after replies: String, transaction: Bool = false) -> (Reply?, String)? {
        var client = ClientSession(hostname: "tern.test")
        var actions = client.receive(Array(replies.utf8))
        if transaction, actions.contains(where: { if case .ready = $0 { return true }; return false }) {
            actions += client.send(OutboundTransaction(sender: "a@x.example", recipients: ["b@y.example"], size: 3),
                                   message: Array("hi\r\n".utf8))
            actions += client.receive(Array("421 4.7.0 too many connections, closing\r\n".utf8))
        }
        for case .sessionFailed(let reply, let why) in actions { return (reply, why) }
        return nil
    }

    @Test func aFourHundredGreetingMovesOnWithItsStatus() throws {
        let (reply, why) = try #require(sessionFailure(after: "450 4.3.2 try later\r\n"))
        let r = NextHop.sessionFailed(reply, reason: why)
        #expect(r == RecipientResult(.deferred, status: "4.3.2", reply: "450 4.3.2 try later"))
    }

    @Test func aFourTwentyOneDuringTheTransactionMovesOn() throws {
        let (reply, why) = try #require(sessionFailure(after: "220 mx ready\r\n250 mx\r\n", transaction: true))
        #expect(reply?.code == 421)
        #expect(NextHop.sessionFailed(reply, reason: why) == RecipientResult(.deferred, status: "4.7.0",
                                                                             reply: "421 4.7.0 too many connections, closing"))
    }

    @Test func aFiveHundredGreetingIsOnlyThisHostsAndNeverFinal() throws {
        let (reply, why) = try #require(sessionFailure(after: "554 5.7.1 go away\r\n"))
        let r = NextHop.sessionFailed(reply, reason: why)
        #expect(r.kind == .deferred && r.status == "4.4.1" && r.reply == "554 5.7.1 go away")
        // No reply at all (a garbled one): deferred in Tern's own words.
        let garbled = try #require(sessionFailure(after: "hello there\r\n"))
        #expect(garbled.0 == nil)
        #expect(NextHop.sessionFailed(nil, reason: garbled.1).status == "4.4.1")
    }
}
