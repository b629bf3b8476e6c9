// STARTTLS (RFC 3207) and SMTP AUTH (RFC 4954, mechanisms PLAIN RFC 4616 and LOGIN) on the server
// side. Like the rest of ServerSession, no I/O: the TLS handshake and the password check are actions
// for the caller, which answers with `tlsEstablished` and `authFinished`.
//
//   454 4.7.0 TLS not available                    503 5.5.1 already under TLS / in a transaction
//   538 5.7.11 AUTH before STARTTLS                 503 5.5.1 AUTH not enabled / already authenticated
//   504 5.5.4 unknown mechanism                     501 5.5.2 response not base64; 501 5.0.0 aborted (*)
//   535 5.7.8 wrong credentials                     454 4.7.0 too many failures from this address
//   530 5.7.0 submission: AUTH (or STARTTLS) first  553 5.7.1 sender not owned by the authenticated user

/// The outcome of a credentials check.
public enum AuthResult: Equatable, Sendable {
    /// `allowedSenders`: the MAIL FROM addresses (or "@domain" entries) the user may use; nil: any.
    case success(allowedSenders: [String]?)
    case failure
    /// Too many failures from this client: a temporary refusal that does not say whether the
    /// credentials were right.
    case lockedOut
}

/// Where a SASL exchange stands between 334 challenges.
enum SASLExchange: Equatable, Sendable {
    case plain
    case loginUser
    case loginPassword(user: String)
}

extension ServerSession {
    var offersStartTLS: Bool { config.startTLS && !tlsActive }

    var offersAuth: Bool { config.authEnabled && (tlsActive || client.cleartextAuthAllowed) }

    /// 512 octets for commands (RFC 5321 §4.5.3.1.4), but 12288 where AUTH lines may come (RFC 4954 §4).
    var commandLineLimit: Int {
        phase == .authChallenge || (phase == .ready && offersAuth && authenticatedUser == nil)
            ? Self.maxAuthLine : Self.maxCommandLine
    }

    static let maxAuthLine = 12288

    /// "ESMTP" plus S under TLS and A when authenticated (RFC 3848); UTF8SMTP likewise (RFC 6531).
    public var protocolName: String {
        guard esmtp else { return "SMTP" }
        var name = transaction?.smtputf8 == true ? "UTF8SMTP" : "ESMTP"
        if tlsActive { name += "S" }
        if authenticatedUser != nil { name += "A" }
        return name
    }

    // MARK: STARTTLS

    mutating func startTLS() {
        guard config.startTLS else { return fail(Reply(454, "4.7.0", "TLS not available"), .tlsUnavailable) }
        guard !tlsActive else { return fail(Reply(503, "5.5.1", "Error: TLS already active")) }
        guard phase == .connected || phase == .ready else {
            return fail(Reply(503, "5.5.1", "Error: MAIL transaction in progress"))
        }
        reply(Reply(220, "2.0.0", "Ready to start TLS"))
        state = .startingTLS
        emit(.startTLS)
    }

    /// The TLS handshake finished. After STARTTLS the session starts over (RFC 3207 §4.2): no HELO,
    /// no transaction, no authentication carried over from the clear.
    public mutating func tlsEstablished(_ summary: String) -> [ServerAction] {
        guard phase != .closed else { return [] }
        tlsActive = true
        tlsSummary = summary
        if case .startingTLS = state {
            helo = nil
            esmtp = false
            authenticatedUser = nil
            allowedSenders = nil
            inbox = []
            state = .connected
        }
        return takeActions()
    }

    // MARK: AUTH

    mutating func auth(_ mechanism: String, _ initial: String?) {
        guard config.authEnabled else { return fail(Reply(503, "5.5.1", "Error: authentication not enabled")) }
        guard offersAuth else {
            return fail(Reply(538, "5.7.11", "Encryption required for requested authentication mechanism"))
        }
        guard phase != .connected else { return fail(Reply(503, "5.5.1", "Error: send HELO/EHLO first")) }
        guard authenticatedUser == nil else { return fail(Reply(503, "5.5.1", "Error: already authenticated")) }
        guard phase == .ready else { return fail(Reply(503, "5.5.1", "Error: MAIL transaction in progress")) }
        switch mechanism {
        case "PLAIN":
            if let initial {
                saslStep(Array(initial.utf8), .plain)
            } else {
                state = .authChallenge(.plain)
                reply(Reply(334, nil, ""))
            }
        case "LOGIN":
            if let initial {
                saslStep(Array(initial.utf8), .loginUser)
            } else {
                state = .authChallenge(.loginUser)
                reply(Reply(334, nil, Base64.encode("Username:")))
            }
        default:
            fail(Reply(504, "5.5.4", "Error: unsupported authentication mechanism"))
        }
    }

    /// A line while a 334 is outstanding: base64, or "*" to cancel (RFC 4954 §4).
    mutating func handleSASLResponse(_ line: [UInt8], _ exchange: SASLExchange) {
        if line == [UInt8(ascii: "*")] {
            state = .ready
            return fail(Reply(501, "5.0.0", "Authentication aborted"))
        }
        saslStep(line, exchange)
    }

    /// One step of `exchange`, with a response (or the initial response on the AUTH line).
    mutating func saslStep(_ encoded: [UInt8], _ exchange: SASLExchange) {
        // "=" is an empty initial response (RFC 4954 §4).
        let decoded = encoded == [UInt8(ascii: "=")] ? [] : Base64.decode(encoded)
        guard let decoded else {
            state = .ready
            return fail(Reply(501, "5.5.2", "Error: cannot decode response"))
        }
        switch exchange {
        case .plain:
            // authzid NUL authcid NUL passwd (RFC 4616 §2); an authzid other than the user is not allowed.
            let parts = decoded.split(separator: 0, maxSplits: 2, omittingEmptySubsequences: false)
            guard parts.count == 3, let authz = String(validating: parts[0], as: UTF8.self),
                  let user = String(validating: parts[1], as: UTF8.self),
                  let password = String(validating: parts[2], as: UTF8.self), !user.isEmpty,
                  authz.isEmpty || authz == user
            else {
                state = .ready
                return fail(Reply(535, "5.7.8", "Error: authentication failed"), .authFailed, logged: true)
            }
            guard isAcceptableUserName(user) else { return refuseUserName(user) }
            checkCredentials(user: user, password: password)
        case .loginUser:
            guard let user = String(validating: decoded, as: UTF8.self), !user.isEmpty else {
                state = .ready
                return fail(Reply(535, "5.7.8", "Error: authentication failed"), .authFailed, logged: true)
            }
            guard isAcceptableUserName(user) else { return refuseUserName(user) }
            state = .authChallenge(.loginPassword(user: user))
            reply(Reply(334, nil, Base64.encode("Password:")))
        case .loginPassword(let user):
            guard let password = String(validating: decoded, as: UTF8.self) else {
                state = .ready
                return fail(Reply(535, "5.7.8", "Error: authentication failed"), .authFailed, logged: true, user: user)
            }
            checkCredentials(user: user, password: password)
        }
    }

    /// A name no users file holds (control characters, spaces, ':', over 256 bytes) is refused before
    /// any password check, as a failed login (535, logged and counted as auth_failed, which is what
    /// fail2ban watches) rather than as a syntax error, which is not logged. LOGIN refuses it at once,
    /// without asking for the password.
    mutating func refuseUserName(_ user: String) {
        state = .ready
        fail(Reply(535, "5.7.8", "Error: authentication failed: invalid user name"), .authFailed, logged: true,
             user: user)
    }

    mutating func checkCredentials(user: String, password: String) {
        state = .authenticating(user: user)
        emit(.authenticate(user: user, password: password))
    }

    /// The answer to `.authenticate`. Input read meanwhile waits in the inbox and is handled now.
    public mutating func authFinished(_ result: AuthResult) -> [ServerAction] {
        guard case .authenticating(let user) = state else { return [] }
        state = .ready
        switch result {
        case .success(let senders):
            authenticatedUser = user
            allowedSenders = senders
            reply(Reply(235, "2.7.0", "Authentication successful"))
        case .failure:
            fail(Reply(535, "5.7.8", "Error: authentication failed"), .authFailed, logged: true, user: user)
        case .lockedOut:
            fail(Reply(454, "4.7.0", "Error: too many failed authentications, try again later"), .authLockedOut,
                 logged: true, user: user)
        }
        drainInbox()
        flushDataOut(force: false)
        return takeActions()
    }

    // MARK: MAIL FROM on submission

    /// Why MAIL FROM is refused before the transaction starts, or nil.
    func senderRefusal(_ path: MailPath) -> (Reply, Refusal.Reason)? {
        if config.requireAuth && authenticatedUser == nil {
            if offersStartTLS && !offersAuth {
                return (Reply(530, "5.7.0", "Must issue a STARTTLS command first"), .authRequired)
            }
            return (Reply(530, "5.7.0", "Authentication required"), .authRequired)
        }
        if let allowed = allowedSenders, let user = authenticatedUser {
            let address = path.address.lowercased()
            let domain = address.lastIndex(of: "@").map { String(address[$0...]) }
            let owned = allowed.contains { entry in
                let e = entry.lowercased()
                return e == address || (e.hasPrefix("@") && e == domain)
            }
            if !owned {
                return (Reply(553, "5.7.1", "<\(path.address)>: Sender address rejected: not owned by user \(user)"),
                        .senderNotOwned)
            }
        }
        return nil
    }
}

/// A user name as the users file, `tern passwd` and AUTH accept it (UsersFile.isValidUserName is this):
/// 1-256 bytes of printable characters without spaces or ':'; C1 controls are not printable either,
/// nor are invisible format characters (a byte order mark, bidi overrides) or Unicode separators.
public func isAcceptableUserName(_ name: String) -> Bool {
    !name.isEmpty && name.utf8.count <= 256
        && name.unicodeScalars.allSatisfy { scalar in
            switch scalar.properties.generalCategory {
            case .control, .format, .spaceSeparator, .lineSeparator, .paragraphSeparator: return false
            default: return scalar.value > 32 && scalar != ":"
            }
        }
}
