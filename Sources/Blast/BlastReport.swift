// The end-of-run summary of `tern blast`: built from BlastStats and the settings, printed as a table
// for people or as JSON (--json) for machines. Pure, so the arithmetic is tested without a socket.

import Foundation
import Histogram

public struct BlastReport: Codable, Equatable {
    public struct Settings: Codable, Equatable {
        /// "mail" or "handshake" (--handshake-only: no transaction, the unit is the handshake).
        public var mode: BlastMode = .mail
        public var concurrency: Int
        public var messages: Int?
        public var handshakes: Int?
        public var durationSeconds: Double?
        public var size: String
        public var recipients: String
        public var messagesPerConnection: Int
        public var pipelining: Bool
        public var rate: Double?
        public var startTLS = false
        /// --bdat, and its --chunk-size (null: one chunk per message).
        public var bdat = false
        public var chunkSize: Int?
        enum CodingKeys: String, CodingKey {
            case mode, concurrency, messages, handshakes, size, recipients, pipelining, rate, bdat
            case chunkSize = "chunk_size"
            case startTLS = "starttls"
            case durationSeconds = "duration_s", messagesPerConnection = "messages_per_connection"
        }

        /// Absent values are written as null, so the keys are the same in every report.
        public func encode(to encoder: Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(mode, forKey: .mode)
            try c.encode(concurrency, forKey: .concurrency)
            try c.encode(messages, forKey: .messages)
            try c.encode(handshakes, forKey: .handshakes)
            try c.encode(durationSeconds, forKey: .durationSeconds)
            try c.encode(size, forKey: .size)
            try c.encode(recipients, forKey: .recipients)
            try c.encode(messagesPerConnection, forKey: .messagesPerConnection)
            try c.encode(pipelining, forKey: .pipelining)
            try c.encode(rate, forKey: .rate)
            try c.encode(startTLS, forKey: .startTLS)
            try c.encode(bdat, forKey: .bdat)
            try c.encode(chunkSize, forKey: .chunkSize)
        }
    }
    public struct Messages: Codable, Equatable {
        public var attempted, accepted, tempFailed, permFailed, failed: Int
        enum CodingKeys: String, CodingKey {
            case attempted, accepted, failed, tempFailed = "temp_failed", permFailed = "perm_failed"
        }
    }
    /// Handshake mode only (null in a mail run, whose TLS sessions show in the "tls" latency count).
    public struct Handshakes: Codable, Equatable {
        public var attempted, completed, failed: Int
        /// Completed handshakes per second of elapsed time.
        public var perSecond: Double
        enum CodingKeys: String, CodingKey { case attempted, completed, failed, perSecond = "per_s" }
    }
    public struct Recipients: Codable, Equatable {
        public var accepted, tempFailed, permFailed: Int
        enum CodingKeys: String, CodingKey { case accepted, tempFailed = "temp_failed", permFailed = "perm_failed" }
    }
    public struct Rates: Codable, Equatable {
        public var messagesPerSecond, recipientsPerSecond, bytesPerSecond: Double
        enum CodingKeys: String, CodingKey {
            case messagesPerSecond = "messages_per_s", recipientsPerSecond = "recipients_per_s", bytesPerSecond = "bytes_per_s"
        }
    }
    public struct Connections: Codable, Equatable {
        public var opened, connectFailed, sessionFailed: Int
        enum CodingKeys: String, CodingKey { case opened, connectFailed = "connect_failed", sessionFailed = "session_failed" }
    }
    public struct ReplyClasses: Codable, Equatable {
        public var c2xx, c3xx, c4xx, c5xx: Int
        enum CodingKeys: String, CodingKey { case c2xx = "2xx", c3xx = "3xx", c4xx = "4xx", c5xx = "5xx" }
    }
    public struct Latency: Codable, Equatable {
        public var count: Int
        /// Milliseconds, to the microsecond.
        public var p50, p90, p99, max, mean: Double
    }

    public var server: String
    public var settings: Settings
    public var elapsedSeconds: Double
    public var messages: Messages
    public var handshakes: Handshakes?
    public var recipients: Recipients
    public var bytesAccepted: Int
    public var rates: Rates
    public var connections: Connections
    /// By stage key: greeting, ehlo, starttls, mail, rcpt, data (the reply to DATA: 354 or a
    /// refusal), data_end (the reply after the final ".").
    public var replies: [String: ReplyClasses]
    /// By stage key: connect, greeting, ehlo, tls, mail, rcpt, data, data_end, transaction, handshake.
    public var latencyMs: [String: Latency]
    public var errors: [String]

    enum CodingKeys: String, CodingKey {
        case server, settings, messages, handshakes, recipients, rates, connections, replies, errors
        case elapsedSeconds = "elapsed_s", bytesAccepted = "bytes_accepted", latencyMs = "latency_ms"
    }

    /// Every key in every report; "handshakes" is null in a mail run.
    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(server, forKey: .server)
        try c.encode(settings, forKey: .settings)
        try c.encode(elapsedSeconds, forKey: .elapsedSeconds)
        try c.encode(messages, forKey: .messages)
        try c.encode(handshakes, forKey: .handshakes)
        try c.encode(recipients, forKey: .recipients)
        try c.encode(bytesAccepted, forKey: .bytesAccepted)
        try c.encode(rates, forKey: .rates)
        try c.encode(connections, forKey: .connections)
        try c.encode(replies, forKey: .replies)
        try c.encode(latencyMs, forKey: .latencyMs)
        try c.encode(errors, forKey: .errors)
    }

    public init(stats: BlastStats, settings s: BlastSettings, elapsedSeconds: Double) {
        server = s.server.description
        let r = s.recipients
        settings = Settings(mode: s.mode, concurrency: s.concurrency, messages: s.messages, handshakes: s.handshakes,
                            durationSeconds: s.duration,
                            size: s.sizes.spec,
                            recipients: r.count == 1 ? String(r.lowerBound) : "\(r.lowerBound)-\(r.upperBound)",
                            messagesPerConnection: s.messagesPerConnection, pipelining: s.pipelining, rate: s.rate,
                            startTLS: s.startTLS, bdat: s.bdat, chunkSize: s.chunkSize)
        self.elapsedSeconds = elapsedSeconds
        messages = Messages(attempted: stats.messagesAttempted, accepted: stats.messagesAccepted,
                            tempFailed: stats.messagesTempFailed, permFailed: stats.messagesPermFailed,
                            failed: stats.messagesFailed)
        handshakes = s.mode == .handshake
            ? Handshakes(attempted: stats.handshakesAttempted, completed: stats.handshakesCompleted,
                         failed: stats.handshakesFailed,
                         perSecond: Double(stats.handshakesCompleted) / (elapsedSeconds > 0 ? elapsedSeconds : 1))
            : nil
        recipients = Recipients(accepted: stats.recipientsAccepted, tempFailed: stats.recipientsTempFailed,
                                permFailed: stats.recipientsPermFailed)
        bytesAccepted = stats.bytesAccepted
        let t = elapsedSeconds > 0 ? elapsedSeconds : 1
        rates = Rates(messagesPerSecond: Double(stats.messagesAccepted) / t,
                      recipientsPerSecond: Double(stats.recipientsAccepted) / t,
                      bytesPerSecond: Double(stats.bytesAccepted) / t)
        connections = Connections(opened: stats.connectionsOpened, connectFailed: stats.connectFailures,
                                  sessionFailed: stats.sessionFailures)
        var replies: [String: ReplyClasses] = [:]
        for stage in ReplyStage.allCases {
            let c = stats.replies[stage.rawValue]
            replies[stage.key] = ReplyClasses(c2xx: c[0], c3xx: c[1], c4xx: c[2], c5xx: c[3])
        }
        self.replies = replies
        var latency: [String: Latency] = [:]
        for stage in Stage.allCases {
            latency[stage.key] = Self.summarize(stats.latency[stage.rawValue])
        }
        latencyMs = latency
        errors = stats.firstErrors
    }

    static func summarize(_ h: Histogram<UInt64>) -> Latency {
        let ms = { (us: UInt64) in Double(us) / 1000 }
        guard h.totalCount > 0 else { return Latency(count: 0, p50: 0, p90: 0, p99: 0, max: 0, mean: 0) }
        return Latency(count: Int(h.totalCount), p50: ms(h.valueAtPercentile(50)), p90: ms(h.valueAtPercentile(90)),
                       p99: ms(h.valueAtPercentile(99)), max: ms(h.maxRecorded),
                       mean: (h.mean / 1000 * 1000).rounded() / 1000)
    }

    // MARK: Output

    public func json() -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted]
        let data = (try? encoder.encode(self)) ?? Data("{}".utf8)
        return String(decoding: data, as: UTF8.self)
    }

    /// The table for a terminal.
    public func table() -> String {
        var out = ""
        let handshakeMode = settings.mode == .handshake
        if let h = handshakes, handshakeMode {
            out += "tern blast: \(server), \(settings.concurrency) connections, handshakes only "
                + "(EHLO, STARTTLS, TLS, EHLO, QUIT)" + (settings.rate.map { ", rate cap \(Self.plain($0))/s" } ?? "") + "\n"
            out += "elapsed \(String(format: "%.3f", elapsedSeconds)) s\n\n"
            out += Self.row(["", "total", "per second"], widths: [12, 14, 14])
            out += Self.row(["handshakes", Self.grouped(h.completed), Self.rate(h.perSecond)], widths: [12, 14, 14])
            out += "\n"
            out += "handshakes: \(Self.grouped(h.attempted)) attempted, \(Self.grouped(h.completed)) completed, "
                + "\(Self.grouped(h.failed)) failed\n"
            out += "connections: \(Self.grouped(connections.opened)) opened, \(Self.grouped(connections.connectFailed)) "
                + "could not connect, \(Self.grouped(connections.sessionFailed)) failed before the handshake completed\n\n"
        } else {
            let r = settings.recipients == "1" ? "1 recipient" : "\(settings.recipients) recipients"
            let per = settings.messagesPerConnection == 0 ? "all" : String(settings.messagesPerConnection)
            out += "tern blast: \(server), \(settings.concurrency) connections, size \(settings.size), \(r), "
                + "\(per) per connection, pipelining \(settings.pipelining ? "on" : "off")"
                + (settings.bdat ? ", BDAT" + (settings.chunkSize.map { " in chunks of \($0) octets" } ?? "") : "")
                + (settings.rate.map { ", rate cap \(Self.plain($0))/s" } ?? "") + "\n"
            out += "elapsed \(String(format: "%.3f", elapsedSeconds)) s\n\n"

            out += Self.row(["", "total", "per second"], widths: [12, 14, 14])
            out += Self.row(["messages", Self.grouped(messages.accepted), Self.rate(rates.messagesPerSecond)], widths: [12, 14, 14])
            out += Self.row(["recipients", Self.grouped(recipients.accepted), Self.rate(rates.recipientsPerSecond)], widths: [12, 14, 14])
            out += Self.row(["bytes", Self.grouped(bytesAccepted), Self.rate(rates.bytesPerSecond)], widths: [12, 14, 14])
            out += "\n"
            out += "messages: \(Self.grouped(messages.attempted)) attempted, \(Self.grouped(messages.accepted)) accepted, "
                + "\(Self.grouped(messages.tempFailed)) 4xx, \(Self.grouped(messages.permFailed)) 5xx, "
                + "\(Self.grouped(messages.failed)) lost to connection errors\n"
            out += "connections: \(Self.grouped(connections.opened)) opened, \(Self.grouped(connections.connectFailed)) "
                + "could not connect, \(Self.grouped(connections.sessionFailed)) failed before a transaction\n\n"
        }

        let w = [12, 10, 10, 10, 10]
        out += Self.row(["replies", "2xx", "3xx", "4xx", "5xx"], widths: w)
        for stage in ReplyStage.allCases {
            let c = replies[stage.key]!
            if stage == .starttls && !settings.startTLS && c == ReplyClasses(c2xx: 0, c3xx: 0, c4xx: 0, c5xx: 0) { continue }
            if handshakeMode && [.mail, .rcpt, .data, .dataEnd].contains(stage) { continue }
            out += Self.row([stage.name, Self.grouped(c.c2xx), Self.grouped(c.c3xx), Self.grouped(c.c4xx), Self.grouped(c.c5xx)], widths: w)
        }
        out += "\n"

        let lw = [12, 10, 10, 10, 10, 10]
        out += Self.row(["latency ms", "count", "p50", "p90", "p99", "max"], widths: lw)
        for stage in Stage.allCases {
            let l = latencyMs[stage.key]!
            if stage == .tls && l.count == 0 && !settings.startTLS { continue }
            if stage == .handshake && !handshakeMode { continue }
            if handshakeMode && [.mail, .rcpt, .data, .dataEnd, .transaction].contains(stage) { continue }
            if l.count == 0 {
                out += Self.row([stage.name, "0", "-", "-", "-", "-"], widths: lw)
            } else {
                out += Self.row([stage.name, Self.grouped(l.count), Self.ms(l.p50), Self.ms(l.p90), Self.ms(l.p99), Self.ms(l.max)], widths: lw)
            }
        }
        if handshakeMode {
            out += "(EHLO: the EHLO under TLS; TLS: from the 220 to STARTTLS to the end of the handshake;\n"
                + " handshake: the whole session from the connect to that EHLO's reply)\n"
        } else if settings.pipelining {
            out += "(MAIL, RCPT and DATA go out in one write when the server offers PIPELINING: MAIL shows the\n"
                + " round trip, RCPT and DATA only the extra wait for their replies)\n"
        }
        if !errors.isEmpty {
            out += "\nfirst errors:\n"
            for e in errors { out += "  \(e)\n" }
        }
        return out
    }

    static func row(_ cells: [String], widths: [Int]) -> String {
        var line = ""
        for (i, cell) in cells.enumerated() {
            let w = widths[i]
            let pad = String(repeating: " ", count: Swift.max(0, w - cell.count))
            line += i == 0 ? cell + pad : pad + cell
        }
        return line + "\n"
    }

    /// 1234567 → "1,234,567".
    public static func grouped(_ n: Int) -> String {
        let digits = String(n.magnitude)
        var out = ""
        for (i, ch) in digits.enumerated() {
            if i > 0 && (digits.count - i) % 3 == 0 { out += "," }
            out.append(ch)
        }
        return n < 0 ? "-" + out : out
    }

    static func rate(_ x: Double) -> String {
        x >= 1000 ? grouped(Int(x.rounded())) : String(format: "%.1f", x)
    }

    static func ms(_ x: Double) -> String {
        x >= 100 ? String(format: "%.1f", x) : String(format: "%.3f", x)
    }

    static func plain(_ x: Double) -> String {
        x == x.rounded() ? String(Int(x)) : String(x)
    }
}

/// The one-line progress display: counts so far and the rate over the last interval.
public struct ProgressLine {
    var lastAccepted = 0
    var lastTime = 0.0

    public init() {}

    /// `target`: the run's count in its unit (messages, or handshakes in handshake mode).
    public mutating func line(elapsed: Double, stats: BlastStats, openConnections: Int, target: Int?,
                              mode: BlastMode = .mail) -> String {
        let handshakes = mode == .handshake
        let succeeded = handshakes ? stats.handshakesCompleted : stats.messagesAccepted
        let attempted = handshakes ? stats.handshakesAttempted : stats.messagesAttempted
        let failed = handshakes ? stats.handshakesFailed
            : stats.messagesTempFailed + stats.messagesPermFailed + stats.messagesFailed
        let dt = elapsed - lastTime
        let rate = dt > 0 ? Double(succeeded - lastAccepted) / dt : 0
        lastAccepted = succeeded
        lastTime = elapsed
        let done = target.map { "\(BlastReport.grouped(attempted))/\(BlastReport.grouped($0))" }
            ?? BlastReport.grouped(attempted)
        return String(format: "%6.1fs  ", elapsed) + "\(done) \(handshakes ? "handshakes" : "messages")  "
            + "\(BlastReport.grouped(Int(rate.rounded())))/s  "
            + "\(BlastReport.grouped(failed)) failed  \(openConnections) connections"
            + (stats.connectFailures > 0 ? "  \(BlastReport.grouped(stats.connectFailures)) could not connect" : "")
    }
}
