// PipeListener: a listening unix-domain socket (uv_pipe_t) that hands each accepted connection to a
// closure, as a TCPConnection on a pipe. For local-only endpoints (the relay's admin socket): who may
// connect is decided by the file's permissions (created with the process's umask).
//
// A socket file left by an earlier run is removed before binding; anything else at the path (a
// regular file, a directory) is an error, never deleted.

import CLibUV

#if canImport(Glibc)
import Glibc
#endif

public final class PipeListener: UVHandleOwner {
    private let handle: UnsafeMutablePointer<uv_pipe_t>
    public let path: String
    private var onConnection: ((TCPConnection) -> Void)?
    private var acceptPending = false
    private var isClosed = false
    public var onAcceptError: ((UVError) -> Void)?

    public init(loop: EventLoop, path: String, backlog: Int32 = 128) throws {
        self.path = path
        var st = stat()
        if lstat(path, &st) == 0 {
            guard (st.st_mode & S_IFMT) == S_IFSOCK else { throw UVError(code: -EEXIST) }
            // A socket someone still listens on is theirs; only a stale one is removed.
            guard !Self.answers(path) else { throw UVError(code: -EADDRINUSE) }
            unlink(path)
        }
        handle = allocateZeroed(uv_pipe_t.self)
        let initResult = uv_pipe_init(loop.raw, handle, 0)
        precondition(initResult == 0, "uv_pipe_init: \(UVError(code: initResult))")
        handle.pointee.data = Unmanaged.passRetained(self).toOpaque()
        loop.register(handle)

        var result = uv_pipe_bind(handle, path)
        if result == 0 {
            // Whoever can connect can act on the queue: the owner only, whatever the umask.
            if chmod(path, 0o600) != 0 { result = -errno }
        }
        if result == 0 {
            result = uv_listen(handle.cast(to: uv_stream_t.self), backlog) { server, status in
                Unmanaged<PipeListener>.fromOpaque(server!.pointee.data!).takeUnretainedValue()
                    .connectionArrived(status: status)
            }
        }
        if result < 0 {
            close()
            throw UVError(code: result)
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
            acceptPending = true
            return
        }
        acceptOne()
    }

    private func acceptOne() {
        let connection = TCPConnection(pipeOn: handle.pointee.loop)
        let result = uv_accept(handle.cast(to: uv_stream_t.self), connection.handle.cast(to: uv_stream_t.self))
        if result < 0 {
            connection.close()
            onAcceptError?(UVError(code: result))
            return
        }
        onConnection?(connection)
    }

    /// Stops listening, closes the socket and removes its file.
    public func close() {
        guard !isClosed else { return }
        isClosed = true
        let path = self.path
        uv_close(handle.cast(to: uv_handle_t.self)) { handle in
            let listener = Unmanaged<PipeListener>.fromOpaque(handle!.pointee.data!).takeRetainedValue()
            listener.onConnection = nil
            listener.onAcceptError = nil
            EventLoop.from(handle!.pointee.loop).unregister(handle!)
            handle!.deallocate()
        }
        unlink(path)
    }
}
