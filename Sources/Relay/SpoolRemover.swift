// Takes finished messages out of the spool in batches, off the loop thread.
//
// A delivered message costs one small write to leave the spool (a journal done record, or two unlinks),
// and handing each to the thread pool on its own cost more than the write: a wake of a pool thread, a
// wake of the loop and two context switches per message. Like JournalCommitter, one pool work item
// runs at a time, for every message that finished while the previous batch was on the pool
// (Spool.remove(_ ids:): one write of done records for all the journaled ones).
//
// Unlike a commit, nobody waits for a removal: the message was delivered and its log line is written.
// So batches also start at most every `interval` milliseconds: a lone message goes at once, and under
// load the messages of that many milliseconds share one work item instead of one or two each (a pool
// round trip is so short that the next finished message rarely arrives while one is in flight).
// The cost is that finished messages stay in memory, and listed in the spool, that much longer.
// After `close` (the server stopping) each removal starts at once, so none waits on a timer.

import MailQueue
import UVRuntime

final class SpoolRemover {
    typealias Done = (Error?) -> Void
    let loop: EventLoop
    let spool: Spool
    private var waiting: [(id: QueueID, done: Done)] = []
    private var busy = false
    private var idleWaiters: [() -> Void] = []
    /// Fires when the next batch may start; nil once closed.
    private var timer: Timer?
    /// Loop time (ms) when the last batch started.
    private var lastStart: UInt64 = 0

    /// Asked before each batch and waited for: the webhooks' outboxes hold the messages' events on
    /// disk before the messages leave the spool (a crash must not lose a delivery's event).
    var gate: ((@escaping () -> Void) -> Void)?

    /// Milliseconds between the starts of two batches, at least.
    static let interval: UInt64 = 10
    /// Ids per batch at most: keeps one work item's write and the loop's answers to it short.
    static let maxBatch = 4096

    init(loop: EventLoop, spool: Spool) {
        self.loop = loop
        self.spool = spool
        timer = Timer(loop: loop)
    }

    /// From now on each removal starts as soon as the previous batch is done.
    func close() {
        timer?.close()
        timer = nil
        schedule()
    }

    /// Runs `body` once no removal waits or runs (at once if none does): the server stops only then,
    /// or the messages of the last batch would be delivered again after the restart.
    func whenIdle(_ body: @escaping () -> Void) {
        if !busy && waiting.isEmpty { return body() }
        idleWaiters.append(body)
        schedule()
    }

    /// Queues `id` for the next batch; `done` runs on the loop once it is gone from the spool, or with
    /// the error.
    func remove(_ id: QueueID, done: @escaping Done) {
        waiting.append((id, done))
        schedule()
    }

    /// Starts a batch now if one may start, else makes sure the timer will.
    private func schedule() {
        guard !busy, !waiting.isEmpty else { return }
        guard let timer, !timer.isClosed else { return start() }
        let now = loop.nowMilliseconds
        let due = lastStart + Self.interval
        if now >= due || waiting.count >= Self.maxBatch {
            timer.stop()
            return start()
        }
        if !timer.isActive {
            timer.start(afterMilliseconds: due - now) { [weak self] in self?.schedule() }
        }
    }

    private func start() {
        let take = min(waiting.count, Self.maxBatch)
        let batch = Array(waiting[..<take])
        waiting.removeFirst(take)
        busy = true
        lastStart = loop.nowMilliseconds
        let ids = batch.map(\.id)
        guard let gate else { return run(batch, ids) }
        gate { [self] in run(batch, ids) }
    }

    private func run(_ batch: [(id: QueueID, done: Done)], _ ids: [QueueID]) {
        let spool = self.spool
        var failures: [QueueID: Error] = [:]
        loop.queueWork({
            // On a pool thread: only the captured values are touched here.
            failures = spool.remove(ids)
        }, done: { [self] in
            // Answers first: removals they start join the next batch instead of running alone.
            for item in batch { item.done(failures[item.id]) }
            busy = false
            schedule()
            if !busy && waiting.isEmpty && !idleWaiters.isEmpty {
                let waiters = idleWaiters
                idleWaiters = []
                for body in waiters { body() }
            }
        })
    }
}
