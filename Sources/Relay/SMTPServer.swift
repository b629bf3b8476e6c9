// The receiving side of the relay: listeners, connection limits and the sessions they start, all on
// one libuv loop. Sessions are found by id; anything that answers later (a DNS reply, a finished
// fsync) looks its session up and does nothing if it is gone.

import Logging
import MailQueue
import SMTPProtocol
import UVRuntime

#if canImport(Glibc)
import Glibc
#endif

public struct ServerMetrics {
    public var sessionsOpened = 0
    public var connectionsRefused = 0
    public var messagesAccepted = 0
    public var bytesIn = 0
}

public final class SMTPServer {
    public let loop: EventLoop
    /// Replaced by `reload` (SIGHUP); sessions read it when they need a limit.
    public internal(set) var config: TernConfig
    public let spool: Spool
    /// Recipients not sent to (spool/suppression.list): asked at RCPT, filled by hard bounces.
    let suppression: SuppressionStore
    /// [events]: message events to the JSON Lines file and the webhooks; nil when neither is set.
    let events: EventBus?
    /// The webhooks' HTTP client (libcurl on the loop); nil without webhooks.
    let httpClient: HTTPClient?
    /// Batches messages into the spool's journal.
    let journal: JournalCommitter
    public var log: Logger
    public var metrics = ServerMetrics()
    /// The numbers behind the admin endpoint's GET /metrics.
    public let relayMetrics = RelayMetrics()
    let resolver: Resolver
    /// The sending side; nil when `delivery.enabled` is false (mail stays queued).
    public private(set) var delivery: DeliveryManager?
    /// GET /metrics and the /queue API ([admin] listen); nil when switched off.
    public internal(set) var admin: AdminEndpoint?
    /// POST /api/inject ([http] listen); nil when switched off.
    var injection: InjectionEndpoint?
    /// The injection API's bearer tokens ([http] tokens_file); replaced by `install(_:)` (SIGHUP).
    var tokens: TokensFile?

    var listeners: [StreamListener] = []
    /// The role of each listener, in the same order.
    var listenerRoles: [ListenerRole] = []
    /// The certificate for port 25's STARTTLS (tls.ciphers); replaced by `install(_:)` (SIGHUP).
    public internal(set) var tlsContext: TLSContext?
    /// The same certificate for the submission listeners (tls.submission_ciphers).
    public internal(set) var submissionTLSContext: TLSContext?
    /// The config file, for error messages; nil for the built-in default.
    public let configPath: String?
    /// AUTH users; replaced by `install(_:)` (SIGHUP).
    var users: UsersFile?
    /// The [[dkim.sign]] keys (nil: none configured); replaced by `install(_:)` (SIGHUP).
    var dkimKeys: DKIMKeySet?
    var authThrottle: AuthThrottle
    /// Password checks on the thread pool now, and those waiting for a turn (each costs 32 MiB).
    var authChecksRunning = 0
    var authChecksWaiting: [() -> Void] = []
    /// AUTH attempts under a throttle key (`AuthThrottle.key(for:)`) whose checks in flight already
    /// reach `max_failures`, with their session's id: they wait for one to finish (then 454 if it locked
    /// the key out), so correct logins in parallel are not refused.
    /// The hash checked for unknown users (as long as a real check); built on the thread pool at
    /// start-up by `prepareDummyHash()`, nil until then.
    var dummyHash: String?
    var dummyHashBuilding = false
    var authWaitingForIP: [String: [(session: UInt64, attempt: () -> Void)]] = [:]
    var sessions: [UInt64: InboundSession] = [:]
    /// Message data all sessions hold in memory, against `server.max_buffered_data`.
    var dataBudget: DataBudget
    var connectionsPerIP: [String: Int] = [:]
    /// Connections from proxy_protocol_from whose PROXY header is still being read.
    var proxyHeadersPending: [ObjectIdentifier: TCPConnection] = [:]
    /// [cluster]: the Redis this node shares its state through (issue 20).
    private(set) var cluster: Cluster?
    var nextSessionID: UInt64 = 1
    var idGenerator = QueueIDGenerator()
    var serverConfiguration: ServerConfiguration
    var submissionConfiguration: ServerConfiguration
    var stopping = false
    /// Every listener accepts (between `start()` and `stop()`): part of the admin endpoint's /ready.
    public private(set) var isListening = false
    var onStopped: (() -> Void)?

    /// Opens the spool (locking it against a second instance) and prepares the listeners; nothing is
    /// accepted until `start()`.
    /// `configPath`: the file `config` came from (nil: the built-in default), for the spool rule and errors.
    public init(loop: EventLoop, config: TernConfig, log: Logger, configPath: String? = nil) throws {
        self.loop = loop
        self.config = config
        self.log = log
        self.configPath = configPath
        // The same checks as `tern check-config`, before anything is created.
        try config.checkSpoolPath(configPath: configPath)
        let files = try config.openSecurityFiles(source: configPath)
        let spool = try Spool(path: config.spool.path, checksum: Checksum { ISAL.crc32($0, following: $1) })
        try spool.lock()
        let (orphans, journaled) = try spool.recover()
        if orphans > 0 { log.notice("spool: removed \(orphans) partial files left by an earlier stop") }
        if journaled.count > 0 { log.info("spool: \(journaled.count) queued messages found in the journal") }
        for problem in journaled.problems { log.warning("spool: journal: \(problem)") }
        if let newest = try spool.list().last { idGenerator.advance(past: newest) }
        self.spool = spool
        journal = JournalCommitter(loop: loop, spool: spool, log: log)
        let s = config.server
        dataBudget = DataBudget(limit: s.maxBufferedData, perRead: ServerSession.dataBuffer + EventLoop.readBufferSize)
        suppression = try SuppressionStore(spoolPath: spool.path, loop: loop, log: log)
        let file = config.events.file.isEmpty ? nil : try EventLog(path: config.events.file, loop: loop, log: log)
        httpClient = config.events.webhooks.isEmpty ? nil : HTTPClient(loop: loop)
        var webhooks: [Webhook] = []
        for hook in config.events.webhooks {
            let w = Webhook(config: hook, spoolPath: spool.path, loop: loop, client: httpClient!, log: log, metrics: relayMetrics)
            try w.load()
            webhooks.append(w)
        }
        events = file == nil && webhooks.isEmpty ? nil : EventBus(file: file, webhooks: webhooks)
        serverConfiguration = Self.sessionConfiguration(config)
        submissionConfiguration = Self.submissionConfiguration(config)
        serverConfiguration.recipientCheck = suppression
        submissionConfiguration.recipientCheck = suppression
        authThrottle = AuthThrottle(maxFailures: config.auth.maxFailures, lockoutTime: config.auth.lockoutTime)
        tlsContext = files.relayTLS
        submissionTLSContext = files.submissionTLS
        users = files.users
        dkimKeys = files.dkim
        tokens = files.tokens
        resolver = try Resolver(loop: loop, servers: config.dns.servers, timeoutMilliseconds: 2000, tries: 2)
        let roles: [(ListenerRole, [String])] = [(.relay, s.listen), (.submission, s.submission),
                                                 (.submissions, s.submissions)]
        for (role, texts) in roles {
            for text in texts {
                let address = try SocketAddress(parsing: text)
                do {
                    listeners.append(try StreamListener(loop: loop, address: address, backlog: 4096))
                    listenerRoles.append(role)
                } catch {
                    throw ServerStartError(message: "cannot listen on \(text): \(error)")
                }
            }
        }
        if config.delivery.enabled {
            let own = listeners.map(\.localAddress.ip)
            delivery = DeliveryManager(loop: loop, spool: spool, config: config, log: log, resolver: resolver,
                                       ownAddresses: own, metrics: relayMetrics,
                                       newQueueID: { [unowned self] in self.nextQueueID() })
            delivery?.suppression = suppression
            delivery?.events = events
            // A message leaves the spool only once its events are in the webhooks' outboxes.
            if let events, !events.webhooks.isEmpty { delivery?.remover.gate = { events.whenSynced($0) } }
        }
        if config.cluster.enabled {
            cluster = Cluster(config: config.cluster, loop: loop, log: log, metrics: relayMetrics)
        }
        try openAdminEndpoint()
        if !config.http.listen.isEmpty {
            do {
                injection = try InjectionEndpoint(server: self, address: try SocketAddress(parsing: config.http.listen))
            } catch {
                throw ServerStartError(message: "cannot listen on http.listen \(config.http.listen): \(error)")
            }
        }
    }

    /// The injection API's address (tests listen on port 0).
    public var injectionAddress: SocketAddress? { injection?.localAddress }

    public var listenAddresses: [SocketAddress] { listeners.map(\.localAddress) }

    /// SIGUSR1: the events file is opened again by its name (after logrotate moved it).
    public func reopenEventLog() { events?.reopen() }

    /// A suppression event: an address added to the list (by a hard bounce, or by the postmaster).
    func suppressionEvent(_ entry: SuppressionEntry) {
        events?.emit(.suppression(entry, queueID: nil, bounceClass: nil, time: loop.clock.wallSeconds()))
    }

    public func start() throws {
        delivery?.loadSpool { [log] count in
            if count > 0 { log.notice("queue: \(count) messages resumed from the spool") }
        }
        if let delivery, delivery.mayUseTLS { delivery.loadClientTLSContext() }
        for (listener, role) in zip(listeners, listenerRoles) {
            try listener.start { [unowned self] connection in self.accepted(connection, role: role) }
            log.info("listening on \(listener.localAddress)\(role == .relay ? "" : " (\(role))")")
        }
        isListening = true
        prepareDummyHash()
        if let admin {
            try admin.start()
            log.info("admin endpoint on \(admin.listenDescription)")
        }
        for hook in events?.webhooks ?? [] {
            hook.start()
            log.info("webhook \(hook.config.name): events to \(hook.config.url), outbox \(hook.directory)")
        }
        if let injection {
            try injection.start()
            log.info("injection API (POST /api/inject) on \(injection.localAddress)")
        }
        cluster?.start(server: self)
    }

    func accepted(_ connection: TCPConnection, role: ListenerRole = .relay) {
        guard let peer = connection.peerAddress else {
            connection.close()
            return
        }
        let ip = unmapped(peer.ip)
        if config.server.proxyProtocolFrom.contains(where: { $0.contains(ip) }) {
            return readProxyHeader(connection, proxy: ip, role: role)
        }
        admit(connection, ip: ip, role: role)
    }

    /// A session for `connection` from client `ip` (for a proxy's connection, the client its PROXY
    /// header names), unless a limit refuses it. `early`: the client's bytes that came with the header.
    func admit(_ connection: TCPConnection, ip: String, role: ListenerRole, proxy: String? = nil, early: [UInt8] = []) {
        if refusedAtConnect(connection, ip: ip, perIP: true) { return }
        let limits = config.server
        connection.setNoDelay(true)
        let trusted = limits.relayNetworks.contains { $0.contains(ip) }
        let loopback = CIDR.loopbackV4.contains(ip) || CIDR.loopbackV6.contains(ip)
        let info = PeerInfo(ip: ip, trusted: trusted, cleartextAuthAllowed: config.auth.cleartextFromLoopback && loopback)
        let machine = ServerSession(config: role == .relay ? serverConfiguration : submissionConfiguration,
                                    client: info, implicitTLS: role == .submissions)
        let id = nextSessionID
        nextSessionID += 1
        let session = InboundSession(id: id, server: self, connection: connection, clientIP: ip, machine: machine)
        session.role = role
        session.proxy = proxy
        session.earlyInput = early
        if role == .submissions {
            do {
                guard let context = submissionTLSContext else { throw TLSError("no certificate loaded") }
                connection.startTLS(try TLSEngine(context: context))
            } catch {
                // Never silent: the client sees a closed connection, the log says why.
                InboundSession.logTLSFailure(log, metrics: relayMetrics, client: "unknown[\(ip)]", command: "CONNECT",
                                             what: "TLS set-up failed: \(error)", proto: nil, helo: nil)
                connection.close()
                return
            }
        }
        sessions[id] = session
        connectionsPerIP[ip, default: 0] += 1
        metrics.sessionsOpened += 1
        relayMetrics.sessionOpened()
        session.start()
    }

    /// 421 and a close while stopping, at max_connections (PROXY headers being read count), or with
    /// `perIP` at max_connections_per_ip for `ip`. True when the connection was refused.
    func refusedAtConnect(_ connection: TCPConnection, ip: String, perIP: Bool) -> Bool {
        let limits = config.server
        let full = sessions.count + proxyHeadersPending.count >= limits.maxConnections
        let overPerIP = perIP && connectionsPerIP[ip, default: 0] >= limits.maxConnectionsPerIP
        guard stopping || full || overPerIP else { return false }
        metrics.connectionsRefused += 1
        relayMetrics.connectionRefused(stopping ? .shuttingDown : .tooManyConnections)
        let (reply, reason) = stopping
            ? (Reply(421, "4.3.2", "\(config.hostname) Service shutting down, try again later"), "shutting_down")
            : full
            ? (Reply(421, "4.7.0", "\(config.hostname) Error: too many connections, try again later"), "too_many_connections")
            : (Reply(421, "4.7.0", "\(config.hostname) Error: too many connections from your address, try again later"),
               "too_many_connections_per_ip")
        logConnectionRefused(ip: ip, reply: reply, reason: reason)
        connection.write(reply.wireBytes)
        connection.closeAfterWrites()
        return true
    }

    /// "NOQUEUE: reject: CONNECT from unknown[192.0.2.1]: 421 4.7.0 … too many connections …", as
    /// Postfix's anvil limits are logged; no reverse lookup is made for a refused connection.
    func logConnectionRefused(ip: String, reply: Reply, reason: String) {
        let text = InboundSession.replyText(reply)
        var fields: Logger.Metadata = ["client": .string("unknown[\(ip)]"), "command": .string("CONNECT"),
                                       "reply": .string(text), "reason": .string(reason)]
        if let dsn = reply.enhanced { fields["dsn"] = .string(dsn) }
        log.fields("reject", fields, text: "NOQUEUE: reject: CONNECT from unknown[\(ip)]: \(text); reason=\(reason)")
    }

    func sessionClosed(_ session: InboundSession) {
        guard sessions.removeValue(forKey: session.id) != nil else { return }
        relayMetrics.sessionClosed()
        if let n = connectionsPerIP[session.clientIP], n > 1 {
            connectionsPerIP[session.clientIP] = n - 1
        } else {
            connectionsPerIP.removeValue(forKey: session.clientIP)
        }
        if stopping && sessions.isEmpty { finishStopping() }
    }

    /// Loop milliseconds of the last "budget full" line: one a minute at most.
    var budgetFullLogged: UInt64?

    /// The first session stopped by the budget: a line for the operator (slow disk, or a small budget).
    func budgetFilled() {
        let now = loop.nowMilliseconds
        if let last = budgetFullLogged, now < last + 60_000 { return }
        budgetFullLogged = now
        log.notice("message data in memory reached server.max_buffered_data (\(dataBudget.limit) bytes): sessions stop reading until the spool catches up")
    }

    /// Sessions stopped by the budget for message data resume in the order they stopped, while there
    /// is room for their next read.
    func resumeSessionsWaitingForBudget() {
        while let id = dataBudget.next() {
            if let session = sessions[id], session.resumeAfterBudget() {
                dataBudget.resumed()
            } else {
                dataBudget.stopReading()  // it stopped waiting meanwhile (closed, message ended): no turn
            }
        }
    }

    func nextQueueID() -> QueueID {
        idGenerator.next(nowMicroseconds: nowMicroseconds())
    }

    func nowMicroseconds() -> UInt64 {
        loop.clock.wall().microsecondsSinceEpoch
    }

    /// Graceful stop: no new connections; idle sessions get 421 now; sessions in the middle of a message
    /// may finish it within `grace` seconds, then they get 421 too. `done` runs when every session is gone.
    public func stop(grace: Double, _ done: @escaping () -> Void) {
        guard !stopping else { return }
        stopping = true
        isListening = false
        onStopped = done
        for listener in listeners { listener.close() }
        listeners = []
        admin?.close()
        admin = nil
        injection?.close()  // kept until its requests in flight are written (finishStopping)
        delivery?.stop()
        log.notice("stopping: \(sessions.count) sessions open")
        for session in Array(sessions.values) { session.shutDown(force: false) }
        for connection in Array(proxyHeadersPending.values) { connection.close() }  // no session yet
        if sessions.isEmpty {
            finishStopping()
            return
        }
        let timer = Timer(loop: loop)
        timer.start(afterMilliseconds: UInt64(grace * 1000)) { [unowned self] in
            timer.close()
            for session in Array(self.sessions.values) { session.shutDown(force: true) }
        }
        graceTimer = timer
    }

    /// A stop already under way ends its grace period now (a second SIGTERM or SIGINT): the sessions
    /// still open get 421, a message in DATA is dropped unacknowledged (its client sends it again
    /// later), and what got 250 is already on disk. Returns the number of sessions cut short.
    @discardableResult
    public func endGrace() -> Int {
        guard stopping, let timer = graceTimer else { return 0 }
        timer.close()
        graceTimer = nil
        let open = Array(sessions.values)
        for session in open { session.shutDown(force: true) }
        return open.count
    }

    /// MT-PRIORITY from a trusted client, else the [priority] rules (sender domain, then the highest
    /// of the recipient domains), else 0.
    func priority(of start: MessageStart) -> Int {
        if let p = start.priority { return p }
        return priority(sender: start.sender.address, recipients: start.recipients)
    }

    /// The [priority] rules alone (the injection API has no MT-PRIORITY).
    func priority(sender: String, recipients: [String]) -> Int {
        let rules = config.priority
        if let p = rules.senderDomains[DeliveryManager.domain(of: sender)] { return p }
        let byRecipient = recipients.compactMap { rules.recipientDomains[DeliveryManager.domain(of: $0)] }
        return byRecipient.max() ?? 0
    }

    /// One reception event per recipient of a message being queued (over SMTP or HTTP). `size`: the
    /// bytes received (the envelope's size is known only once it is on disk, signature included).
    func receptionEvents(_ env: Envelope, size: Int? = nil) {
        guard let events else { return }
        let now = loop.clock.wallSeconds()
        for r in env.recipients {
            var line = EventLine(type: "reception", time: now)
            line.add("queue_id", env.id.rawValue)
            line.add("message_id", env.messageID)
            line.add("sender", env.sender)
            line.add("recipient", r.address)
            line.add("size", size ?? env.size)
            line.add("client", env.client.ip)
            line.add("helo", env.client.helo)
            line.add("protocol", env.client.protocolName)
            line.add("user", env.client.authenticatedUser)
            events.emit(line)
        }
    }

    var graceTimer: Timer?

    func finishStopping() {
        if let injection, injection.requestsInFlight > 0 {
            return injection.whenIdle { [weak self] in self?.finishStopping() }
        }
        graceTimer?.close()
        graceTimer = nil
        journal.close()
        resolver.close()
        cluster?.close()
        let done = onStopped
        onStopped = nil
        // The last events reach the outboxes' files before the process may exit.
        let finish: () -> Void = { [events, httpClient] in
            guard let events else { done?(); return }
            events.whenSynced {
                var left = events.webhooks.count
                guard left > 0 else { done?(); return }
                for hook in events.webhooks {
                    hook.close {
                        left -= 1
                        guard left == 0 else { return }
                        httpClient?.close()
                        done?()
                    }
                }
            }
        }
        guard let delivery else { finish(); return }
        delivery.remover.whenIdle { finish() }
    }
}

public struct ServerStartError: Error, CustomStringConvertible {
    public let message: String
    public var description: String { message }
}

/// "::ffff:192.0.2.1" → "192.0.2.1", so limits and relay_networks see one form.
func unmapped(_ ip: String) -> String {
    if ip.hasPrefix("::ffff:") && ip.contains(".") { return String(ip.dropFirst(7)) }
    return ip
}
