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

/// What a connection sends for one job: the envelope as the delivery core has it, and the bytes.
struct OutgoingMessage {
    let envelope: Envelope
    let message: [UInt8]
    /// The receiving side saw no line that needs dot-stuffing: sent without checking again.
    let wireReady: Bool
}

public final class DeliveryManager {
    let loop: EventLoop
    let spool: Spool
    /// [routes] is replaced on SIGHUP (`applyRoutes`); the rest of it stays as it started.
    var config: TernConfig
    /// Counts [routes] and shaping policy replacements: a connection opened under an older one takes
    /// no new job, so every message after a reload goes out under the route's new TLS policy and
    /// credentials and the new shaping rules.
    var routesGeneration = 0
    var log: Logger
    let router: Router
    /// Every decision about a queued message: this class only carries its actions out.
    var core: DeliveryCore
    let newQueueID: () -> QueueID
    /// The bytes of the messages the core holds in memory (loaded or live), freed at its `forget`.
    var bytes: [QueueID: (message: [UInt8], wireReady: Bool)] = [:]
    var connections: [ObjectIdentifier: OutboundConnection] = [:]
    /// The connection that took each job the core has not attempted or skipped yet, and whether the
    /// connection is new (the route is looked up first) or an open session taking another job.
    var takenJobs: [JobKey: (connection: OutboundConnection, routeFirst: Bool)] = [:]
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
    /// The postmaster's requests waiting for their answer, by the ticket given to the core.
    var requests: [UInt64: (PostmasterAnswer) -> Void] = [:]
    var nextTicket: UInt64 = 1
    /// [egress.sources] by name: the core names the source of each new connection (DeliveryShaping.swift).
    var egressSources: [String: EgressSource] = [:]
    /// Shaping's state to save in the spool (DeliveryShaping.swift).
    var shapingState = ShapingStateFile()
    public var delivered: Int { core.delivered }
    public var bounced: Int { core.bounced }
    public var deferred: Int { core.deferred }
    /// For STARTTLS to next hops: read at start-up and on SIGHUP, off the loop (DeliveryTLS.swift).
    var tlsClientContext: TLSContext?
    /// Counts CA store reads started, so an older read finishing late does not replace a newer one.
    var tlsClientContextGeneration = 0
    /// A read of the CA store is under way.
    var tlsClientContextLoading = false
    let metrics: RelayMetrics
    /// The relay's suppression list: a hard bounce of a class in [suppression] auto_classes adds its
    /// recipient (SuppressionStore.swift).
    var suppression: SuppressionStore?
    /// The cluster this node shares its shaping decisions with (issue 20).
    var cluster: Cluster?
    /// [events] file (EventLog.swift); nil when off.
    var events: EventBus?

    struct JobKey: Hashable {
        let id: QueueID
        let destination: String
        init(_ job: DeliveryJob) {
            id = job.id
            destination = job.destination
        }
    }

    init(loop: EventLoop, spool: Spool, config: TernConfig, log: Logger, resolver: Resolver,
         ownAddresses: [String], metrics: RelayMetrics = RelayMetrics(), newQueueID: @escaping () -> QueueID) {
        self.loop = loop
        self.spool = spool
        self.config = config
        self.log = log
        self.newQueueID = newQueueID
        self.metrics = metrics
        router = Router(resolver: resolver, config: config, ownAddresses: ownAddresses,
                        now: { [clock = loop.clock] in clock.monotonicSeconds() })
        router.countLookups(in: metrics)
        let retry = RetryPolicy(schedule: config.delivery.retrySchedule, maxLifetime: config.delivery.maxQueueLifetime)
        core = DeliveryCore(settings: .init(retry: retry, delayWarningTime: config.delivery.delayWarningTime,
                                            bounceClasses: config.bounceClassifier()),
                            scheduler: Scheduler(maxConnections: config.delivery.maxConnections,
                                                 maxConnectionsPerDestination: config.delivery.maxConnectionsPerDestination),
                            shaping: config.shaping, seed: UInt64.random(in: 0...UInt64.max))
        core.routePools = config.routes.pools
        egressSources = Self.sourcesByName(config.egress.sources)
        timer = Timer(loop: loop)
        remover = SpoolRemover(loop: loop, spool: spool)
    }

    /// Queue times are wall-clock seconds (they are stored in envelopes and survive a restart), read
    /// from the loop's clock: virtual time in tests.
    var now: Double { loop.clock.wallSeconds() }

    // MARK: - Feeding the queue

    /// Start-up: every queued message resumes with its per-recipient state.
    func loadSpool(_ done: @escaping (Int) -> Void) {
        let spool = self.spool
        var envelopes: [Envelope] = []
        var problems: [String] = []
        arrivedDuringScan = []
        let statePath = ShapingStateFile.path(spool: spool.path)
        var restored: Result<ShapingSnapshot?, Error> = .success(nil)
        loop.queueWork({
            restored = Result { try StateFile.read(ShapingSnapshot.self, at: statePath) }
            do {
                for id in try spool.list() {
                    do { envelopes.append(try spool.load(id)) } catch { problems.append("\(id): \(error)") }
                }
            } catch {
                problems.append("\(error)")
            }
        }, done: { [self] in
            for p in problems { log.error("spool: cannot load \(p)") }
            restoreShaping(restored, path: statePath)
            let fresh = arrivedDuringScan ?? []
            arrivedDuringScan = nil
            let resumed = envelopes.filter { !fresh.contains($0.id) }
            for e in resumed { core.queue(e) }
            done(resumed.count)
            pump()
        })
    }

    /// A message is in the queue: one job per recipient domain, due at `due`. `message` is its bytes when
    /// the caller has them in memory (a message just received).
    func enqueue(_ envelope: Envelope, due: Double? = nil, message: [UInt8]? = nil, wireReady: Bool = false) {
        arrivedDuringScan?.insert(envelope.id)
        if let message, message.count <= Self.justArrivedLimit / 8 { remember(envelope, message, wireReady: wireReady) }
        core.queue(envelope, due: due)
        pump()
    }

    static func domain(of address: String) -> String { DeliveryCore.domain(of: address) }

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
            for opened in core.dispatchConnections(now: t) {
                let lane = opened.connection
                let connection = OutboundConnection(manager: self, lane: lane, limits: opened.limits,
                                                    source: opened.source.isEmpty ? nil : egressSources[opened.source],
                                                    ruleTLS: lane.lane.group.kind == .rule ? core.shaper.rule(of: lane.lane.group).tls : nil)
                connections[ObjectIdentifier(connection)] = connection
                start(opened.job, on: connection, routeFirst: true)
            }
            classifyDestinations()
            if !idleConnections.isEmpty { closeIdleConnectionsForWaitingJobs() }
        } while pumpAgain && !stopped
        armTimer()
    }

    /// After a step: shaping's changes of state are logged (once each) and saved, the timer set.
    func armTimer() {
        if core.hasShapingEvents { logShapingEvents() }
        if let cluster, core.hasSharedWants { cluster.serviceShared(self) }
        guard let due = core.nextDueTime else {
            timer.stop()
            timerDue = nil
            return
        }
        if let current = timerDue, current <= due, timer.isActive { return }
        timerDue = due
        let delay = max(0, due - now)
        timer.start(afterMilliseconds: UInt64(delay * 1000) + 1) { [weak self] in
            guard let self else { return }
            self.timerDue = nil
            self.pump()
        }
    }

    /// A connection took `job`: the core says attempt it (once the message is read) or skip it.
    func start(_ job: DeliveryJob, on connection: OutboundConnection, routeFirst: Bool) {
        takenJobs[JobKey(job)] = (connection, routeFirst)
        perform(core.begin(job))
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

    // MARK: - Carrying out the core's actions

    func perform(_ actions: [DeliveryAction]) {
        for action in actions {
            switch action {
            case .load(let id): load(id)
            case .attempt(let job, let envelope): attempt(job, envelope)
            case .skip(let job):
                guard let connection = takenJobs.removeValue(forKey: JobKey(job))?.connection else { break }
                core.skipped(on: connection.lane.lane)
                connection.finish()
            case .write(let write): self.write(write)
            case .remove(let id):
                remover.remove(id) { [self] failure in
                    perform(core.written(id, failure: failure.map { "\($0)" }, notices: [], now: now))
                }
            case .answer(let ticket, let answer): requests.removeValue(forKey: ticket)?(answer)
            case .log(let event): record(event)
            case .forget(let id): bytes.removeValue(forKey: id)
            }
        }
    }

    /// Reads a message for the core: from memory when it just arrived, else from the spool.
    func load(_ id: QueueID) {
        if let fresh = justArrived.removeValue(forKey: id) {
            justArrivedBytes -= fresh.message.capacity
            bytes[id] = (fresh.message, fresh.wireReady)
            perform(core.loaded(id, fresh.envelope, now: now))
            return
        }
        let spool = self.spool
        var loaded: (Envelope, [UInt8])?
        var failure: Error?
        loop.queueWork({
            do {
                loaded = (try spool.load(id), try spool.readMessage(id))
            } catch {
                failure = error
            }
        }, done: { [self] in
            if let loaded { bytes[id] = (loaded.1, false) }
            perform(core.loaded(id, loaded?.0, error: failure.map { "\($0)" }, now: now))
        })
    }

    func attempt(_ job: DeliveryJob, _ envelope: Envelope) {
        guard let (connection, routeFirst) = takenJobs.removeValue(forKey: JobKey(job)) else { return }
        guard let stored = bytes[job.id] else {
            // Not expected: the core attempts only messages it had read. Never send an empty one.
            log.error("\(job.id): no message data in memory for an attempt; deferred")
            connection.finish()
            let why = RecipientResult.deferred("no message data in memory", status: "4.3.0")
            perform(core.attemptFinished(job, AttemptResult(results: Dictionary(uniqueKeysWithValues: job.recipients.map { ($0, why) })),
                                         on: connection.lane.lane, now: now))
            return
        }
        let message = OutgoingMessage(envelope: envelope, message: stored.message, wireReady: stored.wireReady)
        if routeFirst {
            router.route(domain: job.destination) { plan in
                connection.run(job, message: message, plan: plan)
            }
        } else if connection.isFinished {
            // The next hop closed the connection while the message was read from the spool: its
            // slot is already given back, so the job waits for the next connection instead.
            perform(core.notStarted(job, on: connection.lane.lane, now: now))
            pump()
        } else {
            connection.runOnOpenSession(job, message: message)
        }
    }

    /// A job ended: the core records each recipient's result and says what to write.
    func jobFinished(_ job: DeliveryJob, message: OutgoingMessage, outcomes: [Int: RecipientResult], relay: String,
                     tls: String? = nil, source: String? = nil, lane: ShapingLane? = nil, nextHopDSN: Bool = false) {
        let attempt = AttemptResult(results: outcomes, relay: relay == "none" ? nil : relay, tls: tls, source: source,
                                    nextHopDSN: nextHopDSN)
        perform(core.attemptFinished(job, attempt, on: lane, now: now))
        armTimer()
    }

    /// One spool write on the thread pool: the notices first (durable before the original changes or
    /// goes), then the envelope update or the removal. The notices' ids and time are taken on the loop;
    /// their bytes (the report and the original's headers) are built on the pool, next to the writes.
    func write(_ w: SpoolWrite) {
        let envelope = w.envelope
        let original = w.notices.isEmpty ? [] : bytes[envelope.id]?.message ?? []
        let planned = w.notices.map { (id: newQueueID(), notice: $0) }
        let t = now
        let hostname = config.hostname
        let spool = self.spool
        let remove = w.remove
        var failure: Error?
        var committed: [Envelope] = []
        loop.queueWork({
            do {
                for (e, bytes) in Self.notices(planned, about: envelope, original: original, hostname: hostname, now: t) {
                    let file = try spool.create(e.id)
                    do {
                        try file.write(bytes)
                        committed.append(try spool.commit(file, envelope: e))
                    } catch {
                        spool.discard(file)
                        throw error
                    }
                }
                if remove { try spool.remove(envelope.id) } else { try spool.update(envelope) }
            } catch {
                failure = error
            }
        }, done: { [self] in
            perform(core.written(envelope.id, failure: failure.map { "\($0)" }, notices: committed, now: now))
            pump()
        })
    }

    /// The notices' envelopes and bytes (DSNs to the sender of `envelope`). Pure: runs on the pool.
    static func notices(_ planned: [(id: QueueID, notice: Notice)], about envelope: Envelope, original: [UInt8],
                        hostname: String, now t: Double) -> [(Envelope, [UInt8])] {
        let headers = planned.isEmpty ? [] : DSN.headerSection(of: original)
        var notices: [(Envelope, [UInt8])] = []
        for (id, notice) in planned {
            let boundary = "\(id.rawValue)/\(hostname)"
            let made: [UInt8]?
            switch notice {
            case .bounce(let failed):
                made = DSN.bounce(for: envelope, failed: failed, originalHeaders: headers, original: original,
                                  reportingMTA: hostname, now: Int(t), boundary: boundary)
            case .relayed(let done):
                made = DSN.relayed(for: envelope, relayed: done, originalHeaders: headers,
                                   reportingMTA: hostname, now: Int(t), boundary: boundary)
            case .delayWarning(let delayed):
                made = DSN.delayWarning(for: envelope, delayed: delayed, originalHeaders: headers,
                                        reportingMTA: hostname, now: Int(t), boundary: boundary)
            }
            guard let made else { continue }
            // To a UTF-8 sender: SMTPUTF8 and 8-bit (an RFC 6533 report), never downgraded (5.6.7).
            let utf8 = DSN.requiresSMTPUTF8(envelope)
            // A RET=FULL bounce of an 8-bit message is 8-bit too.
            let eightBit = utf8 || made.contains { $0 >= 0x80 }
            let e = Envelope(id: id, sender: "", recipients: [Recipient(address: envelope.sender)],
                             priority: envelope.priority, arrival: t, nextAttempt: t,
                             bodyType: eightBit ? "8BITMIME" : nil, smtputf8: utf8,
                             client: MailQueue.ClientInfo(ip: "127.0.0.1", helo: hostname, protocolName: "local"))
            notices.append((e, made))
        }
        return notices
    }

    // MARK: - Logs and metrics, from the core's events

    func record(_ event: DeliveryEvent) {
        switch event {
        case .recipient(let e):
            switch e.status {
            case .sent: metrics.recipientDelivered(delay: e.delay)
            case .deferred: metrics.recipientDeferred()
            case .bounced, .expired: metrics.recipientBounced()
            }
            if let kind = e.bounceClass { metrics.bounceClassified(kind, status: e.status.rawValue) }
            logResult(e)
            if let events { events.emit(Self.eventLine(e, time: now)) }
            suppressIfHardBounce(e)
        case .attemptEnded(let id, let sent, let deferred, _):
            if sent > 0 { metrics.bytesDelivered(bytes[id]?.message.count ?? 0) }
            if deferred > 0 { metrics.messageDeferred() }
        case .noticeQueued(let original, let notice):
            log.info("\(original): sender notification (non-delivery or delay): \(notice)")
        case .removed(let id, let delivered, let bounced, let deleted, let residence):
            log.info("\(id): removed")
            metrics.messageLeftQueue(delivered: delivered, bounced: bounced, deleted: deleted, residence: residence)
        case .spoolWriteFailed(let id, let why):
            log.error("\(id): spool update failed: \(why)")
        case .unreadable(let id, let why):
            log.error("\(id): cannot read from the spool: \(why)")
        case .postmaster(let id, let action, let pending):
            if let events, !pending {
                var line = EventLine(type: "admin", time: now)
                line.add("queue_id", id.rawValue)
                line.add("action", action.rawValue)
                events.emit(line)
            }
            if pending {
                log.info("\(id): \(action.rawValue) by the postmaster, when the attempt in flight ends")
            } else if action != .bounce {
                log.info("\(id): \(Self.pastTense(action)) by the postmaster")
            }
        }
    }

    /// A hard bounce of a class in [suppression] auto_classes suppresses its recipient
    /// (SuppressionEntry.fromHardBounce decides).
    func suppressIfHardBounce(_ e: RecipientEvent) {
        guard let suppression,
              let entry = SuppressionEntry.fromHardBounce(e, autoClasses: config.suppression.autoClasses, time: Int(now)),
              let kind = e.bounceClass else { return }
        if suppression.add(entry) {
            log.info("\(e.id): \(angleQuoted(entry.address)) suppressed: \(entry.reason)")
            events?.emit(.suppression(entry, queueID: e.id.rawValue, bounceClass: kind, time: now))
        }
    }

    /// A recipient's result as an event: delivery, transient_failure, bounce or expiration.
    static func eventLine(_ e: RecipientEvent, time: Double) -> EventLine {
        let type: String
        switch e.status {
        case .sent: type = "delivery"
        case .deferred: type = "transient_failure"
        case .bounced: type = "bounce"
        case .expired: type = "expiration"
        }
        var line = EventLine(type: type, time: time)
        line.add("queue_id", e.id.rawValue)
        line.add("message_id", e.messageID)
        line.add("sender", e.sender)
        line.add("recipient", e.to)
        line.add("destination", DeliveryCore.domain(of: e.to))
        line.add("next_hop", e.relay == "none" ? nil : e.relay)
        line.add("source", e.source)
        line.add("tls", e.tls)
        line.add("reply", e.reply)
        line.add("dsn", e.dsn)
        line.add("bounce_class", e.bounceClass)
        line.add("attempt", e.attempt)
        line.add("size", e.size)
        return line
    }

    /// "QUEUEID: to=<…>, relay=mx[ip]:25, tls=…, delay=0.4, dsn=2.0.0, status=sent (250 …)", as Postfix
    /// writes it (source=NAME[ip] after the relay when sent from an egress source, tls= when the session
    /// used TLS; "expired, returned to sender" for an expired one); with log.format = "json" each of
    /// these is a member of its own.
    func logResult(_ e: RecipientEvent) {
        let delay = Self.seconds(e.delay)
        var fields: Logger.Metadata = ["to": .string(e.to), "relay": .string(e.relay), "delay": .string(delay),
                                       "dsn": .string(e.dsn), "status": .string(e.status.rawValue),
                                       "reply": .string(e.reply)]
        if let tls = e.tls { fields["tls"] = .string(tls) }
        if let source = e.source { fields["source"] = .string(source) }
        if let kind = e.bounceClass { fields["bounce_class"] = .string(kind) }
        log.fields("delivery", qid: e.id.rawValue, fields) {
            Self.resultText(e.id, to: e.to, relay: e.relay, tls: e.tls, delay: delay, dsn: e.dsn,
                            status: e.status.rawValue, reply: e.reply, source: e.source, bounceClass: e.bounceClass)
        }
    }

    /// bounce_class= goes last, after the reply in parentheses, so that a reader of Postfix's lines
    /// finds everything it knows where it looks for it.
    static func resultText(_ id: QueueID, to: String, relay: String, tls: String?, delay: String, dsn: String,
                           status: String, reply: String, source: String? = nil, bounceClass: String? = nil) -> String {
        var relayField = source.map { "\(relay), source=\($0)" } ?? relay
        if let tls { relayField += ", tls=\(tls)" }
        let outcome = status == "expired" ? "expired, returned to sender" : status
        let kind = bounceClass.map { ", bounce_class=\($0)" } ?? ""
        return "\(id): to=\(angleQuoted(to)), relay=\(relayField), delay=\(delay), dsn=\(dsn), status=\(outcome) (\(reply))\(kind)"
    }

    /// "1.25" for the log's delay= field (no Foundation formatter on this path).
    static func seconds(_ x: Double) -> String {
        let hundredths = Int((max(0, x) * 100).rounded())
        let frac = hundredths % 100
        return "\(hundredths / 100).\(frac < 10 ? "0" : "")\(frac)"
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
        // max_messages_per_connection: QUIT after that many.
        if let max = connection.limits.maxMessagesPerConnection, connection.sent >= max {
            connection.finish()
            return
        }
        // Above this node's share of a cluster's connections while another node waits (LeaseShare).
        if core.takeShed(connection.lane.lane) {
            log.debug("closing a connection to \(connection.destination): this node holds more than its share of \(connection.lane.lane)'s connections while another node waits")
            connection.finish()
            return
        }
        guard let job = core.next(on: connection.lane, sent: connection.sent, now: now) else {
            parkOrFinish(connection)
            return
        }
        connection.sent += 1
        start(job, on: connection, routeFirst: false)
    }

    func connectionClosed(_ connection: OutboundConnection) {
        idleConnections.remove(connection)
        guard connections.removeValue(forKey: ObjectIdentifier(connection)) != nil else { return }
        core.release(connection.lane)
        pump()
    }

    func stop() {
        stopped = true
        saveShapingStateNow()
        timer.close()
        remover.close()
        for c in idleConnections.takeAll() { c.finish() }  // QUIT: nothing in flight on them
        for c in Array(connections.values) { c.abandon() }
    }
}
