import Foundation
import Testing
import SMTPProtocol
import UVRuntime
@testable import Blast

/// --handshake-only: the options it refuses, the budget in handshakes, and the report that shows it.
@Suite struct HandshakeModeTests {
    static func settings(handshakes: Int? = 3, concurrency: Int = 2) throws -> BlastSettings {
        var s = BlastSettings(server: try SocketAddress(parsing: "127.0.0.1:2525"),
                              sender: try AddressPattern(parsing: "a@b"), recipient: try AddressPattern(parsing: "c@d"))
        s.mode = .handshake
        s.startTLS = true
        s.handshakes = handshakes
        s.concurrency = concurrency
        return s
    }

    // MARK: Options

    @Test func messageOptionsAreRefusedNamingTheOption() throws {
        try BlastSettings.checkHandshakeOnly(given: [])
        try BlastSettings.checkHandshakeOnly(given: ["--rate", "--concurrency", "--duration", "--starttls"])
        for option in ["--size", "--recipients", "--from", "--to", "--messages-per-connection", "--no-pipelining", "--pipelining"] {
            do {
                try BlastSettings.checkHandshakeOnly(given: ["--rate", option])
                Issue.record("\(option) was accepted")
            } catch {
                #expect(error.message.hasPrefix("\(option): "), "\(error.message)")
                #expect(error.message.contains("--handshake-only"))
            }
        }
        #expect(throws: BlastOptionError("--messages: --handshake-only counts handshakes, not messages; use --handshakes N")) {
            try BlastSettings.checkHandshakeOnly(given: ["--messages"])
        }
    }

    @Test func validateChecksTheMode() throws {
        let base = try Self.settings()
        try base.validate()
        #expect(base.limit == 3)
        var s = base
        s.startTLS = false
        #expect(throws: BlastOptionError("--handshake-only: needs --starttls (the handshake is STARTTLS's)")) { try s.validate() }
        s = base
        s.handshakes = 0
        #expect(throws: BlastOptionError("--handshakes: must be at least 1")) { try s.validate() }
        s = base
        s.messages = 10
        #expect(throws: BlastOptionError.self) { try s.validate() }
        // A mail run is bounded by messages; a handshake count there is a mistake.
        s = base
        s.mode = .mail
        #expect(throws: BlastOptionError("--handshakes: only with --handshake-only")) { try s.validate() }
        s.handshakes = nil
        s.messages = 7
        try s.validate()
        #expect(s.limit == 7)
    }

    // MARK: Budget

    @Test func everyHandshakeClaimedEndsCompletedOrFailedAndTheCountBoundsTheRun() throws {
        let loop = try EventLoop()
        defer { loop.close() }
        let runner = BlastRunner(loop: loop, settings: try Self.settings(handshakes: 3), progressToTerminal: false)
        let a = BlastSlot(runner: runner, index: 0)
        let b = BlastSlot(runner: runner, index: 1)
        // One handshake per connection, whatever --messages-per-connection would say.
        #expect(runner.reserve(for: a) && a.reservation == 1)
        #expect(runner.reserve(for: b) && b.reservation == 1)
        runner.handshakeCompleted(a, now: 1)
        runner.charge(b)  // b's connection failed before its handshake completed
        #expect(runner.stats.handshakesCompleted == 1 && runner.stats.handshakesFailed == 1)
        #expect(runner.stats.messagesFailed == 0)  // no message was lost: none was ever sent
        #expect(runner.reserve(for: a))
        #expect(!runner.reserve(for: b))  // the third handshake is a's; no fourth
        // A second count for the same connection (a drop after its EHLO reply) is not made.
        runner.handshakeCompleted(a, now: 2)
        runner.handshakeCompleted(a, now: 3)
        runner.charge(a)
        #expect(runner.stats.handshakesCompleted == 2 && runner.stats.handshakesFailed == 1)
        #expect(runner.stats.handshakesAttempted == 3)
        #expect(runner.claimed == 3 && runner.reserved == 0)
        #expect(!runner.reserve(for: a))
    }

    @Test func aGracefulStopLetsHandshakesInFlightCount() throws {
        let loop = try EventLoop()
        defer { loop.close() }
        let runner = BlastRunner(loop: loop, settings: try Self.settings(handshakes: nil), progressToTerminal: false)
        let a = BlastSlot(runner: runner, index: 0)
        #expect(runner.reserve(for: a))
        runner.stop(hard: false)  // --duration ran out
        runner.handshakeCompleted(a, now: 5)
        #expect(runner.stats.handshakesCompleted == 1)
        #expect(!runner.reserve(for: a))  // but no new one starts
    }

    @Test func mailModeStillChargesMessages() throws {
        var s = try Self.settings(handshakes: nil)
        s.mode = .mail
        s.startTLS = false
        s.messages = 10
        s.messagesPerConnection = 4
        let loop = try EventLoop()
        defer { loop.close() }
        let runner = BlastRunner(loop: loop, settings: s, progressToTerminal: false)
        let a = BlastSlot(runner: runner, index: 0)
        #expect(runner.reserve(for: a) && a.reservation == 4)
        runner.charge(a)
        #expect(runner.stats.messagesFailed == 1 && runner.stats.handshakesFailed == 0)
        #expect(runner.reserved == 0 && runner.claimed == 1)
    }

    // MARK: Where a refused STARTTLS is counted

    @Test func aRefusedStartTLSIsTheReplyToStartTLS() {
        var c = ClientSession(hostname: "blast.test", tls: .required)
        _ = c.receive(Array("220 mx.test ESMTP\r\n".utf8))
        #expect(!c.awaitingStartTLSReply)
        _ = c.receive(Array("250-mx.test\r\n250 STARTTLS\r\n".utf8))
        #expect(c.awaitingStartTLSReply)
        #expect(c.phase == .hello)  // the phase alone cannot tell EHLO's reply from STARTTLS's
        let actions = c.receive(Array("454 4.7.0 TLS not available\r\n".utf8))
        var failure: Reply?
        for case .sessionFailed(let r, _) in actions { failure = r }
        #expect(failure?.code == 454)
        #expect(!c.awaitingStartTLSReply)
    }

    // MARK: Report

    @Test func theReportShowsTheModeAndCountsHandshakes() throws {
        var st = BlastStats()
        st.handshakesCompleted = 40
        st.handshakesFailed = 2
        st.connectionsOpened = 42
        st.sessionFailures = 2
        for us in 1...40 { st.record(.tls, microseconds: UInt64(us)); st.record(.handshake, microseconds: UInt64(us * 10)) }
        st.count(.starttls, code: 220)
        st.count(.starttls, code: 454)
        st.noteError("454 4.7.0 TLS not available: the next hop refused STARTTLS (454)")
        let r = BlastReport(stats: st, settings: try Self.settings(handshakes: 42), elapsedSeconds: 2)
        #expect(r.handshakes == BlastReport.Handshakes(attempted: 42, completed: 40, failed: 2, perSecond: 20))
        #expect(r.messages.attempted == 0 && r.rates.messagesPerSecond == 0)

        let object = try JSONSerialization.jsonObject(with: Data(r.json().utf8)) as! [String: Any]
        let settings = object["settings"] as! [String: Any]
        #expect(settings["mode"] as? String == "handshake")
        #expect(settings["handshakes"] as? Int == 42)
        #expect(settings["messages"] is NSNull)
        #expect(settings["starttls"] as? Bool == true)
        let h = object["handshakes"] as! [String: Any]
        #expect(h["completed"] as? Int == 40 && h["failed"] as? Int == 2 && h["attempted"] as? Int == 42)
        #expect(h["per_s"] as? Double == 20)
        let replies = object["replies"] as! [String: [String: Int]]
        #expect(replies["starttls"] == ["2xx": 1, "3xx": 0, "4xx": 1, "5xx": 0])
        let latency = object["latency_ms"] as! [String: [String: Any]]
        #expect(latency["handshake"]!["count"] as? Int == 40)
        #expect(latency["handshake"]!["max"] as? Double == 0.4)

        let table = r.table()
        let lines = table.split(separator: "\n").map(String.init)
        #expect(table.contains("handshakes only"))
        #expect(lines.contains { $0.hasPrefix("handshakes") && $0.hasSuffix("40          20.0") })
        #expect(table.contains("42 attempted, 40 completed, 2 failed"))
        #expect(lines.contains { $0.hasPrefix("STARTTLS") && $0.hasSuffix("1         0         1         0") })
        #expect(lines.contains { $0.hasPrefix("handshake ") && $0.contains("40") })
        #expect(!lines.contains { $0.hasPrefix("MAIL") || $0.hasPrefix("DATA") || $0.hasPrefix("messages") })
        #expect(table.contains("TLS not available"))
    }

    @Test func aMailReportHasNoHandshakeCount() throws {
        var s = try Self.settings(handshakes: nil)
        s.mode = .mail
        s.messages = 5
        let r = BlastReport(stats: BlastStats(), settings: s, elapsedSeconds: 1)
        #expect(r.handshakes == nil)
        let object = try JSONSerialization.jsonObject(with: Data(r.json().utf8)) as! [String: Any]
        #expect(object["handshakes"] is NSNull)
        #expect((object["settings"] as! [String: Any])["mode"] as? String == "mail")
        #expect(!r.table().contains("handshake "))
    }

    @Test func progressCountsHandshakes() {
        var p = ProgressLine()
        var st = BlastStats()
        st.handshakesCompleted = 90
        st.handshakesFailed = 10
        let line = p.line(elapsed: 1, stats: st, openConnections: 8, target: 1000, mode: .handshake)
        #expect(line.contains("100/1,000 handshakes  90/s  10 failed  8 connections"), "\(line)")
    }
}
