// Seeing and steering traffic shaping (issue 16) through the admin endpoint, as postmasters know it
// from qshape and `kcli suspend`:
//
//   GET  /queue/destinations                                   per destination (or rule) × egress source
//   POST /queue/suspend?destination=D[&for=1h][&reason=TEXT]   no connection, no message until then
//   POST /queue/resume?destination=D                           configured limits again, at once
//
// D is a destination domain or a [[shaping]] rule's name; a domain under a rule suspends that rule
// (its limits are shared). A suspension of a destination with nothing queued still holds: mail that
// arrives later waits. Domains, reasons (typed by a postmaster, or a next hop's reply for a dead
// destination) are shown escaped: they are strangers' text on the postmaster's terminal.

import Foundation
import Logging
import MailQueue
import SMTPProtocol

/// One row of GET /queue/destinations.
public struct ShapingDestination: Codable, Equatable, Sendable {
    /// The destination domain, or the rule's name when a rule groups several.
    public var destination: String
    /// "domain" or "rule".
    public var kind: String
    /// The rule that matched ("default": none, [delivery]'s values).
    public var rule: String
    /// The egress source ("" when none is configured: the OS picks the address).
    public var source: String
    public var queued: Int
    /// Messages handed to a connection and not answered yet.
    public var inFlight: Int
    public var connections: Int
    public var maxConnections: Int?
    /// Messages sent in the last minute.
    public var messagesLastMinute: Int
    /// The message rate in force ("300/min"), nil when unlimited.
    public var messageRate: String?
    /// active, suspended, dead (probing), throttled, classifying (waiting for its MX names).
    public var state: String
    /// When a suspension or throttle ends (Unix seconds).
    public var until: Double?
    public var reason: String?
    /// The [[backoff]] rule of a throttle, and the limits it set.
    public var throttleRule: String?
    public var throttleRate: String?
    public var throttleConnections: Int?

    enum CodingKeys: String, CodingKey {
        case destination, kind, rule, source, queued, connections, state, until, reason
        case inFlight = "in_flight"
        case maxConnections = "max_connections"
        case messagesLastMinute = "messages_last_minute"
        case messageRate = "message_rate"
        case throttleRule = "throttle_rule"
        case throttleRate = "throttle_rate"
        case throttleConnections = "throttle_connections"
    }

    public init(destination: String, kind: String, rule: String, source: String, queued: Int, inFlight: Int = 0,
                connections: Int, maxConnections: Int? = nil, messagesLastMinute: Int = 0, messageRate: String? = nil,
                state: String = "active", until: Double? = nil, reason: String? = nil) {
        self.destination = destination
        self.kind = kind
        self.rule = rule
        self.source = source
        self.queued = queued
        self.inFlight = inFlight
        self.connections = connections
        self.maxConnections = maxConnections
        self.messagesLastMinute = messagesLastMinute
        self.messageRate = messageRate
        self.state = state
        self.until = until
        self.reason = reason
    }

    /// An older relay's rows have no in_flight: 0.
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        destination = try c.decode(String.self, forKey: .destination)
        kind = try c.decode(String.self, forKey: .kind)
        rule = try c.decode(String.self, forKey: .rule)
        source = try c.decode(String.self, forKey: .source)
        queued = try c.decode(Int.self, forKey: .queued)
        inFlight = try c.decodeIfPresent(Int.self, forKey: .inFlight) ?? 0
        connections = try c.decode(Int.self, forKey: .connections)
        maxConnections = try c.decodeIfPresent(Int.self, forKey: .maxConnections)
        messagesLastMinute = try c.decode(Int.self, forKey: .messagesLastMinute)
        messageRate = try c.decodeIfPresent(String.self, forKey: .messageRate)
        state = try c.decode(String.self, forKey: .state)
        until = try c.decodeIfPresent(Double.self, forKey: .until)
        reason = try c.decodeIfPresent(String.self, forKey: .reason)
        throttleRule = try c.decodeIfPresent(String.self, forKey: .throttleRule)
        throttleRate = try c.decodeIfPresent(String.self, forKey: .throttleRate)
        throttleConnections = try c.decodeIfPresent(Int.self, forKey: .throttleConnections)
    }

    public init(_ view: ShapingLaneView) {
        self.init(destination: view.group.name, kind: view.group.kind == .rule ? "rule" : "domain", rule: view.rule,
                  source: view.source, queued: view.queued, inFlight: view.inFlight, connections: view.connections,
                  maxConnections: view.maxConnections, messagesLastMinute: view.messagesLastMinute,
                  messageRate: view.messageRate)
        switch view.state {
        case .active:
            state = "active"
        case .suspended(let until, let reason):
            state = "suspended"
            self.until = until
            self.reason = reason
        case .probing(let reason):
            state = "dead"
            self.reason = reason
        case .throttled(let until, let rule, let rate, let connections):
            state = "throttled"
            self.until = until
            throttleRule = rule
            throttleRate = rate
            throttleConnections = connections
        case .classifying:
            state = "classifying"
        }
    }
}

/// GET /queue/destinations.
public struct ShapingDestinationListing: Codable, Equatable, Sendable {
    public var count: Int
    public var destinations: [ShapingDestination]
    public var deliveryEnabled: Bool

    enum CodingKeys: String, CodingKey {
        case count, destinations
        case deliveryEnabled = "delivery_enabled"
    }

    public init(_ destinations: [ShapingDestination], deliveryEnabled: Bool) {
        count = destinations.count
        self.destinations = destinations
        self.deliveryEnabled = deliveryEnabled
    }
}

/// What POST /queue/suspend asks: a target checked, a duration, a reason.
public struct ShapingSuspendRequest: Equatable, Sendable {
    public var destination: String
    public var seconds: Double
    public var reason: String

    public static let defaultSeconds = 3600.0
    /// A longer one is a config change (or a route), not a suspension someone forgets.
    public static let maxSeconds = 30 * 86400.0
    public static let defaultReason = "suspended by the postmaster"
    public static let maxReasonLength = 200

    public init(destination: String, seconds: Double = defaultSeconds, reason: String = defaultReason) {
        self.destination = destination
        self.seconds = seconds
        self.reason = reason
    }

    /// destination (required), for (a duration: "30m", "2h", "1d"; default 1h), reason (optional).
    public init(query: String) throws {
        var destination: String?
        var seconds = Self.defaultSeconds
        var reason = Self.defaultReason
        for (key, value) in try AdminQuery.pairs(query) {
            switch key {
            case "destination":
                destination = try Self.target(value)
            case "for":
                let parsed: Double
                do { parsed = try parseDuration(value) } catch {
                    throw AdminError(400, "for: \((error as? ConfigError)?.message ?? "\(error)")")
                }
                guard parsed > 0 else { throw AdminError(400, "for: must be longer than 0s") }
                guard parsed <= Self.maxSeconds else { throw AdminError(400, "for: at most 30d") }
                seconds = parsed
            case "reason":
                reason = try Self.reason(value)
            default:
                throw AdminError(400, "unknown parameter \"\(terminalSafe(key))\" (destination, for, reason)")
            }
        }
        guard let destination else { throw AdminError(400, "destination: required (a domain or a [[shaping]] rule's name)") }
        self.init(destination: destination, seconds: seconds, reason: reason)
    }

    /// A domain (a trailing dot dropped) or a rule's name; anything else is refused, naming the field.
    static func target(_ value: String) throws -> String {
        var name = value
        if name.hasSuffix(".") && name.count > 1 { name.removeLast() }
        guard !name.isEmpty else { throw AdminError(400, "destination: must not be empty") }
        guard name.contains(where: { $0 != "." }), isShapingName(name) || isPlausibleDomain(name) else {
            throw AdminError(400, "destination: \"\(terminalSafe(value))\" is neither a domain nor a rule's name")
        }
        return name
    }

    static func reason(_ value: String) throws -> String {
        let trimmed = value.trimmingCharacters(in: .whitespaces)
        guard !trimmed.isEmpty else { throw AdminError(400, "reason: must not be empty (leave it out for the default)") }
        guard trimmed.count <= maxReasonLength else { throw AdminError(400, "reason: at most \(maxReasonLength) characters") }
        guard !trimmed.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) else {
            throw AdminError(400, "reason: must not contain control characters")
        }
        return trimmed
    }

    /// POST /queue/resume: destination only.
    public static func resumeTarget(query: String) throws -> String {
        var destination: String?
        for (key, value) in try AdminQuery.pairs(query) {
            guard key == "destination" else {
                throw AdminError(400, "unknown parameter \"\(terminalSafe(key))\" (destination)")
            }
            destination = try target(value)
        }
        guard let destination else { throw AdminError(400, "destination: required (a domain or a [[shaping]] rule's name)") }
        return destination
    }
}

/// The answer to a suspend or resume.
public struct ShapingActionReply: Codable, Equatable, Sendable {
    public var action: String
    /// As asked.
    public var destination: String
    /// What it applied to: the destination itself, or the rule it falls under.
    public var group: String
    public var kind: String
    public var until: Double?
    public var reason: String?
    public var message: String

    public init(action: String, destination: String, group: ShapingGroup, until: Double? = nil, reason: String? = nil,
                message: String) {
        self.action = action
        self.destination = destination
        self.group = group.name
        kind = group.kind == .rule ? "rule" : "domain"
        self.until = until
        self.reason = reason
        self.message = message
    }
}

extension DeliveryManager {
    /// The destinations table (GET /queue/destinations).
    func destinations() -> [ShapingDestination] { shapingView().map(ShapingDestination.init) }

    /// `tern queue suspend`: logged as the postmaster's action, then carried out.
    func postmasterSuspend(_ request: ShapingSuspendRequest) -> ShapingActionReply {
        let until = now + request.seconds
        let group = suspend(request.destination, for: request.seconds, reason: request.reason)
        let applied = ShapingDestinationsFormat.describe(asked: request.destination, group)
        let length = ShapingDestinationsFormat.duration(request.seconds)
        log.info("suspend by the postmaster: \(applied) for \(length) until \(Int(until)): \(terminalSafe(request.reason))")
        return ShapingActionReply(action: "suspend", destination: request.destination, group: group, until: until,
                                  reason: request.reason,
                                  message: "\(applied) suspended for \(length): \(terminalSafe(request.reason))")
    }

    /// `tern queue resume`: every suspension, throttle and dead state of the destination lifted.
    func postmasterResume(_ destination: String) -> ShapingActionReply {
        let group = resume(destination)
        let applied = ShapingDestinationsFormat.describe(asked: destination, group)
        log.info("resume by the postmaster: \(applied)")
        return ShapingActionReply(action: "resume", destination: destination, group: group,
                                  message: "\(applied) resumed: configured limits again")
    }
}

/// How `tern queue destinations` prints: one aligned line per destination × source.
public enum ShapingDestinationsFormat {
    static let header = ["DESTINATION", "SOURCE", "RULE", "QUEUED", "INFLIGHT", "CONNS", "MSG/MIN", "STATE"]

    public static func table(_ rows: [ShapingDestination], now: Double, timeZone: TimeZone) -> String {
        guard !rows.isEmpty else { return "No destinations queued, connected or suspended\n" }
        let dates = MailqFormat.formatter(timeZone)
        func when(_ t: Double) -> String {
            "\(dates.string(from: Date(timeIntervalSince1970: t))) (in \(MailqFormat.age(t - now)))"
        }
        var lines = [header]
        for r in rows {
            let conns = r.maxConnections.map { "\(r.connections)/\($0)" } ?? "\(r.connections)"
            let rate = r.messageRate.map { "\(r.messagesLastMinute) (max \($0))" } ?? "\(r.messagesLastMinute)"
            lines.append([terminalSafe(r.destination) + (r.kind == "rule" ? " (rule)" : ""),
                          r.source.isEmpty ? "-" : terminalSafe(r.source), terminalSafe(r.rule), "\(r.queued)",
                          "\(r.inFlight)", conns, rate,
                          state(r, when: when)])
        }
        let widths = header.indices.map { i in lines.map { $0[i].count }.max() ?? 0 }
        return lines.map { cells in
            cells.enumerated().map { i, cell in
                // Counts right-aligned; the last column not padded.
                if i == cells.count - 1 { return cell }
                let pad = String(repeating: " ", count: widths[i] - cell.count)
                return (3...5).contains(i) ? pad + cell : cell + pad
            }.joined(separator: "  ")
        }.joined(separator: "\n") + "\n"
    }

    static func state(_ r: ShapingDestination, when: (Double) -> String) -> String {
        let why = r.reason.map { ": " + terminalSafe($0) } ?? ""
        switch r.state {
        case "suspended":
            return "suspended" + (r.until.map { " until " + when($0) } ?? "") + why
        case "dead":
            return "dead, probing" + why
        case "throttled":
            let limits = [r.throttleRate.map { "rate \(terminalSafe($0))" },
                          r.throttleConnections.map { "\($0) connection\($0 == 1 ? "" : "s")" }].compactMap { $0 }
            return "throttled to " + (limits.isEmpty ? "lower limits" : limits.joined(separator: ", "))
                + (r.until.map { " until " + when($0) } ?? "")
                + (r.throttleRule.map { " by " + terminalSafe($0) } ?? "")
        case "classifying":
            return "waiting for its MX names"
        default:
            return terminalSafe(r.state)
        }
    }

    /// "example.com" or "example.com (rule google)".
    static func describe(asked: String, _ group: ShapingGroup) -> String {
        let safe = terminalSafe(asked)
        switch group.kind {
        case .rule where group.name == asked: return "rule \(safe)"
        case .rule: return "\(safe) (rule \(terminalSafe(group.name)))"
        default: return safe
        }
    }

    /// "1h", "30m", "1d 2h".
    static func duration(_ seconds: Double) -> String {
        let s = Int(seconds.rounded())
        if s % 86400 == 0 { return "\(s / 86400)d" }
        if s % 3600 == 0 { return "\(s / 3600)h" }
        if s % 60 == 0 { return "\(s / 60)m" }
        return MailqFormat.age(seconds)
    }
}
