// What a `tern blast` run counted and timed: per-stage latency histograms (HdrHistogram, in
// microseconds) and counters. Pure: the runner records into it; BlastReport reads it.
//
// Stage latencies are the time a stage added: from the moment the previous stage was done (or the
// commands were written) until its reply arrived. Without pipelining that is one round trip per
// command; with pipelining MAIL, RCPT and DATA go out together, so MAIL measures the first round
// trip and RCPT and DATA only the extra wait for their replies. "DATA end" runs from the 354 (when
// the message is written) to the final reply. "transaction" is the whole MAIL … final reply.
// Replies are counted as they arrive (ClientSession.repliesSeen), each where its command is: the
// 354 under DATA, the reply after the final "." under DATA end, and a reply on a session dropped
// later counts all the same. With BDAT the reply to a chunk before the last counts under DATA, the
// one to the LAST chunk under DATA end; there is no DATA latency (no 354 to wait for).
// "TLS" runs from the 220 to STARTTLS to the end of the handshake; "handshake" (handshake mode) is
// a whole handshake session, from the start of the connect to the reply to EHLO under TLS.

import Histogram
import SMTPProtocol

public enum Stage: Int, CaseIterable, Sendable {
    case connect, greeting, ehlo, tls, mail, rcpt, data, dataEnd, transaction, handshake

    public var name: String {
        switch self {
        case .connect: return "connect"
        case .greeting: return "greeting"
        case .ehlo: return "EHLO"
        case .tls: return "TLS"
        case .mail: return "MAIL"
        case .rcpt: return "RCPT"
        case .data: return "DATA"
        case .dataEnd: return "DATA end"
        case .transaction: return "transaction"
        case .handshake: return "handshake"
        }
    }

    /// The key in --json output.
    public var key: String {
        switch self {
        case .dataEnd: return "data_end"
        default: return name.lowercased()
        }
    }
}

/// Where replies are counted by class: the commands a load test cares about.
public enum ReplyStage: Int, CaseIterable, Sendable {
    case greeting, ehlo, starttls, mail, rcpt, data, dataEnd

    public var key: String {
        switch self {
        case .greeting: return "greeting"
        case .ehlo: return "ehlo"
        case .starttls: return "starttls"
        case .mail: return "mail"
        case .rcpt: return "rcpt"
        case .data: return "data"
        case .dataEnd: return "data_end"
        }
    }

    /// The row in the table, the same words as the latency rows.
    public var name: String {
        switch self {
        case .greeting: return "greeting"
        case .dataEnd: return "DATA end"
        default: return key.uppercased()
        }
    }

    /// Where a reply to `command` is counted; RSET and AUTH are not.
    public init?(_ command: RepliedCommand.Command) {
        switch command {
        case .greeting: self = .greeting
        case .ehlo, .helo: self = .ehlo
        case .startTLS: self = .starttls
        case .mail: self = .mail
        case .rcpt: self = .rcpt
        case .data, .bdat: self = .data
        case .dataEnd: self = .dataEnd
        case .rset, .auth: return nil
        }
    }
}

public struct BlastStats {
    /// Largest latency recorded: one hour in microseconds (longer ones are clamped to it).
    static let highest: UInt64 = 3_600_000_000

    public var latency: [Histogram<UInt64>]
    /// replies[stage][class]: class 2, 3, 4 or 5 at index 0…3.
    public var replies: [[Int]]

    /// Transactions whose end of data got a 2xx, and their accepted recipients and bytes.
    public var messagesAccepted = 0
    public var recipientsAccepted = 0
    public var bytesAccepted = 0
    /// Transactions refused with a 4xx or a 5xx (at MAIL, every RCPT, DATA or the end of data).
    public var messagesTempFailed = 0
    public var messagesPermFailed = 0
    /// Transactions lost to a broken connection, a timeout or a reply that is not SMTP.
    public var messagesFailed = 0
    /// Recipients refused (the RCPT reply), by class 4 and 5.
    public var recipientsTempFailed = 0
    public var recipientsPermFailed = 0

    public var connectionsOpened = 0
    /// Connections that could not be made (refused, timed out, no route, bind failed).
    public var connectFailures = 0
    /// Sessions given up before a transaction could start (greeting or EHLO refused, dropped, timed out).
    public var sessionFailures = 0
    /// Handshake mode: sessions that got through STARTTLS, the TLS handshake and EHLO under TLS, and
    /// attempts that did not (could not connect, STARTTLS refused or not offered, handshake failed,
    /// dropped, timed out). Every handshake the run claims ends as one or the other.
    public var handshakesCompleted = 0
    public var handshakesFailed = 0
    /// The first error of each kind seen, for the report ("connect: connection refused").
    public var firstErrors: [String] = []

    public init() {
        latency = Stage.allCases.map { _ in
            Histogram<UInt64>(lowestDiscernibleValue: 1, highestTrackableValue: Self.highest,
                              numberOfSignificantValueDigits: .three)
        }
        replies = ReplyStage.allCases.map { _ in [0, 0, 0, 0] }
    }

    public var messagesAttempted: Int { messagesAccepted + messagesTempFailed + messagesPermFailed + messagesFailed }
    public var handshakesAttempted: Int { handshakesCompleted + handshakesFailed }

    public mutating func record(_ stage: Stage, microseconds: UInt64) {
        latency[stage.rawValue].record(Swift.min(microseconds, Self.highest))
    }

    public mutating func count(_ stage: ReplyStage, code: Int) {
        let c = code / 100
        guard (2...5).contains(c) else { return }
        replies[stage.rawValue][c - 2] += 1
    }

    /// Counts replies as ClientSession saw them arrive.
    public mutating func count(_ seen: [RepliedCommand]) {
        for r in seen {
            if let stage = ReplyStage(r.command) { count(stage, code: r.code) }
        }
    }

    public mutating func noteError(_ text: String) {
        // A server's reply text goes to the terminal: its control characters escaped.
        let text = terminalSafe(text)
        if firstErrors.count < 5 && !firstErrors.contains(text) { firstErrors.append(text) }
    }

    /// Counts one finished transaction: the message as accepted (2xx at the end of data), temporarily
    /// or permanently refused, and its recipients. `size` is the message's size in bytes. (Its
    /// replies were counted as they came.)
    public mutating func account(_ o: TransactionOutcome, size: Int) {
        var accepted = 0
        var temporary = false
        for case let r? in o.recipientReplies {
            if r.code < 300 {
                accepted += 1
            } else if r.code < 500 {
                recipientsTempFailed += 1
                temporary = true
            } else {
                recipientsPermFailed += 1
            }
        }
        let refusal: Int
        if o.mailReply.code >= 300 {
            refusal = o.mailReply.code
        } else if accepted == 0 {
            refusal = temporary ? 450 : 550  // a 4xx among the refusals: worth trying again
        } else if let d = o.dataReply, d.code < 300 {
            messagesAccepted += 1
            recipientsAccepted += accepted
            bytesAccepted += size
            return
        } else {
            refusal = o.dataReply?.code ?? 451
        }
        if refusal < 500 { messagesTempFailed += 1 } else { messagesPermFailed += 1 }
    }
}
