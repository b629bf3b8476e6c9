import Testing
@testable import SMTPProtocol

// REQUIRETLS (RFC 8689): offered and taken only under TLS; a message that asks for it leaves only under
// TLS with a verified certificate, to a next hop that offers it, else 550 5.7.30 at once.

@Suite struct RequireTLSTests {
    @Test func offeredAndTakenOnlyUnderTLS() {
        var d = Driver(secureConfig(auth: false))
        d.send("EHLO client.test\r\n")
        #expect(!d.replies.contains("REQUIRETLS"))
        d.send("MAIL FROM:<a@x.test> REQUIRETLS\r\n")
        #expect(d.replies.hasSuffix("555 5.5.4 Error: unsupported parameter REQUIRETLS\r\n"))
        d.send("STARTTLS\r\n")
        d.establishTLS()
        d.replies = ""
        d.send("EHLO client.test\r\n")
        #expect(d.replies.contains("250-REQUIRETLS\r\n"))
        d.send("MAIL FROM:<a@x.test> REQUIRETLS=yes\r\n")
        #expect(d.replies.hasSuffix("501 5.5.4 Error: REQUIRETLS takes no value\r\n"))
        d.send("MAIL FROM:<a@x.test> requiretls\r\nRCPT TO:<b@y.test>\r\nDATA\r\nhi\r\n.\r\n")
        #expect(d.messages.first?.start.requireTLS == true)
        d.send("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\nhi\r\n.\r\n")
        #expect(d.messages.last?.start.requireTLS == false)
    }

    static let ehloTLS = "250-mx.test\r\n250-PIPELINING\r\n250 STARTTLS\r\n"
    static let underTLS = "250-mx.test\r\n250-PIPELINING\r\n250 REQUIRETLS\r\n"
    static let underTLSWithout = "250-mx.test\r\n250 PIPELINING\r\n"

    /// A client through STARTTLS (or not) with the given EHLO under TLS; returns what a REQUIRETLS
    /// transaction sends and its outcome, if it ended at once.
    func attempt(tls: Bool = true, verified: Bool = true, ehlo: String = underTLS) -> (sent: String, refusal: Reply?) {
        var c = SecureClient(tls: tls ? .required : .none)
        c.server("220 mx.test ESMTP\r\n")
        if tls {
            c.server(Self.ehloTLS)
            c.server("220 2.0.0 go ahead\r\n")
            c.take(c.session.tlsEstablished(peerVerified: verified))
            _ = c.takeSent()
            c.server(ehlo)
        } else {
            c.server(ehlo)
        }
        _ = c.takeSent()
        var t = OutboundTransaction(sender: "a@x.test", recipients: ["b@y.test"], size: 4)
        t.requireTLS = true
        c.take(c.session.send(t, message: Array("hi\r\n".utf8)))
        let outcome = c.events.compactMap { if case .transactionFinished(let o) = $0 { return o } else { return nil } }.first
        // A refusal is this host's only: the next MX host may promise REQUIRETLS.
        #expect(outcome.map(\.thisHostOnly) ?? true)
        return (c.takeSent(), outcome?.mailReply)
    }

    @Test func sentOnlyUnderVerifiedTLSToANextHopThatOffersIt() {
        let ok = attempt()
        #expect(ok.sent.hasPrefix("MAIL FROM:<a@x.test> REQUIRETLS\r\n"))
        #expect(ok.refusal == nil)
        let clear = attempt(tls: false)
        #expect(clear.sent.isEmpty)
        #expect(clear.refusal == Reply(550, "5.7.30", "REQUIRETLS support required: the connection is not encrypted"))
        let unverified = attempt(verified: false)
        #expect(unverified.sent.isEmpty)
        #expect(unverified.refusal?.enhanced == "5.7.30")
        #expect(unverified.refusal?.lines.first?.contains("not verified") == true)
        let notOffered = attempt(ehlo: Self.underTLSWithout)
        #expect(notOffered.sent.isEmpty)
        #expect(notOffered.refusal?.lines.first?.contains("does not offer REQUIRETLS") == true)
    }

    @Test func otherMailIsNotAffected() {
        var c = SecureClient(tls: .none)
        c.server("220 mx.test ESMTP\r\n")
        c.server(Self.underTLSWithout)
        _ = c.takeSent()
        c.take(c.session.send(OutboundTransaction(sender: "a@x.test", recipients: ["b@y.test"], size: 4),
                              message: Array("hi\r\n".utf8)))
        #expect(c.takeSent() == "MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n")
    }
}
