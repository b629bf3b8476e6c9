// LogOutput.swift: Tern's log lines, one per event, on stderr: plain text (the default) or JSON lines.
//
//   plain: 2026-11-26T16:46:14.123Z info 0661312EF1B4A7: to=<bob@example.net>, ... session=12
//   json:  {"ts":"2026-11-26T16:46:14.123Z","level":"info","qid":"0661312EF1B4A7","msg":"to=<bob@...>, ...","session":"12"}
//
// The queue id is metadata "qid" when the caller gave it; otherwise the Postfix convention of
// starting a message with "<QUEUEID>: " is recognised, so every line about a message (session,
// delivery, bounce) carries the same id in both formats and one grep shows its whole life. A session
// id ("session") ties a message to its connection's connect and helo lines.
//
// Whole lines only reach the file, so lines from different threads never interleave mid-line: one
// write(2) per line, or, while `tern serve` runs its loop, the lines of one loop iteration gathered by
// LogBuffer and written together (a message costs about nine lines; a write each was a measurable
// part of its CPU). No Foundation.

import Logging
import UVRuntime

#if canImport(Glibc)
import Glibc
#endif

public enum LogFormat: String, Sendable, CaseIterable {
    case plain
    case json
}

/// [log]: how log lines look.
public struct LogConfig: Sendable, Equatable, ConfigSection {
    public var format: LogFormat = .plain

    public init() {}

    static let tableName = "log"

    mutating func read(_ r: inout TableReader) throws {
        try r.read("format", into: &format) { value in
            guard let text = value.string else { throw Decode.wrongType("\"plain\" or \"json\"", value) }
            guard let format = LogFormat(rawValue: text) else {
                throw ConfigError(message: "must be \"plain\" or \"json\", got \"\(text)\"")
            }
            return format
        }
    }
}

public struct TernLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level
    let format: LogFormat
    let fd: Int32
    /// Called with each finished line instead of writing it (tests).
    let sink: (@Sendable (String) -> Void)?
    /// Each line's timestamp: the wall time of the same Clock type the loop owns, read on whatever
    /// thread logs (hence Sendable). The handler is made before the loop, so it gets its own copy.
    let clock: Clock

    public init(format: LogFormat, level: Logger.Level = .info, fd: Int32 = 2, clock: Clock = .system) {
        // The process logs in one format (LoggingSystem.bootstrap): lines with named fields follow it.
        Self.fieldsAsMembers = format == .json
        self.format = format
        self.logLevel = level
        self.fd = fd
        self.sink = nil
        self.clock = clock
    }

    init(format: LogFormat, level: Logger.Level = .info, clock: Clock = .system,
         sink: @escaping @Sendable (String) -> Void) {
        self.format = format
        self.logLevel = level
        self.fd = -1
        self.sink = sink
        self.clock = clock
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        let wall = clock.wall()
        let time = (seconds: wall.seconds, millis: wall.milliseconds)
        let message = event.message.description
        if sink == nil, LogBuffer.shared.append(fd: fd, { out, clock in
            Self.appendLine(to: &out, clock: &clock, format: format, time: time, level: event.level, message: message,
                            metadata: metadata, extra: event.metadata)
        }) { return }
        var clock = LogClock()
        var line: [UInt8] = []
        line.reserveCapacity(256)
        Self.appendLine(to: &line, clock: &clock, format: format, time: time, level: event.level, message: message,
                        metadata: metadata, extra: event.metadata)
        if let sink {
            sink(String(decoding: line, as: UTF8.self))
            return
        }
        writeFully(fd, line)
    }

    /// One line, newline included (tests; the handler appends bytes with appendLine).
    static func render(format: LogFormat, time: (seconds: Int, millis: Int), level: Logger.Level, message: String,
                       metadata: Logger.Metadata) -> String {
        var clock = LogClock()
        var line: [UInt8] = []
        appendLine(to: &line, clock: &clock, format: format, time: time, level: level, message: message,
                   metadata: metadata, extra: nil)
        return String(decoding: line, as: UTF8.self)
    }

    /// "0661312EF1B4A7" when the message starts with "0661312EF1B4A7: ".
    static func leadingQueueID(_ message: String) -> String? {
        let bytes = message.utf8
        guard bytes.count >= 16 else { return nil }
        var i = bytes.startIndex
        for _ in 0..<14 {
            let b = bytes[i]
            guard (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x46) else { return nil }
            i = bytes.index(after: i)
        }
        guard bytes[i] == UInt8(ascii: ":"), bytes[bytes.index(after: i)] == UInt8(ascii: " ") else { return nil }
        return String(message.prefix(14))
    }
}


extension TernLogHandler {
    /// Lines with named fields (`Logger.fields`) give them as JSON members, not as text. Set by the
    /// handler the process is bootstrapped with; read on the loop thread.
    nonisolated(unsafe) static var fieldsAsMembers = false
}

extension Logger {
    /// A line with named fields (to, relay, delay, dsn, status, reply, client, from, helo, …). Plain
    /// text: `text`, the line as Postfix writes it, byte for byte what Tern always wrote. JSON: msg is
    /// `event` ("delivery", "reject", "connect", …) and the queue id and every field are members, so
    /// a log shipper needs no pattern to find them. Nothing is built for the format not in use.
    func fields(_ event: String, qid: String? = nil, level: Logger.Level = .info,
                _ fields: @autoclosure () -> Logger.Metadata, text: @autoclosure () -> String) {
        self.fields(event, qid: qid, level: level, fields(), text)
    }

    func fields(_ event: String, qid: String? = nil, level: Logger.Level = .info,
                _ fields: @autoclosure () -> Logger.Metadata, _ text: () -> String) {
        self.fields(event, qid: qid, level: level, json: TernLogHandler.fieldsAsMembers, fields(), text)
    }

    /// The same with the format given (tests).
    func fields(_ event: String, qid: String?, level: Logger.Level, json: Bool,
                _ fields: @autoclosure () -> Logger.Metadata, _ text: () -> String) {
        guard level >= logLevel else { return }
        if json {
            var members = fields()
            if let qid { members["qid"] = .string(qid) }
            log(level: level, Logger.Message(stringLiteral: event), metadata: members)
        } else {
            // "QUEUEID: …" at the start gives the queue id, as on every other line.
            log(level: level, Logger.Message(stringLiteral: text()))
        }
    }
}

/// Log lines waiting for the end of the loop iteration. `tern serve` turns it on with its loop and
/// flushes it from a Prepare handle (just before the loop waits for I/O), and at exit. A lost tail at
/// kill -9 is at most one iteration's lines. Any thread may append; a flush writes whole lines.
// @unchecked: every var (bytes, clock, fd) is read and written only with `mutex` held.
public final class LogBuffer: @unchecked Sendable {
    public static let shared = LogBuffer()
    private var mutex = pthread_mutex_t()
    private var bytes: [UInt8] = []
    private var clock = LogClock()
    private var fd: Int32 = -1
    /// Written at once past this size, without waiting for the iteration to end.
    static let limit = 64 * 1024

    private init() { pthread_mutex_init(&mutex, nil) }

    /// Lines for `fd` are gathered from now on.
    public func start(fd: Int32 = 2) {
        pthread_mutex_lock(&mutex)
        self.fd = fd
        bytes.reserveCapacity(Self.limit)
        pthread_mutex_unlock(&mutex)
    }

    /// Flushes and goes back to a write per line.
    public func stop() {
        pthread_mutex_lock(&mutex)
        writeGathered()
        fd = -1
        pthread_mutex_unlock(&mutex)
    }

    /// Has `render` append a line to the gathered bytes, with the buffer's clock (a timestamp prefix
    /// reused within the second). False when not gathering lines for `fd`: the caller writes the line itself.
    func append(fd: Int32, _ render: (inout [UInt8], inout LogClock) -> Void) -> Bool {
        pthread_mutex_lock(&mutex)
        guard fd == self.fd else {
            pthread_mutex_unlock(&mutex)
            return false
        }
        render(&bytes, &clock)
        let full = bytes.count >= Self.limit
        pthread_mutex_unlock(&mutex)
        if full { flush() }
        return true
    }

    public func flush() {
        pthread_mutex_lock(&mutex)
        writeGathered()
        pthread_mutex_unlock(&mutex)
    }

    /// Caller holds the mutex.
    private func writeGathered() {
        guard fd >= 0, !bytes.isEmpty else { return }
        writeFully(fd, bytes)
        bytes.removeAll(keepingCapacity: true)
    }
}

/// Writes all of `bytes` to `fd`, retrying short writes and EINTR; gives up on any other error (a log
/// line that cannot be written is dropped, never retried for ever).
func writeFully(_ fd: Int32, _ bytes: [UInt8]) {
    bytes.withUnsafeBytes { buffer in
        var offset = 0
        while offset < buffer.count {
            let n = write(fd, buffer.baseAddress! + offset, buffer.count - offset)
            if n < 0 { if errno == EINTR { continue } else { return } }
            offset += n
        }
    }
}
