// `tern queue destinations`, `suspend` and `resume`: traffic shaping seen and steered through the
// admin endpoint (Relay/Admin/ShapingAdmin.swift), as Postfix's qshape and KumoMTA's `kcli suspend`.

import ArgumentParser
import Foundation
import Relay
import SMTPProtocol

struct QueueDestinations: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "destinations",
        abstract: "Per destination and egress source: queued, in flight, connections, rate, the rule that matched, and state.",
        discussion: "INFLIGHT counts messages handed to a connection and not answered yet (one per busy connection; "
            + "a message to several recipients of the destination counts once). STATE is active, suspended until a time and why, throttled to a lower rate or fewer connections "
            + "until a time by a [[backoff]] rule, or dead (one probe connection tests it). A destination under a "
            + "[[shaping]] rule with mx names shares the rule's row.")
    @OptionGroup var endpoint: AdminOptions
    @Flag(help: "Print the endpoint's JSON.") var json = false
    @Flag(help: "First the nodes of the cluster ([cluster]): each one's queue and heartbeat, and whether Redis answers.")
    var cluster = false

    func run() throws {
        if cluster {
            let response = try endpoint.call("GET", "/cluster")
            if json {
                print(String(decoding: terminalSafeJSON(response.body), as: UTF8.self), terminator: "")
                return
            }
            let view = endpoint.decode(ClusterView.self, response)
            print(ClusterFormat.table(view, now: Date().timeIntervalSince1970), terminator: "")
            print("")
        }
        let response = try endpoint.call("GET", "/queue/destinations")
        if json {
            // Escaped again here: the endpoint may be an older relay's.
            print(String(decoding: terminalSafeJSON(response.body), as: UTF8.self), terminator: "")
            return
        }
        let listing = endpoint.decode(ShapingDestinationListing.self, response)
        if !listing.deliveryEnabled { print(MailqFormat.deliveryDisabled) }
        print(ShapingDestinationsFormat.table(listing.destinations, now: Date().timeIntervalSince1970, timeZone: .current),
              terminator: "")
    }
}

struct QueueSuspend: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "suspend",
        abstract: "Stop delivery to a destination (or a [[shaping]] rule) for a while; its mail waits, untried.",
        discussion: "Mail for it stays queued with no connection attempt until the suspension ends or `tern queue "
            + "resume`. A destination with nothing queued is suspended all the same: mail arriving later waits. "
            + "A domain under a [[shaping]] rule suspends the rule (every destination it covers).")
    @OptionGroup var endpoint: AdminOptions
    @Argument(help: "A destination domain, or a [[shaping]] rule's name.") var destination: String
    @Option(name: .customLong("for"), help: "How long (30m, 2h, 1d; at most 30d).") var duration = "1h"
    @Option(help: "Why, for the log and `tern queue destinations`.") var reason: String?

    func validate() throws {
        do { _ = try parseDuration(duration) } catch {
            throw ValidationError("--for: \((error as? ConfigError)?.message ?? "\(error)")")
        }
    }

    func run() throws {
        var target = "/queue/suspend?destination=\(queryEscaped(destination))&for=\(queryEscaped(duration))"
        if let reason { target += "&reason=\(queryEscaped(reason))" }
        print(terminalSafe(endpoint.decode(ShapingActionReply.self, try endpoint.call("POST", target)).message))
    }
}

struct QueueResume: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "resume",
        abstract: "Resume delivery to a destination or rule: its suspension, throttle or dead state ends now.")
    @OptionGroup var endpoint: AdminOptions
    @Argument(help: "A destination domain, or a [[shaping]] rule's name.") var destination: String

    func run() throws {
        let target = "/queue/resume?destination=\(queryEscaped(destination))"
        print(terminalSafe(endpoint.decode(ShapingActionReply.self, try endpoint.call("POST", target)).message))
    }
}
