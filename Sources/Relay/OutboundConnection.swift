// One outbound SMTP connection for one destination: it walks the route's addresses in MX order
// until a host takes the transaction (RFC 5321 §5.1 fallback), then may carry more jobs for the same
// destination on the same session.
//
// Fallback rules: connection refused or timed out, a greeting other than 220, a 421 (ClientSession's
// sessionFailed), or a 4xx for the whole transaction (MailQueue's NextHop.judge) → the next address, in
// the same attempt. A 5xx for a recipient is final for it and no other host is asked about it.
//
// TLS (issue 4): the route's `tls` policy (else delivery.tls) decides whether the ClientSession sends
// STARTTLS and whether it must succeed; the connection (UVRuntime's transport) runs the handshake and, for
// `verify`, gives up a host whose certificate does not chain to the CA store or name the host.
// Either failure is a temporary one for that host: the next MX is tried.
//
// Egress (issue 16): a connection given an egress source binds the source's address and says its EHLO
// name; hosts of the other address family than the source are skipped (they cannot be reached from it).
// Traffic shaping: the connection belongs to the lane the core opened it on (destination, pool, source)
// and keeps that lane's limits; it tells the core whether it reached a host (dead destinations) and
// every reply that is not positive ([[backoff]] rules).

import MailQueue
import SMTPProtocol
import UVRuntime

final class OutboundConnection {
    static let sendBufferSize = 256 * 1024
    unowned let manager: DeliveryManager
    let destination: String
    /// The lane the core counts this connection under, for all its life (even if its destination's
    /// group changes meanwhile: the core releases what it counted).
    let lane: ConnectionLane
    /// Messages per connection and idle time: the lane's rule's when the connection opened.
    let limits: LaneLimits
    /// Jobs this connection took (the first one counted when the core opened it).
    var sent = 1
    /// A session reached `ready` once: the destination answers (told to the core once).
    private var reachedHost = false

    private var targets: [DeliveryTarget] = []
    private var targetIndex = 0
    private var current: DeliveryTarget?
    private var tcp: TCPConnection?
    /// After QUIT: the connection until the next hop closed it too (then the slot is given back).
    private var closing: TCPConnection?
    private var session: ClientSession?
    /// Counts the sessions and the 7-bit conversions started: a conversion that ends on the thread pool
    /// after its session or job moved on sees a newer number and is dropped.
    private var conversionGeneration = 0
    private var timer: Timer?

    private var job: DeliveryJob?
    private var message: OutgoingMessage?
    /// Outcomes so far in this attempt, by recipient index; a 5xx stays final across hosts.
    private var outcomes: [Int: RecipientResult] = [:]
    /// Why the last host did not take the transaction: the result of recipients no host took.
    private var lastFailure = RecipientResult.deferred("no route", status: "4.4.3")
    private var lastError: String { lastFailure.reply }
    private var finished = false
    /// Set while the connection waits in the connection cache (ConnectionCache.swift).
    var idleTicket: UInt64?

    /// The route's, rule's or [delivery]'s TLS policy for this destination.
    private let configuredTLS: OutboundTLSPolicy
    /// The policy this connection uses: `configuredTLS`, or opportunistic when it was opened for a
    /// "TLS-Required: No" message (`relaxesTLS`); such a connection carries no other message.
    private var tlsPolicy: OutboundTLSPolicy
    private var relaxedForOneMessage = false
    private let credentials: ClientCredentials?
    /// The manager's routesGeneration when this connection took its settings.
    let routesGeneration: Int
    /// Present once STARTTLS was accepted on the current connection.
    private var tls: TLSEngine? { tcp?.tls }
    /// The TLS outcome for the log line, "TLSv1.3 TLS_AES_256_GCM_SHA384 verified".
    private var tlsOutcome: String?
    /// Opportunistic TLS failed with the current host: the next connection to it goes in the clear
    /// (as Postfix does at security level "may"), so a broken TLS stack cannot hold mail forever.
    private var clearRetry = false
    /// The current connection is that retry.
    private var inClear = false

    /// The egress source this connection sends from; nil: the address the kernel picks and [server]
    /// hostname in EHLO, as before egress existed.
    let source: EgressSource?
    /// `source`'s address to bind (port 0), or why it cannot be (the config check makes that rare).
    private let sourceAddress: Result<SocketAddress, UVError>?

    /// - Parameter ruleTLS: the [[shaping]] rule's TLS policy: a route's wins over it, it over [delivery]'s.
    init(manager: DeliveryManager, lane: ConnectionLane, limits: LaneLimits = LaneLimits(), source: EgressSource? = nil,
         ruleTLS: OutboundTLSPolicy? = nil) {
        self.manager = manager
        self.lane = lane
        self.limits = limits
        destination = lane.destination
        self.source = source
        sourceAddress = source.map { s in
            Result { try SocketAddress(ip: s.address, port: 0) }.mapError { $0 as? UVError ?? .invalidArgument }
        }
        let routes = manager.config.routes
        let name = normalizedDomain(destination)
        let key = routes.routes[name] != nil ? name : (routes.routes["*"] != nil ? "*" : nil)
        let security = key.flatMap { routes.security[$0] }
        configuredTLS = security?.tls ?? ruleTLS ?? manager.config.delivery.tls
        tlsPolicy = configuredTLS
        credentials = security?.credentials
        routesGeneration = manager.routesGeneration
    }

    /// QUIT sent or the connection dropped, and its slot given back: it takes no more jobs.
    var isFinished: Bool { finished }

    var relayName: String {
        guard let t = current else { return "none" }
        return "\(t.host)[\(t.address)]:\(t.port)"
    }

    /// "NAME[ip]" for the log's source= field; nil without an egress source.
    var sourceName: String? { source.map { "\($0.name)[\($0.address)]" } }

    /// The name said in EHLO/HELO: the egress source's, else [server] hostname.
    var heloName: String { source?.ehlo ?? manager.config.hostname }

    // MARK: - A job on a new connection

    /// RFC 8689 §5: "TLS-Required: No" (without REQUIRETLS) asks that TLS policies not stop delivery.
    /// Where the config honours it, "require" and "verify" become "opportunistic" for that message:
    /// STARTTLS when offered, any certificate, the clear after a failed handshake. Not for a route with
    /// credentials: AUTH needs TLS whatever the message says.
    static func relaxesTLS(_ envelope: Envelope, policy: OutboundTLSPolicy, hasCredentials: Bool, honor: Bool) -> Bool {
        honor && envelope.tlsOptional && !envelope.requireTLS && !hasCredentials
            && (policy == .require || policy == .verify)
    }

    func run(_ job: DeliveryJob, message: OutgoingMessage, plan: RoutePlan) {
        self.job = job
        self.message = message
        outcomes = [:]
        if Self.relaxesTLS(message.envelope, policy: configuredTLS, hasCredentials: credentials != nil,
                           honor: manager.config.delivery.honorTLSRequiredNo) {
            tlsPolicy = .opportunistic
            relaxedForOneMessage = true
            manager.log.info("\(job.id): TLS-Required: No: TLS policy \(configuredTLS.rawValue) relaxed to opportunistic for this message")
        }
        switch plan {
        case .bounce(let status, let reason):
            // Routing's verdict on the recipients' domain (NXDOMAIN, null MX): theirs.
            var result = RecipientResult(.bounced, status: status, reply: reason)
            result.recipientSpecific = true
            for i in job.recipients { outcomes[i] = result }
            endJob(thenReuse: false)
        case .retry(let reason):
            lastFailure = .deferred(reason, status: "4.4.3")  // DNS: RFC 3463's routing server failure
            for i in job.recipients { outcomes[i] = lastFailure }
            endJob(thenReuse: false)
        case .deliver(let list):
            targets = list
            targetIndex = 0
            tryNextTarget()
        }
    }

    /// The same session, another job (connection reuse).
    func runOnOpenSession(_ job: DeliveryJob, message: OutgoingMessage) {
        self.job = job
        self.message = message
        outcomes = [:]
        guard let session, session.phase == .ready, tcp?.isClosed == false else {
            // The session went away while the message loaded: start over on a new connection.
            targetIndex = 0
            tryNextTarget()
            return
        }
        sendTransaction()
    }

    private func tryNextTarget() {
        dropConnection()
        inClear = false
        if clearRetry && targetIndex > 0 {
            clearRetry = false
            inClear = true
            targetIndex -= 1  // the same host again, without STARTTLS
        }
        guard targetIndex < targets.count else {
            // Every host failed: what is not final yet waits for the next attempt.
            for i in job?.recipients ?? [] where outcomes[i] == nil { outcomes[i] = lastFailure }
            // No host answered at all: one failed connection of the lane (dead destinations).
            if let reason = NextHop.destinationFailure(hosts: targets.count, reachedHost: reachedHost, lastFailure: lastFailure) {
                manager.connectionFailed(self, reason: reason)
            }
            endJob(thenReuse: false)
            return
        }
        let target = targets[targetIndex]
        targetIndex += 1
        current = target
        let address: SocketAddress
        do {
            address = try SocketAddress(ip: target.address, port: target.port)
        } catch {
            lastFailure = .deferred("bad address \(target.address)", status: "4.4.1")
            tryNextTarget()
            return
        }
        var bindTo: SocketAddress?
        if let source, let sourceAddress {
            switch sourceAddress {
            case .failure(let error):
                // No host can be reached from it: the whole attempt is deferred, the reason logged.
                lastFailure = .deferred("egress source \(source.name): bad address \(source.address): \(error)", status: "4.3.5")
                manager.log.error("\(lastError)")
                targetIndex = targets.count
                tryNextTarget()
                return
            case .success(let from):
                guard from.isIPv6 == address.isIPv6 else {
                    lastFailure = .deferred("\(relayName) not reachable from egress source \(sourceName ?? ""): no \(address.isIPv6 ? "IPv6" : "IPv4") source address", status: "4.4.1")
                    manager.log.debug("\(lastError)")
                    tryNextTarget()
                    return
                }
                bindTo = from
            }
        }
        let d = manager.config.delivery
        TCPConnection.connect(loop: manager.loop, to: address, bindTo: bindTo,
                              timeoutMs: UInt64(d.connectTimeout * 1000)) { [self] result in
            switch result {
            case .failure(let error):
                let from = sourceName.map { " from \($0)" } ?? ""
                lastFailure = .deferred("connect to \(relayName)\(from): \(error)", status: "4.4.1")
                manager.log.debug("\(lastError)")
                tryNextTarget()
            case .success(let connection):
                opened(connection)
            }
        }
    }

    private func opened(_ connection: TCPConnection) {
        tcp = connection
        tlsOutcome = nil
        var mode: ClientTLSMode
        switch tlsPolicy {
        case .none: mode = .none
        case .opportunistic: mode = .opportunistic
        case .require, .verify: mode = .required
        }
        if inClear {
            mode = .none
            tlsOutcome = "none (retried in the clear after a TLS failure)"
        }
        session = ClientSession(hostname: heloName, tls: mode, credentials: credentials)
        conversionGeneration += 1
        session!.useChunking = manager.config.delivery.chunking
        connection.setNoDelay(true)
        // Room for a whole typical message in one write: no pending copy, no EPOLLOUT round trip.
        connection.setSendBufferSize(Self.sendBufferSize)
        connection.onRead = { [unowned self] bytes in
            guard bytes.count > 0, var s = self.session else { return }
            let actions = s.receive(bytes)
            self.session = s
            self.perform(actions)
        }
        connection.onHandshake = { [unowned self] in self.handshakeCompleted() }
        connection.onError = { [unowned self] error in
            // A socket error ends in `closed` (lost connection); a TLS one gives up this host now.
            guard case .tls(let reason, let handshake) = error else { return }
            self.tlsFailed(handshake ? "TLS handshake with \(self.relayName) failed: \(reason)"
                                     : "TLS with \(self.relayName) failed: \(reason)")
        }
        connection.onClose = { [unowned self] in self.closed(connection) }
        connection.startReading()
        armTimer()
    }

    private func sendTransaction() {
        guard let job, let message, var s = session else { return }
        let env = message.envelope
        let pending = job.recipients.filter { outcomes[$0] == nil }
        var t = OutboundTransaction(sender: env.sender, recipients: pending.map { env.recipients[$0].address },
                                    size: message.message.count, bodyType: env.bodyType, smtputf8: env.smtputf8,
                                    ret: env.ret, envid: env.envid)
        t.requireTLS = env.requireTLS
        if pending.contains(where: { env.recipients[$0].notify != nil || env.recipients[$0].orcpt != nil }) {
            t.recipientDSN = pending.map { RecipientDSN(notify: env.recipients[$0].notify, orcpt: env.recipients[$0].orcpt) }
        }
        if let caps = s.capabilities, ClientSession.needsSevenBit(t, caps), message.message.count > Self.inlineSevenBitLimit {
            return convertOffTheLoop(t, message.message, job: job)
        }
        let actions = s.send(t, message: message.message, wireReady: message.wireReady)
        session = s
        perform(actions)
    }

    /// Larger 8-bit messages for a next hop without 8BITMIME are converted on the thread pool, so that
    /// the loop is not held (the conversion is linear, but a 50 MB message takes a while).
    static let inlineSevenBitLimit = 64 * 1024

    private func convertOffTheLoop(_ t: OutboundTransaction, _ bytes: [UInt8], job: DeliveryJob) {
        conversionGeneration += 1
        let generation = conversionGeneration
        var result: (message: [UInt8], conversion: SevenBitConversion?) = (bytes, nil)
        manager.loop.queueWork({ result = convertToSevenBit(bytes) }, done: { [self] in
            // The session, or the job on it, moved on meanwhile (closed, timed out, another host).
            guard generation == conversionGeneration, self.job == job, var s = session, s.phase == .ready
            else { return }
            let actions = s.send(t, converted: result.message, sevenBit: result.conversion)
            session = s
            perform(actions)
        })
    }

    private func perform(_ actions: [ClientAction]) {
        // Bytes of consecutive sends go out together (a message between the commands before it and
        // its ".\r\n"); anything else waits until they are written, so the order holds.
        var pieces: [[UInt8]] = []
        for action in actions {
            switch action {
            case .send(let bytes):
                pieces.append(bytes)
                continue
            case .sendMessage(let message):
                pieces.append(message)
                pieces.append(ClientAction.endOfData)
                continue
            case .sendChunk(let octets):
                pieces.append(octets)
                continue
            default:
                write(pieces)
                pieces = []
            }
            switch action {
            case .send, .sendMessage, .sendChunk:
                break  // gathered above
            case .startTLS:
                guard startTLS() else { return }
            case .ready:
                if !reachedHost {
                    reachedHost = true
                    manager.connectionSucceeded(self)
                }
                if job != nil && message != nil { sendTransaction() }
            case .transactionFinished(let outcome):
                handle(outcome)
            case .sessionFailed(let reply, let why):
                // Never final: the next host is tried (NextHop.sessionFailed says with which status).
                lastFailure = NextHop.sessionFailed(reply, reason: why)
                manager.log.debug("\(relayName): \(lastError)")
                if let reply { manager.replySeen(self, reply) }
                if job != nil {
                    tryNextTarget()
                } else {
                    finish()
                }
                return
            case .close:
                tcp?.closeAfterWrites()  // after close_notify, under TLS
            }
        }
        write(pieces)
        armTimer()
    }


    /// The transaction's replies, judged by NextHop's rule: final results kept, and the rest either on to
    /// the next host in this attempt (a 4xx for the whole transaction) or deferred.
    private func handle(_ outcome: TransactionOutcome) {
        guard let job else { return }
        switch outcome.sevenBit {
        case .converted?:
            manager.log.info("\(job.id): converted to 7-bit MIME for \(relayName), which does not offer 8BITMIME")
        case .sentAsIs?:
            manager.log.warning("\(job.id): 8-bit message that is not convertible MIME sent as it is to \(relayName), which does not offer 8BITMIME")
        case nil:
            break
        }
        let pending = job.recipients.filter { outcomes[$0] == nil }
        // clearRetry: the same host again without STARTTLS is still to come.
        let verdict = NextHop.judge(outcome, moreHosts: targetIndex < targets.count || clearRetry)
        reportReplies(outcome)
        var temporary: [Int] = []
        for (k, index) in pending.enumerated() where k < verdict.results.count {
            let r = verdict.results[k]
            switch r.kind {
            case .delivered, .bounced: outcomes[index] = r
            case .deferred:
                temporary.append(index)
                lastFailure = r
            }
        }
        if verdict.tryNextHost {
            if var s = session {
                let actions = s.quit()
                session = s
                write(actions.flatMap(\.wirePieces))
            }
            tryNextTarget()
            return
        }
        for index in temporary { outcomes[index] = lastFailure }
        endJob(thenReuse: true)
    }

    /// Every reply of the transaction that is not positive, for [[backoff]] rules (none when it all went).
    private func reportReplies(_ outcome: TransactionOutcome) {
        for r in NextHop.backoffReplies(outcome) { manager.replySeen(self, r) }
    }

    private func endJob(thenReuse: Bool) {
        guard let job, let message else { return }
        let results = outcomes
        self.job = nil
        self.message = nil
        outcomes = [:]
        // Recipients are delivered only by the session now open: whether it offered DSN is theirs.
        manager.jobFinished(job, message: message, outcomes: results, relay: relayName, tls: tlsOutcome,
                            source: sourceName, lane: lane.lane, nextHopDSN: session?.capabilities?.dsn ?? false)
        if thenReuse, !relaxedForOneMessage, session?.phase == .ready, tcp?.isClosed == false {
            manager.connectionReady(self)
        } else {
            finish()
        }
    }

    // MARK: - Timers and closing

    private func armTimer() {
        // Only the phase is read: `guard let session` would copy the whole client state, five times a
        // message.
        guard let phase = session?.phase, tcp != nil else {
            timer?.stop()
            return
        }
        let d = manager.config.delivery
        let seconds: Double
        switch phase {
        case .greeting: seconds = d.greetingTimeout
        case .data, .dataEnd: seconds = d.dataTimeout
        case .ready where idleTicket != nil: seconds = limits.connectionCacheTime ?? d.connectionCacheTime
        case .ready: seconds = job == nil ? 300 : d.commandTimeout
        default: seconds = d.commandTimeout
        }
        if timer == nil { timer = Timer(loop: manager.loop) }
        // As InboundSession's: only the deadline moves per reply and write; the timer is started
        // again only when it must fire sooner, or when it fires before the deadline.
        let now = manager.loop.nowMilliseconds
        deadline = now + UInt64(seconds * 1000)
        if timer!.isActive && timerDue <= deadline { return }
        startTimer(now: now)
    }

    /// When the phase's timeout runs out (loop milliseconds), and when the running timer fires.
    private var deadline: UInt64 = 0
    private var timerDue: UInt64 = 0

    private func startTimer(now: UInt64) {
        timerDue = deadline
        timer?.start(afterMilliseconds: deadline > now ? deadline - now : 0) { [weak self] in
            guard let self else { return }
            let now = self.manager.loop.nowMilliseconds
            if now < self.deadline { return self.startTimer(now: now) }
            if self.idleTicket != nil {
                // No message for this destination within connection_cache_time: QUIT, slot back.
                self.finish()
                return
            }
            guard var s = self.session else { return }
            self.lastFailure = .deferred("timeout in \(s.phase) with \(self.relayName)", status: "4.4.2")
            let actions = s.timedOut()
            self.session = s
            self.perform(actions)
        }
    }

    private func closed(_ connection: TCPConnection) {
        guard tcp === connection else { return }
        let tls = connection.tls
        tcp = nil
        let wasBusy = job != nil && session?.phase != .ready
        session = nil
        timer?.stop()
        if wasBusy {
            lastFailure = .deferred("lost connection with \(relayName)", status: "4.4.2")
            if let engine = tls, !engine.handshakeComplete {
                // Closed in the middle of the handshake: a TLS failure like any other.
                lastFailure = .deferred("TLS handshake with \(relayName) failed: connection closed", status: "4.7.5")
                manager.log.info("\(lastError)")
                if tlsPolicy == .opportunistic && credentials == nil { clearRetry = true }
            }
            tryNextTarget()
        } else if job == nil && !finished && message == nil {
            // Idle between jobs and the peer went away.
            finish()
        }
    }

    private func dropConnection() {
        if let c = tcp {
            tcp = nil
            c.onRead = nil
            c.onClose = nil
            c.onError = nil
            c.onHandshake = nil
            c.close()
        }
        session = nil
        timer?.stop()
    }

    /// Parked in the connection cache: the idle timer now runs for connection_cache_time.
    func wentIdle() {
        armTimer()
    }

    /// Taken from the cache for a job: the usual timers again (the job may first be read from the spool).
    func leftIdle() {
        armTimer()
    }

    /// Done with this connection: QUIT politely, close, give the slot back once the next hop closed
    /// too (its EOF, or closeAfterWrites' linger), so that the next hop never sees more connections
    /// than the limit (max_connections) while a QUIT is on its way.
    func finish() {
        guard !finished else { return }
        finished = true
        manager.idleConnections.remove(self)
        guard var s = session, let c = tcp else {
            dropConnection()
            session = nil
            timer?.close()
            timer = nil
            manager.connectionClosed(self)
            return
        }
        let actions = s.quit()
        session = nil
        c.onRead = nil
        c.onError = nil
        c.onHandshake = nil
        c.onClose = { [unowned self] in
            self.closing = nil
            self.manager.connectionClosed(self)
        }
        closing = c
        tcp = nil
        timer?.close()
        timer = nil
        // QUIT and close_notify in one write.
        c.corked {
            c.write(pieces: actions.flatMap(\.wirePieces))
            c.closeAfterWrites()
        }
    }

    /// Shutdown: drop everything; jobs in flight stay queued on disk and resume at the next start.
    func abandon() {
        if let c = closing {
            closing = nil
            c.onClose = nil
            c.close()
        }
        dropConnection()
        timer?.close()
        timer = nil
    }
}

// MARK: - TLS

extension OutboundConnection {
    /// Bytes for the next hop (through TLS once it is up), in order: one gathering write, so nothing
    /// is copied unless the socket is full.
    fileprivate func write(_ pieces: [[UInt8]]) {
        guard !pieces.isEmpty else { return }
        tcp?.write(pieces: pieces)
    }

    /// The next hop said 220 to STARTTLS: begin the handshake. False if the host was given up.
    fileprivate func startTLS() -> Bool {
        guard let target = current, let tcp else { return false }
        let engine: TLSEngine
        do {
            engine = try TLSEngine(context: manager.clientTLSContext(), serverName: target.host)
        } catch {
            tlsFailed("TLS with \(relayName) failed: \(error)")
            return false
        }
        return tcp.startTLS(engine)  // a failure was reported through onError
    }

    fileprivate func handshakeCompleted() {
        guard let tls else { return }
        manager.metrics.tlsSessionOutbound()
        let verified = tls.peerVerified
        tlsOutcome = "\(tls.version) \(tls.cipher) \(verified ? "verified" : "unverified")"
        manager.log.debug("\(relayName): TLS \(tls.summary), certificate \(verified ? "verified" : "not verified: \(tls.verifyError ?? "?")")")
        if tlsPolicy == .verify && !verified {
            tlsFailed("certificate of \(relayName) not verified: \(tls.verifyError ?? "unknown")")
            return
        }
        guard var s = session else { return }
        let actions = s.tlsEstablished(peerVerified: verified)
        session = s
        perform(actions)
    }

    /// A TLS failure is a temporary failure of this host: the next one is tried.
    fileprivate func tlsFailed(_ why: String) {
        lastFailure = .deferred(why, status: "4.7.5")  // RFC 3463: cryptographic failure
        manager.log.info("\(why)")
        // Opportunistic: once more with this host, in the clear. Not after a failure in the clear.
        if tlsPolicy == .opportunistic && tls != nil && credentials == nil {
            clearRetry = true
        }
        if job != nil {
            tryNextTarget()
        } else {
            finish()
        }
    }
}
