// RedisClient: Redis commands on the loop through hiredis's async API and its own libuv adapter
// (a uv_poll_t on the socket): no thread, no blocking call. Commands issued in one turn of the loop
// leave in one write (hiredis buffers them until the socket is writable), so they are pipelined.
//
// hiredis 0.14 has no timeouts of its own: one timer here checks the oldest command waiting (Redis
// answers in order) and the connect in progress; past `timeout` the connection is dropped, every
// command waiting fails, and a new connection is tried after a backoff (100 ms doubling to 5 s).
// A command issued while there is no connection fails at once: the caller falls back, it never waits.
//
// Rules this file keeps (hiredis 0.14.1):
// - Each command's callback box is retained until hiredis calls it, which it does exactly once,
//   with a NULL reply when the connection goes (redisAsyncFree runs them all).
// - After a failed connect or a disconnect hiredis frees the context itself: it is forgotten then.
// - Scripts are sent with EVALSHA (their SHA-1 computed here); Redis's NOSCRIPT answer (a restarted
//   server) makes it send EVAL once, which loads the script again.

import CLibUV
import COpenSSL
import CRedis

public enum RedisReply: Equatable, Sendable {
    case status(String)
    case error(String)
    case integer(Int64)
    case string([UInt8])
    case null
    case array([RedisReply])

    /// A string or status as text; an integer in decimal.
    public var text: String? {
        switch self {
        case .status(let s): return s
        case .string(let b): return String(decoding: b, as: UTF8.self)
        case .integer(let n): return String(n)
        default: return nil
        }
    }

    public var integer: Int64? {
        switch self {
        case .integer(let n): return n
        case .string(let b): return Int64(String(decoding: b, as: UTF8.self))
        default: return nil
        }
    }
}

public struct RedisFailure: Error, CustomStringConvertible, Sendable {
    public var description: String
}

/// A Lua script sent by EVALSHA.
public struct RedisScript: Sendable {
    public let source: String
    public let sha1: String

    public init(_ source: String) {
        self.source = source
        var digest = [UInt8](repeating: 0, count: 20)
        let bytes = Array(source.utf8)
        _ = bytes.withUnsafeBufferPointer { SHA1($0.baseAddress, $0.count, &digest) }
        sha1 = digest.map { String($0, radix: 16).count == 1 ? "0" + String($0, radix: 16) : String($0, radix: 16) }.joined()
    }
}

/// Close it before its loop ends (its socket's poll handle is hiredis's, not the loop's to close).
public final class RedisClient {
    public enum Address: Equatable, Sendable {
        case tcp(host: String, port: Int)
        case unix(String)
    }

    public typealias Done = (Result<RedisReply, RedisFailure>) -> Void

    let loop: EventLoop
    public let address: Address
    public let timeoutMilliseconds: UInt64
    private var context: UnsafeMutablePointer<redisAsyncContext>?
    private var connecting = false
    private var connectStarted: UInt64 = 0
    /// Send times of the commands waiting for their answers, oldest first.
    private var waiting: [UInt64] = []
    private var waitingHead = 0
    private var timer: Timer?
    private var retryDelay: UInt64 = 0
    private var retryAt: UInt64?
    public private(set) var isConnected = false
    public private(set) var isClosed = false
    /// Told of each change: connected (true) or lost, with why (false).
    public var onStateChange: ((Bool, String?) -> Void)?

    public init(loop: EventLoop, address: Address, timeoutMilliseconds: UInt64) {
        self.loop = loop
        self.address = address
        self.timeoutMilliseconds = max(1, timeoutMilliseconds)
        let timer = Timer(loop: loop)
        self.timer = timer
        // The deadlines are checked ten times per timeout (at most every 50 ms).
        let tick = max(1, min(50, timeoutMilliseconds / 10))
        timer.start(afterMilliseconds: tick, repeatMilliseconds: tick) { [unowned self] in check() }
    }

    /// Connects (and keeps reconnecting after a loss until `close`).
    public func start() {
        guard !isClosed, context == nil, !connecting else { return }
        retryAt = nil
        let ac: UnsafeMutablePointer<redisAsyncContext>?
        switch address {
        case .tcp(let host, let port): ac = redisAsyncConnect(host, Int32(port))
        case .unix(let path): ac = redisAsyncConnectUnix(path)
        }
        guard let ac else { return lost("out of memory") }
        if ac.pointee.err != 0 {
            let why = Self.errorText(ac)
            redisAsyncFree(ac)
            return lost(why)
        }
        ac.pointee.data = Unmanaged.passUnretained(self).toOpaque()
        guard tern_redis_attach(ac, UnsafeMutableRawPointer(loop.raw)) == REDIS_OK else {
            redisAsyncFree(ac)
            return lost("cannot watch the socket")
        }
        _ = tern_redis_on_connect(ac, redisClientConnected)
        _ = tern_redis_on_disconnect(ac, redisClientDisconnected)
        context = ac
        connecting = true
        connectStarted = loop.nowMilliseconds
    }

    /// Sends a command; `done` runs on the loop with Redis's answer (an error reply is a success here:
    /// `.error`), or a failure when there is no connection or it was lost before the answer.
    public func command(_ args: [String], _ done: @escaping Done) {
        command(args.map { Array($0.utf8) }, done)
    }

    public func command(_ args: [[UInt8]], _ done: @escaping Done) {
        guard let ac = context, isConnected else {
            return done(.failure(RedisFailure(description: isClosed ? "closed" : "not connected")))
        }
        let box = Unmanaged.passRetained(CommandBox(done)).toOpaque()
        var pointers: [UnsafePointer<CChar>?] = []
        var lengths: [Int] = args.map(\.count)
        // hiredis copies the arguments into its output buffer before returning.
        let storage = args.map { arg -> UnsafeMutablePointer<CChar> in
            let p = UnsafeMutablePointer<CChar>.allocate(capacity: max(1, arg.count))
            arg.withUnsafeBufferPointer { b in
                if let base = b.baseAddress { p.withMemoryRebound(to: UInt8.self, capacity: arg.count) { $0.update(from: base, count: arg.count) } }
            }
            return p
        }
        defer { storage.forEach { $0.deallocate() } }
        pointers = storage.map { UnsafePointer($0) }
        let result = pointers.withUnsafeMutableBufferPointer { argv in
            lengths.withUnsafeMutableBufferPointer { lens in
                tern_redis_command(ac, redisClientReplied, box, Int32(args.count), argv.baseAddress, lens.baseAddress)
            }
        }
        if result != REDIS_OK {
            Unmanaged<CommandBox>.fromOpaque(box).release()
            return done(.failure(RedisFailure(description: "the command could not be sent")))
        }
        waiting.append(loop.nowMilliseconds)
    }

    /// EVALSHA, and EVAL once if the server has not got the script (NOSCRIPT).
    public func eval(_ script: RedisScript, keys: [String], args: [String], _ done: @escaping Done) {
        let rest = [String(keys.count)] + keys + args
        command(["EVALSHA", script.sha1] + rest) { [weak self] result in
            if case .success(.error(let e)) = result, e.hasPrefix("NOSCRIPT"), let self {
                return self.command(["EVAL", script.source] + rest, done)
            }
            done(result)
        }
    }

    /// Drops the connection (failing what waits) and stops reconnecting.
    public func close() {
        guard !isClosed else { return }
        isClosed = true
        timer?.close()
        timer = nil
        drop("closed")
    }

    // MARK: hiredis's callbacks

    fileprivate func connected(status: Int32, why: String) {
        connecting = false
        guard status == REDIS_OK else {
            context = nil  // hiredis frees it after this callback
            return lost(why)
        }
        isConnected = true
        retryDelay = 0
        onStateChange?(true, nil)
    }

    fileprivate func disconnected(status: Int32, why: String) {
        context = nil  // freed by hiredis after this callback
        let was = isConnected
        isConnected = false
        connecting = false
        waiting.removeAll()
        waitingHead = 0
        if was || !isClosed { lost(status == REDIS_OK ? "disconnected" : why, wasConnected: was) }
    }

    fileprivate func replied() {
        if waitingHead < waiting.count { waitingHead += 1 }
        if waitingHead > 64 && waitingHead * 2 > waiting.count {
            waiting.removeFirst(waitingHead)
            waitingHead = 0
        }
    }

    // MARK: Deadlines and reconnecting

    private func check() {
        let now = loop.nowMilliseconds
        if connecting, now >= connectStarted + timeoutMilliseconds {
            return drop("no connection within \(timeoutMilliseconds) ms")
        }
        if waitingHead < waiting.count, now >= waiting[waitingHead] + timeoutMilliseconds {
            return drop("no answer within \(timeoutMilliseconds) ms")
        }
        if let at = retryAt, now >= at, !isClosed { start() }
    }

    /// Frees the context: hiredis calls every waiting command back with no reply, then (if it was
    /// connected) the disconnect callback.
    private func drop(_ why: String) {
        guard let ac = context else { return }
        let was = isConnected
        context = nil
        isConnected = false
        connecting = false
        ac.pointee.data = nil  // the disconnect callback it may make finds no client
        redisAsyncFree(ac)
        waiting.removeAll()
        waitingHead = 0
        lost(why, wasConnected: was)
    }

    private func lost(_ why: String, wasConnected: Bool = false) {
        if wasConnected || retryDelay == 0 { onStateChange?(false, why) }
        guard !isClosed else { return }
        retryDelay = retryDelay == 0 ? 100 : min(5000, retryDelay * 2)
        retryAt = loop.nowMilliseconds + retryDelay
    }

    static func errorText(_ ac: UnsafePointer<redisAsyncContext>) -> String {
        // The async context's errstr points into its redisContext's buffer (hiredis 0.14).
        let text = ac.pointee.errstr.map { String(cString: $0) } ?? ""
        return text.isEmpty ? "error \(ac.pointee.err)" : text
    }

    static func convert(_ reply: UnsafePointer<redisReply>) -> RedisReply {
        let r = reply.pointee
        func bytes() -> [UInt8] {
            guard let s = r.str, r.len > 0 else { return [] }
            return s.withMemoryRebound(to: UInt8.self, capacity: r.len) { Array(UnsafeBufferPointer(start: $0, count: r.len)) }
        }
        switch r.type {
        case REDIS_REPLY_STATUS: return .status(String(decoding: bytes(), as: UTF8.self))
        case REDIS_REPLY_ERROR: return .error(String(decoding: bytes(), as: UTF8.self))
        case REDIS_REPLY_INTEGER: return .integer(r.integer)
        case REDIS_REPLY_STRING: return .string(bytes())
        case REDIS_REPLY_ARRAY:
            return .array((0..<r.elements).map { i in r.element[i].map { convert($0) } ?? .null })
        default: return .null
        }
    }
}

final class CommandBox {
    let done: RedisClient.Done
    init(_ done: @escaping RedisClient.Done) { self.done = done }
}

private func client(_ ac: UnsafePointer<redisAsyncContext>?) -> RedisClient? {
    guard let data = ac?.pointee.data else { return nil }
    return Unmanaged<RedisClient>.fromOpaque(data).takeUnretainedValue()
}

private let redisClientReplied: tern_redis_callback = { ac, reply, privdata in
    let box = Unmanaged<CommandBox>.fromOpaque(privdata!).takeRetainedValue()
    client(ac)?.replied()
    if let reply {
        box.done(.success(RedisClient.convert(reply.assumingMemoryBound(to: redisReply.self))))
    } else {
        box.done(.failure(RedisFailure(description: ac.map { $0.pointee.err != 0 ? RedisClient.errorText($0) : "connection lost" } ?? "connection lost")))
    }
}

private let redisClientConnected: tern_redis_connect_callback = { ac, status in
    let why = ac.map { RedisClient.errorText($0) } ?? "connect failed"
    client(ac)?.connected(status: status, why: why)
}

private let redisClientDisconnected: tern_redis_connect_callback = { ac, status in
    let why = ac.map { RedisClient.errorText($0) } ?? "disconnected"
    client(ac)?.disconnected(status: status, why: why)
}
