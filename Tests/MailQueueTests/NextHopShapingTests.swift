import SMTPProtocol
import Testing
@testable import MailQueue

// What a connection tells traffic shaping, decided by NextHop: which replies [[backoff]] rules see,
// and when an attempt is one failed connection of its lane (dead destinations).

@Suite struct NextHopShapingTests {
    private func outcome(mail: Reply = Reply(250, "2.1.0", "ok"), rcpt: [Reply?], data: Reply?) -> TransactionOutcome {
        TransactionOutcome(mailReply: mail, recipientReplies: rcpt, dataReply: data)
    }

    @Test func backoffSeesEveryReplyThatWasNotPositiveInOrder() {
        #expect(NextHop.backoffReplies(outcome(rcpt: [Reply(250, "2.1.5", "ok")], data: Reply(250, "2.0.0", "queued"))).isEmpty,
                "it all went: nothing for the rules")
        let refusedMail = Reply(421, "4.7.0", "too many connections")
        #expect(NextHop.backoffReplies(outcome(mail: refusedMail, rcpt: [nil, nil], data: nil)) == [refusedMail],
                "recipients never sent are not replies")
        let busy = Reply(450, "4.2.0", "mailbox busy"), unknown = Reply(550, "5.1.1", "no such user")
        let rateLimited = Reply(451, "4.7.1", "rate limited, try again later")
        #expect(NextHop.backoffReplies(outcome(rcpt: [busy, Reply(250, "2.1.5", "ok"), unknown], data: rateLimited))
                    == [busy, unknown, rateLimited])
        // DATA's own refusal (not 354) is DATA's reply.
        let noData = Reply(554, "5.5.1", "no valid recipients")
        #expect(NextHop.backoffReplies(outcome(rcpt: [Reply(250, nil, "ok")], data: noData)) == [noData])
    }

    @Test func onlyAnAttemptThatReachedNoHostIsAFailedConnection() {
        let refused = RecipientResult.deferred("connect to mx[127.0.0.9]:25: ECONNREFUSED")
        #expect(NextHop.destinationFailure(hosts: 2, reachedHost: false, lastFailure: refused)
                    == "connect to mx[127.0.0.9]:25: ECONNREFUSED")
        // A host answered (its refusals are replies, for [[backoff]]).
        #expect(NextHop.destinationFailure(hosts: 2, reachedHost: true, lastFailure: refused) == nil)
        // No host to try: DNS or routing, not the destination's hosts.
        #expect(NextHop.destinationFailure(hosts: 0, reachedHost: false,
                                           lastFailure: .deferred("no MX", status: "4.4.3")) == nil)
        // A greeting refused counts: the session never became ready.
        let greeting = NextHop.sessionFailed(Reply(554, "5.7.1", "go away"), reason: "greeting")
        #expect(NextHop.destinationFailure(hosts: 1, reachedHost: false, lastFailure: greeting) == "554 5.7.1 go away")
    }
}
