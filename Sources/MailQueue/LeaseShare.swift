// LeaseShare.swift: how a rule's connection limit, held by a cluster as leases (issue 20), is shared
// fairly between the nodes that want it. Pure: the renewal script reports who holds how many leases
// and who waits for one; every node computes the same shares from that and closes its connections
// above its share (after their current message) while a node below its share waits.
//
// Without this a node that got the leases first keeps them: its connections stay busy with its own
// backlog and are reused, so a lease is rarely given back, and another node can wait for ever.
//
// The share: the limit divided by the nodes that hold or want a lease; what does not divide evenly
// (and, when there are fewer connections than nodes, every connection) goes to the nodes in an order
// that turns every `slice` seconds, so over time each node gets its turn.

public enum LeaseShare {
    /// Seconds a node keeps an extra connection before it passes to the next node in turn.
    public static let slice = 10

    /// Each node's share of `max` connections, among the nodes that hold or wait for a lease, at
    /// `time` (Redis's clock, seconds).
    public static func shares(max: Int, held: [String: Int], waiting: Set<String>, time: Int) -> [String: Int] {
        let active = Set(held.filter { $0.value > 0 }.keys).union(waiting).sorted()
        guard !active.isEmpty, max > 0 else { return [:] }
        let each = max / active.count
        let extra = max % active.count
        let turn = (time / slice) % active.count
        var shares: [String: Int] = [:]
        for (i, node) in active.enumerated() {
            // The `extra` nodes from this slice's turn onward (wrapping) get one more.
            let position = (i - turn + active.count) % active.count
            shares[node] = each + (position < extra ? 1 : 0)
        }
        return shares
    }

    /// Milliseconds a node refused a lease waits before it asks again, with `ahead` nodes before it in
    /// the queue: the first 50, each place further back 50 more, at most 250 (the nearer the front, the
    /// sooner a freed lease is taken; the further back, the fewer round trips for nothing).
    public static func retryMilliseconds(ahead: Int) -> UInt64 {
        UInt64(50 * (Swift.min(Swift.max(ahead, 0), 4) + 1))
    }

    /// How many of its connections `node` should close: those above its share, when another node waits
    /// with fewer than its own share (no one waiting: nothing is taken from anyone). `held` is what Redis
    /// counts; `mine`, when given, is this node's own count (the leases it renewed): members of an
    /// earlier run of it (a restart, a Redis outage) stay in Redis until they expire but are no
    /// connections here, and must not make it close live ones.
    public static func excess(node: String, mine: Int? = nil, max: Int, held: [String: Int], waiting: Set<String>,
                              time: Int) -> Int {
        var held = held
        if let mine { held[node] = mine }
        let shares = shares(max: max, held: held, waiting: waiting, time: time)
        let mine = held[node] ?? 0
        guard let share = shares[node], mine > share else { return 0 }
        let someoneShort = waiting.contains { $0 != node && (held[$0] ?? 0) < (shares[$0] ?? 0) }
        return someoneShort ? mine - share : 0
    }
}
