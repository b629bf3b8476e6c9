// A small HTTP/1.1 server on the SMTP loop, for Tern's own endpoints (`tern sink`'s /metrics, the
// relay's [admin] listener). One handler turns a request into a response on the loop thread, so it may
// read loop-owned state without locks; an asynchronous handler answers later (after work on the thread
// pool), and the connection reads no further request until it has. Keep-alive and pipelined requests
// are answered in order; a bad request gets its status code and the connection closes.
//
// Bounded, so that no client stalls the loop or grows memory: a few connections (then 503); a request
// head of 8 KiB (431) and a body of 1 MiB (413), parsed in linear time; a request must be complete
// within `requestTimeoutMs` of its first byte (408: a byte now and then does not keep a connection);
// an idle keep-alive connection closes after `idleTimeoutMs`; input is not read while an answer is
// prepared (at most one request is buffered ahead), nor while over 1 MiB of answers wait for the
// client to read them.

import UVRuntime

public final class HTTPServer {
    public typealias Handler = (HTTPRequest) -> HTTPResponse
    /// Answers by calling the second argument exactly once, on the loop thread, now or later.
    public typealias AsyncHandler = (HTTPRequest, @escaping (HTTPResponse) -> Void) -> Void

    let loop: EventLoop
    /// A TCP address, or a unix-domain socket (the relay's admin endpoint may use one).
    let listener: StreamListener
    let handler: AsyncHandler
    private var connections: [ObjectIdentifier: HTTPConnection] = [:]
    public let maxConnections: Int
    /// The largest request body taken (more: 413); set before `start`.
    public var maxBodyBytes = 1 << 20
    /// Output not yet taken by a client past which the connection reads and answers nothing more.
    static let maxPendingOutputBytes = 1 << 20
    /// How long a keep-alive connection may wait for its next request (or for its client to read).
    public let idleTimeoutMs: UInt64
    /// How long a request (head and body) may take to arrive, counted from its first byte: then 408.
    public let requestTimeoutMs: UInt64
    /// The answer to a request the server refuses itself (malformed, too many connections): status,
    /// reason phrase and a line saying why. Plain text unless the owner answers its errors in another
    /// shape (the admin endpoint: JSON).
    public var errorResponse: @Sendable (_ status: Int, _ reason: String, _ message: String) -> HTTPResponse = {
        HTTPResponse.text($0, $1, $2 + "\n")
    }

    public convenience init(loop: EventLoop, address: SocketAddress, maxConnections: Int = 64, idleTimeoutMs: UInt64 = 30_000,
                            requestTimeoutMs: UInt64 = 10_000, handler: @escaping Handler) throws {
        try self.init(loop: loop, address: address, maxConnections: maxConnections, idleTimeoutMs: idleTimeoutMs,
                      requestTimeoutMs: requestTimeoutMs, asyncHandler: { request, answer in answer(handler(request)) })
    }

    public init(loop: EventLoop, address: SocketAddress, maxConnections: Int = 64, idleTimeoutMs: UInt64 = 30_000,
                requestTimeoutMs: UInt64 = 10_000, asyncHandler: @escaping AsyncHandler) throws {
        self.loop = loop
        self.handler = asyncHandler
        self.maxConnections = maxConnections
        self.idleTimeoutMs = idleTimeoutMs
        self.requestTimeoutMs = requestTimeoutMs
        listener = try StreamListener(loop: loop, address: address, backlog: 128)
    }

    /// Listens on a unix-domain socket at `path` (a stale socket file there is replaced).
    public init(loop: EventLoop, unixPath path: String, maxConnections: Int = 64, idleTimeoutMs: UInt64 = 30_000,
                requestTimeoutMs: UInt64 = 10_000, asyncHandler: @escaping AsyncHandler) throws {
        self.loop = loop
        self.handler = asyncHandler
        self.maxConnections = maxConnections
        self.idleTimeoutMs = idleTimeoutMs
        self.requestTimeoutMs = requestTimeoutMs
        listener = try StreamListener(loop: loop, path: path)
    }

    /// The TCP address (a unix socket has none: 0.0.0.0:0).
    public var localAddress: SocketAddress { listener.localAddress }

    /// "127.0.0.1:8025" or the socket's path, for log lines.
    public var listenDescription: String { "\(listener.endpoint)" }

    public func start() throws {
        try listener.start { [unowned self] connection in self.accepted(connection) }
    }

    /// Stops listening and closes every connection.
    public func close() {
        listener.close()
        for c in Array(connections.values) { c.connection.close() }
    }

    private func accepted(_ connection: TCPConnection) {
        guard connections.count < maxConnections else {
            connection.write(errorResponse(503, "Service Unavailable", "too many connections").serialized(close: true))
            connection.closeAfterWrites()
            return
        }
        let c = HTTPConnection(server: self, connection: connection)
        connections[ObjectIdentifier(c)] = c
        c.start()
    }

    fileprivate func closed(_ c: HTTPConnection) {
        connections.removeValue(forKey: ObjectIdentifier(c))
    }
}

private final class HTTPConnection {
    unowned let server: HTTPServer
    let connection: TCPConnection
    var parser: HTTPRequestParser
    var timer: Timer?
    /// What the timer counts: the wait for the next request (idle), the deadline of the request being
    /// received (from its first byte, not restarted by later ones: a client sending a byte now and
    /// then must not keep the connection), nothing while an answer is prepared, the wait for the
    /// client to read its answers.
    enum Waiting { case none, idle, request, answer, output }
    var waiting = Waiting.none
    /// A request is being answered: the next ones wait in the parser.
    var answering = false
    /// The last response said "Connection: close".
    var closing = false
    /// Reading stopped until the client has taken the answers written.
    var pausedForOutput = false
    /// `HTTPResponse.whenSent` of answers written and not yet taken by the client.
    var sentWaiters: [() -> Void] = []

    init(server: HTTPServer, connection: TCPConnection) {
        self.server = server
        self.connection = connection
        parser = HTTPRequestParser(maxBodyBytes: server.maxBodyBytes)
    }

    func start() {
        // Weak, not unowned: the socket may report once more after the server has let go of this
        // connection (a crash seen under load: "read an unowned reference ... already destroyed").
        connection.onRead = { [weak self] bytes in self?.received(bytes) }
        connection.onWritesDrained = { [weak self] in self?.drained() }
        connection.onClose = { [weak self] in
            guard let self else { return }
            self.timer?.close()
            self.timer = nil
            self.fireSentWaiters()
            self.connection.onRead = nil
            self.connection.onWritesDrained = nil
            self.server.closed(self)
        }
        timer = Timer(loop: server.loop)
        wait(.idle)
        connection.startReading()
    }

    private func wait(_ next: Waiting) {
        guard next != waiting else { return }
        waiting = next
        // Weak, as the socket's callbacks: a timer firing after the connection is gone does nothing.
        switch next {
        case .none, .answer:
            timer?.stop()
        case .idle, .output:
            timer?.start(afterMilliseconds: server.idleTimeoutMs) { [weak self] in self?.connection.close() }
        case .request:
            timer?.start(afterMilliseconds: server.requestTimeoutMs) { [weak self] in
                guard let self else { return }
                let seconds = Double(self.server.requestTimeoutMs) / 1000
                self.refuse(HTTPParseError(status: 408, reason: "Request Timeout"),
                            "the request was not complete within \(formatDuration(seconds))")
            }
        }
    }

    /// Sets the timer for what the connection waits for now.
    private func updateWaiting() {
        if connection.isClosed || closing {
            wait(.none)  // closeAfterWrites has its own limits
        } else if answering {
            wait(.answer)
        } else if pausedForOutput {
            wait(.output)
        } else if parser.bufferedBytes > 0 {
            wait(.request)  // the first byte of a request starts its deadline
        } else {
            wait(.idle)
        }
    }

    func received(_ bytes: UnsafeRawBufferPointer) {
        parser.feed(bytes)
        answerNext()
        updateWaiting()
    }

    private func refuse(_ error: HTTPParseError, _ message: String? = nil) {
        guard !closing, !connection.isClosed else { return }
        closing = true
        connection.write(server.errorResponse(error.status, error.reason, message ?? error.reason).serialized(close: true))
        connection.closeAfterWrites()
        updateWaiting()
    }

    func answerNext() {
        while !connection.isClosed && !answering && !closing {
            if connection.pendingWriteBytes > HTTPServer.maxPendingOutputBytes {
                // The client does not read its answers (pipelined large ones): neither read nor
                // answer more until they have left, else each answer waits in memory.
                connection.stopReading()
                pausedForOutput = true
                return
            }
            var request: HTTPRequest
            do {
                guard let r = try parser.next() else { return }
                request = r
                request.client = connection.peerAddress?.ip
            } catch let error as HTTPParseError {
                refuse(error)
                return
            } catch {
                connection.close()
                return
            }
            wait(.answer)  // the request is complete: the next one gets a deadline of its own
            answering = true
            var inline = true
            server.handler(request) { [self] response in
                guard answering else {  // a second answer to one request is ignored
                    response.whenSent?()
                    return
                }
                answering = false
                send(response, for: request)
                if !inline { resume() }  // answered later: go on with requests that waited
            }
            inline = false
            // Answered later: read no more until then (what the client sends meanwhile waits in the
            // kernel's buffer, not in ours: one request at most is buffered ahead).
            if answering { connection.stopReading() }
        }
    }

    private func drained() {
        fireSentWaiters()
        if pausedForOutput {
            pausedForOutput = false
            resume()
        }
    }

    private func fireSentWaiters() {
        let waiters = sentWaiters
        sentWaiters = []
        for w in waiters { w() }
    }

    private func resume() {
        answerNext()
        if !answering && !closing && !pausedForOutput && !connection.isClosed {
            connection.startReading()
        }
        updateWaiting()
    }

    private func send(_ response: HTTPResponse, for request: HTTPRequest) {
        guard !connection.isClosed, !closing else {
            response.whenSent?()
            return
        }
        let close = !request.keepAlive
        // Head and body from their own arrays: a large body is not copied to join them.
        response.withWireParts(close: close, headOnly: request.method == "HEAD") { connection.write(gathering: $0) }
        if let whenSent = response.whenSent {
            if connection.pendingWriteBytes == 0 { whenSent() } else { sentWaiters.append(whenSent) }
        }
        if close {
            closing = true
            connection.closeAfterWrites()
        }
    }
}
