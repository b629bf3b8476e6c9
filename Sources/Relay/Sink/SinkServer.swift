// `tern sink`: an SMTP server on the relay's loop and ServerSession code, without a queue. Each
// accepted message is discarded, counted, or kept as a file; faults are injected through the
// session's hooks (SinkFaults.swift). Counters go to /metrics and to a summary at stop.

import Logging
import MailQueue
import SMTPProtocol
import UVRuntime

#if canImport(Glibc)
import Glibc
#endif

public final class SinkServer {
    public let loop: EventLoop
    public let config: SinkConfig
    public let log: Logger
    public let metrics = SinkMetrics()
    /// The seed in use (the configured one, or a random one reported at start).
    public let seed: UInt64

    struct Listener {
        let tcp: StreamListener
        let configuration: ServerConfiguration
        let rules: [FaultRule]
    }
    var listeners: [Listener] = []
    var sessions: [UInt64: SinkSession] = [:]
    var nextSessionID: UInt64 = 1
    var idGenerator = QueueIDGenerator()
    let store: SinkStore?
    var http: HTTPServer?
    /// The certificate and key, when STARTTLS is offered.
    var tlsContext: TLSContext?
    var stopping = false
    var onStopped: (() -> Void)?
    var stopTimer: Timer?
    /// Monotonic nanoseconds at start, and the time with a session open since.
    let startedAt: UInt64
    var busy = BusyTime()

    public init(loop: EventLoop, config: SinkConfig, log: Logger) throws {
        self.loop = loop
        self.config = config
        self.log = log
        seed = config.seed ?? UInt64.random(in: 1...UInt64(UInt32.max))
        startedAt = loop.clock.monotonicNanoseconds()
        store = config.mode == .keep
            ? try SinkStore(loop: loop, directory: config.keepPath!, format: config.keepFormat, hostname: config.hostname)
            : nil
        var base = ServerConfiguration(
            hostname: config.hostname, maxMessageSize: config.maxMessageSize, maxRecipients: config.maxRecipients,
            maxErrors: 20, maxLineLength: config.maxLineLength, keepBcc: true,
            // Every recipient at every domain is accepted: a sink is nobody's open relay.
            policy: RelayPolicy(hostname: config.hostname))
        base.extensions = config.advertise
        if let certificate = config.tlsCertificate, let key = config.tlsKey {
            do {
                tlsContext = try TLSContext.server(certificatePath: certificate, keyPath: key)
            } catch {
                throw ConfigError(key: "tls_certificate", message: "\(error)")
            }
            base.startTLS = config.offerStartTLS
        }
        for text in config.listen {
            let address = try SocketAddress(parsing: text)
            let tcp: StreamListener
            do {
                tcp = try StreamListener(loop: loop, address: address, backlog: 4096)
            } catch {
                throw ServerStartError(message: "cannot listen on \(text): \(error)")
            }
            listeners.append(Listener(tcp: tcp, configuration: base,
                                      rules: config.faults.filter { $0.applies(toListener: text) }))
        }
        if let m = config.metricsListen {
            let address = try SocketAddress(parsing: m)
            do {
                http = try HTTPServer(loop: loop, address: address) { [unowned self] in self.handleHTTP($0) }
            } catch {
                throw ServerStartError(message: "cannot listen on \(m) (metrics): \(error)")
            }
        }
    }

    public var listenAddresses: [SocketAddress] { listeners.map(\.tcp.localAddress) }
    public var metricsAddress: SocketAddress? { http?.localAddress }

    public func start() throws {
        for (index, listener) in listeners.enumerated() {
            try listener.tcp.start { [unowned self] connection in self.accepted(connection, listener: index) }
        }
        try http?.start()
    }

    func accepted(_ connection: TCPConnection, listener index: Int) {
        guard let peer = connection.peerAddress else {
            connection.close()
            return
        }
        if stopping || sessions.count >= config.maxConnections {
            metrics.sessionRefused()
            connection.write(Reply(421, "4.7.0", "\(config.hostname) Error: too many connections, try again later").wireBytes)
            connection.closeAfterWrites()
            return
        }
        let listener = listeners[index]
        let id = nextSessionID
        nextSessionID += 1
        var machine = ServerSession(configuration: listener.configuration, ip: unmapped(peer.ip))
        if config.magicRecipients || !listener.rules.isEmpty {
            // Each session draws from its own stream: the same seed and order of sessions give the same faults.
            machine.hooks = SinkFaultHooks(
                rules: listener.rules, magic: config.magicRecipients, seed: seed &+ id &* 0x9E37_79B9_7F4A_7C15,
                record: { [unowned self] stage, kind in self.metrics.fault(stage, kind) })
        }
        let session = SinkSession(id: id, server: self, connection: connection, machine: machine)
        sessions[id] = session
        metrics.sessionOpened()
        busy.opened(at: loop.clock.monotonicNanoseconds())
        session.start()
    }

    func sessionClosed(_ session: SinkSession) {
        guard sessions.removeValue(forKey: session.id) != nil else { return }
        metrics.sessionClosed()
        busy.closed(at: loop.clock.monotonicNanoseconds())
        if stopping && sessions.isEmpty { finishStopping() }
    }

    func nextQueueID() -> String {
        idGenerator.next(nowMicroseconds: loop.clock.wall().microsecondsSinceEpoch).rawValue
    }

    // MARK: /metrics

    func handleHTTP(_ request: HTTPRequest) -> HTTPResponse {
        guard request.path == "/metrics" else { return .text(404, "Not Found", "try /metrics\n") }
        guard request.method == "GET" || request.method == "HEAD" else {
            var r = HTTPResponse.text(405, "Method Not Allowed", "GET or HEAD\n")
            r.headers.append(HTTPHeader("Allow", "GET, HEAD"))
            return r
        }
        return HTTPResponse(status: 200, reason: "OK",
                            headers: [HTTPHeader("Content-Type", "text/plain; version=0.0.4; charset=utf-8")],
                            body: metrics.exposition())
    }

    // MARK: Stopping

    /// No new connections; every session is told 421 and closed (a message in progress is not
    /// waited for: nothing is queued). `done` runs once every session is gone.
    public func stop(_ done: @escaping () -> Void) {
        guard !stopping else { return }
        stopping = true
        onStopped = done
        for listener in listeners { listener.tcp.close() }
        http?.close()
        for session in Array(sessions.values) { session.shutDown() }
        if sessions.isEmpty {
            finishStopping()
            return
        }
        // Peers that do not read their 421 cannot hold the stop: closeAfterWrites bounds the flush.
        let timer = Timer(loop: loop)
        stopTimer = timer
        timer.start(afterMilliseconds: 5000) { [unowned self] in
            for session in Array(self.sessions.values) { session.connection.close() }
        }
    }

    func finishStopping() {
        stopTimer?.close()
        stopTimer = nil
        let done = onStopped
        onStopped = nil
        done?()
    }

    /// One line for the operator at stop. The rate is over the busy time (at least one session
    /// open), not the lifetime: a sink left waiting before and after a run reports the run's rate.
    public var summary: String {
        let now = loop.clock.monotonicNanoseconds()
        return Self.summary(metrics.tally, up: now &- startedAt, busy: busy.busy(at: now), seed: seed)
    }

    static func summary(_ t: SinkTally, up: UInt64, busy: UInt64, seed: UInt64) -> String {
        let busySeconds = Double(busy) / 1e9
        let rate = busySeconds > 0 ? Double(t.messages) / busySeconds : 0
        return "tern sink: \(t.sessions) sessions (\(t.sessionsRefused) refused), \(t.messages) messages, "
            + "\(t.recipients) recipients, \(t.bytes) bytes, \(t.faults) faults injected, \(t.delays) replies delayed; "
            + "up \(formatted(Double(up) / 1e9)) s, busy \(formatted(busySeconds)) s with sessions open, "
            + "\(formatted(rate)) messages/s while busy; seed \(seed)"
    }

    /// One decimal: 0.04 → "0.0", 2.25 → "2.3"; small nonzero rates and times get three.
    static func formatted(_ x: Double) -> String {
        let thousandths = Int((x * 1000).rounded())
        if x > 0 && thousandths < 1000 {
            let digits = String(thousandths)
            return "0." + String(repeating: "0", count: 3 - digits.count) + digits
        }
        let tenths = Int((x * 10).rounded())
        return "\(tenths / 10).\(tenths % 10)"
    }
}

extension ServerSession {
    init(configuration: ServerConfiguration, ip: String) {
        // Trusted: the sink takes mail for any domain from anyone.
        self.init(config: configuration, client: PeerInfo(ip: ip, trusted: true))
    }
}
