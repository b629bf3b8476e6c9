// How `tern queue list` and `tern queue show` print, in the shape postmasters know from Postfix's
// mailq: the id (with * for a message being delivered, ! for one on hold), size, arrival and
// sender, then each recipient still to deliver, under the reply that keeps it waiting.
// Senders, recipients, HELO names and remote replies are what strangers wrote: their control
// characters are shown escaped (terminalSafe), never sent to the postmaster's terminal.

import Foundation
import SMTPProtocol

public enum MailqFormat {
    static func formatter(_ timeZone: TimeZone) -> DateFormatter {
        let f = DateFormatter()
        f.locale = Locale(identifier: "en_US_POSIX")
        f.timeZone = timeZone
        f.dateFormat = "EEE MMM dd HH:mm:ss"
        return f
    }

    static func marker(_ state: String) -> String {
        switch state {
        case "active": return "*"
        case "held": return "!"
        default: return " "
        }
    }

    /// The first line of `tern queue list` and `summary` when the relay does not deliver.
    public static let deliveryDisabled = "Delivery disabled ([delivery] enabled = false): nothing is tried, mail stays queued."

    public static func table(_ entries: [QueueEntry], timeZone: TimeZone) -> String {
        guard !entries.isEmpty else { return "Mail queue is empty\n" }
        let dates = formatter(timeZone)
        var out = "-Queue ID-      --Size-- ----Arrival Time---- -Sender/Recipient-------\n"
        let indent = String(repeating: " ", count: 46)
        var bytes = 0
        for e in entries {
            bytes += e.size
            let size = String(e.size)
            let arrival = dates.string(from: Date(timeIntervalSince1970: e.arrival))
            out += e.id + marker(e.state) + String(repeating: " ", count: max(1, 9 - size.count)) + size + " "
                + arrival + "  " + (e.sender.isEmpty ? "MAILER-DAEMON" : terminalSafe(e.sender)) + "\n"
            var lastReply: String?
            for r in e.recipients where r.state == "pending" || r.state == "deferred" {
                if let reply = r.lastReply, reply != lastReply {
                    out += indent + "(" + terminalSafe(reply) + ")\n"
                    lastReply = reply
                }
                out += indent + terminalSafe(r.address) + "\n"
            }
            out += "\n"
        }
        let kbytes = (bytes + 1023) / 1024
        out += "-- \(kbytes) Kbytes in \(entries.count) Request\(entries.count == 1 ? "" : "s").\n"
        return out
    }

    public static func details(_ e: QueueEntry, now: Double, timeZone: TimeZone) -> String {
        let dates = formatter(timeZone)
        func date(_ t: Double) -> String { dates.string(from: Date(timeIntervalSince1970: t)) }
        let off = e.deliveryEnabled == false
        var lines = [
            ("Queue ID", e.id),
            ("State", off ? "\(e.state) (delivery disabled: [delivery] enabled = false)" : e.state),
            ("Sender", "<\(terminalSafe(e.sender))>"),
            ("Arrival", "\(date(e.arrival)) (\(age(now - e.arrival)) ago)"),
            ("Size", "\(e.size) bytes"),
            ("Priority", "\(e.priority)"),
            ("Attempts", "\(e.attempts)"),
            ("Client", "[\(terminalSafe(e.clientIP))] helo=\(terminalSafe(e.helo))"),
        ]
        if off {
            lines.insert(("Next attempt", "none: delivery disabled"), at: 7)
        } else if e.state == "queued" || e.state == "deferred" {
            lines.insert(("Next attempt", e.nextAttempt <= now ? "due now" : "\(date(e.nextAttempt)) (in \(age(e.nextAttempt - now)))"), at: 7)
        }
        var out = lines.map { $0.0.padding(toLength: 13, withPad: " ", startingAt: 0) + $0.1 }.joined(separator: "\n") + "\n"
        out += "Recipients:\n"
        for r in e.recipients {
            out += "  " + r.state.padding(toLength: 10, withPad: " ", startingAt: 0) + terminalSafe(r.address)
            if let reply = r.lastReply { out += "\n" + String(repeating: " ", count: 12) + terminalSafe(reply) }
            out += "\n"
        }
        return out
    }

    /// "45s", "12m", "3h", "2d 4h".
    static func age(_ seconds: Double) -> String {
        let s = Int(max(0, seconds))
        if s < 60 { return "\(s)s" }
        if s < 3600 { return "\(s / 60)m" }
        if s < 86400 { return "\(s / 3600)h \(s % 3600 / 60)m" }
        return "\(s / 86400)d \(s % 86400 / 3600)h"
    }
}
