import Testing
@testable import SMTPProtocol

// DSN parameters (RFC 3461): xtext, NOTIFY, ORCPT, RET and ENVID as the server takes them in and the
// client passes them on.

@Suite struct DSNParameterTests {
    @Test func xtextDecodes() {
        #expect(xtextDecode("QQ314159") == "QQ314159")
        #expect(xtextDecode("a+2Bb+3Dc") == "a+b=c")
        #expect(xtextDecode("+20") == " ")
        #expect(xtextDecode("caf+C3+A9") == "café")
        // Lower-case hex, a cut escape, "=", a space, a control, non-ASCII: refused, not guessed.
        for bad in ["a+2b", "a+2", "a+", "a=b", "a b", "a\u{7F}", "é"] {
            #expect(xtextDecode(bad) == nil, "\(bad)")
        }
    }

    @Test func xtextRoundTrips() {
        for s in ["plain", "a+b=c", " spaced out ", "café", "<bob@example.com>", ""] {
            let encoded = xtextEncode(s)
            #expect(encoded.utf8.allSatisfy { $0 > 32 && $0 < 127 && $0 != UInt8(ascii: "=") })
            #expect(xtextDecode(encoded) == s, "\(s) -> \(encoded)")
        }
    }

    @Test func notifyKeywords() {
        #expect(DSNNotify(keyword: "NEVER") == .never)
        #expect(DSNNotify(keyword: "never") == .never)
        #expect(DSNNotify(keyword: "SUCCESS,DELAY") == [.success, .delay])
        #expect(DSNNotify(keyword: "delay,Failure,success") == [.success, .failure, .delay])
        #expect(DSNNotify(keyword: "delay,Failure,success")?.keyword == "SUCCESS,FAILURE,DELAY")
        #expect(DSNNotify.never.keyword == "NEVER")
        for bad in ["", "NEVER,SUCCESS", "SUCCESS,,DELAY", "SUCCESS,SUCCESS", "ALWAYS", "SUCCESS,"] {
            #expect(DSNNotify(keyword: bad) == nil, "\(bad)")
        }
    }

    @Test func orcptAndEnvidValues() {
        #expect(validORCPT("rfc822;bob@example.com") == "rfc822;bob@example.com")
        #expect(validORCPT("utf-8;b+C3+B6b@example.com") != nil)
        for bad in ["rfc822;", ";bob@example.com", "bob@example.com", "rfc 822;bob", "rfc822;a+2b",
                    "rfc822;" + String(repeating: "a", count: 494)] {
            #expect(validORCPT(bad) == nil, "\(bad)")
        }
        #expect(validENVID(String(repeating: "x", count: 100)) != nil)
        #expect(validENVID(String(repeating: "x", count: 101)) == nil)
        #expect(validENVID("") == nil)
        #expect(validENVID("a=b") == nil)
    }
}

@Suite struct ServerDSNTests {
    let envelope = "EHLO client.test\r\nMAIL FROM:<a@x.test> RET=hdrs ENVID=QQ+2B314159\r\n"

    @Test func ehloOffersDSN() {
        var d = Driver()
        d.send("EHLO client.test\r\n")
        #expect(d.replies.contains("250-DSN\r\n"))
        var config = ServerConfiguration(hostname: "relay.test")
        config.extensions = [.pipelining]
        var off = Driver(config)
        off.send("EHLO client.test\r\n")
        #expect(!off.replies.contains("DSN"))
        // Not offered: the parameters are unknown ones.
        off.send("MAIL FROM:<a@x.test> RET=FULL\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test> NOTIFY=NEVER\r\n")
        #expect(off.codes.suffix(3) == ["555", "250", "555"])
    }

    @Test func parametersReachTheMessage() {
        var d = Driver()
        d.send(envelope + "RCPT TO:<plain@y.test>\r\n"
               + "RCPT TO:<b@y.test> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;B+2Bx@y.test\r\n"
               + "RCPT TO:<c@y.test> notify=never\r\n"
               + "RCPT TO:<b@y.test> NOTIFY=FAILURE\r\n"  // the same address again: the first RCPT's parameters stay
               + "RCPT TO:<last@y.test>\r\nDATA\r\nhi\r\n.\r\n")
        #expect(d.codes == ["220", "250", "250", "250", "250", "250", "250", "250", "354", "250"])
        guard let start = d.messages.first?.start else { Issue.record("no message"); return }
        #expect(start.ret == .headers)
        #expect(start.envid == "QQ+2B314159")
        #expect(start.recipients == ["plain@y.test", "b@y.test", "c@y.test", "last@y.test"])
        #expect(start.recipientDSN == [RecipientDSN(), RecipientDSN(notify: [.success, .delay], orcpt: "rfc822;B+2Bx@y.test"),
                                       RecipientDSN(notify: .never), RecipientDSN()])
    }

    @Test func withoutParametersNothingIsKept() {
        var d = Driver()
        d.send("EHLO client.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<c@y.test>\r\nDATA\r\nhi\r\n.\r\n")
        #expect(d.messages.first?.start.recipientDSN == [])
        #expect(d.messages.first?.start.ret == nil && d.messages.first?.start.envid == nil)
    }

    @Test(arguments: [
        ("MAIL FROM:<a@x.test> RET=PARTIAL", "501 5.5.4 Error: RET must be FULL or HDRS"),
        ("MAIL FROM:<a@x.test> RET", "501 5.5.4 Error: RET must be FULL or HDRS"),
        ("MAIL FROM:<a@x.test> ENVID=a=b", "501 5.5.4 Error: ENVID must be xtext of at most 100 octets"),
        ("MAIL FROM:<a@x.test> ENVID=" + String(repeating: "e", count: 101), "501 5.5.4 Error: ENVID must be xtext of at most 100 octets"),
        ("MAIL FROM:<a@x.test> RET=FULL RET=HDRS", "501 5.5.4 Error: duplicate RET parameter"),
    ])
    func badMailParameters(line: String, reply: String) {
        var d = Driver()
        d.send("EHLO client.test\r\n\(line)\r\n")
        #expect(d.replies.hasSuffix(reply + "\r\n"), "\(line): \(d.replies)")
    }

    @Test(arguments: [
        ("NOTIFY=NEVER,SUCCESS", "501 5.5.4 Error: NOTIFY must be NEVER or SUCCESS, FAILURE, DELAY"),
        ("NOTIFY=", "501 5.5.4 Syntax error: bad parameter"),
        ("ORCPT=bob@y.test", "501 5.5.4 Error: ORCPT must be addr-type;xtext of at most 500 octets"),
        ("ORCPT=rfc822;a+2", "501 5.5.4 Error: ORCPT must be addr-type;xtext of at most 500 octets"),
        ("NOTIFY=DELAY NOTIFY=DELAY", "501 5.5.4 Error: duplicate NOTIFY parameter"),
        ("XFOO=1", "555 5.5.4 Error: unsupported parameter XFOO"),
    ])
    func badRcptParameters(params: String, reply: String) {
        var d = Driver()
        d.send("EHLO client.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test> \(params)\r\n")
        #expect(d.replies.hasSuffix(reply + "\r\n"), "\(params): \(d.replies)")
        // The transaction goes on: the RCPT was refused, not the session.
        d.send("RCPT TO:<b@y.test>\r\n")
        #expect(d.codes.last == "250")
    }
}

@Suite struct ClientDSNTests {
    static let ehloDSN = "250-mx.test\r\n250-PIPELINING\r\n250 DSN\r\n"
    static let ehloPlain = "250-mx.test\r\n250 PIPELINING\r\n"
    static let transaction = OutboundTransaction(
        sender: "a@x.test", recipients: ["b@y.test", "c@y.test"], size: 4, ret: .headers, envid: "QQ+2B1",
        recipientDSN: [RecipientDSN(notify: [.success, .failure], orcpt: "rfc822;b@y.test"), RecipientDSN()])

    func commands(_ ehlo: String, _ t: OutboundTransaction) -> String {
        var s = ClientSession(hostname: "relay.test")
        _ = s.receive(Array(clientGreeting.utf8))
        _ = s.receive(Array(ehlo.utf8))
        return String(decoding: s.send(t, message: Array("hi\r\n".utf8)).flatMap(\.wirePieces).joined(), as: UTF8.self)
    }

    @Test func passedOnWhenTheNextHopOffersDSN() {
        #expect(NextHopCapabilities(ehloReply: Reply(250, nil, ["mx", "dsn"])).dsn)
        #expect(commands(Self.ehloDSN, Self.transaction)
                == "MAIL FROM:<a@x.test> RET=HDRS ENVID=QQ+2B1\r\n"
                + "RCPT TO:<b@y.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b@y.test\r\nRCPT TO:<c@y.test>\r\nDATA\r\n")
    }

    @Test func leftOffWhenItDoesNot() {
        #expect(commands(Self.ehloPlain, Self.transaction)
                == "MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<c@y.test>\r\nDATA\r\n")
    }

    @Test func notXtextNeverReachesTheWire() {
        var t = Self.transaction
        t.recipientDSN[1].orcpt = "rfc822;c@y.test\r\nRSET"
        var s = ClientSession(hostname: "relay.test")
        _ = s.receive(Array(clientGreeting.utf8))
        _ = s.receive(Array(Self.ehloDSN.utf8))
        let actions = s.send(t, message: Array("hi\r\n".utf8))
        #expect(actions.flatMap(\.wirePieces).isEmpty)
        guard case .transactionFinished(let outcome)? = actions.first else { Issue.record("\(actions)"); return }
        #expect(outcome.mailReply.code == 553)
    }
}
