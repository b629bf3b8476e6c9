// STARTTLS and AUTH in the client state machine.

import Testing
@testable import SMTPProtocol

/// Feeds server text and collects what the client sends and does.
struct SecureClient {
    var session: ClientSession
    var sent = ""
    var events: [ClientAction] = []

    init(tls: ClientTLSMode, credentials: ClientCredentials? = nil) {
        session = ClientSession(hostname: "relay.test", tls: tls, credentials: credentials)
    }

    mutating func server(_ text: String) {
        take(session.receive(Array(text.utf8)))
    }

    mutating func take(_ actions: [ClientAction]) {
        for a in actions {
            let pieces = a.wirePieces
            if pieces.isEmpty { events.append(a) }
            for b in pieces { sent += String(decoding: b, as: UTF8.self) }
        }
    }

    mutating func takeSent() -> String {
        defer { sent = "" }
        return sent
    }

    var failed: String? {
        for e in events { if case .sessionFailed(_, let why) = e { return why } }
        return nil
    }
    var ready: NextHopCapabilities? {
        for e in events { if case .ready(let c) = e { return c } }
        return nil
    }
}

let ehloWithTLS = "250-mx.test\r\n250-PIPELINING\r\n250-STARTTLS\r\n250 8BITMIME\r\n"
let ehloUnderTLS = "250-mx.test\r\n250-PIPELINING\r\n250-AUTH LOGIN PLAIN\r\n250 SIZE 1000\r\n"

@Suite struct ClientSecurityTests {
    @Test func opportunisticUpgradesAndEHLOsAgain() {
        var c = SecureClient(tls: .opportunistic)
        c.server("220 mx.test ESMTP\r\n")
        #expect(c.takeSent() == "EHLO relay.test\r\n")
        c.server(ehloWithTLS)
        #expect(c.takeSent() == "STARTTLS\r\n")
        #expect(c.ready == nil)
        // Bytes after the 220 in the clear are dropped, never read as replies.
        c.server("220 2.0.0 go ahead\r\n250 2.1.0 injected\r\n")
        #expect(c.events == [.startTLS])
        #expect(c.session.phase == .startingTLS)
        c.server("250 more injected\r\n")
        #expect(c.sent.isEmpty)
        c.take(c.session.tlsEstablished())
        #expect(c.takeSent() == "EHLO relay.test\r\n")
        c.server(ehloUnderTLS)
        // The capabilities are those of the second EHLO.
        #expect(c.ready?.size == 1000)
        #expect(c.ready?.startTLS == false)
        #expect(c.session.tlsActive)
    }

    @Test func opportunisticWithoutOfferStaysInTheClear() {
        var c = SecureClient(tls: .opportunistic)
        c.server("220 mx.test\r\n250 mx.test\r\n")
        #expect(c.takeSent() == "EHLO relay.test\r\n")
        #expect(c.ready != nil)
        #expect(!c.session.tlsActive)

        // STARTTLS offered but refused: in the clear too.
        var d = SecureClient(tls: .opportunistic)
        d.server("220 mx.test\r\n" + ehloWithTLS + "454 4.7.0 TLS not available\r\n")
        #expect(d.ready != nil)
        #expect(d.failed == nil)
    }

    @Test func requiredFailsWithoutTLS() {
        var c = SecureClient(tls: .required)
        c.server("220 mx.test\r\n250 mx.test\r\n")
        #expect(c.failed == "the next hop does not offer STARTTLS")
        #expect(c.sent.hasSuffix("QUIT\r\n"))
        #expect(c.ready == nil)

        var d = SecureClient(tls: .required)
        d.server("220 mx.test\r\n" + ehloWithTLS + "454 4.7.0 TLS not available\r\n")
        #expect(d.failed?.contains("refused STARTTLS") == true)

        // HELO fallback cannot do STARTTLS either.
        var e = SecureClient(tls: .required)
        e.server("220 mx.test\r\n502 no EHLO\r\n250 mx.test\r\n")
        #expect(e.failed == "the next hop does not offer STARTTLS")
    }

    @Test func noneNeverSendsStartTLS() {
        var c = SecureClient(tls: .none)
        c.server("220 mx.test\r\n" + ehloWithTLS)
        #expect(!c.sent.contains("STARTTLS"))
        #expect(c.ready?.startTLS == true)
    }

    @Test func authPlainAfterTLS() {
        var c = SecureClient(tls: .required, credentials: ClientCredentials(user: "relay", password: "s3cret"))
        c.server("220 mx.test\r\n" + ehloWithTLS + "220 go\r\n")
        c.take(c.session.tlsEstablished())
        _ = c.takeSent()
        c.server(ehloUnderTLS)
        #expect(c.takeSent() == "AUTH PLAIN \(Base64.encode("\0relay\0s3cret"))\r\n")
        #expect(c.ready == nil)
        c.server("235 2.7.0 ok\r\n")
        #expect(c.ready != nil)
        #expect(c.session.authenticated)
    }

    @Test func authLoginWhenPlainIsMissing() {
        var c = SecureClient(tls: .opportunistic, credentials: ClientCredentials(user: "u", password: "p"))
        c.server("220 mx.test\r\n" + ehloWithTLS + "220 go\r\n")
        c.take(c.session.tlsEstablished())
        _ = c.takeSent()
        c.server("250-mx.test\r\n250 AUTH LOGIN\r\n")
        #expect(c.takeSent() == "AUTH LOGIN\r\n")
        c.server("334 VXNlcm5hbWU6\r\n")
        #expect(c.takeSent() == "\(Base64.encode("u"))\r\n")
        c.server("334 UGFzc3dvcmQ6\r\n")
        #expect(c.takeSent() == "\(Base64.encode("p"))\r\n")
        c.server("235 2.7.0 ok\r\n")
        #expect(c.ready != nil)
    }

    @Test func credentialsNeverInTheClear() {
        var c = SecureClient(tls: .opportunistic, credentials: ClientCredentials(user: "u", password: "p"))
        c.server("220 mx.test\r\n250-mx.test\r\n250 AUTH PLAIN\r\n")
        #expect(!c.sent.contains("AUTH"))
        #expect(c.failed?.contains("only over TLS") == true)
    }

    @Test func refusedCredentialsFailTheSession() {
        var c = SecureClient(tls: .required, credentials: ClientCredentials(user: "u", password: "bad"))
        c.server("220 mx.test\r\n" + ehloWithTLS + "220 go\r\n")
        c.take(c.session.tlsEstablished())
        c.server(ehloUnderTLS + "535 5.7.8 no\r\n")
        #expect(c.failed?.contains("refused our credentials") == true)
        #expect(c.ready == nil)
    }
}
