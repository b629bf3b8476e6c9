// What a next hop's replies mean for the recipients of one attempt (RFC 5321 §4.2.1, §5.1), as pure
// functions: the connection carries out the verdict, the delivery core records the results.
//
//   2xx for a recipient               delivered, final
//   5xx for a recipient               bounced, final: no other host is asked about it
//   4xx for some recipients           deferred: retried later, on the retry schedule
//   4xx for the whole transaction     the next MX host, in the same attempt: MAIL refused, the end of
//   (MAIL, end of data, or every      data refused, or no recipient accepted. What one host could not
//    recipient)                       take, another may.
//
// The session-level failures (a refused or timed-out connection, a greeting other than 220, a 421 at
// any point, a failed TLS handshake) also move on to the next host; ClientSession reports those as
// `sessionFailed`, before any transaction, so they never reach `judge`.

import SMTPProtocol

/// One recipient's result of an attempt: the kind, its RFC 3463 status (the log's dsn=, the bounce's
/// Status:), and the reply as one line for the log, the envelope and the bounce: the next hop's
/// ("550 5.1.1 no such user") or Tern's own reason ("connect to mx[192.0.2.1]:25: ECONNREFUSED").
public struct RecipientResult: Sendable, Equatable {
    public enum Kind: String, Sendable {
        case delivered, deferred, bounced
    }

    public var kind: Kind
    public var status: String
    public var reply: String
    /// The failure is this recipient's own: its RCPT reply, or Tern's routing of its domain (NXDOMAIN,
    /// null MX). False when the whole transaction was refused (MAIL, DATA): a sender's problem must not
    /// suppress its recipients.
    public var recipientSpecific = false

    public init(_ kind: Kind, status: String, reply: String) {
        self.kind = kind
        self.status = status
        self.reply = reply
    }

    /// From the next hop's reply: its class decides the kind, its enhanced code (else x.0.0) the status.
    public init(_ reply: Reply) {
        let kind: Kind = reply.isPositive ? .delivered : (reply.isPermanentFailure ? .bounced : .deferred)
        let fallback = kind == .delivered ? "2.0.0" : (kind == .bounced ? "5.0.0" : "4.0.0")
        self.init(kind, status: reply.enhanced ?? fallback, reply: NextHop.text(of: reply))
    }

    /// A temporary failure in Tern's own words (no route, no host reachable): 4.4.1 unless given.
    public static func deferred(_ reason: String, status: String = "4.4.1") -> RecipientResult {
        RecipientResult(.deferred, status: status, reply: reason)
    }
}

public enum NextHop {
    /// What one transaction on one host concluded for the recipients it carried (in the order they were
    /// sent): `results[k]` is final or deferred for recipient k, and `tryNextHost` says the attempt goes on
    /// to the next MX host with the recipients whose result is deferred.
    public struct Verdict: Sendable, Equatable {
        public var results: [RecipientResult]
        public var tryNextHost: Bool
    }

    /// `moreHosts`: the destination has hosts left to try in this attempt. A refusal of this host only
    /// (`thisHostOnly`: it lacks BINARYMIME, or REQUIRETLS under verified TLS) then moves on to the next
    /// host, its recipients deferred meanwhile (RFC 8689 §4.2.1: every MX host is tried); at the last
    /// host it is final like any 5xx.
    public static func judge(_ outcome: TransactionOutcome, moreHosts: Bool = false) -> Verdict {
        var verdict = judgeTransaction(outcome, moreHosts: moreHosts)
        for i in verdict.results.indices where i < outcome.recipientReplies.count {
            if let r = outcome.recipientReplies[i], !r.isPositive, !outcome.refusedHere {
                verdict.results[i].recipientSpecific = true
            }
        }
        return verdict
    }

    static func judgeTransaction(_ outcome: TransactionOutcome, moreHosts: Bool) -> Verdict {
        if outcome.thisHostOnly && moreHosts {
            let r = outcome.mailReply
            let status = r.enhanced.map { "4" + $0.dropFirst() } ?? "4.0.0"
            let waiting = RecipientResult(.deferred, status: status, reply: text(of: r))
            return Verdict(results: Array(repeating: waiting, count: outcome.recipientReplies.count), tryNextHost: true)
        }
        let results = outcome.recipientReplies.indices.map { RecipientResult(outcome.result(forRecipient: $0)) }
        let temporary = results.count { $0.kind == .deferred }
        let wholeTransaction = outcome.mailReply.isTransientFailure
            || (outcome.dataReply?.isTransientFailure ?? false)
            || (!results.isEmpty && temporary == results.count)
        return Verdict(results: results, tryNextHost: temporary > 0 && wholeTransaction)
    }

    /// The recipients' result when the whole session failed before or during a transaction (ClientSession's
    /// `sessionFailed`: a refused greeting, a 421, a failed EHLO or STARTTLS, a garbled reply). Such a
    /// failure always moves on to the next host and is never final: a 4xx keeps its own status, and a 5xx
    /// refusal of the whole session (a 554 greeting) is only this host's, so the recipients wait for
    /// another (Postfix's smtp_skip_5xx_greeting) as 4.4.1, as does a failure without a reply.
    public static func sessionFailed(_ reply: Reply?, reason: String) -> RecipientResult {
        guard let reply else { return .deferred(reason, status: "4.4.1") }
        let status = reply.isTransientFailure ? reply.enhanced ?? "4.0.0" : "4.4.1"
        return RecipientResult(.deferred, status: status, reply: text(of: reply))
    }

    /// The replies of a transaction that [[backoff]] rules are asked about: every one that was not
    /// positive (MAIL, each RCPT, DATA or the end of data), in the order they came. None when it all
    /// went (no array is made then: this runs for every message). None for a refusal of Tern's own
    /// making (`refusedHere`: SIZE, SMTPUTF8, BINARYMIME, REQUIRETLS): the destination said nothing.
    public static func backoffReplies(_ outcome: TransactionOutcome) -> [Reply] {
        if outcome.refusedHere { return [] }
        var out: [Reply] = []
        if !outcome.mailReply.isPositive { out.append(outcome.mailReply) }
        for case let r? in outcome.recipientReplies where !r.isPositive { out.append(r) }
        if let r = outcome.dataReply, !r.isPositive { out.append(r) }
        return out
    }

    /// An attempt that went through every host of its destination counts as one failed connection of
    /// its lane (dead destinations, Shaper.connectionFailed) when there were hosts to try and none got
    /// as far as a ready session (refused, timed out, a failing greeting, EHLO or TLS): the reason is
    /// the last host's failure. Nil when a host answered (its replies are [[backoff]]'s business) or
    /// there was no host (a DNS or routing failure says nothing about the destination's hosts).
    public static func destinationFailure(hosts: Int, reachedHost: Bool, lastFailure: RecipientResult) -> String? {
        guard hosts > 0, !reachedHost else { return nil }
        return lastFailure.reply
    }

    /// A reply as one log and envelope line: "550 5.1.1 no such user".
    public static func text(of reply: Reply) -> String {
        var s = "\(reply.code)"
        if let e = reply.enhanced { s += " " + e }
        let t = reply.lines.joined(separator: " ")
        if !t.isEmpty { s += " " + t }
        return s
    }
}
