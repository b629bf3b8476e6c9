// Refusals as events: every 4xx/5xx the server session answers also comes out as a `.refused`
// action, so that the I/O layer can count it by reason and log the ones a postmaster must be able to
// find ("why was my printer refused?"), with the envelope so far, as Postfix's
// "NOQUEUE: reject: RCPT from host[ip]: 554 5.7.1 <to>: Relay access denied; from=<…> to=<…> proto=ESMTP
// helo=<…>" line does. The machine stays pure: it says what it refused and why; InboundSession logs.

/// One refused command (or a session ended by the server: timeout, too many errors).
public struct Refusal: Equatable, Sendable {
    /// Why, as the metrics label it (`tern_commands_refused_total{reason=…}`).
    public enum Reason: String, Sendable, CaseIterable {
        case relayDenied = "relay_denied"
        case unknownRecipient = "unknown_recipient"
        case unrecognizedCommand = "unrecognized_command"
        case syntaxError = "syntax_error"
        case badSequence = "bad_sequence"
        case messageTooBig = "message_too_big"
        case tooManyRecipients = "too_many_recipients"
        case smtputf8Required = "smtputf8_required"
        /// Bare CR or LF, NUL or an over-long line in the message (SMTP smuggling, RFC 5321 §2.3.8).
        case badMessageData = "bad_message_data"
        /// Bare CR or LF in a command line.
        case bareLineEnd = "bare_line_end"
        case lineTooLong = "line_too_long"
        case badHelo = "bad_helo"
        case tooManyHops = "too_many_hops"
        case noValidRecipients = "no_valid_recipients"
        case authRequired = "auth_required"
        case authFailed = "auth_failed"
        case authLockedOut = "auth_locked_out"
        case senderNotOwned = "sender_not_owned"
        /// The recipient is on the suppression list (RecipientCheck).
        case suppressed
        case tlsUnavailable = "tls_unavailable"
        /// The TLS handshake failed (reported by the I/O layer, which sees it).
        case tlsFailed = "tls_failed"
        case timeout
        case tooManyErrors = "too_many_errors"
        case queueWriteError = "queue_write_error"
        case shuttingDown = "shutting_down"
        case other
    }

    public var reason: Reason
    /// The command refused, in Postfix's words: "RCPT", "MAIL", "DATA", "END-OF-MESSAGE", "AUTH", …;
    /// for a timeout or too many errors, the command the session was at.
    public var command: String
    public var reply: Reply
    /// The envelope so far.
    public var sender: MailPath?
    /// The recipient of a refused RCPT, else the first accepted one.
    public var recipient: String?
    /// Recipients accepted in the transaction.
    public var acceptedRecipients: Int
    public var helo: String?
    /// "SMTP", "ESMTP", "ESMTPS", … (RFC 3848).
    public var protocolName: String
    /// The user of a refused AUTH.
    public var user: String?
    /// Worth a log line: it ends the transaction or the session, or it is a policy refusal. A syntax
    /// error or an out-of-sequence command is only counted.
    public var logged: Bool
    /// About the message whose data was read (it has a queue id).
    public var inMessage: Bool

    /// What the log line opens with: "reject: RCPT", "timeout after DATA", "too many errors after RCPT".
    public var event: String {
        switch reason {
        case .timeout: return "timeout"
        case .tooManyErrors: return "too many errors"
        default: return "reject"
        }
    }
}

extension ServerSession {
    /// A refusal of the current command, with the envelope as it stands.
    func refusal(_ r: Reply, _ reason: Refusal.Reason, logged: Bool = false, recipient: String? = nil,
                 command: String? = nil, user: String? = nil, inMessage: Bool = false) -> Refusal {
        let t = transaction
        return Refusal(reason: reason, command: command ?? currentCommand, reply: r, sender: t?.sender,
                recipient: recipient ?? t?.recipients.first, acceptedRecipients: t?.recipients.count ?? 0, helo: helo,
                protocolName: protocolName, user: user, logged: logged, inMessage: inMessage)
    }

    /// The reason a reply's enhanced status code stands for, for refusals that name none.
    static func reason(of r: Reply) -> Refusal.Reason {
        switch r.enhanced {
        case "5.7.1": return .relayDenied
        case "5.1.1": return .unknownRecipient
        case "5.5.2": return .unrecognizedCommand
        case "5.5.4": return .syntaxError
        case "5.5.1": return .badSequence
        case "5.3.4": return .messageTooBig
        case "4.5.3": return .tooManyRecipients
        case "5.6.7": return .smtputf8Required
        case "5.6.0": return .badMessageData
        case "5.4.6": return .tooManyHops
        default: return .other
        }
    }

    /// Reasons that are a postmaster's business even when the session goes on.
    static func isLogged(_ reason: Refusal.Reason) -> Bool {
        switch reason {
        case .unrecognizedCommand, .syntaxError, .badSequence, .other, .tlsUnavailable: return false
        default: return true
        }
    }

    /// "RCPT", "MAIL", …: the verb of a command line (letters only, at most 12), else "UNKNOWN".
    static func verb(of line: [UInt8]) -> String {
        var out: [UInt8] = []
        for b in line {
            if b == UInt8(ascii: " ") || b == 13 || b == 10 { break }
            let upper = (b >= 97 && b <= 122) ? b - 32 : b
            guard upper >= 65 && upper <= 90, out.count < 12 else { return "UNKNOWN" }
            out.append(upper)
        }
        return out.isEmpty ? "UNKNOWN" : String(decoding: out, as: UTF8.self)
    }
}

extension ServerSession {
    /// A HELO/EHLO line whose name is valid UTF-8 without control characters (C0, DEL, and C1, which
    /// a terminal acts on as it does on ESC): the name goes into the Received header, where a NUL or a
    /// stray byte would come out as "?" or U+FFFD.
    static func isPrintableHeloName(_ line: [UInt8]) -> Bool {
        guard let space = line.firstIndex(of: UInt8(ascii: " ")) else { return true }
        let name = trimmed(line[(space + 1)...])
        if name.contains(where: { $0 < 0x20 || $0 == 0x7F }) { return false }
        if name.allSatisfy({ $0 < 0x80 }) { return true }
        guard let text = String(validating: name, as: UTF8.self) else { return false }
        return !text.unicodeScalars.contains { (0x80...0x9F).contains($0.value) }
    }
}

extension Command {
    /// The verb, as logs name it.
    var verb: String {
        switch self {
        case .helo: return "HELO"
        case .ehlo: return "EHLO"
        case .mail: return "MAIL"
        case .rcpt: return "RCPT"
        case .data: return "DATA"
        case .rset: return "RSET"
        case .noop: return "NOOP"
        case .quit: return "QUIT"
        case .help: return "HELP"
        case .vrfy: return "VRFY"
        case .expn: return "EXPN"
        case .startTLS: return "STARTTLS"
        case .auth: return "AUTH"
        case .bdat: return "BDAT"
        }
    }
}
