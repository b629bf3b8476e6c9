// Writes one incoming message to the spool, off the loop thread.
//
// The session hands over chunks as DATA arrives; they are written by work items on libuv's thread
// pool, one at a time per message so the file stays in order. A small message (the common case) is
// written, fsynced and committed by a single work item at the end of DATA. Many sessions commit at
// once, so their fsyncs overlap on the pool instead of queueing behind each other.

import MailQueue
import UVRuntime

final class MessageWriter {
    let loop: EventLoop
    let spool: Spool
    let id: QueueID
    var envelope: Envelope

    /// Chunks not yet handed to the pool.
    private var pending: [[UInt8]] = []
    private(set) var pendingBytes = 0
    private var busy = false
    private var file: SpoolFile?
    private var failure: Error?
    private var commitDone: ((QueueID?, Error?) -> Void)?
    private var aborted = false
    /// Set once bytes went to disk before the end of DATA: the message is no longer all in memory.
    private var spilled = false
    /// After a commit of a message that never spilled: its bytes, for the delivery side to start from
    /// without reading the file back.
    private(set) var committedBytes: [UInt8]?
    /// Called on the loop when a write finished and fewer bytes wait: the session may read again.
    var onDrained: (() -> Void)?

    /// Write in pieces this large while DATA is still arriving; smaller messages wait for the end.
    static let writeThreshold = 256 * 1024

    init(loop: EventLoop, spool: Spool, id: QueueID, envelope: Envelope, firstBytes: [UInt8]) {
        self.loop = loop
        self.spool = spool
        self.id = id
        self.envelope = envelope
        append(firstBytes)
    }

    func append(_ bytes: [UInt8]) {
        guard !aborted, !bytes.isEmpty else { return }
        pending.append(bytes)
        pendingBytes += bytes.count
        if pendingBytes >= Self.writeThreshold { kick() }
    }

    /// Makes the message durable; `done` runs on the loop with the queue id, or nil and the error.
    func commit(_ done: @escaping (QueueID?, Error?) -> Void) {
        commitDone = done
        kick()
    }

    /// Forget the message: remove whatever was written.
    func abort() {
        aborted = true
        pending = []
        pendingBytes = 0
        kick()
    }

    private func kick() {
        guard !busy else { return }
        if aborted {
            guard let file else { return }
            self.file = nil
            busy = true
            let spool = self.spool
            loop.queueWork({ spool.discard(file) }, done: { [self] in busy = false })
            return
        }
        let committing = commitDone != nil
        guard committing || pendingBytes >= Self.writeThreshold else { return }
        let chunks = pending
        pending = []
        pendingBytes = 0
        busy = true
        let spool = self.spool
        let id = self.id
        var envelope = self.envelope
        var file = self.file
        var failure = self.failure
        let whole = committing && !spilled
        if !committing { spilled = true }
        var bytes: [UInt8] = []
        loop.queueWork({
            // On a pool thread: only the captured values are touched here.
            guard failure == nil else { return }
            do {
                if file == nil { file = try spool.create(id) }
                if whole {
                    // The whole message: one write, and the bytes stay for delivery.
                    bytes.reserveCapacity(chunks.reduce(0) { $0 + $1.count })
                    for chunk in chunks { bytes.append(contentsOf: chunk) }
                    try file!.write(bytes)
                } else {
                    for chunk in chunks { try file!.write(chunk) }
                }
                if committing {
                    envelope = try spool.commit(file!, envelope: envelope)
                }
            } catch {
                failure = error
            }
        }, done: { [self] in
            busy = false
            self.file = file
            self.failure = failure
            self.envelope = envelope
            if committing {
                let done = commitDone!
                commitDone = nil
                if whole && failure == nil { committedBytes = bytes }
                if failure != nil, let file {
                    self.file = nil
                    loop.queueWork({ spool.discard(file) }, done: {})
                }
                done(failure == nil ? id : nil, failure)
            } else {
                onDrained?()
                kick()
            }
        })
    }
}
