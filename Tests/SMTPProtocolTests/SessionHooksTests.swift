import Testing
@testable import SMTPProtocol

/// A hook that answers from a table: stage → verdict; records what it was asked.
struct ScriptedHooks: SessionHooks {
    var verdicts: [SessionStage: StageVerdict] = [:]
    var everyReply = 0
    var asked: [(SessionStage, [String])] = []
    var transactions = 0

    mutating func verdict(at stage: SessionStage, sender: MailPath?, recipients: [String]) -> StageVerdict {
        asked.append((stage, recipients))
        return verdicts[stage] ?? .none
    }
    mutating func transactionStarted() { transactions += 1 }
    mutating func replyDelay() -> Int { everyReply }
}

/// What a client would see, with delays written inline as "<delay N>".
func transcript(_ actions: [ServerAction]) -> String {
    actions.map { action -> String in
        switch action {
        case .reply(let b): return String(decoding: b, as: UTF8.self)
        case .delay(let ms): return "<delay \(ms)>"
        case .drop: return "<drop>"
        case .close: return "<close>"
        case .commitMessage: return "<commit>"
        case .abortMessage: return "<abort>"
        case .beginMessage, .messageData, .refused: return ""
        case .startTLS: return "<starttls>"
        case .authenticate(let user, _): return "<auth \(user)>"
        }
    }.joined()
}

func hooked(_ hooks: ScriptedHooks, config: ServerConfiguration = ServerConfiguration(hostname: "sink.test"))
    -> (ServerSession, String) {
    var s = ServerSession(config: config, client: PeerInfo(ip: "127.0.0.1", trusted: true))
    s.hooks = hooks
    let greeting = transcript(s.greeting())
    return (s, greeting)
}

@Suite struct SessionHooksTests {
    @Test func greetingDelayComesBeforeTheBanner() {
        let (_, t) = hooked(ScriptedHooks(verdicts: [.greeting: StageVerdict(delayMilliseconds: 1500)]))
        #expect(t == "<delay 1500>220 sink.test ESMTP Tern\r\n")
    }

    @Test func refusedGreetingThen503UntilQuit() {
        var (s, t) = hooked(ScriptedHooks(verdicts: [.greeting: StageVerdict(reply: Reply(554, nil, "no"))]))
        #expect(t == "554 no\r\n")
        #expect(transcript(s.receive(Array("EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nQUIT\r\n".utf8)))
                == "503 5.5.1 Error: no SMTP service here; send QUIT\r\n503 5.5.1 Error: no SMTP service here; send QUIT\r\n221 2.0.0 Bye\r\n<close>")
    }

    @Test func greeting421Closes() {
        let (s, t) = hooked(ScriptedHooks(verdicts: [.greeting: StageVerdict(reply: Reply(421, nil, "busy"))]))
        #expect(t == "421 busy\r\n<close>")
        #expect(s.phase == .closed)
    }

    @Test func mailRefusalKeepsSessionAndDoesNotCountAsError() {
        var config = ServerConfiguration(hostname: "sink.test")
        config.maxErrors = 1
        var (s, _) = hooked(ScriptedHooks(verdicts: [.mail: StageVerdict(reply: Reply(451, "4.3.0", "later"))]), config: config)
        let t = transcript(s.receive(Array("HELO c.test\r\nMAIL FROM:<a@b.test>\r\nMAIL FROM:<a@b.test>\r\n".utf8)))
        #expect(t == "250 sink.test\r\n451 4.3.0 later\r\n451 4.3.0 later\r\n")
        #expect(s.phase == .ready)
    }

    @Test func rcptDelayHoldsOnlyThatReply() {
        var (s, _) = hooked(ScriptedHooks(verdicts: [.rcpt: StageVerdict(delayMilliseconds: 40)]))
        let t = transcript(s.receive(Array("HELO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\nNOOP\r\n".utf8)))
        #expect(t == "250 sink.test\r\n250 2.1.0 Ok\r\n<delay 40>250 2.1.5 Ok\r\n250 2.0.0 Ok\r\n")
        let h = s.hooks as! ScriptedHooks
        #expect(h.transactions == 1)
        #expect(h.asked.last! == (.rcpt, ["x@y.test"]))
    }

    @Test func rcptRefusalIsNotARecipient() {
        var (s, _) = hooked(ScriptedHooks(verdicts: [.rcpt: StageVerdict(reply: Reply(550, "5.1.1", "no such user"))]))
        let t = transcript(s.receive(Array("HELO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\nDATA\r\n".utf8)))
        #expect(t == "250 sink.test\r\n250 2.1.0 Ok\r\n550 5.1.1 no such user\r\n554 5.5.1 Error: no valid recipients\r\n")
    }

    @Test func rcptPositiveOverrideAccepts() {
        var (s, _) = hooked(ScriptedHooks(verdicts: [.rcpt: StageVerdict(reply: Reply(251, "2.1.5", "will forward"))]))
        let t = transcript(s.receive(Array("HELO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\nDATA\r\n".utf8)))
        #expect(t.hasSuffix("251 2.1.5 will forward\r\n354 End data with <CR><LF>.<CR><LF>\r\n"))
    }

    @Test func dataRefusal() {
        var (s, _) = hooked(ScriptedHooks(verdicts: [.data: StageVerdict(reply: Reply(451, "4.3.0", "not now"))]))
        let t = transcript(s.receive(Array("HELO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\nDATA\r\n".utf8)))
        #expect(t.hasSuffix("250 2.1.5 Ok\r\n451 4.3.0 not now\r\n"))
        #expect(s.phase == .mail)
    }

    @Test func dropMidData() {
        var (s, _) = hooked(ScriptedHooks(verdicts: [.data: StageVerdict(dropInData: true)]))
        var t = transcript(s.receive(Array("HELO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\nDATA\r\n".utf8)))
        #expect(t.hasSuffix("354 End data with <CR><LF>.<CR><LF>\r\n"))
        t = transcript(s.receive(Array("Subject: x\r\n".utf8)))
        #expect(t == "<abort><drop>")
        #expect(s.phase == .closed)
        #expect(s.receive(Array(".\r\n".utf8)).isEmpty)
    }

    @Test func dotRefusalAbortsTheMessageAndResets() {
        var (s, _) = hooked(ScriptedHooks(verdicts: [.dot: StageVerdict(delayMilliseconds: 5, reply: Reply(552, "5.3.4", "too big"))]))
        let t = transcript(s.receive(Array(
            "HELO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\nDATA\r\nhi\r\n.\r\nMAIL FROM:<a@b.test>\r\n".utf8)))
        #expect(t.hasSuffix("354 End data with <CR><LF>.<CR><LF>\r\n<delay 5><abort>552 5.3.4 too big\r\n250 2.1.0 Ok\r\n"))
    }

    @Test func dotDelayThenCommit() {
        var (s, _) = hooked(ScriptedHooks(verdicts: [.dot: StageVerdict(delayMilliseconds: 7)]))
        let t = transcript(s.receive(Array("HELO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\nDATA\r\nhi\r\n.\r\n".utf8)))
        #expect(t.hasSuffix("<delay 7><commit>"))
    }

    @Test func tarpitHoldsEveryReply() {
        var (s, t) = hooked(ScriptedHooks(everyReply: 3))
        #expect(t == "<delay 3>220 sink.test ESMTP Tern\r\n")
        #expect(transcript(s.receive(Array("NOOP\r\nNOOP\r\n".utf8))) == "<delay 3>250 2.0.0 Ok\r\n<delay 3>250 2.0.0 Ok\r\n")
    }

    @Test func extensionsSwitchedOff() {
        var config = ServerConfiguration(hostname: "sink.test")
        config.extensions = [.pipelining, .eightBitMIME]
        var s = ServerSession(config: config, client: PeerInfo(ip: "127.0.0.1", trusted: true))
        _ = s.greeting()
        let t = transcript(s.receive(Array("EHLO c.test\r\nMAIL FROM:<a@b.test> SIZE=10\r\nMAIL FROM:<a@b.test> BODY=8BITMIME\r\n".utf8)))
        #expect(t == "250-sink.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 HELP\r\n"
                + "555 Error: unsupported parameter SIZE\r\n250 Ok\r\n")
    }

    @Test func noHooksNoChange() {
        var s = ServerSession(config: ServerConfiguration(hostname: "sink.test"), client: PeerInfo(ip: "127.0.0.1", trusted: true))
        let t = transcript(s.greeting() + s.receive(Array("EHLO c.test\r\n".utf8)))
        #expect(t == "220 sink.test ESMTP Tern\r\n250-sink.test\r\n250-PIPELINING\r\n250-SIZE 52428800\r\n250-8BITMIME\r\n"
                + "250-ENHANCEDSTATUSCODES\r\n250-SMTPUTF8\r\n250-MT-PRIORITY\r\n250-DSN\r\n250-CHUNKING\r\n250-BINARYMIME\r\n250 HELP\r\n")
    }
}
