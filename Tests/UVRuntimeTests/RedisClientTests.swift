import Foundation
import Testing
@testable import UVRuntime
import RedisTestSupport
#if canImport(Glibc)
import Glibc
#endif

/// RedisClient against a real Redis: answers, pipelining, scripts, a server that goes away, stalls
/// and comes back.
@Suite(.serialized) struct RedisClientTests {
    init() { ignoreSIGPIPE() }

    func connected(_ loop: EventLoop, _ address: RedisClient.Address, timeout: UInt64 = 500) throws -> RedisClient {
        let client = RedisClient(loop: loop, address: address, timeoutMilliseconds: timeout)
        client.start()
        #expect(run(loop) { client.isConnected })
        return client
    }

    @Test func answersOfEveryKind() throws {
        let server = try RedisServer()
        let loop = try EventLoop()
        defer { loop.close() }
        let client = try connected(loop, .tcp(host: "127.0.0.1", port: server.port))
        defer { client.close() }
        var answers: [RedisReply] = []
        let binary: [UInt8] = [0, 1, 2, 13, 10, 255]
        client.command([Array("SET".utf8), Array("k".utf8), binary]) { answers.append((try? $0.get()) ?? .null) }
        client.command(["GET", "k"]) { answers.append((try? $0.get()) ?? .null) }
        client.command(["GET", "missing"]) { answers.append((try? $0.get()) ?? .null) }
        client.command(["INCRBY", "n", "41"]) { answers.append((try? $0.get()) ?? .null) }
        client.command(["RPUSH", "l", "a", "b"]) { _ in }
        client.command(["LRANGE", "l", "0", "-1"]) { answers.append((try? $0.get()) ?? .null) }
        client.command(["NOSUCHCOMMAND"]) { answers.append((try? $0.get()) ?? .null) }
        #expect(run(loop) { answers.count == 6 })
        #expect(answers[0] == .status("OK"))
        #expect(answers[1] == .string(binary))
        #expect(answers[2] == .null)
        #expect(answers[3] == .integer(41))
        #expect(answers[4] == .array([.string(Array("a".utf8)), .string(Array("b".utf8))]))
        if case .error(let e) = answers[5] { #expect(e.hasPrefix("ERR")) } else { Issue.record("not an error: \(answers[5])") }
    }

    /// A thousand commands issued in one turn of the loop: answered in order (pipelined, one write).
    @Test func pipelinedInOrder() throws {
        let server = try RedisServer()
        let loop = try EventLoop()
        defer { loop.close() }
        let client = try connected(loop, .unix(server.socketPath))
        defer { client.close() }
        var values: [Int64] = []
        for _ in 0..<1000 { client.command(["INCR", "counter"]) { values.append((try? $0.get())?.integer ?? -1) } }
        #expect(run(loop) { values.count == 1000 })
        #expect(values == Array(1...1000))
    }

    /// EVALSHA of a script the server does not have: EVAL once, then EVALSHA finds it.
    @Test func scriptsLoadThemselves() throws {
        let server = try RedisServer()
        let loop = try EventLoop()
        defer { loop.close() }
        let client = try connected(loop, .tcp(host: "127.0.0.1", port: server.port))
        defer { client.close() }
        let script = RedisScript("return redis.call('INCRBY', KEYS[1], ARGV[1])")
        var sha: RedisReply?
        client.command(["SCRIPT", "LOAD", script.source]) { sha = try? $0.get() }
        #expect(run(loop) { sha != nil })
        #expect(sha == .string(Array(script.sha1.utf8)))  // the SHA-1 computed here is Redis's
        client.command(["SCRIPT", "FLUSH"]) { _ in }
        var results: [RedisReply] = []
        client.eval(script, keys: ["s"], args: ["5"]) { results.append((try? $0.get()) ?? .null) }
        #expect(run(loop) { results.count == 1 })
        client.eval(script, keys: ["s"], args: ["2"]) { results.append((try? $0.get()) ?? .null) }
        #expect(run(loop) { results.count == 2 })
        #expect(results == [.integer(5), .integer(7)])
    }

    /// A server killed: what waits fails, the state says lost; restarted: the client is back by itself.
    @Test func reconnectsAfterTheServerReturns() throws {
        let server = try RedisServer()
        let loop = try EventLoop()
        defer { loop.close() }
        var states: [Bool] = []
        let client = RedisClient(loop: loop, address: .tcp(host: "127.0.0.1", port: server.port), timeoutMilliseconds: 500)
        client.onStateChange = { up, _ in states.append(up) }
        defer { client.close() }
        client.start()
        #expect(run(loop) { client.isConnected })
        server.stop()
        var failure: String?
        client.command(["BLPOP", "nothing", "0"]) { if case .failure(let f) = $0 { failure = f.description } }
        #expect(run(loop) { failure != nil && !client.isConnected })
        var refused: RedisFailure?
        client.command(["PING"]) { if case .failure(let f) = $0 { refused = f } }
        #expect(refused?.description == "not connected")  // at once, not queued
        try server.start()
        #expect(run(loop, timeoutMs: 10_000) { client.isConnected })
        var pong: RedisReply?
        client.command(["PING"]) { pong = try? $0.get() }
        #expect(run(loop) { pong != nil })
        #expect(pong == .status("PONG"))
        #expect(states.first == true && states.contains(false) && states.last == true)
    }

    /// A server that stops answering (SIGSTOP): the command fails after the timeout, not later.
    @Test func aStalledServerTimesOut() throws {
        let server = try RedisServer()
        let loop = try EventLoop()
        defer { loop.close() }
        let client = try connected(loop, .tcp(host: "127.0.0.1", port: server.port), timeout: 300)
        defer { client.close() }
        server.signal(SIGSTOP)
        defer { server.signal(SIGCONT) }
        loop.updateTime()
        let sent = loop.nowMilliseconds
        var failedAt: UInt64?
        var why = ""
        client.command(["PING"]) {
            if case .failure(let f) = $0 { failedAt = loop.nowMilliseconds; why = f.description }
        }
        #expect(run(loop, timeoutMs: 3000) { failedAt != nil })
        let waited = (failedAt ?? 0) - sent
        #expect(waited >= 300 && waited < 1500, "failed after \(waited) ms: \(why)")
        #expect(!client.isConnected)
    }

    @Test func nothingListening() throws {
        let loop = try EventLoop()
        defer { loop.close() }
        let client = RedisClient(loop: loop, address: .tcp(host: "127.0.0.1", port: Int(redisFreePort())), timeoutMilliseconds: 300)
        var lost: String?
        client.onStateChange = { up, why in if !up { lost = why } }
        client.start()
        #expect(run(loop) { lost != nil })
        #expect(!client.isConnected)
        client.close()
    }
}
