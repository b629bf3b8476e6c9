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
        #expect(BlastSlot.replyStage(.greeting) == .greeting)
        #expect(BlastSlot.replyStage(.hello) == .ehlo)
        #expect(BlastSlot.replyStage(.mail) == .mail)
        #expect(BlastSlot.replyStage(.rcpt) == .rcpt)
        #expect(BlastSlot.replyStage(.dataEnd) == .data)
        #expect(BlastSlot.replyStage(.ready) == nil)
    }
}
