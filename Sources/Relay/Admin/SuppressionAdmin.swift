// The suppression list through the admin endpoint (issue 19), as `tern suppress` uses it:
//
//   GET  /suppression[?offset=0&limit=1000]          entries in the order they were added
//   GET  /suppression?address=A[&scope=D]            one entry, or 404
//   POST /suppression/add?address=A[&scope=D][&reason=TEXT]
//   POST /suppression/remove?address=A[&scope=D]
//   POST /suppression/import[?scope=D][&reason=TEXT]   body: one address (or @domain) a line
//
// A is "local@domain" or "@domain" (every address at the domain); D a sender domain ("" or left out:
// every sender). Changes are answered once they are synced to spool/suppression.list, and logged as
// the postmaster's. An import takes what the admin endpoint's body limit allows (1 MiB, about 20,000
// addresses): `tern suppress import` sends a file in such pieces. Addresses and reasons are checked
// here (no spaces or control characters, at most 512 and 200 octets) and shown escaped.

import Foundation
import MailQueue
import SMTPProtocol

/// What a suppression request names: an address or "@domain", and a scope.
public struct SuppressionKey: Equatable, Sendable {
    public var address: String
    public var scope: String

    /// An address "local@domain" or "@domain": printable, no spaces, an "@" with a domain after it.
    static func address(_ value: String, field: String = "address") throws -> String {
        let text = SuppressionList.normalized(value.trimmingCharacters(in: .whitespaces))
        guard !text.isEmpty else { throw AdminError(400, "\(field): required (local@domain, or @domain for all of it)") }
        guard text.utf8.count <= SuppressionList.maxKeyLength,
              text.utf8.allSatisfy({ $0 > 32 && $0 != 127 }),
              let at = text.lastIndex(of: "@"), text.index(after: at) < text.endIndex,
              isPlausibleDomain(String(text[text.index(after: at)...]))
        else {
            throw AdminError(400, "\(field): \"\(terminalSafe(value))\" is not an address (local@domain) or @domain")
        }
        return text
    }

    static func scope(_ value: String) throws -> String {
        let text = SuppressionList.normalized(value)
        guard text.isEmpty || isPlausibleDomain(text) else {
            throw AdminError(400, "scope: \"\(terminalSafe(value))\" is not a sender domain")
        }
        return text
    }

    static func reason(_ value: String) throws -> String {
        let text = value.trimmingCharacters(in: .whitespaces)
        guard !text.isEmpty else { throw AdminError(400, "reason: must not be empty (leave it out for the default)") }
        guard text.utf8.count <= 200, !text.unicodeScalars.contains(where: { $0.value < 32 || (0x7F...0x9F).contains($0.value) })
        else { throw AdminError(400, "reason: at most 200 octets, no control characters") }
        return text
    }
}

/// A postmaster's suppression request.
public enum SuppressionRequest: Equatable, Sendable {
    case list(offset: Int, limit: Int)
    case show(SuppressionKey)
    case add(SuppressionKey, reason: String)
    case remove(SuppressionKey)
    case importLines(scope: String, reason: String)

    public static let defaultReason = "added by the postmaster"
    public static let maxLimit = 100_000

    static func parse(method: String, action: String?, query: String) throws -> SuppressionRequest {
        var address: String?, scope = "", reason = defaultReason, offset = 0, limit = 1000
        for (key, value) in try AdminQuery.pairs(query) {
            switch key {
            case "address": address = try SuppressionKey.address(value)
            case "scope": scope = try SuppressionKey.scope(value)
            case "reason": reason = try SuppressionKey.reason(value)
            case "offset", "limit":
                guard let n = Int(value), n >= 0, key == "offset" || (1...maxLimit).contains(n) else {
                    throw AdminError(400, "\(key): \(key == "offset" ? "a number from 0" : "a number from 1 to \(maxLimit)")")
                }
                if key == "offset" { offset = n } else { limit = n }
            default:
                throw AdminError(400, "unknown parameter \"\(terminalSafe(key))\" (address, scope, reason, offset, limit)")
            }
        }
        func key() throws -> SuppressionKey {
            guard let address else { throw AdminError(400, "address: required (local@domain, or @domain for all of it)") }
            return SuppressionKey(address: address, scope: scope)
        }
        switch action {
        case nil:
            guard method == "GET" || method == "HEAD" else { throw AdminError(405, "\(method) is not allowed here; use GET") }
            return address == nil ? .list(offset: offset, limit: limit) : .show(try key())
        case "add", "remove", "import":
            guard method == "POST" else { throw AdminError(405, "\(method) is not allowed here; use POST") }
            if action == "add" { return .add(try key(), reason: reason) }
            if action == "remove" { return .remove(try key()) }
            guard address == nil else { throw AdminError(400, "address: the addresses of an import are its body's lines") }
            return .importLines(scope: scope, reason: reason)
        default:
            throw AdminError(404, "no action \"\(terminalSafe(action ?? ""))\" (add, remove, import)")
        }
    }
}

/// One entry as the endpoint shows it.
public struct SuppressionView: Codable, Equatable, Sendable {
    public var address: String
    public var scope: String
    public var reason: String
    /// Unix seconds.
    public var time: Int
    /// "manual" or "bounce".
    public var source: String

    init(_ e: SuppressionEntry) {
        address = e.address
        scope = e.scope
        reason = e.reason
        time = e.time
        source = e.source == .bounce ? "bounce" : "manual"
    }
}

public struct SuppressionListing: Codable, Equatable, Sendable {
    public var total: Int
    public var offset: Int
    public var entries: [SuppressionView]
}

public struct SuppressionReply: Codable, Equatable, Sendable {
    public var message: String
    /// An import: how many lines were added, how many refused, and the first 100 refused (1-based,
    /// with why).
    public var added: Int?
    public var refusedCount: Int?
    public var refused: [SuppressionRefusedLine]?

    enum CodingKeys: String, CodingKey {
        case message, added, refused
        case refusedCount = "refused_count"
    }
}

public struct SuppressionRefusedLine: Codable, Equatable, Sendable {
    public var line: Int
    public var error: String
}

extension SuppressionRequest {
    /// The lines of an import body: addresses, blank lines and "#" comments skipped; at most the first
    /// 100 refusals are listed.
    static func importedAddresses(_ body: [UInt8]) -> (addresses: [String], refused: [SuppressionRefusedLine], refusedCount: Int) {
        var addresses: [String] = []
        var refused: [SuppressionRefusedLine] = []
        var refusedCount = 0
        for (index, raw) in body.split(separator: 10, omittingEmptySubsequences: false).enumerated() {
            var line = raw
            if line.last == 13 { line = line.dropLast() }
            let text = String(decoding: line, as: UTF8.self).trimmingCharacters(in: .whitespaces)
            if text.isEmpty || text.hasPrefix("#") { continue }
            do {
                addresses.append(try SuppressionKey.address(text))
            } catch let error as AdminError {
                refusedCount += 1
                if refused.count < 100 { refused.append(SuppressionRefusedLine(line: index + 1, error: error.message)) }
            } catch {}
        }
        return (addresses, refused, refusedCount)
    }
}
