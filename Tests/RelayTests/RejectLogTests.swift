import Logging
import MailQueue
@testable import SMTPProtocol
import Testing
@testable import Relay

/// The reject log and the named fields of log lines (issue 13): the plain text as Postfix writes it
/// (and as Tern always wrote its delivery lines), and the JSON form with each field a member.
@Suite struct RejectLogTests {
    static let qid = "0661312EF1B4A7"

    func refusal(_ reason: Refusal.Reason, _ command: String, _ reply: Reply, sender: String? = "scan@printer.lan",
                 recipient: String? = "boss@elsewhere.test", accepted: Int = 0, user: String? = nil) -> Refusal {
        Refusal(reason: reason, command: command, reply: reply,
                sender: sender.map { a in
                    let at = a.lastIndex(of: "@")!
                    return MailPath(localPart: String(a[..<at]), domain: String(a[a.index(after: at)...]), sourceRoute: [],
                                    isNull: false)
                }, recipient: recipient, acceptedRecipients: accepted,
                helo: "printer.lan", protocolName: "ESMTP", user: user, logged: true, inMessage: false)
    }

    @Test func rejectLineAsPostfixWritesIt() {
        let r = refusal(.relayDenied, "RCPT", Reply(554, "5.7.1", "Relay access denied"))
        let reply = InboundSession.replyText(r.reply)
        #expect(InboundSession.refusalText(r, qid: nil, client: "unknown[192.0.2.7]", reply: reply)
                == "NOQUEUE: reject: RCPT from unknown[192.0.2.7]: 554 5.7.1 Relay access denied; "
                + "from=<scan@printer.lan> to=<boss@elsewhere.test> proto=ESMTP helo=<printer.lan>")
        let fields = InboundSession.refusalFields(r, client: "unknown[192.0.2.7]", reply: reply)
        #expect(fields["reason"] == "relay_denied" && fields["dsn"] == "5.7.1" && fields["command"] == "RCPT")
        #expect(fields["from"] == "scan@printer.lan" && fields["to"] == "boss@elsewhere.test")
        #expect(fields["reply"] == "554 5.7.1 Relay access denied" && fields["qid"] == nil)
    }

    @Test func timeoutsAndTooManyErrorsReadAsPostfixsDo() {
        let t = refusal(.timeout, "DATA", Reply(421, "4.4.2", "relay.test Error: timeout exceeded"), recipient: "a@b",
                        accepted: 2)
        #expect(InboundSession.refusalText(t, qid: Self.qid, client: "mx[192.0.2.1]", reply: InboundSession.replyText(t.reply))
                == "\(Self.qid): timeout after DATA from mx[192.0.2.1]: 421 4.4.2 relay.test Error: timeout exceeded; "
                + "from=<scan@printer.lan> to=<a@b> nrcpt=2 proto=ESMTP helo=<printer.lan>")
        let e = refusal(.tooManyErrors, "AUTH", Reply(535, "5.7.8", "Error: authentication failed"), sender: nil,
                        recipient: nil, user: "bob")
        #expect(InboundSession.refusalText(e, qid: nil, client: "unknown[::1]", reply: InboundSession.replyText(e.reply))
                == "NOQUEUE: too many errors after AUTH from unknown[::1]: 535 5.7.8 Error: authentication failed; "
                + "proto=ESMTP helo=<printer.lan> sasl_username=<bob>")
    }

    /// Client text between < and > cannot end its field early or imitate another (issue 14).
    @Test func clientTextIsQuoted() {
        #expect(angleQuoted("bob") == "<bob>")
        #expect(angleQuoted("root> from [203.0.113.9]\u{1B}[2J\r\nX") == "<root\\x3E from [203.0.113.9]\\x1B[2J\\x0D\\x0AX>")
        #expect(angleQuoted("a<b\\c\u{9B}\u{7F}é") == "<a\\x3Cb\\x5Cc\\x9B\\x7Fé>")
        // Invisible formatting shows as \u{...}: "\u{202E}gpj.exe" would read "exe.jpg"; U+2028 ends a
        // line for some readers; a zero-width space or a BOM makes a name look like another.
        #expect(angleQuoted("\u{202E}gpj.exe\u{2066}x\u{2069}\u{200B}root\u{200F}\u{FEFF}\u{2028}\u{2029}\u{AD}\u{85}日\u{A0}")
                == "<\\u{202E}gpj.exe\\u{2066}x\\u{2069}\\u{200B}root\\u{200F}\\u{FEFF}\\u{2028}\\u{2029}\\u{AD}\\x85日\u{A0}>")
        let r = refusal(.authFailed, "AUTH", Reply(535, "5.7.8", "Error: authentication failed"),
                        sender: "\"x> from [203.0.113.9]\"@printer.lan", recipient: nil, user: "a>b")
        let text = InboundSession.refusalText(r, qid: nil, client: "unknown[192.0.2.7]", reply: InboundSession.replyText(r.reply))
        #expect(text.hasSuffix("from=<\"x\\x3E from [203.0.113.9]\"@printer.lan> proto=ESMTP helo=<printer.lan> sasl_username=<a\\x3Eb>"),
                "\(text)")
    }

    /// The delivery lines' text is what Tern wrote before the JSON fields, byte for byte.
    @Test func deliveryLinesKeepTheirText() {
        let id = QueueID(rawValue: Self.qid)!
        #expect(DeliveryManager.resultText(id, to: "bob@example.net", relay: "mx.example.net[192.0.2.1]:25",
                                           tls: "TLSv1.3 TLS_AES_256_GCM_SHA384 verified", delay: "0.42", dsn: "2.0.0",
                                           status: "sent", reply: "250 2.0.0 Ok")
                == "\(Self.qid): to=<bob@example.net>, relay=mx.example.net[192.0.2.1]:25, "
                + "tls=TLSv1.3 TLS_AES_256_GCM_SHA384 verified, delay=0.42, dsn=2.0.0, status=sent (250 2.0.0 Ok)")
        #expect(DeliveryManager.resultText(id, to: "bob@example.net", relay: "none", tls: nil, delay: "432000.00",
                                           dsn: "4.4.7", status: "expired", reply: "451 4.3.0 later")
                == "\(Self.qid): to=<bob@example.net>, relay=none, delay=432000.00, dsn=4.4.7, "
                + "status=expired, returned to sender (451 4.3.0 later)")
    }

    @Test(arguments: [false, true])
    func fieldsAreMembersInJSONAndTextInPlain(json: Bool) {
        let lines = LockedLines()
        var log = Logger(label: "t") { _ in
            TernLogHandler(format: json ? .json : .plain, level: .info, sink: { lines.append($0) })
        }
        log[metadataKey: "session"] = "4"
        let fields: Logger.Metadata = ["to": "bob@x.test", "status": "sent", "reply": "250 2.0.0 Ok", "dsn": "2.0.0"]
        log.fields("delivery", qid: Self.qid, level: .info, json: json, fields) {
            "\(Self.qid): to=<bob@x.test>, dsn=2.0.0, status=sent (250 2.0.0 Ok)"
        }
        log.fields("delivery", qid: Self.qid, level: .debug, json: json, fields) { "hidden" }
        #expect(lines.all.count == 1)
        let line = lines.all.first ?? ""
        if json {
            #expect(line.hasSuffix("\"level\":\"info\",\"qid\":\"\(Self.qid)\",\"msg\":\"delivery\",\"dsn\":\"2.0.0\","
                                   + "\"reply\":\"250 2.0.0 Ok\",\"session\":\"4\",\"status\":\"sent\",\"to\":\"bob@x.test\"}\n"),
                    "\(line)")
        } else {
            #expect(line.hasSuffix(" info \(Self.qid): to=<bob@x.test>, dsn=2.0.0, status=sent (250 2.0.0 Ok) session=4\n"),
                    "\(line)")
        }
    }
}
