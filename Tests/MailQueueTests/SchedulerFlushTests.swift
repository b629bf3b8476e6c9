import Testing
@testable import MailQueue

private func qid(_ n: Int) -> QueueID { QueueID(microseconds: 1_700_000_000_000_000 + UInt64(n)) }

/// The postmaster's operations on the scheduler: what is queued for a message or a domain, making it
/// due now (flush), removing it (hold, delete, bounce), and counting messages for the queue gauges.
@Suite struct SchedulerFlushTests {
    func scheduler() -> Scheduler {
        var s = Scheduler(maxConnections: 10, maxConnectionsPerDestination: 2)
        s.add(DeliveryJob(id: qid(1), destination: "a.example", recipients: [0, 1], arrival: 1), due: 1000)
        s.add(DeliveryJob(id: qid(1), destination: "b.example", recipients: [2], arrival: 1, retry: true), due: 2000)
        s.add(DeliveryJob(id: qid(2), destination: "a.example", recipients: [0], priority: 5, arrival: 2), due: 3000)
        s.add(DeliveryJob(id: qid(3), destination: "c.example", recipients: [0], arrival: 3), due: 50)
        return s
    }

    @Test func queuedJobsOfAMessageAndOfADomain() {
        let s = scheduler()
        #expect(Set(s.queuedJobs(of: qid(1)).map(\.destination)) == ["a.example", "b.example"])
        #expect(s.queuedJobs(of: qid(1)).first { $0.destination == "a.example" }?.recipients == [0, 1])
        #expect(s.queuedJobs(of: qid(1)).first { $0.destination == "b.example" }?.retry == true)
        #expect(s.queuedJobs(of: qid(9)).isEmpty)
        #expect(Set(s.queuedJobs(destination: "A.Example").map(\.id)) == [qid(1), qid(2)])
        #expect(s.queuedJobs(destination: "nowhere.example").isEmpty)
        #expect(s.allQueuedJobs().count == 4)
    }

    @Test func flushMakesJobsDueNowAndKeepsPriorityOrder() {
        var s = scheduler()
        // At t=100 only c.example is due.
        var t = s
        #expect(t.dispatch(now: 100).map(\.id) == [qid(3)])
        // Flush a.example at t=100: both of its jobs go out now, the priority 5 one first.
        #expect(s.reschedule(s.queuedJobs(destination: "a.example"), due: 100) == 2)
        let started = s.dispatch(now: 100)
        #expect(started.map(\.id) == [qid(2), qid(1), qid(3)], "priority, then arrival")
        #expect(s.queuedJobs == 1, "b.example stays queued for its own time")
        #expect(s.nextDueTime == 2000)
    }

    @Test func flushOfOneMessageReplacesItsJobsNotDuplicates() {
        var s = scheduler()
        s.reschedule(s.queuedJobs(of: qid(1)), due: 10)
        #expect(s.queuedJobs == 4)
        let out = s.dispatch(now: 10)
        #expect(Set(out.map(\.destination)) == ["a.example", "b.example"])
        #expect(out.allSatisfy { $0.id == qid(1) })
        #expect(out.first { $0.destination == "b.example" }?.retry == true, "flush keeps the job's retry mark")
    }

    @Test func removeTakesEveryQueuedJobOfAMessage() {
        var s = scheduler()
        s.remove(id: qid(1))
        #expect(!s.isQueued(qid(1)))
        #expect(s.isQueued(qid(2)))
        #expect(s.queuedJobs == 2)
        #expect(s.dispatch(now: 5000).map(\.id).sorted() == [qid(2), qid(3)])
    }

    @Test func eachQueuedMessageOnceWithPriorityAndRetry() {
        let s = scheduler()
        var seen: [QueueID: (Int, Bool)] = [:]
        s.forEachQueuedMessage { id, priority, retry in
            #expect(seen[id] == nil)
            seen[id] = (priority, retry)
        }
        #expect(seen.count == 3)
        #expect(seen[qid(1)]! == (0, true), "one retried job makes the message deferred")
        #expect(seen[qid(2)]! == (5, false))
        #expect(seen[qid(3)]! == (0, false))
    }
}
