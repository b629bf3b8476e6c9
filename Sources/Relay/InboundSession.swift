// One SMTP client connection: the socket, the idle timer and the spool writer around the pure
// ServerSession state machine. It carries out the machine's actions and feeds it events.
// Under TLS (after STARTTLS, or from the start on a submissions listener) the connection (UVRuntime's
// transport) decrypts and encrypts: the machine sees plaintext either way.

import DKIM
import Logging
import MailQueue
import SMTPProtocol
import UVRuntime

final class InboundSession {
    let id: UInt64
    unowned let server: SMTPServer
    let connection: TCPConnection
    let clientIP: String
    var machine: ServerSession
    // @exclusivity(unchecked), as TCPConnection's hot fields: loop-thread fields read and written many
    // times a message, never passed inout, no callback inside an access. `machine`, changed by long
    // mutating calls, keeps Swift's check.
    @exclusivity(unchecked) private var timer: Timer?
    private var writer: MessageWriter?
    @exclusivity(unchecked) private(set) var closed = false
    /// Reading paused because the spool is behind on a large message.
    @exclusivity(unchecked) private var pausedForSpool = false
    /// This session's part in the memory budget for message data (see "Memory budget" below).
    @exclusivity(unchecked) private var budgetState = BudgetState.idle
    /// Bytes of message data this session holds in memory, as counted in the server's budget.
    @exclusivity(unchecked) private var budgetHeld = 0
    /// Loop milliseconds since the relay stopped reading from this client (budget or spool): the
    /// client is not idle then, the server is, and the idle timer does not count that time.
    private var stoppedAt: UInt64?
    /// The HELO name last logged, so a new HELO/EHLO gets its own line.
    private var loggedHelo: String?
    private var messagesQueued = 0
    /// The queue id of the message whose data is being read or was last read, for refusals of it.
    private var messageQueueID: QueueID?
    /// The handshake completed in the read being delivered (it ends what input was pending).
    @exclusivity(unchecked) private var handshakeJustDone = false
    /// The listener it came in on: STARTTLS on a submission listener uses that listener's ciphers.
    var role: ListenerRole = .relay
    /// Replies not written yet: what one batch of input (or one event) makes goes out in one write,
    /// under TLS in one record with whatever the handshake has to send (the session ticket with the
    /// reply to EHLO, the 221 with close_notify).
    @exclusivity(unchecked) private var unsent: [UInt8] = []
    /// Inside `received`, which writes once at its end.
    @exclusivity(unchecked) private var receiving = false
    /// The server's logger with this session's id attached once, not as a dictionary per line.
    private let sessionLog: Logger

    /// Buffered message bytes beyond which the session stops reading until the spool catches up.
    static let maxAheadOfDisk = 4 * 1024 * 1024
    /// Replies the client has not taken (queued in the socket's writes) beyond which the session reads
    /// no more and answers no more pipelined commands until they drain: a client that sends commands
    /// and never reads the replies holds this much, not a reply for every line.
    static let maxPendingOutput = 256 * 1024
    /// Reading stopped because of unsent replies (or commands waiting behind them): the client's doing,
    /// so the idle timer runs on and closes a client that never reads.
    @exclusivity(unchecked) private var heldForOutput = false
    /// Inside pumpInput (which performs actions, which may resume reading, which pumps).
    @exclusivity(unchecked) private var pumping = false

    /// The proxy (in proxy_protocol_from) that named this client in its PROXY header.
    var proxy: String?
    /// The client's bytes that came with the PROXY header: its input once the greeting is out.
    var earlyInput: [UInt8] = []
    /// The client sent something already (a PROXY header is refused only as its first bytes).
    private var sawInput = false

    init(id: UInt64, server: SMTPServer, connection: TCPConnection, clientIP: String, machine: ServerSession) {
        self.id = id
        self.server = server
        self.connection = connection
        self.clientIP = clientIP
        self.machine = machine
        var log = server.log
        log[metadataKey: "session"] = "\(id)"
        self.sessionLog = log
    }

    func start() {
        connection.onRead = { [unowned self] bytes in self.received(bytes) }
        connection.onEOF = { [unowned self] in self.log("end of input from \(self.clientIP)") }
        connection.onClose = { [unowned self] in self.closedByPeerOrUs() }
        connection.onWritesDrained = { [unowned self] in self.pumpInput() }
        connection.onHandshake = { [unowned self] in self.handshakeCompleted() }
        connection.onError = { [unowned self] error in
            guard case .tls(let reason, let handshake) = error else { return }  // a reset: onEOF says it
            self.tlsFailed(reason, handshake: handshake)
            self.closed = true
            self.timer?.stop()
        }
        let timer = Timer(loop: server.loop)
        self.timer = timer
        // Implicit TLS: the handshake has command_timeout from the connection's start.
        if connection.tls != nil { inputPendingSince = server.loop.nowMilliseconds }
        if server.config.server.reverseDNS {
            let resolver = server.resolver
            // Greet once the PTR name is known (or not): it goes into the Received header.
            armTimer()
            let sessionID = id
            let server = self.server
            resolver.lookupPTR(clientIP) { result in
                server.relayMetrics.dnsLookup(.ptr, failed: { if case .failure = result { return true }; return false }())
                guard let session = server.sessions[sessionID] else { return }
                if case .success(let names) = result, let name = names.first { session.machine.setReverseName(name) }
                session.greet()
            }
        } else {
            greet()
        }
    }

    private func greet() {
        guard !closed else { return }
        if let proxy {
            sessionLog.fields("connect", ["client": .string(clientName), "proxy": .string(proxy)],
                              text: "connect from \(clientName) via proxy \(proxy)")
        } else {
            sessionLog.fields("connect", ["client": .string(clientName)], text: "connect from \(clientName)")
        }
        perform(machine.greeting())
        resumeReading()
        armTimer()
        if !earlyInput.isEmpty {
            let early = earlyInput
            earlyInput = []
            connection.deliver(early)
        }
    }

    /// One read from the socket: plaintext (none when a TLS read carried only part of a record or
    /// handshake messages; it still counts for the command deadline).
    private func received(_ bytes: UnsafeRawBufferPointer) {
        server.metrics.bytesIn += connection.lastReadCount
        receiving = true
        let linesBefore = machine.linesRead
        let handshakeDone = handshakeJustDone
        handshakeJustDone = false
        defer {
            receiving = false
            flush()
            pumpInput()
        }
        if bytes.count > 0 && !sawInput {
            sawInput = true
            // A PROXY header as the client's first bytes: from a peer not in proxy_protocol_from, or a
            // second one behind the proxy. Either way a forged client address: refused.
            if connection.tls == nil && ProxyHeader.looksLikeHeader(bytes) {
                server.logProxyRefused(clientIP, proxy == nil ? "not in proxy_protocol_from" : "a second PROXY header behind proxy \(proxy!)")
                closed = true
                connection.close()
                return
            }
        }
        if bytes.count > 0 { perform(machine.receive(bytes)) }
        noteInput(linesBefore: linesBefore, handshakeDone: handshakeDone)
        armTimer()
    }

    private func handshakeCompleted() {
        guard let tls = connection.tls else { return }
        server.relayMetrics.tlsSessionInbound()
        let summary = tls.summary
        log("TLS from [\(clientIP)]: \(summary)\(tls.sessionReused ? ", session resumed" : "")")
        handshakeJustDone = true
        perform(machine.tlsEstablished(summary))
    }

    /// Loop milliseconds since input began that is not a complete command line yet: a partial line,
    /// part of a TLS record, the TLS handshake. The command deadline counts from then, so a client
    /// dripping bytes (in the clear, or a ClientHello or record under TLS, which decrypts to nothing)
    /// cannot hold the connection past command_timeout. Nil when nothing is pending.
    @exclusivity(unchecked) private var inputPendingSince: UInt64?

    /// After a read: a complete line (or the end of the handshake) ends what was pending; raw bytes
    /// that complete nothing start it, if it is not running already.
    private func noteInput(linesBefore: Int, handshakeDone: Bool) {
        // The arguments first: a call among them while `machine` is being read would make Swift copy
        // the whole session state to call it (six times a message).
        let handshaking = connection.tls.map { !$0.handshakeComplete } ?? false
        let now = server.loop.nowMilliseconds
        let previous = inputPendingSince
        inputPendingSince = machine.inputPendingSince(previous, linesBefore: linesBefore,
                                                      handshaking: handshaking, handshakeDone: handshakeDone, now: now)
    }

    /// Answers the pipelined commands the machine set aside at its per-call reply cap while the client
    /// takes its replies, and reads only while it does: at most `maxPendingOutput` of replies wait in
    /// the socket's queue and one read of commands in the machine. Runs after every read and whenever
    /// the socket's writes drain.
    private func pumpInput() {
        guard !closed, !pumping else { return }
        pumping = true
        defer { pumping = false }
        let linesBefore = machine.linesRead
        // Each round makes at most ServerSession.maxRepliesPerCall of replies and consumes a line at
        // least; the inbox holds one read at most: bounded.
        while !closed, machine.hasBacklog, connection.pendingWriteBytes <= Self.maxPendingOutput {
            perform(machine.continueInput())
        }
        guard !closed else { return }
        if machine.linesRead != linesBefore {
            noteInput(linesBefore: linesBefore, handshakeDone: false)
            armTimer()
        }
        if machine.hasBacklog || connection.pendingWriteBytes > Self.maxPendingOutput {
            if !heldForOutput {
                heldForOutput = true
                connection.stopReading()
            }
        } else if heldForOutput {
            heldForOutput = false
            resumeReading()
        }
    }

    /// Writes the unsent replies (under TLS one record, sent with what the handshake has to send
    /// when inside a read).
    private func flush() {
        guard !unsent.isEmpty else { return }
        let bytes = unsent
        unsent = []
        connection.write(bytes)
    }

    /// The idle timeout moves with every read, and reads come many times a message: only the deadline
    /// moves (loop milliseconds); the timer, once started, fires at or before it and is started again
    /// for what is left, instead of a stop and start of the uv timer (and a new closure) per read.
    @exclusivity(unchecked) private var idleDeadline: UInt64 = 0
    /// When the running timer fires (loop milliseconds).
    @exclusivity(unchecked) private var timerDue: UInt64 = 0

    private func armTimer() {
        guard !closed, let timer else { return }
        let seconds = machine.phase == .data ? server.config.server.dataTimeout : server.config.server.commandTimeout
        let now = server.loop.nowMilliseconds
        // A command line's deadline counts from its first byte (inputPendingSince): more bytes of the
        // same line do not move it (Postfix's smtpd_timeout is per read; a client dripping a byte every
        // 20 s would otherwise outlive command_timeout forever). DATA keeps its per-read data_timeout.
        let from = machine.phase == .data ? now : (inputPendingSince ?? now)
        idleDeadline = from + UInt64(seconds * 1000)
        // A timer that fires later than the new deadline (a shorter timeout now) is started again.
        if timer.isActive && timerDue <= idleDeadline { return }
        startTimer(now: now)
    }

    private func startTimer(now: UInt64) {
        guard let timer else { return }
        timerDue = idleDeadline
        timer.start(afterMilliseconds: idleDeadline > now ? idleDeadline - now : 0) { [unowned self] in
            self.timerFired()
        }
    }

    private func timerFired() {
        let now = server.loop.nowMilliseconds
        if serverHolding { return }  // started again, for what is left, when the hold ends (resumeReading)
        if now < idleDeadline {
            startTimer(now: now)  // there was activity since it was started
            return
        }
        log("timeout after \(machine.phase) from \(clientIP)")
        // Replies still queued: the client reads nothing, so the 421 would never get through and a
        // graceful close would wait on it; the connection ends now.
        let stuck = connection.pendingWriteBytes > 0
        perform(machine.timedOut())
        if stuck { connection.close() }
    }

    /// Carries out what the state machine asked for, in order.
    func perform(_ actions: [ServerAction]) {
        if let helo = machine.helo, helo != loggedHelo {
            loggedHelo = helo
            sessionLog.fields("helo", ["helo": .string(helo)], text: "helo=\(angleQuoted(helo))")
        }
        for action in actions {
            switch action {
            case .reply(let bytes):
                unsent.append(contentsOf: bytes)
            case .refused(let refusal):
                server.relayMetrics.commandRefused(refusal.reason)
                if refusal.logged { logRefusal(refusal) }
                if let events = server.events, refusal.command == "RCPT" || refusal.inMessage {
                    events.emit(rejectionEvent(refusal))
                }
            case .beginMessage(let start):
                beginMessage(start)
            case .messageData(let bytes):
                writer?.append(bytes)
                if let writer, writer.pendingBytes > Self.maxAheadOfDisk, !pausedForSpool {
                    pausedForSpool = true
                    connection.stopReading()
                    serverStoppedReading()
                }
            case .commitMessage:
                commitMessage()
            case .abortMessage:
                writer?.abort()
                releaseWriter()
            case .close:
                closed = true
                timer?.stop()
                // The last reply and close_notify in one write.
                connection.corked {
                    flush()
                    connection.closeAfterWrites()
                }
            case .delay, .drop:
                break  // only with hooks, which the relay never sets
            case .startTLS:
                // The 220 goes out in the clear now; the handshake comes next, within command_timeout.
                flush()
                inputPendingSince = server.loop.nowMilliseconds
                guard let context = server.tlsContext(for: role) else {
                    tlsFailed(TLSError("no certificate loaded"), handshake: true)
                    closed = true
                    connection.close()
                    return
                }
                do {
                    connection.startTLS(try TLSEngine(context: context))
                } catch {
                    tlsFailed(error, handshake: true)
                    closed = true
                    connection.close()
                    return
                }
            case .authenticate(let user, let password):
                authenticate(user: user, password: password)
            }
        }
        if !receiving { flush() }
        if !machine.wantsInput {
            connection.stopReading()
        }
        accountBufferedData()
        // A hold these actions ended (an abort releases the spool pause, leaving DATA the budget's wait).
        if stoppedAt != nil && !serverHolding { resumeReading() }
    }

    private func authenticate(user: String, password: String) {
        let sessionID = id
        let server = self.server
        server.authenticate(ip: clientIP, session: sessionID, user: user, password: password) { result in
            guard let session = server.sessions[sessionID], !session.closed else { return }
            session.perform(session.machine.authFinished(result))
            session.resumeReading()
            session.armTimer()
            session.pumpInput()  // commands pipelined behind it, past the reply cap
        }
    }

    private func beginMessage(_ start: MessageStart) {
        let id = server.nextQueueID()
        let now = server.nowMicroseconds()
        let received = ReceivedHeader(
            helo: start.helo, reverseName: machine.client.reverseName, clientIP: clientIP,
            hostname: server.config.hostname, protocolName: start.protocolName, queueID: id.rawValue,
            recipients: start.recipients, time: Int(now / 1_000_000), tls: start.tls)
        let arrival = Double(now) / 1_000_000
        var envelope = Envelope(
            id: id, sender: start.sender.address,
            recipients: start.recipients.indices.map { i in
                let dsn = i < start.recipientDSN.count ? start.recipientDSN[i] : RecipientDSN()
                return Recipient(address: start.recipients[i], notify: dsn.notify, orcpt: dsn.orcpt)
            },
            priority: server.priority(of: start), arrival: arrival, nextAttempt: arrival, bodyType: start.bodyType,
            smtputf8: start.smtputf8,
            client: MailQueue.ClientInfo(ip: clientIP, helo: start.helo, reverseName: machine.client.reverseName,
                                         protocolName: start.protocolName, authenticatedUser: start.authenticatedUser))
        envelope.ret = start.ret
        envelope.envid = start.envid
        envelope.requireTLS = start.requireTLS
        // The queue id exists from DATA on: these lines tie it to the session (connect, helo) and
        // name what the client asked for, so `grep ID` shows the message from arrival to delivery.
        messageQueueID = id
        let log = sessionLog
        log.fields("client", qid: id.rawValue, ["client": .string(clientName), "helo": .string(start.helo)],
                   text: "\(id): client=\(clientName), helo=\(angleQuoted(start.helo))")
        log.fields("envelope", qid: id.rawValue,
                   ["from": .string(start.sender.address), "nrcpt": .stringConvertible(start.recipients.count)],
                   text: "\(id): from=\(angleQuoted(start.sender.address)), nrcpt=\(start.recipients.count)")
        for recipient in start.recipients {
            log.fields("recipient", qid: id.rawValue, ["to": .string(recipient)], text: "\(id): to=\(angleQuoted(recipient))")
        }
        // The Received header goes in front of the data in the session's own buffer, so that most
        // messages reach the writer as one array (no join before the journal write and delivery).
        let header = received.bytes
        let inBuffer = machine.prefixMessageData(header, for: start)
        // DKIM signs only mail this relay sends for its own users: from relay_networks or authenticated
        // clients, never mail relayed inbound for accept_domains.
        var dkim: DKIMRequest?
        if let keys = server.dkimKeys, DKIMSigningPolicy.signs(trustedClient: machine.client.trusted,
                                                               authenticatedUser: start.authenticatedUser) {
            dkim = keys.request(authenticatedUser: start.authenticatedUser, recipients: start.recipients)
        }
        let writer = MessageWriter(loop: server.loop, spool: server.spool, journal: server.journal, id: id, envelope: envelope,
                                   firstBytes: inBuffer ? [] : header, dkim: dkim)
        writer.onDrained = { [weak self] in self?.spoolCaughtUp() }
        self.writer = writer
    }

    private func spoolCaughtUp() {
        accountBufferedData()
        guard pausedForSpool, let writer, writer.pendingBytes <= Self.maxAheadOfDisk / 2 else { return }
        pausedForSpool = false
        resumeReading()
    }

    /// The message's writer is done with (committed, aborted): nothing of it is ahead of the disk any
    /// more, so a pause for the spool ends with it. The final dot can come in the very read that paused
    /// the session; the commit then never reports a drain (`spoolCaughtUp`).
    private func releaseWriter() {
        writer = nil
        pausedForSpool = false
    }

    /// Whether the relay, not the client, is why nothing is read: the budget or the spool holds it.
    private var serverHolding: Bool { pausedForSpool || budgetState == .waiting }

    /// Reads again if the machine wants input and nothing holds the session. Every restart of reading
    /// goes through here, so the server's hold (`stoppedAt`) ends whenever nothing holds it any more,
    /// and the idle timer runs again.
    private func resumeReading() {
        guard !closed, !serverHolding else { return }
        serverResumedReading()
        if machine.wantsInput && !heldForOutput { connection.startReading() }
    }

    // MARK: Memory budget (server.max_buffered_data, DataBudget.swift)

    enum BudgetState {
        /// Not reading message data: holds no room in the budget.
        case idle
        /// Reading message data, with room for one more read reserved.
        case reading
        /// Stopped by the budget, in line to read again.
        case waiting
    }

    /// After every event: the change in what this session holds goes into the budget; a session in
    /// DATA reads only with room for its next read, else it stops, writes out what it holds and waits.
    private func accountBufferedData() {
        let server = self.server  // one strong load of the unowned reference, not one per use
        let held = machine.dataBufferCapacity + (writer?.heldBytes ?? 0)
        if held != budgetHeld {
            server.dataBudget.change(by: held - budgetHeld)
            budgetHeld = held
        }
        let inData = !closed && machine.phase == .data
        switch budgetState {
        case .idle:
            guard inData else { break }
            if server.dataBudget.startReading() {
                budgetState = .reading
            } else {
                waitForBudget()
            }
        case .reading:
            if !inData {
                budgetState = .idle
                server.dataBudget.stopReading()
            } else if server.dataBudget.isOverLimit {
                server.dataBudget.stopReading()
                waitForBudget()
            }
        case .waiting:
            if !inData {
                budgetState = .idle
                server.dataBudget.cancelWait()
            }
        }
        if server.dataBudget.mayResume { server.resumeSessionsWaitingForBudget() }
    }

    private func waitForBudget() {
        budgetState = .waiting
        server.dataBudget.wait(id)
        if server.dataBudget.waiting == 1 { server.budgetFilled() }
        connection.stopReading()
        serverStoppedReading()
        // Everything this session holds goes to the disk, so that the budget drains even when every
        // session is waiting.
        if let writer {
            if let bytes = machine.takeBufferedData() { writer.append(bytes) }
            writer.flush()
        }
        let held = machine.dataBufferCapacity + (writer?.heldBytes ?? 0)
        server.dataBudget.change(by: held - budgetHeld)
        budgetHeld = held
    }

    /// Its turn came (SMTPServer.resumeSessionsWaitingForBudget): false if it stopped waiting meanwhile.
    func resumeAfterBudget() -> Bool {
        guard budgetState == .waiting, !closed, machine.phase == .data else { return false }
        budgetState = .reading
        resumeReading()
        return true
    }

    private func serverStoppedReading() {
        if stoppedAt == nil { stoppedAt = server.loop.nowMilliseconds }
    }

    /// The time the server kept the client waiting is added to the idle deadline: the timeouts measure
    /// the client's silence, not the server's.
    private func serverResumedReading() {
        guard let since = stoppedAt else { return }
        stoppedAt = nil
        let now = server.loop.nowMilliseconds
        idleDeadline += now - since
        if let pending = inputPendingSince { inputPendingSince = pending + (now - since) }
        if !closed, timer != nil { startTimer(now: now) }
    }

    /// The session ends: what it held leaves the budget.
    private func leaveBudget() {
        server.dataBudget.change(by: -budgetHeld)
        budgetHeld = 0
        switch budgetState {
        case .idle: break
        case .reading: server.dataBudget.stopReading()
        case .waiting: server.dataBudget.cancelWait()
        }
        budgetState = .idle
        if server.dataBudget.mayResume { server.resumeSessionsWaitingForBudget() }
    }

    private func commitMessage() {
        guard let writer else { return }
        let sessionID = id
        let server = self.server
        let log = sessionLog
        let wireReady = machine.lastMessageIsWireReady
        writer.envelope.tlsOptional = machine.lastMessageTLSOptional
        writer.envelope.messageID = machine.lastMessageID
        // The reception events go to the webhooks' outboxes while the message goes to the spool (two
        // writes in parallel, not one after the other); 250 waits for both. A commit that fails is
        // followed by a rejection event for the same queue id.
        server.receptionEvents(writer.envelope, size: writer.receivedBytes)
        server.events?.flushNow()
        writer.commit { queueID, error in
            let env = writer.envelope
            if let queueID {
                server.metrics.messagesAccepted += 1
                server.relayMetrics.messageReceived(recipients: env.recipients.count, bytes: env.size)
                log.fields("queued", qid: queueID.rawValue,
                           ["size": .stringConvertible(env.size), "nrcpt": .stringConvertible(env.recipients.count)],
                           text: "\(queueID): queued as \(queueID), size=\(env.size), nrcpt=\(env.recipients.count)")
                server.sessions[sessionID]?.messagesQueued += 1
                server.delivery?.enqueue(env, due: env.arrival, message: writer.committedBytes,
                                         wireReady: wireReady && !writer.convertedToSevenBit)
            } else {
                if let error = error as? DKIMSigningFailure {
                    server.log.error("\(writer.id): \(error)", metadata: ["qid": "\(writer.id)", "session": "\(sessionID)"])
                } else {
                    server.log.error("\(writer.id): spool write failed: \(error.map { "\($0)" } ?? "unknown error")",
                                     metadata: ["qid": "\(writer.id)", "session": "\(sessionID)"])
                }
                if let events = server.events {  // after its reception events: the message was not queued
                    var line = EventLine(type: "rejection", time: server.loop.clock.wallSeconds())
                    line.add("queue_id", writer.id.rawValue)
                    line.add("sender", env.sender)
                    line.add("command", "DATA")
                    line.add("reply", "451 4.3.0")
                    line.add("reason", error is DKIMSigningFailure ? "dkim" : "spool")
                    line.add("client", env.client.ip)
                    events.emit(line)
                }
            }
            let answer = {
                // The session may be gone (client disconnected while we committed): the message is
                // queued all the same, and the answer goes nowhere.
                guard let session = server.sessions[sessionID] else { return }
                session.releaseWriter()
                session.perform(session.machine.commitFinished(queueID: queueID?.rawValue,
                                                               signingFailed: error is DKIMSigningFailure))
                session.resumeReading()
                session.armTimer()
                session.pumpInput()  // commands pipelined behind it, past the reply cap
                if server.stopping { session.shutDown(force: true) }
            }
            // 250 once the reception events are in the webhooks' outboxes on disk, as the message is.
            guard queueID != nil, let events = server.events else { return answer() }
            events.whenSynced(answer)
        }
    }

    /// The socket is closed (by the client, by an error or by us).
    private func closedByPeerOrUs() {
        sessionLog.fields("disconnect", ["client": .string(clientName), "queued": .stringConvertible(messagesQueued)],
                          text: "disconnect from \(clientName), \(messagesQueued) queued")
        closed = true
        timer?.close()
        timer = nil
        // A message cut off mid-DATA (or in or between BDAT chunks) never reaches the queue. One being
        // committed is left to finish.
        if machine.hasOpenMessage {
            writer?.abort()
        }
        writer = nil
        leaveBudget()
        server.sessionClosed(self)
    }

    /// Shutdown: sessions that are not in the middle of a message are told 421 and closed.
    func shutDown(force: Bool) {
        guard !closed else { return }
        if force || (!machine.hasOpenMessage && machine.phase != .committing) {
            perform(machine.shuttingDown())
        }
    }

    /// A debug line; the message is only made when debug lines are written.
    private func log(_ message: @autoclosure () -> String) {
        sessionLog.debug(Logger.Message(stringLiteral: message()))
    }

    /// "name[192.0.2.1]" as Postfix writes a client, "unknown" without reverse DNS.
    private var clientName: String { "\(machine.client.reverseName ?? "unknown")[\(clientIP)]" }

    /// The reject line a postmaster greps for, as Postfix writes it:
    ///   NOQUEUE: reject: RCPT from unknown[192.0.2.1]: 554 5.7.1 <to@x>: Relay access denied;
    ///   from=<a@b> to=<to@x> proto=ESMTP helo=<client.example>
    /// "QUEUEID:" instead of NOQUEUE when the refusal is about a message whose data was read; a timeout
    /// or too many errors read "timeout after DATA from …". Client text is escaped by the log handler.
    private func logRefusal(_ r: Refusal) {
        let qid = r.inMessage ? messageQueueID?.rawValue : nil
        let client = clientName
        let replyText = Self.replyText(r.reply)
        sessionLog.fields(r.event, qid: qid, Self.refusalFields(r, client: client, reply: replyText)) {
            Self.refusalText(r, qid: qid, client: client, reply: replyText)
        }
    }

    /// A refused RCPT, or a message refused at its end: a rejection event.
    private func rejectionEvent(_ r: Refusal) -> EventLine {
        var line = EventLine(type: "rejection", time: server.loop.clock.wallSeconds())
        line.add("queue_id", r.inMessage ? messageQueueID?.rawValue : nil)
        line.add("sender", r.sender?.address)
        line.add("recipient", r.recipient)
        line.add("command", r.command)
        line.add("reply", Self.replyText(r.reply))
        line.add("dsn", r.reply.enhanced)
        line.add("reason", r.reason.rawValue)
        line.add("client", clientIP)
        line.add("helo", r.helo)
        return line
    }

    static func refusalText(_ r: Refusal, qid: String?, client: String, reply replyText: String) -> String {
        var text = "\(qid ?? "NOQUEUE"): "
        switch r.reason {
        case .timeout: text += "timeout after \(r.command)"
        case .tooManyErrors: text += "too many errors after \(r.command)"
        default: text += "reject: \(r.command)"
        }
        text += " from \(client): \(replyText);"
        if let sender = r.sender { text += " from=\(angleQuoted(sender.address))" }
        if let to = r.recipient { text += " to=\(angleQuoted(to))" }
        if r.acceptedRecipients > 1 { text += " nrcpt=\(r.acceptedRecipients)" }
        text += " proto=\(r.protocolName)"
        if let helo = r.helo { text += " helo=\(angleQuoted(helo))" }
        if let user = r.user { text += " sasl_username=\(angleQuoted(user))" }
        return text
    }

    static func refusalFields(_ r: Refusal, client: String, reply: String) -> Logger.Metadata {
        var m: Logger.Metadata = ["client": .string(client), "command": .string(r.command), "reply": .string(reply),
                                  "reason": .string(r.reason.rawValue), "proto": .string(r.protocolName)]
        if let dsn = r.reply.enhanced { m["dsn"] = .string(dsn) }
        if let sender = r.sender { m["from"] = .string(sender.address) }
        if let to = r.recipient { m["to"] = .string(to) }
        if r.acceptedRecipients > 0 { m["nrcpt"] = .stringConvertible(r.acceptedRecipients) }
        if let helo = r.helo { m["helo"] = .string(helo) }
        if let user = r.user { m["sasl_username"] = .string(user) }
        return m
    }

    /// "554 5.7.1 <to@x>: Relay access denied": the reply as one line.
    static func replyText(_ r: Reply) -> String {
        "\(r.code)\(r.enhanced.map { " \($0)" } ?? "") \(r.lines.joined(separator: " "))"
    }

    /// A TLS handshake (or record) that failed, with OpenSSL's reason: never silent. Counted with the
    /// refusals (reason "tls_failed").
    private func tlsFailed(_ error: any Error, handshake: Bool) {
        // Implicit TLS (a submissions listener) fails before any command; elsewhere TLS follows STARTTLS.
        Self.logTLSFailure(sessionLog, metrics: server.relayMetrics, client: clientName,
                           command: role == .submissions ? "CONNECT" : "STARTTLS",
                           what: "\(error)".hasPrefix("TLS") ? "\(error)" : "\(handshake ? "TLS handshake failed" : "TLS failed"): \(error)",
                           proto: machine.protocolName, helo: machine.helo)
    }

    /// The one line for a TLS failure, also for a submissions connection whose engine could not be set
    /// up before its session began (SMTPServer.accepted). The engine's errors read "TLS handshake
    /// failed: error:0A00010B:SSL routines::wrong version number".
    static func logTLSFailure(_ log: Logger, metrics: RelayMetrics, client: String, command: String,
                              what: String, proto: String?, helo: String?) {
        metrics.commandRefused(.tlsFailed)
        var fields: Logger.Metadata = ["client": .string(client), "command": .string(command),
                                       "reason": .string(Refusal.Reason.tlsFailed.rawValue), "tls": .string(what)]
        if let proto { fields["proto"] = .string(proto) }
        if let helo { fields["helo"] = .string(helo) }
        log.fields("reject", fields) {
            "NOQUEUE: reject: \(command) from \(client): \(what)\(proto.map { "; proto=\($0)" } ?? "")\(helo.map { " helo=\(angleQuoted($0))" } ?? "")"
        }
    }
}
