// The admin endpoint's routes: method and target in, what to do out. Pure, so every path, method
// and bad id is tested without a socket.
//
//   GET  /metrics                      Prometheus text format
//   GET  /queue?domain=&sender=&state=&priority=&min_age=&max_age=     the queue, as JSON
//   GET  /queue/ID                     one message: envelope, per-recipient state and last reply
//   GET  /queue/ID/message             its stored bytes (Received header first), as message/rfc822
//   POST /queue/ID/flush|hold|release|delete|bounce
//   POST /queue/flush[?domain=D]       retry now every queued job (for one domain)
//
// Actions are POST only, so that a crawler or a browser's prefetch never deletes mail.

import MailQueue

public enum AdminRoute: Equatable, Sendable {
    case metrics
    case list(QueueFilter)
    case show(QueueID)
    case message(QueueID)
    case act(QueueAction, QueueID)
    case flush(domain: String?)

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
        case 1 where segments[0] == "metrics":
            return try only("GET") { try noQuery(); return .metrics }
        case 1 where segments[0] == "queue":
            return try only("GET") { .list(try QueueFilter(query: query)) }
        case 2 where segments[0] == "queue" && segments[1] == "flush":
            return try only("POST") {
                var domain: String?
                for (key, value) in try AdminQuery.pairs(query) {
                    guard key == "domain", !value.isEmpty else {
                        throw AdminError(400, "flush takes only ?domain=NAME")
                    }
                    domain = value.lowercased().trimmingTrailingDot
                }
                return .flush(domain: domain)
            }
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
            throw AdminError(404, "no such path: \(path) (try /metrics or /queue)")
        }
    }
}
