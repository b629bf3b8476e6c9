// The sending side: the scheduler hands out due jobs (one message's recipients at one domain), the
// router says where they go, and an OutboundConnection carries them, falling back through the MX
// hosts in order. Results come back here per recipient: delivered and bounced recipients are final,
// deferred ones are queued again on the retry schedule, and failures are reported to the sender in one
// bounce per message per round. Every change of state reaches the spool (on the thread pool) before
// the message leaves it; a crash may deliver a message twice, never lose it.

import Collections
import Logging
import MailQueue
import SMTPProtocol
import UVRuntime

#if canImport(Glibc)
import Glibc
#endif

/// A message with at least one job in flight, held in memory so that concurrent jobs for different
/// domains update one envelope, and the spool writes for it happen one at a time.
final class ActiveMessage {
    var envelope: Envelope
    var message: [UInt8]
    /// The receiving side saw no line that needs dot-stuffing: sent without checking again.
    var wireReady: Bool
    var jobsInFlight = 0
    /// Recipients that failed since the last bounce: one bounce covers them all.
    var failures: [FailedRecipient] = []
    /// Recipients still deferred past delay_warning_time: the sender hears once that mail is late.
    var delayed: [FailedRecipient] = []
    var writing = false
    var needsWrite = false
    /// What the postmaster asked for while a job was in flight: done when the attempt ends.
    var pendingAction: QueueAction?
    /// Deleted by the postmaster: removed without a bounce at the next write.
    var deleted = false
    /// Gone from the spool (counted once in the metrics).
    var removed = false
    /// Finished and waiting in the SpoolRemover's batch: no longer part of the queue for `tern queue`.
    var leaving = false
    /// Run when the next spool write of this message is done (the postmaster's answer waits for it).
    var afterWrite: [(Error?) -> Void] = []

    init(envelope: Envelope, message: [UInt8], wireReady: Bool = false) {
        self.envelope = envelope
        self.message = message
        self.wireReady = wireReady
    }
}

public final class DeliveryManager {
    let loop: EventLoop
    let spool: Spool
    /// [routes] is replaced on SIGHUP (`applyRoutes`); the rest of it stays as it started.
    var config: TernConfig
    /// Counts [routes] replacements: a connection opened under an older one takes no new job, so
    /// every message after a reload goes out under the route's new TLS policy and credentials.
    var routesGeneration = 0
    var log: Logger
    let router: Router
    let retry: RetryPolicy
    var scheduler: Scheduler
    let newQueueID: () -> QueueID
    var active: [QueueID: ActiveMessage] = [:]
    /// Messages whose envelope and data are being read from the spool, with the jobs waiting for them.
    var loading: [QueueID: [(ActiveMessage?) -> Void]] = [:]
    var connections: [ObjectIdentifier: OutboundConnection] = [:]
    /// Connections kept open for the next message to their destination (ConnectionCache.swift).
    var idleConnections = ConnectionCache()
    /// `pump` is running; a nested call (a connection closing meanwhile) makes it go round again.
    var pumping = false
    var pumpAgain = false
    /// Finished messages leave the spool through it, many per pool work item.
    let remover: SpoolRemover
    let timer: Timer
    var timerDue: Double?
    var stopped = false
    /// While the start-up scan runs, ids queued by new arrivals, so the scan does not queue them twice.
    var arrivedDuringScan: Set<QueueID>?
    /// Messages just received, with their bytes still in memory: the first delivery starts from here
    /// instead of reading the spool back. Bounded; the oldest are forgotten (and read from disk later).
    var justArrived: [QueueID: (envelope: Envelope, message: [UInt8], wireReady: Bool)] = [:]
    var justArrivedOrder: Deque<QueueID> = []
    var justArrivedBytes = 0
    static let justArrivedLimit = 32 * 1024 * 1024
    public private(set) var delivered = 0
    public private(set) var bounced = 0
    public private(set) var deferred = 0
    /// For STARTTLS to next hops: read at start-up and on SIGHUP, off the loop (DeliveryTLS.swift).
    var tlsClientContext: TLSContext?
    /// Counts CA store reads started, so an older read finishing late does not replace a newer one.
    var tlsClientContextGeneration = 0
    /// A read of the CA store is under way.
    var tlsClientContextLoading = false
    let metrics: RelayMetrics
    /// Messages on hold (`tern queue hold`), with their priority: in the spool, never scheduled.
    var held: [QueueID: Int] = [:]

    init(loop: EventLoop, spool: Spool, config: TernConfig, log: Logger, resolver: Resolver,
         ownAddresses: [String], metrics: RelayMetrics = RelayMetrics(), newQueueID: @escaping () -> QueueID) {
        self.loop = loop
        self.spool = spool
        self.config = config
        self.log = log
        self.newQueueID = newQueueID
        self.metrics = metrics
        router = Router(resolver: resolver, config: config, ownAddresses: ownAddresses)
        router.countLookups(in: metrics)
        retry = RetryPolicy(schedule: config.delivery.retrySchedule, maxLifetime: config.delivery.maxQueueLifetime)
        scheduler = Scheduler(maxConnections: config.delivery.maxConnections,
                              maxConnectionsPerDestination: config.delivery.maxConnectionsPerDestination)
        timer = Timer(loop: loop)
        remover = SpoolRemover(loop: loop, spool: spool)
    }

    static func wallClock() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }

    var now: Double { Self.wallClock() }

    // MARK: - Feeding the scheduler

    /// Start-up: every queued message resumes with its per-recipient state.
    func loadSpool(_ done: @escaping (Int) -> Void) {
        let spool = self.spool
        var envelopes: [Envelope] = []
        var problems: [String] = []
        arrivedDuringScan = []
        loop.queueWork({
            do {
                for id in try spool.list() {
                    do { envelopes.append(try spool.load(id)) } catch { problems.append("\(id): \(error)") }
                }
            } catch {
                problems.append("\(error)")
            }
        }, done: { [self] in
            for p in problems { log.error("spool: cannot load \(p)") }
            let fresh = arrivedDuringScan ?? []
            arrivedDuringScan = nil
            let resumed = envelopes.filter { !fresh.contains($0.id) }
            for e in resumed {
                if e.held { held[e.id] = e.priority } else { enqueue(e, due: e.nextAttempt) }
            }
            done(resumed.count)
            pump()
        })
    }

    /// A message is in the queue: one job per recipient domain, due at `due`. `message` is its bytes when
    /// the caller has them in memory (a message just received).
    func enqueue(_ envelope: Envelope, due: Double? = nil, message: [UInt8]? = nil, wireReady: Bool = false) {
        arrivedDuringScan?.insert(envelope.id)
        if let message, message.count <= Self.justArrivedLimit / 8 { remember(envelope, message, wireReady: wireReady) }
        var byDomain: [String: [Int]] = [:]
        for (i, r) in envelope.recipients.enumerated() where !r.state.isFinal {
            byDomain[Self.domain(of: r.address), default: []].append(i)
        }
        for (domain, indexes) in byDomain {
            scheduler.add(DeliveryJob(id: envelope.id, destination: domain, recipients: indexes,
                                      priority: envelope.priority, arrival: envelope.arrival,
                                      retry: envelope.attempts > 0),
                          due: due ?? envelope.nextAttempt)
        }
        pump()
    }

    static func domain(of address: String) -> String {
        guard let at = address.lastIndex(of: "@") else { return "" }
        return address[address.index(after: at)...].lowercased()
    }

    /// Starts what is due, and sets the timer for what is next.
    func pump() {
        guard !stopped, !waitingForClientTLSContext else { return }
        guard !pumping else {
            pumpAgain = true
            return
        }
        pumping = true
        defer { pumping = false }
        repeat {
            pumpAgain = false
            let t = now
            // Idle connections first: a job for their destination needs no new connection.
            if !idleConnections.isEmpty { feedIdleConnections(now: t) }
            for job in scheduler.dispatch(now: t) {
                let connection = OutboundConnection(manager: self, destination: job.destination)
                connections[ObjectIdentifier(connection)] = connection
                start(job, on: connection, routeFirst: true)
            }
            if !idleConnections.isEmpty { closeIdleConnectionsForWaitingJobs() }
        } while pumpAgain && !stopped
        armTimer()
    }

    func armTimer() {
        guard let due = scheduler.nextDueTime else {
            timer.stop()
            timerDue = nil
            return
        }
        if let current = timerDue, current <= due, timer.isActive { return }
        timerDue = due
        let delay = max(0, due - now)
        timer.start(afterMilliseconds: UInt64(delay * 1000) + 1) { [unowned self] in
            self.timerDue = nil
            self.pump()
        }
    }

    /// Loads the message of `job` (from memory if another job has it open) and hands it to the connection.
    func start(_ job: DeliveryJob, on connection: OutboundConnection, routeFirst: Bool) {
        withActiveMessage(job.id) { [self] message in
            // Gone (removed by hand, or unreadable), or the postmaster acted on it while it was being
            // read from the spool (deleted, held, an action waiting): nothing to send for this job.
            guard let message, !message.deleted, !message.removed, !message.envelope.held,
                  message.pendingAction == nil else {
                connection.finish()
                return
            }
            message.jobsInFlight += 1
            if routeFirst {
                router.route(domain: job.destination) { plan in
                    connection.run(job, message: message, plan: plan)
                }
            } else if connection.isFinished {
                // The next hop closed the connection while the message was read from the spool: its
                // slot is already given back, so the job waits for the next connection instead.
                message.jobsInFlight -= 1
                scheduler.add(job, due: now)
                pump()
            } else {
                connection.runOnOpenSession(job, message: message)
            }
        }
    }

    private func remember(_ envelope: Envelope, _ message: [UInt8], wireReady: Bool) {
        justArrived[envelope.id] = (envelope, message, wireReady)
        justArrivedOrder.append(envelope.id)
        justArrivedBytes += message.capacity  // the buffer, not the bytes: the session's is handed on uncopied
        while justArrivedBytes > Self.justArrivedLimit, let oldest = justArrivedOrder.popFirst() {
            if let gone = justArrived.removeValue(forKey: oldest) { justArrivedBytes -= gone.message.capacity }
        }
        // Ids taken out by a delivery stay in the order list until they reach its head; keep it bounded.
        if justArrivedOrder.count > 4 * max(justArrived.count, 1024) {
            justArrivedOrder = Deque(justArrivedOrder.filter { justArrived[$0] != nil })
        }
    }

    func withActiveMessage(_ id: QueueID, _ body: @escaping (ActiveMessage?) -> Void) {
        if let m = active[id] {
            body(m)
            return
        }
        if loading[id] == nil, let fresh = justArrived.removeValue(forKey: id) {
            justArrivedBytes -= fresh.message.capacity
            let m = ActiveMessage(envelope: fresh.envelope, message: fresh.message, wireReady: fresh.wireReady)
            active[id] = m
            body(m)
            return
        }
        if loading[id] != nil {
            loading[id]!.append(body)
            return
        }
        loading[id] = [body]
        let spool = self.spool
        var loaded: ActiveMessage?
        var failure: Error?
        loop.queueWork({
            do {
                let envelope = try spool.load(id)
                loaded = ActiveMessage(envelope: envelope, message: try spool.readMessage(id))
            } catch {
                failure = error
            }
        }, done: { [self] in
            if let failure { log.error("\(id): cannot read from the spool: \(failure)") }
            if let loaded { active[id] = loaded }
            let waiting = loading.removeValue(forKey: id) ?? []
            for body in waiting { body(loaded) }
        })
    }

    // MARK: - Results

    /// "QUEUEID: to=<…>, relay=mx[ip]:25, tls=…, delay=0.4, dsn=2.0.0, status=sent (250 …)", as Postfix
    /// writes it (tls= when the session used TLS; "expired, returned to sender" for an expired one);
    /// with log.format = "json" each of these is a member of its own.
    func logResult(_ id: QueueID, to: String, relay: String, tls: String?, delay: String, dsn: String,
                   status: String, reply: String) {
        var fields: Logger.Metadata = ["to": .string(to), "relay": .string(relay), "delay": .string(delay),
                                       "dsn": .string(dsn), "status": .string(status), "reply": .string(reply)]
        if let tls { fields["tls"] = .string(tls) }
        log.fields("delivery", qid: id.rawValue, fields) {
            Self.resultText(id, to: to, relay: relay, tls: tls, delay: delay, dsn: dsn, status: status, reply: reply)
        }
    }

    static func resultText(_ id: QueueID, to: String, relay: String, tls: String?, delay: String, dsn: String,
                           status: String, reply: String) -> String {
        let relayField = tls.map { "\(relay), tls=\($0)" } ?? relay
        let outcome = status == "expired" ? "expired, returned to sender" : status
        return "\(id): to=\(angleQuoted(to)), relay=\(relayField), delay=\(delay), dsn=\(dsn), status=\(outcome) (\(reply))"
    }

    /// A job ended: record each recipient's outcome, queue what was deferred, bounce what failed.
    func jobFinished(_ job: DeliveryJob, message: ActiveMessage, outcomes: [Int: RecipientResult], relay: String,
                     tls: String? = nil) {
        let t = now
        var envelope = message.envelope
        var deferredIndexes: [Int] = []
        var deferredStatus: [Int: String] = [:]
        var deliveredAny = false
        let delay = Self.seconds(t - envelope.arrival)
        for index in job.recipients {
            guard let outcome = outcomes[index] else { continue }
            let address = envelope.recipients[index].address
            let reply = outcome.reply
            switch outcome.kind {
            case .delivered:
                envelope.recipients[index].state = .delivered
                envelope.recipients[index].lastReply = reply
                delivered += 1
                deliveredAny = true
                metrics.recipientDelivered(delay: t - envelope.arrival)
                logResult(envelope.id, to: address, relay: relay, tls: tls, delay: delay,
                          dsn: outcome.status, status: "sent", reply: reply)
            case .deferred:
                envelope.recipients[index].state = .deferred
                envelope.recipients[index].lastReply = reply
                deferredIndexes.append(index)
                deferredStatus[index] = outcome.status
            case .bounced:
                bounce(&envelope, index, status: outcome.status, reply: reply, relay: relay, message: message)
                logResult(envelope.id, to: address, relay: relay, tls: tls, delay: delay, dsn: outcome.status,
                          status: "bounced", reply: reply)
            }
        }
        if deliveredAny { metrics.bytesDelivered(message.message.count) }
        if !deferredIndexes.isEmpty {
            metrics.messageDeferred()
            envelope.attempts += 1
            if let next = retry.nextAttempt(after: envelope.attempts, arrival: envelope.arrival, now: t,
                                            random: Double.random(in: 0..<1)) {
                envelope.nextAttempt = next
                for index in deferredIndexes {
                    let r = envelope.recipients[index]
                    deferred += 1
                    metrics.recipientDeferred()
                    logResult(envelope.id, to: r.address, relay: relay, tls: tls, delay: delay,
                              dsn: deferredStatus[index] ?? "4.0.0", status: "deferred", reply: r.lastReply ?? "")
                }
                // On hold, deleted or bounced meanwhile: the recipients wait in the envelope, not the queue.
                if message.pendingAction == nil {
                    scheduler.add(DeliveryJob(id: envelope.id, destination: job.destination, recipients: deferredIndexes,
                                              priority: envelope.priority, arrival: envelope.arrival, retry: true),
                                  due: next)
                }
                let warnAfter = config.delivery.delayWarningTime
                if warnAfter > 0, !envelope.delayWarned, !envelope.sender.isEmpty, t - envelope.arrival >= warnAfter {
                    envelope.delayWarned = true
                    for index in deferredIndexes {
                        let r = envelope.recipients[index]
                        message.delayed.append(FailedRecipient(address: r.address, status: deferredStatus[index] ?? "4.0.0",
                                                               diagnostic: "smtp; \(r.lastReply ?? "")", remoteMTA: relay == "none" ? nil : "dns; \(relay)"))
                    }
                }
            } else {
                // Too long in the queue: the deferred recipients bounce with their last error.
                for index in deferredIndexes {
                    let reply = envelope.recipients[index].lastReply ?? "delivery temporarily suspended"
                    bounce(&envelope, index, status: "4.4.7", reply: "message expired: \(reply)", relay: relay,
                           message: message)
                    logResult(envelope.id, to: envelope.recipients[index].address, relay: relay, tls: tls, delay: delay,
                              dsn: "4.4.7", status: "expired", reply: reply)
                }
            }
        }
        message.envelope = envelope
        message.jobsInFlight -= 1
        if message.jobsInFlight == 0, let action = message.pendingAction {
            message.pendingAction = nil
            // Delivered to everyone meanwhile: nothing left to hold, delete or bounce.
            if envelope.hasPendingRecipients { apply(action, to: message) }
        }
        persist(message)
        armTimer()
    }

    func bounce(_ envelope: inout Envelope, _ index: Int, status: String, reply: String, relay: String,
                message: ActiveMessage) {
        envelope.recipients[index].state = .bounced
        envelope.recipients[index].lastReply = reply
        bounced += 1
        metrics.recipientBounced()
        message.failures.append(FailedRecipient(address: envelope.recipients[index].address, status: status,
                                                diagnostic: "smtp; \(reply)", remoteMTA: relay == "none" ? nil : "dns; \(relay)"))
    }

    /// "1.25" for the log's delay= field (no Foundation formatter on this path).
    static func seconds(_ x: Double) -> String {
        let hundredths = Int((max(0, x) * 100).rounded())
        let frac = hundredths % 100
        return "\(hundredths / 100).\(frac < 10 ? "0" : "")\(frac)"
    }


    /// Writes the envelope's new state; when no job is in flight, sends the bounce for what failed and
    /// removes a finished message. One write per message at a time.
    func persist(_ message: ActiveMessage) {
        // Once its files are gone, a late write would bring back an .env without its .msg.
        guard !message.removed else {
            let waiting = message.afterWrite
            message.afterWrite = []
            for answer in waiting { answer(nil) }
            return
        }
        message.needsWrite = true
        guard !message.writing else { return }
        message.writing = true
        message.needsWrite = false
        let writeDone = message.afterWrite
        message.afterWrite = []
        let envelope = message.envelope
        let idle = message.jobsInFlight == 0
        let finished = idle && (message.deleted || !envelope.hasPendingRecipients)
        // Notices to the sender (a bounce, a delay warning), made once no job of the message is in flight.
        var notices: [(Envelope, [UInt8])] = []
        if idle {
            let headers = DSN.headerSection(of: message.message)
            let t = now
            func notice(_ make: (String) -> [UInt8]?) {
                let id = newQueueID()
                guard let bytes = make("\(id.rawValue)/\(config.hostname)") else { return }
                // To a UTF-8 sender: SMTPUTF8 and 8-bit (an RFC 6533 report), never downgraded (5.6.7).
                let utf8 = DSN.requiresSMTPUTF8(envelope)
                let e = Envelope(id: id, sender: "", recipients: [Recipient(address: envelope.sender)],
                                 priority: envelope.priority, arrival: t, nextAttempt: t,
                                 bodyType: utf8 ? "8BITMIME" : nil, smtputf8: utf8,
                                 client: MailQueue.ClientInfo(ip: "127.0.0.1", helo: config.hostname, protocolName: "local"))
                notices.append((e, bytes))
            }
            if !message.failures.isEmpty {
                let failed = message.failures
                notice { DSN.bounce(for: envelope, failed: failed, originalHeaders: headers,
                                    reportingMTA: config.hostname, now: Int(t), boundary: $0) }
            }
            if !message.delayed.isEmpty {
                let delayed = message.delayed
                notice { DSN.delayWarning(for: envelope, delayed: delayed, originalHeaders: headers,
                                          reportingMTA: config.hostname, now: Int(t), boundary: $0) }
            }
            message.failures = []
            message.delayed = []
        }
        // After the spool work, on the loop: answers, notices queued, the message forgotten once gone.
        func written(_ failure: Error?, committed: [Envelope]) {
            message.writing = false
            message.leaving = false
            if let failure { log.error("\(envelope.id): spool update failed: \(failure)") }
            for body in writeDone { body(failure) }
            for b in committed {
                log.info("\(envelope.id): sender notification (non-delivery or delay): \(b.id)")
                enqueue(b, due: b.arrival)
            }
            if finished && failure == nil && !message.removed {
                message.removed = true
                log.info("\(envelope.id): removed")
                let recipients = envelope.recipients
                metrics.messageLeftQueue(delivered: recipients.contains { $0.state == .delivered },
                                         bounced: recipients.contains { $0.state == .bounced },
                                         deleted: message.deleted, residence: now - envelope.arrival)
            }
            if message.needsWrite {
                persist(message)
            } else if message.jobsInFlight == 0 && loading[envelope.id] == nil {
                active.removeValue(forKey: envelope.id)  // nothing in flight: free the memory
            }
        }
        // Finished with nothing else to write: gone in the remover's next batch, with the others
        // that finish meanwhile, instead of a pool round trip of its own.
        if finished && notices.isEmpty && message.pendingAction == nil {
            message.leaving = true
            remover.remove(envelope.id) { failure in written(failure, committed: []) }
            return
        }
        let spool = self.spool
        var failure: Error?
        var committed: [Envelope] = []
        loop.queueWork({
            do {
                // Notices are durable before the original leaves the spool.
                for (e, bytes) in notices {
                    let file = try spool.create(e.id)
                    do {
                        try file.write(bytes)
                        committed.append(try spool.commit(file, envelope: e))
                    } catch {
                        spool.discard(file)
                        throw error
                    }
                }
                if finished { try spool.remove(envelope.id) } else { try spool.update(envelope) }
            } catch {
                failure = error
            }
        }, done: { written(failure, committed: committed) })
    }

    // MARK: - Connections

    /// The connection finished a job and its session can take another for the same destination.
    func connectionReady(_ connection: OutboundConnection) {
        guard !stopped else {
            connection.finish()
            return
        }
        // Opened under routes since replaced: QUIT, and let the next job open a connection under the new ones.
        guard connection.routesGeneration == routesGeneration else {
            connection.finish()
            return
        }
        guard let job = scheduler.next(for: connection.destination, now: now) else {
            parkOrFinish(connection)
            return
        }
        start(job, on: connection, routeFirst: false)
    }

    func connectionClosed(_ connection: OutboundConnection) {
        idleConnections.remove(connection)
        guard connections.removeValue(forKey: ObjectIdentifier(connection)) != nil else { return }
        scheduler.release(destination: connection.destination)
        pump()
    }

    func stop() {
        stopped = true
        timer.close()
        remover.close()
        for c in idleConnections.takeAll() { c.finish() }  // QUIT: nothing in flight on them
        for c in Array(connections.values) { c.abandon() }
    }
}
