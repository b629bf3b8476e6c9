// `tern queue ...`: the postmaster's queue tools (mailq, qshape, postsuper, postqueue -f in one),
// talking to the running daemon through its admin endpoint. The endpoint is `--admin HOST:PORT`, else
// [admin] listen of `--config PATH`, else that of the built-in config (127.0.0.1:8025).
//
// Exit status: 0 done (or accepted, for a message in flight), 1 the endpoint refused (no such
// message, on hold, ...), 69 (EX_UNAVAILABLE) the daemon cannot be reached, 78 a bad config.

import ArgumentParser
import Foundation
import Relay

struct Queue: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Look at and act on the running relay's queue (through its admin endpoint).",
        subcommands: [QueueList.self, QueueSummary.self, QueueShow.self, QueueFlush.self,
                      QueueHold.self, QueueRelease.self, QueueDelete.self, QueueBounce.self])
}

struct AdminOptions: ParsableArguments {
    @Option(name: .long, help: "The admin endpoint, HOST:PORT or a unix socket's path (default: [admin] listen of --config).")
    var admin: String?

    @Option(name: .long, help: "The config of the running relay, to find its [admin] listen.")
    var config: String?

    func client() throws -> AdminClient {
        do {
            if let admin { return try AdminClient.forListen(admin) }
            let settings = try config.map { try TernConfig.load(path: $0) } ?? TernConfig.embeddedDefault
            guard !settings.admin.listen.isEmpty else {
                fail("the admin endpoint is switched off ([admin] listen = \"\")", status: 78)
            }
            return try AdminClient.forListen(settings.admin.listen)
        } catch let error as ConfigError {
            fail("\(error)", status: 78)
        }
    }

    /// Sends the request; a refusal prints the endpoint's error and exits 1.
    func call(_ method: String, _ target: String) throws -> AdminResponse {
        let response: AdminResponse
        do {
            response = try client().request(method, target)
        } catch let error as AdminClientError {
            fail(error.message, status: error.unreachable ? 69 : 1)
        }
        guard response.status == 200 || response.status == 202 else {
            let message = (try? JSONDecoder().decode([String: String].self, from: Data(response.body)))?["error"]
                ?? response.text.trimmingCharacters(in: .whitespacesAndNewlines)
            fail(message, status: 1)
        }
        return response
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
    FileHandle.standardError.write(Data("tern queue: \(message)\n".utf8))
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
    @Option(name: .customLong("min-age"), help: "Only messages at least this old (seconds, or 30m, 2h, 1d).") var minAge: String?
    @Option(name: .customLong("max-age"), help: "Only messages at most this old.") var maxAge: String?

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
            print(response.text, terminator: "")
            return
        }
        let listing = endpoint.decode(QueueListing.self, response)
        print(MailqFormat.table(listing.messages, timeZone: .current), terminator: "")
    }
}

struct QueueSummary: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "summary", abstract: "Messages by destination domain and age in minutes, like qshape.")
    @OptionGroup var endpoint: AdminOptions
    @OptionGroup var filter: QueueFilterOptions

    func run() throws {
        let listing = endpoint.decode(QueueListing.self, try endpoint.call("GET", "/queue" + filter.query))
        print(QueueShape(listing.messages, now: Date().timeIntervalSince1970).text, terminator: "")
    }
}

struct QueueShow: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "show", abstract: "One message: envelope, each recipient's state and last reply.")
    @OptionGroup var endpoint: AdminOptions
    @Argument(help: "The queue id.") var id: String
    @Flag(help: "Print the endpoint's JSON.") var json = false
    @Flag(help: "Print the stored message itself (Received header first), e.g. for `tern trace -`.")
    var message = false

    func run() throws {
        if message {
            let response = try endpoint.call("GET", "/queue/" + queryEscaped(id) + "/message")
            FileHandle.standardOutput.write(Data(response.body))
            return
        }
        let response = try endpoint.call("GET", "/queue/" + queryEscaped(id))
        if json {
            print(response.text, terminator: "")
            return
        }
        let entry = endpoint.decode(QueueEntry.self, response)
        print(MailqFormat.details(entry, now: Date().timeIntervalSince1970, timeZone: .current), terminator: "")
    }
}

/// hold, release, delete, bounce: one id, one POST, the endpoint's line printed.
protocol QueueActionCommand: ParsableCommand {
    static var action: String { get }
    var endpoint: AdminOptions { get }
    var id: String { get }
}

extension QueueActionCommand {
    func run() throws {
        let response = try endpoint.call("POST", "/queue/\(queryEscaped(id))/\(Self.action)")
        print(endpoint.decode(QueueActionReply.self, response).message)
    }
}

struct QueueHold: QueueActionCommand {
    static let configuration = CommandConfiguration(commandName: "hold", abstract: "Keep a message without trying it, until released.")
    static let action = "hold"
    @OptionGroup var endpoint: AdminOptions
    @Argument(help: "The queue id.") var id: String
}

struct QueueRelease: QueueActionCommand {
    static let configuration = CommandConfiguration(commandName: "release", abstract: "Release a held message; it is tried at once.")
    static let action = "release"
    @OptionGroup var endpoint: AdminOptions
    @Argument(help: "The queue id.") var id: String
}

struct QueueDelete: QueueActionCommand {
    static let configuration = CommandConfiguration(commandName: "delete", abstract: "Remove a message without telling the sender.")
    static let action = "delete"
    @OptionGroup var endpoint: AdminOptions
    @Argument(help: "The queue id.") var id: String
}

struct QueueBounce: QueueActionCommand {
    static let configuration = CommandConfiguration(commandName: "bounce", abstract: "Return a message to its sender with a DSN, then remove it.")
    static let action = "bounce"
    @OptionGroup var endpoint: AdminOptions
    @Argument(help: "The queue id.") var id: String
}

struct QueueFlush: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "flush", abstract: "Retry now: one message, one domain's mail, or everything queued.")
    @OptionGroup var endpoint: AdminOptions
    @Argument(help: "The queue id (none: every queued message, or --domain's).") var id: String?
    @Option(help: "Every message with recipients at this domain.") var domain: String?

    func validate() throws {
        if id != nil && domain != nil { throw ValidationError("give a queue id or --domain, not both") }
    }

    func run() throws {
        let target: String
        if let id {
            target = "/queue/\(queryEscaped(id))/flush"
        } else if let domain {
            target = "/queue/flush?domain=\(queryEscaped(domain))"
        } else {
            target = "/queue/flush"
        }
        print(endpoint.decode(QueueActionReply.self, try endpoint.call("POST", target)).message)
    }
}
