// SuppressionStore.swift: the suppression list of a running relay (MailQueue's SuppressionList), kept
// in the spool directory as `suppression.list`, an append-only file of SuppressionRecord lines.
//
// - Start-up reads and replays the file (a line cut short by a crash is dropped and the file is
//   rewritten without it), and rewrites it whole when it holds many more lines than entries.
// - A change is in the list at once (the next RCPT sees it) and its line goes to the file on the
//   thread pool: one work item at a time, every line that waited in one write and one fdatasync.
//   `then` runs on the loop once the change is durable (the admin API answers then).
// - RCPT asks `refusal(of:sender:)`: 550 5.1.1 for a suppressed recipient.

import Glibc
import Logging
import MailQueue
import SMTPProtocol
import UVRuntime

// @unchecked: the list and the writer's state are used on the loop thread only; the pool work gets
// copies of the bytes and the descriptor.
final class SuppressionStore: RecipientCheck, @unchecked Sendable {
    private(set) var list: SuppressionList
    let path: String
    private let loop: EventLoop
    private let log: Logger
    private let fd: Int32
    private var pending: [UInt8] = []
    /// Called with nil once synced, or with why the write failed.
    private var pendingDone: [(String?) -> Void] = []
    private var writing = false
    /// Lines in the file, for the rewrite at the next start-up.
    private(set) var fileLines: Int

    static let fileName = "suppression.list"

    /// Reads `spoolPath`/suppression.list (created empty when missing).
    init(spoolPath: String, loop: EventLoop, log: Logger) throws {
        path = spoolPath + "/" + Self.fileName
        self.loop = loop
        self.log = log
        var list = SuppressionList()
        var lines = 0
        if let bytes = try Self.readIfExists(path) {
            let result = SuppressionRecord.replay(bytes, into: &list)
            lines = bytes.reduce(0) { $0 + ($1 == 10 ? 1 : 0) }
            if result.bad > 0 { log.warning("suppression: \(result.bad) lines of \(path) are not records; skipped") }
            if result.cutShort || result.bad > 0 || lines > 2 * list.count + 10_000 {
                try Self.rewrite(path, list)
                lines = list.count
            }
        }
        self.list = list
        fileLines = lines
        fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw ConfigError(message: "cannot open \(path): \(String(cString: strerror(errno)))") }
        if list.count > 0 { log.info("suppression: \(list.count) entries in \(path)") }
    }

    deinit { close(fd) }

    // MARK: RCPT

    func refusal(of recipient: String, sender: MailPath) -> Reply? {
        guard list.isSuppressed(recipient: recipient, senderDomain: sender.isNull ? nil : sender.domain) else { return nil }
        return Reply(550, "5.1.1", "Error: recipient address suppressed")
    }

    // MARK: Changes

    /// Adds (or replaces) an entry; false for an address or scope that cannot be kept.
    @discardableResult
    func add(_ entry: SuppressionEntry, then done: ((String?) -> Void)? = nil) -> Bool {
        guard list.add(entry) else { return false }
        let record = SuppressionRecord.add(entry)
        append(record.line, then: done)
        onLocalChange?(record)
        return true
    }

    /// Removes an entry; false when there was none.
    @discardableResult
    func remove(address: String, scope: String, then done: ((String?) -> Void)? = nil) -> Bool {
        let address = SuppressionList.normalized(address), scope = SuppressionList.normalized(scope)
        guard list.remove(address: address, scope: scope) else { return false }
        let record = SuppressionRecord.remove(address: address, scope: scope)
        append(record.line, then: done)
        onLocalChange?(record)
        return true
    }

    /// Told of each change made here (not of those `applyShared` makes): the cluster shares it.
    var onLocalChange: ((SuppressionRecord) -> Void)?

    /// A change another node made: applied (and written here, the local copy being the fallback) when
    /// it changes something. True when it did.
    @discardableResult
    func applyShared(_ record: SuppressionRecord) -> Bool {
        switch record {
        case .add(let e):
            if let old = list.entry(address: e.address, scope: e.scope), old == e { return false }
            guard list.add(e) else { return false }
        case .remove(let address, let scope):
            guard list.remove(address: address, scope: scope) else { return false }
        }
        append(record.line, then: nil)
        return true
    }

    /// Runs `done` on the loop once every change made so far is synced (at once when none waits), with
    /// why a write failed, if one did.
    func whenSynced(_ done: @escaping (String?) -> Void) {
        guard writing || !pending.isEmpty else { return done(nil) }
        pendingDone.append(done)
    }

    private func append(_ line: [UInt8], then done: ((String?) -> Void)?) {
        pending += line
        fileLines += 1
        if let done { pendingDone.append(done) }
        flush()
    }

    private func flush() {
        guard !writing, !pending.isEmpty else { return }
        writing = true
        let bytes = pending, callbacks = pendingDone, fd = self.fd
        pending = []
        pendingDone = []
        var failure: String?
        loop.queueWork({
            // A write cut short must not leave half a line for the next one to be glued to.
            let before = lseek(fd, 0, SEEK_END)
            failure = Self.writeAll(fd, bytes)
            if failure != nil, before >= 0 { _ = ftruncate(fd, before) }
        }, done: { [self] in
            writing = false
            if let failure { log.error("suppression: writing \(path) failed: \(failure); the change is in memory only until a restart") }
            for done in callbacks { done(failure) }
            if pending.isEmpty && !pendingDone.isEmpty {
                // Asked for by whenSynced while this write was under way, with nothing new to write.
                let waiting = pendingDone
                pendingDone = []
                for done in waiting { done(failure) }
            }
            flush()
        })
    }

    // MARK: Files

    /// Writes every byte (a short write goes on), then syncs the data unless `sync` is false.
    /// `at`: with pwrite at that offset of the file, instead of at its current position.
    static func writeAll(_ fd: Int32, _ bytes: [UInt8], at position: Int? = nil, sync: Bool = true) -> String? {
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { b in
                position.map { pwrite(fd, b.baseAddress! + offset, b.count - offset, off_t($0 + offset)) }
                    ?? write(fd, b.baseAddress! + offset, b.count - offset)
            }
            if n < 0 {
                if errno == EINTR { continue }
                return String(cString: strerror(errno))
            }
            offset += n
        }
        guard sync else { return nil }
        return fdatasync(fd) == 0 ? nil : String(cString: strerror(errno))
    }

    static func readIfExists(_ path: String) throws -> [UInt8]? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 {
            if errno == ENOENT { return nil }
            throw ConfigError(message: "cannot read \(path): \(String(cString: strerror(errno)))")
        }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw ConfigError(message: "cannot read \(path): \(String(cString: strerror(errno)))")
            }
            if n == 0 { break }
            bytes.append(contentsOf: chunk[0..<n])
        }
        return bytes
    }

    /// The list as a fresh file: written beside, synced, renamed over, the directory synced.
    static func rewrite(_ path: String, _ list: SuppressionList) throws {
        let temporary = path + ".tmp"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw ConfigError(message: "cannot write \(temporary): \(String(cString: strerror(errno)))") }
        var bytes: [UInt8] = []
        for e in list.entries { bytes += SuppressionRecord.add(e).line }
        let failure = writeAll(fd, bytes)
        close(fd)
        if let failure { throw ConfigError(message: "cannot write \(temporary): \(failure)") }
        guard rename(temporary, path) == 0 else {
            throw ConfigError(message: "cannot rename \(temporary): \(String(cString: strerror(errno)))")
        }
        let directory = String(path[..<(path.lastIndex(of: "/") ?? path.startIndex)])
        let dfd = open(directory.isEmpty ? "." : directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dfd >= 0 {
            fsync(dfd)
            close(dfd)
        }
    }
}
