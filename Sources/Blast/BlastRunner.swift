// `tern blast` on the loop: `concurrency` slots, each a chain of connections to the server, each
// connection driven by SMTPProtocol's ClientSession (the same client state machine delivery uses).
//
// Budget: with --messages N the run claims message numbers 1…N. A connection reserves the messages
// it will carry (--messages-per-connection of them, or one when there is no limit) before it
// connects, so no more connections open than the messages left need, and N messages at M per
// connection take exactly ⌈N/M⌉ connections. A connection that fails before its first transaction is
// charged one message (counted as lost), which bounds the run even when nothing answers. With
// --duration no transaction starts after the deadline; those in flight finish. Every wait on the
// server is bounded by --timeout (one sweep timer checks them all).
//
// Handshake mode (--handshake-only): the unit is the handshake, not the message. Each connection
// reserves one, runs greeting, EHLO, STARTTLS, the TLS handshake and EHLO under TLS, counts the
// handshake as completed, and quits; no transaction starts. A connection that fails on the way
// (connect, STARTTLS refused or not offered, the handshake, a drop, a timeout) is charged its
// handshake as failed, so with --handshakes N exactly N attempts are made and each ends as one or
// the other. A graceful stop lets handshakes in flight finish, and they count.
//
// Times: the report's elapsed time runs from the start to the end of the last transaction, or of
// the last handshake attempt (the QUITs after it are not counted). Stage latencies are taken on
// CLOCK_MONOTONIC in nanoseconds.
//
// Nothing could connect: when the first connection of every slot failed and none ever succeeded,
// the run stops at once and says why (the command exits non-zero).

import Randomness
import SMTPProtocol
import UVRuntime
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

public final class BlastRunner {
    let loop: EventLoop
    /// Latencies in nanoseconds from the loop's clock (uv_hrtime: uv_now has only milliseconds, and
    /// loopback replies take microseconds).
    var clock: Clock { loop.clock }
    let settings: BlastSettings
    public internal(set) var stats = BlastStats()
    let factory: MessageFactory
    var rng: SplitMix64
    var limiter: RateLimiter?

    var slots: [BlastSlot] = []
    /// Connections that sent QUIT, waiting for the server to close them (and when QUIT went).
    var lingering: [ObjectIdentifier: (TCPConnection, UInt64)] = [:]
    var slotsDone = 0
    /// Message numbers handed out (transactions started, plus connections charged for failing).
    var claimed = 0
    /// Messages reserved by connections (opening or open) and not started yet.
    var reserved = 0
    var connectionsStarted = 0
    var bindIndex = 0
    var stopping = false
    var finished = false
    /// Why nothing could connect, if so.
    public private(set) var unreachable: String?
    /// Made on the first STARTTLS, shared by every connection. It loads no CA store: the server's
    /// certificate is not checked, and the store would cost a directory read per handshake. (`tern
    /// blast` also has the certificate's EC key decoded by OpenSSL's built-in code, a sixth of its CPU
    /// per handshake otherwise: see BlastCommand.)
    var tlsContext: TLSContext?

    func clientTLSContext() throws -> TLSContext {
        if let tlsContext { return tlsContext }
        let context = try TLSContext.unverifiedClient()
        tlsContext = context
        return context
    }

    var startTime: UInt64 = 0
    var lastCompletion: UInt64 = 0
    let timeoutNs: UInt64
    var deadlineTimer: Timer?
    var sweepTimer: Timer?
    var progressTimer: Timer?
    var progress = ProgressLine()
    let progressToTerminal: Bool
    var done: ((BlastReport) -> Void)?

    public init(loop: EventLoop, settings: BlastSettings, progressToTerminal: Bool) {
        self.loop = loop
        self.settings = settings
        self.progressToTerminal = progressToTerminal
        factory = MessageFactory(sizes: settings.sizes)
        rng = SplitMix64(seed: settings.seed)
        limiter = settings.rate.map { RateLimiter(perSecond: $0) }
        timeoutNs = UInt64(settings.timeout * 1e9)
    }

    /// Starts the run; `done` gets the report once every slot has finished (or after `stop(hard:)`).
    public func start(done: @escaping (BlastReport) -> Void) {
        self.done = done
        startTime = clock.monotonicNanoseconds()
        lastCompletion = startTime
        if let d = settings.duration {
            deadlineTimer = Timer(loop: loop)
            deadlineTimer!.start(afterMilliseconds: UInt64(d * 1000)) { [weak self] in self?.stop(hard: false) }
        }
        let sweepMs = UInt64(max(10, min(1000, settings.timeout * 250)))
        sweepTimer = Timer(loop: loop)
        sweepTimer!.start(afterMilliseconds: sweepMs, repeatMilliseconds: sweepMs) { [weak self] in self?.sweep() }
        if let every = settings.progressInterval {
            let ms = UInt64(max(50, every * 1000))
            progressTimer = Timer(loop: loop)
            progressTimer!.start(afterMilliseconds: ms, repeatMilliseconds: ms) { [weak self] in self?.showProgress() }
        }
        slots = (0..<settings.concurrency).map { BlastSlot(runner: self, index: $0) }
        for slot in slots { slot.openConnection() }
    }

    /// Graceful: no new transactions, those in flight finish. Hard: every connection is dropped now.
    public func stop(hard: Bool) {
        stopping = true
        for slot in slots { slot.stopRequested(hard: hard) }
    }

    var elapsedSeconds: Double {
        Double(lastCompletion &- startTime) / 1e9
    }

    // MARK: Budget

    /// Reserves messages for a new connection of `slot`; false when the run needs no more connections.
    func reserve(for slot: BlastSlot) -> Bool {
        guard !stopping else { return false }
        var count = 1
        if let n = settings.limit {
            let available = n - claimed - reserved
            guard available > 0 else { return false }
            if settings.mode == .mail && settings.messagesPerConnection > 0 {
                count = min(settings.messagesPerConnection, available)
            }
        }
        slot.reservation = count
        reserved += count
        return true
    }

    /// Whether `slot` would get another message now.
    func hasMessage(for slot: BlastSlot) -> Bool {
        guard !stopping else { return false }
        if slot.reservation > 0 { return true }
        if let n = settings.limit { return claimed + reserved < n }
        return true
    }

    /// The next message number for this slot, or nil when the run has no more.
    func claim(_ slot: BlastSlot) -> Int? {
        guard hasMessage(for: slot) else { return nil }
        if slot.reservation > 0 {
            slot.reservation -= 1
            reserved -= 1
        }
        claimed += 1
        return claimed
    }

    /// A connection that ended before its first transaction pays for one message (in handshake mode:
    /// its handshake, failed), so a run that cannot get through still ends; the rest of its
    /// reservation goes back.
    func charge(_ slot: BlastSlot) {
        guard slot.reservation > 0, slot.messagesOnConnection == 0 else { return release(slot) }
        slot.reservation -= 1
        reserved -= 1
        claimed += 1
        if settings.mode == .handshake {
            stats.handshakesFailed += 1
            lastCompletion = clock.monotonicNanoseconds()
        } else {
            stats.messagesFailed += 1
        }
        release(slot)
    }

    /// Handshake mode: the connection's handshake got through. It is claimed now, from the slot's
    /// reservation, not when it starts, so a graceful stop does not drop handshakes in flight.
    func handshakeCompleted(_ slot: BlastSlot, now: UInt64) {
        guard slot.reservation > 0 else { return }  // charged or released already: never counted twice
        slot.reservation -= 1
        reserved -= 1
        claimed += 1
        stats.handshakesCompleted += 1
        lastCompletion = now
    }

    func release(_ slot: BlastSlot) {
        reserved -= slot.reservation
        slot.reservation = 0
    }

    func nextBind() -> SocketAddress? {
        guard !settings.bind.isEmpty else { return nil }
        defer { bindIndex += 1 }
        return settings.bind[bindIndex % settings.bind.count]
    }

    func connectFailed(_ error: String) {
        stats.connectFailures += 1
        stats.noteError("connect to \(settings.server): \(error)")
        let firstAttempts = min(slots.count, settings.limit ?? Int.max)
        if stats.connectionsOpened == 0 && stats.connectFailures >= firstAttempts && unreachable == nil {
            unreachable = "could not connect to \(settings.server): \(error)"
            stop(hard: true)
        }
    }

    func slotFinished() {
        slotsDone += 1
        if slotsDone == slots.count { finish() }
    }

    func finish() {
        guard !finished else { return }
        finished = true
        if lastCompletion == startTime { lastCompletion = clock.monotonicNanoseconds() }
        deadlineTimer?.close()
        sweepTimer?.close()
        progressTimer?.close()
        if progressToTerminal && settings.progressInterval != nil { fputs("\r\u{1B}[K", stderr) }
        let report = BlastReport(stats: stats, settings: settings, elapsedSeconds: elapsedSeconds)
        done?(report)
        done = nil
    }

    // MARK: Timers

    func sweep() {
        let now = clock.monotonicNanoseconds()
        for slot in slots { slot.checkTimeout(now: now, limit: timeoutNs) }
        let lingerLimit = min(timeoutNs, 2_000_000_000)
        for (connection, since) in lingering.values where now - since > lingerLimit {
            connection.closeAfterWrites(lingerMs: 0)
        }
    }

    func showProgress() {
        let now = clock.monotonicNanoseconds()
        let open = slots.reduce(0) { $0 + ($1.tcp == nil ? 0 : 1) }
        let line = progress.line(elapsed: Double(now - startTime) / 1e9, stats: stats, openConnections: open,
                                 target: settings.limit, mode: settings.mode)
        if progressToTerminal {
            fputs("\r\u{1B}[K" + line, stderr)
        } else {
            fputs(line + "\n", stderr)
        }
        fflush(stderr)
    }
}

/// One of the `concurrency` connections in flight: opens a connection, runs transactions on it, quits,
/// and opens the next, until the run has no more messages for it.
final class BlastSlot {
    unowned let runner: BlastRunner
    let index: Int
    var tcp: TCPConnection?
    var session = ClientSession(hostname: "")
    /// Messages reserved for this connection and not yet started.
    var reservation = 0
    var connectionNumber = 0
    var messagesOnConnection = 0
    var inTransaction = false
    /// When this connection's connect began (handshake mode times the whole session from there).
    var connectStart: UInt64 = 0
    var size = 0
    /// Since when we wait for the server (nil: not waiting, e.g. held back by the rate cap).
    var waitingSince: UInt64?
    var stageStart: UInt64 = 0
    var transactionStart: UInt64 = 0
    var pauseTimer: Timer?
    /// The rate cap's permit for the next transaction was taken already (before connecting).
    var permitHeld = false
    var finished = false
    var tlsStart: UInt64 = 0

    init(runner: BlastRunner, index: Int) {
        self.runner = runner
        self.index = index
    }

    var settings: BlastSettings { runner.settings }
    var clock: Clock { runner.clock }

    // MARK: Connections

    func openConnection() {
        guard runner.reserve(for: self) else { return finish() }
        permitHeld = false
        if runner.limiter != nil {
            // Under a rate cap the first transaction's permit is taken before connecting, so a capped
            // run opens connections at the rate too instead of holding idle sessions at the server.
            let wait = runner.limiter!.reserve(now: clock.monotonicNanoseconds())
            permitHeld = true
            if wait > 0 {
                waitForPermit(wait) { $0.connect() }
                return
            }
        }
        connect()
    }

    func connect() {
        runner.connectionsStarted += 1
        connectionNumber = runner.connectionsStarted
        messagesOnConnection = 0
        let started = clock.monotonicNanoseconds()
        connectStart = started
        TCPConnection.connect(loop: runner.loop, to: settings.server, bindTo: runner.nextBind(),
                              timeoutMs: UInt64(settings.timeout * 1000), readAddresses: false) { [unowned self] result in
            switch result {
            case .success(let connection):
                self.connected(connection, started: started)
            case .failure(let error):
                self.runner.charge(self)
                self.runner.connectFailed("\(error)")
                self.pauseThenReconnect()
            }
        }
    }

    /// After a failed connect, wait a little: a refused port answers at once, and a slot must not spin.
    func pauseThenReconnect() {
        guard !runner.stopping else { return finish() }
        if pauseTimer == nil { pauseTimer = Timer(loop: runner.loop) }
        pauseTimer!.start(afterMilliseconds: 100) { [weak self] in self?.openConnection() }
    }

    func connected(_ connection: TCPConnection, started: UInt64) {
        let now = clock.monotonicNanoseconds()
        runner.stats.connectionsOpened += 1
        runner.stats.record(.connect, microseconds: (now - started) / 1000)
        if runner.finished || runner.unreachable != nil {
            connection.close()
            release()
            return finish()
        }
        tcp = connection
        session = ClientSession(hostname: settings.helo, tls: settings.startTLS ? .required : .none)
        session.usePipelining = settings.pipelining
        session.useChunking = settings.bdat
        session.chunkSize = settings.chunkSize
        session.repliesSeen = []
        inTransaction = false
        stageStart = now
        waitingSince = now
        connection.setNoDelay(true)
        connection.onRead = { [unowned self] bytes in
            if bytes.count > 0 { self.receivedPlain(bytes) }
        }
        connection.onHandshake = { [unowned self] in self.handshakeCompleted() }
        connection.onError = { [unowned self] error in
            // A socket error ends in `closed`, which says why; a TLS one ends the session now.
            guard case .tls(let reason, let handshake) = error else { return }
            self.perform([.sessionFailed(nil, "\(handshake ? "TLS handshake failed" : "TLS write failed"): \(reason)"), .close],
                         now: self.clock.monotonicNanoseconds())
        }
        connection.onClose = { [unowned self, unowned connection] in self.closed(connection) }
        connection.startReading()
    }

    /// Drops the connection from this slot (it goes on closing by itself) and moves on.
    func detach(thenReconnect: Bool = true) {
        guard let connection = tcp else { return }
        tcp = nil
        waitingSince = nil
        pauseTimer?.stop()
        connection.onRead = nil
        connection.onHandshake = nil
        connection.onError = nil
        if session.phase == .quitting {
            // After QUIT the server closes first, so the TIME_WAIT state stays on its side and this
            // side's ports are free again at once (50,000 connections a minute need that). A server
            // that does not close is closed on by the sweep.
            runner.lingering[ObjectIdentifier(connection)] = (connection, clock.monotonicNanoseconds())
            connection.onClose = { [unowned runner = self.runner, unowned connection] in
                runner.lingering[ObjectIdentifier(connection)] = nil
            }
        } else {
            connection.onClose = nil
            connection.closeAfterWrites()
        }
        release()
        if thenReconnect { openConnection() }
    }

    func release() { runner.release(self) }

    /// The server closed or reset the connection while it was ours.
    func closed(_ connection: TCPConnection) {
        guard tcp === connection else { return }
        tcp = nil
        waitingSince = nil
        pauseTimer?.stop()
        let why = connection.lastError.map { "\($0)" } ?? "closed by the server"
        if inTransaction {
            inTransaction = false
            runner.stats.messagesFailed += 1
            completed()
            runner.stats.noteError("connection lost during a transaction: \(why)")
        } else if session.capabilities == nil {
            runner.stats.sessionFailures += 1
            runner.charge(self)
            let when = connection.tls.map { $0.handshakeComplete ? "before EHLO completed under TLS" : "during the TLS handshake" }
                ?? "before EHLO completed"
            runner.stats.noteError("connection lost \(when): \(why)")
        }
        release()
        openConnection()
    }

    func finish() {
        guard !finished else { return }
        finished = true
        pauseTimer?.close()
        pauseTimer = nil
        runner.slotFinished()
    }

    func stopRequested(hard: Bool) {
        if !hard {
            // Between transactions (held by the rate cap): quit now; otherwise the transaction ends first.
            if tcp != nil && !inTransaction && session.phase == .ready { quit() }
            if tcp == nil && pauseTimer?.isActive == true {
                // Waiting to reconnect, or for the permit to connect.
                pauseTimer?.stop()
                release()
                finish()
            }
            return
        }
        if let connection = tcp {
            tcp = nil
            connection.onRead = nil
            connection.onClose = nil
            connection.close()
            if inTransaction {
                inTransaction = false
                runner.stats.messagesFailed += 1
            }
        }
        release()
        pauseTimer?.stop()
        finish()
    }

    func checkTimeout(now: UInt64, limit: UInt64) {
        guard tcp != nil, let since = waitingSince, now > since, now - since > limit else { return }
        let phase = session.phase
        let actions = session.timedOut()
        runner.stats.noteError("timed out in phase \(phase) after \(settings.timeout) s")
        perform(actions, now: now)
    }

    // MARK: Replies

    func handshakeCompleted() {
        let now = clock.monotonicNanoseconds()
        runner.stats.record(.tls, microseconds: (now - tlsStart) / 1000)
        stageStart = now
        perform(session.tlsEstablished(), now: now)
    }

    func receivedPlain(_ bytes: UnsafeRawBufferPointer) {
        let before = session.phase
        let actions = session.receive(bytes)
        countReplies()
        let now = clock.monotonicNanoseconds()
        let after = session.phase
        if before == .greeting && after != .greeting {
            runner.stats.record(.greeting, microseconds: (now - stageStart) / 1000)
            stageStart = now
        }
        if inTransaction, let from = Self.ordinal(before) {
            var finishedOutcome: TransactionOutcome?
            for case .transactionFinished(let o) in actions { finishedOutcome = o }
            if let o = finishedOutcome {
                recordStages(from: from, through: Self.lastStage(o, from: from), now: now)
            } else if let to = Self.ordinal(after), to > from {
                recordStages(from: from, through: to - 1, now: now)
            }
        }
        if !actions.isEmpty || before != after { waitingSince = now }
        perform(actions, now: now)
    }

    static let transactionStages: [Stage] = [.mail, .rcpt, .data, .dataEnd]

    /// Every reply the session took in, counted now: what becomes of the transaction or the
    /// connection later does not uncount it.
    func countReplies() {
        guard let seen = session.repliesSeen, !seen.isEmpty else { return }
        runner.stats.count(seen)
        session.repliesSeen!.removeAll(keepingCapacity: true)
    }

    static func ordinal(_ phase: ClientSession.Phase) -> Int? {
        switch phase {
        case .mail: return 0
        case .rcpt: return 1
        case .data: return 2
        case .dataEnd: return 3
        default: return nil
        }
    }

    /// The last stage a finished transaction reached (so refused ones record no stage they never had).
    static func lastStage(_ o: TransactionOutcome, from: Int) -> Int {
        if o.mailReply.code >= 300 { return 0 }
        if !o.recipientReplies.contains(where: { $0.map { $0.code < 300 } ?? false }) { return max(from, 1) }
        if let d = o.dataReply, d.code < 300 { return 3 }
        return max(from, 2)  // refused at DATA or at the end of data
    }

    func recordStages(from: Int, through: Int, now: UInt64) {
        guard from <= through else { return }
        for i in from...through {
            // BDAT has no 354 to wait for: no DATA stage, its time goes to "DATA end".
            if i == 2 && settings.bdat && session.capabilities?.chunking == true { continue }
            runner.stats.record(Self.transactionStages[i], microseconds: (now - stageStart) / 1000)
            stageStart = now
        }
    }

    func perform(_ actions: [ClientAction], now: UInt64) {
        guard let connection = tcp else { return }
        for action in actions {
            // An action may end this connection and start the next; the rest belong to the old one.
            guard tcp === connection else { return }
            switch action {
            case .send(let bytes):
                connection.write(bytes)
            case .sendMessage(let message):
                // Only with --bdat to a server without CHUNKING (wire data comes back as .send).
                connection.write(pieces: [message, ClientAction.endOfData])
            case .sendChunk(let octets):
                connection.write(octets)
            case .ready:
                runner.stats.record(.ehlo, microseconds: (now - stageStart) / 1000)
                if settings.mode == .handshake { return handshakeDone(now: now) }
                nextTransaction()
            case .transactionFinished(let outcome):
                inTransaction = false
                messagesOnConnection += 1
                runner.stats.record(.transaction, microseconds: (now - transactionStart) / 1000)
                runner.stats.account(outcome, size: size)
                completed()
                nextTransaction()
            case .sessionFailed(let reply, let why):
                if inTransaction {
                    inTransaction = false
                    runner.stats.messagesFailed += 1
                    completed()
                } else {
                    runner.stats.sessionFailures += 1
                    runner.charge(self)
                }
                runner.stats.noteError(reply.map { "\($0.code) \($0.lines.joined(separator: " ")): \(why)" } ?? why)
            case .close:
                connection.sendCloseNotify()
                detach()
                return
            case .startTLS:
                // The server said 220 to STARTTLS: the handshake starts now.
                let engine: TLSEngine
                do {
                    engine = try TLSEngine(context: try runner.clientTLSContext(), serverName: nil)
                } catch {
                    return perform([.sessionFailed(nil, "TLS failed: \(error)"), .close], now: now)
                }
                tlsStart = now
                guard connection.startTLS(engine) else { return }  // reported through onError
            }
        }
    }

    func completed() {
        runner.lastCompletion = clock.monotonicNanoseconds()
    }

    // MARK: Handshake mode

    /// EHLO under TLS was answered: one handshake done; QUIT, and the slot opens its next connection.
    /// (ClientSession in `.required` mode is ready only under TLS.)
    func handshakeDone(now: UInt64) {
        runner.stats.record(.handshake, microseconds: (now - connectStart) / 1000)
        runner.handshakeCompleted(self, now: now)
        permitHeld = false  // the rate cap's permit paid for this connection
        quit()
    }

    // MARK: Transactions

    func nextTransaction() {
        guard tcp != nil else { return }
        if settings.messagesPerConnection > 0 && messagesOnConnection >= settings.messagesPerConnection {
            return quit()
        }
        if permitHeld {
            permitHeld = false
        } else if runner.limiter != nil {
            // Only a slot that will get a message waits for a permit.
            guard runner.hasMessage(for: self) else { return quit() }
            let wait = runner.limiter!.reserve(now: clock.monotonicNanoseconds())
            if wait > 0 {
                waitingSince = nil
                waitForPermit(wait) { $0.beginTransaction() }
                return
            }
        }
        beginTransaction()
    }

    /// Runs `then` once the permit is due, never early, so the cap holds: libuv's timers count whole
    /// milliseconds of a coarse clock and may fire a little before the due time, which is then
    /// checked against the precise clock.
    func waitForPermit(_ nanoseconds: UInt64, then: @escaping (BlastSlot) -> Void) {
        let due = clock.monotonicNanoseconds() + nanoseconds
        if pauseTimer == nil { pauseTimer = Timer(loop: runner.loop) }
        runner.loop.updateTime()
        pauseTimer!.start(afterMilliseconds: (nanoseconds + 999_999) / 1_000_000) { [weak self] in
            guard let self else { return }
            let now = clock.monotonicNanoseconds()
            if now < due { self.waitForPermit(due - now, then: then) } else { then(self) }
        }
    }

    func beginTransaction() {
        guard tcp != nil, session.phase == .ready else { return }
        guard let n = runner.claim(self) else { return quit() }
        size = settings.sizes.sample(using: &runner.rng)
        let count = settings.recipients.count == 1
            ? settings.recipients.lowerBound : Int.random(in: settings.recipients, using: &runner.rng)
        let sender = settings.sender.render(message: n, connection: connectionNumber)
        var recipients: [String] = []
        recipients.reserveCapacity(count)
        for r in 1...count {
            recipients.append(settings.recipient.render(message: n, connection: connectionNumber, recipient: r))
        }
        let now = clock.monotonicNanoseconds()
        inTransaction = true
        transactionStart = now
        stageStart = now
        waitingSince = now
        let t = OutboundTransaction(sender: sender, recipients: recipients, size: size)
        // BDAT needs the message itself; DATA takes the wire form, encoded once for the run.
        let actions = settings.bdat
            ? session.send(t, message: runner.factory.message(size: size), wireReady: true)
            : session.send(t, wireData: runner.factory.wireData(size: size))
        perform(actions, now: now)
    }

    func quit() {
        guard tcp != nil else { return }
        release()
        let actions = session.quit()
        if actions.isEmpty { return detach() }
        perform(actions, now: clock.monotonicNanoseconds())
        if tcp != nil { detach() }  // quit always ends in .close; this is only a guard
    }
}
