// Webhook.swift: message events POSTed to an application ([[events.webhook]], issue 19), through a
// durable outbox in the spool so that a webhook down for an hour, or a crash, loses nothing.
//
//   spool/outbox/NAME/00000001.jsonl …   events, one JSON object a line, appended and fdatasynced
//   spool/outbox/NAME/cursor             "SEGMENT OFFSET": the first event not yet acknowledged
//
// Events are appended on the thread pool, one write and one fdatasync for all that arrived meanwhile
// (as the journal batches messages). The crash rules are the mail's: a message leaves the spool only
// once its events are on disk (SpoolRemover asks `whenSynced`), and a client hears 250 (or the
// injection API's 200) only once its reception events are.
//
// Sending: at most one POST in flight per webhook, a JSON array of up to batch_size events, sent when
// that many wait or `interval` after the first of them. 2xx: the cursor moves past them (written and
// synced), and files wholly sent are removed. Anything else (a refused connection, a timeout, a 5xx,
// a 4xx): the same batch again after a backoff that doubles from 1 s to 5 minutes, with one log line
// when the webhook fails and one when it recovers. Delivery is at least once: a crash between the 2xx
// and the cursor's write sends that batch again.
//
// Bounded: the outbox's files together are at most max_outbox_size; past it the oldest file goes,
// its unsent events counted as dropped (tern_webhook_events_total{outcome="dropped"}) with a log line.
// Events waiting in memory for the disk are bounded too (16 MiB; past it they are dropped and counted).

import Glibc
import Logging
import MailQueue
import UVRuntime

final class Webhook {
    let config: WebhookConfig
    let directory: String
    private let loop: EventLoop
    private let client: HTTPClient
    private let log: Logger
    private let metrics: RelayMetrics
    private let wanted: Set<String>

    /// Files of events, oldest first; the last is the one appended to.
    private var segments: [Segment] = []
    struct Segment {
        var number: Int
        /// Bytes on disk (synced).
        var size: Int
        /// Events in it.
        var lines: Int
    }
    /// The first unacknowledged event: a file and an offset in it, and how many events of that file
    /// come before it (to count what a dropped file loses).
    private var cursor = (segment: 1, offset: 0, linesBefore: 0)
    /// Synced events not yet acknowledged.
    private(set) var unsent = 0
    private let segmentSize: Int

    // Appending.
    private var loaded = false
    private var pending: [UInt8] = []
    private var pendingLines = 0
    private var writing = false
    private var fd: Int32 = -1
    private var emitted = 0
    private var synced = 0
    private var syncWaiters: [(upTo: Int, done: () -> Void)] = []
    static let maxPending = 16 << 20
    private var overflowing = false

    // Sending.
    private var sending = false
    private var timer: UVRuntime.Timer
    private var timerArmed = false
    private var backoff: Double = 0
    private var failingSince: Double?
    private var closed = false
    private var cursorWriting = false
    private var closeWaiters: [() -> Void] = []

    init(config: WebhookConfig, spoolPath: String, loop: EventLoop, client: HTTPClient, log: Logger, metrics: RelayMetrics) {
        self.config = config
        self.loop = loop
        self.client = client
        self.log = log
        self.metrics = metrics
        wanted = Set(config.events)
        wantsAll = wanted.isSuperset(of: EventsConfig.types)
        directory = spoolPath + "/outbox/" + config.name
        segmentSize = min(4 << 20, max(4096, config.maxOutboxSize / 8))
        timer = UVRuntime.Timer(loop: loop)
    }

    func wants(_ type: String) -> Bool { wantsAll || wanted.contains(type) }
    private let wantsAll: Bool

    // MARK: Loading (once, at start)

    /// Reads the outbox's directory (creating it) and drops a last line cut short by a crash. At start-up,
    /// before the loop runs: a problem here is a start-up error.
    func load() throws {
        switch OutboxState.load(directory, segmentSize: segmentSize) {
        case .failure(let error):
            throw ConfigError(key: "events.webhook", message: "\(config.name): \(directory): \(error.message)")
        case .success(let state):
            segments = state.segments
            cursor = state.cursor
            fd = state.fd
            unsent = state.segments.filter { $0.number >= state.cursor.segment }.reduce(0) { $0 + $1.lines }
                - state.cursor.linesBefore
            loaded = true
        }
    }

    /// Starts sending what the outbox holds.
    func start() {
        metrics.webhookOutbox(config.name, bytes: totalBytes)
        if unsent > 0 { log.info("webhook \(config.name): \(unsent) events waiting in the outbox") }
        flush()
        schedule()
    }

    private var totalBytes: Int { segments.reduce(0) { $0 + $1.size } + pending.count }

    // MARK: Appending

    func emit(_ line: [UInt8]) {
        guard pending.count < Self.maxPending, !closed else {
            if !closed && !overflowing {
                overflowing = true
                log.error("webhook \(config.name): \(Self.maxPending) bytes of events wait for the disk; events are dropped until they are written")
            }
            metrics.webhookEvents(config.name, outcome: "dropped", count: 1)
            return
        }
        overflowing = false
        pending += line
        pendingLines += 1
        emitted += 1
        // Written when someone waits for it (a 250, a removal), when a file's worth is pending, or
        // after `flushDelay`: fewer, larger writes and syncs than one per event.
        if pending.count >= segmentSize { flush() } else { armFlush() }
    }

    /// `done` runs once every event emitted so far is on disk (at once when none waits).
    func whenSynced(_ done: @escaping () -> Void) {
        guard synced < emitted else { return done() }
        syncWaiters.append((emitted, done))
        flush()
    }

    /// Writes what is pending now (its events will be waited for soon).
    func flushNow() { flush() }

    /// Events no one waits for are written within this many milliseconds.
    static let flushDelay: UInt64 = 20
    /// Milliseconds between the starts of two writes, at least.
    static let minWriteInterval: UInt64 = 5
    private var lastWriteStart: UInt64 = 0
    private var flushTimer: UVRuntime.Timer?

    private func armFlush() {
        guard loaded, !writing else { return }
        flush(within: Self.flushDelay)
    }

    /// Makes sure a flush happens within `milliseconds` (the timer is moved earlier, never later).
    private func flush(within milliseconds: UInt64) {
        if flushTimer == nil { flushTimer = UVRuntime.Timer(loop: loop) }
        let due = loop.nowMilliseconds + milliseconds
        if flushTimer?.isActive == true && flushDue <= due { return }
        flushDue = due
        flushTimer?.start(afterMilliseconds: milliseconds) { [weak self] in self?.flush() }
    }
    private var flushDue: UInt64 = 0

    private func flush() {
        guard loaded, !writing, !pending.isEmpty else { return }
        // One write (and sync) every `minWriteInterval` at most: under load each carries the events of
        // that many milliseconds, instead of one write per turn of the loop.
        let now = loop.nowMilliseconds
        if now < lastWriteStart + Self.minWriteInterval && pending.count < segmentSize && !closed {
            return flush(within: lastWriteStart + Self.minWriteInterval - now)
        }
        lastWriteStart = now
        flushTimer?.stop()
        writing = true
        // At most a file's worth at a time (whole lines), so that the bound holds within one file.
        var take = pending.count
        if take > segmentSize, let cut = pending[..<segmentSize].lastIndex(of: 10) { take = cut + 1 }
        let bytes: [UInt8], lines: Int
        if take == pending.count {
            (bytes, lines) = (pending, pendingLines)
            pending = []
            pending.reserveCapacity(bytes.count)
        } else {
            bytes = Array(pending[..<take])
            lines = bytes.reduce(0) { $0 + ($1 == 10 ? 1 : 0) }
            pending.removeFirst(take)
        }
        pendingLines -= lines
        let directory = self.directory, segmentSize = self.segmentSize
        var segment = segments.last!
        var fd = self.fd
        let roll = segment.size > 0 && segment.size + bytes.count > segmentSize
        // Room is made before the write: the files never hold more than max_outbox_size.
        let dropped = enforceBound(rolling: roll)
        var failure: String?
        loop.queueWork({
            for n in dropped { unlink(OutboxState.segmentPath(directory, n)) }
            if roll || fd < 0 {
                if fd >= 0 { Glibc.close(fd) }
                if roll { segment = Segment(number: segment.number + 1, size: 0, lines: 0) }
                fd = OutboxState.openSegment(directory, segment.number, preallocate: segmentSize)
                if fd < 0 { failure = String(cString: strerror(errno)); return }
                OutboxState.syncDirectory(directory)
            }
            failure = SuppressionStore.writeAll(fd, bytes, at: segment.size)
        }, done: { [self] in
            writing = false
            self.fd = fd
            let count = lines
            if let failure {
                // The events are lost (the disk refused them): counted, and said once per failure.
                log.error("webhook \(config.name): writing the outbox failed: \(failure); \(count) events dropped")
                metrics.webhookEvents(config.name, outcome: "dropped", count: count)
            } else {
                remember(bytes, segment: segment.number, at: segment.size)
                segment.size += bytes.count
                segment.lines += count
                if roll { segments.append(segment) } else { segments[segments.count - 1] = segment }
                unsent += count
            }
            synced += count
            let ready = syncWaiters.filter { $0.upTo <= synced }
            syncWaiters.removeAll { $0.upTo <= synced }
            for waiter in ready { waiter.done() }
            if !dropped.isEmpty { persistCursor(removing: []) }
            metrics.webhookOutbox(config.name, bytes: totalBytes)
            if closed { return finishClose() }
            if !syncWaiters.isEmpty || pending.count >= segmentSize { flush() } else if !pending.isEmpty { armFlush() }
            schedule()
        })
    }

    /// Past max_outbox_size the oldest files go (never the one appended to). Events of a POST in
    /// flight from a file that goes are not counted as dropped: they are sent, or dropped, when it ends.
    /// Returns the files to remove before the next write (`rolling`: it starts a new file). Files are
    /// counted whole (each is written full of zeros when it is made).
    private func enforceBound(rolling: Bool) -> [Int] {
        var dropped = 0
        var removed: [Int] = []
        func onDisk() -> Int { segments.reduce(0) { $0 + max($1.size, segmentSize) } + (rolling ? segmentSize : 0) }
        while segments.count > 1 && onDisk() > config.maxOutboxSize {
            let oldest = segments.removeFirst()
            removed.append(oldest.number)
            if oldest.number >= cursor.segment {
                var lost = oldest.number == cursor.segment ? oldest.lines - cursor.linesBefore : oldest.lines
                var flying = 0
                if let f = inFlight, f.segment == oldest.number {
                    flying = f.events
                    lost -= flying
                }
                dropped += lost
                unsent -= lost + flying
                cursor = (segments[0].number, 0, 0)
            }
        }
        if dropped > 0 {
            log.warning("webhook \(config.name): outbox over max_outbox_size (\(config.maxOutboxSize) bytes): \(dropped) oldest events dropped")
            metrics.webhookEvents(config.name, outcome: "dropped", count: dropped)
        }
        return removed
    }

    /// Writes the cursor, then removes the files wholly before it: one write at a time, the last
    /// cursor always written last (two writes in parallel could leave an older one on disk).
    private func persistCursor(removing files: [Int]) {
        unlinkAfterCursor += files
        cursorDirty = true
        guard !cursorWriting else { return }
        cursorWriting = true
        cursorDirty = false
        let directory = self.directory, position = cursor, removed = unlinkAfterCursor
        unlinkAfterCursor = []
        var failure: String?
        loop.queueWork({
            failure = OutboxState.writeCursor(directory, segment: position.segment, offset: position.offset)
            // Files before the cursor go only once the cursor past them is on disk.
            if failure == nil { for n in removed { unlink(OutboxState.segmentPath(directory, n)) } }
        }, done: { [self] in
            cursorWriting = false
            if let failure {
                log.error("webhook \(config.name): writing \(directory)/cursor failed: \(failure); events sent already may be sent again after a restart")
                unlinkAfterCursor += removed
            }
            if cursorDirty { return persistCursor(removing: []) }
            metrics.webhookOutbox(config.name, bytes: totalBytes)
            if closed { finishClose() }
        })
    }
    private var cursorDirty = false
    private var unlinkAfterCursor: [Int] = []
    /// The newest synced events of the file appended to (its bytes from `start`), so that a webhook
    /// that keeps up sends them without reading the file back. At most `maxRecent` bytes.
    private var recent: (segment: Int, start: Int, bytes: [UInt8])?
    static let maxRecent = 1 << 20

    /// Keeps `bytes`, just written at `offset` of file `segment`, after what is kept if they follow it
    /// (less what was sent already), else instead of it.
    private func remember(_ bytes: [UInt8], segment: Int, at offset: Int) {
        if var r = recent, r.segment == segment, r.start + r.bytes.count == offset {
            recent = nil  // the one reference: appended to in place
            if cursor.segment == segment && cursor.offset > r.start {
                let sent = min(cursor.offset, offset) - r.start
                r.bytes.removeFirst(sent)
                r.start += sent
            }
            if r.bytes.count + bytes.count <= Self.maxRecent {
                r.bytes += bytes
                recent = r
                return
            }
        }
        recent = bytes.count <= Self.maxRecent ? (segment, offset, bytes) : nil
    }

    /// The batch of the POST in flight: where it starts and how many events it has.
    private var inFlight: (segment: Int, offset: Int, events: Int)?

    // MARK: Sending

    /// Sends now when a batch is full, else arms the interval for the partial one.
    private func schedule() {
        guard loaded, !sending, !closed, unsent > 0 else { return }
        if failingSince != nil { return }  // the retry timer is armed
        if unsent >= config.batchSize {
            timer.stop()
            timerArmed = false
            return send()
        }
        if !timerArmed {
            timerArmed = true
            timer.start(afterMilliseconds: UInt64(config.interval * 1000)) { [weak self] in
                guard let self else { return }
                self.timerArmed = false
                self.send()
            }
        }
    }

    private func send() {
        guard loaded, !sending, !closed, unsent > 0 else { return }
        // The cursor's file is read to its synced end; a file read to its end moves the cursor on.
        while let i = segments.firstIndex(where: { $0.number == cursor.segment }),
              cursor.offset >= segments[i].size, i + 1 < segments.count {
            cursor = (segments[i + 1].number, 0, 0)
        }
        guard let segment = segments.first(where: { $0.number == cursor.segment }), cursor.offset < segment.size else { return }
        sending = true
        let start = cursor.offset, end = segment.size, limit = config.batchSize
        // A webhook that keeps up sends what was just written, from memory; one that is behind reads
        // the file.
        if let r = recent, r.segment == segment.number, start >= r.start, start < r.start + r.bytes.count {
            return post(OutboxBatch.make(r.bytes[(start - r.start)...], maxEvents: limit), segment: segment.number, start: start)
        }
        let path = OutboxState.segmentPath(directory, segment.number)
        var batch = OutboxBatch()
        loop.queueWork({ batch = OutboxBatch.read(path, from: start, to: end, maxEvents: limit) }, done: { [self] in
            post(batch, segment: segment.number, start: start, path: path)
        })
    }

    /// The batch at `start` of file `number`: POSTed, unless things changed while it was read.
    private func post(_ batch: OutboxBatch, segment number: Int, start: Int, path: String? = nil) {
        guard !closed else {
            sending = false
            return finishClose()
        }
        // Its file was dropped for the bound while it was read (its events were counted as
        // dropped then): not sent; the next batch from the new cursor.
        if cursor.segment != number || cursor.offset != start {
            sending = false
            return send()
        }
        guard batch.events > 0 else {
            sending = false
            log.error("webhook \(config.name): cannot read \(path ?? OutboxState.segmentPath(directory, number)) at \(start): \(batch.failure ?? "no complete event")")
            return retryLater("the outbox could not be read")
        }
        inFlight = (number, start, batch.events)
        var headers = ["Content-Type: application/json", "User-Agent: Tern"]
        for name in config.headers.keys.sorted() { headers.append("\(name): \(config.headers[name]!)") }
        client.post(url: config.url, body: batch.body, headers: headers,
                    timeoutMilliseconds: Int(config.timeout * 1000)) { [self] result in
            sending = false
            inFlight = nil
            if case .success(let response) = result, (200..<300).contains(response.status) {
                return acknowledged(batch, from: (number, start))
            }
            guard !closed else { return finishClose() }
            if cursor.segment != number || cursor.offset != start {
                // Its file was dropped for the bound meanwhile: not sent, so dropped now.
                metrics.webhookEvents(config.name, outcome: "dropped", count: batch.events)
            }
            switch result {
            case .success(let response):
                let text = String(decoding: response.body.prefix(200), as: UTF8.self)
                retryLater("HTTP \(response.status) \(angleQuoted(text))")
            case .failure(let failure):
                retryLater(failure.description)
            }
        }
    }

    private func acknowledged(_ batch: OutboxBatch, from position: (segment: Int, offset: Int)) {
        metrics.webhookEvents(config.name, outcome: "sent", count: batch.events)
        if let since = failingSince {
            log.notice("webhook \(config.name): POSTs succeed again after \(formatDuration(loop.clock.wallSeconds() - since))")
            failingSince = nil
            backoff = 0
        }
        // A file dropped for the bound meanwhile moved the cursor already.
        if cursor.segment == position.segment && cursor.offset == position.offset {
            cursor.offset += batch.bytes
            cursor.linesBefore += batch.events
            unsent -= batch.events
        }
        let finished = segments.filter { $0.number < cursor.segment || ($0.number == cursor.segment && cursor.offset >= $0.size && $0.number != segments.last!.number) }
        segments.removeAll { s in finished.contains { $0.number == s.number } }
        if segments.first.map({ $0.number > cursor.segment }) == true { cursor = (segments[0].number, 0, 0) }
        // The cursor is written at most once a second (a crash sends up to a second of acknowledged
        // events again, as at-least-once allows), unless a file is done with.
        if finished.isEmpty && !closed {
            if cursorTimer == nil { cursorTimer = UVRuntime.Timer(loop: loop) }
            if cursorTimer?.isActive != true {
                cursorTimer?.start(afterMilliseconds: Self.cursorInterval) { [weak self] in self?.persistCursor(removing: []) }
            }
        } else {
            cursorTimer?.stop()
            persistCursor(removing: finished.map(\.number))
        }
        schedule()
    }

    static let cursorInterval: UInt64 = 1000
    private var cursorTimer: UVRuntime.Timer?

    /// Retries of a failed POST: 1 s doubling to 5 minutes, ±20 %.
    static let backoff = Backoff(initial: 1, maximum: 300, jitter: 0.2)

    private func retryLater(_ why: String) {
        metrics.webhookFailure(config.name)
        backoff = Self.backoff.next(after: backoff)
        let delay = Self.backoff.jittered(backoff, random: Double.random(in: 0..<1))
        if failingSince == nil {
            failingSince = loop.clock.wallSeconds()
            log.warning("webhook \(config.name): POST to \(config.url) failed: \(why); \(unsent) events wait in the outbox, retrying with backoff")
        } else {
            log.debug("webhook \(config.name): POST failed again: \(why); next try in \(formatDuration(delay))")
        }
        timer.stop()
        timerArmed = true
        timer.start(afterMilliseconds: UInt64(delay * 1000)) { [weak self] in
            guard let self else { return }
            self.timerArmed = false
            self.send()
        }
    }

    /// Stops: what is pending is written, a POST in flight is waited for (at most `timeout`; a 2xx
    /// moves the cursor) and the cursor written; then `done` (so that a stop loses no event and sends
    /// no batch again after the restart).
    func close(then done: @escaping () -> Void = {}) {
        closeWaiters.append(done)
        guard !closed else { return }
        closed = true
        timer.close()
        flushTimer?.close()
        if cursorTimer?.isActive == true { persistCursor(removing: []) }  // an acknowledgement not written yet
        cursorTimer?.close()
        finishClose()
    }

    /// Called whenever something a close waits for ends: the fd is closed and the waiters told when
    /// nothing is written, sent or pending any more.
    private func finishClose() {
        guard closed else { return }
        if !pending.isEmpty && !writing { flush() }
        guard !writing, !sending, !cursorWriting, pending.isEmpty, !closeWaiters.isEmpty else { return }
        if fd >= 0 {
            Glibc.close(fd)
            fd = -1
        }
        let waiters = closeWaiters
        closeWaiters = []
        for w in waiters { w() }
    }
}

struct OutboxError: Error {
    var message: String
}

/// What the outbox's directory holds, read at start (on the thread pool).
struct OutboxState {
    var segments: [Webhook.Segment]
    var cursor: (segment: Int, offset: Int, linesBefore: Int)
    var fd: Int32

    static func segmentPath(_ directory: String, _ number: Int) -> String {
        let digits = String(number)
        return directory + "/" + String(repeating: "0", count: max(0, 8 - digits.count)) + digits + ".jsonl"
    }

    /// Opens a file of events for writing, first filled with zeros to `preallocate` bytes and synced:
    /// events are then written over the zeros, so a sync after each write changes no metadata (the
    /// file's size and blocks stay the same) and costs no journal commit of the file system.
    static func openSegment(_ directory: String, _ number: Int, preallocate: Int) -> Int32 {
        let fd = Glibc.open(segmentPath(directory, number), O_WRONLY | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { return fd }
        let size = Int(lseek(fd, 0, SEEK_END))
        if size >= 0 && size < preallocate {
            let zeros = [UInt8](repeating: 0, count: preallocate - size)
            if SuppressionStore.writeAll(fd, zeros, at: size) != nil {
                Glibc.close(fd)
                return -1
            }
        }
        return fd
    }

    static func syncDirectory(_ directory: String) {
        let dfd = Glibc.open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dfd >= 0 {
            fsync(dfd)
            Glibc.close(dfd)
        }
    }

    /// "SEGMENT OFFSET\n", written whole to a new file, synced, and renamed over the old.
    static func writeCursor(_ directory: String, segment: Int, offset: Int) -> String? {
        let tmp = directory + "/cursor.tmp"
        let fd = Glibc.open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { return String(cString: strerror(errno)) }
        let failure = SuppressionStore.writeAll(fd, Array("\(segment) \(offset)\n".utf8))
        Glibc.close(fd)
        if let failure { return failure }
        return rename(tmp, directory + "/cursor") == 0 ? nil : String(cString: strerror(errno))
    }

    static func parseCursor(_ text: String) -> (Int, Int)? {
        let parts = text.split(whereSeparator: { $0 == " " || $0 == "\n" })
        guard parts.count == 2, let s = Int(parts[0]), let o = Int(parts[1]), s > 0, o >= 0 else { return nil }
        return (s, o)
    }

    static func load(_ directory: String, segmentSize: Int) -> Result<OutboxState, OutboxError> {
        let names: [String]
        do {
            try Spool.makeDirectories(directory)
            names = try Spool.entries(directory)
        } catch {
            return .failure(OutboxError(message: "\(error)"))
        }
        let numbers = names.compactMap { $0.hasSuffix(".jsonl") ? Int($0.dropLast(6)) : nil }.filter { $0 > 0 }.sorted()
        var cursor = (segment: numbers.first ?? 1, offset: 0, linesBefore: 0)
        if let text = try? String(contentsOfFile: directory + "/cursor", encoding: .utf8), let (s, o) = parseCursor(text) {
            cursor = (s, o, 0)
        }
        var segments: [Webhook.Segment] = []
        for n in numbers {
            let path = segmentPath(directory, n)
            guard let raw = try? Spool.readFile(path) else { continue }
            // The events end at the first zero byte (the rest of the file is its preallocation; an
            // event never holds a NUL: JSON escapes it). What follows the last whole line is zeroed:
            // a line cut short by a crash, and any page of an unsynced write that a power loss kept.
            var bytes = raw
            if let nul = bytes.firstIndex(of: 0) { bytes.removeSubrange(nul...) }
            let end = (bytes.lastIndex(of: 10) ?? -1) + 1
            if raw[end...].contains(where: { $0 != 0 }) {
                let fd = Glibc.open(path, O_WRONLY | O_CLOEXEC)
                if fd >= 0 {
                    _ = SuppressionStore.writeAll(fd, [UInt8](repeating: 0, count: raw.count - end), at: end)
                    Glibc.close(fd)
                }
            }
            bytes.removeSubrange(end...)
            let lines = bytes.reduce(0) { $0 + ($1 == 10 ? 1 : 0) }
            if n == cursor.segment {
                let offset = min(cursor.offset, bytes.count)
                cursor.offset = offset
                cursor.linesBefore = bytes[..<offset].reduce(0) { $0 + ($1 == 10 ? 1 : 0) }
            }
            segments.append(Webhook.Segment(number: n, size: bytes.count, lines: lines))
        }
        // Files wholly before the cursor were sent (a crash came before their removal).
        for s in segments where s.number < cursor.segment { unlink(segmentPath(directory, s.number)) }
        segments.removeAll { $0.number < cursor.segment }
        if segments.isEmpty {
            segments = [Webhook.Segment(number: max(1, cursor.segment), size: 0, lines: 0)]
            cursor = (segments[0].number, 0, 0)
        } else if segments[0].number > cursor.segment {
            cursor = (segments[0].number, 0, 0)
        }
        let fd = openSegment(directory, segments.last!.number, preallocate: segmentSize)
        guard fd >= 0 else { return .failure(OutboxError(message: "cannot open: \(String(cString: strerror(errno)))")) }
        syncDirectory(directory)
        return .success(OutboxState(segments: segments, cursor: cursor, fd: fd))
    }

}

/// A batch read from the outbox: the POST's body (a JSON array) and what it covers.
struct OutboxBatch {
    var body: [UInt8] = []
    var events = 0
    /// Bytes of the file it covers.
    var bytes = 0
    var failure: String?

    /// Up to `maxEvents` whole lines of `path` from `start` (not past `end`), as a JSON array.
    static func read(_ path: String, from start: Int, to end: Int, maxEvents: Int) -> OutboxBatch {
        var batch = OutboxBatch()
        let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            batch.failure = String(cString: strerror(errno))
            return batch
        }
        defer { Glibc.close(fd) }
        // Events are a few hundred bytes; read more as needed.
        var chunk = min(end - start, max(16384, maxEvents * 512))
        while true {
            var n = 0
            // Read one byte in: the array's "[" goes before the events (the body is made in place).
            var buffer = [UInt8](unsafeUninitializedCapacity: chunk + 1) { b, count in
                n = pread(fd, b.baseAddress! + 1, chunk, off_t(start))
                count = n > 0 ? n + 1 : 0
            }
            guard n > 0 else {
                batch.failure = n < 0 ? String(cString: strerror(errno)) : "the file is shorter than expected"
                return batch
            }
            batch = make(inPlace: &buffer, maxEvents: maxEvents)
            if batch.events > 0 || n < chunk || chunk >= end - start { return batch }
            chunk = min(end - start, chunk * 4)  // one event longer than the chunk
        }
    }

    static func make(_ bytes: ArraySlice<UInt8>, maxEvents: Int) -> OutboxBatch {
        var buffer = [0] + bytes
        return make(inPlace: &buffer, maxEvents: maxEvents)
    }

    /// `buffer`: a byte to spare, then the events' lines; it becomes the body.
    static func make(inPlace buffer: inout [UInt8], maxEvents: Int) -> OutboxBatch {
        var batch = OutboxBatch()
        // Up to the newline that ends the last whole event taken. Each event's newline becomes the
        // comma after it, the last one the closing bracket (an event never holds a raw newline: JSON
        // escapes it).
        var taken = 1
        buffer.withUnsafeMutableBytes { body in
            let base = body.baseAddress!
            while taken < body.count && batch.events < maxEvents,
                  let newline = memchr(base + taken, 10, body.count - taken) {
                newline.storeBytes(of: UInt8(ascii: ","), as: UInt8.self)
                taken = base.distance(to: newline) + 1
                batch.events += 1
            }
        }
        batch.bytes = taken - 1
        buffer.removeSubrange(taken...)
        buffer[0] = UInt8(ascii: "[")
        if batch.events > 0 { buffer[taken - 1] = UInt8(ascii: "]") } else { buffer.append(UInt8(ascii: "]")) }
        batch.body = buffer
        return batch
    }
}
