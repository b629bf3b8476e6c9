// A small HTTP/1.1 server on the SMTP loop, for Tern's own endpoints (`tern sink`'s /metrics; the
// relay's [admin] listener later). One handler turns a request into a response on the loop thread,
// so it may read loop-owned state without locks; an asynchronous handler answers later (after work on
// the thread pool), and the connection reads no further request until it has. Keep-alive and
// pipelined requests are answered in order; a bad request gets its status code and the connection closes. Bounded: a few connections,
// a small request head, an idle timeout.

import UVRuntime

public final class HTTPServer {
    public typealias Handler = (HTTPRequest) -> HTTPResponse
    /// Answers by calling the second argument exactly once, on the loop thread, now or later.
    public typealias AsyncHandler = (HTTPRequest, @escaping (HTTPResponse) -> Void) -> Void

    let loop: EventLoop
    let listener: TCPListener?
    /// A unix-domain socket instead of TCP (the relay's admin endpoint may use one).
    let pipeListener: PipeListener?
    let handler: AsyncHandler
    private var connections: [ObjectIdentifier: HTTPConnection] = [:]
    public let maxConnections: Int
    /// Output not yet taken by a client past which the connection reads and answers nothing more.
    static let maxPendingOutputBytes = 1 << 20
    public let idleTimeoutMs: UInt64
    /// The answer to a request the server refuses itself (malformed, too many connections): status,
    /// reason phrase and a line saying why. Plain text unless the owner answers its errors in another
    /// shape (the admin endpoint: JSON).
    public var errorResponse: @Sendable (_ status: Int, _ reason: String, _ message: String) -> HTTPResponse = {
        HTTPResponse.text($0, $1, $2 + "\n")
    }

    public convenience init(loop: EventLoop, address: SocketAddress, maxConnections: Int = 64, idleTimeoutMs: UInt64 = 30_000,
                handler: @escaping Handler) throws {
        try self.init(loop: loop, address: address, maxConnections: maxConnections, idleTimeoutMs: idleTimeoutMs,
                      asyncHandler: { request, answer in answer(handler(request)) })
    }

    public init(loop: EventLoop, address: SocketAddress, maxConnections: Int = 64, idleTimeoutMs: UInt64 = 30_000,
                asyncHandler: @escaping AsyncHandler) throws {
        self.loop = loop
        self.handler = asyncHandler
        self.maxConnections = maxConnections
        self.idleTimeoutMs = idleTimeoutMs
        listener = try TCPListener(loop: loop, address: address, backlog: 128)
        pipeListener = nil
    }

    /// Listens on a unix-domain socket at `path` (a stale socket file there is replaced).
    public init(loop: EventLoop, unixPath path: String, maxConnections: Int = 64, idleTimeoutMs: UInt64 = 30_000,
                asyncHandler: @escaping AsyncHandler) throws {
        self.loop = loop
        self.handler = asyncHandler
        self.maxConnections = maxConnections
        self.idleTimeoutMs = idleTimeoutMs
        listener = nil
        pipeListener = try PipeListener(loop: loop, path: path)
    }

    /// The TCP address (a unix socket has none: 0.0.0.0:0).
    public var localAddress: SocketAddress { listener?.localAddress ?? (try! SocketAddress(parsing: "0.0.0.0:0")) }

    /// "127.0.0.1:8025" or the socket's path, for log lines.
    public var listenDescription: String { pipeListener?.path ?? "\(localAddress)" }

    public func start() throws {
        let accept: (TCPConnection) -> Void = { [unowned self] connection in self.accepted(connection) }
        if let listener { try listener.start(onConnection: accept) }
        if let pipeListener { try pipeListener.start(onConnection: accept) }
    }

    /// Stops listening and closes every connection.
    public func close() {
        listener?.close()
        pipeListener?.close()
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
    var parser = HTTPRequestParser()
    var timer: Timer?
    /// A request is being answered: the next ones wait in the parser.
    var answering = false
    /// The last response said "Connection: close".
    var closing = false

    init(server: HTTPServer, connection: TCPConnection) {
        self.server = server
        self.connection = connection
    }

    func start() {
        connection.onRead = { [unowned self] bytes in self.received(bytes) }
        connection.onClose = { [unowned self] in
            self.timer?.close()
            self.timer = nil
            self.server.closed(self)
        }
        timer = Timer(loop: server.loop)
        armTimer()
        connection.startReading()
    }

    func armTimer() {
        timer?.start(afterMilliseconds: server.idleTimeoutMs) { [unowned self] in self.connection.close() }
    }

    func received(_ bytes: UnsafeRawBufferPointer) {
        parser.feed(bytes)
        armTimer()
        if answering && parser.bufferedBytes > parser.maxBufferedBytes {
            // More than a whole request sent ahead while one is being answered: refuse, do not buffer.
            refuse(HTTPParseError(status: 413, reason: "Content Too Large"))
            return
        }
        answerNext()
    }

    private func refuse(_ error: HTTPParseError) {
        closing = true
        connection.write(server.errorResponse(error.status, error.reason, error.reason).serialized(close: true))
        connection.closeAfterWrites()
    }

    func answerNext() {
        while !connection.isClosed && !answering && !closing {
            if connection.pendingWriteBytes > HTTPServer.maxPendingOutputBytes {
                // The client does not read its answers (pipelined large ones): neither read nor
                // answer more until they have left, else each answer waits in memory.
                connection.stopReading()
                connection.onWritesDrained = { [unowned self] in
                    self.connection.onWritesDrained = nil
                    self.resume()
                }
                return
            }
            let request: HTTPRequest
            do {
                guard let r = try parser.next() else { return }
                request = r
            } catch let error as HTTPParseError {
                refuse(error)
                return
            } catch {
                connection.close()
                return
            }
            answering = true
            var inline = true
            server.handler(request) { [self] response in
                guard answering else { return }  // a second answer to one request is ignored
                answering = false
                send(response, for: request)
                if !inline { resume() }  // answered later: go on with requests that waited
            }
            inline = false
            // Answered later: read no more until then (what the client sends meanwhile waits in the
            // kernel's buffer, not in ours).
            if answering { connection.stopReading() }
        }
    }

    private func resume() {
        answerNext()
        if !answering && !closing && !connection.isClosed && connection.pendingWriteBytes <= HTTPServer.maxPendingOutputBytes {
            connection.startReading()
        }
    }

    private func send(_ response: HTTPResponse, for request: HTTPRequest) {
        guard !connection.isClosed, !closing else { return }
        let close = !request.keepAlive
        connection.write(response.serialized(close: close, headOnly: request.method == "HEAD"))
        if close {
            closing = true
            connection.closeAfterWrites()
        } else {
            armTimer()
        }
    }
}
