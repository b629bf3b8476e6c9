// Writes one incoming message to the spool, off the loop thread.
//
// The session hands over chunks as DATA arrives; they are written by work items on libuv's thread
// pool, one at a time per message so the file stays in order. A small message (the common case) is
// written, fsynced and committed by a single work item at the end of DATA. Many sessions commit at
// once, so their commits go to the spool's journal in batches (JournalCommitter, below): one write and
// one fdatasync for all the messages that finished DATA while the previous batch was on disk. A large
// message, already partly written to its own file while it arrived, is committed there instead.

import DKIM
import Logging
import MailQueue
import SMTPProtocol
import UVRuntime

/// Why a message could not be signed (issue 17): the client gets 451 4.3.0 and nothing is queued.
struct DKIMSigningFailure: Error, CustomStringConvertible {
    let reason: String
    var description: String { "DKIM signing failed: \(reason)" }
}

final class MessageWriter {
    let loop: EventLoop
    let spool: Spool
    let journal: JournalCommitter?
    let id: QueueID
    var envelope: Envelope

    /// Chunks not yet handed to the pool.
    private var pending: [[UInt8]] = []
    private(set) var pendingBytes = 0
    /// Memory held by chunks not on disk yet (queued, being written, or in the journal's batch), by
    /// their capacity: what the session counts in the budget for buffered message data.
    private(set) var heldBytes = 0
    /// Set by `flush`: write what is queued even below `writeThreshold`.
    private var draining = false
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
    /// The message was made 7-bit MIME before it was signed (`signed`).
    private(set) var convertedToSevenBit = false
    /// The keys to sign with and the envelope's choice among them, when the session may have its mail
    /// signed (relay_networks or AUTH); nil: never signed (and no work for it).
    let dkim: DKIMRequest?
    /// For a message that goes to disk while it arrives: fed every chunk by the pool work that writes it.
    private var signing: DKIMMessageSigning?
    /// Called on the loop when a write finished and fewer bytes wait: the session may read again.
    var onDrained: (() -> Void)?

    /// Write in pieces this large while DATA is still arriving; smaller messages wait for the end.
    static let writeThreshold = 256 * 1024

    init(loop: EventLoop, spool: Spool, journal: JournalCommitter?, id: QueueID, envelope: Envelope,
         firstBytes: [UInt8], dkim: DKIMRequest? = nil) {
        self.loop = loop
        self.dkim = dkim
        self.spool = spool
        self.journal = journal
        self.id = id
        self.envelope = envelope
        append(firstBytes)
    }

    /// Bytes handed over (the Received field and the data as received, before any signature).
    private(set) var receivedBytes = 0

    func append(_ bytes: [UInt8]) {
        guard !aborted, !bytes.isEmpty else { return }
        receivedBytes += bytes.count
        pending.append(bytes)
        pendingBytes += bytes.count
        heldBytes += bytes.capacity
        if pendingBytes >= Self.writeThreshold { kick() }
    }

    /// Writes what is queued now, however little (the session stopped reading for the memory budget:
    /// what it holds must reach the disk for the budget to drain). The message goes to a file of its own.
    func flush() {
        guard !aborted, !pending.isEmpty, commitDone == nil else { return }
        draining = true
        kick()
    }

    /// Makes the message durable; `done` runs on the loop with the queue id, or nil and the error.
    func commit(_ done: @escaping (QueueID?, Error?) -> Void) {
        commitDone = done
        kick()
    }

    /// Forget the message: remove whatever was written.
    func abort() {
        aborted = true
        heldBytes -= pending.reduce(0) { $0 + $1.capacity }
        pending = []
        pendingBytes = 0
        kick()
    }

    /// The message with its DKIM-Signature fields in front (unchanged when its From: domain has no
    /// keys); a failure is a DKIMSigningFailure (451). Runs on the pool.
    /// An 8BITMIME message that gets a signature is made 7-bit MIME first (RFC 6376 §5.3): converted
    /// later for a next hop without 8BITMIME, its body would no longer match the signature. `converted`
    /// says it was (its lines are new, so not known to be wire-ready). Not MIME, or 8-bit header
    /// fields: signed as it is.
    static func signed(_ message: [UInt8], _ request: DKIMRequest, time: UInt64, eightBit: Bool) throws
        -> (bytes: [UInt8], converted: Bool) {
        var message = message, converted = false
        if eightBit, DKIMMessageSigning.wouldSign(message, request),
           case let (sevenBit, .converted?) = convertToSevenBit(message) {
            message = sevenBit
            converted = true
        }
        let fields: [UInt8]
        do {
            fields = try DKIMMessageSigning.sign(message, request, time: time)
        } catch {
            throw DKIMSigningFailure(reason: "\(error)")
        }
        return (fields.isEmpty ? message : fields + message, converted)
    }

    /// The message in one array: the only chunk as it is (the common case, see
    /// ServerSession.dataChunk), or the chunks copied together.
    static func joined(_ chunks: [[UInt8]]) -> [UInt8] {
        if chunks.count == 1 { return chunks[0] }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(chunks.reduce(0) { $0 + $1.count })
        for chunk in chunks { bytes.append(contentsOf: chunk) }
        return bytes
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
        guard committing || pendingBytes >= Self.writeThreshold || (draining && !pending.isEmpty) else { return }
        draining = false
        let chunks = pending
        pending = []
        pendingBytes = 0
        let chunksHeld = chunks.reduce(0) { $0 + $1.capacity }
        busy = true
        let spool = self.spool
        let id = self.id
        var envelope = self.envelope
        var file = self.file
        var failure = self.failure
        let whole = committing && !spilled
        if whole, file == nil, failure == nil, let journal {
            busy = true
            guard let request = dkim else {
                commitToJournal(journal, chunks: chunks, held: chunksHeld)
                return
            }
            // Signed in a work item of its own, before the journal's batch: the signatures of many
            // messages run on all the pool's threads instead of one after another in the batch's work,
            // and a message that cannot be signed fails alone.
            var signed: [UInt8] = []
            var converted = false
            var signFailure: Error?
            let time = UInt64(max(0, envelope.arrival))
            let eightBit = envelope.isEightBitMIME
            loop.queueWork({
                do {
                    (signed, converted) = try MessageWriter.signed(MessageWriter.joined(chunks), request, time: time,
                                                                   eightBit: eightBit)
                } catch {
                    signFailure = error
                }
            }, done: { [self] in
                guard let signFailure else {
                    convertedToSevenBit = converted
                    commitToJournal(journal, chunks: [signed], held: chunksHeld)
                    return
                }
                busy = false
                heldBytes -= chunksHeld
                self.failure = signFailure
                let done = commitDone!
                commitDone = nil
                done(nil, signFailure)
            })
            return
        }
        if !committing { spilled = true }
        if spilled, signing == nil, let request = dkim { signing = DKIMMessageSigning(request) }
        let signing = self.signing
        let request = dkim
        let time = UInt64(max(0, envelope.arrival))
        let eightBit = envelope.isEightBitMIME
        var bytes: [UInt8] = []
        var converted = false
        loop.queueWork({
            // On a pool thread: only the captured values are touched here.
            guard failure == nil else { return }
            do {
                if file == nil { file = try spool.create(id) }
                if whole {
                    // The whole message: one write, and the bytes stay for delivery.
                    bytes = MessageWriter.joined(chunks)
                    if let request { (bytes, converted) = try MessageWriter.signed(bytes, request, time: time, eightBit: eightBit) }
                    try file!.write(bytes)
                } else {
                    for chunk in chunks {
                        try file!.write(chunk)
                        signing?.update(chunk)
                    }
                }
                if committing {
                    if let signing, !whole {
                        // Spilled: the fields go in front of what is on disk (a copy of the file).
                        let fields: [UInt8]
                        do {
                            fields = try signing.finish(time: time)
                        } catch {
                            throw DKIMSigningFailure(reason: "\(error)")
                        }
                        if !fields.isEmpty { file = try spool.prepend(fields, to: file!) }
                    }
                    envelope = try spool.commit(file!, envelope: envelope)
                }
            } catch {
                failure = error
            }
        }, done: { [self] in
            busy = false
            heldBytes -= chunksHeld
            self.file = file
            self.failure = failure
            self.envelope = envelope
            if committing {
                let done = commitDone!
                commitDone = nil
                if whole && failure == nil {
                    committedBytes = bytes
                    convertedToSevenBit = converted
                }
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

extension MessageWriter {
    /// The whole message through the journal's next batch.
    fileprivate func commitToJournal(_ journal: JournalCommitter, chunks: [[UInt8]], held: Int) {
        let id = self.id
        journal.commit(envelope, chunks: chunks) { [self] stored, bytes, error in
            busy = false
            heldBytes -= held
            let done = commitDone!
            commitDone = nil
            if let stored {
                self.envelope = stored
                committedBytes = bytes
            } else {
                self.failure = error
            }
            done(stored == nil ? nil : id, error)
        }
    }
}

/// The loop's side of the spool journal (Spool.commit(journaling:)): batches the commits of every
/// session into one pool work item at a time, so many messages share one write and one fdatasync.
/// Messages that finish DATA while a batch is on disk form the next batch; under load the batches grow
/// by themselves, and a lone message waits for nothing but its own fdatasync.
final class JournalCommitter {
    typealias Done = (Envelope?, [UInt8], Error?) -> Void
    let loop: EventLoop
    let spool: Spool
    private var waiting: [(envelope: Envelope, chunks: [[UInt8]], done: Done)] = []
    private var busy = false
    private var compactionTimer: Timer?
    private var compacting = false

    /// Bytes per batch at most: a burst of large messages is written in several batches.
    static let maxBatchBytes = 8 << 20

    init(loop: EventLoop, spool: Spool, log: Logger) {
        self.loop = loop
        self.spool = spool
        // Every 10 s: move out the few messages that keep the oldest journal segment on disk.
        let timer = Timer(loop: loop)
        timer.start(afterMilliseconds: 10_000, repeatMilliseconds: 10_000) { [unowned self] in
            guard !compacting else { return }
            compacting = true
            var moved = 0
            var failure: Error?
            let now = loop.clock.monotonicSeconds()
            loop.queueWork({
                do { moved = try spool.compactJournal(now: now) } catch { failure = error }
            }, done: { [unowned self] in
                compacting = false
                if let failure { log.error("spool: journal compaction failed: \(failure)") }
                if moved > 0 { log.info("spool: moved \(moved) messages out of the oldest journal segment") }
            })
        }
        compactionTimer = timer
    }

    /// Queues a message for the next batch; `done` runs on the loop with the stored envelope and the
    /// message bytes, or nil and the error.
    func commit(_ envelope: Envelope, chunks: [[UInt8]], done: @escaping Done) {
        waiting.append((envelope, chunks, done))
        kick()
    }

    private func kick() {
        guard !busy, !waiting.isEmpty else { return }
        var bytes = 0
        var take = 0
        while take < waiting.count && (take == 0 || bytes < Self.maxBatchBytes) {
            bytes += waiting[take].chunks.reduce(0) { $0 + $1.count }
            take += 1
        }
        let batch = Array(waiting[..<take])
        waiting.removeFirst(take)
        busy = true
        let spool = self.spool
        let envelopes = batch.map(\.envelope)
        let chunkLists = batch.map(\.chunks)
        var messages: [[UInt8]] = []
        var stored: [Envelope] = []
        var failure: Error?
        loop.queueWork({
            // On a pool thread: only the captured values are touched here.
            messages = chunkLists.map(MessageWriter.joined)
            do {
                stored = try spool.commit(journaling: Array(zip(envelopes, messages)))
            } catch {
                failure = error
            }
        }, done: { [self] in
            busy = false
            for (i, item) in batch.enumerated() {
                if let failure {
                    item.done(nil, [], failure)
                } else {
                    item.done(stored[i], messages[i], nil)
                }
            }
            kick()
        })
    }

    func close() {
        compactionTimer?.close()
        compactionTimer = nil
    }
}
