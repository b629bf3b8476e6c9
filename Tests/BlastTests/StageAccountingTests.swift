import Testing
import SMTPProtocol
@testable import Blast

/// Which stages a finished transaction is timed for, and where a session-ending reply is counted.
@Suite struct StageAccountingTests {
    static func o(mail: Int = 250, rcpts: [Int?] = [250], data: Int? = 250) -> TransactionOutcome {
        TransactionOutcome(mailReply: Reply(mail, nil, "x"), recipientReplies: rcpts.map { $0.map { Reply($0, nil, "x") } },
                           dataReply: data.map { Reply($0, nil, "x") })
    }

    @Test func refusedTransactionsAreNotTimedForStagesTheyNeverHad() {
        // MAIL refused: MAIL only, even when everything came in one read (from MAIL on).
        #expect(BlastSlot.lastStage(Self.o(mail: 550, rcpts: [nil], data: nil), from: 0) == 0)
        // No recipient accepted: up to RCPT.
        #expect(BlastSlot.lastStage(Self.o(rcpts: [550, 450], data: nil), from: 0) == 1)
        #expect(BlastSlot.lastStage(Self.o(rcpts: [550], data: 554), from: 1) == 1)
        // Accepted: through the end of data.
        #expect(BlastSlot.lastStage(Self.o(), from: 0) == 3)
        #expect(BlastSlot.lastStage(Self.o(), from: 3) == 3)
        // Refused at DATA (waiting for the 354) or at the end of data.
        #expect(BlastSlot.lastStage(Self.o(data: 554), from: 2) == 2)
        #expect(BlastSlot.lastStage(Self.o(data: 451), from: 3) == 3)
    }

    @Test func phasesMapToStages() {
        #expect([ClientSession.Phase.mail, .rcpt, .data, .dataEnd].map { BlastSlot.ordinal($0) } == [0, 1, 2, 3])
        #expect(BlastSlot.ordinal(.ready) == nil && BlastSlot.ordinal(.greeting) == nil)
        #expect(BlastSlot.transactionStages == [.mail, .rcpt, .data, .dataEnd])
        #expect(ReplyStage(.greeting) == .greeting)
        #expect(ReplyStage(.helo) == .ehlo)
        #expect(ReplyStage(.startTLS) == .starttls)
        #expect(ReplyStage(.data) == .data)
        #expect(ReplyStage(.dataEnd) == .dataEnd)
        #expect(ReplyStage(.rset) == nil && ReplyStage(.auth) == nil)
    }

    /// The session the server dropped after it answered MAIL, RCPT and DATA (354): those replies
    /// count, though the transaction is lost. Before issue 13 they were counted only from a finished
    /// transaction's outcome, so a dropped one left MAIL 2xx short of the MAIL latencies.
    @Test func repliesOfADroppedSessionAreCounted() {
        var session = ClientSession(hostname: "blast.test")
        session.repliesSeen = []
        var stats = BlastStats()
        _ = session.receive(Array("220 sink.test ESMTP\r\n".utf8))
        _ = session.receive(Array("250-sink.test\r\n250 PIPELINING\r\n".utf8))
        _ = session.send(OutboundTransaction(sender: "a@b.test", recipients: ["c@d.test"], size: 5),
                         wireData: Array("x\r\n".utf8))
        // Split mid-reply: each reply is counted once, when it is whole.
        _ = session.receive(Array("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n35".utf8))
        _ = session.receive(Array("4 End data with <CR><LF>.<CR><LF>\r\n".utf8))
        stats.count(session.repliesSeen!)
        // The connection drops here, the end of data never answered.
        let actions = session.timedOut()
        #expect(actions.contains { if case .sessionFailed = $0 { return true } else { return false } })
        stats.count(session.repliesSeen!.dropFirst(5).map { $0 })
        #expect(session.repliesSeen!.count == 5)
        #expect(stats.replies[ReplyStage.greeting.rawValue] == [1, 0, 0, 0])
        #expect(stats.replies[ReplyStage.ehlo.rawValue] == [1, 0, 0, 0])
        #expect(stats.replies[ReplyStage.mail.rawValue] == [1, 0, 0, 0])
        #expect(stats.replies[ReplyStage.rcpt.rawValue] == [1, 0, 0, 0])
        #expect(stats.replies[ReplyStage.data.rawValue] == [0, 1, 0, 0])
        #expect(stats.replies[ReplyStage.dataEnd.rawValue] == [0, 0, 0, 0])
    }
}
