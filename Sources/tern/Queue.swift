// `tern queue ...`: the postmaster's queue tools (mailq, qshape, postsuper, postqueue -f in one),
// talking to the running daemon through its admin endpoint. The endpoint is `--admin HOST:PORT`, else
// [admin] listen of `--config PATH`, else that of the built-in config (127.0.0.1:8025).
//
// Exit status: 0 done (or accepted, for a message in flight), 1 the endpoint refused (no such
// message, on hold, ...), 69 (EX_UNAVAILABLE) the daemon cannot be reached, 78 a bad config.

import ArgumentParser
import Foundation
import Relay
import SMTPProtocol  // terminalSafe: the relay's text escaped as trace escapes a message's

struct Queue: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Look at and act on the running relay's queue (through its admin endpoint).",
        subcommands: [QueueList.self, QueueSummary.self, QueueShow.self, QueueFlush.self,
                      QueueHold.self, QueueRelease.self, QueueDelete.self, QueueBounce.self,
                      QueueDestinations.self, QueueSuspend.self, QueueResume.self])
}

struct AdminOptions: ParsableArguments {
    @Option(name: .long, help: "The admin endpoint, HOST:PORT or a unix socket's path (default: [admin] listen of --config).")
    var admin: String?

    @Option(name: .long, help: "The config of the running relay, to find its [admin] listen.")
    var config: String?

    func client() throws -> AdminClient {
        do {
            return try resolvedClient()
        } catch let error as ConfigError {
            fail("\(error)", status: 78)
        }
    }

    /// The client for --admin, else for the config's [admin] listen; a ConfigError when there is none.
    func resolvedClient() throws -> AdminClient {
        if let admin { return try AdminClient.forListen(admin) }
        let settings = try config.map { try TernConfig.load(path: $0) } ?? TernConfig.embeddedDefault
        guard !settings.admin.listen.isEmpty else {
            throw ConfigError(message: "the admin endpoint is switched off ([admin] listen = \"\")")
        }
        return try AdminClient.forListen(settings.admin.listen)
    }

    /// Sends the request; a refusal prints the endpoint's error and exits 1.
    func call(_ method: String, _ target: String, body: [UInt8] = []) throws -> AdminResponse {
        let response: AdminResponse
        do {
            response = try client().request(method, target, body: body)
        } catch let error as AdminClientError {
            fail(error.message, status: error.unreachable ? 69 : 1)
        }
        guard response.status == 200 || response.status == 202 else { fail(Self.errorMessage(response), status: 1) }
        return response
    }

    /// The endpoint's {"error": "..."}, else its text.
    static func errorMessage(_ response: AdminResponse) -> String {
        ((try? JSONSerialization.jsonObject(with: Data(response.body))) as? [String: Any])?["error"] as? String
            ?? response.text.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    func decode<T: Decodable>(_ type: T.Type, _ response: AdminResponse) -> T {
        do {
            return try JSONDecoder().decode(type, from: Data(response.body))
        } catch {
            fail("cannot read the admin endpoint's answer: \(error)", status: 1)
        }
    }
}

func fail(_ message: String, status: Int32) -> Never {
    FileHandle.standardError.write(Data("tern queue: \(terminalSafe(message))\n".utf8))
    Foundation.exit(status)
}

/// Query-string encoding of a value (RFC 3986 unreserved characters kept).
func queryEscaped(_ s: String) -> String {
    var allowed = CharacterSet.alphanumerics
    allowed.insert(charactersIn: "-._~")
    return s.addingPercentEncoding(withAllowedCharacters: allowed) ?? s
}

struct QueueFilterOptions: ParsableArguments {
    @Option(help: "Only messages with a recipient still to deliver at this domain.") var domain: String?
    @Option(help: "Only this sender (\"@example.org\" for a domain, \"<>\" for bounces).") var sender: String?
    @Option(help: "Only messages in this state: active, queued, deferred, held.") var state: String?
    @Option(help: "Only this MT-PRIORITY (-9...9).") var priority: Int?
    @Option(name: .customLong("min-age"), help: "Only messages at least this old (seconds, or 30m, 2h, 1d, 1h30m).") var minAge: String?
    @Option(name: .customLong("max-age"), help: "Only messages at most this old.") var maxAge: String?

    /// Ages are durations as the config writes them: an unknown unit is refused here (exit 64).
    func validate() throws {
        for (option, value) in [("--min-age", minAge), ("--max-age", maxAge)] {
            guard let value else { continue }
            do { _ = try parseDuration(value) } catch {
                throw ValidationError("\(option): \((error as? ConfigError)?.message ?? "\(error)")")
            }
        }
    }

    var query: String {
        let pairs: [(String, String?)] = [("domain", domain), ("sender", sender), ("state", state),
                                          ("priority", priority.map(String.init)), ("min_age", minAge), ("max_age", maxAge)]
        let items = pairs.compactMap { key, value in value.map { "\(key)=\(queryEscaped($0))" } }
        return items.isEmpty ? "" : "?" + items.joined(separator: "&")
    }
}

struct QueueList: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "list", abstract: "List queued messages, like mailq (* active, ! held).")
    @OptionGroup var endpoint: AdminOptions
    @OptionGroup var filter: QueueFilterOptions
    @Flag(help: "Print the endpoint's JSON.") var json = false

    func run() throws {
        let response = try endpoint.call("GET", "/queue" + filter.query)
        if json {
            // Escaped again here: the endpoint may be an older relay's.
            print(String(decoding: terminalSafeJSON(response.body), as: UTF8.self), terminator: "")
            return
        }
        let listing = endpoint.decode(QueueListing.self, response)
        if listing.deliveryEnabled == false { print(MailqFormat.deliveryDisabled) }
        print(MailqFormat.table(listing.messages, timeZone: .current), terminator: "")
    }
}

struct QueueSummary: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "summary", abstract: "Messages by destination domain and age in minutes, like qshape.")
    @OptionGroup var endpoint: AdminOptions
    @OptionGroup var filter: QueueFilterOptions
    @Flag(help: "Print the counts as JSON.") var json = false

    func run() throws {
        let listing = endpoint.decode(QueueListing.self, try endpoint.call("GET", "/queue" + filter.query))
        let shape = QueueShape(listing.messages, now: Date().timeIntervalSince1970)
        if json {
            print(shape.json(deliveryEnabled: listing.deliveryEnabled ?? true))
            return
        }
        if listing.deliveryEnabled == false { print(MailqFormat.deliveryDisabled) }
        print(shape.text, terminator: "")
    }
}

struct QueueShow: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "show", abstract: "One message: envelope, each recipient's state and last reply.")
    @OptionGroup var endpoint: AdminOptions
    @Argument(help: "The queue id.") var id: String
    @Flag(help: "Print the endpoint's JSON.") var json = false
    @Flag(help: ArgumentHelp("Print the stored message itself (Received header first), e.g. for `tern trace -`. On a terminal, "
              + "control and invisible characters (ESC, bidi overrides, zero-width, bytes not UTF-8) are shown escaped, "
              + "as \\u{1B} or \\xFF; piped or redirected, the stored bytes as they are."))
    var message = false

    func run() throws {
        if message {
            let response = try endpoint.call("GET", "/queue/" + queryEscaped(id) + "/message")
            // A sender's escape codes must not reach the postmaster's terminal; `> file` gets the message back exactly.
            if isatty(STDOUT_FILENO) != 0 {
                FileHandle.standardOutput.write(Data(terminalSafeMessage(response.body).utf8))
            } else {
                FileHandle.standardOutput.write(Data(response.body))
            }
            return
        }
        let response = try endpoint.call("GET", "/queue/" + queryEscaped(id))
        if json {
            // Escaped again here: the endpoint may be an older relay's.
            print(String(decoding: terminalSafeJSON(response.body), as: UTF8.self), terminator: "")
            return
        }
        let entry = endpoint.decode(QueueEntry.self, response)
        print(MailqFormat.details(entry, now: Date().timeIntervalSince1970, timeZone: .current), terminator: "")
    }
}

/// What the action commands act on: queue ids (each its own request, in the order given), `-` (ids
/// on standard input, one per line, as `postsuper -d -`), or a selection: ALL and the selectors, sent
/// as one request so that the relay selects from the queue as it is at that moment (a list fetched
/// first and acted on after would act on a queue that has moved on).
struct QueueTargetOptions: ParsableArguments {
    @Argument(help: ArgumentHelp("Queue ids; - reads them from standard input, one per line; ALL selects every message.",
                                 valueName: "id"))
    var ids: [String] = []
    @Option(help: "Select the messages with a recipient still to deliver at this domain.") var domain: String?
    @Option(help: "Select the messages from this sender (\"@example.org\" for a domain, \"<>\" for bounces).")
    var sender: String?
    @Flag(help: "Select the deferred messages (tried, waiting for their retry).") var deferred = false
    @Flag(help: "Select the messages on hold.") var held = false

    var all: Bool { ids == ["ALL"] }
    var hasSelectors: Bool { domain != nil || sender != nil || deferred || held }
    var isSelection: Bool { all || hasSelectors }

    func validate() throws {
        if ids.contains("ALL") && ids.count > 1 { throw ValidationError("ALL selects every message: give it alone, not with queue ids") }
        if hasSelectors && !ids.isEmpty && !all {
            throw ValidationError("--domain, --sender, --deferred and --held select messages themselves: give them alone or with ALL, not with queue ids")
        }
        if deferred && held { throw ValidationError("--deferred and --held select different messages: give one of them") }
        if ids.filter({ $0 == "-" }).count > 1 { throw ValidationError("- (queue ids on standard input) may be given once") }
    }

    /// The selection's query (?all=1 or the filters).
    var selectionQuery: String {
        let pairs: [(String, String?)] = [("domain", domain), ("sender", sender),
                                          ("state", deferred ? "deferred" : held ? "held" : nil)]
        let items = pairs.compactMap { key, value in value.map { "\(key)=\(queryEscaped($0))" } }
        return "?" + (items.isEmpty ? "all=1" : items.joined(separator: "&"))
    }

    /// The ids given, with `-` replaced by the lines of standard input (blank lines skipped; a trailing
    /// * or ! as `tern queue list` marks an id is dropped).
    func expandedIDs() -> [String] {
        ids.flatMap { id -> [String] in
            guard id == "-" else { return [id] }
            var read: [String] = []
            while let line = readLine(strippingNewline: true) {
                var id = line.trimmingCharacters(in: .whitespaces)
                if id.hasSuffix("*") || id.hasSuffix("!") { id.removeLast() }
                if !id.isEmpty { read.append(id) }
            }
            return read
        }
    }
}

/// hold, release, delete, bounce (and flush): every id or the selection, a line per message, then the
/// count. Exit 0 when none failed, 1 when one did (the others were still acted on).
protocol QueueActionCommand: ParsableCommand {
    static var action: String { get }
    var endpoint: AdminOptions { get }
    var targets: QueueTargetOptions { get }
}

extension QueueActionCommand {
    func validate() throws {
        if targets.ids.isEmpty && !targets.hasSelectors {
            throw ValidationError("give queue ids, - (ids on standard input), ALL, or --domain/--sender/--deferred/--held")
        }
    }

    func run() throws {
        if targets.isSelection {
            actOnSelection(endpoint.decode(QueueBulkReply.self,
                                           try endpoint.call("POST", "/queue/\(Self.action)" + targets.selectionQuery)))
        } else {
            actOnEach(targets.expandedIDs(), action: Self.action, endpoint: endpoint)
        }
    }
}

/// Prints each message's result and the count; exits 1 if any failed.
func actOnSelection(_ reply: QueueBulkReply) {
    for r in reply.results {
        if r.result == "failed" {
            FileHandle.standardError.write(Data("tern queue: \(terminalSafe(r.message))\n".utf8))
        } else {
            print(terminalSafe(r.result == "gone" ? "\(r.id ?? "?"): left the queue meanwhile (\(r.message))" : r.message))
        }
    }
    print(actionCount(reply.action, selected: "\(reply.selected) message\(reply.selected == 1 ? "" : "s") selected",
                      done: reply.done, pending: reply.pending, gone: reply.gone, failed: reply.failed))
    if reply.failed > 0 { Foundation.exit(1) }
}

/// One request per id, in order; a refusal is reported and the next id goes on. An unreachable
/// endpoint stops at once (exit 69): nothing more could be done.
func actOnEach(_ ids: [String], action: String, endpoint: AdminOptions) {
    let client: AdminClient
    do { client = try endpoint.client() } catch { fail("\(error)", status: 1) }
    var done = 0, pending = 0, failed = 0
    for id in ids {
        let response: AdminResponse
        do {
            response = try client.request("POST", "/queue/\(queryEscaped(id))/\(action)")
        } catch let error as AdminClientError {
            fail(error.message, status: error.unreachable ? 69 : 1)
        } catch {
            fail("\(error)", status: 1)
        }
        if (response.status == 200 || response.status == 202),
           let reply = try? JSONDecoder().decode(QueueActionReply.self, from: Data(response.body)) {
            print(terminalSafe(reply.message))
            if reply.pending { pending += 1 } else { done += 1 }
        } else {
            failed += 1
            FileHandle.standardError.write(Data("tern queue: \(terminalSafe(AdminOptions.errorMessage(response)))\n".utf8))
        }
    }
    print(actionCount(action, selected: "\(ids.count) queue id\(ids.count == 1 ? "" : "s")",
                      done: done, pending: pending, gone: 0, failed: failed))
    if failed > 0 { Foundation.exit(1) }
}

/// "3 queue ids: 2 deleted, 1 failed".
func actionCount(_ action: String, selected: String, done: Int, pending: Int, gone: Int, failed: Int) -> String {
    let verb = ["flush": "flushed", "hold": "held", "release": "released", "delete": "deleted",
                "bounce": "returned to the sender"][action] ?? action
    var parts = ["\(done) \(verb)"]
    if pending > 0 { parts.append("\(pending) when the delivery attempt in flight ends") }
    if gone > 0 { parts.append("\(gone) already gone") }
    if failed > 0 { parts.append("\(failed) failed") }
    return selected + ": " + parts.joined(separator: ", ")
}

struct QueueHold: QueueActionCommand {
    static let configuration = CommandConfiguration(commandName: "hold", abstract: "Keep messages without trying them, until released.")
    static let action = "hold"
    @OptionGroup var endpoint: AdminOptions
    @OptionGroup var targets: QueueTargetOptions
}

struct QueueRelease: QueueActionCommand {
    static let configuration = CommandConfiguration(commandName: "release", abstract: "Release held messages; they are tried at once.")
    static let action = "release"
    @OptionGroup var endpoint: AdminOptions
    @OptionGroup var targets: QueueTargetOptions
}

struct QueueDelete: QueueActionCommand {
    static let configuration = CommandConfiguration(commandName: "delete", abstract: "Remove messages without telling their senders.")
    static let action = "delete"
    @OptionGroup var endpoint: AdminOptions
    @OptionGroup var targets: QueueTargetOptions
}

struct QueueBounce: QueueActionCommand {
    static let configuration = CommandConfiguration(commandName: "bounce", abstract: "Return messages to their senders with a DSN, then remove them.")
    static let action = "bounce"
    @OptionGroup var endpoint: AdminOptions
    @OptionGroup var targets: QueueTargetOptions
}

struct QueueFlush: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "flush",
        abstract: "Retry now: some messages, one domain's mail, or everything queued (the default).",
        discussion: "Held messages are not flushed: release them.")
    @OptionGroup var endpoint: AdminOptions
    @OptionGroup var targets: QueueTargetOptions

    func run() throws {
        let t = targets
        if t.isSelection && t.sender == nil && !t.deferred && !t.held || t.ids.isEmpty && !t.hasSelectors {
            // Everything, or a destination: the scheduler's own flush, which counts delivery jobs.
            let target = t.domain.map { "/queue/flush?domain=\(queryEscaped($0))" } ?? "/queue/flush"
            print(terminalSafe(endpoint.decode(QueueActionReply.self, try endpoint.call("POST", target)).message))
        } else if t.isSelection {
            actOnSelection(endpoint.decode(QueueBulkReply.self, try endpoint.call("POST", "/queue/flush" + t.selectionQuery)))
        } else {
            actOnEach(t.expandedIDs(), action: "flush", endpoint: endpoint)
        }
    }
}
