import Testing
@testable import MailQueue

private func qid(_ n: Int) -> QueueID { QueueID(microseconds: 1_700_000_000_000_000 + UInt64(n)) }

/// What the delivery side's connection cache asks of the scheduler: which destinations with a
/// connection got work, and whether a job waits for a slot that only an idle connection could free.
@Suite struct SchedulerIdleConnectionTests {
    @Test func promotionReportsOnlyDestinationsHoldingAConnection() {
        var s = Scheduler(maxConnections: 10, maxConnectionsPerDestination: 2)
        s.add(DeliveryJob(id: qid(1), destination: "a.example", recipients: [0], arrival: 1), due: 1)
        let r1 = s.dispatch(now: 1)
        #expect(r1.map(\.id) == [qid(1)], "a.example now holds a slot")
        let r2 = s.next(for: "a.example", now: 1)
        #expect(r2 == nil, "nothing more: its connection would idle")

        s.add(DeliveryJob(id: qid(2), destination: "A.example", recipients: [0], arrival: 2), due: 5)
        s.add(DeliveryJob(id: qid(3), destination: "a.example", recipients: [0], arrival: 3), due: 5)
        s.add(DeliveryJob(id: qid(4), destination: "b.example", recipients: [0], arrival: 4), due: 5)
        s.add(DeliveryJob(id: qid(5), destination: "a.example", recipients: [0], arrival: 5), due: 50)
        let r3 = s.promoteReadyForConnections(now: 4)
        #expect(r3.isEmpty, "nothing due yet")
        let r4 = s.promoteReadyForConnections(now: 5)
        #expect(r4 == ["a.example"], "once, and not b.example (no connection)")
        let r5 = s.promoteReadyForConnections(now: 6)
        #expect(r5.isEmpty, "already promoted")
        // The idle connection takes a.example's ready jobs in order; the later one is not due.
        let r6 = s.next(for: "a.example", now: 6)
        #expect(r6?.id == qid(2))
        let r7 = s.next(for: "a.example", now: 6)
        #expect(r7?.id == qid(3))
        let r8 = s.next(for: "a.example", now: 6)
        #expect(r8 == nil)
        #expect(s.activeConnections == 1, "the idle connection kept its slot throughout")
        // b.example's job was promoted too: dispatch gives it a new connection.
        let r9 = s.dispatch(now: 6)
        #expect(r9.map(\.id) == [qid(4)])
        #expect(s.nextDueTime == 50)
    }

    /// A job promoted while another destination's connection asked for work (next(for:)) is still
    /// reported for its own destination's idle connection at the next promoteReadyForConnections.
    @Test func promotionByAnotherDestinationsRequestIsReportedLater() {
        var s = Scheduler(maxConnections: 10, maxConnectionsPerDestination: 1)
        s.add(DeliveryJob(id: qid(1), destination: "x.example", recipients: [0], arrival: 1), due: 1)
        s.add(DeliveryJob(id: qid(2), destination: "y.example", recipients: [0], arrival: 2), due: 1)
        let started = s.dispatch(now: 1)
        #expect(started.count == 2, "both destinations hold a slot (their connections idle after)")
        s.add(DeliveryJob(id: qid(3), destination: "y.example", recipients: [0], arrival: 3), due: 5)
        let forX = s.next(for: "x.example", now: 6)  // promotes y's job on the way
        #expect(forX == nil)
        let reported = s.promoteReadyForConnections(now: 6)
        #expect(reported == ["y.example"])
        let forY = s.next(for: "y.example", now: 6)
        #expect(forY?.id == qid(3))
    }

    @Test func jobWaitingForSlotOnlyWhenEverySlotIsTaken() {
        var s = Scheduler(maxConnections: 2, maxConnectionsPerDestination: 1)
        let r10 = s.hasJobWaitingForSlot()
        #expect(!r10)
        s.add(DeliveryJob(id: qid(1), destination: "a.example", recipients: [0], arrival: 1), due: 1)
        s.add(DeliveryJob(id: qid(2), destination: "b.example", recipients: [0], arrival: 2), due: 1)
        let r11 = s.dispatch(now: 1)
        #expect(r11.count == 2)
        let r12 = s.hasJobWaitingForSlot()
        #expect(!r12, "no job waits")

        // Another a.example job: its destination is at its own limit, so a free slot would not help it.
        s.add(DeliveryJob(id: qid(3), destination: "a.example", recipients: [0], arrival: 3), due: 2)
        let r13 = s.dispatch(now: 2)
        #expect(r13.isEmpty)
        let r14 = s.hasJobWaitingForSlot()
        #expect(!r14)

        // A c.example job could start if a slot were free.
        s.add(DeliveryJob(id: qid(4), destination: "c.example", recipients: [0], arrival: 4), due: 2)
        let r15 = s.dispatch(now: 2)
        #expect(r15.isEmpty)
        let r16 = s.hasJobWaitingForSlot()
        #expect(r16)

        // b.example's (idle) connection closes: c.example gets the slot and nothing waits any more.
        s.release(destination: "b.example")
        let r17 = s.dispatch(now: 3)
        #expect(r17.map(\.id) == [qid(4)])
        let r18 = s.hasJobWaitingForSlot()
        #expect(!r18)
    }

    @Test func removedJobDoesNotCountAsWaiting() {
        var s = Scheduler(maxConnections: 1, maxConnectionsPerDestination: 1)
        s.add(DeliveryJob(id: qid(1), destination: "a.example", recipients: [0], arrival: 1), due: 1)
        let r19 = s.dispatch(now: 1)
        #expect(r19.count == 1)
        s.add(DeliveryJob(id: qid(2), destination: "b.example", recipients: [0], arrival: 2), due: 1)
        let r20 = s.dispatch(now: 1)
        #expect(r20.isEmpty)
        let r21 = s.hasJobWaitingForSlot()
        #expect(r21)
        s.remove(id: qid(2))  // deleted by the postmaster
        let r22 = s.hasJobWaitingForSlot()
        #expect(!r22, "its candidate entry is stale")
    }
}
