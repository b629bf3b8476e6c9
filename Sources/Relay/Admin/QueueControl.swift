// What the postmaster can do to queued mail (`tern queue ...` through the admin endpoint), done on
// the loop thread by the DeliveryManager:
//
//   flush    retry now: the message's queued jobs (or a domain's, or all) become due at once
//   hold     keep it, never try it, until released; `held 1` in the envelope, so it outlives a restart
//            (Postfix's hold queue)
//   release  back from hold, due at once
//   delete   remove without telling the sender
//   bounce   return to the sender with a DSN for every recipient still to deliver, then remove
//
// A message with a delivery attempt in flight is not pulled out from under its connection: the action
// is recorded and carried out when the attempt ends (the answer says so, with status 202). Hold,
// delete and bounce go through `persist`, so spool writes for one message stay one at a time and a
// bounce is durable before the original goes. The message bytes kept in `justArrived` are dropped
// (taken by `withActiveMessage`, freed once the message is idle). The answer waits for the spool write.

import Logging
import MailQueue

/// The answer to an action: `result` is "done", or "pending" when it waits for an attempt in flight.
public struct QueueActionReply: Codable, Equatable, Sendable {
    public var action: String
    public var id: String?
    public var domain: String?
    public var result: String
    public var message: String
    /// Delivery jobs made due (flush).
    public var jobs: Int?

    public init(action: QueueAction, id: String? = nil, domain: String? = nil, result: String, message: String,
                jobs: Int? = nil) {
        self.action = action.rawValue
        self.id = id
        self.domain = domain
        self.result = result
        self.message = message
        self.jobs = jobs
    }

    public var pending: Bool { result == "pending" }
}

/// The answer to an action on a selection (POST /queue/ACTION?...): one reply per message selected,
/// whose `result` is "done", "pending", "gone" (it left the queue between the selection and the action:
/// delivered, expired) or "failed" (its message says why).
public struct QueueBulkReply: Codable, Equatable, Sendable {
    public var action: String
    public var selected: Int
    public var done: Int
    public var pending: Int
    public var gone: Int
    public var failed: Int
    public var results: [QueueActionReply]

    public init(action: QueueAction, results: [QueueActionReply]) {
        self.action = action.rawValue
        self.results = results
        selected = results.count
        done = results.count { $0.result == "done" }
        pending = results.count { $0.result == "pending" }
        gone = results.count { $0.result == "gone" }
        failed = results.count { $0.result == "failed" }
    }
}

extension DeliveryManager {
    /// The queue is still being read from the spool at start-up: mail already there is not scheduled yet.
    var isLoadingSpool: Bool { arrivedDuringScan != nil }

    /// A delivery attempt of the message is running (or its data is being read for one).
    func isInFlight(_ id: QueueID) -> Bool {
        (active[id]?.jobsInFlight ?? 0) > 0 || loading[id] != nil
    }

    func isHeld(_ id: QueueID) -> Bool { held[id] != nil }

    /// Finished, and its removal from the spool is waiting for the next batch: not listed any more.
    func isLeaving(_ id: QueueID) -> Bool { active[id]?.leaving ?? false }

    private func isKnown(_ id: QueueID) -> Bool {
        held[id] != nil || scheduler.isQueued(id) || loading[id] != nil || justArrived[id] != nil
            || (active[id].map { !$0.deleted && !$0.removed && $0.envelope.hasPendingRecipients } ?? false)
    }

    /// Retry now: one message.
    func flush(id: QueueID) throws -> QueueActionReply {
        if held[id] != nil { throw AdminError(409, "\(id) is on hold: release it to deliver it") }
        let jobs = scheduler.queuedJobs(of: id)
        if !jobs.isEmpty {
            scheduler.reschedule(jobs, due: now)
            log.info("\(id): flushed by the postmaster")
            pump()
            return QueueActionReply(action: .flush, id: id.rawValue, result: "done",
                                    message: "\(id): \(jobs.count) delivery job(s) due now", jobs: jobs.count)
        }
        if isInFlight(id) {
            return QueueActionReply(action: .flush, id: id.rawValue, result: "pending",
                                    message: "\(id): a delivery attempt is running now", jobs: 0)
        }
        throw AdminError(404, "\(id): no such message in the queue")
    }

    /// Retry now: every queued job for a domain, or every queued job.
    func flush(domain: String?) -> QueueActionReply {
        let jobs = domain.map { scheduler.queuedJobs(destination: $0) } ?? scheduler.allQueuedJobs()
        scheduler.reschedule(jobs, due: now)
        log.info("flush by the postmaster: \(domain ?? "all destinations"), \(jobs.count) jobs")
        pump()
        return QueueActionReply(action: .flush, domain: domain, result: "done",
                                message: "\(jobs.count) delivery job(s) due now for \(domain ?? "every destination")",
                                jobs: jobs.count)
    }

    /// Hold, release, delete or bounce one message; `done` runs on the loop thread.
    func control(_ action: QueueAction, id: QueueID, _ done: @escaping (Result<QueueActionReply, AdminError>) -> Void) {
        switch action {
        case .flush:
            done(Result { try flush(id: id) }.mapError { $0 as? AdminError ?? AdminError(500, "\($0)") })
            return
        case .release:
            guard held[id] != nil else {
                done(.failure(isKnown(id) ? AdminError(409, "\(id) is not on hold") : AdminError(404, "\(id): no such message in the queue")))
                return
            }
        case .hold:
            if held[id] != nil {
                done(.success(QueueActionReply(action: action, id: id.rawValue, result: "done", message: "\(id) is already on hold")))
                return
            }
        case .delete, .bounce:
            break
        }
        guard isKnown(id) else {
            done(.failure(AdminError(404, "\(id): no such message in the queue")))
            return
        }
        withActiveMessage(id) { [self] message in
            guard let message, !message.deleted, message.envelope.hasPendingRecipients else {
                done(.failure(AdminError(404, "\(id): no such message in the queue")))
                return
            }
            if action == .release {
                message.afterWrite.append { failure in
                    if let failure { return done(.failure(AdminError(500, "\(id): spool write failed: \(failure)"))) }
                    done(.success(QueueActionReply(action: action, id: id.rawValue, result: "done", message: "\(id) released, due now")))
                }
                release(message)
                return
            }
            // No more attempts from the queue either way.
            scheduler.remove(id: id)
            if message.jobsInFlight > 0 {
                message.pendingAction = action
                log.info("\(id): \(action.rawValue) by the postmaster, when the attempt in flight ends")
                done(.success(QueueActionReply(action: action, id: id.rawValue, result: "pending",
                                               message: "\(id): a delivery attempt is in flight; \(Self.pastTense(action)) when it ends")))
                return
            }
            apply(action, to: message)
            // Answered once the spool says so: a hold is in the envelope, a bounce is queued.
            message.afterWrite.append { failure in
                if let failure { return done(.failure(AdminError(500, "\(id): spool write failed: \(failure)"))) }
                done(.success(QueueActionReply(action: action, id: id.rawValue, result: "done", message: "\(id) \(Self.pastTense(action))")))
            }
            persist(message)
        }
    }

    static func pastTense(_ action: QueueAction) -> String {
        switch action {
        case .flush: return "flushed"
        case .hold: return "held"
        case .release: return "released"
        case .delete: return "deleted"
        case .bounce: return "returned to the sender"
        }
    }

    /// Carries out hold, delete or bounce on a message with no attempt in flight; the caller persists.
    func apply(_ action: QueueAction, to message: ActiveMessage) {
        let id = message.envelope.id
        scheduler.remove(id: id)
        switch action {
        case .hold:
            message.envelope.held = true
            held[id] = message.envelope.priority
            log.info("\(id): held by the postmaster")
        case .delete:
            message.deleted = true
            message.failures = []
            message.delayed = []
            held.removeValue(forKey: id)
            log.info("\(id): deleted by the postmaster")
        case .bounce:
            var envelope = message.envelope
            for i in envelope.recipients.indices where !envelope.recipients[i].state.isFinal {
                bounce(&envelope, i, status: "5.0.0", reply: "returned to the sender by the postmaster",
                       relay: "none", message: message)
                logResult(id, to: envelope.recipients[i].address, relay: "none", tls: nil,
                          delay: Self.seconds(now - envelope.arrival), dsn: "5.0.0", status: "bounced",
                          reply: "returned to the sender by the postmaster")
            }
            envelope.held = false
            message.envelope = envelope
            held.removeValue(forKey: id)
        case .flush, .release:
            break
        }
    }

    private func release(_ message: ActiveMessage) {
        let id = message.envelope.id
        held.removeValue(forKey: id)
        message.envelope.held = false
        message.envelope.nextAttempt = now
        log.info("\(id): released by the postmaster")
        persist(message)
        enqueue(message.envelope, due: now)
    }

    /// Messages known to the delivery side by state and priority, for the queue gauges.
    func queueCounts() -> RelayMetrics.QueueCounts {
        var counts = RelayMetrics.QueueCounts()
        for (_, m) in active where m.jobsInFlight > 0 { counts.add(state: "active", priority: m.envelope.priority) }
        scheduler.forEachQueuedMessage { id, priority, retry in
            if let m = active[id], m.jobsInFlight > 0 { return }
            counts.add(state: retry ? "deferred" : "queued", priority: priority)
        }
        for (_, priority) in held { counts.add(state: "held", priority: priority) }
        return counts
    }

    /// The state of a message the spool holds, from what is known in memory.
    func state(of envelope: Envelope) -> String {
        QueueEntry.state(of: envelope, inFlight: isInFlight(envelope.id), held: isHeld(envelope.id))
    }

    /// The freshest envelope in memory (a message being delivered), if any.
    func envelopeInMemory(_ id: QueueID) -> Envelope? {
        active[id]?.envelope ?? justArrived[id]?.envelope
    }
}
