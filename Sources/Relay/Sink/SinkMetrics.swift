// The sink's counters: plain integers on the loop thread (for the summary at stop) mirrored into
// swift-metrics counters backed by a Prometheus registry of its own (for GET /metrics). Counting a
// message is a handful of integer and atomic adds.

import CoreMetrics
import Prometheus
import SMTPProtocol

public struct SinkTally: Sendable, Equatable {
    public var sessions = 0
    public var sessionsRefused = 0
    public var messages = 0
    public var recipients = 0
    public var bytes = 0
    /// Injected replies and dropped connections.
    public var faults = 0
    /// Replies held back (delay rules, delay- recipients, the tarpit, the banner delay): apart
    /// from faults, since a delayed reply is still the right one.
    public var delays = 0
    public var tlsSessions = 0
}

/// The time with at least one session open: the sink's rate is over the time it was busy, not over
/// its lifetime, so a sink started long before the load test reports the load test's rate.
/// Nanoseconds on a monotonic clock the caller reads.
public struct BusyTime: Sendable, Equatable {
    public private(set) var open = 0
    var since: UInt64 = 0
    var total: UInt64 = 0

    public init() {}

    public mutating func opened(at now: UInt64) {
        if open == 0 { since = now }
        open += 1
    }

    public mutating func closed(at now: UInt64) {
        guard open > 0 else { return }
        open -= 1
        if open == 0 { total += now &- since }
    }

    /// Busy nanoseconds until `now` (a session still open counts up to now).
    public func busy(at now: UInt64) -> UInt64 {
        open > 0 ? total + (now &- since) : total
    }
}

public final class SinkMetrics {
    public private(set) var tally = SinkTally()
    public let registry = PrometheusCollectorRegistry()
    private let factory: DescribedMetricsFactory
    private let sessions: CoreMetrics.Counter
    private let sessionsRefused: CoreMetrics.Counter
    private let messages: CoreMetrics.Counter
    private let recipients: CoreMetrics.Counter
    private let bytes: CoreMetrics.Counter
    private let active: CoreMetrics.Gauge
    private let tlsSessions: CoreMetrics.Counter
    private var faults: [String: CoreMetrics.Counter] = [:]
    private var activeSessions = 0

    /// The `# HELP` line of each family (a family missing here has none: test_build_info.py fails).
    static let help: [String: String] = [
        "tern_sink_sessions_total": "SMTP sessions accepted since start.",
        "tern_sink_sessions_refused_total": "Connections refused with 421 (max_connections).",
        "tern_sink_messages_total": "Messages accepted (250 at the end of DATA).",
        "tern_sink_recipients_total": "Recipients of the messages accepted.",
        "tern_sink_message_bytes_total": "Bytes of the messages accepted, as the client sent them (dot-unstuffed).",
        "tern_sink_sessions_active": "SMTP sessions open now.",
        "tern_sink_tls_sessions_total": "STARTTLS handshakes completed.",
        "tern_sink_faults_total": "Faults injected, by stage and kind (reply, delay, drop).",
    ]

    public init() {
        factory = DescribedMetricsFactory(registry: registry, help: Self.help)
        factory.recordBuildInfo()
        sessions = Counter(label: "tern_sink_sessions_total", factory: factory)
        sessionsRefused = Counter(label: "tern_sink_sessions_refused_total", factory: factory)
        messages = Counter(label: "tern_sink_messages_total", factory: factory)
        recipients = Counter(label: "tern_sink_recipients_total", factory: factory)
        bytes = Counter(label: "tern_sink_message_bytes_total", factory: factory)
        active = Gauge(label: "tern_sink_sessions_active", factory: factory)
        tlsSessions = Counter(label: "tern_sink_tls_sessions_total", factory: factory)
        active.record(0)
        // Every stage and kind shows from the start, at 0, so a scraper sees a steady set of series.
        // Only the pairs that can happen: replies at a stage, delays anywhere ("all": the tarpit),
        // drops in DATA.
        for stage in SessionStage.allCases.map(\.rawValue) {
            _ = faultCounter(stage, .reply)
            _ = faultCounter(stage, .delay)
        }
        _ = faultCounter("all", .delay)
        _ = faultCounter(SessionStage.data.rawValue, .drop)
    }

    func sessionOpened() {
        tally.sessions += 1
        sessions.increment()
        activeSessions += 1
        active.record(activeSessions)
    }

    /// A STARTTLS handshake completed.
    func tlsSessionStarted() {
        tally.tlsSessions += 1
        tlsSessions.increment()
    }

    func sessionClosed() {
        activeSessions -= 1
        active.record(activeSessions)
    }

    func sessionRefused() {
        tally.sessionsRefused += 1
        sessionsRefused.increment()
    }

    func messageAccepted(recipients n: Int, bytes size: Int) {
        tally.messages += 1
        tally.recipients += n
        tally.bytes += size
        messages.increment()
        recipients.increment(by: n)
        bytes.increment(by: size)
    }

    func fault(_ stage: SessionStage?, _ kind: FaultKind) {
        if kind == .delay { tally.delays += 1 } else { tally.faults += 1 }
        faultCounter(stage?.rawValue ?? "all", kind).increment()
    }

    private func faultCounter(_ stage: String, _ kind: FaultKind) -> CoreMetrics.Counter {
        let key = stage + "/" + kind.rawValue
        if let c = faults[key] { return c }
        let c = Counter(label: "tern_sink_faults_total", dimensions: [("stage", stage), ("kind", kind.rawValue)],
                        factory: factory)
        faults[key] = c
        return c
    }

    /// The Prometheus text exposition format (version 0.0.4).
    public func exposition() -> [UInt8] {
        registry.emitToBuffer()
    }
}
