// The sending side's decisions, as a pure state machine: the life of a queued message from "due" to
// "gone". Events come in (a job is due, the message was read, an attempt ended, a spool write is done,
// the postmaster acts), actions go out (read the message, attempt this job, skip it, write the
// envelope, remove the files, answer, log). No I/O, no clock (`now` is a parameter), no global
// randomness (a seeded generator for the retry jitter), so every rule below has a unit test.
//
// A message the core knows is in one of three lives:
//
//   loading   being read from the spool; jobs and postmaster requests wait for it
//   live      in memory: attempts in flight (any number, one per destination), at most one spool write
//   leaving   its removal (or the write that removes it) is under way: no job, no action, no write
//
// and gone once that write is done. A live message with nothing in flight is forgotten (its bytes
// freed); the spool holds it and the scheduler its jobs.
//
// The crash-ordering rule: nothing leaves the spool before the write that makes it safe. A bounce or
// delay warning is written in the same spool write as the envelope change that caused it, before the
// original is removed; one write per message at a time, so a later state never overtakes an earlier one
// on disk. Notices are made only when no attempt of the message is in flight, so several failures in
// one round make one bounce. A crash may deliver a message twice, never lose it.
//
// The postmaster's hold, delete and bounce do not pull a message out from under an attempt in flight:
// the action waits and is carried out when the last attempt ends (its answer says "pending").

import Randomness
import SMTPProtocol

/// What the postmaster can do to queued mail (`tern queue ...`): see Admin/QueueControl.swift.
public enum QueueAction: String, Sendable, CaseIterable, Codable {
    case flush, hold, release, delete, bounce
}

/// How one attempt of one job ended: a result for each recipient of the job, and where it went.
public struct AttemptResult: Sendable, Equatable {
    /// By recipient index (the job's `recipients`); a recipient of the job without one is deferred.
    public var results: [Int: RecipientResult]
    /// "mx.example.net[192.0.2.1]:25", nil when no host took the transaction.
    public var relay: String?
    /// "TLSv1.3 TLS_AES_256_GCM_SHA384 verified" when the session used TLS.
    public var tls: String?
    /// The egress source the attempt was sent from, "NAME[ip]"; nil without egress sources.
    public var source: String?
    /// The next hop offered DSN (RFC 3461), so the sender's NOTIFY went on with the message and the
    /// next hop answers for it; otherwise a NOTIFY=SUCCESS recipient gets a "relayed" notice from us.
    public var nextHopDSN: Bool

    public init(results: [Int: RecipientResult], relay: String? = nil, tls: String? = nil, source: String? = nil,
                nextHopDSN: Bool = false) {
        self.results = results
        self.relay = relay
        self.tls = tls
        self.source = source
        self.nextHopDSN = nextHopDSN
    }
}

/// One recipient's line in the log, as Postfix writes it:
/// "QUEUEID: to=<…>, relay=…, tls=…, delay=0.4, dsn=2.0.0, status=sent (250 …)".
public struct RecipientEvent: Sendable, Equatable {
    public enum Status: String, Sendable {
        /// "expired" is a bounce of a message too long in the queue (logged "expired, returned to sender").
        case sent, deferred, bounced, expired
    }

    public var id: QueueID
    public var to: String
    public var relay: String
    public var tls: String?
    /// Seconds from arrival to this result.
    public var delay: Double
    public var dsn: String
    public var status: Status
    public var reply: String
    /// "NAME[ip]" of the egress source, logged as source=; nil without egress sources.
    public var source: String? = nil
    /// The failure's class (BounceClass.swift): for deferred, bounced and expired results only.
    public var bounceClass: String? = nil
    /// RecipientResult.recipientSpecific: the failure was this recipient's own (what may suppress it).
    public var recipientSpecific = false
    /// For events: the envelope sender ("" for <>), the attempt's number (1 for the first) and the
    /// message's size.
    public var sender = ""
    public var attempt = 0
    public var size = 0
    /// The message's Message-ID, for events.
    public var messageID: String? = nil
}

/// Something to log and count, built once, where the decision is made.
public enum DeliveryEvent: Sendable, Equatable {
    case recipient(RecipientEvent)
    /// An attempt ended: how many of its recipients were delivered, deferred (or expired), bounced.
    case attemptEnded(QueueID, delivered: Int, deferred: Int, bounced: Int)
    /// A bounce or delay warning for `original` is in the spool as `notice`.
    case noticeQueued(original: QueueID, notice: QueueID)
    /// Gone from the spool. `residence` is seconds since arrival.
    case removed(QueueID, delivered: Bool, bounced: Bool, deleted: Bool, residence: Double)
    case spoolWriteFailed(QueueID, String)
    case unreadable(QueueID, String)
    /// The postmaster's action was carried out, or (`pending`) will be when the attempt in flight ends.
    case postmaster(QueueID, QueueAction, pending: Bool)
}

/// A notice to the sender, made by the caller (it has the message) with DSN.bounce, DSN.delayWarning
/// or DSN.relayed, and written before the envelope change that goes with it. Each recipient is in one
/// only if its NOTIFY (RFC 3461) asks for it: FAILURE for a bounce, DELAY for a warning (both when
/// NOTIFY was not given), SUCCESS for "relayed" (never unasked).
public enum Notice: Sendable, Equatable {
    case bounce([FailedRecipient])
    case delayWarning([FailedRecipient])
    /// Delivered to a next hop that does not offer DSN (RFC 3461 §5.2.2): the last news we can give.
    case relayed([FailedRecipient])
}

/// One spool write for one message: the notices first, then the envelope update, or the removal of
/// the message's files when `remove` (it is finished).
public struct SpoolWrite: Sendable, Equatable {
    public var envelope: Envelope
    public var notices: [Notice]
    public var remove: Bool
}

/// The answer to a postmaster's request, by the ticket the caller gave with it.
public enum PostmasterAnswer: Sendable, Equatable {
    /// Carried out and, for hold, delete, bounce and release, written to the spool. `jobs`: made due (flush).
    case done(jobs: Int?)
    case alreadyHeld
    /// A delivery attempt is in flight: carried out when it ends (flush: the attempt is the flush).
    case pending
    /// Not in the queue (never was, or delivered, expired, deleted meanwhile): 404.
    case notQueued
    /// Release of a message that is not on hold: 409.
    case notHeld
    /// Flush of a message on hold: 409.
    case held
    /// The spool write failed: 500.
    case writeFailed(String)
}

public enum DeliveryAction: Sendable, Equatable {
    /// Read the message (envelope and data) from the spool, or take it from memory; answer `loaded`.
    case load(QueueID)
    /// Carry out this job with this envelope; answer `attemptFinished`, or `notStarted` if it never began.
    case attempt(DeliveryJob, Envelope)
    /// Nothing to send for this job (the message is gone, held, or waits for the postmaster's action):
    /// give its connection back.
    case skip(DeliveryJob)
    /// Answer `written`.
    case write(SpoolWrite)
    /// Remove a finished message's files (no notice goes with it); answer `written`.
    case remove(QueueID)
    case answer(ticket: UInt64, PostmasterAnswer)
    case log(DeliveryEvent)
    /// No attempt or write of the message is in flight any more: free what is kept of it in memory.
    case forget(QueueID)
}

public struct DeliveryCore: Sendable {
    public struct Settings: Sendable, Equatable {
        public var retry: RetryPolicy
        /// Seconds after arrival at which a sender hears once that the mail is late; 0 turns it off.
        public var delayWarningTime: Double
        /// Gives failures their class; nil: none is given.
        public var bounceClasses: BounceClassifier?

        public init(retry: RetryPolicy, delayWarningTime: Double, bounceClasses: BounceClassifier? = nil) {
            self.retry = retry
            self.delayWarningTime = delayWarningTime
            self.bounceClasses = bounceClasses
        }
    }

    /// A message in memory, between its first job starting and its last write ending.
    struct Live: Sendable {
        var envelope: Envelope
        /// Attempts of its jobs under way (one per destination at most).
        var inFlight = 0
        /// The spool write under way, if any.
        var write: Write?
        /// The postmaster's hold, delete or bounce, waiting for the attempts in flight to end.
        var afterAttempts: QueueAction?
        /// Deleted by the postmaster: its next write removes it, without a bounce.
        var deleted = false
        /// Recipients that failed since the last bounce: one bounce covers them all.
        var failures: [FailedRecipient] = []
        /// Recipients deferred past delay_warning_time: the sender hears once that mail is late.
        var delayed: [FailedRecipient] = []
        /// NOTIFY=SUCCESS recipients handed to a next hop without DSN, for one "relayed" notice.
        var relayed: [FailedRecipient] = []

        var owesNotice: Bool { !failures.isEmpty || !delayed.isEmpty || !relayed.isEmpty }
        /// Tickets answered when the next write ends.
        var answers: [UInt64] = []

        init(envelope: Envelope) { self.envelope = envelope }

        /// Deleted, held, or the postmaster acted on it while it was read: nothing to send.
        var mayStart: Bool { !deleted && !envelope.held && afterAttempts == nil }
    }

    struct Write: Sendable, Equatable {
        /// Answered when it ends.
        var answers: [UInt64]
        /// What it tells the sender: owed again if it fails.
        var notices: [Notice]
        /// A newer state must be written after it.
        var again = false
    }

    /// What waits for a message being read, in the order it came.
    enum Waiting: Sendable {
        case job(DeliveryJob)
        case request(QueueAction, ticket: UInt64)
    }

    enum Life: Sendable {
        case loading([Waiting])
        case live(Live)
        case leaving(Live, answers: [UInt64])
    }

    public let settings: Settings
    public private(set) var scheduler: Scheduler
    /// Traffic shaping: the scheduler asks it before every new connection and every further message.
    public private(set) var shaper: Shaper
    /// [routes]' egress pool per destination ("*": any other), for messages no user, sender domain or
    /// rule gives a pool.
    public var routePools: [String: String] = [:]
    var lives: [QueueID: Life] = [:]
    /// Messages on hold, with their priority: in the spool, never scheduled.
    public private(set) var held: [QueueID: Int] = [:]
    var random: SplitMix64
    public private(set) var delivered = 0
    public private(set) var deferred = 0
    public private(set) var bounced = 0

    /// Without traffic shaping: each destination gets the scheduler's max_connections_per_destination.
    public init(settings: Settings, scheduler: Scheduler, seed: UInt64) {
        let defaults = ShapingRule(name: "default", maxConnections: scheduler.maxConnectionsPerDestination)
        self.init(settings: settings, scheduler: scheduler, shaping: ShapingPolicy(defaults: defaults), seed: seed)
    }

    public init(settings: Settings, scheduler: Scheduler, shaping: ShapingPolicy, seed: UInt64) {
        self.settings = settings
        self.scheduler = scheduler
        shaper = Shaper(policy: shaping)
        random = SplitMix64(seed: seed)
    }

    // MARK: - The queue

    /// A message is in the queue (just received, a notice, or read at start-up): one job per recipient
    /// domain, due at `due` (else its envelope's next attempt). A held message waits for its release.
    public mutating func queue(_ envelope: Envelope, due: Double? = nil) {
        if envelope.held {
            held[envelope.id] = envelope.priority
            return
        }
        schedule(envelope, recipients: envelope.recipients.indices.filter { !envelope.recipients[$0].state.isFinal },
                 due: due ?? envelope.nextAttempt, retry: envelope.attempts > 0)
    }

    mutating func schedule(_ envelope: Envelope, recipients: [Int], due: Double, retry: Bool) {
        // Recipients by domain, in the order the domains first appear: one job each.
        var groups: [(domain: String, recipients: [Int])] = []
        if recipients.count == 1 {
            groups = [(Self.domain(of: envelope.recipients[recipients[0]].address), recipients)]  // the usual message
        } else {
            var slot: [String: Int] = [:]
            for i in recipients {
                let d = Self.domain(of: envelope.recipients[i].address)
                if let g = slot[d] {
                    groups[g].recipients.append(i)
                } else {
                    slot[d] = groups.count
                    groups.append((d, [i]))
                }
            }
        }
        for (d, list) in groups {
            let pool = shaper.pool(sender: envelope.sender, authenticatedUser: envelope.client.authenticatedUser,
                                   destination: d, routePool: routePools.isEmpty ? nil : routePools[d] ?? routePools["*"])
            scheduler.add(DeliveryJob(id: envelope.id, destination: d, recipients: list,
                                      priority: envelope.priority, arrival: envelope.arrival, retry: retry, pool: pool),
                          due: due, shaping: &shaper)
        }
    }

    /// The domain part, lowercased: the destination of a recipient.
    public static func domain(of address: String) -> String {
        // Scanned as bytes: String.lastIndex(of: Character) walks grapheme clusters (thousands of
        // instructions per address), and this runs for every recipient.
        var address = address
        return address.withUTF8 { bytes in
            guard let at = bytes.lastIndex(of: UInt8(ascii: "@")) else { return "" }
            let domain = UnsafeBufferPointer(rebasing: bytes[(at + 1)...])
            var ascii = true, upper = false
            for b in domain {
                if b >= 0x80 { ascii = false; break }
                if b &- 0x41 < 26 { upper = true }
            }
            // lowercased() is Unicode's, for the rare internationalized domain; ASCII goes byte by byte.
            guard ascii else { return String(decoding: domain, as: UTF8.self).lowercased() }
            guard upper else { return String(decoding: domain, as: UTF8.self) }
            return String(unsafeUninitializedCapacity: domain.count) { out in
                for (k, b) in domain.enumerated() { out[k] = b &- 0x41 < 26 ? b | 0x20 : b }
                return domain.count
            }
        }
    }

    public mutating func promoteReadyForConnections(now: Double) -> [String] {
        tick(now: now)
        return scheduler.promoteReadyForConnections(now: now)
    }

    public mutating func hasJobWaitingForSlot() -> Bool {
        scheduler.hasJobWaitingForSlot(now: shaper.lastNow, shaping: &shaper)
    }

    // MARK: - Traffic shaping (Shaper.swift): connections and their lanes

    /// A job to start on a new connection: the lane it counts under (source, group) and the limits
    /// the connection keeps (messages per connection, how long it may idle).
    public struct NewConnection: Sendable, Equatable {
        public var job: DeliveryJob
        public var connection: ConnectionLane
        public var limits: LaneLimits
        /// The egress source to bind ("" : none, the OS picks the address).
        public var source: String { connection.lane.source }
        /// The rule label for logs and metrics ("default" when no rule matched).
        public var rule: String { connection.lane.group.ruleLabel }
    }

    /// Due jobs to start on new connections, each with its lane: what the shaping limits allow now.
    /// Suspended or throttled destinations' jobs stay queued, untried, with no log line each.
    public mutating func dispatchConnections(now: Double) -> [NewConnection] {
        tick(now: now)
        let started = scheduler.dispatch(now: now, shaping: &shaper)
        wakeChanged()
        return started.map {
            NewConnection(job: $0.job, connection: $0.connection, limits: shaper.limits(of: $0.connection.lane.group))
        }
    }

    /// An open connection that has carried `sent` messages asks for the next: nil when its limit is
    /// reached or the rate does not allow one now (close it, or idle it: `promoteReadyForConnections`
    /// names its destination when the rate allows again).
    public mutating func next(on connection: ConnectionLane, sent: Int, now: Double) -> DeliveryJob? {
        tick(now: now)
        return scheduler.next(on: connection, sent: sent, now: now, shaping: &shaper)
    }

    /// Whether the lane's queue has a job ready (after `next(on:)` said nil: nil for this connection
    /// only, or for every connection of the lane).
    public mutating func hasReadyJob(on connection: ConnectionLane) -> Bool { scheduler.hasReadyJob(on: connection) }

    /// A connection closed: its slot and its lane's count are free.
    public mutating func release(_ connection: ConnectionLane) {
        scheduler.release(connection, shaping: &shaper)
        wakeChanged()
    }

    /// Ends suspensions and throttles whose time came (their events) and reopens what they blocked.
    public mutating func tick(now: Double) {
        shaper.tick(now: now)
        wakeChanged()
    }

    /// The scheduler's next due job or gate, or the next end of a suspension or throttle.
    // `mutating get` and `mutating func` below: the driver asks these of its stored core after every
    // step, and a plain getter from another module is handed a copy of the whole core (callgrind).
    public var nextDueTime: Double? {
        mutating get {
            // Asked after every attempt: no array for two values.
            guard let expiry = shaper.nextExpiry else { return scheduler.nextDueTime }
            guard let due = scheduler.nextDueTime else { return expiry }
            return min(due, expiry)
        }
    }

    mutating func wakeChanged() {
        for group in shaper.takeChangedGroups() { scheduler.wake(group: group) }
    }

    /// Whether the driver must look up a destination's MX names (MX rollup) before its mail can go.
    public func needsClassification(_ destination: String) -> Bool {
        shaper.needsClassification(Scheduler.canonical(destination))
    }

    /// Destinations whose jobs wait for their MX names, each once: look them up, then `classified`.
    public mutating func destinationsToClassify() -> [String] { scheduler.takeUnclassified() }

    /// The MX host names of a destination (empty when the lookup failed: no MX rule applies to it).
    public mutating func classified(_ destination: String, mxHosts: [String], now: Double) {
        let name = Scheduler.canonical(destination)
        shaper.classified(name, mxHosts: mxHosts, now: now)
        scheduler.regroup(destination: name, shaping: &shaper)
    }

    /// A connection of the lane reached no host (refused, timed out, no greeting).
    public mutating func connectionFailed(_ lane: ShapingLane, reason: String, now: Double) {
        shaper.connectionFailed(lane, reason: reason, now: now)
        wakeChanged()
    }

    /// A connection of the lane reached a host. True when this changed state worth saving (a failure
    /// count started over).
    @discardableResult
    public mutating func connectionSucceeded(_ lane: ShapingLane, now: Double) -> Bool {
        let changed = shaper.connectionSucceeded(lane, now: now)
        wakeChanged()
        return changed
    }

    /// The job a connection of the lane took was skipped (`skip`): it is no longer in flight there.
    public mutating func skipped(on lane: ShapingLane) { shaper.notAttempted(lane) }

    /// A reply (not 2xx) from a next hop of the lane: [[backoff]] rules count it.
    public mutating func replySeen(_ lane: ShapingLane, code: Int, enhanced: String?, text: String, now: Double) {
        shaper.replySeen(lane, code: code, enhanced: enhanced, text: text, now: now)
        wakeChanged()
    }

    /// The postmaster suspends a destination's group or a rule, every source, until `until`.
    @discardableResult
    public mutating func suspend(_ target: String, until: Double, reason: String, now: Double) -> ShapingGroup {
        let g = shaper.suspend(target, until: until, reason: reason, now: now)
        wakeChanged()
        return g
    }

    @discardableResult
    public mutating func resume(_ target: String, now: Double) -> ShapingGroup {
        let g = shaper.resume(target, now: now)
        wakeChanged()
        return g
    }

    /// A suspension, throttle or resume another node of a cluster decided (Shaper.applyShared).
    public mutating func applySharedShaping(_ event: ShapingEvent, now: Double) {
        shaper.applyShared(event, now: now)
        wakeChanged()
    }

    // Limits shared by a cluster (Shaper's `Sharing`): the driver fetches leases and permits.

    public mutating func setSharing(_ sharing: Shaper.Sharing) {
        shaper.setSharing(sharing)
        wakeChanged()
    }

    public var hasSharedWants: Bool { shaper.hasSharedWants }
    public mutating func takeSharedWants() -> Set<Shaper.SharedWant> { shaper.takeSharedWants() }
    public mutating func takeSharedReleases() -> [ShapingLane: Int] { shaper.takeSharedReleases() }
    public mutating func takeIdleLeases() -> [ShapingLane: Int] { shaper.takeIdleLeases() }
    @discardableResult
    public mutating func shed(_ lane: ShapingLane, count: Int) -> Int { shaper.shed(lane, count: count) }
    public mutating func closingIdle(_ lane: ShapingLane, count: Int) { shaper.closingIdle(lane, count: count) }

    public mutating func recheckShared(_ lane: ShapingLane) {
        shaper.recheckShared(lane)
        wakeChanged()
    }
    public mutating func takeShed(_ lane: ShapingLane) -> Bool { shaper.takeShed(lane) }

    public mutating func grantShared(_ want: Shaper.SharedWant, count: Int, until: Double) {
        shaper.grantShared(want, count: count, until: until)
        wakeChanged()
    }

    public func configuredLimits(_ group: ShapingGroup) -> (connections: Int?, connectionRate: Rate?, messageRate: Rate?) {
        shaper.configuredLimits(group)
    }

    /// Shaping's changes of state since the last call, each to be logged once.
    public mutating func takeShapingEvents() -> [ShapingEvent] { shaper.takeEvents() }

    /// Whether `takeShapingEvents` has anything (the driver asks after every step).
    public var hasShapingEvents: Bool { mutating get { shaper.hasEvents } }

    public func shapingSnapshot(now: Double) -> ShapingSnapshot { shaper.snapshot(now: now) }

    public mutating func restoreShaping(_ snapshot: ShapingSnapshot, now: Double) {
        shaper.restore(snapshot, now: now)
        wakeChanged()
    }

    /// SIGHUP: new rules; state of groups that still exist is kept, queues move to their new groups.
    public mutating func updateShaping(_ policy: ShapingPolicy) {
        shaper.updatePolicy(policy)
        scheduler.regroupAll(shaping: &shaper)
        wakeChanged()
    }

    /// `tern queue destinations`: per group × source, with the group's queued jobs.
    public func shapingView(now: Double) -> [ShapingLaneView] {
        let counts = scheduler.groupCounts()
        var rows = shaper.laneViews(now: now)
        var seen = Set<ShapingGroup>()
        for i in rows.indices {
            rows[i].queued = counts[rows[i].group]?.queued ?? 0
            seen.insert(rows[i].group)
        }
        for (group, c) in counts where !seen.contains(group) && group.kind != .unclassified {
            var row = ShapingLaneView(group: group, rule: group.ruleLabel, source: "", connections: c.connections,
                                      messagesLastMinute: 0, maxConnections: nil, messageRate: nil)
            row.queued = c.queued
            rows.append(row)
        }
        for (group, c) in counts where group.kind == .unclassified {
            var row = ShapingLaneView(group: group, rule: "default", source: "", connections: 0, messagesLastMinute: 0,
                                      maxConnections: nil, messageRate: nil)
            row.queued = c.queued
            row.state = .classifying
            rows.append(row)
        }
        return rows.sorted { ($0.group.name, $0.source) < ($1.group.name, $1.source) }
    }

    /// Per rule label × source (bounded): sent, deferred, seconds suspended, connections now.
    public func shapingMetrics(now: Double) -> [ShapingMetricKey: ShapingCounters] { shaper.metrics(now: now) }

    // MARK: - A job's life

    /// A connection took `job`: the answer is `attempt`, `skip`, or `load` (then `attempt` or `skip`
    /// once the message is read).
    public mutating func begin(_ job: DeliveryJob) -> [DeliveryAction] {
        guard let i = lives.index(forKey: job.id) else {
            lives[job.id] = .loading([.job(job)])
            return [.load(job.id)]
        }
        return Self.begin(job, &lives.values[i])  // in place: one lookup (this runs for every message)
    }

    /// `begin` for a message the core has in memory.
    private static func begin(_ job: DeliveryJob, _ life: inout Life) -> [DeliveryAction] {
        switch life {
        case .loading(var waiting):
            life = .loading([])  // `waiting` is then the list's only owner: the append copies nothing
            waiting.append(.job(job))
            life = .loading(waiting)
            return []
        case .leaving:
            return [.skip(job)]
        case .live(var m):
            guard m.mayStart else { return [.skip(job)] }
            m.inFlight += 1
            let envelope = m.envelope
            life = .live(m)
            return [.attempt(job, envelope)]
        }
    }

    /// The message asked for by `load` was read, or (nil) could not be.
    public mutating func loaded(_ id: QueueID, _ envelope: Envelope?, error: String? = nil, now: Double) -> [DeliveryAction] {
        guard let i = lives.index(forKey: id), case .loading(let waiting) = lives.values[i] else { return [] }
        var out: [DeliveryAction] = []
        // The usual case, only jobs waited (no postmaster request): started here, stored once.
        if let envelope, waiting.allSatisfy({ if case .job = $0 { true } else { false } }) {
            var m = Live(envelope: envelope)
            out.reserveCapacity(waiting.count + 1)
            for case .job(let job) in waiting {
                if m.mayStart {
                    m.inFlight += 1
                    out.append(.attempt(job, envelope))
                } else {
                    out.append(.skip(job))
                }
            }
            if m.inFlight == 0 {  // nothing to send: forgotten (settle)
                lives.remove(at: i)
                out.append(.forget(id))
            } else {
                lives.values[i] = .live(m)
            }
            return out
        }
        if let envelope {
            lives[id] = .live(Live(envelope: envelope))
        } else {
            lives[id] = nil
            out.append(.log(.unreadable(id, error ?? "unreadable")))
        }
        for w in waiting {
            switch w {
            case .job(let job):
                out += envelope == nil ? [.skip(job)] : begin(job)
            case .request(let action, let ticket):
                out += envelope == nil ? [.answer(ticket: ticket, .notQueued)] : act(action, on: id, ticket: ticket, now: now)
            }
        }
        return out + settle(id)
    }

    /// The connection that was to carry `job` closed before the attempt began: the job is due again now.
    /// `lane`: the connection's, where the job no longer counts as in flight.
    public mutating func notStarted(_ job: DeliveryJob, on lane: ShapingLane? = nil, now: Double) -> [DeliveryAction] {
        if let lane { shaper.notAttempted(lane) }
        guard case .live(var m) = lives[job.id], m.inFlight > 0 else { return [] }
        if m.afterAttempts == nil { scheduler.add(job, due: now, shaping: &shaper) }
        m.inFlight -= 1
        // Nothing changed, unless this was the last attempt in flight and the postmaster's action, or
        // a bounce for another attempt's failures, was waiting for it.
        guard m.inFlight == 0, m.afterAttempts != nil || m.owesNotice else {
            lives[job.id] = .live(m)
            return settle(job.id)
        }
        var out: [DeliveryAction] = []
        attemptsChanged(job.id, m, now: now, into: &out)
        return out
    }

    /// An attempt of `job` ended: each recipient's result is recorded, deferred ones queued again on the
    /// retry schedule (or bounced once the message is too old), failures collected for one bounce.
    public mutating func attemptFinished(_ job: DeliveryJob, _ attempt: AttemptResult, on lane: ShapingLane? = nil,
                                         now: Double) -> [DeliveryAction] {
        guard var m = takeLive(job.id) else { return [] }
        guard m.inFlight > 0 else {
            lives[job.id] = .live(m)
            return []
        }
        var out: [DeliveryAction] = []
        out.reserveCapacity(job.recipients.count + 4)  // an event each, the attempt's, a write, a forget
        let id = job.id
        let relay = attempt.relay ?? "none"
        let delay = now - m.envelope.arrival
        let attemptNumber = m.envelope.attempts + 1  // before this attempt's deferrals count it
        func event(_ index: Int, _ status: RecipientEvent.Status, dsn: String, reply: String, tls: String?,
                   bounceClass: String? = nil, specific: Bool = false) {
            out.append(.log(.recipient(RecipientEvent(id: id, to: m.envelope.recipients[index].address, relay: relay,
                                                      tls: tls, delay: delay, dsn: dsn, status: status, reply: reply,
                                                      source: attempt.source, bounceClass: bounceClass,
                                                      recipientSpecific: specific, sender: m.envelope.sender,
                                                      attempt: attemptNumber, size: m.envelope.size,
                                                      messageID: m.envelope.messageID))))
        }
        var late: [(Int, RecipientResult)] = []
        var sent = 0, failed = 0
        for index in job.recipients where m.envelope.recipients.indices.contains(index) {
            guard !m.envelope.recipients[index].state.isFinal else { continue }
            let r = attempt.results[index] ?? .deferred("the attempt ended without a reply for this recipient",
                                                        status: "4.0.0")
            switch r.kind {
            case .delivered:
                m.envelope.recipients[index].state = .delivered
                m.envelope.recipients[index].lastReply = r.reply
                delivered += 1
                sent += 1
                let rcpt = m.envelope.recipients[index]
                if !attempt.nextHopDSN, rcpt.notify?.contains(.success) == true, !m.envelope.sender.isEmpty {
                    m.relayed.append(FailedRecipient(address: rcpt.address, status: r.status,
                                                     diagnostic: "smtp; \(r.reply)", remoteMTA: "dns; \(relay)",
                                                     originalRecipient: rcpt.orcpt))
                }
                event(index, .sent, dsn: r.status, reply: r.reply, tls: attempt.tls)
            case .deferred:
                m.envelope.recipients[index].state = .deferred
                m.envelope.recipients[index].lastReply = r.reply
                late.append((index, r))
            case .bounced:
                let kind = bounceClass(status: r.status, reply: r.reply)
                fail(&m, index, status: r.status, reply: r.reply, relay: relay, bounceClass: kind)
                failed += 1
                event(index, .bounced, dsn: r.status, reply: r.reply, tls: attempt.tls, bounceClass: kind,
                      specific: r.recipientSpecific)
            }
        }
        if !late.isEmpty {
            m.envelope.attempts += 1
            let next = settings.retry.nextAttempt(after: m.envelope.attempts, arrival: m.envelope.arrival, now: now,
                                                  random: random.unit())
            if let next {
                m.envelope.nextAttempt = next
                deferred += late.count
                for (index, r) in late {
                    event(index, .deferred, dsn: r.status, reply: r.reply, tls: attempt.tls,
                          bounceClass: bounceClass(status: r.status, reply: r.reply))
                }
                // Held, deleted or bounced meanwhile: the recipients wait in the envelope, not the queue.
                if m.afterAttempts == nil {
                    schedule(m.envelope, recipients: late.map(\.0), due: next, retry: true)
                }
                let warnAfter = settings.delayWarningTime
                if warnAfter > 0, !m.envelope.delayWarned, !m.envelope.sender.isEmpty, delay >= warnAfter {
                    m.envelope.delayWarned = true
                    // NOTIFY without DELAY (NEVER, or SUCCESS/FAILURE only) asks for no warning.
                    m.delayed += late.compactMap { index, r in
                        let rcpt = m.envelope.recipients[index]
                        guard rcpt.notify?.contains(.delay) ?? true else { return nil }
                        var late = FailedRecipient(address: rcpt.address, status: r.status, diagnostic: "smtp; \(r.reply)",
                                               remoteMTA: relay == "none" ? nil : "dns; \(relay)",
                                               originalRecipient: rcpt.orcpt)
                    late.bounceClass = bounceClass(status: r.status, reply: r.reply)
                    return late
                    }
                }
            } else {
                // Too long in the queue: the deferred recipients bounce with their last error.
                for (index, r) in late {
                    let expired = settings.bounceClasses == nil ? nil : BounceClassName.messageExpired
                    fail(&m, index, status: "4.4.7", reply: "message expired: \(r.reply)", relay: relay, bounceClass: expired)
                    event(index, .expired, dsn: "4.4.7", reply: r.reply, tls: attempt.tls, bounceClass: expired)
                }
            }
        }
        out.append(.log(.attemptEnded(id, delivered: sent, deferred: late.count, bounced: failed)))
        if let lane { shaper.countAttempt(lane, sent: sent, deferred: late.count) }
        m.inFlight -= 1
        attemptsChanged(id, m, now: now, into: &out)
        return out
    }

    /// After an attempt ended or never began: the postmaster's waiting action once none is in flight,
    /// then the write of the new state.
    mutating func attemptsChanged(_ id: QueueID, _ message: Live, now: Double, into out: inout [DeliveryAction]) {
        var m = message
        if m.inFlight == 0, let action = m.afterAttempts {
            m.afterAttempts = nil
            // Delivered to everyone meanwhile: nothing left to hold, delete or bounce.
            if m.envelope.hasPendingRecipients { out += apply(action, to: &m, now: now) }
        }
        persist(id, m, into: &out)
    }

    /// A live message taken out of `lives` to be changed and put back: the dictionary's copy is gone,
    /// so changing the envelope's recipients copies no array (this runs for every attempt). Any other
    /// state stays where it is (nil).
    private mutating func takeLive(_ id: QueueID) -> Live? {
        guard let i = lives.index(forKey: id) else { return nil }
        let life = lives.remove(at: i).value  // (a look at lives.values[i] would copy it)
        if case .live(let m) = life { return m }
        lives[id] = life
        return nil
    }

    /// The class of a failure (nil without a classifier). A next hop's reply reads "code enhanced text";
    /// Tern's own failures have no code and read as their enhanced code's class and "00"
    /// ("400 4.4.1 connect to …: connection refused").
    func bounceClass(status: String, reply: String) -> String? {
        guard let classifier = settings.bounceClasses else { return nil }
        let u = reply.utf8
        let hasCode = u.count >= 4 && u.prefix(3).allSatisfy { $0 >= 48 && $0 <= 57 }
            && (u.dropFirst(3).first == 32 || u.dropFirst(3).first == 45)
        return classifier.classify(hasCode ? reply : "\(status.prefix(1))00 \(status) \(reply)")
    }

    mutating func fail(_ m: inout Live, _ index: Int, status: String, reply: String, relay: String,
                       bounceClass: String? = nil) {
        m.envelope.recipients[index].state = .bounced
        m.envelope.recipients[index].lastReply = reply
        bounced += 1
        // NOTIFY without FAILURE (NEVER, or SUCCESS/DELAY only): bounced in silence.
        let rcpt = m.envelope.recipients[index]
        guard rcpt.notify?.contains(.failure) ?? true else { return }
        var failure = FailedRecipient(address: rcpt.address, status: status, diagnostic: "smtp; \(reply)",
                                      remoteMTA: relay == "none" ? nil : "dns; \(relay)", originalRecipient: rcpt.orcpt)
        failure.bounceClass = bounceClass
        m.failures.append(failure)
    }

    // MARK: - Spool writes

    /// Writes the message's new state; once no attempt is in flight, with the notices for what failed
    /// or is late, and as its removal when it is finished. One write per message at a time.
    mutating func persist(_ id: QueueID, now: Double) -> [DeliveryAction] {
        guard let m = takeLive(id) else { return [] }
        var out: [DeliveryAction] = []
        persist(id, m, into: &out)
        return out
    }

    /// `persist` for a live message the caller holds (taken out of `lives`, or about to replace its
    /// entry there): every path puts it (back) in `lives`.
    mutating func persist(_ id: QueueID, _ message: Live, into out: inout [DeliveryAction]) {
        var m = message
        if m.write != nil {
            m.write!.again = true
            lives[id] = .live(m)
            return
        }
        let idle = m.inFlight == 0
        let finished = idle && (m.deleted || !m.envelope.hasPendingRecipients)
        var notices: [Notice] = []
        if idle {
            // Never a notice to the null sender (RFC 5321 §4.5.5): a bounce is not bounced.
            if !m.failures.isEmpty && !m.envelope.sender.isEmpty { notices.append(.bounce(m.failures)) }
            if !m.delayed.isEmpty { notices.append(.delayWarning(m.delayed)) }
            if !m.relayed.isEmpty { notices.append(.relayed(m.relayed)) }
            m.failures = []
            m.delayed = []
            m.relayed = []
        }
        let answers = m.answers
        m.answers = []
        if finished {
            // Nothing to write first: the files go in the remover's next batch.
            out.append(notices.isEmpty ? .remove(id) : .write(SpoolWrite(envelope: m.envelope, notices: notices, remove: true)))
            lives[id] = .leaving(m, answers: answers)
            return
        }
        m.write = Write(answers: answers, notices: notices)
        out.append(.write(SpoolWrite(envelope: m.envelope, notices: notices, remove: false)))
        lives[id] = .live(m)
    }

    /// The write or removal asked for is done (`failure` nil) or failed. `notices` are the notices it
    /// put in the spool: they are queued now.
    public mutating func written(_ id: QueueID, failure: String?, notices: [Envelope], now: Double) -> [DeliveryAction] {
        var out: [DeliveryAction] = []
        if let failure { out.append(.log(.spoolWriteFailed(id, failure))) }
        for notice in notices {
            out.append(.log(.noticeQueued(original: id, notice: notice.id)))
            queue(notice, due: notice.arrival)
        }
        let answer: PostmasterAnswer = failure.map { .writeFailed($0) } ?? .done(jobs: nil)
        guard let i = lives.index(forKey: id) else { return out }
        switch lives.values[i] {
        case .leaving(let m, let answers):
            out += answers.map { .answer(ticket: $0, answer) }
            lives.remove(at: i)
            if failure == nil {
                let r = m.envelope.recipients
                out.append(.log(.removed(id, delivered: r.contains { $0.state == .delivered },
                                         bounced: r.contains { $0.state == .bounced }, deleted: m.deleted,
                                         residence: now - m.envelope.arrival)))
            }
            // A failed removal leaves the files: the next start reads them again.
            out.append(.forget(id))
        case .live(var m):
            guard let write = m.write else { return out }
            out += write.answers.map { .answer(ticket: $0, answer) }
            if failure != nil {
                // Still owed: the next write carries them (a bounce is never dropped for a full disk).
                for notice in write.notices {
                    switch notice {
                    case .bounce(let failed): m.failures = failed + m.failures
                    case .delayWarning(let late): m.delayed = late + m.delayed
                    case .relayed(let done): m.relayed = done + m.relayed
                    }
                }
            }
            m.write = nil
            if write.again {
                persist(id, m, into: &out)
            } else if m.inFlight == 0, m.answers.isEmpty {  // settle: the spool has it
                lives.remove(at: i)
                out.append(.forget(id))
            } else {
                lives.values[i] = .live(m)
            }
        case .loading:
            break
        }
        return out
    }

    /// A live message with nothing in flight is forgotten: the spool has it.
    mutating func settle(_ id: QueueID) -> [DeliveryAction] {
        guard case .live(let m) = lives[id], m.inFlight == 0, m.write == nil, m.answers.isEmpty else { return [] }
        lives[id] = nil
        return [.forget(id)]
    }

    // MARK: - The postmaster

    /// Flush, hold, release, delete or bounce one message; answered with `ticket`, at once or after the
    /// spool write that carries it out.
    public mutating func postmaster(_ action: QueueAction, _ id: QueueID, ticket: UInt64, now: Double) -> [DeliveryAction] {
        switch action {
        case .flush:
            if held[id] != nil { return [.answer(ticket: ticket, .held)] }
            let jobs = scheduler.queuedJobs(of: id)
            if !jobs.isEmpty {
                _ = scheduler.reschedule(jobs, due: now, shaping: &shaper)
                return [.log(.postmaster(id, .flush, pending: false)), .answer(ticket: ticket, .done(jobs: jobs.count))]
            }
            return [.answer(ticket: ticket, isInFlight(id) ? .pending : .notQueued)]
        case .release:
            guard held[id] != nil else { return [.answer(ticket: ticket, isKnown(id) ? .notHeld : .notQueued)] }
        case .hold:
            if held[id] != nil { return [.answer(ticket: ticket, .alreadyHeld)] }
        case .delete, .bounce:
            break
        }
        guard isKnown(id) else { return [.answer(ticket: ticket, .notQueued)] }
        switch lives[id] {
        case nil:
            lives[id] = .loading([.request(action, ticket: ticket)])
            return [.load(id)]
        case .loading(var waiting):
            waiting.append(.request(action, ticket: ticket))
            lives[id] = .loading(waiting)
            return []
        case .live:
            return act(action, on: id, ticket: ticket, now: now)
        case .leaving:
            return [.answer(ticket: ticket, .notQueued)]
        }
    }

    /// Flush every queued job of a domain (nil: of every domain); returns how many were made due.
    public mutating func flush(domain: String?, now: Double) -> Int {
        let jobs = domain.map { scheduler.queuedJobs(destination: $0) } ?? scheduler.allQueuedJobs()
        return scheduler.reschedule(jobs, due: now, shaping: &shaper)
    }

    /// Hold, release, delete or bounce a message that is in memory.
    mutating func act(_ action: QueueAction, on id: QueueID, ticket: UInt64, now: Double) -> [DeliveryAction] {
        guard case .live(var m) = lives[id], !m.deleted, m.envelope.hasPendingRecipients else {
            return [.answer(ticket: ticket, .notQueued)]
        }
        switch action {
        case .flush:
            return postmaster(.flush, id, ticket: ticket, now: now)
        case .release:
            guard held[id] != nil else { return [.answer(ticket: ticket, .notHeld)] }
            held[id] = nil
            m.envelope.held = false
            m.envelope.nextAttempt = now
            m.answers.append(ticket)
            lives[id] = .live(m)
            queue(m.envelope, due: now)
            return [.log(.postmaster(id, .release, pending: false))] + persist(id, now: now)
        case .hold, .delete, .bounce:
            // No more attempts from the queue either way.
            scheduler.remove(id: id)
            if m.inFlight > 0 {
                m.afterAttempts = action
                lives[id] = .live(m)
                return [.log(.postmaster(id, action, pending: true)), .answer(ticket: ticket, .pending)]
            }
            let out = apply(action, to: &m, now: now)
            m.answers.append(ticket)
            lives[id] = .live(m)
            return out + persist(id, now: now)
        }
    }

    /// Hold, delete or bounce a message with no attempt in flight; the caller writes it.
    mutating func apply(_ action: QueueAction, to m: inout Live, now: Double) -> [DeliveryAction] {
        let id = m.envelope.id
        scheduler.remove(id: id)
        switch action {
        case .hold:
            m.envelope.held = true
            held[id] = m.envelope.priority
        case .delete:
            m.deleted = true
            m.failures = []
            m.delayed = []
            m.relayed = []
            held[id] = nil
        case .bounce:
            var out: [DeliveryAction] = []
            let reply = "returned to the sender by the postmaster"
            let kind = settings.bounceClasses == nil ? nil : BounceClassName.adminBounce
            for i in m.envelope.recipients.indices where !m.envelope.recipients[i].state.isFinal {
                fail(&m, i, status: "5.0.0", reply: reply, relay: "none", bounceClass: kind)
                out.append(.log(.recipient(RecipientEvent(id: id, to: m.envelope.recipients[i].address, relay: "none",
                                                          tls: nil, delay: now - m.envelope.arrival, dsn: "5.0.0",
                                                          status: .bounced, reply: reply, bounceClass: kind,
                                                          sender: m.envelope.sender, attempt: m.envelope.attempts,
                                                          size: m.envelope.size, messageID: m.envelope.messageID))))
            }
            m.envelope.held = false
            held[id] = nil
            return out + [.log(.postmaster(id, .bounce, pending: false))]
        case .flush, .release:
            return []
        }
        return [.log(.postmaster(id, action, pending: false))]
    }

    // MARK: - What is known (`tern queue`, the metrics)

    /// In the queue: held, queued, or in memory and not finished.
    public func isKnown(_ id: QueueID) -> Bool {
        if held[id] != nil || scheduler.isQueued(id) { return true }
        switch lives[id] {
        case .loading: return true
        case .live(let m): return !m.deleted && m.envelope.hasPendingRecipients
        case .leaving, nil: return false
        }
    }

    /// An attempt of the message is running, or the message is being read for one.
    public func isInFlight(_ id: QueueID) -> Bool {
        switch lives[id] {
        case .loading: return true
        case .live(let m): return m.inFlight > 0
        case .leaving, nil: return false
        }
    }

    public func isHeld(_ id: QueueID) -> Bool { held[id] != nil }

    /// Finished, its removal under way: no longer part of the queue.
    public func isLeaving(_ id: QueueID) -> Bool {
        if case .leaving = lives[id] { return true }
        return false
    }

    /// The freshest envelope of a message in memory.
    public func envelope(of id: QueueID) -> Envelope? {
        switch lives[id] {
        case .live(let m), .leaving(let m, _): return m.envelope
        case .loading, nil: return nil
        }
    }

    /// Each message with an attempt in flight, with its priority.
    /// Messages in the queue: with a queued job, in flight, or held (a message both queued for one
    /// destination and in flight to another counts twice). Cheap: in-flight ones are few.
    public var messagesInQueue: Int {
        var inFlight = 0
        for life in lives.values { if case .live(let m) = life, m.inFlight > 0 { inFlight += 1 } }
        return scheduler.queuedMessages + inFlight + held.count
    }

    public func forEachInFlight(_ body: (QueueID, Int) -> Void) {
        for (id, life) in lives {
            if case .live(let m) = life, m.inFlight > 0 { body(id, m.envelope.priority) }
        }
    }

    /// Messages in memory (loading, live or leaving): bounded by the attempts and writes in flight.
    public var inMemory: Int { lives.count }
}
