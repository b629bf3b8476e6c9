// StreamListener: a bound, listening stream socket that hands each accepted connection to a closure.
// One type for both kinds of endpoint: a TCP address (SMTP listeners, metrics) or a unix-domain socket
// path (the relay's admin socket, where who may connect is decided by the file's permissions).
//
// The socket binds and listens in init, so a busy address throws there. Connections that arrive
// before `start` wait in the kernel's backlog. At a unix path, a socket file left by an earlier run is
// removed before binding; anything else there (a regular file, a directory) is an error, never deleted.

import CLibUV
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

public final class StreamListener: UVHandleOwner {
    public enum Endpoint: Sendable, Equatable, CustomStringConvertible {
        case tcp(SocketAddress)
        case unix(path: String)

        public var description: String {
            switch self {
            case .tcp(let address): return "\(address)"
            case .unix(let path): return path
            }
        }
    }

    /// A uv_tcp_t or a uv_pipe_t, allocated for the larger of the two.
    private let handle: UnsafeMutableRawPointer
    private var onConnection: ((TCPConnection) -> Void)?
    /// A connection libuv announced before `start`; accepted when `start` is called.
    private var acceptPending = false
    private var isClosed = false
    /// Accept failures (EMFILE and the like); the listener keeps listening.
    public var onAcceptError: ((UVError) -> Void)?
    /// Where it listens, with the real port after binding TCP port 0.
    public private(set) var endpoint: Endpoint

    /// Listens on a TCP address. IPv6 listeners set UV_TCP_IPV6ONLY, so "0.0.0.0:25" and "[::]:25" can
    /// both bind. libuv sets SO_REUSEADDR, so a restart binds despite TIME_WAIT connections.
    public init(loop: EventLoop, address: SocketAddress, backlog: Int32 = 1024) throws {
        endpoint = .tcp(address)
        handle = Self.allocateHandle()
        let tcp = handle.assumingMemoryBound(to: uv_tcp_t.self)
        let initResult = uv_tcp_init(loop.raw, tcp)
        precondition(initResult == 0, "uv_tcp_init: \(UVError(code: initResult))")
        adopt(loop)
        let flags: UInt32 = address.isIPv6 ? UV_TCP_IPV6ONLY.rawValue : 0
        var result = address.withSockAddr { uv_tcp_bind(tcp, $0, flags) }
        if result == 0 { result = listen(backlog) }  // some bind errors (EADDRINUSE) come from listen
        if result < 0 {
            close()
            throw UVError(code: result)
        }
        endpoint = .tcp(SocketAddress.read { uv_tcp_getsockname(tcp, $0, $1) } ?? address)
    }

    /// Listens on a unix-domain socket at `path`, readable and writable by the owner only.
    public init(loop: EventLoop, path: String, backlog: Int32 = 128) throws {
        endpoint = .unix(path: path)
        var st = stat()
        if lstat(path, &st) == 0 {
            guard (st.st_mode & S_IFMT) == S_IFSOCK else { throw UVError(code: -EEXIST) }
            // A socket someone still listens on is theirs; only a stale one is removed.
            guard !Self.answers(path) else { throw UVError(code: -EADDRINUSE) }
            unlink(path)
        }
        handle = Self.allocateHandle()
        let pipe = handle.assumingMemoryBound(to: uv_pipe_t.self)
        let initResult = uv_pipe_init(loop.raw, pipe, 0)
        precondition(initResult == 0, "uv_pipe_init: \(UVError(code: initResult))")
        adopt(loop)
        var result = uv_pipe_bind(pipe, path)
        if result == 0 {
            // Whoever can connect can act on the queue: the owner only, whatever the umask.
            if chmod(path, 0o600) != 0 { result = -errno }
        }
        if result == 0 { result = listen(backlog) }
        if result < 0 {
            close()
            throw UVError(code: result)
        }
    }

    /// The bound TCP address, with the real port after binding port 0 (a unix socket has none: 0.0.0.0:0).
    public var localAddress: SocketAddress {
        if case .tcp(let address) = endpoint { return address }
        return try! SocketAddress(ip: "0.0.0.0", port: 0)
    }

    /// The socket's path for a unix-domain listener.
    public var path: String? {
        if case .unix(let path) = endpoint { return path }
        return nil
    }

    private static func allocateHandle() -> UnsafeMutableRawPointer {
        let size = max(MemoryLayout<uv_pipe_t>.size, MemoryLayout<uv_tcp_t>.size)
        let raw = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 16)
        raw.initializeMemory(as: UInt8.self, repeating: 0, count: size)  // libuv never sets handle.data
        return raw
    }

    private var uvHandle: UnsafeMutablePointer<uv_handle_t> { handle.assumingMemoryBound(to: uv_handle_t.self) }
    private var stream: UnsafeMutablePointer<uv_stream_t> { handle.assumingMemoryBound(to: uv_stream_t.self) }

    private func adopt(_ loop: EventLoop) {
        uvHandle.pointee.data = Unmanaged.passRetained(self).toOpaque()
        loop.register(handle)
    }

    private func listen(_ backlog: Int32) -> Int32 {
        uv_listen(stream, backlog) { server, status in
            Unmanaged<StreamListener>.fromOpaque(server!.pointee.data!).takeUnretainedValue()
                .connectionArrived(status: status)
        }
    }

    /// Whether something accepts connections on the socket at `path` (a local, immediate connect).
    static func answers(_ path: String) -> Bool {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { Glibc.close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { return false }
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes) }
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) == 0
            }
        }
    }

    /// Starts handing accepted connections (not yet reading; a TCP one with its peer and local address
    /// filled) to `onConnection`, on the loop thread.
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
        let loop = uvHandle.pointee.loop!
        let connection: TCPConnection
        switch endpoint {
        case .tcp: connection = TCPConnection(loop: loop)
        case .unix: connection = TCPConnection(pipeOn: loop)
        }
        let result = uv_accept(stream, connection.handle.cast(to: uv_stream_t.self))
        if result < 0 {
            connection.close()
            onAcceptError?(UVError(code: result))
            return
        }
        if case .tcp = endpoint { connection.fillAddresses() }
        onConnection?(connection)
    }

    /// Stops listening and closes the socket (and removes a unix socket's file). Accepted connections
    /// are not affected.
    public func close() {
        guard !isClosed else { return }
        isClosed = true
        uv_close(uvHandle) { handle in
            let listener = Unmanaged<StreamListener>.fromOpaque(handle!.pointee.data!).takeRetainedValue()
            listener.onConnection = nil
            listener.onAcceptError = nil
            EventLoop.from(handle!.pointee.loop).unregister(handle!)
            UnsafeMutableRawPointer(handle!).deallocate()
        }
        if let path { unlink(path) }
    }
}
