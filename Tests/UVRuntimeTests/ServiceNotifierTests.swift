import Testing
@testable import UVRuntime
#if canImport(Glibc)
import Glibc
#endif

/// A unix datagram socket bound to `name` (a path, or "\0..." for an abstract name): what systemd listens on.
private final class Receiver {
    let fd: Int32
    init(binding name: [UInt8]) throws {
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in for (i, b) in name.enumerated() { raw[i] = b } }
        let length = socklen_t(MemoryLayout<sockaddr_un>.offset(of: \sockaddr_un.sun_path)! + name.count)
        let bound = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) } }
        try #require(bound == 0, "bind: \(String(cString: strerror(errno)))")
    }
    deinit { close(fd) }

    /// The next datagram, or nil after a second.
    func receive() -> String? {
        var timeout = timeval(tv_sec: 1, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var buffer = [UInt8](repeating: 0, count: 512)
        let n = recv(fd, &buffer, buffer.count, 0)
        return n < 0 ? nil : String(decoding: buffer[0..<n], as: UTF8.self)
    }
}

@Suite struct ServiceNotifierTests {
    @Test func sendsToASocketPath() throws {
        let path = "/tmp/tern-notify-test-\(getpid()).sock"
        unlink(path)
        defer { unlink(path) }
        let receiver = try Receiver(binding: Array(path.utf8))
        let notifier = try #require(try ServiceNotifier(socketPath: path))
        #expect(notifier.notify("READY=1") == nil)
        #expect(notifier.notify("STOPPING=1") == nil)
        #expect(receiver.receive() == "READY=1")
        #expect(receiver.receive() == "STOPPING=1")
    }

    @Test func sendsToAnAbstractName() throws {
        let name = "tern-notify-test-\(getpid())"
        let receiver = try Receiver(binding: [0] + Array(name.utf8))
        let notifier = try #require(try ServiceNotifier(socketPath: "@" + name))
        #expect(notifier.notify("READY=1") == nil)
        #expect(receiver.receive() == "READY=1")
    }

    @Test func unsetIsOffAndBadValuesAreErrors() throws {
        #expect(try ServiceNotifier(socketPath: nil) == nil)
        #expect(try ServiceNotifier(socketPath: "") == nil)
        #expect(throws: ServiceNotifierError.self) { try ServiceNotifier(socketPath: "run/notify") }
        #expect(throws: ServiceNotifierError.self) { try ServiceNotifier(socketPath: "vsock:2:1234") }
        #expect(throws: ServiceNotifierError.self) { try ServiceNotifier(socketPath: "/" + String(repeating: "x", count: 200)) }
        // Nobody listening: the notice is lost, and said so; nothing waits.
        let nobody = try #require(try ServiceNotifier(socketPath: "/tmp/tern-notify-nobody-\(getpid()).sock"))
        #expect(nobody.notify("READY=1")?.contains("sendto") == true)
    }
}

@Suite struct SignalHoldTests {
    /// libuv puts SIG_DFL back when the last watcher of a signal closes; once held, the handler stays.
    @Test func aHeldSignalKeepsItsHandlerAfterItsWatcherCloses() throws {
        func disposition(_ signal: Int32) -> UnsafeMutableRawPointer? {
            var old = sigaction()
            sigaction(signal, nil, &old)
            return unsafeBitCast(old.__sigaction_handler.sa_handler, to: UnsafeMutableRawPointer?.self)
        }
        let loop = try EventLoop()
        defer { loop.close() }
        // SIGURG: no other test watches it.
        var watcher = try SignalWatcher(loop: loop, signal: SIGURG) {}
        #expect(disposition(SIGURG) != nil)
        watcher.close()
        loop.runOnce(nowait: true)
        #expect(disposition(SIGURG) == nil, "SIG_DFL (0) once the last watcher closed")
        watcher = try SignalWatcher(loop: loop, signal: SIGURG) {}
        try SignalWatcher.holdUntilExit([SIGURG])
        watcher.close()
        loop.runOnce(nowait: true)
        #expect(disposition(SIGURG) != nil, "still handled after its watcher closed")
    }
}
