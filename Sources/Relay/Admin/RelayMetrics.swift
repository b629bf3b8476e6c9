// The relay's numbers for GET /metrics: swift-metrics handles backed by a Prometheus registry of the
// relay's own (not the process-wide MetricsSystem, so `tern sink` and tests keep theirs apart).
//
// Cost per event: every counter is made once, here, and kept; an event is one atomic add on a handle
// already in hand, with no label building and no allocation. Labelled families (refusals by reason,
// DNS by kind) are small fixed tables made up front. Queue length by priority and state is not
// counted per event at all: the admin endpoint counts the in-memory queue when it is scraped
// (`updateQueueGauges`), so the delivery path pays nothing for it.

import CoreMetrics
import MailQueue
import Prometheus
import SMTPProtocol
import UVRuntime

public final class RelayMetrics {
    public let registry = PrometheusCollectorRegistry()
    private let factory: DescribedMetricsFactory

    // Inbound sessions and what they hand to the queue.
    private let sessionsOpen: CoreMetrics.Gauge
    private let sessionsTotal: CoreMetrics.Counter
    private var openSessions = 0
    private let messagesReceived: CoreMetrics.Counter
    private let recipientsReceived: CoreMetrics.Counter
    private let bytesIn: CoreMetrics.Counter

    // Delivery results.
    private let messagesDelivered: CoreMetrics.Counter
    private let messagesDeferred: CoreMetrics.Counter
    private let messagesBounced: CoreMetrics.Counter
    private let messagesDeleted: CoreMetrics.Counter
    private let recipientsDelivered: CoreMetrics.Counter
    private let recipientsDeferred: CoreMetrics.Counter
    private let recipientsBounced: CoreMetrics.Counter
    private let bytesOut: CoreMetrics.Counter
    private let deliveryDelay: CoreMetrics.Recorder
    private let queueResidence: CoreMetrics.Recorder

    // DNS, by kind of lookup.
    private let dnsLookups: [CoreMetrics.Counter]
    private let dnsFailures: [CoreMetrics.Counter]

    // TLS sessions.
    private let tlsInbound: CoreMetrics.Counter
    private let tlsOutbound: CoreMetrics.Counter

    // Refusals.
    private let connectionsRefused: [CoreMetrics.Counter]
    /// Commands refused, by reason (indexed like `Refusal.Reason.allCases`).
    private let commandsRefused: [CoreMetrics.Counter]

    // The memory budget for message data (DataBudget), read when scraped.
    private let bufferedData: CoreMetrics.Gauge
    private let bufferedDataLimit: CoreMetrics.Gauge
    private let sessionsWaitingForBuffer: CoreMetrics.Gauge

    // Queue gauges: by state (all four always), by priority (a level appears once it was seen).
    private var queueByState: [CoreMetrics.Gauge] = []
    private var queueByPriority: [CoreMetrics.Gauge?] = Array(repeating: nil, count: 19)

    // Traffic shaping, per rule label × egress source (bounded: rule names, "default", source names;
    // never a raw domain), copied from the delivery core when scraped.
    private struct ShapingHandles {
        var delivered: CoreMetrics.Counter
        var deferred: CoreMetrics.Counter
        var suspended: CoreMetrics.FloatingPointCounter
        var connections: CoreMetrics.Gauge
        /// The core's totals already added (counters only go up).
        var seen = ShapingTotals()
    }
    private struct ShapingTotals {
        var delivered = 0
        var deferred = 0
        var suspended = 0.0
    }
    private var shaping: [ShapingMetricKey: ShapingHandles] = [:]
    /// Failures by bounce class and status ("deferred", "bounced", "expired"): the classes are the
    /// configured rules' names, so the label set stays bounded.
    private var bounceClasses: [String: CoreMetrics.Counter] = [:]
    private var webhookCounters: [String: CoreMetrics.Counter] = [:]
    private var webhookGauges: [String: CoreMetrics.Gauge] = [:]
    private var clusterGauges: [String: CoreMetrics.Gauge] = [:]
    private var clusterCounters: [String: CoreMetrics.Counter] = [:]

    /// Seconds: from a minute-fast relay to mail that waited days on retries.
    static let delayBuckets: [Double] = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14_400,
                                         86_400, 432_000]

    public enum DNSKind: Int, CaseIterable, Sendable {
        case mx, address, ptr
        var label: String { ["mx", "address", "ptr"][rawValue] }
    }

    public enum ConnectionRefusal: Int, CaseIterable, Sendable {
        /// server.max_connections or server.max_connections_per_ip reached (the log line says which).
        case tooManyConnections
        /// Accepted while stopping.
        case shuttingDown
        var label: String { ["too_many_connections", "shutting_down"][rawValue] }
    }

    public static let queueStates = ["active", "queued", "deferred", "held"]

    /// The `# HELP` line of each family (a family missing here has none: test_build_info.py fails).
    static let help: [String: String] = [
        "tern_sessions_open": "Inbound SMTP sessions open now.",
        "tern_sessions_total": "Inbound SMTP sessions accepted since start.",
        "tern_messages_received_total": "Messages received and safely queued (each got 250).",
        "tern_recipients_received_total": "Recipients of the messages received and queued.",
        "tern_message_bytes_in_total": "Bytes of the messages queued (the spooled data, Received header included).",
        "tern_messages_delivered_total": "Messages that left the queue with every recipient delivered.",
        "tern_messages_deferred_total": "Delivery attempts (one per message and destination) that left recipients deferred.",
        "tern_messages_bounced_total": "Messages that left the queue with at least one bounced recipient.",
        "tern_messages_deleted_total": "Messages removed from the queue by an operator (tern queue delete).",
        "tern_recipients_delivered_total": "Recipients delivered to their next hop.",
        "tern_recipients_deferred_total": "Recipient delivery attempts that failed temporarily (retried later).",
        "tern_recipients_bounced_total": "Recipients that failed permanently (the sender gets a bounce).",
        "tern_webhook_events_total": "Events of each [[events.webhook]] by outcome: sent (acknowledged with a 2xx), dropped (past max_outbox_size).",
        "tern_webhook_failures_total": "POSTs to each webhook that failed (refused, timed out, not 2xx); the batch is sent again.",
        "tern_webhook_outbox_bytes": "Bytes of events in each webhook's outbox (spool/outbox/NAME), sent or not yet removed.",
        "tern_cluster_redis_up": "1 while the [cluster] Redis answers, 0 while this node goes on alone.",
        "tern_cluster_redis_failures_total": "Times the [cluster] Redis became unreachable (refused, or no answer within [cluster] timeout).",
        "tern_cluster_nodes": "Nodes of the cluster alive at the last heartbeat, this one included.",
        "tern_cluster_limit_requests_total": "Requests to the cluster's Redis for connection leases and rate permits (one round trip each).",
        "tern_cluster_connections_shed_total": "Connections closed after their message because this node held more than its share of a rule's cluster-wide connections while another node waited.",
        "tern_cluster_changes_applied_total": "Changes made by other nodes and applied here, by kind: suppression, shaping.",
        "tern_bounce_class_total": "Failed recipients by bounce class (etc/bounce-classes.toml and [[bounce.rule]]) and status: deferred (per attempt), bounced, expired.",
        "tern_message_bytes_out_total": "Bytes of messages delivered, counted once per delivery.",
        "tern_delivery_delay_seconds": "Seconds from arrival to delivery, per delivered recipient.",
        "tern_queue_residence_seconds": "Seconds from arrival to leaving the queue, per message.",
        "tern_dns_lookups_total": "DNS queries asked (not cache hits), by kind: mx, address, ptr.",
        "tern_dns_failures_total": "DNS queries that failed (not NXDOMAIN or no data), by kind.",
        "tern_tls_sessions_total": "TLS handshakes completed, by direction: in (clients), out (next hops).",
        "tern_connections_refused_total": "Inbound connections refused with 421 before the session started, by reason.",
        "tern_commands_refused_total": "Refused commands and sessions ended by the server, by the session's reason.",
        "tern_buffered_data_bytes": "Bytes of message data the sessions hold in memory ahead of the spool.",
        "tern_buffered_data_limit_bytes": "The budget for message data held in memory (server.max_buffered_data).",
        "tern_sessions_waiting_for_buffer": "Sessions that stopped reading until buffered message data drains.",
        "tern_queue_messages": "Messages in the queue by state, counted when scraped.",
        "tern_queue_messages_by_priority": "Messages in the queue by MT-PRIORITY level, counted when scraped.",
        "tern_shaping_recipients_delivered_total": "Recipients (not messages) delivered, by shaping rule (\"default\": none matched) and egress source.",
        "tern_shaping_recipients_deferred_total": "Recipients (not messages) deferred, one per recipient per attempt, by shaping rule and egress source.",
        "tern_shaping_suspended_seconds_total": "Seconds a shaping rule's destinations spent suspended (dead, backoff or postmaster), by rule and source (a postmaster's suspension, every source, under source=\"\").",
        "tern_shaping_connections": "Outbound connections open now, by shaping rule and egress source.",
    ]

    public init() {
        var f = DescribedMetricsFactory(registry: registry, help: Self.help)
        for name in ["tern_delivery_delay_seconds", "tern_queue_residence_seconds"] {
            f.valueHistogramBuckets[name] = Self.delayBuckets
        }
        factory = f
        f.recordBuildInfo()
        func counter(_ name: String, _ dimensions: [(String, String)] = []) -> CoreMetrics.Counter {
            Counter(label: name, dimensions: dimensions, factory: f)
        }
        sessionsOpen = Gauge(label: "tern_sessions_open", factory: f)
        sessionsOpen.record(0)
        sessionsTotal = counter("tern_sessions_total")
        messagesReceived = counter("tern_messages_received_total")
        recipientsReceived = counter("tern_recipients_received_total")
        bytesIn = counter("tern_message_bytes_in_total")
        messagesDelivered = counter("tern_messages_delivered_total")
        messagesDeferred = counter("tern_messages_deferred_total")
        messagesBounced = counter("tern_messages_bounced_total")
        messagesDeleted = counter("tern_messages_deleted_total")
        recipientsDelivered = counter("tern_recipients_delivered_total")
        recipientsDeferred = counter("tern_recipients_deferred_total")
        recipientsBounced = counter("tern_recipients_bounced_total")
        bytesOut = counter("tern_message_bytes_out_total")
        deliveryDelay = Recorder(label: "tern_delivery_delay_seconds", factory: f)
        queueResidence = Recorder(label: "tern_queue_residence_seconds", factory: f)
        dnsLookups = DNSKind.allCases.map { counter("tern_dns_lookups_total", [("kind", $0.label)]) }
        dnsFailures = DNSKind.allCases.map { counter("tern_dns_failures_total", [("kind", $0.label)]) }
        tlsInbound = counter("tern_tls_sessions_total", [("direction", "in")])
        tlsOutbound = counter("tern_tls_sessions_total", [("direction", "out")])
        connectionsRefused = ConnectionRefusal.allCases.map {
            counter("tern_connections_refused_total", [("reason", $0.label)])
        }
        commandsRefused = Refusal.Reason.allCases.map { counter("tern_commands_refused_total", [("reason", $0.rawValue)]) }
        bufferedData = Gauge(label: "tern_buffered_data_bytes", factory: f)
        bufferedDataLimit = Gauge(label: "tern_buffered_data_limit_bytes", factory: f)
        sessionsWaitingForBuffer = Gauge(label: "tern_sessions_waiting_for_buffer", factory: f)
        updateBufferGauges(DataBudget(limit: 0, perRead: 0))
        queueByState = Self.queueStates.map { Gauge(label: "tern_queue_messages", dimensions: [("state", $0)], factory: f) }
        updateQueueGauges(QueueCounts())
    }

    // MARK: Inbound

    func sessionOpened() {
        sessionsTotal.increment()
        openSessions += 1
        sessionsOpen.record(openSessions)
    }

    func sessionClosed() {
        openSessions -= 1
        sessionsOpen.record(openSessions)
    }

    func connectionRefused(_ reason: ConnectionRefusal) {
        connectionsRefused[reason.rawValue].increment()
    }

    /// A message is safely queued: its recipients and its size (the bytes of the spooled data file).
    func messageReceived(recipients: Int, bytes: Int) {
        messagesReceived.increment()
        recipientsReceived.increment(by: recipients)
        bytesIn.increment(by: bytes)
    }

    /// A command refused (or a session ended by the server), as the session reported it: one atomic add.
    func commandRefused(_ reason: Refusal.Reason) {
        commandsRefused[Self.reasonIndex[reason]!].increment()
    }

    private static let reasonIndex: [Refusal.Reason: Int] =
        Dictionary(uniqueKeysWithValues: Refusal.Reason.allCases.enumerated().map { ($1, $0) })

    // MARK: TLS

    /// A TLS handshake with a client completed (STARTTLS or implicit TLS; InboundSession).
    public func tlsSessionInbound() { tlsInbound.increment() }

    /// A TLS handshake with a next hop completed (OutboundConnection), verified or not.
    public func tlsSessionOutbound() { tlsOutbound.increment() }

    // MARK: DNS

    func dnsLookup(_ kind: DNSKind, failed: Bool) {
        dnsLookups[kind.rawValue].increment()
        if failed { dnsFailures[kind.rawValue].increment() }
    }

    // MARK: Delivery

    func recipientDelivered(delay: Double) {
        recipientsDelivered.increment()
        deliveryDelay.record(max(0, delay))
    }

    func recipientDeferred() { recipientsDeferred.increment() }
    func recipientBounced() { recipientsBounced.increment() }
    /// Events of a webhook by outcome: sent (acknowledged with a 2xx) or dropped (the outbox's bound).
    func webhookEvents(_ webhook: String, outcome: String, count: Int) {
        let key = webhook + "\u{0}" + outcome
        let counter = webhookCounters[key] ?? CoreMetrics.Counter(label: "tern_webhook_events_total",
                                                                 dimensions: [("webhook", webhook), ("outcome", outcome)],
                                                                 factory: factory)
        webhookCounters[key] = counter
        counter.increment(by: count)
    }

    /// A POST to a webhook that failed (it is retried).
    func webhookFailure(_ webhook: String) {
        let key = webhook + "\u{0}failures"
        let counter = webhookCounters[key] ?? CoreMetrics.Counter(label: "tern_webhook_failures_total",
                                                                 dimensions: [("webhook", webhook)], factory: factory)
        webhookCounters[key] = counter
        counter.increment()
    }

    /// The bytes a webhook's outbox holds on disk and in memory.
    func webhookOutbox(_ webhook: String, bytes: Int) {
        let gauge = webhookGauges[webhook] ?? CoreMetrics.Gauge(label: "tern_webhook_outbox_bytes",
                                                               dimensions: [("webhook", webhook)], factory: factory)
        webhookGauges[webhook] = gauge
        gauge.record(bytes)
    }

    // MARK: The cluster (issue 20): families appear once [cluster] is on.

    private func clusterGauge(_ name: String) -> CoreMetrics.Gauge {
        if let g = clusterGauges[name] { return g }
        let g = CoreMetrics.Gauge(label: name, factory: factory)
        clusterGauges[name] = g
        return g
    }

    func clusterRedisUp(_ up: Bool) { clusterGauge("tern_cluster_redis_up").record(up ? 1 : 0) }
    func clusterNodes(_ n: Int) { clusterGauge("tern_cluster_nodes").record(n) }

    func clusterRequest() {
        let counter = clusterCounters["requests"] ?? CoreMetrics.Counter(label: "tern_cluster_limit_requests_total", factory: factory)
        clusterCounters["requests"] = counter
        counter.increment()
    }

    func clusterConnectionsShed(_ n: Int) {
        let counter = clusterCounters["shed"] ?? CoreMetrics.Counter(label: "tern_cluster_connections_shed_total", factory: factory)
        clusterCounters["shed"] = counter
        counter.increment(by: n)
    }

    func clusterRedisFailure() {
        let counter = clusterCounters["failures"] ?? CoreMetrics.Counter(label: "tern_cluster_redis_failures_total", factory: factory)
        clusterCounters["failures"] = counter
        counter.increment()
    }

    func clusterChangesApplied(_ kind: String) {
        let counter = clusterCounters[kind] ?? CoreMetrics.Counter(label: "tern_cluster_changes_applied_total",
                                                                  dimensions: [("kind", kind)], factory: factory)
        clusterCounters[kind] = counter
        counter.increment()
    }

    func bounceClassified(_ bounceClass: String, status: String) {
        let key = bounceClass + "\u{0}" + status
        if let counter = bounceClasses[key] { return counter.increment() }
        let counter = CoreMetrics.Counter(label: "tern_bounce_class_total",
                                          dimensions: [("class", bounceClass), ("status", status)], factory: factory)
        bounceClasses[key] = counter
        counter.increment()
    }
    /// A delivery attempt of a message left recipients deferred.
    func messageDeferred() { messagesDeferred.increment() }
    func bytesDelivered(_ n: Int) { bytesOut.increment(by: n) }

    /// A message left the queue: how it ended and how long it was queued.
    func messageLeftQueue(delivered: Bool, bounced: Bool, deleted: Bool, residence: Double) {
        if deleted {
            messagesDeleted.increment()
        } else if bounced {
            messagesBounced.increment()
        } else if delivered {
            messagesDelivered.increment()
        }
        queueResidence.record(max(0, residence))
    }

    // MARK: Queue

    /// Messages in the queue by state and priority, counted when the endpoint is scraped.
    public struct QueueCounts: Equatable, Sendable {
        /// [state index in `queueStates`][priority + 9]
        public var counts: [[Int]] = Array(repeating: Array(repeating: 0, count: 19), count: 4)
        public init() {}

        public mutating func add(state: String, priority: Int) {
            guard let s = RelayMetrics.queueStates.firstIndex(of: state) else { return }
            counts[s][min(max(priority, -9), 9) + 9] += 1
        }

        public func count(state: String) -> Int {
            guard let s = RelayMetrics.queueStates.firstIndex(of: state) else { return 0 }
            return counts[s].reduce(0, +)
        }
    }

    /// Message data held in memory by inbound sessions, the limit, and the sessions stopped until it
    /// drains; copied from the budget when the endpoint is scraped (the sessions pay nothing per read).
    func updateBufferGauges(_ budget: DataBudget) {
        bufferedData.record(budget.held)
        bufferedDataLimit.record(budget.limit)
        sessionsWaitingForBuffer.record(budget.waiting)
    }

    func updateQueueGauges(_ q: QueueCounts) {
        for s in queueByState.indices { queueByState[s].record(q.counts[s].reduce(0, +)) }
        for p in 0..<19 {
            let n = q.counts.reduce(0) { $0 + $1[p] }
            if queueByPriority[p] == nil && n > 0 {
                queueByPriority[p] = Gauge(label: "tern_queue_messages_by_priority", dimensions: [("priority", "\(p - 9)")],
                                           factory: factory)
            }
            queueByPriority[p]?.record(n)
        }
    }

    /// The shaping counters of the delivery core (totals since start), when the endpoint is scraped.
    /// A rule × source seen once keeps its series (its gauge goes to 0), as a SIGHUP may bring it back.
    public func updateShapingMetrics(_ metrics: [ShapingMetricKey: ShapingCounters]) {
        for (key, c) in metrics {
            var h = shaping[key] ?? makeShapingHandles(key)
            if c.sent > h.seen.delivered { h.delivered.increment(by: c.sent - h.seen.delivered); h.seen.delivered = c.sent }
            if c.deferred > h.seen.deferred { h.deferred.increment(by: c.deferred - h.seen.deferred); h.seen.deferred = c.deferred }
            if c.suspendedSeconds > h.seen.suspended {
                h.suspended.increment(by: c.suspendedSeconds - h.seen.suspended)
                h.seen.suspended = c.suspendedSeconds
            }
            h.connections.record(c.connections)
            shaping[key] = h
        }
        for (key, h) in shaping where metrics[key] == nil { h.connections.record(0) }
    }

    private func makeShapingHandles(_ key: ShapingMetricKey) -> ShapingHandles {
        let labels = [("rule", key.rule), ("source", key.source)]
        return ShapingHandles(
            delivered: Counter(label: "tern_shaping_recipients_delivered_total", dimensions: labels, factory: factory),
            deferred: Counter(label: "tern_shaping_recipients_deferred_total", dimensions: labels, factory: factory),
            suspended: FloatingPointCounter(label: "tern_shaping_suspended_seconds_total", dimensions: labels, factory: factory),
            connections: Gauge(label: "tern_shaping_connections", dimensions: labels, factory: factory))
    }

    /// The Prometheus text exposition format (version 0.0.4).
    public func exposition() -> [UInt8] {
        registry.emitToBuffer()
    }
}
