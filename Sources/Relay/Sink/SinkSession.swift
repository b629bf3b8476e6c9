// One client of `tern sink`: the socket and one timer around the ServerSession machine. Unlike the
// relay's InboundSession there is no spool; a message is counted, or handed to the SinkStore.
//
// Delays: a `.delay` action holds every action after it (replies, a close) until its timer fires,
// and reading stops meanwhile, so replies stay in order and a pipelining client cannot pile up
// input. The same timer is the idle timeout while nothing is held.

import Logging
import SMTPProtocol
import UVRuntime

final class SinkSession {
    let id: UInt64
    unowned let server: SinkServer
    let connection: TCPConnection
    var machine: ServerSession
    private let timer: Timer
    private var closed = false
    /// Actions waiting for a delay to pass; nil when nothing is held.
    private var held: [ServerAction]?
    /// The message in progress: its envelope, size so far, and (keep mode) its bytes.
    private var message: MessageStart?
    private var size = 0
    private var chunks: [[UInt8]] = []
    private var committing = false
    /// The handshake completed in the read being delivered (it ends what input was pending).
    private var handshakeJustDone = false
    /// Loop milliseconds since input that is not a complete command line yet began (a partial line,
    /// part of a TLS record, the handshake): the command deadline counts from then, as the relay's
    /// (InboundSession), so dripping bytes cannot hold a connection. Nil when nothing is pending.
    private var inputPendingSince: UInt64?
    /// Inside pumpInput (which performs actions).
    private var pumping = false

    init(id: UInt64, server: SinkServer, connection: TCPConnection, machine: ServerSession) {
        self.id = id
        self.server = server
        self.connection = connection
        self.machine = machine
        timer = Timer(loop: server.loop)
    }

    func start() {
        connection.onRead = { [unowned self] bytes in self.received(bytes) }
        connection.onClose = { [unowned self] in self.didClose() }
        connection.onWritesDrained = { [unowned self] in self.resumeReading() }
        connection.onHandshake = { [unowned self] in
            guard let tls = self.connection.tls else { return }
            self.server.metrics.tlsSessionStarted()
            self.handshakeJustDone = true
            self.perform(self.machine.tlsEstablished(tls.summary))
        }
        connection.onError = { [unowned self] error in
            guard case .tls = error else { return }  // a reset: the close follows
            self.server.log.info("TLS from [\(self.machine.client.ip)] failed: \(error)")
            self.closed = true
            self.timer.stop()
        }
        connection.setNoDelay(true)
        perform(machine.greeting())
        resumeReading()
    }

    /// One read from the socket: plaintext (none when a TLS read carried only part of a record or
    /// handshake messages; it still counts for the command deadline).
    private func received(_ bytes: UnsafeRawBufferPointer) {
        let linesBefore = machine.linesRead
        let handshakeDone = handshakeJustDone
        handshakeJustDone = false
        if bytes.count > 0 { perform(machine.receive(bytes)) }
        noteInput(linesBefore: linesBefore, handshakeDone: handshakeDone)
        resumeReading()
    }

    /// After a read: a complete line (or the end of the handshake) ends what was pending; raw bytes
    /// that complete nothing start it, if it is not running already.
    private func noteInput(linesBefore: Int, handshakeDone: Bool) {
        inputPendingSince = machine.inputPendingSince(inputPendingSince, linesBefore: linesBefore,
                                                      handshaking: connection.tls.map { !$0.handshakeComplete } ?? false,
                                                      handshakeDone: handshakeDone, now: server.loop.nowMilliseconds)
    }

    /// Answers pipelined commands the machine set aside at its per-call reply cap while the client
    /// takes its replies (at most `InboundSession.maxPendingOutput` unsent), as the relay does.
    private func pumpInput() {
        guard !pumping else { return }
        pumping = true
        defer { pumping = false }
        let linesBefore = machine.linesRead
        // Each round consumes a line at least; the inbox holds one read at most: bounded.
        while !closed, held == nil, !committing, machine.hasBacklog,
              connection.pendingWriteBytes <= InboundSession.maxPendingOutput {
            perform(machine.continueInput())
        }
        if machine.linesRead != linesBefore { noteInput(linesBefore: linesBefore, handshakeDone: false) }
    }

    /// Reads (and arms the idle timer) unless something is held, the machine waits, or the client has
    /// not taken its replies (over the bound, or commands wait behind them).
    private func resumeReading() {
        guard !closed, held == nil else { return }
        pumpInput()
        guard !closed, held == nil else { return }
        let outputHeld = machine.hasBacklog || connection.pendingWriteBytes > InboundSession.maxPendingOutput
        if machine.wantsInput && !committing && !outputHeld {
            connection.startReading()
        } else {
            connection.stopReading()
        }
        let now = server.loop.nowMilliseconds
        let due = (machine.phase == .data ? now : inputPendingSince ?? now) + UInt64(server.config.commandTimeout * 1000)
        timer.start(afterMilliseconds: due > now ? due - now : 0) { [weak self] in
            guard let self else { return }
            // Replies still queued: the client reads nothing, the 421 would not get through.
            let stuck = self.connection.pendingWriteBytes > 0
            self.perform(self.machine.timedOut())
            if stuck { self.connection.close() }
        }
    }

    func perform(_ actions: [ServerAction]) {
        if held != nil {
            held! += actions
            return
        }
        var commit = false
        for (index, action) in actions.enumerated() {
            switch action {
            case .reply(let bytes):
                connection.write(bytes)
            case .beginMessage(let start):
                message = start
                size = 0
                chunks = []
            case .messageData(let bytes):
                size += bytes.count
                if server.store != nil { chunks.append(bytes) }
            case .commitMessage:
                commit = true
            case .abortMessage:
                message = nil
                chunks = []
            case .close:
                closed = true
                timer.stop()
                connection.closeAfterWrites()  // after close_notify, under TLS
            case .drop:
                closed = true
                connection.close()
            case .refused:
                break  // the sink counts its own faults
            case .startTLS:
                // The 220 went out in the clear just before this; the handshake comes next.
                do {
                    guard let context = server.tlsContext else { throw TLSError("no certificate loaded") }
                    connection.startTLS(try TLSEngine(context: context))
                    inputPendingSince = server.loop.nowMilliseconds  // the handshake within command_timeout
                } catch {
                    server.log.error("TLS set-up for [\(machine.client.ip)] failed: \(error)")
                    closed = true
                    connection.close()
                    return
                }
            case .authenticate:
                // The sink never offers AUTH, so its sessions never ask for it.
                closed = true
                connection.close()
            case .delay(let milliseconds):
                held = Array(actions[(index + 1)...])
                connection.stopReading()
                // libuv counts from the time cached at the start of this loop iteration, in whole
                // milliseconds rounded down: refresh it and add one, so a delay is never shorter than asked.
                server.loop.updateTime()
                timer.start(afterMilliseconds: UInt64(milliseconds) + 1) { [weak self] in self?.release() }
                if commit { held!.insert(.commitMessage, at: 0) }
                return
            }
        }
        if commit { commitMessage() }
    }

    private func release() {
        guard let actions = held else { return }
        held = nil
        perform(actions)
        resumeReading()
    }

    private func commitMessage() {
        guard let start = message else { return }
        message = nil
        let id = server.nextQueueID()
        let size = self.size
        guard let store = server.store else {
            accepted(start, size: size, id: id)
            perform(machine.commitFinished(queueID: id))
            return
        }
        committing = true
        let chunks = self.chunks
        self.chunks = []
        let sessionID = self.id
        let server = self.server
        store.save(id: id, chunks: chunks) { failure in
            if let failure {
                server.log.error("\(id): cannot keep the message: \(failure)")
            } else {
                // A client gone before its 250 never saw the message accepted: not counted.
                server.sessions[sessionID]?.accepted(start, size: size, id: id)
            }
            guard let session = server.sessions[sessionID] else { return }
            session.committing = false
            session.perform(session.machine.commitFinished(queueID: failure == nil ? id : nil))
            session.resumeReading()
        }
    }

    private func accepted(_ start: MessageStart, size: Int, id: String) {
        server.metrics.messageAccepted(recipients: start.recipients.count, bytes: size)
        if server.config.mode != .count && server.log.logLevel <= .debug {
            server.log.debug("\(id): from=\(angleQuoted(start.sender.address)), size=\(size), nrcpt=\(start.recipients.count) (\(server.config.mode.rawValue))")
        }
    }

    /// The sink is stopping: 421 now, whatever the phase.
    func shutDown() {
        guard !closed else { return }
        if held != nil {
            held = nil
        }
        perform(machine.shuttingDown())
    }

    private func didClose() {
        closed = true
        held = nil
        timer.close()
        server.sessionClosed(self)
    }
}
