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
//     message  "TJM2" u32 segment u32 envelope-length u32 data-length u32 crc32(segment + envelope + data)
//              envelope data
//     done     "TJD2" u32 segment u32 id-length u32 0 u32 crc32(segment + id) id
//
// `segment` is the low 32 bits of the number of the segment the record was written in (its file name),
// as 4 bytes that the crc covers too. crc32 is zlib's CRC-32 (the one of gzip and PNG), computed by the
// spool's Checksum (ISA-L's in `tern serve`). The previous version wrote v1 records, "TJM1"/"TJD1"
// with a 16-byte header and no segment field (crc32 of the payload only); they are still read, so that
// its spool recovers, but never after a v2 record in the same file.
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
// Recycling. A dead segment is not unlinked but renamed to a spare, `<number>.free` (at most
// `maxSpares`; more are unlinked), and the next new segment is a spare renamed to `<new number>.jnl` and
// overwritten from offset 0: overwriting blocks a file already has costs ext4 no block allocation and
// no metadata write at each fdatasync, appending to a fresh file does (PostgreSQL recycles its WAL
// segments the same way). The old records stay behind the new ones until overwritten; the segment
// field tells them apart: parsing a file stops quietly at the first record that is not of the file's
// own number (its previous life), and reports only damage to a record of its own (`parse`).
//
// Why nothing acknowledged is lost and nothing stale is replayed, step by step:
// - Dead segment -> `.free`: a rename instead of an unlink, oldest first, then the directory fsync, as
//   before; `.free` files are never read as journal, so for recovery it is the same as the unlink.
// - `.free` -> `<n>.jnl`: the rename is made durable (directory fsync) before the first record is
//   written, as a created file's name is now; a crash before any write leaves a `.jnl` whose first
//   record carries the old number: recovery reads nothing from it, and the segment is dead.
// - Writes go from offset 0 over the old bytes; fdatasync makes the overwritten blocks durable (and the
//   size, where the file grew) before any client hears 250, as for a fresh file. A batch torn by a
//   crash is a mix of new and old blocks: a new record with old bytes in it fails its checksum (the
//   crc covers the segment field too), a whole old record has the old number: parsing stops there;
//   none of that batch was acknowledged, and every acknowledged record lies before it.
// - A stale record would need the file's new number in its segment field: numbers only grow and a
//   spare is reused within a few segments, so the low 32 bits never come round again in that time.
// - Only a file that does not start with a v1 record becomes a spare, and v1 records are read only in
//   an unbroken run from offset 0: a v1 record, which has no segment field, is never read back from a
//   recycled file (one after a v2 record is stale by definition).
// - A new segment's number is past every `.jnl` and `.free` name at start-up, so no rename ever
//   replaces a file (checked all the same).
//
// Thread safety: every method may be called from any pool thread. One mutex guards the index and the
// segments; fdatasync runs outside it. Appends are serialised among themselves.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import Foundation  // NSCondition, NSLock only

// @unchecked: the NSCondition `state` guards index and segments; appendLock, deletionLock, spareLock the rest.
final class Journal: @unchecked Sendable {
    /// Where a journaled message's record is.
    struct Location {
        let segment: UInt64
        /// Offset of the envelope bytes (just after the record header).
        let offset: Int64
        // 32-bit lengths, as in the record header: the index entry stays 32 bytes with the header length.
        private let envelopeBytes: UInt32
        private let dataBytes: UInt32
        /// 20 for a v2 record, 16 for a v1 record recovered from the previous version's spool.
        private let headerBytes: UInt8

        init(segment: UInt64, offset: Int64, envelopeLength: Int, dataLength: Int,
             headerLength: Int = Journal.headerLength) {
            self.segment = segment
            self.offset = offset
            self.envelopeBytes = UInt32(envelopeLength)
            self.dataBytes = UInt32(dataLength)
            self.headerBytes = UInt8(headerLength)
        }

        var envelopeLength: Int { Int(envelopeBytes) }
        var dataLength: Int { Int(dataBytes) }
        var recordLength: Int64 { Int64(Int(headerBytes) + envelopeLength + dataLength) }
    }

    final class Segment {
        let number: UInt64
        let path: String
        var fd: Int32
        /// Where the next record goes: the end of the last record, not the file's size (a recycled file
        /// holds its previous life's records after it).
        var size: Int64
        /// All its records are v2 from offset 0 (written by this version): it may become a spare.
        var recyclable = true
        /// Messages in this segment not yet done or moved out, and their bytes.
        var live: Set<QueueID> = []
        var liveBytes: Int64 = 0
        /// When a compaction pass first found it closed (appends moved on to a newer segment), in the
        /// monotonic seconds that pass was given; nil before. The journal reads no clock: time is
        /// the caller's, so the age is late by at most one pass's period.
        var closedAt: Double?

        init(number: UInt64, path: String, fd: Int32, size: Int64) {
            self.number = number
            self.path = path
            self.fd = fd
            self.size = size
        }
    }

    static let messageMagic: [UInt8] = Array("TJM2".utf8)
    static let doneMagic: [UInt8] = Array("TJD2".utf8)
    static let headerLength = 20
    /// The previous version's records: no segment field, read at recovery only.
    static let messageMagicV1: [UInt8] = Array("TJM1".utf8)
    static let doneMagicV1: [UInt8] = Array("TJD1".utf8)
    static let headerLengthV1 = 16
    /// Dead segments kept as `.free` files for reuse; more are unlinked.
    static let maxSpares = 2

    let path: String
    /// A new segment is started once the current one is this large.
    let segmentLimit: Int64
    /// The records' CRC-32 (ISA-L's in `tern serve`, injected by the Spool's opener).
    let checksum: Checksum
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
    /// Names of spare files (`.free`, durable) ready for `startSegment`, and renames to spares in flight.
    /// Under `spareLock`, taken inside `state` or alone: `deleteInOrder` runs with and without `state`.
    private let spareLock = NSLock()
    private var spares: [String] = []
    private var sparesPending = 0

    init(path: String, segmentLimit: Int64 = 32 << 20, checksum: Checksum) throws {
        try Spool.makeDirectories(path)
        self.path = path
        self.segmentLimit = segmentLimit
        self.checksum = checksum
        self.directoryFD = try Spool.retrying("open", path) { open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
    }

    deinit {
        for s in segments where s.fd >= 0 { _ = close(s.fd) }
        _ = close(directoryFD)
    }

    private func segmentPath(_ number: UInt64) -> String { path + "/" + Journal.fileName(number, ".jnl") }

    /// `<16 hex digits><suffix>`: a segment (`.jnl`) or a spare (`.free`), relative to the directory.
    static func fileName(_ number: UInt64, _ suffix: String) -> String {
        let hex = String(number, radix: 16, uppercase: true)
        return String(repeating: "0", count: max(0, 16 - hex.count)) + hex + suffix
    }

    // MARK: Start-up

    /// Reads every segment, rebuilds the index of live messages (those with no done record and, by
    /// `movedOut`, no files of their own), recycles or deletes segments with nothing live from the oldest
    /// on, and starts a new segment. Spare files found are kept (up to `maxSpares`). Returns the number
    /// of live messages and a line for each damaged place (for the log). Run once, before anything else.
    func recover(movedOut: (QueueID) -> Bool) throws -> (count: Int, problems: [String]) {
        var problems: [String] = []
        state.lock()
        defer { state.unlock() }
        var numbers: [UInt64] = []
        var spareNumbers: [UInt64] = []
        for name in try Spool.entries(path) {
            if name.hasSuffix(".jnl"), let n = UInt64(name.dropLast(4), radix: 16) { numbers.append(n) }
            if name.hasSuffix(".free"), let n = UInt64(name.dropLast(5), radix: 16) { spareNumbers.append(n) }
        }
        numbers.sort()
        spareNumbers.sort()
        spareLock.lock()
        for (i, n) in spareNumbers.enumerated() {
            let name = Journal.fileName(n, ".free")
            // An extra is unlinked (no fsync needed: if it comes back after a crash, so does this).
            if i < Journal.maxSpares { spares.append(name) } else { _ = unlinkat(directoryFD, name, 0) }
        }
        spareLock.unlock()
        var bySegment: [UInt64: Segment] = [:]
        for number in numbers {
            let file = segmentPath(number)
            let bytes = try Spool.readFile(file)
            let fd = try Spool.retrying("open", file) { open(file, O_RDONLY | O_CLOEXEC) }
            let segment = Segment(number: number, path: file, fd: fd, size: 0)
            segment.recyclable = !bytes.starts(with: Journal.messageMagicV1) && !bytes.starts(with: Journal.doneMagicV1)
            segments.append(segment)
            bySegment[number] = segment
            let end = Journal.parse(bytes, segment: number, checksum: checksum) { record in
                switch record {
                case .message(let id, let offset, let envelopeLength, let dataLength, let headerLength):
                    index[id] = Location(segment: number, offset: offset, envelopeLength: envelopeLength,
                                         dataLength: dataLength, headerLength: headerLength)
                case .done(let id):
                    index[id] = nil
                case .undecodable(let offset, let length):
                    problems.append("\(file): offset \(offset): a record of \(length) bytes whose checksum is right but whose envelope cannot be read; skipped, left in place")
                case .stopped(let offset):
                    // The tail of the segment a crash interrupted, normally: a batch never acknowledged.
                    problems.append("\(file): offset \(offset): \(bytes.count - offset) bytes after the last whole record (cut short by a crash, or damaged); not read")
                }
            }
            segment.size = Int64(end)
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
        // Past every name in the directory, spares included: no rename may ever replace a file.
        try startSegment(number: max(numbers.last ?? 0, spareNumbers.last ?? 0) + 1)
        return (index.count, problems)
    }

    enum Record {
        case message(QueueID, offset: Int64, envelopeLength: Int, dataLength: Int, headerLength: Int)
        case done(QueueID)
        /// A whole record (its checksum holds) that this version cannot read: skipped, not fatal.
        case undecodable(offset: Int, length: Int)
        /// Parsing stopped here at damage: a record of this segment cut short or failing its checksum,
        /// or anything else followed further on by a whole record of this segment.
        case stopped(offset: Int)
    }

    /// Calls `body` for each whole record of segment `segment` in order, and returns the offset where
    /// the records end (where the next would be written). Stops at the end of the bytes or at the first
    /// place that is not a whole record of this segment: a record cut short or failing its checksum, a
    /// v2 record with another segment's number (a recycled file's previous life), bytes that are no
    /// record. The stop is reported as `.stopped` only where it is damage: at a v2 header carrying this
    /// segment's number or a v1 header (a record cut short or failing its checksum), anywhere in a file
    /// of the previous version (v1 records only, as it was reported before), or when a whole record of
    /// this segment follows somewhere later. Otherwise it is the quiet end of the file's current life.
    @discardableResult
    static func parse(_ bytes: [UInt8], segment: UInt64, checksum: Checksum, _ body: (Record) -> Void) -> Int {
        let mine = UInt32(truncatingIfNeeded: segment)
        var at = 0
        var v2 = false  // a v2 record was read: v1 ones after it are stale
        var v1 = false  // a v1 record was read: the previous version's file, where any stop is reported
        while at < bytes.count {
            switch Journal.wholeRecord(bytes, at: at, segment: mine, v1Allowed: !v2, checksum: checksum) {
            case .record(let end, let length, let isMessage):
                let payload = (at + length)..<end
                if isMessage {
                    // The envelope length: after the segment field in v2, right after the magic in v1.
                    let first = Int(readUInt32(bytes, at + (length == headerLength ? 8 : 4)))
                    if let envelope = try? EnvelopeRecord.decode(Array(bytes[payload.lowerBound..<(payload.lowerBound + first)])) {
                        body(.message(envelope.id, offset: Int64(payload.lowerBound), envelopeLength: first,
                                      dataLength: payload.count - first, headerLength: length))
                    } else {
                        body(.undecodable(offset: at, length: end - at))
                    }
                } else if let text = String(bytes: bytes[payload], encoding: .utf8), let id = QueueID(rawValue: text) {
                    body(.done(id))
                } else {
                    body(.undecodable(offset: at, length: end - at))
                }
                if length == headerLength { v2 = true } else { v1 = true }
                at = end
            case .damaged:
                body(.stopped(offset: at))
                return at
            case .other:
                if (v1 && !v2) || Journal.laterRecord(bytes, after: at, segment: mine, checksum: checksum) {
                    body(.stopped(offset: at))
                }
                return at
            }
        }
        return at
    }

    private enum Scan {
        /// A whole record, checksum right, ending at `end`.
        case record(end: Int, headerLength: Int, isMessage: Bool)
        /// A record of this segment (or a v1 record) cut short or failing its checksum.
        case damaged
        /// Not a record of this segment: another's, or no record at all.
        case other
    }

    private static func hasMagic(_ bytes: [UInt8], _ at: Int, _ magic: [UInt8]) -> Bool {
        at + 4 <= bytes.count && bytes[at] == magic[0] && bytes[at + 1] == magic[1] && bytes[at + 2] == magic[2]
            && bytes[at + 3] == magic[3]
    }

    private static func wholeRecord(_ bytes: [UInt8], at: Int, segment mine: UInt32, v1Allowed: Bool,
                                    checksum: Checksum) -> Scan {
        let message = hasMagic(bytes, at, messageMagic)
        if message || hasMagic(bytes, at, doneMagic) {
            guard at + headerLength <= bytes.count else { return .damaged }  // a header cut short
            guard readUInt32(bytes, at + 4) == mine else { return .other }
            let first = Int(readUInt32(bytes, at + 8))
            let second = message ? Int(readUInt32(bytes, at + 12)) : 0
            let end = at + headerLength + first + second
            guard end <= bytes.count,
                  checksum.of(bytes[(at + headerLength)..<end], following: checksum.of(bytes[(at + 4)..<(at + 8)]))
                  == readUInt32(bytes, at + 16)
            else { return .damaged }
            return .record(end: end, headerLength: headerLength, isMessage: message)
        }
        let messageV1 = hasMagic(bytes, at, messageMagicV1)
        if v1Allowed && (messageV1 || hasMagic(bytes, at, doneMagicV1)) {
            guard at + headerLengthV1 <= bytes.count else { return .damaged }
            let first = Int(readUInt32(bytes, at + 4))
            let end = at + headerLengthV1 + first + (messageV1 ? Int(readUInt32(bytes, at + 8)) : 0)
            guard end <= bytes.count, checksum.of(bytes[(at + headerLengthV1)..<end]) == readUInt32(bytes, at + 12) else {
                return .damaged
            }
            return .record(end: end, headerLength: headerLengthV1, isMessage: messageV1)
        }
        return .other
    }

    /// Whether a whole v2 record of this segment starts anywhere after `at`: then the stop at `at` is
    /// damage in the middle, not the end of the segment's life. One pass over the rest, at start-up.
    private static func laterRecord(_ bytes: [UInt8], after at: Int, segment mine: UInt32, checksum: Checksum) -> Bool {
        var p = at + 1
        while p + headerLength <= bytes.count {
            if bytes[p] == 0x54, bytes[p + 1] == 0x4A, bytes[p + 3] == 0x32,  // "TJ?2"
               bytes[p + 2] == 0x4D || bytes[p + 2] == 0x44, readUInt32(bytes, p + 4) == mine,
               case .record = wholeRecord(bytes, at: p, segment: mine, v1Allowed: false, checksum: checksum) {
                return true
            }
            p += 1
        }
        return false
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

    /// The segment field: the low 32 bits of the segment's number.
    private static func segmentField(_ segment: UInt64) -> [UInt8] {
        var out: [UInt8] = []
        appendUInt32(&out, UInt32(truncatingIfNeeded: segment))
        return out
    }

    /// Appends the 20-byte header of a message record for segment `segment` to `out`; the envelope and
    /// the data follow it in the file, written from their own arrays (no copy of the message to build
    /// the record).
    static func appendMessageHeader(to out: inout [UInt8], segment: UInt64, envelope: [UInt8], data: [UInt8],
                                    checksum: Checksum) {
        let field = segmentField(segment)
        out += messageMagic
        out += field
        appendUInt32(&out, UInt32(envelope.count))
        appendUInt32(&out, UInt32(data.count))
        appendUInt32(&out, checksum.of(data[...], following: checksum.of(envelope[...], following: checksum.of(field[...]))))
    }

    static func doneRecord(_ id: QueueID, segment: UInt64, checksum: Checksum) -> [UInt8] {
        let text = Array(id.rawValue.utf8)
        let field = segmentField(segment)
        var out = doneMagic
        out += field
        appendUInt32(&out, UInt32(text.count))
        appendUInt32(&out, 0)
        appendUInt32(&out, checksum.of(text[...], following: checksum.of(field[...])))
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
        var length: Int64 = 0
        var placed: [(QueueID, Int64, Int, Int)] = []  // id, offset in batch, envelope length, data length
        for (envelope, data) in messages {
            var e = envelope
            e.size = data.count
            let record = EnvelopeRecord.encode(e)
            placed.append((e.id, length + Int64(Journal.headerLength), record.count, data.count))
            records.append(record)
            length += Int64(Journal.headerLength + record.count + data.count)
            stored.append(e)
        }
        // The headers carry the segment's number, known for sure only under `state`; the checksums are
        // computed outside it for the segment this batch will most likely go to, and again in the rare
        // case that it went elsewhere (a done record or a failure made the journal rotate meanwhile).
        func headers(_ number: UInt64) -> [UInt8] {
            var out: [UInt8] = []
            out.reserveCapacity(messages.count * Journal.headerLength)
            for (i, message) in messages.enumerated() {
                Journal.appendMessageHeader(to: &out, segment: number, envelope: records[i], data: message.1,
                                           checksum: checksum)
            }
            return out
        }
        state.lock()
        let expected = segments.last.map { mustRotate || $0.size >= segmentLimit ? $0.number + 1 : $0.number }
        state.unlock()
        var header = headers(expected ?? 0)

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
            if segment.number != expected { header = headers(segment.number) }
            // Each record goes out as three pieces, its header, its envelope and the message's own
            // array: the message is not copied into a batch buffer first.
            var pieces: [ArraySlice<UInt8>] = []
            pieces.reserveCapacity(messages.count * 3)
            for (i, message) in messages.enumerated() {
                pieces.append(header[(i * Journal.headerLength)..<((i + 1) * Journal.headerLength)])
                pieces.append(records[i][...])
                pieces.append(message.1[...])
            }
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

    /// Starts segment `number`: a spare renamed to it if there is one (written over from offset 0),
    /// else a new file; either way its name is durable before anything is written to it. Caller holds
    /// `state`.
    private func startSegment(number: UInt64) throws {
        let name = Journal.fileName(number, ".jnl")
        let file = path + "/" + name
        var fd: Int32 = -1
        spareLock.lock()
        let spare = spares.popLast()
        spareLock.unlock()
        if let spare {
            var info = stat()
            // renameat would replace a file of that name; nothing may have it (the numbers are past
            // every name), checked all the same.
            if fstatat(directoryFD, name, &info, 0) == 0 {
                spareLock.lock()
                spares.append(spare)
                spareLock.unlock()
                throw SpoolError("rename", path: file, errno: EEXIST, detail: "segment \(file) exists already")
            }
            if renameat(directoryFD, spare, directoryFD, name) == 0 {
                fd = open(file, O_RDWR | O_CLOEXEC)  // no O_TRUNC: its blocks are what we came for
                if fd < 0 {
                    let code = errno
                    _ = unlink(file)
                    throw SpoolError("open", path: file, errno: code)
                }
            } else {
                _ = unlinkat(directoryFD, spare, 0)  // unusable: do without it
            }
        }
        if fd < 0 {
            fd = try Spool.retrying("create", file) { open(file, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0o600) }
        }
        do {
            try Spool.retrying("fsync", path) { fsync(directoryFD) }
        } catch {
            _ = close(fd)
            _ = unlink(file)
            throw error
        }
        segments.append(Segment(number: number, path: file, fd: fd, size: 0))
    }

    /// Done records for `ids` at the end of the current segment, in one write, not synced. Caller holds
    /// `state`.
    private func appendDone(_ ids: [QueueID]) throws {
        guard let segment = segments.last, !ids.isEmpty else { return }
        var records: [UInt8] = []
        records.reserveCapacity(ids.count * (Journal.headerLength + 32))
        for id in ids { records += Journal.doneRecord(id, segment: segment.number, checksum: checksum) }
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

    /// The length of a journaled message's data, nil if it is not in the journal.
    func dataLength(_ id: QueueID) -> Int? {
        state.lock()
        defer { state.unlock() }
        return index[id].map { Int($0.dataLength) }
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
    /// `now`: monotonic seconds, for the age of closed segments.
    func compactionCandidates(now: Double, limit: Int, maxAge: Double = 600, maxSegments: Int = 8) -> [QueueID] {
        state.lock()
        defer { state.unlock() }
        // Every segment but the last is closed; those not seen closed before are from now on.
        for segment in segments.dropLast() where segment.closedAt == nil { segment.closedAt = now }
        guard segments.count > 1, let oldest = segments.first else { return [] }
        let mostlyDone = oldest.liveBytes * 4 <= oldest.size
        let old = oldest.closedAt.map { now - $0 >= maxAge } ?? false
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

    /// Closes segments and renames them to spares (up to `maxSpares` in all, only those written by this
    /// version) or unlinks them, oldest first, then makes that durable, so that a crash never keeps an
    /// older segment whose done records were in a newer one that is gone. Releases `deletionLock` taken
    /// by `takeDeadSegments`. The spares become usable once the directory fsync is done.
    private func deleteInOrder(_ dead: [Segment]) throws {
        guard !dead.isEmpty else { return }
        defer { deletionLock.unlock() }
        var renamed: [String] = []
        var reserved = 0
        var durable = false
        defer {
            // Offered for reuse only once their names are durable; after a failure they stay on disk
            // for the next start-up to find.
            spareLock.lock()
            if durable { spares += renamed }
            sparesPending -= reserved
            spareLock.unlock()
        }
        for s in dead {
            if s.fd >= 0 { _ = close(s.fd); s.fd = -1 }
            if s.recyclable {
                spareLock.lock()
                let room = spares.count + sparesPending < Journal.maxSpares
                if room { sparesPending += 1; reserved += 1 }
                spareLock.unlock()
                let spare = Journal.fileName(s.number, ".free")
                if room && renameat(directoryFD, Journal.fileName(s.number, ".jnl"), directoryFD, spare) == 0 {
                    renamed.append(spare)
                    continue
                }
            }
            if unlink(s.path) != 0 && errno != ENOENT { throw SpoolError("unlink", path: s.path, errno: errno) }
        }
        try Spool.retrying("fsync", path) { fsync(directoryFD) }
        durable = true
    }

    /// Names of the spare files ready for reuse, for tests.
    var spareFiles: [String] {
        spareLock.lock()
        defer { spareLock.unlock() }
        return spares
    }

    /// Segment files present, for tests.
    var segmentNumbers: [UInt64] {
        state.lock()
        defer { state.unlock() }
        return segments.map(\.number)
    }
}
