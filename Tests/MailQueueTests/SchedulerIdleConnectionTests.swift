import Testing
@testable import MailQueue

private func qid(_ n: Int) -> QueueID { QueueID(microseconds: 1_700_000_000_000_000 + UInt64(n)) }

/// What the delivery side's connection cache asks of the scheduler: which destinations with a
/// connection got work, and whether a job waits for a slot that only an idle connection could free.
@Suite struct SchedulerIdleConnectionTests {
    @Test func promotionReportsOnlyDestinationsHoldingAConnection() {
        var s = Scheduler(maxConnections: 10, maxConnectionsPerDestination: 2)
        s.add(DeliveryJob(id: qid(1), destination: "a.example", recipients: [0], arrival: 1), due: 1)
        #expect(s.dispatch(now: 1).map(\.id) == [qid(1)], "a.example now holds a slot")
        #expect(s.next(for: "a.example", now: 1) == nil, "nothing more: its connection would idle")

        s.add(DeliveryJob(id: qid(2), destination: "A.example", recipients: [0], arrival: 2), due: 5)
        s.add(DeliveryJob(id: qid(3), destination: "a.example", recipients: [0], arrival: 3), due: 5)
        s.add(DeliveryJob(id: qid(4), destination: "b.example", recipients: [0], arrival: 4), due: 5)
        s.add(DeliveryJob(id: qid(5), destination: "a.example", recipients: [0], arrival: 5), due: 50)
        #expect(s.promoteReadyForConnections(now: 4).isEmpty, "nothing due yet")
        #expect(s.promoteReadyForConnections(now: 5) == ["a.example"], "once, and not b.example (no connection)")
        #expect(s.promoteReadyForConnections(now: 6).isEmpty, "already promoted")
        // The idle connection takes a.example's ready jobs in order; the later one is not due.
        #expect(s.next(for: "a.example", now: 6)?.id == qid(2))
        #expect(s.next(for: "a.example", now: 6)?.id == qid(3))
        #expect(s.next(for: "a.example", now: 6) == nil)
        #expect(s.activeConnections == 1, "the idle connection kept its slot throughout")
        // b.example's job was promoted too: dispatch gives it a new connection.
        #expect(s.dispatch(now: 6).map(\.id) == [qid(4)])
        #expect(s.nextDueTime == 50)
    }

    @Test func jobWaitingForSlotOnlyWhenEverySlotIsTaken() {
        var s = Scheduler(maxConnections: 2, maxConnectionsPerDestination: 1)
        #expect(!s.hasJobWaitingForSlot())
        s.add(DeliveryJob(id: qid(1), destination: "a.example", recipients: [0], arrival: 1), due: 1)
        s.add(DeliveryJob(id: qid(2), destination: "b.example", recipients: [0], arrival: 2), due: 1)
        #expect(s.dispatch(now: 1).count == 2)
        #expect(!s.hasJobWaitingForSlot(), "no job waits")

        // Another a.example job: its destination is at its own limit, so a free slot would not help it.
        s.add(DeliveryJob(id: qid(3), destination: "a.example", recipients: [0], arrival: 3), due: 2)
        #expect(s.dispatch(now: 2).isEmpty)
        #expect(!s.hasJobWaitingForSlot())

        // A c.example job could start if a slot were free.
        s.add(DeliveryJob(id: qid(4), destination: "c.example", recipients: [0], arrival: 4), due: 2)
        #expect(s.dispatch(now: 2).isEmpty)
        #expect(s.hasJobWaitingForSlot())

        // b.example's (idle) connection closes: c.example gets the slot and nothing waits any more.
        s.release(destination: "b.example")
        #expect(s.dispatch(now: 3).map(\.id) == [qid(4)])
        #expect(!s.hasJobWaitingForSlot())
    }

    @Test func removedJobDoesNotCountAsWaiting() {
        var s = Scheduler(maxConnections: 1, maxConnectionsPerDestination: 1)
        s.add(DeliveryJob(id: qid(1), destination: "a.example", recipients: [0], arrival: 1), due: 1)
        #expect(s.dispatch(now: 1).count == 1)
        s.add(DeliveryJob(id: qid(2), destination: "b.example", recipients: [0], arrival: 2), due: 1)
        #expect(s.dispatch(now: 1).isEmpty)
        #expect(s.hasJobWaitingForSlot())
        s.remove(id: qid(2))  // deleted by the postmaster
        #expect(!s.hasJobWaitingForSlot(), "its candidate entry is stale")
    }
}
