// EventLog.swift: message events as JSON Lines ([events] file), one object a line, for applications
// that want to hear what became of each recipient without parsing the log (issue 19):
//
//   {"type":"delivery","time":1765000000.123,"queue_id":"0661…","sender":"a@x","recipient":"b@y",
//    "destination":"y","next_hop":"mx.y[192.0.2.25]:25","tls":"TLSv1.3 …","reply":"250 2.0.0 Ok",
//    "dsn":"2.0.0","attempt":1,"size":4211}
//
// Every message event has the message's Message-ID (message_id) when it had one.
// Types: reception (one per accepted recipient), delivery, transient_failure, bounce, expiration,
// rejection (a RCPT or message refused), suppression (an address added to the suppression list) and
// admin (a postmaster's action on a message). Failures carry bounce_class.
//
// Lines are built by hand (a JSONEncoder per event would cost more than the delivery it reports),
// gathered in memory and appended on the thread pool, one write at a time. What waits is bounded: past
// `maxPending` bytes (the disk is stuck) events are dropped and counted, with one log line per episode.
// SIGUSR1 reopens the file (logrotate's postrotate). The file is a log, not a store: the durable
// outbox for webhooks is a separate part of the issue.

import Glibc
import Logging
import MailQueue
import SMTPProtocol
import UVRuntime

/// One event's members, in the order they are written. Strings are escaped as JSON requires, and
/// control characters (and DEL, C1) always as \u00XX, invisible formatting (bidi overrides,
/// zero-width) as \uXXXX: the file may be shown on a terminal.
struct EventLine {
    private(set) var bytes: [UInt8] = []
    /// "delivery", "bounce" …: which webhooks want it.
    let type: String

    init(type: String, time: Double) {
        self.type = type
        bytes.reserveCapacity(384)
        bytes.append(UInt8(ascii: "{"))
        name("type")
        string(type)
        bytes.append(UInt8(ascii: ","))
        name("time")
        number(time)
    }

    mutating func add(_ name: StaticString, _ value: String?) {
        guard let value else { return }
        bytes.append(UInt8(ascii: ","))
        self.name(name)
        string(value)
    }

    mutating func add(_ name: StaticString, _ value: Int?) {
        guard let value else { return }
        bytes.append(UInt8(ascii: ","))
        self.name(name)
        integer(value)
    }

    /// An address added to the suppression list (by a hard bounce, or by the postmaster).
    static func suppression(_ entry: SuppressionEntry, queueID: String?, bounceClass: String?, time: Double) -> EventLine {
        var line = EventLine(type: "suppression", time: time)
        line.add("queue_id", queueID)
        line.add("recipient", entry.address)
        line.add("scope", entry.scope.isEmpty ? nil : entry.scope)
        line.add("reason", entry.reason)
        line.add("source", entry.source == .bounce ? "bounce" : "manual")
        line.add("bounce_class", bounceClass)
        return line
    }

    /// The line, with its "}\n".
    func finished() -> [UInt8] {
        var line = self
        return line.finish()
    }

    /// The line, with its "}\n", taken out of this value (no copy).
    mutating func finish() -> [UInt8] {
        bytes.append(UInt8(ascii: "}"))
        bytes.append(10)
        defer { bytes = [] }
        return bytes
    }

    /// A member's name and its colon: names are ours (plain ASCII), written as they are.
    private mutating func name(_ name: StaticString) {
        bytes.append(UInt8(ascii: "\""))
        bytes.append(contentsOf: UnsafeBufferPointer(start: name.utf8Start, count: name.utf8CodeUnitCount))
        bytes.append(UInt8(ascii: "\""))
        bytes.append(UInt8(ascii: ":"))
    }

    /// Milliseconds, as "1765000000.123".
    private mutating func number(_ seconds: Double) {
        let ms = Int((max(0, seconds) * 1000).rounded())
        integer(ms / 1000)
        bytes.append(UInt8(ascii: "."))
        let frac = ms % 1000
        bytes.append(0x30 + UInt8(frac / 100))
        bytes.append(0x30 + UInt8(frac / 10 % 10))
        bytes.append(0x30 + UInt8(frac % 10))
    }

    /// Decimal digits, without going through a String.
    private mutating func integer(_ value: Int) {
        if value < 0 { bytes.append(UInt8(ascii: "-")) }
        var n = value.magnitude
        var digits = 1
        var rest = n
        while rest >= 10 {
            rest /= 10
            digits += 1
        }
        let start = bytes.count
        bytes.append(contentsOf: repeatElement(UInt8(ascii: "0"), count: digits))
        bytes.withUnsafeMutableBufferPointer { out in
            var i = start + digits - 1
            repeat {
                out[i] = 0x30 + UInt8(n % 10)
                n /= 10
                i -= 1
            } while n > 0
        }
    }

    private static let hex: [UInt8] = Array("0123456789abcdef".utf8)

    private mutating func string(_ s: String) {
        bytes.append(UInt8(ascii: "\""))
        // Most values (queue ids, addresses, replies) are printable ASCII with nothing to escape:
        // their bytes as they are, without looking at each scalar.
        let plain = s.utf8.withContiguousStorageIfAvailable { utf8 -> Bool in
            // One unsigned compare for the printable range (0x20-0x7E), then the two to escape.
            for b in utf8 where b &- 0x20 >= 0x5F || b == 0x22 || b == 0x5C { return false }
            bytes.append(contentsOf: utf8)
            return true
        }
        if plain == true {
            bytes.append(UInt8(ascii: "\""))
            return
        }
        var scalars = s.unicodeScalars.makeIterator()
        while let u = scalars.next() {
            let v = u.value
            switch v {
            case 0x22: bytes.append(contentsOf: [0x5C, 0x22])
            case 0x5C: bytes.append(contentsOf: [0x5C, 0x5C])
            case 0..<0x20, 0x7F...0x9F:
                bytes.append(contentsOf: Array("\\u00".utf8))
                bytes.append(Self.hex[Int(v >> 4)])
                bytes.append(Self.hex[Int(v & 0xF)])
            case _ where isInvisibleFormatting(u):
                // Above U+FFFF, JSON writes the UTF-16 surrogate pair.
                let units = v <= 0xFFFF ? [v] : [0xD800 + ((v - 0x10000) >> 10), 0xDC00 + ((v - 0x10000) & 0x3FF)]
                for unit in units {
                    bytes.append(contentsOf: Array("\\u".utf8))
                    for shift in [12, 8, 4, 0] as [UInt32] { bytes.append(Self.hex[Int((unit >> shift) & 0xF)]) }
                }
            default:
                bytes.append(contentsOf: String(u).utf8)
            }
        }
        bytes.append(UInt8(ascii: "\""))
    }
}

/// Where events go: the JSON Lines file and each webhook's outbox that wants the type.
final class EventBus {
    let file: EventLog?
    let webhooks: [Webhook]

    init(file: EventLog?, webhooks: [Webhook]) {
        self.file = file
        self.webhooks = webhooks
    }

    func emit(_ line: consuming EventLine) {
        let type = line.type
        let bytes = line.finish()
        file?.emit(bytes)
        for hook in webhooks where hook.wants(type) { hook.emit(bytes) }
    }

    /// SIGUSR1.
    func reopen() { file?.reopen() }

    /// The webhooks write what is pending now: a 250 will wait for it.
    func flushNow() { for hook in webhooks { hook.flushNow() } }

    /// `done` runs once every event emitted so far is in the webhooks' outboxes on disk: at once when
    /// there are no webhooks (the file is a log, not a store) or nothing waits.
    func whenSynced(_ done: @escaping () -> Void) {
        var left = webhooks.count
        guard left > 0 else { return done() }
        for hook in webhooks {
            hook.whenSynced {
                left -= 1
                if left == 0 { done() }
            }
        }
    }
}

final class EventLog {
    let path: String
    private let loop: EventLoop
    private let log: Logger
    private var fd: Int32
    private var pending: [UInt8] = []
    private var writing = false
    private var reopenAsked = false
    /// Events dropped since the last log line about it, and in all.
    private var droppedNow = 0
    private(set) var dropped = 0
    static let maxPending = 16 << 20

    init(path: String, loop: EventLoop, log: Logger) throws {
        self.path = path
        self.loop = loop
        self.log = log
        fd = try Self.open(path)
    }

    deinit { if fd >= 0 { close(fd) } }

    static func open(_ path: String) throws -> Int32 {
        let fd = Glibc.open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o640)
        guard fd >= 0 else { throw ConfigError(key: "events.file", message: "cannot open \(path): \(String(cString: strerror(errno)))") }
        return fd
    }

    func emit(_ line: [UInt8]) {
        guard fd >= 0 || writing, pending.count < Self.maxPending else {
            if droppedNow == 0 { log.error("events: \(path) is not keeping up; events are dropped until it does") }
            droppedNow += 1
            dropped += 1
            return
        }
        pending += line
        flush()
    }

    /// SIGUSR1: the file is opened again by its name once what is pending was written.
    func reopen() {
        reopenAsked = true
        if !writing { flush() }
    }

    private func flush() {
        guard !writing, reopenAsked || (fd >= 0 && !pending.isEmpty) else { return }
        writing = true
        let bytes = pending, reopening = reopenAsked, path = self.path
        var fd = self.fd
        pending = []
        reopenAsked = false
        var failure: String?
        loop.queueWork({
            if !bytes.isEmpty { failure = SuppressionStore.writeAll(fd, bytes, sync: false) }
            if reopening {
                close(fd)
                fd = (try? Self.open(path)) ?? -1
            }
        }, done: { [self] in
            writing = false
            self.fd = fd
            if let failure { log.error("events: writing \(path) failed: \(failure)") }
            if fd < 0 { log.error("events: cannot open \(path) again; events are dropped") }
            if droppedNow > 0 && pending.count < Self.maxPending / 2 {
                log.notice("events: \(droppedNow) events were dropped while \(path) was behind")
                droppedNow = 0
            }
            if fd >= 0 {
                flush()
            } else {
                dropped += pending.count > 0 ? 1 : 0  // counted as one: the lines are not parsed again
                pending = []
            }
        })
    }
}
