import Testing
@testable import SMTPProtocol

// A scripted next hop: the server's bytes come in turns (a server only answers what it was sent), and
// the driver plays the caller: on .ready and after each transaction it starts the next queued
// transaction, then quits. Every conversation is played with each turn whole, byte by byte, and split
// in two at every point; all must give the same bytes sent, events and phases.

struct ClientRun: Equatable {
    /// What the client sent after each server turn (index 0: after the first turn).
    var sent: [String] = []
    /// Every action but .send, .sendMessage and .sendChunk, in order.
    var events: [ClientAction] = []
    /// The phase after each turn.
    var phases: [ClientSession.Phase] = []

    var outcomes: [TransactionOutcome] {
        events.compactMap { if case .transactionFinished(let o) = $0 { return o } else { return nil } }
    }
    var failure: (reply: Reply?, why: String)? {
        for e in events { if case .sessionFailed(let r, let why) = e { return (r, why) } }
        return nil
    }
    var closed: Bool { events.last == .close }
}

struct ClientDriver {
    var session = ClientSession(hostname: "relay.test")
    var queue: [(OutboundTransaction, [UInt8])]
    var quitWhenDone: Bool
    var run = ClientRun()

    mutating func apply(_ actions: [ClientAction]) {
        var pending = actions[...]
        while let a = pending.popFirst() {
            switch a {
            case .send, .sendMessage, .sendChunk:
                // Every path puts bytes on the wire; what counts is the bytes, in order.
                if run.sent.isEmpty { run.sent.append("") }
                for piece in a.wirePieces { run.sent[run.sent.count - 1] += String(decoding: piece, as: UTF8.self) }
            case .ready, .transactionFinished:
                run.events.append(a)
                if !queue.isEmpty {
                    let (t, m) = queue.removeFirst()
                    pending += session.send(t, message: m)
                } else if quitWhenDone {
                    pending += session.quit()
                }
            case .sessionFailed, .close, .startTLS:
                run.events.append(a)
            }
        }
    }

    mutating func turn(_ chunks: [[UInt8]]) {
        run.sent.append("")
        for c in chunks { apply(session.receive(c)) }
        run.phases.append(session.phase)
    }
}

/// Plays the conversation whole, byte by byte and split at every point of every turn; checks that all
/// agree and returns the whole run.
@discardableResult
func clientConverse(_ turns: [String], _ transactions: [(OutboundTransaction, String)] = [], quit: Bool = true,
                    configure: (inout ClientSession) -> Void = { _ in },
                    sourceLocation: SourceLocation = #_sourceLocation) -> ClientRun {
    let turnBytes = turns.map { Array($0.utf8) }
    func play(_ chunking: (Int, [UInt8]) -> [[UInt8]]) -> ClientRun {
        var d = ClientDriver(queue: transactions.map { ($0.0, Array($0.1.utf8)) }, quitWhenDone: quit)
        configure(&d.session)
        for (k, b) in turnBytes.enumerated() { d.turn(chunking(k, b)) }
        return d.run
    }
    let whole = play { _, b in [b] }
    let trickled = play { _, b in b.map { [$0] } }
    #expect(trickled == whole, "byte by byte", sourceLocation: sourceLocation)
    for k in turnBytes.indices where turnBytes[k].count > 1 {
        for cut in 1..<turnBytes[k].count {
            let split = play { i, b in i == k ? [Array(b[..<cut]), Array(b[cut...])] : [b] }
            #expect(split == whole, "turn \(k) split at \(cut)", sourceLocation: sourceLocation)
        }
    }
    return whole
}

let clientGreeting = "220 mx.test ESMTP ready\r\n"
let clientEHLOPipelining = "250-mx.test Hello relay.test\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-8BITMIME\r\n"
    + "250-ENHANCEDSTATUSCODES\r\n250 SMTPUTF8\r\n"
let clientEHLOPlain = "250-mx.test Hello relay.test\r\n250-SIZE 10240000\r\n250 8BITMIME\r\n"
let clientMessage = "Subject: hi\r\n\r\nHello\r\n.dot line\r\n"
let clientMessageWire = "Subject: hi\r\n\r\nHello\r\n..dot line\r\n.\r\n"
let clientThree = OutboundTransaction(sender: "alice@example.org",
                                      recipients: ["bob@example.net", "carol@example.net", "dave@example.net"],
                                      size: 33, bodyType: "8BITMIME")
let clientOne = OutboundTransaction(sender: "alice@example.org", recipients: ["bob@example.net"], size: 33)

@Suite struct ClientSessionTests {
    // MARK: Greeting and hello

    @Test func greeting220SendsEHLO() {
        let run = clientConverse([clientGreeting], quit: false)
        #expect(run.sent == ["EHLO relay.test\r\n"])
        #expect(run.events == [])
        #expect(run.phases == [.hello])
    }

    @Test func greeting421FailsWithoutQuit() {
        let run = clientConverse(["421 4.3.2 mx.test Service not available\r\n"])
        #expect(run.sent == [""])
        #expect(run.failure?.reply == Reply(421, "4.3.2", "mx.test Service not available"))
        #expect(run.closed)
        #expect(run.phases == [.closed])
    }

    @Test func greeting554FailsWithQuit() {
        let run = clientConverse(["554-mx.test No SMTP service here\r\n554 go away\r\n"])
        #expect(run.failure?.reply == Reply(554, nil, ["mx.test No SMTP service here", "go away"]))
        #expect(run.sent == ["QUIT\r\n"])  // RFC 5321 §3.1: the client should QUIT after a 554 greeting
        #expect(run.events.count == 2 && run.closed)
        // The QUIT goes out before .sessionFailed, for callers that stop reading actions there.
        var s = ClientSession(hostname: "relay.test")
        let actions = s.receive(Array("554 no\r\n".utf8))
        #expect(actions.first == .send(Array("QUIT\r\n".utf8)))
        #expect(actions.count == 3)
        #expect(run.phases == [.closed])
    }

    @Test func ehlo502FallsBackToHELOWithoutExtensions() {
        let run = clientConverse(
            [clientGreeting, "502 5.5.2 Error: command not recognized\r\n", "250 mx.test\r\n",
             "250 Ok\r\n", "250 Ok\r\n", "354 go ahead\r\n", "250 Ok queued\r\n"],
            [(OutboundTransaction(sender: "a@b.test", recipients: ["c@d.test"], size: 10, bodyType: "8BITMIME"),
              "x\r\n")])
        #expect(run.sent == ["EHLO relay.test\r\n", "HELO relay.test\r\n", "MAIL FROM:<a@b.test>\r\n",
                             "RCPT TO:<c@d.test>\r\n", "DATA\r\n", "x\r\n.\r\n", "QUIT\r\n"])
        #expect(run.events.first == .ready(NextHopCapabilities()))
        #expect(run.outcomes.first?.dataReply == Reply(250, nil, "Ok queued"))
    }

    @Test func ehloAndHeloRefusedFailsTheSession() {
        let run = clientConverse([clientGreeting, "550 no\r\n", "550 5.7.1 really no\r\n"])
        #expect(run.sent == ["EHLO relay.test\r\n", "HELO relay.test\r\n", "QUIT\r\n"])
        #expect(run.failure?.reply == Reply(550, "5.7.1", "really no"))
        #expect(run.closed)
    }

    @Test func capabilitiesParsedFromEHLO() {
        let ehlo = "250-mx.test greets relay.test\r\n250-pipelining\r\n250-SIZE 12345\r\n250-8bitmime\r\n"
            + "250-SMTPUTF8\r\n250-EnhancedStatusCodes\r\n250-STARTTLS\r\n250-AUTH PLAIN login\r\n"
            + "250-AUTH=CRAM-MD5 PLAIN\r\n250-DSN\r\n250 CHUNKING\r\n"
        let run = clientConverse([clientGreeting, ehlo], quit: false)
        let expected = NextHopCapabilities(esmtp: true, pipelining: true, eightBitMIME: true, smtputf8: true,
                                           enhancedStatusCodes: true, startTLS: true, size: 12345,
                                           auth: ["PLAIN", "LOGIN", "CRAM-MD5"], chunking: true, dsn: true)
        #expect(run.events == [.ready(expected)])
        #expect(run.phases == [.hello, .ready])
    }

    @Test func sizeKeywordVariants() {
        func caps(_ lines: [String]) -> NextHopCapabilities {
            NextHopCapabilities(ehloReply: Reply(250, nil, ["mx.test"] + lines))
        }
        #expect(caps(["SIZE"]).size == 0)              // advertised, no limit
        #expect(caps(["SIZE 0"]).size == 0)
        #expect(caps(["size 2048"]).size == 2048)
        #expect(caps(["PIPELINING"]).size == nil)      // not advertised
        #expect(caps(["SIZE 99999999999999999999999"]).size == 0)
        // The first line is the server's name, never a keyword.
        #expect(caps([]) == NextHopCapabilities(esmtp: true))
        #expect(NextHopCapabilities(ehloReply: Reply(250, nil, ["PIPELINING"])).pipelining == false)
    }

    // MARK: Transactions

    @Test func pipelinedThreeRecipientsOneRefused() {
        let refusal = "550 5.1.1 <carol@example.net>: Recipient address rejected\r\n"
        let run = clientConverse(
            [clientGreeting, clientEHLOPipelining,
             "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n" + refusal + "250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n",
             "250 2.0.0 Ok: queued as 4XyZ\r\n"],
            [(clientThree, clientMessage)])
        #expect(run.sent == [
            "EHLO relay.test\r\n",
            "MAIL FROM:<alice@example.org> SIZE=33 BODY=8BITMIME\r\nRCPT TO:<bob@example.net>\r\n"
                + "RCPT TO:<carol@example.net>\r\nRCPT TO:<dave@example.net>\r\nDATA\r\n",
            clientMessageWire,
            "QUIT\r\n",
        ])
        #expect(run.phases == [.hello, .mail, .dataEnd, .quitting])
        let ok = Reply(250, "2.1.5", "Ok")
        let refused = Reply(550, "5.1.1", "<carol@example.net>: Recipient address rejected")
        let queued = Reply(250, "2.0.0", "Ok: queued as 4XyZ")
        let outcome = TransactionOutcome(mailReply: Reply(250, "2.1.0", "Ok"), recipientReplies: [ok, refused, ok],
                                         dataReply: queued)
        #expect(run.outcomes == [outcome])
        #expect(outcome.result(forRecipient: 0) == queued)
        #expect(outcome.result(forRecipient: 1) == refused)
        #expect(outcome.result(forRecipient: 2) == queued)
        #expect(run.events.last == .close)
        #expect(run.failure == nil)
    }

    @Test func pipelinedGroupIsOneWrite() {
        var s = ClientSession(hostname: "relay.test")
        _ = s.receive(Array(clientGreeting.utf8))
        let ready = s.receive(Array(clientEHLOPipelining.utf8))
        #expect(ready.count == 1)
        let actions = s.send(clientThree, message: Array(clientMessage.utf8))
        #expect(actions.count == 1)
        guard case .send(let bytes)? = actions.first else { Issue.record("no send"); return }
        #expect(String(decoding: bytes, as: UTF8.self).hasSuffix("RCPT TO:<dave@example.net>\r\nDATA\r\n"))
        #expect(s.phase == .mail)
        #expect(s.send(clientThree, message: []) == [])  // only in .ready
    }

    @Test func withoutPipeliningOneCommandPerReply() {
        let t = OutboundTransaction(sender: "", recipients: ["bob@example.net", "carol@example.net"], size: 33)
        let run = clientConverse(
            [clientGreeting, clientEHLOPlain, "250 2.1.0 Ok\r\n", "250 2.1.5 Ok\r\n", "251 2.1.5 will forward\r\n",
             "354 go ahead\r\n", "250 2.0.0 queued\r\n"],
            [(t, clientMessage)])
        #expect(run.sent == ["EHLO relay.test\r\n", "MAIL FROM:<> SIZE=33\r\n", "RCPT TO:<bob@example.net>\r\n",
                             "RCPT TO:<carol@example.net>\r\n", "DATA\r\n", clientMessageWire, "QUIT\r\n"])
        #expect(run.phases == [.hello, .mail, .rcpt, .rcpt, .data, .dataEnd, .quitting])
        #expect(run.outcomes.first?.result(forRecipient: 1) == Reply(250, "2.0.0", "queued"))
        #expect(run.outcomes.first?.recipientReplies[1] == Reply(251, "2.1.5", "will forward"))
    }

    @Test func withoutPipeliningAllRecipientsRefusedSendsNoDATA() {
        let t = OutboundTransaction(sender: "a@b.test", recipients: ["x@y.test", "z@y.test"], size: 5)
        let run = clientConverse(
            [clientGreeting, clientEHLOPlain, "250 2.1.0 Ok\r\n", "550 5.1.1 no x\r\n", "450 4.2.0 busy z\r\n"],
            [(t, "hi\r\n")])
        #expect(run.sent == ["EHLO relay.test\r\n", "MAIL FROM:<a@b.test> SIZE=5\r\n", "RCPT TO:<x@y.test>\r\n",
                             "RCPT TO:<z@y.test>\r\n", "QUIT\r\n"])
        let o = run.outcomes.first
        #expect(o?.dataReply == nil)
        #expect(o?.result(forRecipient: 0) == Reply(550, "5.1.1", "no x"))
        #expect(o?.result(forRecipient: 1) == Reply(450, "4.2.0", "busy z"))
    }

    @Test func sizeOverTheNextHopsLimitSendsNoMAIL() {
        let big = OutboundTransaction(sender: "a@b.test", recipients: ["c@d.test"], size: 10_240_001)
        let run = clientConverse([clientGreeting, clientEHLOPipelining], [(big, "x\r\n")])
        #expect(run.sent == ["EHLO relay.test\r\n", "QUIT\r\n"])
        let o = run.outcomes.first
        #expect(o?.mailReply.code == 552)
        #expect(o?.mailReply.enhanced == "5.3.4")
        #expect(o?.recipientReplies == [nil])
        #expect(o?.dataReply == nil)
        #expect(o?.result(forRecipient: 0).code == 552)
    }

    @Test func sizeExactlyAtTheLimitIsSent() {
        let t = OutboundTransaction(sender: "a@b.test", recipients: ["c@d.test"], size: 10_240_000)
        let run = clientConverse([clientGreeting, clientEHLOPipelining], [(t, "x\r\n")], quit: false)
        #expect(run.sent == ["EHLO relay.test\r\n", "MAIL FROM:<a@b.test> SIZE=10240000\r\nRCPT TO:<c@d.test>\r\nDATA\r\n"])
        #expect(run.outcomes.isEmpty)
    }

    @Test func sizeWithoutLimitStillSendsSizeParameter() {
        let ehlo = "250-mx.test\r\n250-PIPELINING\r\n250 SIZE\r\n"
        let big = OutboundTransaction(sender: "a@b.test", recipients: ["c@d.test"], size: 99_000_000, bodyType: "8BITMIME")
        let run = clientConverse([clientGreeting, ehlo], [(big, "x\r\n")], quit: false)
        // No 8BITMIME offered: no BODY= parameter.
        #expect(run.sent == ["EHLO relay.test\r\n", "MAIL FROM:<a@b.test> SIZE=99000000\r\nRCPT TO:<c@d.test>\r\nDATA\r\n"])
    }

    @Test func pipelinedMailRefused451() {
        let run = clientConverse(
            [clientGreeting, clientEHLOPipelining,
             "451 4.3.0 try again later\r\n503 5.5.1 need MAIL\r\n503 5.5.1 need MAIL\r\n503 5.5.1 need MAIL\r\n"
                + "503 5.5.1 need MAIL\r\n"],
            [(clientThree, clientMessage)])
        #expect(run.sent.last == "QUIT\r\n")
        #expect(run.sent.count == 3)
        let o = TransactionOutcome(mailReply: Reply(451, "4.3.0", "try again later"),
                                   recipientReplies: [nil, nil, nil], dataReply: nil)
        #expect(run.outcomes == [o])
        #expect(o.result(forRecipient: 2) == Reply(451, "4.3.0", "try again later"))
    }

    @Test func pipelinedMailRefusedButDATAGets354SendsDotOnly() {
        let run = clientConverse(
            [clientGreeting, clientEHLOPipelining,
             "451 4.3.0 later\r\n503 5.5.1 a\r\n503 5.5.1 b\r\n503 5.5.1 c\r\n354 go ahead\r\n", "554 5.5.1 nothing\r\n"],
            [(clientThree, clientMessage)])
        #expect(run.sent[2] == ".\r\n")
        #expect(run.sent[3] == "QUIT\r\n")
        #expect(run.phases[2] == .dataEnd)
        #expect(run.outcomes == [TransactionOutcome(mailReply: Reply(451, "4.3.0", "later"),
                                                    recipientReplies: [nil, nil, nil], dataReply: nil)])
    }

    @Test func withoutPipeliningMailRefused451SendsNoRCPT() {
        let run = clientConverse([clientGreeting, clientEHLOPlain, "451 4.3.0 try again later\r\n"],
                                 [(clientThree, clientMessage)])
        #expect(run.sent == ["EHLO relay.test\r\n", "MAIL FROM:<alice@example.org> SIZE=33 BODY=8BITMIME\r\n",
                             "QUIT\r\n"])
        #expect(run.outcomes == [TransactionOutcome(mailReply: Reply(451, "4.3.0", "try again later"),
                                                    recipientReplies: [nil, nil, nil], dataReply: nil)])
    }

    @Test func allRecipientsRefusedPipelinedDATA354SendsDotOnly() {
        let run = clientConverse(
            [clientGreeting, clientEHLOPipelining,
             "250 2.1.0 Ok\r\n550 5.1.1 no bob\r\n550 5.1.1 no carol\r\n452 4.5.3 too many\r\n354 go\r\n",
             "554 5.5.1 Error: no valid recipients\r\n"],
            [(clientThree, clientMessage)])
        #expect(run.sent.count == 4)
        #expect(run.sent[2] == ".\r\n")  // the message itself is never sent
        #expect(run.sent[3] == "QUIT\r\n")
        let o = run.outcomes.first
        #expect(o?.dataReply == nil)
        #expect(o?.recipientReplies == [Reply(550, "5.1.1", "no bob"), Reply(550, "5.1.1", "no carol"),
                                        Reply(452, "4.5.3", "too many")])
        #expect(o?.result(forRecipient: 2) == Reply(452, "4.5.3", "too many"))
        #expect(run.failure == nil)
    }

    @Test func allRecipientsRefusedPipelinedDATARefused() {
        let run = clientConverse(
            [clientGreeting, clientEHLOPipelining,
             "250 2.1.0 Ok\r\n550 5.1.1 a\r\n550 5.1.1 b\r\n550 5.1.1 c\r\n554 5.5.1 no valid recipients\r\n"],
            [(clientThree, clientMessage)])
        #expect(run.sent[2] == "QUIT\r\n")
        #expect(run.outcomes.first?.dataReply == nil)
        #expect(run.outcomes.first?.result(forRecipient: 1) == Reply(550, "5.1.1", "b"))
    }

    @Test func dataRefused554() {
        let run = clientConverse(
            [clientGreeting, clientEHLOPipelining, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n554 5.7.1 not from you\r\n"],
            [(clientOne, clientMessage)])
        #expect(run.sent[2] == "QUIT\r\n")  // no message data
        let o = run.outcomes.first
        #expect(o?.dataReply == Reply(554, "5.7.1", "not from you"))
        #expect(o?.result(forRecipient: 0) == Reply(554, "5.7.1", "not from you"))
    }

    @Test func endOfData451() {
        let run = clientConverse(
            [clientGreeting, clientEHLOPipelining, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n",
             "451 4.3.0 queue file write error\r\n"],
            [(clientOne, clientMessage)])
        #expect(run.sent[2] == clientMessageWire)
        let o = run.outcomes.first
        #expect(o?.dataReply == Reply(451, "4.3.0", "queue file write error"))
        #expect(o?.result(forRecipient: 0).isTransientFailure == true)
        #expect(o?.recipientReplies == [Reply(250, "2.1.5", "Ok")])
    }

    // MARK: Reuse

    @Test func secondTransactionPipelinedSendsRSETInTheGroup() {
        let second = OutboundTransaction(sender: "", recipients: ["e@f.test"], size: 4)
        let run = clientConverse(
            [clientGreeting, clientEHLOPipelining, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n", "250 2.0.0 one\r\n",
             "250 2.0.0 Ok\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n", "250 2.0.0 two\r\n"],
            [(clientOne, clientMessage), (second, "two")])
        #expect(run.sent == [
            "EHLO relay.test\r\n",
            "MAIL FROM:<alice@example.org> SIZE=33\r\nRCPT TO:<bob@example.net>\r\nDATA\r\n",
            clientMessageWire,
            "RSET\r\nMAIL FROM:<> SIZE=4\r\nRCPT TO:<e@f.test>\r\nDATA\r\n",
            "two\r\n.\r\n",
            "QUIT\r\n",
        ])
        #expect(run.outcomes.map { $0.dataReply?.lines } == [["one"], ["two"]])
    }

    @Test func secondTransactionWithoutPipeliningWaitsForRSET() {
        let run = clientConverse(
            [clientGreeting, clientEHLOPlain, "250 Ok\r\n", "250 Ok\r\n", "354 go\r\n", "250 one\r\n",
             "250 2.0.0 reset\r\n", "250 Ok\r\n", "250 Ok\r\n", "354 go\r\n", "250 two\r\n"],
            [(clientOne, "1\r\n"), (clientOne, "2\r\n")])
        #expect(run.sent == ["EHLO relay.test\r\n", "MAIL FROM:<alice@example.org> SIZE=33\r\n",
                             "RCPT TO:<bob@example.net>\r\n", "DATA\r\n", "1\r\n.\r\n",
                             "RSET\r\n", "MAIL FROM:<alice@example.org> SIZE=33\r\n",
                             "RCPT TO:<bob@example.net>\r\n", "DATA\r\n", "2\r\n.\r\n", "QUIT\r\n"])
        #expect(run.phases[5] == .mail)
        #expect(run.outcomes.count == 2)
    }

    @Test func rsetRefusedFailsTheSession() {
        let run = clientConverse(
            [clientGreeting, clientEHLOPlain, "250 Ok\r\n", "250 Ok\r\n", "354 go\r\n", "250 one\r\n",
             "503 5.5.1 what\r\n"],
            [(clientOne, "1\r\n"), (clientOne, "2\r\n")])
        #expect(run.sent[6] == "")
        #expect(run.failure?.reply == Reply(503, "5.5.1", "what"))
        #expect(run.outcomes.count == 1)
        #expect(run.closed)
    }

    // MARK: Failures

    @Test func reply421MidTransactionFailsTheSession() {
        let run = clientConverse(
            [clientGreeting, clientEHLOPipelining,
             "250 2.1.0 Ok\r\n421 4.4.2 mx.test Error: timeout exceeded\r\n"],
            [(clientThree, clientMessage)])
        #expect(run.sent[2] == "")  // no QUIT after 421
        #expect(run.failure?.reply == Reply(421, "4.4.2", "mx.test Error: timeout exceeded"))
        #expect(run.outcomes.isEmpty)
        #expect(run.events.suffix(2).first.map { if case .sessionFailed = $0 { true } else { false } } == true)
        #expect(run.closed)
        #expect(run.phases.last == .closed)
    }

    @Test func reply421AfterEndOfDataFailsTheSession() {
        let run = clientConverse(
            [clientGreeting, clientEHLOPipelining, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n",
             "421 4.3.2 shutting down\r\n"],
            [(clientOne, clientMessage)])
        #expect(run.failure?.reply?.code == 421)
        #expect(run.outcomes.isEmpty)
        #expect(run.sent[3] == "")
    }

    @Test func nothingIsReadAfterTheSessionFailed() {
        var s = ClientSession(hostname: "relay.test")
        let a = s.receive(Array("421 bye\r\n".utf8))
        #expect(a.count == 2)
        #expect(s.receive(Array("220 hello again\r\n".utf8)) == [])
        #expect(s.timedOut() == [])
        #expect(s.quit() == [])
    }

    @Test func smtputf8NeededButNotOfferedFailsWithoutMAIL() {
        let t = OutboundTransaction(sender: "jörg@example.de", recipients: ["anna@example.net"], size: 10, smtputf8: true)
        let run = clientConverse([clientGreeting, clientEHLOPlain], [(t, "x\r\n")])
        #expect(run.sent == ["EHLO relay.test\r\n", "QUIT\r\n"])
        let o = run.outcomes.first
        #expect(o?.mailReply.code == 553)
        #expect(o?.mailReply.enhanced == "5.6.7")
        #expect(o?.result(forRecipient: 0).isPermanentFailure == true)
    }

    @Test func smtputf8OfferedIsSent() {
        let t = OutboundTransaction(sender: "jörg@example.de", recipients: ["anna@example.net"], size: 10, smtputf8: true)
        let run = clientConverse([clientGreeting, clientEHLOPipelining], [(t, "x\r\n")], quit: false)
        #expect(run.sent[1] == "MAIL FROM:<jörg@example.de> SIZE=10 SMTPUTF8\r\nRCPT TO:<anna@example.net>\r\nDATA\r\n")
    }

    @Test func controlCharacterInAddressNeverReachesTheWire() {
        let t = OutboundTransaction(sender: "a@b.test", recipients: ["c@d.test>\r\nRCPT TO:<evil@x.test"], size: 1)
        let run = clientConverse([clientGreeting, clientEHLOPipelining], [(t, "x\r\n")])
        #expect(run.sent == ["EHLO relay.test\r\n", "QUIT\r\n"])
        #expect(run.outcomes.first?.mailReply.code == 553)
    }

    @Test func garbageGreetingFailsTheSession() {
        let run = clientConverse(["SSH-2.0-OpenSSH_9.2p1\r\n"])
        #expect(run.sent == [""])
        #expect(run.failure != nil)
        #expect(run.failure?.reply == nil)
        #expect(run.closed)
    }

    @Test func garbageAfterGoodRepliesInOneReadFailsAfterThem() {
        let run = clientConverse(
            [clientGreeting, clientEHLOPipelining, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\nHTTP/1.1 400 Bad\r\n"],
            [(clientOne, clientMessage)])
        #expect(run.failure?.reply == nil)
        #expect(run.failure?.why.contains("HTTP/1.1") == true)
        #expect(run.sent[2] == "")
    }

    @Test func unexpectedCodeFailsTheSession() {
        // 354 to MAIL makes no sense.
        let run = clientConverse([clientGreeting, clientEHLOPlain, "354 what\r\n"], [(clientOne, "x\r\n")])
        #expect(run.failure?.reply == Reply(354, nil, "what"))
        #expect(run.sent[2] == "")
        #expect(run.closed)
    }

    @Test func replyWhileIdleFailsTheSession() {
        let run = clientConverse([clientGreeting, clientEHLOPlain, "250 surprise\r\n"], quit: false)
        #expect(run.phases == [.hello, .ready, .closed])
        #expect(run.failure?.reply == Reply(250, nil, "surprise"))
    }

    @Test func timeoutFailsTheSession() {
        var s = ClientSession(hostname: "relay.test")
        let a = s.timedOut()
        #expect(a.count == 2)
        #expect(a.last == .close)
        guard case .sessionFailed(let r, let why)? = a.first else { Issue.record("no sessionFailed"); return }
        #expect(r == nil)
        #expect(why.contains("greeting"))
        #expect(s.phase == .closed)
    }

    @Test func quitWhenReady() {
        var s = ClientSession(hostname: "relay.test")
        _ = s.receive(Array(clientGreeting.utf8))
        _ = s.receive(Array(clientEHLOPlain.utf8))
        #expect(s.phase == .ready)
        #expect(s.quit() == [.send(Array("QUIT\r\n".utf8)), .close])
        #expect(s.phase == .quitting)
        #expect(s.receive(Array("221 bye\r\n".utf8)) == [])
    }
}
