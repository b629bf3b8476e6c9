// A redis-server of Debian's for the tests that need a real one (RedisClient, the cluster's scripts).

import Foundation
#if canImport(Glibc)
import Glibc
#endif

public struct RedisTestFailure: Error, CustomStringConvertible {
    public var description: String
    public init(_ d: String) { description = d }
}

/// A redis-server of Debian's on a free loopback port (or a unix socket), no persistence, for one test.
public final class RedisServer {
    public let port: Int
    public let socketPath: String
    private var process: Process?

    public init() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tern-redis-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        socketPath = dir.appendingPathComponent("redis.sock").path
        port = Int(redisFreePort())
        try start()
    }

    public func start() throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/redis-server")
        process.arguments = ["--port", "\(port)", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--unixsocket", socketPath, "--daemonize", "no", "--logfile", ""]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        self.process = process
        let deadline = Date().addingTimeInterval(10)
        while process.isRunning, !redisPortTaken(UInt16(port)), Date() < deadline { usleep(10_000) }
        guard process.isRunning, redisPortTaken(UInt16(port)) else { throw RedisTestFailure("redis-server did not start") }
    }

    public func signal(_ sig: Int32) {
        if let process, process.isRunning { kill(process.processIdentifier, sig) }
    }

    public func stop() {
        guard let process else { return }
        if process.isRunning {
            kill(process.processIdentifier, SIGCONT)
            kill(process.processIdentifier, SIGKILL)
        }
        process.waitUntilExit()
        self.process = nil
    }

    deinit { stop() }
}

public func redisFreePort() -> UInt16 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    addr.sin_port = 0
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) } }
    _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
    return UInt16(bigEndian: addr.sin_port)
}

public func redisPortTaken(_ port: UInt16) -> Bool {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    addr.sin_port = port.bigEndian
    return withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
        connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 } }
}

