// The durable spool: where a message lives from the moment we accept it until every recipient is
// delivered or bounced.
//
// On disk, under the spool directory:
//
//     <spool>/lock              flock(LOCK_EX) by the running instance; holds its pid, for operators
//     <spool>/queue/<h>/<id>.msg  the message data exactly as it will be sent (headers and body, CRLF
//                               line ends, dot-unstuffed); written once while receiving, never changed
//     <spool>/queue/<h>/<id>.env  the envelope record (see EnvelopeRecord.swift); rewritten on every
//                               delivery attempt
//     <spool>/queue/<h>/<id>.env.tmp  an envelope being written; renamed over <id>.env when complete
//     <spool>/journal/<n>.jnl     the intake journal (Journal.swift): messages received whole in memory
//                               are made durable there, many per fdatasync, and get files of their
//                               own only if they stay queued past their first delivery attempt
//     <spool>/journal/<n>.free    a retired segment kept for reuse as a later one (at most two)
//
// <h> is the last hex digit of the id (0-9, A-F): sixteen directories, so that concurrent creates,
// renames and unlinks do not all wait on one directory's lock, and a directory fsync covers a sixteenth
// of the traffic (on this project's test machine one directory cost 1.5-4x the CPU per message of
// sixteen under load; bench/README.md). Files left directly in <spool>/queue by a version before the
// hashing are moved into place at start-up (`removeOrphans`).
//
// A message is queued exactly when its .env exists. `commit` makes that true durably: fsync the data,
// create the envelope under its final name (O_EXCL), write and fsync it, and fsync the directory so the
// new names survive a crash. A crash at any earlier point leaves a .msg without .env, which
// `removeOrphans` deletes at start-up, or an .env cut short: the record's last line is `end`, so
// `removeOrphans` knows an .env without it for a commit that never finished and removes that message
// (the client never got its 250, so it still owns the message); `load` only reports it, since at run
// time the same bytes are a commit still being written. No temporary name and rename for this first write: the
// rename was about a tenth of the CPU of receiving a message. Later rewrites (`update`) replace a
// complete record, so they go through `<id>.env.tmp` and an atomic rename. `remove` unlinks the .env
// first for the same reason.
//
// Every function here blocks (open, write, fsync, rename) and is meant for libuv's thread pool. The Spool
// holds no shared mutable state beyond the lock descriptor (behind a mutex), so any number of pool threads
// may work on different messages at once. Two threads must not work on the same message at once: the
// queue hands a message to one delivery at a time.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation  // NSLock only

/// A failed file operation: what was tried, on which path, and errno.
public struct SpoolError: Error, CustomStringConvertible, Sendable {
    public let operation: String
    public let path: String
    public let errno: Int32
    /// A sentence that replaces the strerror text where it would mislead (a held lock, a wrong id).
    public let detail: String?

    public init(_ operation: String, path: String, errno: Int32, detail: String? = nil) {
        self.operation = operation
        self.path = path
        self.errno = errno
        self.detail = detail
    }

    /// The data file already exists: another message has this id (the clock went back). Retry with next().
    public var isAlreadyExists: Bool { self.errno == EEXIST }

    public var description: String {
        "spool: \(operation) \(path): \(detail ?? String(cString: strerror(self.errno))) (errno \(self.errno))"
    }
}

/// The libc write(2); inside SpoolFile the name `write` means the method.
private func posixClose(_ fd: Int32) -> Int32 { close(fd) }
private func posixWrite(_ fd: Int32, _ bytes: UnsafeRawPointer, _ count: Int) -> Int { write(fd, bytes, count) }

/// A message being received: its data file, open for writing. Used by one thread at a time.
// @unchecked: no lock; its session hands it from the loop to one pool thread at a time, never two.
public final class SpoolFile: @unchecked Sendable {
    public let id: QueueID
    public let path: String
    public private(set) var size: Int = 0
    fileprivate var fd: Int32
    /// Set once `commit` has returned: the message is queued and `discard` must leave it alone.
    fileprivate var committed = false

    fileprivate init(id: QueueID, path: String, fd: Int32, size: Int = 0) {
        self.id = id
        self.path = path
        self.fd = fd
        self.size = size
    }

    /// The descriptor, no longer closed by this object.
    fileprivate func takeDescriptor() -> Int32 {
        let fd = self.fd
        self.fd = -1
        return fd
    }

    deinit { closeDescriptor() }

    /// Appends all of `bytes`, looping on short writes and EINTR.
    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        guard fd >= 0 else { throw SpoolError("write", path: path, errno: EBADF, detail: "file is already closed") }
        guard var next = bytes.baseAddress else { return }
        var remaining = bytes.count
        while remaining > 0 {
            let n = posixWrite(fd, next, remaining)
            if n < 0 {
                if errno == EINTR { continue }
                throw SpoolError("write", path: path, errno: errno)
            }
            if n == 0 { throw SpoolError("write", path: path, errno: EIO, detail: "write returned 0") }
            next += n
            remaining -= n
            size += n
        }
    }

    public func write(_ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { try write($0) }
    }

    fileprivate func closeDescriptor() {
        if fd >= 0 { _ = posixClose(fd); fd = -1 }
    }
}

// @unchecked: lockDescriptor, its only var, is behind lockMutex; Journal and HashedDirectory lock themselves.
public final class Spool: @unchecked Sendable {
    /// The spool directory, as given.
    public let path: String
    /// `<path>/queue`: the sixteen directories of data files and envelopes.
    public let queuePath: String
    /// The names of the hashed directories under `queuePath`, by the hex digit they stand for.
    public static let hashNames = (0..<16).map { String($0, radix: 16, uppercase: true) }
    /// One per hashed directory, each kept open for fsync after renames in it.
    private let directories: [HashedDirectory]
    /// `<path>/journal`: where most messages are committed first.
    let journal: Journal
    private let lockMutex = NSLock()
    private var lockDescriptor: Int32 = -1

    /// Directory fsyncs done, for tests and the curious.
    var directorySyncCount: Int { directories.reduce(0) { $0 + $1.syncCount } }

    /// Opens the spool at `path`, creating `<path>/queue/{0..F}` and `<path>/journal` (and parents) if
    /// missing. `journalSegmentLimit`: bytes after which the journal starts a new segment. `checksum`:
    /// the journal records' CRC-32 (the pure-Swift one unless the opener has a faster one).
    public init(path: String, journalSegmentLimit: Int64 = 32 << 20, checksum: Checksum = .crc32) throws {
        let queue = path.hasSuffix("/") ? path + "queue" : path + "/queue"
        try Spool.makeDirectories(queue)
        var created = false
        var directories: [HashedDirectory] = []
        for name in Spool.hashNames {
            let dir = queue + "/" + name
            if mkdir(dir, 0o700) == 0 { created = true } else if errno != EEXIST {
                throw SpoolError("mkdir", path: dir, errno: errno)
            }
            let fd = try Spool.retrying("open", dir) { open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
            directories.append(HashedDirectory(path: dir, fd: fd))
        }
        if created {
            // The new directories' names must survive a crash before any message goes into them.
            let fd = try Spool.retrying("open", queue) { open(queue, O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
            defer { _ = close(fd) }
            try Spool.retrying("fsync", queue) { fsync(fd) }
        }
        self.path = path
        self.queuePath = queue
        self.directories = directories
        self.journal = try Journal(path: path.hasSuffix("/") ? path + "journal" : path + "/journal",
                                   segmentLimit: journalSegmentLimit, checksum: checksum)
    }

    deinit {
        for d in directories { _ = close(d.fd) }
        unlock()
    }

    // MARK: Instance lock

    /// Takes `<path>/lock` with flock(LOCK_EX|LOCK_NB) so two instances never share a spool.
    /// Held until `unlock()` or until the Spool (or the process) goes away. Calling it again is a no-op.
    public func lock() throws {
        lockMutex.lock()
        defer { lockMutex.unlock() }
        guard lockDescriptor < 0 else { return }
        let lockPath = (path.hasSuffix("/") ? path : path + "/") + "lock"
        let fd = try Spool.retrying("open", lockPath) { open(lockPath, O_RDWR | O_CREAT | O_CLOEXEC, 0o644) }
        while flock(fd, LOCK_EX | LOCK_NB) != 0 {
            let code = errno
            if code == EINTR { continue }
            _ = close(fd)
            if code == EWOULDBLOCK {
                throw SpoolError("lock", path: lockPath, errno: code,
                                 detail: "spool \(path) is in use by another tern instance")
            }
            throw SpoolError("lock", path: lockPath, errno: code)
        }
        // Best effort: the pid is for people reading the file, the flock is what counts.
        let pid = Array("\(getpid())\n".utf8)
        if ftruncate(fd, 0) == 0 { _ = pid.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) } }
        lockDescriptor = fd
    }

    /// Releases the instance lock.
    public func unlock() {
        lockMutex.lock()
        defer { lockMutex.unlock() }
        if lockDescriptor >= 0 { _ = close(lockDescriptor); lockDescriptor = -1 }
    }

    // MARK: Receiving

    /// The hashed directory of `id`: its last hex digit.
    private func directory(_ id: QueueID) -> HashedDirectory {
        let last = id.rawValue.utf8.last ?? 0x30
        let digit: UInt8
        switch last {
        case 0x30...0x39: digit = last - 0x30
        case 0x41...0x46: digit = last - 0x41 + 10
        case 0x61...0x66: digit = last - 0x61 + 10
        default: digit = 0
        }
        return directories[Int(digit)]
    }

    public func messagePath(_ id: QueueID) -> String { directory(id).path + "/" + id.rawValue + ".msg" }
    public func envelopePath(_ id: QueueID) -> String { directory(id).path + "/" + id.rawValue + ".env" }
    private func temporaryPath(_ id: QueueID) -> String { directory(id).path + "/" + id.rawValue + ".env.tmp" }

    /// Whether a new file can be written in the spool now, as a message would be: creates
    /// `<queue>/.write-probe`, writes a block (a full disk refuses it; an empty file would still fit),
    /// removes it. For the readiness probe, on the thread pool. nil when it can; else what failed.
    public func probeWritable() -> SpoolError? {
        let file = queuePath + "/.write-probe"
        let fd = open(file, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0o600)
        guard fd >= 0 else { return SpoolError("create", path: file, errno: errno) }
        defer { _ = unlink(file) }
        let block = [UInt8](repeating: 0, count: 4096)
        let n = block.withUnsafeBytes { posixWrite(fd, $0.baseAddress!, $0.count) }
        let code = errno
        _ = close(fd)
        if n < 0 { return SpoolError("write", path: file, errno: code) }
        if n < block.count { return SpoolError("write", path: file, errno: ENOSPC, detail: "short write: the disk is full") }
        return nil
    }

    /// A message being received: `<id>.msg` opened O_CREAT|O_EXCL|O_WRONLY|O_CLOEXEC.
    /// Throws with `isAlreadyExists` when the id is taken (clock went back across a restart).
    public func create(_ id: QueueID) throws -> SpoolFile {
        if journal.contains(id) {
            throw SpoolError("create", path: messagePath(id), errno: EEXIST,
                             detail: "queue id \(id) is in the journal (the clock went back?)")
        }
        return try openMessageFile(id)
    }

    /// `<id>.msg`, created exclusively; `create` without the journal check (moving a message out).
    private func openMessageFile(_ id: QueueID) throws -> SpoolFile {
        let file = messagePath(id)
        let fd = try Spool.retrying("create", file) { open(file, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0o600) }
        return SpoolFile(id: id, path: file, fd: fd)
    }

    /// Durable commit: fsync the data file, create and write `<id>.env`, fsync it, fsync the queue
    /// directory. Only after this returns is the message queued (and may the client get 250).
    /// The stored envelope takes its size from the file. On error, call `discard(file)`.
    @discardableResult
    public func commit(_ file: SpoolFile, envelope: Envelope) throws -> Envelope {
        guard envelope.id == file.id else {
            throw SpoolError("commit", path: file.path, errno: EINVAL,
                             detail: "envelope id \(envelope.id) does not match the file")
        }
        guard file.fd >= 0, !file.committed else {
            throw SpoolError("commit", path: file.path, errno: EBADF, detail: "file is already closed")
        }
        try Spool.retrying("fsync", file.path) { fsync(file.fd) }
        let fd = file.fd
        file.fd = -1
        try Spool.retrying("close", file.path) { close(fd) }

        var stored = envelope
        stored.size = file.size
        try writeEnvelope(stored, firstTime: true)
        file.committed = true
        return stored
    }

    /// Durable commit of messages received whole in memory, many at once: they are appended to the
    /// journal with one write and one fdatasync. The stored envelopes (size set) come back in order.
    /// Throws, and none of them is queued, if the write or the sync fails or an id is in the journal.
    /// Ids are not looked up among the message files (a path lookup per message, about 1 % of the
    /// relay's CPU): the server's QueueIDGenerator hands out ids above every queued one at start-up
    /// (advance(past:)) and never the same twice, so a journaled id cannot also name a file.
    public func commit(journaling messages: [(Envelope, [UInt8])]) throws -> [Envelope] {
        try journal.append(messages)
    }

    /// Puts `prefix` in front of a message file not committed yet (the DKIM-Signature fields of a
    /// message that went to disk while it arrived): `<id>.msg.tmp` gets the prefix and a copy of the
    /// file, and is renamed over it. Returns the file to commit instead of `file` (closed here). On
    /// error the new file is removed; `discard(file)` removes the old one. Blocking.
    public func prepend(_ prefix: [UInt8], to file: SpoolFile) throws -> SpoolFile {
        guard file.fd >= 0, !file.committed else {
            throw SpoolError("prepend", path: file.path, errno: EBADF, detail: "file is already closed")
        }
        let temporary = file.path + ".tmp"
        let fd = try Spool.retrying("create", temporary) { open(temporary, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0o600) }
        let new = SpoolFile(id: file.id, path: temporary, fd: fd)
        var done = false
        defer { if !done { new.closeDescriptor(); _ = unlink(temporary) } }
        try new.write(prefix)
        let input = try Spool.retrying("open", file.path) { open(file.path, O_RDONLY | O_CLOEXEC) }
        defer { _ = posixClose(input) }
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        while true {
            let n = buffer.withUnsafeMutableBytes { read(input, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw SpoolError("read", path: file.path, errno: errno)
            }
            if n == 0 { break }
            try buffer.withUnsafeBytes { try new.write(UnsafeRawBufferPointer(rebasing: $0[..<n])) }
        }
        guard new.size == prefix.count + file.size else {
            throw SpoolError("prepend", path: file.path, errno: EIO, detail: "copied \(new.size - prefix.count) of \(file.size) bytes")
        }
        try Spool.retrying("rename", temporary) { rename(temporary, file.path) }
        file.closeDescriptor()
        done = true
        return SpoolFile(id: new.id, path: file.path, fd: new.takeDescriptor(), size: new.size)
    }

    /// Abandons a message that was not committed (client went away, commit failed): closes the file and
    /// unlinks whatever of it exists. Never throws. A no-op after a successful commit.
    public func discard(_ file: SpoolFile) {
        guard !file.committed else { return }
        file.closeDescriptor()
        // The .env first: if commit failed at the directory fsync, it may exist, and a .env is what
        // makes a message queued.
        _ = unlink(envelopePath(file.id))
        _ = unlink(temporaryPath(file.id))
        _ = unlink(file.path)
    }

    // MARK: Delivery

    /// Rewrites an envelope durably (temp + fsync + rename + directory fsync): per-recipient state,
    /// attempts, next attempt. One writer per message at a time.
    /// A message still in the journal moves to its own files with the new envelope.
    public func update(_ envelope: Envelope) throws {
        if try moveOut(envelope.id, envelope: envelope) { return }
        try writeEnvelope(envelope)
    }

    /// Moves a journaled message to its own `.msg` and `.env` (with `envelope`, or the journal's own
    /// when nil), durably, then drops it from the journal. False if it was not in the journal.
    private func moveOut(_ id: QueueID, envelope: Envelope?) throws -> Bool {
        guard let (record, data) = try journal.beginMove(id) else { return false }
        var moved = false
        defer { journal.endMove(id, moved: moved) }
        let e = try envelope ?? EnvelopeRecord.decode(record)
        // Nothing of this id should exist; a leftover would make the O_EXCL creates fail.
        _ = unlink(envelopePath(id))
        _ = unlink(messagePath(id))
        let file = try openMessageFile(id)
        do {
            try file.write(data)
            try commit(file, envelope: e)
        } catch {
            discard(file)
            throw error
        }
        moved = true
        return true
    }

    /// Moves the live messages out of the journal's oldest segment once few are left in it (at most
    /// `limit` per call), so that it can be deleted. Returns how many moved. For a periodic timer;
    /// `now` is monotonic seconds from the caller's clock, for the age of closed segments.
    public func compactJournal(now: Double, limit: Int = 1000, maxAge: Double = 600, maxSegments: Int = 8) throws -> Int {
        var moved = 0
        for id in journal.compactionCandidates(now: now, limit: limit, maxAge: maxAge, maxSegments: maxSegments) {
            if try moveOut(id, envelope: nil) { moved += 1 }
        }
        return moved
    }

    /// The message is done: unlinks the .env first (so it stops being queued), then the .msg.
    /// Missing files are not an error. Not followed by a directory fsync: if a crash undoes the unlink,
    /// the message is delivered again, which SMTP tolerates (RFC 5321 section 6.1).
    public func remove(_ id: QueueID) throws {
        if try journal.markDone(id) { return }
        try unlinkFiles(id)
    }

    /// `remove` for many messages at once, for the delivery side's batches: the journaled ones share one
    /// write of done records and one deletion of the segments they free, the others lose their files.
    /// Returns what failed, by id; an id not in the spool is not a failure. If deleting a freed journal
    /// segment fails, every journaled id of the batch carries that error (as `remove` would throw it),
    /// though they are done.
    public func remove(_ ids: [QueueID]) -> [QueueID: Error] {
        let (journaled, segmentFailure) = journal.markDone(ids)
        var failures: [QueueID: Error] = [:]
        for id in ids {
            if journaled.contains(id) {
                if let segmentFailure { failures[id] = segmentFailure }
                continue
            }
            do { try unlinkFiles(id) } catch { failures[id] = error }
        }
        return failures
    }

    /// The .env first, so that the message stops being queued before its data goes.
    private func unlinkFiles(_ id: QueueID) throws {
        for file in [envelopePath(id), messagePath(id)] where unlink(file) != 0 && errno != ENOENT {
            throw SpoolError("unlink", path: file, errno: errno)
        }
    }

    /// Ids of queued messages (those with an .env, and those in the journal), oldest first.
    public func list() throws -> [QueueID] {
        var ids: [QueueID] = journal.ids()
        let inJournal = Set(ids)
        for d in directories {
            for name in try Spool.entries(d.path) where name.hasSuffix(".env") {
                if let id = QueueID(rawValue: String(name.dropLast(4))), !inJournal.contains(id) { ids.append(id) }
            }
        }
        return ids.sorted()
    }

    /// The message bytes as stored (Received header first). Blocking: call from the thread pool.
    public func readMessage(_ id: QueueID) throws -> [UInt8] {
        if let (_, data) = try journal.read(id) { return data }
        return try Spool.readFile(messagePath(id))
    }

    /// The size of the stored message, without reading it (HEAD of the admin endpoint). Blocking.
    public func messageSize(_ id: QueueID) throws -> Int {
        if let length = journal.dataLength(id) { return length }
        var info = stat()
        let file = messagePath(id)
        guard stat(file, &info) == 0 else { throw SpoolError("stat", path: file, errno: errno) }
        return Int(info.st_size)
    }

    public func load(_ id: QueueID) throws -> Envelope {
        if let (record, _) = try journal.read(id, data: false) { return try EnvelopeRecord.decode(record) }
        let file = envelopePath(id)
        let bytes = try Spool.readFile(file)
        let envelope: Envelope
        do {
            envelope = try EnvelopeRecord.decode(bytes)
        } catch {
            // Never repaired here: a first commit may be writing this very record right now (the
            // admin endpoint lists the queue while mail arrives). `removeOrphans` clears torn records
            // at start-up, when nothing is being received.
            guard Spool.isTorn(bytes) else { throw error }
            throw SpoolError("load", path: file, errno: EINVAL,
                             detail: "envelope incomplete: being written, or cut short by a crash before its 250")
        }
        guard envelope.id == id else {
            throw SpoolError("load", path: file, errno: EINVAL, detail: "record is for id \(envelope.id)")
        }
        return envelope
    }

    // MARK: Start-up

    /// An envelope record as a crash during its first write leaves it: nothing, zeros, or the start of a
    /// record without its `end` line. Anything else that fails to decode is kept for a person to look at.
    static func isTorn(_ bytes: [UInt8]) -> Bool {
        bytes.allSatisfy { $0 == 0 }
            || (bytes.starts(with: Array("tern-envelope\t".utf8)) && !bytes.ends(with: Array("\nend\n".utf8)))
    }

    /// Start-up, before accepting mail: `removeOrphans`, then the journal's messages that were neither
    /// done nor moved to their own files are read back into its index. Returns the files removed, the
    /// messages found in the journal, and what recovery found damaged in it (for the log).
    public func recover() throws -> (removed: Int, journaled: (count: Int, problems: [String])) {
        let removed = try removeOrphans()
        let journaled = try journal.recover { access(envelopePath($0), F_OK) == 0 }
        return (removed, journaled)
    }

    /// Start-up recovery, before accepting mail: moves files of the unhashed layout into their
    /// directories, then deletes `*.env.tmp`, `*.msg.tmp` (Spool.prepend), `*.msg` files with no `.env`, and messages whose `.env` is
    /// torn (`isTorn`): partial messages never count as queued. Returns how many files were removed.
    /// Must not run while messages are being received: their .msg files have no .env yet.
    public func removeOrphans() throws -> Int {
        try moveUnhashed()
        var removed = 0
        for d in directories {
            var names = try Spool.entries(d.path)
            for name in names where name.hasSuffix(".env") {
                let file = d.path + "/" + name
                guard let bytes = try? Spool.readFile(file), Spool.isTorn(bytes) else { continue }
                if unlink(file) == 0 { removed += 1 } else if errno != ENOENT {
                    throw SpoolError("unlink", path: file, errno: errno)
                }
            }
            if removed > 0 { names = try Spool.entries(d.path) }
            let envelopes = Set(names.filter { $0.hasSuffix(".env") }.map { $0.dropLast(4) })
            for name in names {
                let orphan = name.hasSuffix(".env.tmp") || name.hasSuffix(".msg.tmp")
                    || (name.hasSuffix(".msg") && !envelopes.contains(name.dropLast(4)))
                guard orphan else { continue }
                let file = d.path + "/" + name
                if unlink(file) == 0 { removed += 1 } else if errno != ENOENT {
                    throw SpoolError("unlink", path: file, errno: errno)
                }
            }
        }
        return removed
    }

    /// `<queue>/<id>.msg|.env|.env.tmp` (the layout before hashing) → `<queue>/<h>/`. The .msg goes first so
    /// that a message is never an .env without its data; a crash midway is finished at the next start.
    private func moveUnhashed() throws {
        let names = try Spool.entries(queuePath).filter { !Spool.hashNames.contains($0) }
        let order = names.filter { !$0.hasSuffix(".env") } + names.filter { $0.hasSuffix(".env") }
        var moved = Set<Int>()
        for name in order {
            guard let dot = name.firstIndex(of: "."), let id = QueueID(rawValue: String(name[..<dot])) else { continue }
            let d = directory(id)
            let from = queuePath + "/" + name
            try Spool.retrying("rename", from) { rename(from, d.path + "/" + name) }
            moved.insert(directories.firstIndex { $0 === d }!)
        }
        for i in moved.sorted() {
            try Spool.retrying("fsync", directories[i].path) { fsync(directories[i].fd) }
        }
    }

    // MARK: Helpers

    /// `<id>.env.tmp`, fsync, rename to `<id>.env`, fsync the directory.
    private func writeEnvelope(_ envelope: Envelope, firstTime: Bool = false) throws {
        let final = envelopePath(envelope.id)
        let temporary = firstTime ? final : temporaryPath(envelope.id)
        let record = EnvelopeRecord.encode(envelope)
        let fd = try Spool.retrying("create", temporary) {
            open(temporary, firstTime ? O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC : O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0o600)
        }
        do {
            let file = SpoolFile(id: envelope.id, path: temporary, fd: fd)  // for its write loop
            try file.write(record)
            try Spool.retrying("fsync", temporary) { fsync(fd) }
            file.fd = -1
            try Spool.retrying("close", temporary) { close(fd) }
            if !firstTime { try Spool.retrying("rename", temporary) { rename(temporary, final) } }
        } catch {
            _ = unlink(temporary)
            throw error
        }
        try directory(envelope.id).sync()
    }

    /// Names in a directory (no "." or "..").
    public static func entries(_ directory: String) throws -> [String] {
        guard let dir = opendir(directory) else { throw SpoolError("opendir", path: directory, errno: errno) }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafePointer(to: &entry.pointee.d_name) {
                String(cString: UnsafeRawPointer($0).assumingMemoryBound(to: CChar.self))
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    public static func readFile(_ file: String) throws -> [UInt8] {
        let fd = try retrying("open", file) { open(file, O_RDONLY | O_CLOEXEC) }
        defer { _ = close(fd) }
        var bytes: [UInt8] = []
        // Sized once: growing by doubling held up to twice a large message while reading it.
        var info = stat()
        if fstat(fd, &info) == 0 && info.st_size > 0 { bytes.reserveCapacity(Int(info.st_size)) }
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw SpoolError("read", path: file, errno: errno)
            }
            if n == 0 { return bytes }
            bytes.append(contentsOf: chunk[..<n])
        }
    }

    /// mkdir -p, mode 0700 for what it creates.
    public static func makeDirectories(_ directory: String) throws {
        var prefix = directory.hasPrefix("/") ? "" : "."
        for component in directory.split(separator: "/") {
            prefix += "/" + component
            if mkdir(prefix, 0o700) != 0 && errno != EEXIST {
                throw SpoolError("mkdir", path: prefix, errno: errno)
            }
        }
        var info = stat()
        guard stat(directory, &info) == 0 else { throw SpoolError("stat", path: directory, errno: errno) }
        guard info.st_mode & S_IFMT == S_IFDIR else {
            throw SpoolError("mkdir", path: directory, errno: ENOTDIR)
        }
    }

    /// Runs a call that returns -1 and sets errno on failure, retrying on EINTR.
    @discardableResult
    static func retrying(_ operation: String, _ path: String, _ call: () -> Int32) throws -> Int32 {
        while true {
            let result = call()
            if result >= 0 { return result }
            let code = errno
            if code != EINTR { throw SpoolError(operation, path: path, errno: code) }
        }
    }
}

/// One hashed queue directory: its path, its open descriptor, and the group commit of its fsync.
// @unchecked: the rename counters, `running` and `syncCount` change only with `condition` held.
final class HashedDirectory: @unchecked Sendable {
    let path: String
    let fd: Int32
    // Renames are numbered as they finish (see sync).
    private let condition = NSCondition()
    private var renamesDone: UInt64 = 0
    private var renamesDurable: UInt64 = 0
    private var running = false
    private(set) var syncCount = 0

    init(path: String, fd: Int32) {
        self.path = path
        self.fd = fd
    }

    /// Makes the caller's finished rename durable with an fsync of this directory, shared between
    /// threads: an fsync that began after a rename covers it, so callers that arrive while one runs wait
    /// for it and then share the next one. Under load many commits ride on one directory fsync instead of
    /// queueing one each; no caller returns before an fsync that began after its own rename succeeded.
    func sync() throws {
        condition.lock()
        defer { condition.unlock() }
        renamesDone += 1
        let mine = renamesDone
        while renamesDurable < mine {
            if running {
                condition.wait()
                continue
            }
            running = true
            let covered = renamesDone
            condition.unlock()
            var failure: Error?
            do {
                try Spool.retrying("fsync", path) { fsync(fd) }
            } catch {
                failure = error
            }
            condition.lock()
            running = false
            syncCount += 1
            if failure == nil { renamesDurable = max(renamesDurable, covered) }
            condition.broadcast()
            if let failure { throw failure }
        }
    }
}

extension Array where Element == UInt8 {
    func ends(with suffix: [UInt8]) -> Bool {
        count >= suffix.count && self[(count - suffix.count)...].elementsEqual(suffix)
    }
}
