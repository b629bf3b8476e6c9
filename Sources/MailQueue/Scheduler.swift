// The scheduler: which queued delivery job goes out next, and on which connection.
//
// A delivery job is one message's pending recipients for one destination (the lowercased recipient
// domain). The scheduler is an in-memory index of jobs; the spool is the truth and the index is rebuilt
// from it at start-up. It is pure: no I/O, no clock (`now` is a parameter), no randomness.
//
// Order (Postfix's qmgr does much the same with its "active queue" per destination):
//   - a job waits in one global min-heap keyed by the time it becomes due;
//   - once due, it moves to its destination's ready heap, ordered by MT-PRIORITY (RFC 6710, higher
//     first), then arrival (older first), then the order it was added (a sequence number);
//   - `dispatch` hands out ready jobs on new connections, best job first across destinations, while the
//     total and per-destination connection limits allow. The destinations that could take a new
//     connection sit in a heap keyed by their best ready job (updated lazily, see `refreshCandidate`);
//   - a connection that finished a job calls `next(for:)` and takes its destination's best ready job.
//     Order within a destination is by priority, so a backlog of bulk mail to a slow destination never
//     holds up high-priority mail to it: the high-priority jobs are the next ones its connections take.
//
// Every operation that picks a job costs O(log n): heap pops and pushes. Removing a job (an operator
// deletes a message, or a re-add replaces a queued job) marks its record free and leaves the heap entries
// behind as stale (each entry carries the job's sequence number, which a reused record never has again);
// stale entries are skipped when they reach the top, and a heap that grows to twice its live entries is
// compacted in O(n), so removals are O(log n) amortised and memory stays bounded.
//
// Memory: a job is a 64-byte record in one array (no per-job allocation when its recipients are a
// contiguous run, e.g. "all of them", and its queue id is the usual 14 characters that fit a small
// string), a 24-byte entry in one heap, and an entry in the id dictionary; see `indexFootprint` and the
// memory test in SchedulerTests.swift.

/// One message's pending recipients for one destination.
public struct DeliveryJob: Equatable, Sendable {
    public let id: QueueID
    /// The next-hop domain, lowercased (the scheduler compares destinations in lowercase and hands jobs
    /// back with the lowercased name).
    public let destination: String
    /// Indexes into the envelope's recipients.
    public let recipients: [Int]
    /// MT-PRIORITY, -9...9 (RFC 6710); values outside are clamped.
    public let priority: Int
    /// The message's arrival, seconds since the epoch.
    public let arrival: Double
    /// The job was tried before and deferred (what `tern queue` and the metrics call "deferred").
    public let retry: Bool

    public init(id: QueueID, destination: String, recipients: [Int], priority: Int = 0, arrival: Double,
                retry: Bool = false) {
        self.id = id
        self.destination = Scheduler.canonical(destination)
        self.recipients = recipients
        self.priority = min(max(priority, -9), 9)
        self.arrival = arrival
        self.retry = retry
    }
}

public struct Scheduler: Sendable {
    public let maxConnections: Int
    public let maxConnectionsPerDestination: Int

    /// Jobs waiting or ready (not in flight).
    public private(set) var queuedJobs = 0
    /// Connection slots taken, all destinations.
    /// Destinations holding a connection slot that got a ready job by promotion since the last
    /// `promoteReadyForConnections` (at most one entry per destination).
    private var promotedWithSlot: Set<Int32> = []
    public private(set) var activeConnections = 0

    // Job records, addressed by slot; free slots are reused.
    private var jobs: [JobRecord] = []
    private var freeJobs: [Int32] = []
    /// The first record of each queued message; the others are chained through `nextOfMessage`.
    private var firstJobOfMessage: [QueueID: Int32] = [:]
    private var nextSequence: UInt64 = 0

    /// Jobs that are not due yet, by due time.
    private var waiting = BinaryHeap<WaitingEntry>(by: WaitingEntry.before)
    private var waitingCount = 0

    // Destinations, addressed by slot; a destination with no queued jobs and no connections is freed.
    private var destinations: [Destination] = []
    private var freeDestinations: [Int32] = []
    private var destinationSlots: [String: Int32] = [:]
    /// Destinations that have a ready job and a free connection slot, by their best ready job.
    private var candidates = BinaryHeap<ReadyEntry>(by: ReadyEntry.before)

    public init(maxConnections: Int, maxConnectionsPerDestination: Int) {
        self.maxConnections = max(maxConnections, 0)
        self.maxConnectionsPerDestination = max(maxConnectionsPerDestination, 0)
    }

    // MARK: Public operations

    /// Adds (or re-adds after a deferral) a job that becomes due at `due`. A job of the same message and
    /// destination that is still queued is replaced (an in-flight one is the caller's).
    public mutating func add(_ job: DeliveryJob, due: Double) {
        // The destination slot is created before the old job goes, so it is not freed in between.
        let destination = destinationSlot(job.destination)
        var old = firstJobOfMessage[job.id] ?? -1
        while old >= 0 {
            let record = jobs[Int(old)]
            if record.destination == destination {
                unqueue(old)
                break
            }
            old = record.nextOfMessage
        }

        let sequence = nextSequence
        nextSequence += 1
        var record = JobRecord(id: job.id, arrival: job.arrival, sequence: sequence, recipients: job.recipients,
                               destination: destination, priority: Int8(job.priority))
        record.retry = job.retry
        record.nextOfMessage = firstJobOfMessage[job.id] ?? -1
        let slot: Int32
        if let reused = freeJobs.popLast() {
            slot = reused
            jobs[Int(slot)] = record
        } else {
            slot = Int32(jobs.count)
            jobs.append(record)
        }
        if record.nextOfMessage >= 0 { jobs[Int(record.nextOfMessage)].previousOfMessage = slot }
        firstJobOfMessage[job.id] = slot

        destinations[Int(destination)].queued += 1
        queuedJobs += 1
        waitingCount += 1
        waiting.push(WaitingEntry(due: due.isNaN ? -.infinity : due, sequence: sequence, slot: slot))
        settle(destination)
    }

    /// Jobs to start now on NEW connections: due jobs, best first, within the total and per-destination
    /// limits. Each returned job takes one connection slot for its destination.
    public mutating func dispatch(now: Double) -> [DeliveryJob] {
        promoteDue(now: now)
        var started: [DeliveryJob] = []
        while activeConnections < maxConnections, let candidate = candidates.pop() {
            let d = Int(candidate.slot)
            guard destinations[d].candidateSequence == candidate.sequence else { continue }  // stale
            destinations[d].candidateSequence = Destination.none
            guard let best = destinations[d].ready.top, best.sequence == candidate.sequence else {
                refreshCandidate(Int32(d))  // not expected: the candidate follows the ready top
                continue
            }
            destinations[d].ready.pop()
            destinations[d].active += 1
            activeConnections += 1
            started.append(take(best.slot))
            refreshCandidate(Int32(d))
        }
        return started
    }

    /// A connection to `destination` finished a job and may carry another: the best due job for that
    /// destination, keeping the slot; nil → the caller closes the connection and calls `release`.
    /// Also nil when the destination holds no connection slot (use `dispatch` for new connections).
    public mutating func next(for destination: String, now: Double) -> DeliveryJob? {
        promoteDue(now: now)
        guard let d = destinationSlots[Scheduler.canonical(destination)], destinations[Int(d)].active > 0 else {
            return nil
        }
        cleanReadyTop(d)
        guard let best = destinations[Int(d)].ready.pop() else { return nil }
        let job = take(best.slot)
        refreshCandidate(d)
        return job
    }

    /// A connection slot is free again. Call `dispatch` afterwards: the slot may start another job.
    public mutating func release(destination: String) {
        guard let d = destinationSlots[Scheduler.canonical(destination)], destinations[Int(d)].active > 0 else {
            return
        }
        destinations[Int(d)].active -= 1
        activeConnections -= 1
        settle(d)
    }

    // MARK: Idle connections (the delivery side's connection cache)

    /// Makes the jobs due at `now` ready and returns the destinations that got one while holding a
    /// connection slot: the caller hands those jobs to its idle connections with `next(for:)` before
    /// `dispatch` opens new ones. Costs only the promotion (nothing when no job became due).
    public mutating func promoteReadyForConnections(now: Double) -> [String] {
        promoteDue(now: now)
        // Also those promoted by an earlier `next(for:)` or `dispatch` (another destination's
        // connection asking): they were not handed to their own destination's connections then.
        let names = promotedWithSlot.map { destinations[Int($0)].name }
        promotedWithSlot.removeAll(keepingCapacity: true)
        return names
    }

    /// Every connection slot is taken and a ready job waits for a new connection (its destination is
    /// under its own limit): the caller may close an idle connection to make room for it.
    public mutating func hasJobWaitingForSlot() -> Bool {
        guard activeConnections >= maxConnections else { return false }
        while let top = candidates.top, destinations[Int(top.slot)].candidateSequence != top.sequence {
            candidates.pop()  // stale
        }
        return candidates.top != nil
    }

    /// Earliest time a not-yet-due job becomes due (for the caller's timer), or nil. May be in the past
    /// when jobs were added with a due time before the last `dispatch`/`next`.
    public var nextDueTime: Double? { waiting.top?.due }

    public func activeConnections(for destination: String) -> Int {
        guard let d = destinationSlots[Scheduler.canonical(destination)] else { return 0 }
        return destinations[Int(d)].active
    }

    /// Removes every queued job of a message (deleted or bounced by an operator); in-flight ones are the
    /// caller's.
    public mutating func remove(id: QueueID) {
        var affected: [Int32] = []
        while let slot = firstJobOfMessage[id] {
            affected.append(jobs[Int(slot)].destination)
            unqueue(slot)
        }
        for d in affected { settle(d) }
    }

    // MARK: The postmaster's view (`tern queue`): O(jobs of the message), or O(all jobs) for a scan

    /// The queued (not in-flight) jobs of a message.
    public func queuedJobs(of id: QueueID) -> [DeliveryJob] {
        var out: [DeliveryJob] = []
        var slot = firstJobOfMessage[id] ?? -1
        while slot >= 0 {
            let record = jobs[Int(slot)]
            out.append(DeliveryJob(record: record, destination: destinations[Int(record.destination)].name))
            slot = record.nextOfMessage
        }
        return out
    }

    /// The queued jobs for a destination (a scan of every job).
    public func queuedJobs(destination: String) -> [DeliveryJob] {
        guard let d = destinationSlots[Scheduler.canonical(destination)] else { return [] }
        let name = destinations[Int(d)].name
        return jobs.filter { $0.state != .free && $0.destination == d }.map { DeliveryJob(record: $0, destination: name) }
    }

    /// Every queued job (a scan).
    public func allQueuedJobs() -> [DeliveryJob] {
        jobs.filter { $0.state != .free }.map { DeliveryJob(record: $0, destination: destinations[Int($0.destination)].name) }
    }

    /// Makes queued jobs due at `due` (a flush: "retry now"), keeping their order of priority and
    /// arrival. Jobs in flight are not touched. Returns how many jobs were moved.
    @discardableResult
    public mutating func reschedule(_ queued: [DeliveryJob], due: Double) -> Int {
        for job in queued { add(job, due: due) }
        return queued.count
    }

    /// Each queued message once, with its priority and whether any of its jobs was tried before.
    public func forEachQueuedMessage(_ body: (QueueID, Int, Bool) -> Void) {
        for (id, first) in firstJobOfMessage {
            var retry = false
            var slot = first
            while slot >= 0 {
                retry = retry || jobs[Int(slot)].retry
                slot = jobs[Int(slot)].nextOfMessage
            }
            body(id, Int(jobs[Int(first)].priority), retry)
        }
    }

    /// Whether a message has a queued job.
    public func isQueued(_ id: QueueID) -> Bool { firstJobOfMessage[id] != nil }

    // MARK: Moving jobs along

    /// Moves every job due at `now` from the waiting heap to its destination's ready heap.
    /// Promotes due jobs; destinations holding a connection slot that got a ready job are remembered in
    /// `promotedWithSlot` until `promoteReadyForConnections` hands them out.
    private mutating func promoteDue(now: Double) {
        while let entry = waiting.top, entry.due <= now {
            waiting.pop()
            let slot = Int(entry.slot)
            guard jobs[slot].sequence == entry.sequence, jobs[slot].state == .waiting else { continue }
            jobs[slot].state = .ready
            waitingCount -= 1
            let record = jobs[slot]
            let d = record.destination
            destinations[Int(d)].readyCount += 1
            destinations[Int(d)].ready.push(ReadyEntry(arrival: record.arrival, sequence: record.sequence,
                                                       slot: entry.slot, priority: record.priority))
            if destinations[Int(d)].active > 0 { promotedWithSlot.insert(d) }
            refreshCandidate(d)
        }
        cleanWaitingTop()  // a removed job's entry may be next, and `nextDueTime` reads the top
    }

    /// Takes a ready job out of the index to hand it to the caller (in flight from now on).
    private mutating func take(_ slot: Int32) -> DeliveryJob {
        let record = jobs[Int(slot)]
        let job = DeliveryJob(record: record, destination: destinations[Int(record.destination)].name)
        unqueue(slot)
        return job
    }

    /// Drops a queued job's record: counts, message chain, slot. Its heap entries become stale.
    private mutating func unqueue(_ slot: Int32) {
        let record = jobs[Int(slot)]
        let d = Int(record.destination)
        switch record.state {
        case .waiting: waitingCount -= 1
        case .ready: destinations[d].readyCount -= 1
        case .free: preconditionFailure("unqueue of a free job record")
        }
        destinations[d].queued -= 1
        queuedJobs -= 1

        if record.previousOfMessage >= 0 {
            jobs[Int(record.previousOfMessage)].nextOfMessage = record.nextOfMessage
        } else if record.nextOfMessage >= 0 {
            firstJobOfMessage[record.id] = record.nextOfMessage
        } else {
            firstJobOfMessage[record.id] = nil
        }
        if record.nextOfMessage >= 0 { jobs[Int(record.nextOfMessage)].previousOfMessage = record.previousOfMessage }

        jobs[Int(slot)] = JobRecord.free
        freeJobs.append(slot)
    }

    /// After jobs of destination `d` were unqueued or its connections changed: clean the heap tops,
    /// compact heaps full of stale entries, update its candidacy, and free it when unused.
    private mutating func settle(_ d: Int32) {
        cleanWaitingTop()
        if waiting.count > 2 * waitingCount + 64 {
            let jobs = self.jobs
            waiting.removeAll { jobs[Int($0.slot)].sequence != $0.sequence || jobs[Int($0.slot)].state != .waiting }
        }
        let i = Int(d)
        guard destinations[i].inUse else { return }  // freed by an earlier settle
        if destinations[i].ready.count > 2 * destinations[i].readyCount + 64 {
            let jobs = self.jobs
            destinations[i].ready.removeAll {
                jobs[Int($0.slot)].sequence != $0.sequence || jobs[Int($0.slot)].state != .ready
            }
        }
        refreshCandidate(d)
        if destinations[i].queued == 0 && destinations[i].active == 0 {
            destinationSlots[destinations[i].name] = nil
            destinations[i] = Destination(name: "")
            destinations[i].inUse = false
            freeDestinations.append(d)
        }
    }

    /// Keeps the candidate heap right for destination `d`: when it can take a new connection, it has an
    /// entry keyed by its current best ready job (`candidateSequence`); any other entry of it is stale.
    private mutating func refreshCandidate(_ d: Int32) {
        cleanReadyTop(d)
        let i = Int(d)
        guard destinations[i].active < maxConnectionsPerDestination, var best = destinations[i].ready.top else {
            destinations[i].candidateSequence = Destination.none
            return
        }
        guard destinations[i].candidateSequence != best.sequence else { return }
        destinations[i].candidateSequence = best.sequence
        best.slot = d
        candidates.push(best)
        if candidates.count > 2 * destinationSlots.count + 64 { rebuildCandidates() }
    }

    private mutating func rebuildCandidates() {
        candidates = BinaryHeap(by: ReadyEntry.before)
        for i in destinations.indices where destinations[i].candidateSequence != Destination.none {
            var best = destinations[i].ready.top!  // a candidate always has a live ready top
            best.slot = Int32(i)
            candidates.push(best)
        }
    }

    private mutating func cleanWaitingTop() {
        while let entry = waiting.top,
              jobs[Int(entry.slot)].sequence != entry.sequence || jobs[Int(entry.slot)].state != .waiting {
            waiting.pop()
        }
    }

    private mutating func cleanReadyTop(_ d: Int32) {
        while let entry = destinations[Int(d)].ready.top,
              jobs[Int(entry.slot)].sequence != entry.sequence || jobs[Int(entry.slot)].state != .ready {
            destinations[Int(d)].ready.pop()
        }
    }

    private mutating func destinationSlot(_ name: String) -> Int32 {
        if let d = destinationSlots[name] { return d }
        let d: Int32
        if let reused = freeDestinations.popLast() {
            d = reused
            destinations[Int(d)] = Destination(name: name)
        } else {
            d = Int32(destinations.count)
            destinations.append(Destination(name: name))
        }
        destinationSlots[name] = d
        return d
    }

    /// ASCII-lowercased; returns the string itself (no copy) when it has no capitals.
    static func canonical(_ destination: String) -> String {
        destination.utf8.contains(where: { $0 >= 0x41 && $0 <= 0x5A }) ? destination.lowercased() : destination
    }

    // MARK: Introspection for tests and metrics

    /// Bytes the index holds, from the capacities of its arrays and dictionaries: records, heaps,
    /// free lists, the id dictionary (key + value + about one bit of metadata per bucket), destinations,
    /// plus the recipient lists that are stored out of line. Excludes malloc's own overhead.
    var indexFootprint: Int {
        var bytes = jobs.capacity * MemoryLayout<JobRecord>.stride
        bytes += freeJobs.capacity * MemoryLayout<Int32>.stride
        // A dictionary has capacity * 4/3 buckets (max load 3/4): a key, a value and a bit each.
        let buckets = firstJobOfMessage.capacity * 4 / 3
        bytes += buckets * (MemoryLayout<QueueID>.stride + MemoryLayout<Int32>.stride) + buckets / 8
        bytes += waiting.capacity * MemoryLayout<WaitingEntry>.stride
        bytes += candidates.capacity * MemoryLayout<ReadyEntry>.stride
        bytes += destinations.capacity * MemoryLayout<Destination>.stride
        bytes += destinationSlots.capacity * (MemoryLayout<String>.stride + MemoryLayout<Int32>.stride) * 4 / 3
        for destination in destinations { bytes += destination.ready.capacity * MemoryLayout<ReadyEntry>.stride }
        for record in jobs where record.recipientCount < 0 {
            bytes += 32 + record.recipientList.capacity * MemoryLayout<Int>.stride
        }
        return bytes
    }

    static var jobRecordStride: Int { MemoryLayout<JobRecord>.stride }
}

// MARK: - Storage

private enum JobState: UInt8 { case free, waiting, ready }

/// 64 bytes (63 used). Recipients are a run `recipientStart ..< recipientStart + recipientCount` when they are one
/// (no allocation), else `recipientList` with `recipientCount == -1`.
private struct JobRecord {
    var id: QueueID
    var arrival: Double
    var sequence: UInt64
    var recipientList: [Int]
    var recipientStart: Int32
    var recipientCount: Int32
    var destination: Int32
    var previousOfMessage: Int32 = -1
    var nextOfMessage: Int32 = -1
    var priority: Int8
    var state: JobState
    var retry = false

    init(id: QueueID, arrival: Double, sequence: UInt64, recipients: [Int], destination: Int32, priority: Int8) {
        self.id = id
        self.arrival = arrival
        self.sequence = sequence
        self.destination = destination
        self.priority = priority
        self.state = .waiting
        if let first = recipients.first, recipients.count < Int(Int32.max), first >= 0,
           first + recipients.count <= Int(Int32.max),
           zip(recipients, recipients.dropFirst()).allSatisfy({ $1 == $0 + 1 }) {
            recipientList = []
            recipientStart = Int32(first)
            recipientCount = Int32(recipients.count)
        } else if recipients.isEmpty {
            recipientList = []
            recipientStart = 0
            recipientCount = 0
        } else {
            recipientList = recipients
            recipientStart = 0
            recipientCount = -1
        }
    }

    static let free: JobRecord = {
        var record = JobRecord(id: QueueID(microseconds: 0), arrival: 0, sequence: .max, recipients: [],
                               destination: -1, priority: 0)
        record.state = .free
        return record
    }()

    var recipients: [Int] {
        recipientCount < 0 ? recipientList : Array(Int(recipientStart) ..< Int(recipientStart) + Int(recipientCount))
    }
}

extension DeliveryJob {
    fileprivate init(record: JobRecord, destination: String) {
        self.id = record.id
        self.destination = destination
        self.recipients = record.recipients
        self.priority = Int(record.priority)
        self.arrival = record.arrival
        self.retry = record.retry
    }
}

/// A job in the waiting heap: earliest due first, then the order of adding.
private struct WaitingEntry: Sendable {
    var due: Double
    var sequence: UInt64
    var slot: Int32

    static let before: @Sendable (WaitingEntry, WaitingEntry) -> Bool = { a, b in
        a.due != b.due ? a.due < b.due : a.sequence < b.sequence
    }
}

/// A job in a ready heap (slot = the job record), or a destination in the candidate heap (slot = the
/// destination, key = its best ready job): higher priority, then older arrival, then the order of adding.
private struct ReadyEntry: Sendable {
    var arrival: Double
    var sequence: UInt64
    var slot: Int32
    var priority: Int8

    static let before: @Sendable (ReadyEntry, ReadyEntry) -> Bool = { a, b in
        if a.priority != b.priority { return a.priority > b.priority }
        // NaN arrivals sort last instead of breaking the heap's order.
        let (x, y) = (a.arrival.isNaN ? .infinity : a.arrival, b.arrival.isNaN ? .infinity : b.arrival)
        if x != y { return x < y }
        return a.sequence < b.sequence
    }
}

private struct Destination: Sendable {
    static let none = UInt64.max

    var name: String
    var ready = BinaryHeap<ReadyEntry>(by: ReadyEntry.before)
    /// Live entries of `ready`.
    var readyCount = 0
    /// Waiting + ready jobs.
    var queued = 0
    /// Connection slots taken.
    var active = 0
    /// The sequence number of the job its live candidate entry is keyed by, or `none`.
    var candidateSequence = Destination.none
    /// False while the slot is on the free list.
    var inUse = true

    init(name: String) { self.name = name }
}

// MARK: - Binary heap

/// An array-based binary heap ordered by a comparison: `top` is an element that no other element comes
/// `before`. (swift-collections has one, but MailQueue does not depend on it.)
struct BinaryHeap<Element>: Sendable where Element: Sendable {
    private(set) var elements: [Element] = []
    private let before: @Sendable (Element, Element) -> Bool

    init(by before: @escaping @Sendable (Element, Element) -> Bool) {
        self.before = before
    }

    init<S: Sequence>(_ elements: S, by before: @escaping @Sendable (Element, Element) -> Bool)
    where S.Element == Element {
        self.before = before
        self.elements = Array(elements)
        heapify()
    }

    var count: Int { elements.count }
    var isEmpty: Bool { elements.isEmpty }
    var capacity: Int { elements.capacity }
    var top: Element? { elements.first }

    /// O(log n).
    mutating func push(_ element: Element) {
        elements.append(element)
        siftUp(elements.count - 1)
    }

    /// Removes and returns the top, O(log n).
    @discardableResult
    mutating func pop() -> Element? {
        guard let last = elements.popLast() else { return nil }
        guard !elements.isEmpty else { return last }
        let top = elements[0]
        elements[0] = last
        siftDown(0)
        return top
    }

    /// Keeps the elements for which `shouldBeRemoved` is false, O(n).
    mutating func removeAll(where shouldBeRemoved: (Element) throws -> Bool) rethrows {
        try elements.removeAll(where: shouldBeRemoved)
        heapify()
    }

    mutating func reserveCapacity(_ n: Int) { elements.reserveCapacity(n) }

    private mutating func heapify() {
        var i = elements.count / 2
        while i > 0 {
            i -= 1
            siftDown(i)
        }
    }

    private mutating func siftUp(_ start: Int) {
        elements.withUnsafeMutableBufferPointer { a in
            var child = start
            let element = a[child]
            while child > 0 {
                let parent = (child - 1) / 2
                guard before(element, a[parent]) else { break }
                a[child] = a[parent]
                child = parent
            }
            a[child] = element
        }
    }

    private mutating func siftDown(_ start: Int) {
        elements.withUnsafeMutableBufferPointer { a in
            let n = a.count
            var parent = start
            let element = a[parent]
            while true {
                var child = 2 * parent + 1
                if child >= n { break }
                if child + 1 < n && before(a[child + 1], a[child]) { child += 1 }
                guard before(a[child], element) else { break }
                a[parent] = a[child]
                parent = child
            }
            a[parent] = element
        }
    }
}
