// The connection cache (Postfix's smtp_connection_cache_time_limit): a connection that finished a
// transaction while no job was due for its destination stays open, session ready and TLS kept, for
// `delivery.connection_cache_time`, so that the next message to that destination skips the connect,
// greeting, EHLO and STARTTLS. It keeps its scheduler slot meanwhile; when the time runs out it QUITs
// and gives the slot back. If the next hop closes it first (EOF, 421) it just goes away.
//
// New work reaches idle connections before any new connection opens: every job enters the scheduler
// through its waiting heap, and `pump` asks the scheduler only for the destinations that got a ready
// job while holding a slot (so it never walks the idle connections). When every slot is taken and a
// job for another destination waits for one, the longest-idle connections are closed to make room.
//
// Traffic shaping: each connection belongs to a lane (destination, egress pool, source) and takes only
// its lane's jobs (`core.next(on:)`), within its lane's message rate and messages per connection; it
// idles for its rule's connection_cache_time. The cache is indexed by destination because that is what
// the scheduler reports when jobs become ready; each idle connection then asks for its own lane.

import Collections
import MailQueue

/// Idle outbound connections by destination (the core's canonical name), then by lane (usually one per
/// destination), and in the order they went idle.
struct ConnectionCache {
    /// One lane's idle connections, the most recently idle last.
    struct Lane {
        let lane: ConnectionLane
        var connections: [OutboundConnection]
    }

    private var byDestination: [String: [Lane]] = [:]
    /// Oldest first; entries of connections taken out since are stale (their ticket no longer matches).
    private var order: Deque<(ticket: UInt64, connection: OutboundConnection)> = []
    private var nextTicket: UInt64 = 0
    private(set) var count = 0

    var isEmpty: Bool { count == 0 }

    mutating func park(_ connection: OutboundConnection) {
        guard connection.idleTicket == nil else { return }
        connection.idleTicket = nextTicket
        order.append((nextTicket, connection))
        nextTicket += 1
        let lane = connection.lane
        // One hash of the destination; the lists change in place (values[index]).
        if let d = byDestination.index(forKey: lane.destination) {
            Self.add(connection, lane, to: &byDestination.values[d])
        } else {
            byDestination[lane.destination] = [Lane(lane: lane, connections: [connection])]
        }
        count += 1
        if order.count > 2 * count + 64 { order = Deque(order.filter { $0.connection.idleTicket == $0.ticket }) }
    }

    /// The idle connections to `destination`, by lane.
    func lanes(for destination: String) -> [Lane] { byDestination[destination] ?? [] }

    /// The connection idle the longest.
    mutating func takeOldest() -> OutboundConnection? {
        while let (ticket, connection) = order.popFirst() {
            if connection.idleTicket == ticket {
                remove(connection)
                return connection
            }
        }
        return nil
    }

    /// Takes `connection` out if it is idle; its entry in `order` goes stale.
    mutating func remove(_ connection: OutboundConnection) {
        guard connection.idleTicket != nil else { return }
        connection.idleTicket = nil
        count -= 1
        let lane = connection.lane
        guard let d = byDestination.index(forKey: lane.destination) else { return }
        if Self.take(connection, lane, from: &byDestination.values[d]) { byDestination.remove(at: d) }
    }

    private static func add(_ connection: OutboundConnection, _ lane: ConnectionLane, to lanes: inout [Lane]) {
        if let l = lanes.firstIndex(where: { $0.lane == lane }) {
            lanes[l].connections.append(connection)
        } else {
            lanes.append(Lane(lane: lane, connections: [connection]))
        }
    }

    /// Takes `connection` out of its lane's list, in place; true when the destination has none left.
    private static func take(_ connection: OutboundConnection, _ lane: ConnectionLane, from lanes: inout [Lane]) -> Bool {
        guard let l = lanes.firstIndex(where: { $0.lane == lane }),
              let i = lanes[l].connections.firstIndex(where: { $0 === connection }) else {
            return false
        }
        lanes[l].connections.remove(at: i)
        if lanes[l].connections.isEmpty { lanes.remove(at: l) }
        return lanes.isEmpty
    }

    /// Up to `max` idle connections of a shaping lane (any destination), the longest idle first.
    mutating func take(lane: ShapingLane, max: Int) -> [OutboundConnection] {
        var taken: [OutboundConnection] = []
        for (ticket, connection) in order where taken.count < max {
            if connection.idleTicket == ticket && connection.lane.lane == lane { taken.append(connection) }
        }
        for connection in taken { remove(connection) }
        return taken
    }

    mutating func takeAll() -> [OutboundConnection] {
        var all: [OutboundConnection] = []
        while let c = takeOldest() { all.append(c) }
        order = []
        return all
    }
}

extension DeliveryManager {
    /// A connection finished its job and no job is due for its destination: keep it for the next one,
    /// unless the cache is off or another destination is waiting for the slot it holds.
    func parkOrFinish(_ connection: OutboundConnection) {
        let cacheTime = connection.limits.connectionCacheTime ?? config.delivery.connectionCacheTime
        let spent = connection.limits.maxMessagesPerConnection.map { connection.sent >= $0 } ?? false
        guard cacheTime > 0, !spent, !core.hasJobWaitingForSlot() else {
            connection.finish()
            return
        }
        idleConnections.park(connection)
        connection.wentIdle()
    }

    /// Hands the jobs that became due to idle connections of their destinations (called by `pump`
    /// before `dispatch`, only while some connection is idle).
    /// Each idle connection asks for a job of its own lane (its pool and source, its rate).
    func feedIdleConnections(now t: Double) {
        for destination in core.promoteReadyForConnections(now: t) {
            // The most recently idle first (the older ones are the first to time out). A lane found
            // with nothing ready is not asked again for its other idle connections: a pump costs one
            // ask per job handed out and per lane, not one per idle connection.
            var taken: [(OutboundConnection, DeliveryJob)] = []
            for idle in idleConnections.lanes(for: destination) {
                for connection in idle.connections.reversed() {
                    guard let job = core.next(on: idle.lane, sent: connection.sent, now: t) else {
                        if !core.hasReadyJob(on: idle.lane) { break }
                        continue  // this connection's own limit (messages per connection): the next may go
                    }
                    taken.append((connection, job))
                }
            }
            // Started once the loop let go of its copy of the idle lists (removing from them meanwhile
            // would copy a list once per job).
            // All out of the cache before the first starts: a start may pump again.
            for (connection, _) in taken {
                idleConnections.remove(connection)
                connection.sent += 1
                connection.leftIdle()
            }
            for (connection, job) in taken { start(job, on: connection, routeFirst: false) }
        }
    }

    /// Every slot is taken and a job for another destination waits: close the longest-idle
    /// connections, one at a time, until it gets one (each close pumps again).
    func closeIdleConnectionsForWaitingJobs() {
        while core.hasJobWaitingForSlot(), let connection = idleConnections.takeOldest() {
            log.debug("closing an idle connection to \(connection.destination): another destination waits for a slot")
            connection.finish()
        }
    }

    /// SIGHUP: idle connections QUIT, so new routes and TLS settings apply to the next message.
    public func closeIdleConnections() {
        for connection in idleConnections.takeAll() { connection.finish() }
    }

    /// SIGHUP: new [routes] (next hops, TLS policy, credentials) for every connection opened from now
    /// on. Idle connections QUIT now; busy ones finish their job and QUIT (`connectionReady`).
    public func applyRoutes(_ routes: RouteConfig) {
        guard routes != config.routes else { return }
        config.routes = routes
        core.routePools = routes.pools
        routesGeneration += 1
        router.replaceRoutes(routes.routes)
        closeIdleConnections()
    }
}
