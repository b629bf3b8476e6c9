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
    func isInFlight(_ id: QueueID) -> Bool { core.isInFlight(id) }

    func isHeld(_ id: QueueID) -> Bool { core.isHeld(id) }

    /// Finished, and its removal from the spool is waiting for the next batch: not listed any more.
    func isLeaving(_ id: QueueID) -> Bool { core.isLeaving(id) }

    /// Retry now: every queued job for a domain, or every queued job.
    func flush(domain: String?) -> QueueActionReply {
        let jobs = core.flush(domain: domain, now: now)
        log.info("flush by the postmaster: \(domain ?? "all destinations"), \(jobs) jobs")
        pump()
        return QueueActionReply(action: .flush, domain: domain, result: "done",
                                message: "\(jobs) delivery job(s) due now for \(domain ?? "every destination")",
                                jobs: jobs)
    }

    /// Flush, hold, release, delete or bounce one message; `done` runs on the loop thread, at once or
    /// once the spool write that carries the action out is done.
    func control(_ action: QueueAction, id: QueueID, _ done: @escaping (Result<QueueActionReply, AdminError>) -> Void) {
        let ticket = nextTicket
        nextTicket += 1
        requests[ticket] = { answer in done(Self.reply(to: action, id: id, answer)) }
        perform(core.postmaster(action, id, ticket: ticket, now: now))
        pump()
    }

    /// The core's answer in the admin API's words.
    static func reply(to action: QueueAction, id: QueueID, _ answer: PostmasterAnswer) -> Result<QueueActionReply, AdminError> {
        func done(_ message: String, jobs: Int? = nil) -> Result<QueueActionReply, AdminError> {
            .success(QueueActionReply(action: action, id: id.rawValue, result: "done", message: message, jobs: jobs))
        }
        switch answer {
        case .done(let jobs):
            switch action {
            case .flush: return done("\(id): \(jobs ?? 0) delivery job(s) due now", jobs: jobs ?? 0)
            case .release: return done("\(id) released, due now")
            case .hold, .delete, .bounce: return done("\(id) \(pastTense(action))")
            }
        case .alreadyHeld:
            return done("\(id) is already on hold")
        case .pending:
            if action == .flush {
                return .success(QueueActionReply(action: action, id: id.rawValue, result: "pending",
                                                 message: "\(id): a delivery attempt is running now", jobs: 0))
            }
            return .success(QueueActionReply(action: action, id: id.rawValue, result: "pending",
                                             message: "\(id): a delivery attempt is in flight; \(pastTense(action)) when it ends"))
        case .notQueued:
            return .failure(AdminError(404, "\(id): no such message in the queue"))
        case .notHeld:
            return .failure(AdminError(409, "\(id) is not on hold"))
        case .held:
            return .failure(AdminError(409, "\(id) is on hold: release it to deliver it"))
        case .writeFailed(let why):
            return .failure(AdminError(500, "\(id): spool write failed: \(why)"))
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

    /// Messages known to the delivery side by state and priority, for the queue gauges.
    func queueCounts() -> RelayMetrics.QueueCounts {
        var counts = RelayMetrics.QueueCounts()
        core.forEachInFlight { _, priority in counts.add(state: "active", priority: priority) }
        core.scheduler.forEachQueuedMessage { id, priority, retry in
            if core.isInFlight(id) { return }
            counts.add(state: retry ? "deferred" : "queued", priority: priority)
        }
        for (_, priority) in core.held { counts.add(state: "held", priority: priority) }
        return counts
    }

    /// The state of a message the spool holds, from what is known in memory.
    func state(of envelope: Envelope) -> String {
        QueueEntry.state(of: envelope, inFlight: isInFlight(envelope.id), held: isHeld(envelope.id))
    }

    /// The freshest envelope in memory (a message being delivered), if any.
    func envelopeInMemory(_ id: QueueID) -> Envelope? {
        core.envelope(of: id) ?? justArrived[id]?.envelope
    }
}
