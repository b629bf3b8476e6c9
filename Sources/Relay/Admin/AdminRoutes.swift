// The admin endpoint's routes: method and target in, what to do out. Pure, so every path, method
// and bad id is tested without a socket.
//
//   GET  /health                       the loop answers: 200 {"status":"ok"}
//   GET  /ready                        200 when listening, the spool writable and the queue loaded; else 503
//   GET  /metrics                      Prometheus text format
//   GET  /queue?domain=&sender=&state=&priority=&min_age=&max_age=     the queue, as JSON
//   GET  /queue/ID                     one message: envelope, per-recipient state and last reply
//   GET  /queue/ID/message             its stored bytes (Received header first), as message/rfc822
//   POST /queue/ID/flush|hold|release|delete|bounce
//   POST /queue/flush[?domain=D]       retry now every queued job (for one domain)
//   POST /queue/ACTION?all=1|domain=&sender=&state=...   the action on every message selected now
//   GET  /queue/destinations           traffic shaping: per destination × source (ShapingAdmin.swift)
//   POST /queue/suspend?destination=D[&for=1h][&reason=TEXT]
//   POST /queue/resume?destination=D
//   GET  /suppression, POST /suppression/add|remove|import   the suppression list (SuppressionAdmin.swift)
//
// Actions are POST only, so that a crawler or a browser's prefetch never deletes mail. A selection
// takes GET /queue's filters; an action on everything says so (all=1), so that a bare POST selects
// nothing by accident.

import MailQueue

public enum AdminRoute: Equatable, Sendable {
    case health
    case ready
    case metrics
    case list(QueueFilter)
    case show(QueueID)
    case message(QueueID)
    case act(QueueAction, QueueID)
    case flush(domain: String?)
    /// The action on every message the filter selects (all of them when it is empty).
    case bulk(QueueAction, QueueFilter)
    /// Traffic shaping: the destinations table, a postmaster's suspension, its end.
    case destinations
    case suspend(ShapingSuspendRequest)
    case resume(destination: String)
    /// The suppression list: list, show, add, remove, import.
    case suppression(SuppressionRequest)
    /// GET /cluster: the nodes of the cluster ([cluster], issue 20).
    case cluster

    public static func parse(method: String, target: String) throws -> AdminRoute {
        let parts = target.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)
        let path = parts[0]
        let query = parts.count > 1 ? String(parts[1]) : ""
        let segments = path.split(separator: "/", omittingEmptySubsequences: true).map(String.init)
        let isGet = method == "GET" || method == "HEAD"

        func only(_ allowed: String, _ route: () throws -> AdminRoute) throws -> AdminRoute {
            let ok = allowed == "GET" ? isGet : method == allowed
            guard ok else { throw AdminError(405, "\(method) is not allowed here; use \(allowed)") }
            return try route()
        }
        func noQuery() throws {
            guard query.isEmpty else { throw AdminError(400, "this path takes no query") }
        }
        func queueID(_ text: String) throws -> QueueID {
            guard let id = QueueID(rawValue: text.uppercased()) else {
                throw AdminError(400, "\"\(text)\" is not a queue id")
            }
            return id
        }

        switch segments.count {
        case 1 where segments[0] == "health":
            return try only("GET") { try noQuery(); return .health }
        case 1 where segments[0] == "ready":
            return try only("GET") { try noQuery(); return .ready }
        case 1 where segments[0] == "metrics":
            return try only("GET") { try noQuery(); return .metrics }
        case 1 where segments[0] == "cluster":
            return try only("GET") { try noQuery(); return .cluster }
        case 1 where segments[0] == "suppression":
            return .suppression(try SuppressionRequest.parse(method: method, action: nil, query: query))
        case 2 where segments[0] == "suppression":
            return .suppression(try SuppressionRequest.parse(method: method, action: segments[1], query: query))
        case 1 where segments[0] == "queue":
            return try only("GET") { .list(try QueueFilter(query: query)) }
        case 2 where segments[0] == "queue" && segments[1] == "flush":
            return try only("POST") {
                let pairs = try AdminQuery.pairs(query)
                // Every job, or a destination's jobs: the scheduler's own flush.
                guard pairs.allSatisfy({ $0.0 == "domain" }) else { return .bulk(.flush, try selection(pairs)) }
                var domain: String?
                for (_, value) in pairs {
                    guard !value.isEmpty else { throw AdminError(400, "domain must not be empty") }
                    domain = value.lowercased().trimmingTrailingDot
                }
                return .flush(domain: domain)
            }
        case 2 where segments[0] == "queue" && segments[1] == "destinations":
            return try only("GET") { try noQuery(); return .destinations }
        case 2 where segments[0] == "queue" && segments[1] == "suspend":
            return try only("POST") { .suspend(try ShapingSuspendRequest(query: query)) }
        case 2 where segments[0] == "queue" && segments[1] == "resume":
            return try only("POST") { .resume(destination: try ShapingSuspendRequest.resumeTarget(query: query)) }
        case 2 where segments[0] == "queue" && QueueAction(rawValue: segments[1]) != nil:
            return try only("POST") { .bulk(QueueAction(rawValue: segments[1])!, try selection(try AdminQuery.pairs(query))) }
        case 2 where segments[0] == "queue":
            return try only("GET") { try noQuery(); return .show(try queueID(segments[1])) }
        case 3 where segments[0] == "queue" && segments[2] == "message":
            return try only("GET") { try noQuery(); return .message(try queueID(segments[1])) }
        case 3 where segments[0] == "queue":
            guard let action = QueueAction(rawValue: segments[2]) else {
                throw AdminError(404, "no action \"\(segments[2])\" (flush, hold, release, delete, bounce)")
            }
            return try only("POST") { try noQuery(); return .act(action, try queueID(segments[1])) }
        default:
            throw AdminError(404, "no such path: \(path) (try /metrics, /queue, /health or /ready)")
        }
    }

    /// GET /queue's filters, or all=1 for every message; one of them must be there.
    static func selection(_ pairs: [(String, String)]) throws -> QueueFilter {
        var all = false
        var rest: [(String, String)] = []
        for (key, value) in pairs {
            guard key == "all" else { rest.append((key, value)); continue }
            guard value == "1" || value == "yes" || value == "true" else {
                throw AdminError(400, "all must be 1, got \"\(value)\"")
            }
            all = true
        }
        let filter = try QueueFilter(pairs: rest)
        guard all || filter != QueueFilter() else {
            throw AdminError(400, "select the messages: ?all=1, or filters (domain, sender, state, priority, min_age, max_age)")
        }
        return filter
    }
}
