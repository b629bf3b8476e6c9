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

import Collections
import MailQueue

/// Idle outbound connections by destination, and in the order they went idle.
struct ConnectionCache {
    private var byDestination: [String: [OutboundConnection]] = [:]
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
        byDestination[connection.destination, default: []].append(connection)
        count += 1
        if order.count > 2 * count + 64 { order = Deque(order.filter { $0.connection.idleTicket == $0.ticket }) }
    }

    /// The most recently idle connection to `destination` (the older ones are the first to time out).
    mutating func take(for destination: String) -> OutboundConnection? {
        guard let connection = byDestination[destination]?.last else { return nil }
        remove(connection)
        return connection
    }

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

    func hasConnection(for destination: String) -> Bool { byDestination[destination] != nil }

    /// Takes `connection` out if it is idle; its entry in `order` goes stale.
    mutating func remove(_ connection: OutboundConnection) {
        guard connection.idleTicket != nil else { return }
        connection.idleTicket = nil
        count -= 1
        guard var list = byDestination[connection.destination],
              let i = list.firstIndex(where: { $0 === connection }) else { return }
        list.remove(at: i)
        byDestination[connection.destination] = list.isEmpty ? nil : list
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
        guard config.delivery.connectionCacheTime > 0, !core.hasJobWaitingForSlot() else {
            connection.finish()
            return
        }
        idleConnections.park(connection)
        connection.wentIdle()
    }

    /// Hands the jobs that became due to idle connections of their destinations (called by `pump`
    /// before `dispatch`, only while some connection is idle).
    func feedIdleConnections(now t: Double) {
        for destination in core.promoteReadyForConnections(now: t) {
            while idleConnections.hasConnection(for: destination),
                  let job = core.next(for: destination, now: t),
                  let connection = idleConnections.take(for: destination) {
                connection.leftIdle()
                start(job, on: connection, routeFirst: false)
            }
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
        routesGeneration += 1
        router.replaceRoutes(routes.routes)
        closeIdleConnections()
    }
}
