import Testing
@testable import UVRuntime
#if canImport(Glibc)
import Glibc
#endif

/// A blocking unix-socket client fd connected to `path`, or -1.
private func unixClient(_ path: String) -> Int32 {
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8)) }
    let ok = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
    if ok != 0 {
        close(fd)
        return -1
    }
    return fd
}

private func temporaryPath(_ name: String) -> String {
    "/tmp/tern-pipe-test-\(getpid())-\(name).sock"
}

@Suite struct PipeTests {
    init() { ignoreSIGPIPE() }

    @Test func echoOverAUnixSocketThenCloseRemovesTheFile() throws {
        let loop = try EventLoop()
        defer { loop.close() }
        let path = temporaryPath("echo")
        let listener = try StreamListener(loop: loop, path: path)
        var st = stat()
        #expect(lstat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFSOCK)
        var server: TCPConnection?
        var serverClosed = false
        try listener.start { connection in
            server = connection
            connection.onRead = { [unowned connection] bytes in connection.write(bytes) }
            connection.onClose = { serverClosed = true }
            connection.startReading()
        }
        let fd = unixClient(path)
        #expect(fd >= 0)
        defer { close(fd) }
        let message = Array("GET /metrics HTTP/1.1\r\n\r\n".utf8)
        #expect(message.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, 0) } == message.count)
        var echoed: [UInt8] = []
        #expect(run(loop) {
            var buffer = [UInt8](repeating: 0, count: 256)
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            if n > 0 { echoed += buffer[0..<n] }
            return echoed.count >= message.count
        })
        #expect(echoed == message)
        #expect(server != nil)
        shutdown(fd, Int32(SHUT_WR))
        #expect(run(loop) { serverClosed || server?.isClosed == true })
        server?.close()
        listener.close()
        run(loop, forMilliseconds: 10)
        #expect(lstat(path, &st) != 0, "close removes the socket file")
    }

    @Test func aStaleSocketIsReplacedALiveOneIsNot() throws {
        let loop = try EventLoop()
        defer { loop.close() }
        let path = temporaryPath("stale")
        // A socket file nobody listens on: what a killed process leaves.
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8)) }
        unlink(path)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        #expect(bound == 0)
        close(fd)
        let first = try StreamListener(loop: loop, path: path)
        try first.start { $0.close() }
        // Now live: a second listener must not take it.
        #expect(throws: UVError.self) { _ = try StreamListener(loop: loop, path: path) }
        let client = unixClient(path)
        #expect(client >= 0, "the first listener still answers")
        close(client)
        first.close()
        run(loop, forMilliseconds: 10)
    }

    @Test func somethingElseAtThePathIsNeverDeleted() throws {
        let loop = try EventLoop()
        defer { loop.close() }
        let path = temporaryPath("file")
        let fd = open(path, O_CREAT | O_WRONLY | O_TRUNC, 0o600)
        close(fd)
        defer { unlink(path) }
        #expect(throws: UVError.self) { _ = try StreamListener(loop: loop, path: path) }
        var st = stat()
        #expect(lstat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFREG)
    }
}
