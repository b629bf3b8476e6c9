// TCPConnection: the transport every driver uses (inbound and sink sessions, outbound delivery, blast's
// client, the HTTP endpoints): one uv_tcp_t stream, accepted by a StreamListener or opened with
// `connect`, with an optional TLS engine (`startTLS`). Under TLS reads deliver plaintext, writes take
// plaintext, `closeAfterWrites` sends close_notify first, and every failure, TLS or socket, is reported
// through `onError` with its reason before the connection closes.
//
// Memory: an idle connection is the Swift object plus the uv_tcp_t, nothing else. Reads go into the
// loop-wide 64 KiB buffer (valid only during `onRead`). A write is first tried directly
// (uv_try_write); only what the kernel does not take is copied into one allocation holding the
// uv_write_t and the bytes, freed in its write callback. A Timer exists only while connecting with
// a timeout or lingering in closeAfterWrites.
//
// Lifetime: the object keeps itself alive (Unmanaged.passRetained in handle.data) until the close
// callback, so dropping it does not close the socket: every connection ends with `close()`,
// `closeAfterWrites()`, end of file, or an I/O error, and then `onClose` runs exactly once.
// All callbacks are set to nil after `onClose`, which breaks cycles through their captures.

import CLibUV
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

public final class TCPConnection: UVHandleOwner {
    private enum State: UInt8 {
        case open
        case flushing    // closeAfterWrites: uv_shutdown waits for queued writes, then sends FIN
        case lingering   // FIN sent; reading (and dropping) until the peer's EOF or the linger timer
        case closing     // uv_close called
        case closed      // close callback ran
    }

    let handle: UnsafeMutablePointer<uv_tcp_t>
    // @exclusivity(unchecked) on the fields every read and write touches: they live on the loop thread,
    // are never passed inout, and no access to one can overlap another (plain loads and stores, no
    // callback inside an access). Swift's run-time check of each access cost several thousand
    // instructions a message through the relay (callgrind, bench/callgrind.sh), with this file's
    // fields and InboundSession's.
    @exclusivity(unchecked) private var state = State.open
    @exclusivity(unchecked) private var isReading = false
    private var sawEOF = false
    private var lingerMilliseconds: UInt32 = 0

    public private(set) var peerAddress: SocketAddress?
    public private(set) var localAddress: SocketAddress?
    /// The socket error that ended the connection (read, write or connect), if it did not end cleanly.
    public private(set) var lastError: UVError?

    /// Bytes read; the buffer is only valid during the call (in the clear it is one loop-wide read
    /// buffer, 64 KiB, shared by all connections: no per-connection read buffer). Called once per read
    /// from the socket; under TLS with the plaintext that read carried, which may be none (part of a
    /// record, a handshake message): every raw byte is seen, for deadlines that count from the first.
    @exclusivity(unchecked) public var onRead: ((UnsafeRawBufferPointer) -> Void)?
    /// Bytes the socket delivered in the read being handled (ciphertext under TLS), for byte counters.
    @exclusivity(unchecked) public private(set) var lastReadCount = 0
    /// A failure, with its reason, just before the connection closes because of it: TLS (a bad record,
    /// a failed handshake, an alert) or the socket (a reset, a failed write). Never silent.
    public var onError: ((TransportError) -> Void)?
    /// The TLS handshake completed (before the plaintext of the same read is delivered).
    public var onHandshake: (() -> Void)?
    /// Present once `startTLS` was called: what was negotiated, the peer's certificate.
    @exclusivity(unchecked) public private(set) var tls: TLSEngine?
    /// Inside the delivery of a TLS read or `corked`: records wait in the engine and go out in one
    /// socket write at the end (a reply with the session ticket, the 221 with close_notify).
    @exclusivity(unchecked) private var corkDepth = 0
    private var closeNotifySent = false
    private var closeNotifySeen = false
    /// Peer closed or read error. Afterwards the connection closes itself: at once, or after
    /// flushing if writes are still queued. Calling `closeAfterWrites()` or `close()` here is fine.
    public var onEOF: (() -> Void)?
    /// After the handle is really closed (close callback). Runs exactly once for every connection
    /// handed to the caller, whatever ended it.
    public var onClose: (() -> Void)?
    /// Bytes handed to write() that the kernel has not taken yet (their write callback has not run),
    /// with TLS records still waiting in the engine.
    public var pendingWriteBytes: Int {
        guard let tls else { return queuedBytes }
        return queuedBytes + tls.outputCount
    }
    /// Bytes in uv_write requests whose callback has not run.
    @exclusivity(unchecked) private var queuedBytes = 0
    /// Called when pendingWriteBytes returns to 0 (only after it was above 0).
    public var onWritesDrained: (() -> Void)?

    /// Present only while `connect` is in progress.
    private var connector: Connector?
    /// The connect timeout or the linger timeout, only while one runs.
    private var timer: Timer?

    init(loop: UnsafeMutablePointer<uv_loop_t>) {
        handle = allocateZeroed(uv_tcp_t.self)
        let result = uv_tcp_init(loop, handle)  // AF_UNSPEC: no socket yet, cannot fail
        precondition(result == 0, "uv_tcp_init: \(UVError(code: result))")
        handle.pointee.data = Unmanaged.passRetained(self).toOpaque()
        EventLoop.from(loop).register(handle)
    }

    /// A connection on a unix-domain socket (accepted by a StreamListener on a path): the same stream calls, in a
    /// uv_pipe_t (larger than uv_tcp_t, so the memory is sized for it). TCP-only calls (addresses,
    /// nodelay, connect) are not made on it.
    init(pipeOn loop: UnsafeMutablePointer<uv_loop_t>) {
        let size = max(MemoryLayout<uv_pipe_t>.size, MemoryLayout<uv_tcp_t>.size)
        let raw = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: MemoryLayout<uv_pipe_t>.alignment)
        raw.initializeMemory(as: UInt8.self, repeating: 0, count: size)
        handle = raw.bindMemory(to: uv_tcp_t.self, capacity: 1)
        let result = uv_pipe_init(loop, raw.assumingMemoryBound(to: uv_pipe_t.self), 0)
        precondition(result == 0, "uv_pipe_init: \(UVError(code: result))")
        handle.pointee.data = Unmanaged.passRetained(self).toOpaque()
        EventLoop.from(loop).register(handle)
    }

    @inline(__always) private var stream: UnsafeMutablePointer<uv_stream_t> { handle.cast(to: uv_stream_t.self) }

    @inline(__always)
    private static func from(_ stream: UnsafeMutablePointer<uv_stream_t>) -> TCPConnection {
        Unmanaged<TCPConnection>.fromOpaque(stream.pointee.data!).takeUnretainedValue()
    }

    /// True once close(), closeAfterWrites(), EOF or an error has ended the connection: reads are
    /// no longer delivered and writes are dropped.
    public var isClosed: Bool { state != .open }

    func fillAddresses() {
        peerAddress = SocketAddress.read { uv_tcp_getpeername(handle, $0, $1) }
        localAddress = SocketAddress.read { uv_tcp_getsockname(handle, $0, $1) }
    }

    private func startTimer(afterMilliseconds milliseconds: UInt64, _ fire: @escaping (TCPConnection) -> Void) {
        let timer = Timer(loop: EventLoop.from(handle.pointee.loop))
        self.timer = timer
        timer.start(afterMilliseconds: milliseconds) { [weak self] in
            if let self { fire(self) }
        }
    }

    private func closeTimer() {
        timer?.close()
        timer = nil
    }

    // MARK: Connecting

    private final class Connector {
        let done: (Result<TCPConnection, UVError>) -> Void
        let readsAddresses: Bool
        var error: UVError?
        init(readsAddresses: Bool, done: @escaping (Result<TCPConnection, UVError>) -> Void) {
            self.readsAddresses = readsAddresses
            self.done = done
        }
    }

    /// Opens a connection. `done` runs once on the loop thread, never before connect returns:
    /// `.success` with a connected connection (not yet reading), or `.failure` after the handle has
    /// been closed (UV_ETIMEDOUT when `timeoutMs` passed first). `readAddresses: false` leaves
    /// `peerAddress` and `localAddress` nil and saves two system calls (a load generator's connections).
    /// `bindTo` is the local address to send from (an egress source; port 0: any); a bind that fails
    /// (EADDRNOTAVAIL: not an address of this machine) fails the connect the same way.
    public static func connect(loop: EventLoop, to address: SocketAddress, bindTo: SocketAddress? = nil,
                               timeoutMs: UInt64? = nil, readAddresses: Bool = true,
                               _ done: @escaping (Result<TCPConnection, UVError>) -> Void) {
        let connection = TCPConnection(loop: loop.raw)
        let connector = Connector(readsAddresses: readAddresses, done: done)
        connection.connector = connector
        // Every failure below closes the handle; the close callback reports it.
        if let bindTo {
            var result = connection.openUnboundSocket(like: bindTo)
            if result == 0 { result = bindTo.withSockAddr { uv_tcp_bind(connection.handle, $0, 0) } }
            if result < 0 {
                connector.error = UVError(code: result)
                connection.close()
                return
            }
        }
        let request = allocateZeroed(uv_connect_t.self)
        let result = address.withSockAddr { sockaddr in
            uv_tcp_connect(request, connection.handle, sockaddr) { request, status in
                let stream = request!.pointee.handle!
                request!.deallocate()
                TCPConnection.from(stream).connected(status: status)
            }
        }
        if result < 0 {
            request.deallocate()
            connector.error = UVError(code: result)
            connection.close()
            return
        }
        if let timeoutMs {
            connection.startTimer(afterMilliseconds: timeoutMs) { connection in
                guard let connector = connection.connector else { return }
                connector.error = .timedOut
                connection.close()  // the connect callback then runs with UV_ECANCELED
            }
        }
    }

    /// A socket of `address`'s family, opened here rather than by uv_tcp_bind so that
    /// IP_BIND_ADDRESS_NO_PORT is set before the bind: the port is then chosen at connect, unique per
    /// (source, destination) rather than per source, so one source address is not limited to one
    /// ephemeral range for all its destinations together. 0 or a libuv error.
    private func openUnboundSocket(like address: SocketAddress) -> Int32 {
        #if canImport(Glibc)
        let fd = socket(address.isIPv6 ? AF_INET6 : AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return -errno }
        var on: Int32 = 1
        // An older kernel without the option: the port is chosen at bind, which still works.
        _ = setsockopt(fd, Int32(IPPROTO_IP), IP_BIND_ADDRESS_NO_PORT, &on, socklen_t(MemoryLayout<Int32>.size))
        let result = uv_tcp_open(handle, fd)
        if result < 0 { Glibc.close(fd) }
        return result
        #else
        return 0  // uv_tcp_bind opens the socket
        #endif
    }

    private func connected(status: Int32) {
        guard let connector else { return }
        if status == 0 && state == .open {
            self.connector = nil
            closeTimer()
            if connector.readsAddresses { fillAddresses() }
            connector.done(.success(self))
        } else {
            if connector.error == nil { connector.error = UVError(code: status) }
            close()
        }
    }

    // MARK: Reading

    /// Starts delivering `onRead`. Call again after `stopReading()` to resume (back-pressure).
    public func startReading() {
        guard state == .open else { return }
        beginReading()
    }

    public func stopReading() {
        guard isReading, state == .open else { return }
        isReading = false
        uv_read_stop(stream)
    }

    private func beginReading() {
        guard !isReading, !sawEOF else { return }
        let result = uv_read_start(stream, { handle, _, buffer in
            let loop = EventLoop.from(handle!.pointee.loop)
            buffer!.pointee = uv_buf_init(loop.readBuffer.assumingMemoryBound(to: CChar.self),
                                          UInt32(EventLoop.readBufferSize))
        }, { stream, count, buffer in
            TCPConnection.from(stream!).didRead(count: count, buffer: buffer!.pointee.base)
        })
        if result == 0 {
            isReading = true
        } else {
            failed(result)
        }
    }

    /// A socket error: recorded, reported, and the connection closes.
    private func failed(_ code: Int32) {
        let error = UVError(code: code)
        lastError = error
        if state == .open { onError?(.socket(error)) }
        close()
    }

    /// Bytes read from the socket before their reader was set (by whoever read a header first: a PROXY
    /// header's reader), handled as a read now: through TLS once it started, to `onRead`.
    public func deliver(_ bytes: [UInt8]) {
        guard state == .open, !bytes.isEmpty else { return }
        bytes.withUnsafeBytes { raw in
            if let tls { receive(raw, through: tls) } else { onRead?(raw) }
        }
    }

    private func didRead(count: Int, buffer: UnsafeMutablePointer<CChar>?) {
        if count > 0 {
            // While closing gracefully, input is drained and dropped: closing a socket with unread
            // input makes the kernel send a reset, which can destroy our last reply in flight.
            guard state == .open else { return }
            lastReadCount = count
            let bytes = UnsafeRawBufferPointer(start: buffer, count: count)
            if let tls { receive(bytes, through: tls) } else { onRead?(bytes) }
            return
        }
        if count == 0 { return }  // EAGAIN: nothing read, buffer returned
        let error = Int32(count)
        isReading = false
        let isReset = error != UV_EOF.rawValue
        if isReset {
            lastError = UVError(code: error)  // ECONNRESET and friends count as EOF too
            if state == .open { onError?(.socket(lastError!)) }
        } else {
            sawEOF = true
        }
        switch state {
        case .open:
            onEOF?()
            guard state == .open else { return }  // onEOF closed it its own way
            if queuedBytes > 0 && !isReset {
                closeAfterWrites()  // a half-closed peer still reads: flush, then close
            } else {
                close()
            }
        case .flushing:
            if isReset { close() }  // else keep flushing; the shutdown callback closes
        case .lingering:
            close()
        case .closing, .closed:
            break
        }
    }

    // MARK: Writing

    /// Queues `bytes` for the peer (through TLS once it started); dropped if the connection is closed
    /// or closing.
    public func write(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { write($0) }
    }

    public func write(_ bytes: UnsafeRawBufferPointer) {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return }
        write(gathering: CollectionOfOne(UnsafeRawBufferPointer(start: base, count: bytes.count)))
    }

    /// Writes several buffers in order with one system call if the socket takes them, else one
    /// uv_write of one copy of what is left. Under TLS they go into the engine one after the other (it
    /// encrypts them into records, a copy it makes anyway), then out in one write.
    public func write<C: Collection>(gathering parts: C) where C.Element == UnsafeRawBufferPointer {
        guard state == .open else { return }
        guard let tls else { return writeToSocket(parts) }
        do {
            for part in parts where part.count > 0 { try tls.send(part) }
        } catch {
            tlsFailed(error, handshake: !tls.handshakeComplete, sendAlert: false)
            return
        }
        if corkDepth == 0 { flushTLS() }
    }

    private func writeToSocket<C: Collection>(_ parts: C) where C.Element == UnsafeRawBufferPointer {
        guard state == .open else { return }
        var total = 0
        for part in parts { total += part.count }
        guard total > 0 else { return }

        var written = 0
        if queuedBytes == 0 {
            // Nothing queued, so order is kept if we try the socket directly.
            written = withUnsafeTemporaryAllocation(of: uv_buf_t.self, capacity: parts.count) { buffers in
                var count: UInt32 = 0
                for part in parts where part.count > 0 {
                    buffers[Int(count)] = uv_buf_init(
                        UnsafeMutablePointer(mutating: part.baseAddress!.assumingMemoryBound(to: CChar.self)),
                        UInt32(part.count))
                    count += 1
                }
                return Int(uv_try_write(stream, buffers.baseAddress!, count))
            }
            if written == total { return }
            if written < 0 {
                if written != Int(UV_EAGAIN.rawValue) {
                    failed(Int32(written))  // EPIPE, ECONNRESET: the peer is gone
                    return
                }
                written = 0
            }
        }

        // One allocation: the request, then the bytes not yet written.
        let remaining = total - written
        let headerSize = (MemoryLayout<uv_write_t>.size + 15) & ~15
        let memory = UnsafeMutableRawPointer.allocate(byteCount: headerSize + remaining, alignment: 16)
        let request = memory.bindMemory(to: uv_write_t.self, capacity: 1)
        let copy = memory + headerSize
        var skip = written
        var offset = 0
        for part in parts where part.count > 0 {
            if skip >= part.count { skip -= part.count; continue }
            let length = part.count - skip
            (copy + offset).copyMemory(from: part.baseAddress! + skip, byteCount: length)
            offset += length
            skip = 0
        }
        request.pointee.data = UnsafeMutableRawPointer(bitPattern: remaining)
        var buffer = uv_buf_init(copy.assumingMemoryBound(to: CChar.self), UInt32(remaining))
        let result = uv_write(request, stream, &buffer, 1) { request, status in
            let stream = request!.pointee.handle!
            let count = Int(bitPattern: request!.pointee.data)
            UnsafeMutableRawPointer(request!).deallocate()
            TCPConnection.from(stream).wrote(count: count, status: status)
        }
        if result < 0 {
            memory.deallocate()
            failed(result)
            return
        }
        queuedBytes += remaining
    }

    private func wrote(count: Int, status: Int32) {
        queuedBytes -= count
        if status < 0 && status != UV_ECANCELED.rawValue {
            failed(status)  // EPIPE, ECONNRESET: the peer is gone
        }
        if pendingWriteBytes == 0 && state == .open {
            onWritesDrained?()
        }
    }

    // MARK: Closing

    /// Closes gracefully, so a final "421 ..." reaches the peer: flushes what is queued, sends FIN
    /// (uv_shutdown), then reads and drops input until the peer's EOF or `lingerMs` (closing with
    /// unread input would make the kernel reset the connection and could destroy the reply in flight).
    /// A peer that never reads cannot hold the connection: the flush gets `flushLimitMs`, then it closes.
    public func closeAfterWrites(lingerMs: UInt32 = 2000) {
        guard state == .open else { return }
        guard connector == nil else { close(); return }
        sendCloseNotify()
        guard state == .open else { return }
        state = .flushing
        lingerMilliseconds = lingerMs
        beginReading()
        startTimer(afterMilliseconds: TCPConnection.flushLimitMs) { $0.close() }
        let request = allocateZeroed(uv_shutdown_t.self)
        let result = uv_shutdown(request, stream) { request, status in
            let stream = request!.pointee.handle!
            request!.deallocate()
            TCPConnection.from(stream).didShutdown(status: status)
        }
        if result < 0 {
            request.deallocate()
            close()
        }
    }

    private func didShutdown(status: Int32) {
        guard state == .flushing else { return }  // closed meanwhile (status is UV_ECANCELED)
        if status < 0 || sawEOF || !isReading || lingerMilliseconds == 0 {
            close()
            return
        }
        state = .lingering
        closeTimer()
        startTimer(afterMilliseconds: UInt64(lingerMilliseconds)) { $0.close() }
    }

    /// How long queued bytes may take to drain after `closeAfterWrites` (a peer that stopped reading).
    static let flushLimitMs: UInt64 = 30_000

    /// Closes now; queued writes are cancelled. `onClose` follows from the close callback.
    public func close() {
        guard state != .closing && state != .closed else { return }
        state = .closing
        isReading = false
        closeTimer()
        uv_close(handle.cast(to: uv_handle_t.self)) { handle in
            let connection = Unmanaged<TCPConnection>.fromOpaque(handle!.pointee.data!).takeRetainedValue()
            EventLoop.from(handle!.pointee.loop).unregister(handle!)
            handle!.deallocate()
            connection.didClose()
        }
    }

    private func didClose() {
        state = .closed
        let onClose = self.onClose
        onRead = nil
        onEOF = nil
        onWritesDrained = nil
        onError = nil
        onHandshake = nil
        self.onClose = nil
        if let connector {
            self.connector = nil
            connector.done(.failure(connector.error ?? .canceled))
        }
        onClose?()
    }

    // MARK: Options

    /// TCP_NODELAY: send small writes (replies) without waiting for Nagle's algorithm.
    public func setNoDelay(_ on: Bool) {
        guard state == .open else { return }
        uv_tcp_nodelay(handle, on ? 1 : 0)
    }

    /// SO_SNDBUF (the kernel doubles it, and stops autotuning this socket's buffer). A socket starts
    /// with 16 KiB on Linux: a larger first write goes partly to the kernel and partly into a pending
    /// copy, with an EPOLLOUT round trip (two epoll_ctl calls) to finish it.
    public func setSendBufferSize(_ bytes: Int) {
        guard state == .open else { return }
        var value = Int32(clamping: bytes)
        _ = handle.withMemoryRebound(to: uv_handle_t.self, capacity: 1) { uv_send_buffer_size($0, &value) }
    }

    /// SO_SNDBUF as the kernel reports it (0 when closed).
    public var sendBufferSize: Int {
        guard state == .open else { return 0 }
        var value: Int32 = 0  // 0 asks libuv to read the option
        let result = handle.withMemoryRebound(to: uv_handle_t.self, capacity: 1) { uv_send_buffer_size($0, &value) }
        return result == 0 ? Int(value) : 0
    }
}

// MARK: - TLS

/// Why a connection failed, as `onError` reports it.
public enum TransportError: Error, CustomStringConvertible, Sendable {
    /// The socket: a read or write error (the peer reset, EPIPE).
    case socket(UVError)
    /// TLS: a handshake that failed (`handshake`), or a bad record, an alert, an engine that could
    /// not encrypt. The text is OpenSSL's reason.
    case tls(TLSError, handshake: Bool)

    public var description: String {
        switch self {
        case .socket(let error): return "\(error)"
        case .tls(let error, _): return "\(error)"
        }
    }
}

extension TCPConnection {
    /// Switches the connection to TLS: from now on reads deliver the plaintext `engine` decrypts and
    /// writes are encrypted. A server starts it after its "220 Ready to start TLS" was written (or at
    /// accept, for implicit TLS); a client after the server's 220, and its ClientHello goes out now.
    /// False if the engine failed at once (reported through `onError`; the connection closes).
    @discardableResult
    public func startTLS(_ engine: TLSEngine) -> Bool {
        guard state == .open else { return false }
        tls = engine
        if !engine.context.isServer {
            do {
                try engine.start()
            } catch {
                tlsFailed(error, handshake: true, sendAlert: false)
                return false
            }
        }
        if corkDepth == 0 { flushTLS() }
        return true
    }

    /// Runs `body` with TLS records held in the engine, then writes them to the socket at once: the
    /// last reply and close_notify, or QUIT and close_notify, in one packet.
    public func corked(_ body: () -> Void) {
        corkDepth += 1
        body()
        corkDepth -= 1
        if corkDepth == 0 && state == .open { flushTLS() }
    }

    /// Sends TLS close_notify now (after what is queued) and leaves the socket open: a client that
    /// lets the server close first, so TIME_WAIT stays on the server's side. `closeAfterWrites` sends
    /// it too; without TLS, or before the handshake completed, there is nothing to send.
    public func sendCloseNotify() {
        guard state == .open, let tls, !closeNotifySent else { return }
        closeNotifySent = true
        tls.shutdown()
        flushTLS()
    }

    /// Writes what the engine has for the socket: handshake records, encrypted data, alerts.
    func flushTLS() {
        guard let tls, tls.hasOutput else { return }
        let records = tls.takeOutput()
        records.withUnsafeBytes { writeToSocket(CollectionOfOne($0)) }
    }

    /// One read's ciphertext: the handshake advances (`onHandshake` when it completes), the plaintext
    /// goes to `onRead`, and what the engine answers leaves in one write after both. A close_notify
    /// from the peer ends the input as end of file does: `onEOF`, then our close_notify and a close
    /// after the writes, unless we sent ours already (then the peer closes the socket).
    func receive(_ ciphertext: UnsafeRawBufferPointer, through tls: TLSEngine) {
        let wasDone = tls.handshakeComplete
        let plaintext: [UInt8]
        do {
            plaintext = try tls.receive(ciphertext)
        } catch {
            tlsFailed(error, handshake: !wasDone, sendAlert: true)
            return
        }
        corkDepth += 1
        defer {
            corkDepth -= 1
            if corkDepth == 0 && state == .open { flushTLS() }
        }
        if !wasDone && tls.handshakeComplete {
            onHandshake?()
            guard state == .open, self.tls === tls else { return }
        }
        plaintext.withUnsafeBytes { onRead?($0) }
        guard state == .open, tls.peerClosed, !closeNotifySeen else { return }
        closeNotifySeen = true
        onEOF?()
        guard state == .open, !closeNotifySent else { return }
        closeAfterWrites()
    }

    /// A TLS failure: reported, the alert (if the engine made one) sent, and the connection closed.
    func tlsFailed(_ error: any Error, handshake: Bool, sendAlert: Bool) {
        let reason = error as? TLSError ?? TLSError("\(error)")
        guard state == .open else { return }
        onError?(.tls(reason, handshake: handshake))
        guard state == .open else { return }
        if sendAlert {
            flushTLS()
            closeNotifySent = true  // the engine is finished: no close_notify after an alert
            closeAfterWrites()
        } else {
            close()
        }
    }
}
