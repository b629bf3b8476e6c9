// TCPListener: a bound, listening uv_tcp_t that hands each accepted connection to a closure.
//
// The socket binds and listens in init, so a busy address throws there. Connections that arrive
// before `start` wait in the kernel's backlog.

import CLibUV

public final class TCPListener: UVHandleOwner {
    private let handle: UnsafeMutablePointer<uv_tcp_t>
    private var onConnection: ((TCPConnection) -> Void)?
    /// A connection libuv announced before `start`; accepted when `start` is called.
    private var acceptPending = false
    private var isClosed = false
    /// Accept failures (EMFILE and the like); the listener keeps listening.
    public var onAcceptError: ((UVError) -> Void)?

    /// Binds and listens. IPv6 listeners set UV_TCP_IPV6ONLY, so "0.0.0.0:25" and "[::]:25" can both
    /// bind. libuv sets SO_REUSEADDR, so a restart binds despite TIME_WAIT connections.
    public init(loop: EventLoop, address: SocketAddress, backlog: Int32 = 1024) throws {
        handle = allocateZeroed(uv_tcp_t.self)
        localAddress = address
        let initResult = uv_tcp_init(loop.raw, handle)
        precondition(initResult == 0, "uv_tcp_init: \(UVError(code: initResult))")
        handle.pointee.data = Unmanaged.passRetained(self).toOpaque()
        loop.register(handle)

        let flags: UInt32 = address.isIPv6 ? UV_TCP_IPV6ONLY.rawValue : 0
        var result = address.withSockAddr { uv_tcp_bind(handle, $0, flags) }
        if result == 0 {
            // Some bind errors (EADDRINUSE) are reported by listen.
            result = uv_listen(handle.cast(to: uv_stream_t.self), backlog) { server, status in
                Unmanaged<TCPListener>.fromOpaque(server!.pointee.data!).takeUnretainedValue()
                    .connectionArrived(status: status)
            }
        }
        if result < 0 {
            close()
            throw UVError(code: result)
        }
        localAddress = SocketAddress.read { uv_tcp_getsockname(handle, $0, $1) } ?? address
    }

    /// The bound address, with the real port after binding port 0.
    public private(set) var localAddress: SocketAddress

    /// Starts handing accepted connections (peer and local address filled, not yet reading) to
    /// `onConnection`, on the loop thread.
    public func start(onConnection: @escaping (TCPConnection) -> Void) throws {
        guard !isClosed else { throw UVError.invalidArgument }
        self.onConnection = onConnection
        if acceptPending {
            acceptPending = false
            acceptOne()
        }
    }

    private func connectionArrived(status: Int32) {
        if status < 0 {
            onAcceptError?(UVError(code: status))
            return
        }
        if onConnection == nil {
            // Not started: libuv stops watching until uv_accept is called.
            acceptPending = true
            return
        }
        acceptOne()
    }

    private func acceptOne() {
        let connection = TCPConnection(loop: handle.pointee.loop)
        let result = uv_accept(handle.cast(to: uv_stream_t.self), connection.handle.cast(to: uv_stream_t.self))
        if result < 0 {
            connection.close()
            onAcceptError?(UVError(code: result))
            return
        }
        connection.fillAddresses()
        onConnection?(connection)
    }

    /// Stops listening and closes the socket. Accepted connections are not affected.
    public func close() {
        guard !isClosed else { return }
        isClosed = true
        uv_close(handle.cast(to: uv_handle_t.self)) { handle in
            let listener = Unmanaged<TCPListener>.fromOpaque(handle!.pointee.data!).takeRetainedValue()
            listener.onConnection = nil
            listener.onAcceptError = nil
            EventLoop.from(handle!.pointee.loop).unregister(handle!)
            handle!.deallocate()
        }
    }
}
