// The intake journal: where a message just received becomes durable for a fraction of the cost of its
// own files.
//
// A message received whole in memory (all but the largest) is appended, with its envelope, to the
// current segment `<spool>/journal/<N>.jnl`. The caller batches the messages of many sessions, so one
// write and one fdatasync make a whole batch durable, where a message in its own files costs two file
// creations, two fsyncs and a directory fsync. The first delivery attempt usually ends a message's life
// here: it is done, and a done record says so; no file was ever created for it.
//
// Records, integers little-endian:
//
//     message  "TJM1" u32 envelope-length u32 data-length u32 crc32(envelope + data) envelope data
//     done     "TJD1" u32 id-length u32 0 u32 crc32(id) id
//
// crc32 is zlib's CRC-32 (the one of gzip and PNG), computed with ISA-L.
//
// The envelope is an EnvelopeRecord; the data is what `<id>.msg` would hold.
//
// A message leaves the journal when it is done (delivered, bounced, deleted: `markDone`) or when its
// envelope must change (deferred, held): then `Spool` moves it to its own `.msg` and `.env` first
// (`beginMove`, `endMove`). Done records are not fsynced: if a crash loses one, the message is delivered
// again, which SMTP tolerates (RFC 5321 section 6.1); a message is never lost.
//
// Segments are deleted oldest first and only once every message in them is done, so a done record
// always outlives the message record it cancels. A message that lingers (a destination with a long
// backlog) would keep every later segment on disk, so once the oldest segment's live messages are down
// to a quarter of its bytes they are moved out (`compactionCandidates`).
//
// Recovery reads the segments in order and stops a segment at the first record that is cut short or
// fails its checksum: a batch that a crash interrupted, none of which was acknowledged. A message whose
// `.env` exists was moved out; its journal record is stale.
//
// Thread safety: every method may be called from any pool thread. One mutex guards the index and the
// segments; fdatasync runs outside it. Appends are serialised among themselves.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CISAL
import Foundation  // NSCondition, NSLock only

final class Journal: @unchecked Sendable {
    /// Where a journaled message's record is.
    struct Location {
        let segment: UInt64
        /// Offset of the envelope bytes (just after the record header).
        let offset: Int64
        let envelopeLength: Int
        let dataLength: Int
        var recordLength: Int64 { Int64(Journal.headerLength + envelopeLength + dataLength) }
    }

    final class Segment {
        let number: UInt64
        let path: String
        var fd: Int32
        var size: Int64
        /// Messages in this segment not yet done or moved out, and their bytes.
        var live: Set<QueueID> = []
        var liveBytes: Int64 = 0
        /// When appends moved on to a newer segment (monotonic seconds); nil while current.
        var closedAt: Double?

        init(number: UInt64, path: String, fd: Int32, size: Int64) {
            self.number = number
            self.path = path
            self.fd = fd
            self.size = size
        }
    }

    static let messageMagic: [UInt8] = Array("TJM1".utf8)
    static let doneMagic: [UInt8] = Array("TJD1".utf8)
    static let headerLength = 16

    let path: String
    /// A new segment is started once the current one is this large.
    let segmentLimit: Int64
    private let directoryFD: Int32

    private let state = NSCondition()
    private var index: [QueueID: Location] = [:]
    /// Oldest first; the last is the one appends go to.
    private var segments: [Segment] = []
    /// Messages being moved to their own files; `markDone` and other moves wait for them.
    private var moving: Set<QueueID> = []
    /// Set when the current segment's tail is in doubt (a failed write or fdatasync): appends go to a new one.
    private var mustRotate = false
    private let appendLock = NSLock()
    /// Held while deleting segments, so that they go in order even from different threads.
    private let deletionLock = NSLock()

    init(path: String, segmentLimit: Int64 = 32 << 20) throws {
        try Spool.makeDirectories(path)
        self.path = path
        self.segmentLimit = segmentLimit
        self.directoryFD = try Spool.retrying("open", path) { open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
    }

    deinit {
        for s in segments where s.fd >= 0 { _ = close(s.fd) }
        _ = close(directoryFD)
    }

    private func segmentPath(_ number: UInt64) -> String {
        let hex = String(number, radix: 16, uppercase: true)
        return path + "/" + String(repeating: "0", count: max(0, 16 - hex.count)) + hex + ".jnl"
    }

    // MARK: Start-up

    /// Reads every segment, rebuilds the index of live messages (those with no done record and, by
    /// `movedOut`, no files of their own), deletes segments with nothing live from the oldest on, and
    /// starts a new segment. Returns the number of live messages and a line for each damaged place
    /// (for the log). Run once, before anything else.
    func recover(movedOut: (QueueID) -> Bool) throws -> (count: Int, problems: [String]) {
        var problems: [String] = []
        state.lock()
        defer { state.unlock() }
        var numbers: [UInt64] = []
        for name in try Spool.entries(path) where name.hasSuffix(".jnl") {
            if let n = UInt64(name.dropLast(4), radix: 16) { numbers.append(n) }
        }
        numbers.sort()
        var bySegment: [UInt64: Segment] = [:]
        for number in numbers {
            let file = segmentPath(number)
            let bytes = try Spool.readFile(file)
            let fd = try Spool.retrying("open", file) { open(file, O_RDONLY | O_CLOEXEC) }
            let segment = Segment(number: number, path: file, fd: fd, size: Int64(bytes.count))
            segment.closedAt = Journal.now()
            segments.append(segment)
            bySegment[number] = segment
            Journal.parse(bytes) { record in
                switch record {
                case .message(let id, let offset, let envelopeLength, let dataLength):
                    index[id] = Location(segment: number, offset: offset, envelopeLength: envelopeLength,
                                         dataLength: dataLength)
                case .done(let id):
                    index[id] = nil
                case .undecodable(let offset, let length):
                    problems.append("\(file): offset \(offset): a record of \(length) bytes whose checksum is right but whose envelope cannot be read; skipped, left in place")
                case .stopped(let offset):
                    // The tail of the segment a crash interrupted, normally: a batch never acknowledged.
                    problems.append("\(file): offset \(offset): \(bytes.count - offset) bytes after the last whole record (cut short by a crash, or damaged); not read")
                }
            }
        }
        for (id, location) in index {
            if movedOut(id) { index[id] = nil; continue }
            let s = bySegment[location.segment]!
            s.live.insert(id)
            s.liveBytes += location.recordLength
        }
        // Recovery has nothing to append to: every old segment is closed for writing.
        var dead: [Segment] = []
        while let first = segments.first, first.live.isEmpty {
            dead.append(segments.removeFirst())
        }
        if !dead.isEmpty { deletionLock.lock() }
        try deleteInOrder(dead)
        try startSegment(number: (numbers.last ?? 0) + 1)
        return (index.count, problems)
    }

    enum Record {
        case message(QueueID, offset: Int64, envelopeLength: Int, dataLength: Int)
        case done(QueueID)
        /// A whole record (its checksum holds) that this version cannot read: skipped, not fatal.
        case undecodable(offset: Int, length: Int)
        /// Parsing stopped here, before the end of the bytes: a record cut short or damaged.
        case stopped(offset: Int)
    }

    /// Calls `body` for each whole record in order; stops at the end or at the first record that is cut
    /// short or fails its checksum (reported as `.stopped` unless it is the very end).
    static func parse(_ bytes: [UInt8], _ body: (Record) -> Void) {
        var at = 0
        defer { if at < bytes.count { body(.stopped(offset: at)) } }
        while at + headerLength <= bytes.count {
            let magic = Array(bytes[at..<at + 4])
            let first = Int(readUInt32(bytes, at + 4))
            if magic == messageMagic {
                let second = Int(readUInt32(bytes, at + 8))
                let end = at + headerLength + first + second
                guard end <= bytes.count, crc32(bytes[(at + headerLength)..<end]) == readUInt32(bytes, at + 12) else { return }
                if let envelope = try? EnvelopeRecord.decode(Array(bytes[(at + headerLength)..<(at + headerLength + first)])) {
                    body(.message(envelope.id, offset: Int64(at + headerLength), envelopeLength: first, dataLength: second))
                } else {
                    body(.undecodable(offset: at, length: end - at))
                }
                at = end
            } else if magic == doneMagic {
                let end = at + headerLength + first
                guard end <= bytes.count, crc32(bytes[(at + headerLength)..<end]) == readUInt32(bytes, at + 12) else { return }
                if let text = String(bytes: bytes[(at + headerLength)..<end], encoding: .utf8), let id = QueueID(rawValue: text) {
                    body(.done(id))
                } else {
                    body(.undecodable(offset: at, length: end - at))
                }
                at = end
            } else {
                return
            }
        }
    }

    private static func readUInt32(_ bytes: [UInt8], _ at: Int) -> UInt32 {
        UInt32(bytes[at]) | UInt32(bytes[at + 1]) << 8 | UInt32(bytes[at + 2]) << 16 | UInt32(bytes[at + 3]) << 24
    }

    private static func appendUInt32(_ out: inout [UInt8], _ value: UInt32) {
        out.append(UInt8(value & 0xFF))
        out.append(UInt8(value >> 8 & 0xFF))
        out.append(UInt8(value >> 16 & 0xFF))
        out.append(UInt8(value >> 24))
    }

    /// Appends the 16-byte header of a message record to `out`; the envelope and the data follow it in
    /// the file, written from their own arrays (no copy of the message to build the record).
    static func appendMessageHeader(to out: inout [UInt8], envelope: [UInt8], data: [UInt8]) {
        out += messageMagic
        appendUInt32(&out, UInt32(envelope.count))
        appendUInt32(&out, UInt32(data.count))
        appendUInt32(&out, crc32(data[...], following: crc32(envelope[...])))
    }

    static func doneRecord(_ id: QueueID) -> [UInt8] {
        let text = Array(id.rawValue.utf8)
        var out = doneMagic
        appendUInt32(&out, UInt32(text.count))
        appendUInt32(&out, 0)
        appendUInt32(&out, crc32(text[...]))
        return out + text
    }

    // MARK: Appending

    /// Makes the messages durable in the current segment: one pwritev (per IOV_MAX / 3 messages), one
    /// fdatasync. Each envelope's size is set from its data; the stored envelopes are returned in order.
    /// Throws (and the messages are not queued) if any step fails.
    func append(_ messages: [(Envelope, [UInt8])]) throws -> [Envelope] {
        appendLock.lock()
        defer { appendLock.unlock() }
        var stored: [Envelope] = []
        var records: [[UInt8]] = []
        records.reserveCapacity(messages.count)
        var headers: [UInt8] = []
        headers.reserveCapacity(messages.count * Journal.headerLength)
        var length: Int64 = 0
        var placed: [(QueueID, Int64, Int, Int)] = []  // id, offset in batch, envelope length, data length
        for (envelope, data) in messages {
            var e = envelope
            e.size = data.count
            let record = EnvelopeRecord.encode(e)
            placed.append((e.id, length + Int64(Journal.headerLength), record.count, data.count))
            Journal.appendMessageHeader(to: &headers, envelope: record, data: data)
            records.append(record)
            length += Int64(Journal.headerLength + record.count + data.count)
            stored.append(e)
        }
        // Each record goes out as three pieces, its header, its envelope and the message's own array:
        // the message is not copied into a batch buffer first.
        var pieces: [ArraySlice<UInt8>] = []
        pieces.reserveCapacity(messages.count * 3)
        for (i, message) in messages.enumerated() {
            pieces.append(headers[(i * Journal.headerLength)..<((i + 1) * Journal.headerLength)])
            pieces.append(records[i][...])
            pieces.append(message.1[...])
        }

        state.lock()
        let segment: Segment
        let base: Int64
        do {
            for (id, _, _, _) in placed where index[id] != nil {
                throw SpoolError("append", path: path, errno: EEXIST, detail: "queue id \(id) is already in the journal")
            }
            guard let last = segments.last else {
                throw SpoolError("append", path: path, errno: EINVAL, detail: "the journal was not recovered at start-up")
            }
            if mustRotate || last.size >= segmentLimit {
                try startSegment(number: last.number + 1)
                mustRotate = false
            }
            segment = segments.last!
            base = segment.size
            do {
                try Journal.writeAll(segment, pieces, at: base)
            } catch {
                // Whatever part of the batch reached the file must never be read as records that
                // were acknowledged: the next batch goes to a new segment. If the file could not be
                // cut back, earlier pwritev calls may have left whole records in it: done records for
                // the batch, at the start of that new segment, cancel them (recovery reads in order).
                mustRotate = true
                if (try? startSegment(number: segment.number + 1)) != nil {
                    mustRotate = false
                    try? appendDone(placed.map(\.0))
                }
                throw error
            }
            segment.size = base + length
        } catch {
            state.unlock()
            throw error
        }
        state.unlock()

        do {
            try Spool.retrying("fdatasync", segment.path) { fdatasync(segment.fd) }
        } catch {
            // Whether any of it reached the disk is unknown. Cancel the records in case they did (the
            // clients hear 451 and send again), and start afresh in a new segment.
            state.lock()
            try? appendDone(placed.map(\.0))
            mustRotate = true
            state.unlock()
            throw error
        }

        state.lock()
        for (id, offset, envelopeLength, dataLength) in placed {
            let location = Location(segment: segment.number, offset: base + offset, envelopeLength: envelopeLength,
                                    dataLength: dataLength)
            index[id] = location
            segment.live.insert(id)
            segment.liveBytes += location.recordLength
        }
        state.unlock()
        return stored
    }

    /// Pieces per pwritev: IOV_MAX (1024 on Linux), and at least POSIX's minimum of 16.
    static let maxIovecs: Int = {
        let limit = sysconf(Int32(_SC_IOV_MAX))
        return limit > 0 ? min(Int(limit), 1024) : 16
    }()

    /// pwritev(2)'s shape; tests pass one that writes short or fails.
    typealias VectorWrite = (Int32, UnsafePointer<iovec>, Int32, off_t) -> Int

    /// Writes `pieces`, in order and back to back, at `offset`: pwritev of up to `maxIovecs` pieces at a
    /// time, resumed after short writes. On failure the segment is cut back to `offset` (or, if even that
    /// fails, the error says so and the caller rotates) so that no partial record sits before later ones.
    static func writeAll(_ segment: Segment, _ pieces: [ArraySlice<UInt8>], at offset: Int64,
                         using write: VectorWrite = { pwritev($0, $1, $2, $3) }) throws {
        var written = 0
        var failure: SpoolError?
        var start = 0
        while start < pieces.count && failure == nil {
            let end = min(pieces.count, start + maxIovecs)
            var iovecs: [iovec] = []
            iovecs.reserveCapacity(end - start)
            failure = withIovecs(pieces[start..<end], &iovecs) { iovecs in
                writeVectors(segment, &iovecs, at: offset, written: &written, using: write)
            }
            start = end
        }
        if let failure {
            if written > 0 && ftruncate(segment.fd, off_t(offset)) != 0 {
                throw SpoolError("write", path: segment.path, errno: failure.errno,
                                 detail: "\(failure); and the segment could not be cut back")
            }
            throw failure
        }
    }

    /// Calls `body` with an iovec for each non-empty piece, each array held in place meanwhile (one
    /// nested `withUnsafeBytes` per piece: at most `maxIovecs` deep).
    private static func withIovecs<R>(_ pieces: ArraySlice<ArraySlice<UInt8>>, _ iovecs: inout [iovec],
                                      _ body: (inout [iovec]) -> R) -> R {
        guard let first = pieces.first else { return body(&iovecs) }
        return first.withUnsafeBytes { bytes in
            if let base = bytes.baseAddress, bytes.count > 0 {
                iovecs.append(iovec(iov_base: UnsafeMutableRawPointer(mutating: base), iov_len: bytes.count))
            }
            return withIovecs(pieces.dropFirst(), &iovecs, body)
        }
    }

    /// pwritev of everything `iovecs` points at, to `offset + written` on, until done or an error.
    /// `written` counts the bytes that reached the file.
    private static func writeVectors(_ segment: Segment, _ iovecs: inout [iovec], at offset: Int64,
                                     written: inout Int, using write: VectorWrite) -> SpoolError? {
        var first = 0
        while first < iovecs.count {
            let n = iovecs.withUnsafeBufferPointer { v in
                write(segment.fd, v.baseAddress! + first, Int32(v.count - first), off_t(offset) + off_t(written))
            }
            if n < 0 {
                if errno == EINTR { continue }
                return SpoolError("write", path: segment.path, errno: errno)
            }
            if n == 0 { return SpoolError("write", path: segment.path, errno: EIO, detail: "write returned 0") }
            written += n
            // A short write: skip the pieces that went whole, and the part of the next that went.
            var left = n
            while first < iovecs.count && left >= iovecs[first].iov_len {
                left -= iovecs[first].iov_len
                first += 1
            }
            if left > 0 {
                iovecs[first].iov_base = iovecs[first].iov_base! + left
                iovecs[first].iov_len -= left
            }
        }
        return nil
    }

    /// Creates segment `number` and makes its name durable. Caller holds `state`.
    private func startSegment(number: UInt64) throws {
        let file = segmentPath(number)
        let fd = try Spool.retrying("create", file) { open(file, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0o600) }
        do {
            try Spool.retrying("fsync", path) { fsync(directoryFD) }
        } catch {
            _ = close(fd)
            _ = unlink(file)
            throw error
        }
        segments.last?.closedAt = Journal.now()
        segments.append(Segment(number: number, path: file, fd: fd, size: 0))
    }

    /// Monotonic seconds, for the age of closed segments.
    static func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }

    /// Done records for `ids` at the end of the current segment, in one write, not synced. Caller holds
    /// `state`.
    private func appendDone(_ ids: [QueueID]) throws {
        guard let segment = segments.last, !ids.isEmpty else { return }
        var records: [UInt8] = []
        records.reserveCapacity(ids.count * (Journal.headerLength + 32))
        for id in ids { records += Journal.doneRecord(id) }
        do {
            try Journal.writeAll(segment, [records[...]], at: segment.size)
            segment.size += Int64(records.count)
        } catch {
            mustRotate = true
            throw error
        }
    }

    // MARK: Reading

    var count: Int {
        state.lock()
        defer { state.unlock() }
        return index.count
    }

    func contains(_ id: QueueID) -> Bool {
        state.lock()
        defer { state.unlock() }
        return index[id] != nil
    }

    func ids() -> [QueueID] {
        state.lock()
        defer { state.unlock() }
        return Array(index.keys)
    }

    /// The envelope record and data of a journaled message, or nil if it is not in the journal.
    func read(_ id: QueueID, data wantData: Bool = true) throws -> (envelope: [UInt8], data: [UInt8])? {
        state.lock()
        defer { state.unlock() }  // the segment cannot be deleted while it is read
        guard let location = index[id], let segment = segments.first(where: { $0.number == location.segment }) else {
            return nil
        }
        let envelope = try Journal.read(segment, at: location.offset, count: location.envelopeLength)
        let data = wantData
            ? try Journal.read(segment, at: location.offset + Int64(location.envelopeLength), count: location.dataLength)
            : []
        return (envelope, data)
    }

    /// pread of exactly `count` bytes.
    private static func read(_ segment: Segment, at offset: Int64, count: Int) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        var done = 0
        try bytes.withUnsafeMutableBytes { buffer in
            while done < count {
                let n = pread(segment.fd, buffer.baseAddress! + done, count - done, off_t(offset) + off_t(done))
                if n < 0 {
                    if errno == EINTR { continue }
                    throw SpoolError("read", path: segment.path, errno: errno)
                }
                if n == 0 { throw SpoolError("read", path: segment.path, errno: EIO, detail: "segment ends inside a record") }
                done += n
            }
        }
        return bytes
    }

    // MARK: Leaving the journal

    /// The message is done: a done record, and it leaves the index. Returns false if it was not in the
    /// journal (moved out, or never there). Waits for a move of the same message to finish. The done
    /// record is best effort: on a full disk the message leaves the index all the same, so that its
    /// segment can still be deleted and free space (if the segment outlives a crash, the message is
    /// delivered again; never lost).
    func markDone(_ id: QueueID) throws -> Bool {
        let (journaled, failure) = markDone([id])
        if let failure { throw failure }
        return journaled.contains(id)
    }

    /// `markDone` for many messages at once (the delivery side gathers those that finished meanwhile):
    /// one lock round, one write of all their done records, one deletion of the segments they free.
    /// Returns the ids that were in the journal (the others were moved out, or never there) and the
    /// error of deleting freed segments, if any; those messages are done all the same.
    func markDone(_ ids: [QueueID]) -> (journaled: Set<QueueID>, failure: Error?) {
        state.lock()
        while ids.contains(where: { moving.contains($0) }) { state.wait() }
        var done: [(QueueID, Location)] = []
        for id in ids {
            // removeValue: an id given twice is done once.
            if let location = index.removeValue(forKey: id) { done.append((id, location)) }
        }
        try? appendDone(done.map(\.0))
        for (id, location) in done { dropLive(id, location) }
        let dead = takeDeadSegments()
        state.unlock()
        var failure: Error?
        do { try deleteInOrder(dead) } catch { failure = error }
        return (Set(done.map(\.0)), failure)
    }

    /// Claims a journaled message for moving out and returns its envelope record and data; nil if it is
    /// not in the journal (then the caller deals with its files). Every claim is ended by `endMove`.
    func beginMove(_ id: QueueID) throws -> (envelope: [UInt8], data: [UInt8])? {
        state.lock()
        while moving.contains(id) { state.wait() }
        guard index[id] != nil else {
            state.unlock()
            return nil
        }
        moving.insert(id)
        state.unlock()
        do {
            guard let bytes = try read(id) else {
                endMove(id, moved: false)
                return nil
            }
            return bytes
        } catch {
            endMove(id, moved: false)
            throw error
        }
    }

    /// Ends a claim. `moved`: the message's own files are durable, so its journal record is dropped.
    func endMove(_ id: QueueID, moved: Bool) {
        state.lock()
        moving.remove(id)
        var dead: [Segment] = []
        if moved, let location = index[id] {
            // Not fatal if this fails: the files win over the journal record at recovery.
            try? appendDone([id])
            index[id] = nil
            dropLive(id, location)
            dead = takeDeadSegments()
        }
        state.broadcast()
        state.unlock()
        try? deleteInOrder(dead)
    }

    /// Live messages of the oldest segment (never the one appends go to) that should move to files of
    /// their own so that it, and the newer segments it keeps, can be deleted: once they are down to a
    /// quarter of its bytes, or once it has been closed for `maxAge` seconds, or once more than
    /// `maxSegments` segments are on disk (a slow destination's backlog must not pin the journal).
    func compactionCandidates(limit: Int, maxAge: Double = 600, maxSegments: Int = 8) -> [QueueID] {
        state.lock()
        defer { state.unlock() }
        guard segments.count > 1, let oldest = segments.first else { return [] }
        let mostlyDone = oldest.liveBytes * 4 <= oldest.size
        let old = oldest.closedAt.map { Journal.now() - $0 >= maxAge } ?? false
        guard mostlyDone || old || segments.count > maxSegments else { return [] }
        return Array(oldest.live.subtracting(moving).sorted().prefix(limit))
    }

    /// Drops `id` from its segment's live set. Caller holds `state`.
    private func dropLive(_ id: QueueID, _ location: Location) {
        if let s = segments.first(where: { $0.number == location.segment }) {
            s.live.remove(id)
            s.liveBytes -= location.recordLength
        }
    }

    /// Takes the segments with nothing live off the front (never the one appends go to). Caller holds
    /// `state`; the returned segments are for `deleteInOrder` once `state` is released.
    private func takeDeadSegments() -> [Segment] {
        var dead: [Segment] = []
        while segments.count > 1, let first = segments.first, first.live.isEmpty {
            dead.append(segments.removeFirst())
        }
        if !dead.isEmpty { deletionLock.lock() }  // taken before `state` is released: deletions keep their order
        return dead
    }

    /// Closes and unlinks segments oldest first, then makes that durable, so that a crash never keeps
    /// an older segment whose done records were in a newer one that is gone. Releases `deletionLock`
    /// taken by `takeDeadSegments`.
    private func deleteInOrder(_ dead: [Segment]) throws {
        guard !dead.isEmpty else { return }
        defer { deletionLock.unlock() }
        for s in dead {
            if s.fd >= 0 { _ = close(s.fd); s.fd = -1 }
            if unlink(s.path) != 0 && errno != ENOENT { throw SpoolError("unlink", path: s.path, errno: errno) }
        }
        try Spool.retrying("fsync", path) { fsync(directoryFD) }
    }

    /// Segment files present, for tests.
    var segmentNumbers: [UInt64] {
        state.lock()
        defer { state.unlock() }
        return segments.map(\.number)
    }
}

/// zlib's CRC-32 of `bytes`, continuing from `previous` (the CRC of the bytes before them): catches a
/// record cut short or half-written by a crash. ISA-L's crc32_gzip_refl computes the same function as
/// zlib's crc32 (checked against it in JournalPiecesTests), with carry-less multiplication: about ten times
/// zlib's speed on 100 KiB messages.
func crc32(_ bytes: ArraySlice<UInt8>, following previous: UInt32 = 0) -> UInt32 {
    bytes.withUnsafeBufferPointer { buffer in
        guard let base = buffer.baseAddress, !buffer.isEmpty else { return previous }
        return CISAL.crc32_gzip_refl(previous, base, UInt64(buffer.count))
    }
}
