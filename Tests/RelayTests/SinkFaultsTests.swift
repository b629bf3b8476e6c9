import Randomness
import Testing
@testable import Relay
import SMTPProtocol

@Suite struct MagicRecipientTests {
    @Test func recognised() {
        #expect(MagicRecipient(address: "rcpt-451@any.test") == .rcpt(451))
        #expect(MagicRecipient(address: "RCPT-550@Any.Test") == .rcpt(550))
        #expect(MagicRecipient(address: "rcpt-251@x.test") == .rcpt(251))
        #expect(MagicRecipient(address: "data-554@x.test") == .data(554))
        #expect(MagicRecipient(address: "delay-1500@x.test") == .delay(1500))
        #expect(MagicRecipient(address: "drop@x.test") == .drop)
    }

    @Test func ordinaryAddressesAreNotMagic() {
        for a in ["bob@x.test", "rcpt-@x.test", "rcpt-45a@x.test", "data-+12@x.test", "delay-@x.test",
                  "dropped@x.test", "x-drop@x.test", "rcpt-two@x.test", "my-rcpt-451@x.test"] {
            #expect(MagicRecipient(address: a) == nil, "\(a)")
            #expect(MagicRecipient.refusal(address: a) == nil, "\(a)")
        }
    }

    /// A magic-looking recipient that asks for what cannot be done is refused at RCPT with 553 5.1.3
    /// and the range, rather than taken silently as an ordinary recipient (issue 13).
    @Test func outOfRangeIsRefusedNamingTheRange() {
        let cases: [(String, String)] = [
            ("rcpt-999@x.test", "250, 251 or 400 to 599"), ("rcpt-200@x.test", "250, 251 or 400 to 599"),
            ("rcpt-45@x.test", "250, 251 or 400 to 599"), ("rcpt-354@x.test", "250, 251 or 400 to 599"),
            ("rcpt-600@x.test", "250, 251 or 400 to 599"), ("rcpt-4510@x.test", "250, 251 or 400 to 599"),
            ("data-99@x.test", "250 or 400 to 599"), ("data-220@x.test", "250 or 400 to 599"),
            ("delay-600001@x.test", "0 to 600000 milliseconds"), ("delay-99999999@x.test", "0 to 600000 milliseconds"),
            ("DELAY-99999999999999999999@x.test", "0 to 600000 milliseconds"),
        ]
        for (address, range) in cases {
            #expect(MagicRecipient(address: address) == nil, "\(address)")
            let reply = MagicRecipient.refusal(address: address)
            #expect(reply?.code == 553, "\(address)")
            #expect(reply?.enhanced == "5.1.3", "\(address)")
            #expect(reply?.lines.first?.contains(range) == true, "\(address): \(String(describing: reply))")
        }
        #expect(MagicRecipient(address: "rcpt-250@x.test") == .rcpt(250))
        #expect(MagicRecipient(address: "data-250@x.test") == .data(250))
        #expect(MagicRecipient(address: "delay-600000@x.test") == .delay(600_000))
        #expect(MagicRecipient(address: "delay-0@x.test") == .delay(0))
    }
}

@Suite struct FaultReplyTests {
    @Test func enhancedCodesFitTheStage() {
        #expect(faultReply(550, at: .rcpt).enhanced == "5.1.1")
        #expect(faultReply(450, at: .rcpt).enhanced == "4.2.1")
        #expect(faultReply(452, at: .rcpt).enhanced == "4.5.3")
        #expect(faultReply(451, at: .mail).enhanced == "4.3.0")
        #expect(faultReply(553, at: .mail).enhanced == "5.1.7")
        #expect(faultReply(554, at: .dot).enhanced == "5.6.0")
        #expect(faultReply(552, at: .dot).enhanced == "5.3.4")
        #expect(faultReply(421, at: .data).enhanced == "4.3.2")
        #expect(faultReply(250, at: .rcpt).enhanced == "2.1.5")
        #expect(faultReply(554, at: .data).enhanced == "5.3.0")
        #expect(faultReply(550, at: .mail).enhanced == "5.1.0")
        // RFC 2034 §3: no enhanced code on the greeting.
        #expect(faultReply(554, at: .greeting).enhanced == nil)
        #expect(faultReply(451, at: .rcpt).code == 451)
    }
}

@Suite struct DelaySpecTests {
    @Test func fixedAndRange() throws {
        #expect(try DelaySpec.parse("250ms") == DelaySpec(low: 250, high: 250))
        #expect(try DelaySpec.parse("2s") == DelaySpec(low: 2000, high: 2000))
        #expect(try DelaySpec.parse("100ms..1.5s") == DelaySpec(low: 100, high: 1500))
        #expect(throws: ConfigError.self) { try DelaySpec.parse("2s..1s") }
        #expect(throws: ConfigError.self) { try DelaySpec.parse("1s..2s..3s") }
        #expect(throws: ConfigError.self) { try DelaySpec.parse("fast") }
        #expect(throws: ConfigError.self) { try DelaySpec.parse("2h") }
    }

    @Test func rangeStaysInBoundsAndCoversIt() {
        var rng = SplitMix64(seed: 7)
        let spec = DelaySpec(low: 10, high: 12)
        let picks = (0..<300).map { _ in spec.pick(&rng) }
        #expect(Set(picks) == [10, 11, 12])
    }
}

@Suite struct FaultRuleTests {
    @Test func parsesFlag() throws {
        let r = try FaultRule.parse(flag: "stage=rcpt,fraction=0.25,reply=451,recipient=*@Slow.test,delay=10ms..20ms,per=transaction")
        #expect(r.stage == .rcpt)
        #expect(r.fraction == 0.25)
        #expect(r.reply == 451)
        #expect(r.recipient == "*@slow.test")
        #expect(r.delay == DelaySpec(low: 10, high: 20))
        #expect(r.per == .transaction)
        #expect(try FaultRule.parse(flag: "stage=mail,delay=2").delay == DelaySpec(low: 2000, high: 2000))
    }

    @Test func rejectsNonsenseNamingTheKey() {
        let cases: [(String, String)] = [
            ("stage=rcpt,fraction=2,reply=451", "--fault fraction"),
            ("stage=helo,reply=451", "--fault stage"),
            ("stage=rcpt", "--fault stage"),                     // nothing to do
            ("stage=mail,reply=250", "--fault reply"),           // 2xx only at RCPT
            ("stage=rcpt,reply=200", "--fault reply"),           // and there 250 or 251, as rcpt-NNN
            ("stage=rcpt,reply=354", "--fault reply"),
            ("stage=mail,drop=true", "--fault drop"),            // drop only in DATA
            ("stage=all,reply=451", "--fault reply"),
            ("stage=mail,reply=451,recipient=*@x", "--fault recipient"),
            ("stage=greeting,reply=451,per=transaction", "--fault per"),
            ("stage=rcpt,reply=451,colour=red", "--fault colour"),
            ("stage=rcpt,reply=451,listen=localhost:25", "--fault listen"),
            ("stage=rcpt,reply=451,delay=soon", "--fault delay"),
            ("stage", "--fault"),
        ]
        for (text, key) in cases {
            do {
                _ = try FaultRule.parse(flag: text)
                Issue.record("accepted \(text)")
            } catch let e as ConfigError {
                #expect(e.key == key, "\(text): \(e)")
            } catch {
                Issue.record("\(error)")
            }
        }
    }

    @Test func glob() {
        #expect(globMatch("*@slow.test", "a@slow.test"))
        #expect(!globMatch("*@slow.test", "a@slow.test.org"))
        #expect(globMatch("user?@*", "user1@x"))
        #expect(!globMatch("user?@*", "user@x"))
        #expect(globMatch("*", ""))
        #expect(globMatch("a*b*c", "axxbyyc"))
        #expect(!globMatch("a*b*c", "axxbyy"))
    }
}

/// Collects what the hooks record.
final class FaultLog {
    var entries: [String] = []
    func record(_ stage: SessionStage?, _ kind: FaultKind) { entries.append("\(stage?.rawValue ?? "all")/\(kind.rawValue)") }
}

@Suite struct SinkFaultHooksTests {
    func hooks(_ rules: [String], magic: Bool = true, seed: UInt64 = 1, log: FaultLog = FaultLog()) throws -> SinkFaultHooks {
        SinkFaultHooks(rules: try rules.map { try FaultRule.parse(flag: $0) }, magic: magic, seed: seed,
                       record: { log.record($0, $1) })
    }

    @Test func magicRecipients() throws {
        let log = FaultLog()
        var h = try hooks([], log: log)
        #expect(h.verdict(at: .rcpt, sender: nil, recipients: ["rcpt-451@x.test"]).reply?.code == 451)
        #expect(h.verdict(at: .rcpt, sender: nil, recipients: ["delay-250@x.test"]) == StageVerdict(delayMilliseconds: 250))
        #expect(h.verdict(at: .rcpt, sender: nil, recipients: ["data-554@x.test"]) == .none)
        #expect(h.verdict(at: .dot, sender: nil, recipients: ["a@x.test", "data-554@x.test"]).reply == faultReply(554, at: .dot))
        #expect(h.verdict(at: .data, sender: nil, recipients: ["drop@x.test"]).dropInData)
        #expect(h.verdict(at: .dot, sender: nil, recipients: ["bob@x.test"]) == .none)
        #expect(log.entries == ["rcpt/reply", "rcpt/delay", "dot/reply", "data/drop"])
    }

    @Test func magicOff() throws {
        var h = try hooks([], magic: false)
        #expect(h.verdict(at: .rcpt, sender: nil, recipients: ["rcpt-451@x.test"]) == .none)
        #expect(h.verdict(at: .rcpt, sender: nil, recipients: ["rcpt-999@x.test"]) == .none)
    }

    @Test func outOfRangeMagicIsRefusedNotCountedAsAFault() throws {
        let log = FaultLog()
        var h = try hooks(["stage=rcpt,delay=10ms"], log: log)
        let v = h.verdict(at: .rcpt, sender: nil, recipients: ["delay-99999999@x.test"])
        #expect(v.reply?.code == 553 && v.reply?.enhanced == "5.1.3")
        #expect(v.delayMilliseconds == 0)
        #expect(log.entries == [])
    }

    @Test func recipientPattern() throws {
        var h = try hooks(["stage=rcpt,reply=450,recipient=*@slow.test"])
        #expect(h.verdict(at: .rcpt, sender: nil, recipients: ["a@fast.test"]) == .none)
        #expect(h.verdict(at: .rcpt, sender: nil, recipients: ["a@SLOW.test"]).reply?.code == 450)
    }

    @Test func fractionPerCommandIsRoughlyHonouredAndRepeatable() throws {
        func run(seed: UInt64) throws -> [Bool] {
            var h = try hooks(["stage=rcpt,fraction=0.3,reply=451"], seed: seed)
            return (0..<2000).map { _ in h.verdict(at: .rcpt, sender: nil, recipients: ["a@x.test"]).reply != nil }
        }
        let a = try run(seed: 42)
        let hits = a.filter { $0 }.count
        #expect(hits > 500 && hits < 700, "\(hits) of 2000 at 0.3")
        #expect(try run(seed: 42) == a)
        #expect(try run(seed: 43) != a)
    }

    @Test func perTransactionCoinCoversTheWholeTransaction() throws {
        var h = try hooks(["stage=rcpt,fraction=0.5,reply=451,per=transaction"], seed: 3)
        var mixed = 0, faulted = 0
        for _ in 0..<200 {
            h.transactionStarted()
            let answers = (0..<5).map { _ in h.verdict(at: .rcpt, sender: nil, recipients: ["a@x.test"]).reply != nil }
            if Set(answers).count > 1 { mixed += 1 }
            if answers[0] { faulted += 1 }
        }
        #expect(mixed == 0)
        #expect(faulted > 60 && faulted < 140)
    }

    @Test func perSessionCoin() throws {
        var faultedSessions = 0
        for seed in UInt64(1)...200 {
            var h = try hooks(["stage=mail,fraction=0.25,reply=421,per=session"], seed: seed &* 0x9E37_79B9_7F4A_7C15)
            let first = h.verdict(at: .mail, sender: nil, recipients: []).reply != nil
            for _ in 0..<3 { #expect((h.verdict(at: .mail, sender: nil, recipients: []).reply != nil) == first) }
            if first { faultedSessions += 1 }
        }
        #expect(faultedSessions > 25 && faultedSessions < 80)
    }

    @Test func tarpitAndBannerDelay() throws {
        let log = FaultLog()
        var h = SinkFaultHooks(rules: [try SinkConfig.tarpit("30ms"), try SinkConfig.bannerDelay("2s")], magic: true,
                               seed: 1, record: { log.record($0, $1) })
        #expect(h.replyDelay() == 30)
        #expect(h.verdict(at: .greeting, sender: nil, recipients: []) == StageVerdict(delayMilliseconds: 2000))
        #expect(h.verdict(at: .mail, sender: nil, recipients: []) == .none)
        #expect(log.entries == ["all/delay", "greeting/delay"])
    }
}

@Suite struct SinkSummaryTests {
    @Test func busyTimeCountsOnlyWhileASessionIsOpen() {
        var b = BusyTime()
        #expect(b.busy(at: 100) == 0)
        b.opened(at: 1_000)
        b.opened(at: 1_500)   // overlapping sessions count once
        b.closed(at: 2_000)
        b.closed(at: 3_000)   // busy 1000..3000
        #expect(b.busy(at: 10_000) == 2_000)
        b.opened(at: 20_000)
        #expect(b.busy(at: 20_500) == 2_500)  // a session still open counts up to now
        b.closed(at: 21_000)
        b.closed(at: 22_000)  // an extra close changes nothing
        #expect(b.busy(at: 99_000) == 3_000)
        #expect(b.open == 0)
    }

    @Test func faultsAndDelaysAreCountedApart() {
        let m = SinkMetrics()
        m.fault(.rcpt, .reply)
        m.fault(.data, .drop)
        m.fault(.rcpt, .delay)
        m.fault(nil, .delay)
        m.fault(nil, .delay)
        #expect(m.tally.faults == 2)
        #expect(m.tally.delays == 3)
    }

    @Test func rateIsOverTheBusyTime() {
        var t = SinkTally()
        t.sessions = 5
        t.messages = 100
        t.faults = 2
        t.delays = 7
        // Up an hour, busy 2 s: 50 messages/s, not 0.03.
        let line = SinkServer.summary(t, up: 3_600_000_000_000, busy: 2_000_000_000, seed: 9)
        #expect(line.contains("100 messages"))
        #expect(line.contains("2 faults injected, 7 replies delayed"))
        #expect(line.contains("up 3600.0 s, busy 2.0 s with sessions open, 50.0 messages/s while busy"))
        #expect(line.hasSuffix("seed 9"))
        #expect(SinkServer.formatted(0.0004) == "0.000" && SinkServer.formatted(0.25) == "0.250")
        #expect(SinkServer.formatted(0.9996) == "1.0" && SinkServer.formatted(12.34) == "12.3")
    }
}

@Suite struct SinkConfigTests {
    /// etc/sink.toml documents every key with its default: parsed, it is the default configuration.
    @Test func shippedFileIsTheDefaults() throws {
        let path = String(#filePath.dropLast("Tests/RelayTests/SinkFaultsTests.swift".count)) + "etc/sink.toml"
        #expect(try SinkConfig.load(path: path) == SinkConfig())
        let text = try TernConfig.readFile(path)
        for key in ["listen", "hostname", "mode", "keep_path", "keep_format", "metrics_listen", "seed", "magic_recipients",
                    "max_message_size", "max_recipients", "max_line_length", "max_connections", "command_timeout",
                    "banner_delay", "tarpit", "[sink.advertise]", "[[sink.fault]]", "tls_certificate", "tls_key",
                    "starttls"]
            + SinkConfig.extensionNames.map(\.0) {
            #expect(text.contains(key), "etc/sink.toml does not mention \(key)")
        }
    }

    @Test func parsesTable() throws {
        let c = try SinkConfig.parse("""
            [sink]
            listen = ["127.0.0.1:2526", "[::1]:2526"]
            hostname = "sink.test"
            mode = "keep"
            keep_path = "/tmp/x"
            keep_format = "maildir"
            metrics_listen = "127.0.0.1:8026"
            seed = 9
            magic_recipients = false
            tarpit = "10ms"
            [sink.advertise]
            pipelining = false
            8bitmime = false
            [[sink.fault]]
            stage = "rcpt"
            fraction = 0.5
            reply = 451
            listen = "127.0.0.1:2526"
            [[sink.fault]]
            stage = "data"
            drop = true
            """)
        #expect(c.listen == ["127.0.0.1:2526", "[::1]:2526"])
        #expect(c.mode == .keep && c.keepPath == "/tmp/x" && c.keepFormat == .maildir)
        #expect(c.metricsListen == "127.0.0.1:8026")
        #expect(c.seed == 9 && !c.magicRecipients)
        #expect(c.advertise == [.size, .enhancedStatusCodes, .smtputf8, .mtPriority, .chunking, .dsn, .requireTLS,
                                .binaryMIME])
        #expect(c.faults.count == 3)
        #expect(c.faults[1].applies(toListener: "127.0.0.1:2526") && !c.faults[1].applies(toListener: "[::1]:2526"))
        #expect(c.faults[2].dropInData)
    }

    @Test func errorsNameTheKey() {
        let cases: [(String, String)] = [
            ("[sink]\nlisten = [\"nowhere\"]", "sink.listen"),
            ("[sink]\nmode = \"hoard\"", "sink.mode"),
            ("[sink]\nmode = \"keep\"", "sink.keep_path"),
            ("[sink]\nlisen = []", "sink.lisen"),
            ("[server]\nlisten = []", "server"),
            ("[sink.advertise]\nxclient = true", "sink.advertise.xclient"),
            ("[[sink.fault]]\nstage = \"rcpt\"\nreply = 700", "sink.fault[1].reply"),
            ("[[sink.fault]]\nstage = \"rcpt\"\nreply = 451\nlisten = \"127.0.0.9:25\"", "sink.fault"),
            ("[sink]\ntarpit = \"slow\"", "sink.tarpit"),
        ]
        for (text, key) in cases {
            do {
                _ = try SinkConfig.parse(text)
                Issue.record("accepted \(text)")
            } catch let e as ConfigError {
                #expect(e.key == key, "\(text): \(e)")
            } catch {
                Issue.record("\(error)")
            }
        }
    }
}
