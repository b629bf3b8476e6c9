// STARTTLS (RFC 3207) and AUTH (RFC 4954) on the client side.
//
// After the EHLO reply:
// - `.opportunistic` or `.required` and STARTTLS offered: STARTTLS; on 220 the caller runs the
//   handshake and calls `tlsEstablished`, and EHLO is sent again: what the first EHLO reply said is
//   forgotten (RFC 3207 §4.2), and so is anything the server sent after its 220 in the clear.
// - `.required` and STARTTLS not offered or refused: the session fails (the caller tries the next MX).
//   `.opportunistic` goes on in the clear.
// - Credentials: AUTH PLAIN (or LOGIN if PLAIN is not offered), only under TLS. Refused credentials,
//   or no usable mechanism, fail the session: mail is not sent unauthenticated to a smart host that
//   was configured to need it.

public enum ClientTLSMode: Sendable, Equatable {
    case none
    case opportunistic
    case required
}

public struct ClientCredentials: Sendable, Equatable {
    public var user: String
    public var password: String
    public init(user: String, password: String) {
        self.user = user
        self.password = password
    }
}

extension ClientSession {
    /// EHLO (or HELO) accepted: upgrade, authenticate, or become ready.
    mutating func afterHello(_ caps: NextHopCapabilities) {
        offered = caps
        if !tlsActive && tlsMode != .none && caps.startTLS {
            command("STARTTLS")
            expect(.startTLS)
            return
        }
        if !tlsActive && tlsMode == .required {
            return failSession(nil, "the next hop does not offer STARTTLS", quit: true)
        }
        if let credentials, !authenticated {
            guard tlsActive else {
                return failSession(nil, "AUTH credentials are sent only over TLS, and the next hop does not offer STARTTLS",
                                   quit: true)
            }
            if caps.auth.contains("PLAIN") {
                let token = Base64.encode([0] + Array(credentials.user.utf8) + [0] + Array(credentials.password.utf8))
                command("AUTH PLAIN \(token)")
                expect(.auth)
            } else if caps.auth.contains("LOGIN") {
                command("AUTH LOGIN")
                expect(.authLoginUser)
            } else {
                return failSession(nil, "the next hop offers neither AUTH PLAIN nor AUTH LOGIN", quit: true)
            }
            return
        }
        offered = nil
        becomeReady(caps)
    }

    mutating func handleSecurityReply(_ r: Reply, _ what: Expected) {
        switch what {
        case .startTLS:
            if r.code == 220 {
                phase = .startingTLS
                // Whatever came after the 220 in the clear is not to be trusted (RFC 3207 §4.2).
                parser = ReplyParser(maxLineLength: parser.maxLineLength, maxLines: parser.maxLines)
                emit(.startTLS)
            } else if tlsMode == .required {
                failSession(r, "the next hop refused STARTTLS (\(r.code))", quit: r.code >= 400)
            } else if r.code >= 400 {
                // Opportunistic: carry on in the clear.
                let caps = offered ?? NextHopCapabilities(esmtp: true)
                var clear = caps
                clear.startTLS = false
                afterHello(clear)
            } else {
                unexpected(r, what)
            }
        case .auth:
            if r.code == 235 {
                authenticated = true
                let caps = offered ?? NextHopCapabilities(esmtp: true)
                offered = nil
                becomeReady(caps)
            } else if r.code >= 400 {
                failSession(r, "the next hop refused our credentials (\(r.code))", quit: true)
            } else {
                unexpected(r, what)
            }
        case .authLoginUser, .authLoginPassword:
            guard r.code == 334, let credentials else {
                return r.code >= 400 ? failSession(r, "the next hop refused AUTH LOGIN (\(r.code))", quit: true)
                                     : unexpected(r, what)
            }
            if what == .authLoginUser {
                command(Base64.encode(credentials.user))
                expect(.authLoginPassword)
            } else {
                command(Base64.encode(credentials.password))
                expect(.auth)
            }
        default:
            break
        }
    }

    /// STARTTLS was sent and its reply is the next one due (so a caller can say where a refusal came).
    public var awaitingStartTLSReply: Bool {
        expectedHead < expected.count && expected[expectedHead] == .startTLS
    }

    /// The TLS handshake after STARTTLS finished: EHLO again, under TLS.
    /// `peerVerified`: the next hop's certificate chained to a trusted root and named the host
    /// (REQUIRETLS messages need it).
    public mutating func tlsEstablished(peerVerified: Bool = false) -> [ClientAction] {
        guard phase == .startingTLS else { return [] }
        tlsActive = true
        self.peerVerified = peerVerified
        offered = nil
        capabilities = nil
        phase = .hello
        command("EHLO \(hostname)")
        expect(.ehlo)
        return takeActions()
    }
}
