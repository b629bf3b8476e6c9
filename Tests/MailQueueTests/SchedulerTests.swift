#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Randomness
import Testing
@testable import MailQueue

private func qid(_ n: Int) -> QueueID { QueueID(microseconds: 1_700_000_000_000_000 + UInt64(n)) }

private func job(_ n: Int, _ destination: String, priority: Int = 0, arrival: Double? = nil,
                 recipients: [Int] = [0]) -> DeliveryJob {
    DeliveryJob(id: qid(n), destination: destination, recipients: recipients, priority: priority,
                arrival: arrival ?? Double(n))
}

@Suite struct BinaryHeapTests {
    private func isHeap<T>(_ heap: BinaryHeap<T>, _ before: (T, T) -> Bool) -> Bool {
        let e = heap.elements
        return e.indices.dropFirst().allSatisfy { !before(e[$0], e[($0 - 1) / 2]) }
    }

    @Test func heapPropertyHoldsUnderRandomOperations() {
        var rng = SplitMix64(seed: 1)
        var heap = BinaryHeap<Int>(by: { $0 < $1 })
        var model: [Int] = []
        for step in 0..<20_000 {
            switch Int.random(in: 0..<10, using: &rng) {
            case 0..<6:
                let value = Int.random(in: 0..<500, using: &rng)
                heap.push(value)
                model.append(value)
            case 6..<9:
                let expected = model.min()
                if let expected { model.remove(at: model.firstIndex(of: expected)!) }
                #expect(heap.pop() == expected, "step \(step)")
            default:
                let cut = Int.random(in: 0..<500, using: &rng)
                heap.removeAll { $0 % 7 == cut % 7 }
                model.removeAll { $0 % 7 == cut % 7 }
            }
            if step % 97 == 0 { #expect(isHeap(heap, <), "step \(step)") }
            #expect(heap.count == model.count)
            #expect(heap.top == model.min())
        }
        var drained: [Int] = []
        while let x = heap.pop() { drained.append(x) }
        #expect(drained == model.sorted())
        #expect(heap.pop() == nil && heap.isEmpty)
    }

    @Test func orderComesFromTheComparison() {
        let values = (0..<1000).map { ($0 * 7919) % 1000 }
        var maxHeap = BinaryHeap(values, by: { $0 > $1 })
        #expect(isHeap(maxHeap, >))
        var out: [Int] = []
        while let x = maxHeap.pop() { out.append(x) }
        #expect(out == Array((0..<1000).reversed()))

        // Ties keep the heap valid; a key/value comparison sees only the key.
        var pairs = BinaryHeap<(Int, String)>(by: { $0.0 < $1.0 })
        for (i, name) in ["c", "a", "b", "a2", "c2"].enumerated() { pairs.push(([2, 0, 1, 0, 2][i], name)) }
        #expect(pairs.pop()!.0 == 0 && pairs.pop()!.0 == 0 && pairs.pop()!.1 == "b")
    }
}

/// The scheduler's rules written the slow, obvious way, to compare against.
private struct ModelScheduler {
    struct Item { var job: DeliveryJob; var due: Double; var seq: Int; var promoted = false }
    let maxConnections: Int, maxPerDestination: Int
    var items: [Item] = []
    var active: [String: Int] = [:]
    var total = 0
    var seq = 0

    static func better(_ a: Item, _ b: Item) -> Bool {
        if a.job.priority != b.job.priority { return a.job.priority > b.job.priority }
        if a.job.arrival != b.job.arrival { return a.job.arrival < b.job.arrival }
        return a.seq < b.seq
    }

    mutating func add(_ job: DeliveryJob, due: Double) {
        items.removeAll { $0.job.id == job.id && $0.job.destination == job.destination }
        items.append(Item(job: job, due: due, seq: seq))
        seq += 1
    }

    mutating func promote(_ now: Double) {
        for i in items.indices where items[i].due <= now { items[i].promoted = true }
    }

    mutating func dispatch(now: Double) -> [DeliveryJob] {
        promote(now)
        var out: [DeliveryJob] = []
        while total < maxConnections {
            let eligible = items.indices.filter { items[$0].promoted && active[items[$0].job.destination, default: 0] < maxPerDestination }
            guard let best = eligible.min(by: { Self.better(items[$0], items[$1]) }) else { break }
            let item = items.remove(at: best)
            active[item.job.destination, default: 0] += 1
            total += 1
            out.append(item.job)
        }
        return out
    }

    mutating func next(for destination: String, now: Double) -> DeliveryJob? {
        promote(now)
        guard active[destination, default: 0] > 0 else { return nil }
        let eligible = items.indices.filter { items[$0].promoted && items[$0].job.destination == destination }
        guard let best = eligible.min(by: { Self.better(items[$0], items[$1]) }) else { return nil }
        return items.remove(at: best).job
    }

    mutating func release(_ destination: String) {
        guard active[destination, default: 0] > 0 else { return }
        active[destination]! -= 1
        total -= 1
    }

    mutating func remove(_ id: QueueID) { items.removeAll { $0.job.id == id } }
    var nextDueTime: Double? { items.filter { !$0.promoted }.map(\.due).min() }
}

@Suite struct SchedulerTests {
    @Test func dueJobsGoOutByPriorityThenAge() {
        var s = Scheduler(maxConnections: 100, maxConnectionsPerDestination: 100)
        s.add(job(1, "a.example", priority: 0, arrival: 10), due: 0)
        s.add(job(2, "b.example", priority: 5, arrival: 30), due: 0)
        s.add(job(3, "c.example", priority: 0, arrival: 5), due: 0)
        s.add(job(4, "d.example", priority: -3, arrival: 1), due: 0)
        s.add(job(5, "e.example", priority: 5, arrival: 20), due: 0)
        s.add(job(6, "f.example", priority: 0, arrival: 10), due: 0)  // same age as 1: added later, goes later
        s.add(job(7, "g.example", priority: 9, arrival: 0), due: 50)  // best, but not due yet
        #expect(s.queuedJobs == 7)
        #expect(s.dispatch(now: 10).map(\.id) == [qid(5), qid(2), qid(3), qid(1), qid(6), qid(4)])
        #expect(s.queuedJobs == 1)
        #expect(s.activeConnections == 6)
        #expect(s.nextDueTime == 50)
        #expect(s.dispatch(now: 49.9).isEmpty)
        #expect(s.dispatch(now: 50).map(\.id) == [qid(7)])
        #expect(s.nextDueTime == nil)
    }

    @Test func jobsComeBackAsAdded() {
        var s = Scheduler(maxConnections: 10, maxConnectionsPerDestination: 10)
        let jobs = [job(1, "a.example", priority: -9, arrival: 1.5, recipients: [0, 1, 2]),
                    job(2, "b.example", priority: 9, arrival: 2.25, recipients: [3, 1, 7]),
                    job(3, "c.example", priority: 0, arrival: 3, recipients: []),
                    job(4, "d.example", priority: 1, arrival: 4, recipients: [5])]
        for j in jobs { s.add(j, due: 0) }
        #expect(Set(s.dispatch(now: 0).map(\.id)) == Set(jobs.map(\.id)))
        var again = Scheduler(maxConnections: 10, maxConnectionsPerDestination: 10)
        for j in jobs { again.add(j, due: 0) }
        #expect(again.dispatch(now: 0) == [jobs[1], jobs[3], jobs[2], jobs[0]])
    }

    @Test func priorityAndDestinationAreNormalised() {
        let j = DeliveryJob(id: qid(1), destination: "Mail.EXAMPLE.org", recipients: [0], priority: 42, arrival: 0)
        #expect(j.destination == "mail.example.org")
        #expect(j.priority == 9)
        #expect(DeliveryJob(id: qid(1), destination: "x", recipients: [], priority: -10, arrival: 0).priority == -9)

        var s = Scheduler(maxConnections: 10, maxConnectionsPerDestination: 1)
        s.add(j, due: 0)
        s.add(job(2, "mail.example.org"), due: 0)
        #expect(s.dispatch(now: 0) == [j])
        #expect(s.activeConnections(for: "MAIL.example.ORG") == 1)
        #expect(s.next(for: "Mail.Example.Org", now: 0)?.id == qid(2))
        s.release(destination: "MAIL.EXAMPLE.ORG")
        #expect(s.activeConnections(for: "mail.example.org") == 0)
        #expect(s.activeConnections == 0)
    }

    @Test func perDestinationAndTotalLimits() {
        var s = Scheduler(maxConnections: 5, maxConnectionsPerDestination: 2)
        for n in 0..<10 { s.add(job(n, "big.example", arrival: Double(n)), due: 0) }
        for n in 10..<20 { s.add(job(n, "other.example", arrival: Double(n)), due: 0) }
        for n in 20..<30 { s.add(job(n, "third.example", arrival: Double(n)), due: 0) }
        let first = s.dispatch(now: 0)
        // Two per destination at most, five in total: oldest first, so big, big, other, other, third.
        #expect(first.map(\.id) == [qid(0), qid(1), qid(10), qid(11), qid(20)])
        #expect(s.activeConnections == 5)
        #expect(s.activeConnections(for: "big.example") == 2)
        #expect(s.activeConnections(for: "other.example") == 2)
        #expect(s.activeConnections(for: "third.example") == 1)
        #expect(s.dispatch(now: 1).isEmpty, "total limit reached")

        s.release(destination: "big.example")
        #expect(s.activeConnections == 4)
        // The free slot goes to the best job of a destination under its limit: big is at 1 of 2 now.
        #expect(s.dispatch(now: 1).map(\.id) == [qid(2)])
        s.release(destination: "other.example")
        s.release(destination: "big.example")
        // Two slots free: big's oldest job, then other's (older than third's, which is also under its limit).
        #expect(s.dispatch(now: 1).map(\.id) == [qid(3), qid(12)])
        #expect(s.activeConnections == 5)
        #expect(s.queuedJobs == 30 - 8)

        // Releasing a destination with no connection is a no-op.
        s.release(destination: "nowhere.example")
        s.release(destination: "")
        #expect(s.activeConnections == 5)
    }

    @Test func aFinishedConnectionTakesTheNextJobOfItsDestination() {
        var s = Scheduler(maxConnections: 1, maxConnectionsPerDestination: 1)
        s.add(job(1, "a.example", arrival: 1), due: 0)
        s.add(job(2, "a.example", arrival: 2), due: 0)
        s.add(job(3, "b.example", priority: 5, arrival: 3), due: 100)
        s.add(job(4, "a.example", arrival: 4), due: 100)
        #expect(s.next(for: "a.example", now: 0) == nil, "no connection open yet")
        #expect(s.dispatch(now: 0).map(\.id) == [qid(1)])
        #expect(s.next(for: "a.example", now: 0)?.id == qid(2))
        #expect(s.activeConnections(for: "a.example") == 1, "the slot is kept")
        #expect(s.next(for: "a.example", now: 99) == nil, "job 4 is not due yet")
        #expect(s.next(for: "b.example", now: 99) == nil)
        // At 100 both are due: the open connection to a takes job 4 even though b has better work.
        #expect(s.next(for: "a.example", now: 100)?.id == qid(4))
        #expect(s.dispatch(now: 100).isEmpty, "the only slot is in use")
        s.release(destination: "a.example")
        #expect(s.dispatch(now: 100).map(\.id) == [qid(3)])
        #expect(s.queuedJobs == 0)
    }

    /// A lane carries its queue's slot so that each message on an open connection skips a hash of the
    /// destination; a slot freed and reused by another destination must not hand that one's jobs out.
    @Test func aLaneWhoseQueueSlotWasReusedFindsItsOwnQueue() {
        var s = Scheduler(maxConnections: 4, maxConnectionsPerDestination: 2)
        var admission = PerDestinationLimit(limit: 2)
        s.add(job(1, "a.example"), due: 0)
        let first = s.dispatch(now: 0, shaping: &admission)
        #expect(first.map(\.job.id) == [qid(1)])
        let laneA = first[0].connection
        s.release(laneA, shaping: &admission)  // a's queue is empty and unused: its slot is freed
        for n in 2...5 { s.add(job(n, "b.example"), due: 0) }  // and taken by b's queue
        let toB = s.dispatch(now: 0, shaping: &admission)
        #expect(toB.map(\.job.id) == [qid(2), qid(3)], "two connections to b; jobs 4 and 5 ready, no slot")
        #expect(!s.hasReadyJob(on: laneA), "b's jobs are not a's")
        #expect(s.next(on: laneA, sent: 1, now: 0, shaping: &admission) == nil)
        #expect(s.hasReadyJob(on: toB[0].connection))
        #expect(s.next(on: toB[0].connection, sent: 1, now: 0, shaping: &admission)?.id == qid(4))
        // A lane built by name (no slot) finds the queue by lookup.
        let byName = ConnectionLane(destination: "B.example", pool: nil, lane: toB[0].connection.lane)
        #expect(s.next(on: byName, sent: 1, now: 0, shaping: &admission)?.id == qid(5))
    }

    @Test func bulkBacklogDoesNotStarveHighPriority() {
        var s = Scheduler(maxConnections: 1, maxConnectionsPerDestination: 1)
        for n in 0..<10_000 { s.add(job(n, "slow.example", priority: -5, arrival: Double(n)), due: 0) }
        for n in 10_000..<10_010 { s.add(job(n, "slow.example", priority: 5, arrival: 50_000 + Double(n)), due: 0) }
        var handedOut = s.dispatch(now: 1)
        while handedOut.count < 10, let j = s.next(for: "slow.example", now: 1) { handedOut.append(j) }
        #expect(handedOut.map(\.id) == (10_000..<10_010).map(qid))
        #expect(s.next(for: "slow.example", now: 1)?.id == qid(0), "then the backlog, oldest first")

        // High-priority mail arriving while the connection works through the backlog goes next.
        #expect(s.next(for: "slow.example", now: 2)?.id == qid(1))
        s.add(job(20_000, "slow.example", priority: 1, arrival: 90_000), due: 2)
        #expect(s.next(for: "slow.example", now: 2)?.id == qid(20_000))
        #expect(s.next(for: "slow.example", now: 2)?.id == qid(2))
    }

    @Test func dueTimesAndDeferrals() {
        var s = Scheduler(maxConnections: 10, maxConnectionsPerDestination: 10)
        #expect(s.nextDueTime == nil)
        s.add(job(1, "a.example"), due: 300)
        s.add(job(2, "b.example"), due: 60)
        s.add(job(3, "c.example"), due: 900)
        #expect(s.nextDueTime == 60)
        #expect(s.dispatch(now: 59).isEmpty)
        #expect(s.dispatch(now: 60).map(\.id) == [qid(2)])
        #expect(s.nextDueTime == 300)
        // The attempt was deferred: the job comes back with a later due time.
        s.release(destination: "b.example")
        s.add(job(2, "b.example"), due: 200)
        #expect(s.nextDueTime == 200)
        #expect(s.dispatch(now: 250).map(\.id) == [qid(2)])
        #expect(s.dispatch(now: 1000).map(\.id) == [qid(1), qid(3)])
        #expect(s.nextDueTime == nil)
        #expect(s.queuedJobs == 0)
    }

    @Test func reAddingAQueuedJobReplacesIt() {
        var s = Scheduler(maxConnections: 10, maxConnectionsPerDestination: 10)
        s.add(job(1, "a.example", recipients: [0]), due: 100)
        s.add(job(1, "b.example", recipients: [1]), due: 100)
        s.add(job(1, "a.example", recipients: [0, 2]), due: 50)
        #expect(s.queuedJobs == 2)
        #expect(s.nextDueTime == 50)
        #expect(s.dispatch(now: 50) == [job(1, "a.example", recipients: [0, 2])])
        #expect(s.dispatch(now: 100) == [job(1, "b.example", recipients: [1])])
    }

    @Test func removeDropsEveryQueuedJobOfAMessage() {
        var s = Scheduler(maxConnections: 10, maxConnectionsPerDestination: 10)
        s.add(job(1, "a.example"), due: 0)
        s.add(job(1, "b.example"), due: 500)
        s.add(job(1, "c.example"), due: 0)
        s.add(job(2, "a.example"), due: 0)
        s.add(job(3, "b.example"), due: 700)
        #expect(s.dispatch(now: 0).map(\.id) == [qid(1), qid(1), qid(2)])
        s.release(destination: "a.example")
        s.release(destination: "c.example")
        s.release(destination: "a.example")
        s.add(job(1, "a.example"), due: 10)  // deferred, back in the queue
        s.remove(id: qid(1))
        #expect(s.queuedJobs == 1)
        #expect(s.nextDueTime == 700, "job 1's waiting entries are gone")
        #expect(s.dispatch(now: 1000).map(\.id) == [qid(3)])
        s.remove(id: qid(99))  // unknown: no-op
        s.remove(id: qid(3))   // in flight: the caller's
        #expect(s.activeConnections == 1)
        #expect(s.queuedJobs == 0)
    }

    @Test func removeOfReadyJobsKeepsTheOrder() {
        var s = Scheduler(maxConnections: 1, maxConnectionsPerDestination: 1)
        for n in 0..<500 { s.add(job(n, "a.example", arrival: Double(n)), due: 0) }
        _ = s.dispatch(now: 0)  // all ready; job 0 in flight
        for n in stride(from: 1, to: 500, by: 2) { s.remove(id: qid(n)) }  // enough to compact the heap
        #expect(s.queuedJobs == 249)
        var ids: [QueueID] = []
        while let j = s.next(for: "a.example", now: 0) { ids.append(j.id) }
        #expect(ids == stride(from: 2, to: 500, by: 2).map(qid))
    }

    @Test func matchesASimpleModelUnderRandomOperations() {
        for seed in UInt64(1)...20 {
            var rng = SplitMix64(seed: seed)
            let maxTotal = Int.random(in: 1...6, using: &rng), maxPer = Int.random(in: 1...3, using: &rng)
            var s = Scheduler(maxConnections: maxTotal, maxConnectionsPerDestination: maxPer)
            var model = ModelScheduler(maxConnections: maxTotal, maxPerDestination: maxPer)
            let destinations = ["a.example", "b.example", "c.example", "d.example"]
            var inFlight: [String] = []
            var now = 0.0
            for step in 0..<3000 {
                let context = "seed \(seed) step \(step)"
                switch Int.random(in: 0..<100, using: &rng) {
                case 0..<35:
                    let j = job(Int.random(in: 0..<60, using: &rng), destinations.randomElement(using: &rng)!,
                                priority: Int.random(in: -2...2, using: &rng),
                                arrival: Double(Int.random(in: 0..<20, using: &rng)),
                                recipients: Bool.random(using: &rng) ? [0] : [1, 3])
                    let due = now + Double(Int.random(in: -5...30, using: &rng))
                    s.add(j, due: due)
                    model.add(j, due: due)
                case 35..<55:
                    let got = s.dispatch(now: now)
                    #expect(got == model.dispatch(now: now), "\(context)")
                    inFlight += got.map(\.destination)
                case 55..<75:
                    guard let i = inFlight.indices.randomElement(using: &rng) else { break }
                    let got = s.next(for: inFlight[i], now: now)
                    #expect(got == model.next(for: inFlight[i], now: now), "\(context)")
                    if got == nil {
                        s.release(destination: inFlight[i])
                        model.release(inFlight[i])
                        inFlight.remove(at: i)
                    }
                case 75..<85:
                    let id = qid(Int.random(in: 0..<60, using: &rng))
                    s.remove(id: id)
                    model.remove(id)
                default:
                    now += Double(Int.random(in: 0...6, using: &rng))
                }
                #expect(s.queuedJobs == model.items.count, "\(context)")
                #expect(s.activeConnections == model.total, "\(context)")
                #expect(s.nextDueTime == model.nextDueTime, "\(context)")
                for d in destinations {
                    #expect(s.activeConnections(for: d) == model.active[d, default: 0], "\(context)")
                }
            }
        }
    }

    /// Memory of the index at 1,000,000 queued messages, and the cost of picking jobs. Measured, printed,
    /// and held only to generous bounds: a benchmark, not a timed assertion.
    ///
    /// `indexFootprint` adds up the capacities of the index's arrays and dictionaries (exact for Swift's
    /// layouts, without malloc's per-block overhead, which is negligible for a few large blocks). The RSS
    /// delta is the process's view; other tests running in parallel add noise, so it gets a loose bound.
    /// bench/queue-scale.sh runs it in a release build at several sizes (TERN_SCHEDULER_SCALE, a list of
    /// message counts) to show how the cost of a pick grows with the queue.
    @Test func memoryAndPickCostAtAMillionMessages() throws {
        let counts = (getenv("TERN_SCHEDULER_SCALE").map { String(cString: $0) } ?? "")
            .split(separator: " ").compactMap { Int($0) }.filter { $0 >= 20_000 }
        for count in counts.isEmpty ? [1_000_000] : counts {
            try measureScale(count: count)
        }
    }

    func measureScale(count: Int) throws {
        let destinations = (0..<1000).map { "dest\($0).example.net" }
        let rssBefore = residentBytes()
        var s = Scheduler(maxConnections: 1000, maxConnectionsPerDestination: 1)
        var clock = ContinuousClock.now
        for n in 0..<count {
            // Half due now (they become ready), half later (they stay waiting).
            s.add(job(n, destinations[n % 1000], priority: n % 19 - 9, arrival: Double(n)),
                  due: n / 1000 % 2 == 0 ? 0 : 1_000_000 + Double(n))
        }
        let addTime = ContinuousClock.now - clock
        clock = ContinuousClock.now
        let first = s.dispatch(now: 1)  // promotes half the jobs, starts 1000
        let dispatchTime = ContinuousClock.now - clock
        let rssAfter = residentBytes()
        #expect(first.count == 1000)
        #expect(s.queuedJobs == count - 1000)

        let footprint = Double(s.indexFootprint) / Double(count)
        let rss = Double(rssAfter - rssBefore) / Double(count)

        // Pick cost: connections take the next job of their destination, 200,000 times.
        clock = ContinuousClock.now
        let picks = min(200_000, count / 5)
        var picked = 0
        var progress = true
        while picked < picks && progress {  // a broken scheduler must not hang the test
            progress = false
            for d in destinations where picked < picks {
                if s.next(for: d, now: 1) != nil { picked += 1; progress = true }
            }
        }
        #expect(picked == picks)
        let pickTime = ContinuousClock.now - clock
        func ns(_ d: Duration, _ n: Int) -> Int {
            Int((Double(d.components.seconds) * 1e9 + Double(d.components.attoseconds) / 1e9) / Double(n))
        }
        print("scheduler at \(count) messages: index \(Int(footprint)) bytes/message (record stride "
            + "\(Scheduler.jobRecordStride)), RSS delta \(Int(rss)) bytes/message; add \(ns(addTime, count)) ns/job, "
            + "dispatch (promote \(count / 2) + start 1000) \(ns(dispatchTime, count / 2)) ns/job, next(for:) \(ns(pickTime, picked)) ns/pick")
        #expect(footprint < 300)
        #expect(footprint > Double(Scheduler.jobRecordStride), "the accounting must at least count the records")
        #expect(rss < 1000)
        #expect(s.queuedJobs == count - 1000 - picked)
    }
}

/// Resident set size from /proc/self/statm (Linux); 0 elsewhere.
func residentBytes() -> Int {
    #if os(Linux)
    guard let file = fopen("/proc/self/statm", "r") else { return 0 }
    defer { fclose(file) }
    var size = 0, resident = 0
    guard withUnsafeMutablePointer(to: &size, { sp in
        withUnsafeMutablePointer(to: &resident) { rp in
            withVaList([sp, rp]) { vfscanf(file, "%ld %ld", $0) }
        }
    }) == 2 else { return 0 }
    return resident * Int(sysconf(Int32(_SC_PAGESIZE)))
    #else
    return 0
    #endif
}
