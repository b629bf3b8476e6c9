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
//     total limit and traffic shaping allow. Jobs wait in a queue per destination × egress pool; queues
//     sit in a *gate* per shaping group × pool (Shaper.swift: a rule, or the destination itself), keyed
//     by their best ready job; open gates sit in one candidates heap keyed by their best queue. The
//     admission (a `ShapingAdmission`: the Shaper, or `PerDestinationLimit` for the calls without one)
//     is asked only when a gate reaches the top; a gate it blocks leaves the candidates and comes back
//     once, at its wake time (rate, suspension, throttle end) or when its group changes (a connection
//     closes, a probe succeeds, the postmaster acts). So blocked backlogs are never scanned;
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
    /// The egress pool the message goes out from (traffic shaping); nil: none. Jobs of one destination
    /// with different pools wait in different queues.
    public let pool: String?

    public init(id: QueueID, destination: String, recipients: [Int], priority: Int = 0, arrival: Double,
                retry: Bool = false, pool: String? = nil) {
        self.id = id
        self.pool = pool
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
    /// Queues holding a connection slot that got a ready job by promotion, or whose gate reopened,
    /// since the last `promoteReadyForConnections` (at most one entry per queue).
    private var promotedWithSlot: Set<Int32> = []
    /// Connection slots taken, all destinations.
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

    // Queues (destination × pool), addressed by slot; a queue with no jobs and no connections is freed.
    private var queues: [Queue] = []
    private var freeQueues: [Int32] = []
    private var queueSlots: [QueueKey: Int32] = [:]
    // Gates (shaping group × pool): the queues whose new connections are admitted together.
    private var gates: [Gate] = []
    private var freeGates: [Int32] = []
    private var gateSlots: [GateKey: Int32] = [:]
    private var gatesOfGroup: [ShapingGroup: [Int32]] = [:]
    /// Open gates that have a ready job, by their best ready job.
    private var candidates = BinaryHeap<ReadyEntry>(by: ReadyEntry.before)
    /// Blocked gates that open again at a known time (rate, suspension, throttle end).
    private var wakes = BinaryHeap<WakeEntry>(by: { $0.time < $1.time })
    /// Destinations whose jobs wait for their MX names (reported once each by `takeUnclassified`).
    private var unclassified: [String] = []

    public init(maxConnections: Int, maxConnectionsPerDestination: Int) {
        self.maxConnections = max(maxConnections, 0)
        self.maxConnectionsPerDestination = max(maxConnectionsPerDestination, 0)
    }

    /// max_connections_per_destination alone: the admission of the calls without one.
    private var perDestination: PerDestinationLimit { PerDestinationLimit(limit: maxConnectionsPerDestination) }

    // MARK: Public operations

    /// Adds (or re-adds after a deferral) a job that becomes due at `due`. A job of the same message and
    /// destination that is still queued is replaced (an in-flight one is the caller's).
    public mutating func add(_ job: DeliveryJob, due: Double) {
        var a = perDestination
        add(job, due: due, shaping: &a)
    }

    public mutating func add<A: ShapingAdmission>(_ job: DeliveryJob, due: Double, shaping: inout A) {
        // The queue slot is created before the old job goes, so it is not freed in between.
        let queue = queueSlot(job.destination, pool: job.pool, &shaping)
        var old = firstJobOfMessage[job.id] ?? -1
        var oldQueue: Int32 = -1
        while old >= 0 {
            let record = jobs[Int(old)]
            if record.destination == queue || queues[Int(record.destination)].name == job.destination {
                oldQueue = record.destination
                unqueue(old)
                break
            }
            old = record.nextOfMessage
        }

        let sequence = nextSequence
        nextSequence += 1
        var record = JobRecord(id: job.id, arrival: job.arrival, sequence: sequence, recipients: job.recipients,
                               destination: queue, priority: Int8(job.priority))
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

        queues[Int(queue)].queued += 1
        queuedJobs += 1
        waitingCount += 1
        waiting.push(WaitingEntry(due: due.isNaN ? -.infinity : due, sequence: sequence, slot: slot))
        if oldQueue >= 0 && oldQueue != queue { settle(oldQueue) }
        settle(queue)
    }

    /// Jobs to start now on NEW connections: due jobs, best first, within the total and per-destination
    /// limits. Each returned job takes one connection slot for its destination.
    public mutating func dispatch(now: Double) -> [DeliveryJob] {
        var a = perDestination
        return dispatch(now: now, shaping: &a).map(\.job)
    }

    /// Jobs to start now on new connections, best first across open gates, each with the lane its
    /// connection counts under. A gate the admission blocks leaves the candidates (O(log n)) until its
    /// wake time or a change of its group (`wake`): blocked backlogs are never scanned.
    public mutating func dispatch<A: ShapingAdmission>(now: Double, shaping: inout A) -> [Dispatched] {
        promoteDue(now: now)
        var started: [Dispatched] = []
        while activeConnections < maxConnections, let candidate = candidates.pop() {
            let g = Int(candidate.slot)
            guard gates[g].candidateSequence == candidate.sequence else { continue }  // stale
            gates[g].candidateSequence = Gate.none
            cleanGateTop(Int32(g))
            guard let top = gates[g].queues.top, top.sequence == candidate.sequence else {
                refreshGate(Int32(g))  // not expected: the candidate follows the gate's top
                continue
            }
            let q = Int(top.slot)
            switch shaping.admitConnection(group: gates[g].group, pool: gates[g].pool, connections: gates[g].active,
                                           now: now, commit: true) {
            case .blocked(let until):
                block(Int32(g), until: until)
            case .open(let source):
                cleanReadyTop(Int32(q))
                guard let best = queues[q].ready.pop() else {  // not expected: the queue's entry is live
                    shaping.notAttempted(ShapingLane(group: gates[g].group, source: source))
                    shaping.connectionClosed(ShapingLane(group: gates[g].group, source: source))
                    refreshQueue(Int32(q))
                    continue
                }
                connect(Int32(q))
                let job = take(best.slot)
                started.append(Dispatched(job: job, connection: ConnectionLane(
                    destination: queues[q].name, pool: queues[q].pool,
                    lane: ShapingLane(group: gates[g].group, source: source), queue: Int32(q))))
                refreshQueue(Int32(q))
            }
        }
        return started
    }

    /// A connection to `destination` finished a job and may carry another: the best due job for that
    /// destination, keeping the slot; nil → the caller closes the connection and calls `release`.
    /// Also nil when the destination holds no connection slot (use `dispatch` for new connections).
    public mutating func next(for destination: String, now: Double) -> DeliveryJob? {
        guard let q = queueSlots[QueueKey(name: Scheduler.canonical(destination), pool: nil)] else {
            promoteDue(now: now)
            return nil
        }
        var a = perDestination
        let lane = ShapingLane(group: gates[Int(queues[Int(q)].gate)].group, source: "")
        return next(on: ConnectionLane(destination: queues[Int(q)].name, pool: nil, lane: lane), sent: 0, now: now,
                    shaping: &a)
    }

    /// An open connection that has sent `sent` messages asks for another: its queue's best due job if
    /// the lane's message rate and per-connection limit allow. Nil: idle it or close it. A rate that
    /// does not allow it yet blocks the gate until then; `promoteReadyForConnections` reports the
    /// queue when it reopens.
    public mutating func next<A: ShapingAdmission>(on connection: ConnectionLane, sent: Int, now: Double,
                                                   shaping: inout A) -> DeliveryJob? {
        promoteDue(now: now)
        guard let q = queue(of: connection), queues[Int(q)].active > 0 else { return nil }
        cleanReadyTop(q)
        guard queues[Int(q)].ready.top != nil else { return nil }
        switch shaping.admitMessage(on: connection.lane, sent: sent, now: now) {
        case .close:
            return nil
        case .wait(let until):
            block(queues[Int(q)].gate, until: until)
            return nil
        case .go:
            let best = queues[Int(q)].ready.pop()!
            let job = take(best.slot)
            refreshQueue(q)
            return job
        }
    }

    /// Whether the connection's queue (destination × pool) has a job ready now.
    public func hasReadyJob(on connection: ConnectionLane) -> Bool {
        guard let q = queue(of: connection) else { return false }
        return queues[Int(q)].readyCount > 0
    }

    /// The queue of a connection's lane: its slot hint when it still names that queue, else by lookup.
    private func queue(of connection: ConnectionLane) -> Int32? {
        let q = connection.queue
        if q >= 0, Int(q) < queues.count, queues[Int(q)].inUse, queues[Int(q)].name == connection.destination,
           queues[Int(q)].pool == connection.pool {
            return q
        }
        return queueSlots[QueueKey(name: Scheduler.canonical(connection.destination), pool: connection.pool)]
    }

    /// A connection slot is free again. Call `dispatch` afterwards: the slot may start another job.
    public mutating func release(destination: String) {
        guard let q = queueSlots[QueueKey(name: Scheduler.canonical(destination), pool: nil)] else { return }
        var a = perDestination
        let lane = ShapingLane(group: gates[Int(queues[Int(q)].gate)].group, source: "")
        release(ConnectionLane(destination: queues[Int(q)].name, pool: nil, lane: lane), shaping: &a)
    }

    /// A connection closed: its slot is free, its lane counts one connection less, and the gates of
    /// its group are open again (the admission decides at the next `dispatch`).
    public mutating func release<A: ShapingAdmission>(_ connection: ConnectionLane, shaping: inout A) {
        guard let q = queue(of: connection), queues[Int(q)].active > 0 else { return }
        let g = queues[Int(q)].gate
        queues[Int(q)].active -= 1
        gates[Int(g)].active -= 1
        if queues[Int(q)].active == 0 { gates[Int(g)].connected.remove(q) }
        activeConnections -= 1
        shaping.connectionClosed(connection.lane)
        wake(group: connection.lane.group)
        if connection.lane.group != gates[Int(g)].group { wake(group: gates[Int(g)].group) }
        settle(q)
    }

    /// The group's state changed (a connection closed, a suspension or throttle ended, the postmaster
    /// acted): its blocked gates go back among the candidates; those with idle connections are
    /// reported by `promoteReadyForConnections`.
    public mutating func wake(group: ShapingGroup) {
        guard group.kind != .unclassified, let list = gatesOfGroup[group] else { return }
        for g in list { unblock(g) }
    }

    // MARK: Traffic shaping's groups

    /// The lane of a connection to a destination's queue from `source`, under the queue's group now.
    public func connectionLane(destination: String, pool: String?, source: String) -> ConnectionLane? {
        let name = Scheduler.canonical(destination)
        guard let q = queueSlots[QueueKey(name: name, pool: pool)] else { return nil }
        return ConnectionLane(destination: name, pool: pool,
                              lane: ShapingLane(group: gates[Int(queues[Int(q)].gate)].group, source: source), queue: q)
    }

    /// Destinations whose jobs wait for their MX names, each reported once: the caller looks them up
    /// and calls `regroup` once the admission knows them.
    public mutating func takeUnclassified() -> [String] {
        // Asked at every pump: none must cost nothing (no copy of a shared buffer).
        guard !unclassified.isEmpty else { return [] }
        defer { unclassified.removeAll() }
        return unclassified
    }

    /// Moves a destination's queues to the gate of the group the admission now gives them (after an
    /// MX answer, or a new policy). Connections already open stay counted where they opened.
    public mutating func regroup<A: ShapingAdmission>(destination: String, shaping: inout A) {
        let name = Scheduler.canonical(destination)
        for (key, q) in queueSlots where key.name == name { regroup(q, &shaping) }
    }

    /// Every queue (a SIGHUP's new policy): O(queues).
    public mutating func regroupAll<A: ShapingAdmission>(shaping: inout A) {
        for q in Array(queueSlots.values) { regroup(q, &shaping) }
    }

    private mutating func regroup<A: ShapingAdmission>(_ q: Int32, _ shaping: inout A) {
        let name = queues[Int(q)].name, pool = queues[Int(q)].pool
        let group = shaping.group(of: name) ?? ShapingGroup(kind: .unclassified, name: name)
        let from = queues[Int(q)].gate
        guard gates[Int(from)].group != group else { return }
        let to = gateSlot(group, pool: pool)
        // Leave the old gate: its entry for the queue goes stale.
        if queues[Int(q)].candidateSequence != Queue.none { gates[Int(from)].liveEntries -= 1 }
        queues[Int(q)].candidateSequence = Queue.none
        gates[Int(from)].queueCount -= 1
        gates[Int(from)].active -= queues[Int(q)].active
        gates[Int(from)].connected.remove(q)
        queues[Int(q)].gate = to
        gates[Int(to)].queueCount += 1
        gates[Int(to)].active += queues[Int(q)].active
        if queues[Int(q)].active > 0 { gates[Int(to)].connected.insert(q) }
        refreshQueue(q)
        refreshGate(from)
        freeGateIfUnused(from)
    }

    /// Per group: queued jobs and connection slots taken (for the view). O(gates).
    public func groupCounts() -> [ShapingGroup: (queued: Int, connections: Int)] {
        var out: [ShapingGroup: (queued: Int, connections: Int)] = [:]
        for q in queues where q.inUse {
            let group = gates[Int(q.gate)].group
            let c = out[group] ?? (0, 0)
            out[group] = (c.queued + q.queued, c.connections + q.active)
        }
        return out
    }

    // MARK: Idle connections (the delivery side's connection cache)

    /// Makes the jobs due at `now` ready and returns the destinations that got one while holding a
    /// connection slot (or whose gate reopened): the caller hands those jobs to its idle connections with
    /// `next(for:)` before `dispatch` opens new ones. Costs only the promotion (nothing when no job
    /// became due).
    public mutating func promoteReadyForConnections(now: Double) -> [String] {
        promoteDue(now: now)
        // Also those promoted by an earlier `next(for:)` or `dispatch` (another destination's
        // connection asking): they were not handed to their own destination's connections then.
        var names: [String] = []
        var seen = Set<String>()
        for q in promotedWithSlot where queues[Int(q)].inUse && seen.insert(queues[Int(q)].name).inserted {
            names.append(queues[Int(q)].name)
        }
        promotedWithSlot.removeAll(keepingCapacity: true)
        return names
    }

    /// Every connection slot is taken and a ready job waits for a new connection (its destination is
    /// under its own limit): the caller may close an idle connection to make room for it.
    public mutating func hasJobWaitingForSlot() -> Bool {
        var a = perDestination
        return hasJobWaitingForSlot(now: -.infinity, shaping: &a)
    }

    public mutating func hasJobWaitingForSlot<A: ShapingAdmission>(now: Double, shaping: inout A) -> Bool {
        guard activeConnections >= maxConnections else { return false }
        while let top = candidates.top {
            let g = Int(top.slot)
            if gates[g].candidateSequence != top.sequence {
                candidates.pop()  // stale
                continue
            }
            // Asked without taking: a gate its admission blocks is not waiting for a slot.
            if case .blocked(let until) = shaping.admitConnection(group: gates[g].group, pool: gates[g].pool,
                                                                  connections: gates[g].active, now: now,
                                                                  commit: false) {
                candidates.pop()
                gates[g].candidateSequence = Gate.none
                block(Int32(g), until: until)
                continue
            }
            return true
        }
        return false
    }

    /// Earliest time a not-yet-due job becomes due or a blocked gate opens (for the caller's timer),
    /// or nil. May be in the past when jobs were added with a due time before the last `dispatch`/`next`.
    public var nextDueTime: Double? {
        switch (waiting.top?.due, wakes.top?.time) {
        case (let a?, let b?): return min(a, b)
        case (let a?, nil): return a
        case (nil, let b?): return b
        case (nil, nil): return nil
        }
    }

    public func activeConnections(for destination: String) -> Int {
        guard let q = queueSlots[QueueKey(name: Scheduler.canonical(destination), pool: nil)] else { return 0 }
        return queues[Int(q)].active
    }

    /// Removes every queued job of a message (deleted or bounced by an operator); in-flight ones are the
    /// caller's.
    public mutating func remove(id: QueueID) {
        var affected: [Int32] = []
        while let slot = firstJobOfMessage[id] {
            affected.append(jobs[Int(slot)].destination)
            unqueue(slot)
        }
        for q in affected { settle(q) }
    }

    // MARK: The postmaster's view (`tern queue`): O(jobs of the message), or O(all jobs) for a scan

    /// The queued (not in-flight) jobs of a message.
    public func queuedJobs(of id: QueueID) -> [DeliveryJob] {
        var out: [DeliveryJob] = []
        var slot = firstJobOfMessage[id] ?? -1
        while slot >= 0 {
            let record = jobs[Int(slot)]
            out.append(DeliveryJob(record: record, queue: queues[Int(record.destination)]))
            slot = record.nextOfMessage
        }
        return out
    }

    /// The queued jobs for a destination (a scan of every job).
    public func queuedJobs(destination: String) -> [DeliveryJob] {
        let name = Scheduler.canonical(destination)
        let slots = Set(queueSlots.filter { $0.key.name == name }.map(\.value))
        guard !slots.isEmpty else { return [] }
        return jobs.filter { $0.state != .free && slots.contains($0.destination) }
            .map { DeliveryJob(record: $0, queue: queues[Int($0.destination)]) }
    }

    /// Every queued job (a scan).
    public func allQueuedJobs() -> [DeliveryJob] {
        jobs.filter { $0.state != .free }.map { DeliveryJob(record: $0, queue: queues[Int($0.destination)]) }
    }

    /// Makes queued jobs due at `due` (a flush: "retry now"), keeping their order of priority and
    /// arrival. Jobs in flight are not touched. Returns how many jobs were moved.
    @discardableResult
    public mutating func reschedule(_ queued: [DeliveryJob], due: Double) -> Int {
        var a = perDestination
        return reschedule(queued, due: due, shaping: &a)
    }

    @discardableResult
    public mutating func reschedule<A: ShapingAdmission>(_ queued: [DeliveryJob], due: Double, shaping: inout A) -> Int {
        for job in queued { add(job, due: due, shaping: &shaping) }
        return queued.count
    }

    /// Each queued message once, with its priority and whether any of its jobs was tried before.
    /// Messages with a queued job (waiting, due or deferred).
    public var queuedMessages: Int { firstJobOfMessage.count }

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

    /// Moves every job due at `now` from the waiting heap to its queue's ready heap, and reopens the
    /// gates whose wake time came. Queues holding a connection slot that got a ready job are
    /// remembered in `promotedWithSlot` until `promoteReadyForConnections` hands them out.
    private mutating func promoteDue(now: Double) {
        while let entry = waiting.top, entry.due <= now {
            waiting.pop()
            let slot = Int(entry.slot)
            guard jobs[slot].sequence == entry.sequence, jobs[slot].state == .waiting else { continue }
            jobs[slot].state = .ready
            waitingCount -= 1
            let record = jobs[slot]
            let q = record.destination
            queues[Int(q)].readyCount += 1
            queues[Int(q)].ready.push(ReadyEntry(arrival: record.arrival, sequence: record.sequence,
                                                 slot: entry.slot, priority: record.priority))
            if queues[Int(q)].active > 0 { promotedWithSlot.insert(q) }
            refreshQueue(q)
        }
        cleanWaitingTop()  // a removed job's entry may be next, and `nextDueTime` reads the top
        while let w = wakes.top, w.time <= now {
            wakes.pop()
            if gates[Int(w.gate)].inUse && gates[Int(w.gate)].epoch == w.epoch { unblock(w.gate) }
        }
    }

    /// The admission said no: the gate leaves the candidates until `until` (if any) or a `wake`.
    private mutating func block(_ g: Int32, until: Double?) {
        let i = Int(g)
        gates[i].blocked = true
        gates[i].candidateSequence = Gate.none
        gates[i].epoch &+= 1
        if let until {
            wakes.push(WakeEntry(time: until.isNaN ? -.infinity : until, gate: g, epoch: gates[i].epoch))
            if wakes.count > 2 * gateSlots.count + 64 {
                let gates = self.gates
                wakes.removeAll { !gates[Int($0.gate)].inUse || gates[Int($0.gate)].epoch != $0.epoch }
            }
        }
    }

    private mutating func unblock(_ g: Int32) {
        let i = Int(g)
        guard gates[i].inUse, gates[i].blocked, gates[i].group.kind != .unclassified else { return }
        gates[i].blocked = false
        gates[i].epoch &+= 1
        // Its idle connections may take work again (a message rate or suspension had stopped them).
        for q in gates[i].connected where queues[Int(q)].readyCount > 0 { promotedWithSlot.insert(q) }
        refreshGate(g)
    }

    private mutating func connect(_ q: Int32) {
        let g = Int(queues[Int(q)].gate)
        queues[Int(q)].active += 1
        if queues[Int(q)].active == 1 { gates[g].connected.insert(q) }
        gates[g].active += 1
        activeConnections += 1
    }

    /// Takes a ready job out of the index to hand it to the caller (in flight from now on).
    private mutating func take(_ slot: Int32) -> DeliveryJob {
        let record = jobs[Int(slot)]
        let job = DeliveryJob(record: record, queue: queues[Int(record.destination)])
        unqueue(slot)
        return job
    }

    /// Drops a queued job's record: counts, message chain, slot. Its heap entries become stale.
    private mutating func unqueue(_ slot: Int32) {
        let record = jobs[Int(slot)]
        let q = Int(record.destination)
        switch record.state {
        case .waiting: waitingCount -= 1
        case .ready: queues[q].readyCount -= 1
        case .free: preconditionFailure("unqueue of a free job record")
        }
        queues[q].queued -= 1
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

    /// After jobs of queue `q` were unqueued or its connections changed: clean the heap tops, compact
    /// heaps full of stale entries, update its candidacy, and free it when unused.
    private mutating func settle(_ q: Int32) {
        cleanWaitingTop()
        if waiting.count > 2 * waitingCount + 64 {
            let jobs = self.jobs
            waiting.removeAll { jobs[Int($0.slot)].sequence != $0.sequence || jobs[Int($0.slot)].state != .waiting }
        }
        let i = Int(q)
        guard queues[i].inUse else { return }  // freed by an earlier settle
        if queues[i].ready.count > 2 * queues[i].readyCount + 64 {
            let jobs = self.jobs
            queues[i].ready.removeAll {
                jobs[Int($0.slot)].sequence != $0.sequence || jobs[Int($0.slot)].state != .ready
            }
        }
        refreshQueue(q)
        if queues[i].queued == 0 && queues[i].active == 0 {
            let g = queues[i].gate
            if queues[i].candidateSequence != Queue.none { gates[Int(g)].liveEntries -= 1 }
            gates[Int(g)].queueCount -= 1
            queueSlots[QueueKey(name: queues[i].name, pool: queues[i].pool)] = nil
            queues[i] = Queue(name: "", pool: nil, gate: -1)
            queues[i].inUse = false
            freeQueues.append(q)
            freeGateIfUnused(g)
        }
    }

    private mutating func freeGateIfUnused(_ g: Int32) {
        let i = Int(g)
        guard gates[i].inUse, gates[i].queueCount == 0, gates[i].active == 0 else { return }
        let key = GateKey(group: gates[i].group, pool: gates[i].pool)
        gateSlots[key] = nil
        if var list = gatesOfGroup[key.group] {
            list.removeAll { $0 == g }
            gatesOfGroup[key.group] = list.isEmpty ? nil : list
        }
        gates[i] = Gate(group: ShapingGroup(kind: .domain, name: ""), pool: nil)
        gates[i].inUse = false
        gates[i].epoch = 0
        freeGates.append(g)
    }

    /// Keeps queue `q`'s entry in its gate's heap keyed by its current best ready job
    /// (`candidateSequence`), then the gate's candidacy.
    private mutating func refreshQueue(_ q: Int32) {
        cleanReadyTop(q)
        let i = Int(q)
        let g = queues[i].gate
        if var best = queues[i].ready.top {
            if queues[i].candidateSequence != best.sequence {
                if queues[i].candidateSequence == Queue.none { gates[Int(g)].liveEntries += 1 }
                queues[i].candidateSequence = best.sequence
                best.slot = q
                gates[Int(g)].queues.push(best)
                if gates[Int(g)].queues.count > 2 * gates[Int(g)].liveEntries + 64 {
                    let queues = self.queues
                    gates[Int(g)].queues.removeAll {
                        queues[Int($0.slot)].gate != g || queues[Int($0.slot)].candidateSequence != $0.sequence
                    }
                }
            }
        } else if queues[i].candidateSequence != Queue.none {
            queues[i].candidateSequence = Queue.none
            gates[Int(g)].liveEntries -= 1
        }
        refreshGate(g)
    }

    /// Keeps the candidate heap right for gate `g`: when it is open, it has an entry keyed by its best
    /// queue's best ready job (`candidateSequence`); any other entry of it is stale.
    private mutating func refreshGate(_ g: Int32) {
        cleanGateTop(g)
        let i = Int(g)
        guard !gates[i].blocked, var best = gates[i].queues.top else {
            gates[i].candidateSequence = Gate.none
            return
        }
        guard gates[i].candidateSequence != best.sequence else { return }
        gates[i].candidateSequence = best.sequence
        best.slot = g
        candidates.push(best)
        if candidates.count > 2 * gateSlots.count + 64 { rebuildCandidates() }
    }

    private mutating func rebuildCandidates() {
        candidates = BinaryHeap(by: ReadyEntry.before)
        for i in gates.indices where gates[i].candidateSequence != Gate.none {
            var best = gates[i].queues.top!  // a candidate always has a live top
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

    private mutating func cleanReadyTop(_ q: Int32) {
        while let entry = queues[Int(q)].ready.top,
              jobs[Int(entry.slot)].sequence != entry.sequence || jobs[Int(entry.slot)].state != .ready {
            queues[Int(q)].ready.pop()
        }
    }

    private mutating func cleanGateTop(_ g: Int32) {
        while let entry = gates[Int(g)].queues.top,
              queues[Int(entry.slot)].gate != g || queues[Int(entry.slot)].candidateSequence != entry.sequence {
            gates[Int(g)].queues.pop()
        }
    }

    private mutating func queueSlot<A: ShapingAdmission>(_ name: String, pool: String?, _ shaping: inout A) -> Int32 {
        let key = QueueKey(name: name, pool: pool)
        if let q = queueSlots[key] { return q }
        let group: ShapingGroup
        if let known = shaping.group(of: name) {
            group = known
        } else {
            // Its MX names decide its rule: its jobs wait in a gate that never opens until `regroup`.
            group = ShapingGroup(kind: .unclassified, name: name)
            if gatesOfGroup[group] == nil { unclassified.append(name) }  // once, whatever the pools
        }
        let g = gateSlot(group, pool: pool)
        let q: Int32
        if let reused = freeQueues.popLast() {
            q = reused
            queues[Int(q)] = Queue(name: name, pool: pool, gate: g)
        } else {
            q = Int32(queues.count)
            queues.append(Queue(name: name, pool: pool, gate: g))
        }
        gates[Int(g)].queueCount += 1
        queueSlots[key] = q
        return q
    }

    private mutating func gateSlot(_ group: ShapingGroup, pool: String?) -> Int32 {
        let key = GateKey(group: group, pool: pool)
        if let g = gateSlots[key] { return g }
        var gate = Gate(group: group, pool: pool)
        gate.blocked = group.kind == .unclassified
        let g: Int32
        if let reused = freeGates.popLast() {
            g = reused
            gates[Int(g)] = gate
        } else {
            g = Int32(gates.count)
            gates.append(gate)
        }
        gateSlots[key] = g
        gatesOfGroup[group, default: []].append(g)
        return g
    }

    /// ASCII-lowercased; returns the string itself (no copy) when it has no capitals.
    static func canonical(_ destination: String) -> String {
        // Per job and per pick: a plain byte loop over contiguous UTF-8 (no generic iterator).
        var d = destination
        let upper = d.withUTF8 { bytes in bytes.contains(where: { $0 &- 0x41 < 26 }) }
        return upper ? destination.lowercased() : destination
    }

    // MARK: Introspection for tests and metrics

    /// Bytes the index holds, from the capacities of its arrays and dictionaries: records, heaps,
    /// free lists, the id dictionary (key + value + about one bit of metadata per bucket), queues and
    /// gates, plus the recipient lists that are stored out of line. Excludes malloc's own overhead.
    var indexFootprint: Int {
        var bytes = jobs.capacity * MemoryLayout<JobRecord>.stride
        bytes += freeJobs.capacity * MemoryLayout<Int32>.stride
        // A dictionary has capacity * 4/3 buckets (max load 3/4): a key, a value and a bit each.
        let buckets = firstJobOfMessage.capacity * 4 / 3
        bytes += buckets * (MemoryLayout<QueueID>.stride + MemoryLayout<Int32>.stride) + buckets / 8
        bytes += waiting.capacity * MemoryLayout<WaitingEntry>.stride
        bytes += candidates.capacity * MemoryLayout<ReadyEntry>.stride
        bytes += wakes.capacity * MemoryLayout<WakeEntry>.stride
        bytes += queues.capacity * MemoryLayout<Queue>.stride
        bytes += gates.capacity * MemoryLayout<Gate>.stride
        bytes += queueSlots.capacity * (MemoryLayout<QueueKey>.stride + MemoryLayout<Int32>.stride) * 4 / 3
        bytes += gateSlots.capacity * (MemoryLayout<GateKey>.stride + MemoryLayout<Int32>.stride) * 4 / 3
        for queue in queues { bytes += queue.ready.capacity * MemoryLayout<ReadyEntry>.stride }
        for gate in gates { bytes += gate.queues.capacity * MemoryLayout<ReadyEntry>.stride }
        for record in jobs where record.recipientCount < 0 {
            bytes += 32 + record.recipientList.capacity * MemoryLayout<Int>.stride
        }
        return bytes
    }

    static var jobRecordStride: Int { MemoryLayout<JobRecord>.stride }
}

/// Where an open connection belongs: its destination's queue (destination × pool) and the lane
/// (group × source) it counts under. The driver keeps it with the connection and passes it back.
public struct ConnectionLane: Hashable, Sendable {
    public var destination: String
    public var pool: String?
    public var lane: ShapingLane
    /// The scheduler's slot of the queue, a hint that spares a hash of the destination on every
    /// message of the connection (checked against the name before use; not part of equality).
    var queue: Int32 = -1

    public init(destination: String, pool: String?, lane: ShapingLane) {
        self.destination = destination
        self.pool = pool
        self.lane = lane
    }

    init(destination: String, pool: String?, lane: ShapingLane, queue: Int32) {
        self.init(destination: destination, pool: pool, lane: lane)
        self.queue = queue
    }

    public static func == (a: ConnectionLane, b: ConnectionLane) -> Bool {
        a.destination == b.destination && a.pool == b.pool && a.lane == b.lane
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(destination)
        hasher.combine(pool)
        hasher.combine(lane)
    }
}

/// A job to start on a new connection, and where that connection belongs.
public struct Dispatched: Sendable, Equatable {
    public var job: DeliveryJob
    public var connection: ConnectionLane
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
    fileprivate init(record: JobRecord, queue: Queue) {
        self.id = record.id
        self.destination = queue.name
        self.pool = queue.pool
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

/// A destination × pool: its jobs, best first.
private struct Queue: Sendable {
    static let none = UInt64.max

    var name: String
    var pool: String?
    /// Its gate (shaping group × pool).
    var gate: Int32
    var ready = BinaryHeap<ReadyEntry>(by: ReadyEntry.before)
    /// Live entries of `ready`.
    var readyCount = 0
    /// Waiting + ready jobs.
    var queued = 0
    /// Connection slots taken.
    var active = 0
    /// The sequence number of the job its live entry in the gate's heap is keyed by, or `none`.
    var candidateSequence = Queue.none
    /// False while the slot is on the free list.
    var inUse = true

    init(name: String, pool: String?, gate: Int32) {
        self.name = name
        self.pool = pool
        self.gate = gate
    }
}

/// A shaping group × pool: the queues whose new connections its lanes admit together.
private struct Gate: Sendable {
    static let none = UInt64.max

    var group: ShapingGroup
    var pool: String?
    /// Its queues with a ready job, by their best ready job (slot = the queue).
    var queues = BinaryHeap<ReadyEntry>(by: ReadyEntry.before)
    /// Queues with a live entry in `queues`.
    var liveEntries = 0
    /// Queues in this gate.
    var queueCount = 0
    /// Connection slots its queues hold.
    var active = 0
    /// Its queues holding a connection slot (their idle connections may take work when it reopens).
    var connected: Set<Int32> = []
    /// The sequence number of the job its live candidate entry is keyed by, or `none`.
    var candidateSequence = Gate.none
    /// The admission said no; it waits for a wake entry or its group's `wake`.
    var blocked = false
    /// Counts blockings, so a wake entry of an earlier one is stale.
    var epoch: UInt32 = 0
    var inUse = true

    init(group: ShapingGroup, pool: String?) {
        self.group = group
        self.pool = pool
    }
}

private struct QueueKey: Hashable, Sendable {
    var name: String
    var pool: String?
}

private struct GateKey: Hashable, Sendable {
    var group: ShapingGroup
    var pool: String?
}

private struct WakeEntry: Sendable {
    var time: Double
    var gate: Int32
    var epoch: UInt32
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
