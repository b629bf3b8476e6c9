// `tern suppress`: the suppression list of the running relay, through its admin endpoint
// (Relay/Admin/SuppressionAdmin.swift). An address is local@domain, or @domain for all of it;
// --scope limits an entry to one sender domain.

import ArgumentParser
import Foundation
import Relay
import SMTPProtocol

struct Suppress: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "The suppression list: recipients the running relay will not send to (refused at RCPT with 550 5.1.1).",
        discussion: "Hard bounces of the classes in [suppression] auto_classes add their recipient by themselves. "
            + "The list is kept in the spool directory (suppression.list).",
        subcommands: [SuppressAdd.self, SuppressRemove.self, SuppressList.self, SuppressImport.self, SuppressExport.self])
}

struct SuppressAdd: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "add", abstract: "Suppress an address, or @domain.")
    @OptionGroup var endpoint: AdminOptions
    @Argument(help: "local@domain, or @domain for every address at it.") var address: String
    @Option(help: "Only for mail from this sender domain (default: every sender).") var scope: String?
    @Option(help: "Why, kept with the entry.") var reason: String?

    func run() throws {
        var target = "/suppression/add?address=\(queryEscaped(address))"
        if let scope { target += "&scope=\(queryEscaped(scope))" }
        if let reason { target += "&reason=\(queryEscaped(reason))" }
        print(terminalSafe(endpoint.decode(SuppressionReply.self, try endpoint.call("POST", target)).message))
    }
}

struct SuppressRemove: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "remove", abstract: "Lift a suppression.")
    @OptionGroup var endpoint: AdminOptions
    @Argument(help: "local@domain, or @domain.") var address: String
    @Option(help: "The sender domain the entry is for (default: the entry for every sender).") var scope: String?

    func run() throws {
        var target = "/suppression/remove?address=\(queryEscaped(address))"
        if let scope { target += "&scope=\(queryEscaped(scope))" }
        print(terminalSafe(endpoint.decode(SuppressionReply.self, try endpoint.call("POST", target)).message))
    }
}

/// One formatter for every line: making one is what a million-line export would spend its time on.
private let timeFormat = ISO8601DateFormatter()

/// "ADDRESS  SCOPE  ADDED  SOURCE  REASON" lines, escaped for the terminal.
func suppressionLine(_ e: SuppressionView, tab: Bool) -> String {
    let time = timeFormat.string(from: Date(timeIntervalSince1970: Double(e.time)))
    let fields = [e.address, e.scope.isEmpty ? "*" : e.scope, time, e.source, e.reason].map(terminalSafe)
    return tab ? fields.joined(separator: "\t") : fields.joined(separator: "  ")
}

struct SuppressList: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "list", abstract: "The entries (address, scope, added, source, reason), or one address's.")
    @OptionGroup var endpoint: AdminOptions
    @Argument(help: "Show only this address's entry.") var address: String?
    @Option(help: "With an address: the sender domain of its entry.") var scope: String?
    @Flag(help: "Print the endpoint's JSON.") var json = false

    func run() throws {
        if let address {
            var target = "/suppression?address=\(queryEscaped(address))"
            if let scope { target += "&scope=\(queryEscaped(scope))" }
            let response = try endpoint.call("GET", target)
            if json { return print(String(decoding: terminalSafeJSON(response.body), as: UTF8.self), terminator: "") }
            return print(suppressionLine(endpoint.decode(SuppressionView.self, response), tab: false))
        }
        try SuppressExport.pages(endpoint) { page in
            for e in page { print(suppressionLine(e, tab: false)) }
        }
    }
}

struct SuppressExport: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export", abstract: "Every entry, one a line: address, scope (* for every sender), added, source, reason, by tabs.")
    @OptionGroup var endpoint: AdminOptions

    func run() throws {
        try Self.pages(endpoint) { page in
            for e in page { print(suppressionLine(e, tab: true)) }
        }
    }

    /// The whole list, a page of 10,000 at a time.
    static func pages(_ endpoint: AdminOptions, _ each: ([SuppressionView]) -> Void) throws {
        var offset = 0
        while true {
            let page = endpoint.decode(SuppressionListing.self,
                                       try endpoint.call("GET", "/suppression?offset=\(offset)&limit=10000"))
            each(page.entries)
            offset += page.entries.count
            if page.entries.isEmpty || offset >= page.total { break }
        }
    }
}

struct SuppressImport: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "import", abstract: "Suppress every address of a file: one local@domain or @domain a line ('#' comments).")
    @OptionGroup var endpoint: AdminOptions
    @Argument(help: "The file (- for standard input).") var file: String
    @Option(help: "Only for mail from this sender domain (default: every sender).") var scope: String?
    @Option(help: "Why, kept with every entry (default: added by the postmaster).") var reason: String?

    func run() throws {
        let data: Data
        if file == "-" {
            data = FileHandle.standardInput.readDataToEndOfFile()
        } else {
            guard let read = FileManager.default.contents(atPath: file) else { fail("cannot read \(file)", status: 66) }
            data = read
        }
        var target = "/suppression/import?"
        if let scope { target += "scope=\(queryEscaped(scope))&" }
        if let reason { target += "reason=\(queryEscaped(reason))&" }
        // Pieces of whole lines under the endpoint's 1 MiB body limit.
        let bytes = [UInt8](data)
        var start = 0, added = 0, refused = 0, refusedLines = 0, lineOffset = 0
        while start < bytes.count {
            var end = min(bytes.count, start + 768 * 1024)
            if end < bytes.count, let lf = bytes[start..<end].lastIndex(of: 10) { end = lf + 1 }
            let piece = Array(bytes[start..<end])
            let reply = endpoint.decode(SuppressionReply.self, try endpoint.call("POST", target, body: piece))
            added += reply.added ?? 0
            for r in reply.refused ?? [] where refusedLines < 20 {
                print("line \(lineOffset + r.line): \(terminalSafe(r.error))")
                refusedLines += 1
            }
            refused += reply.refusedCount ?? 0
            lineOffset += piece.reduce(0) { $0 + ($1 == 10 ? 1 : 0) }
            start = end
        }
        print("\(added) addresses suppressed, \(refused) lines refused")
    }
}
