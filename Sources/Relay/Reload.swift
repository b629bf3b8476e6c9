// Reload.swift: a new configuration for a running server (SIGHUP), without dropping a session or a
// message.
//
// What changes at once: the limits and switches of [server] (new sessions take the new ones; a
// session already open keeps the rules it greeted with, so a transaction never changes under a
// client), relay_networks and connection limits (checked at each accept), accept_domains, [aliases],
// [priority], and [routes] with each route's TLS policy and credentials (jobs routed after the
// reload; a connection already open finishes its job, then QUITs instead of taking another), and the
// shaping policy's [[shaping]], [[backoff]] and [egress] (handed to delivery whole, `applyShaping`),
// and [[dkim.sign]] (its keys read again with the certificate: SMTPServer.install).
// What needs a restart is kept as it was, and the log says so: hostname, server.listen, spool, dns,
// delivery (with its dead_destination keys and the limits of unmatched destinations), log, admin and
// bounce (the classes' rules, with the delivery core's other settings), suppression and events.

import Logging
import SMTPProtocol

public struct ReloadOutcome: Equatable, Sendable {
    /// Dotted names of the tables and keys whose new values are in force.
    public var applied: [String] = []
    /// Dotted names of changed keys that only a restart applies; their old values stay.
    public var needRestart: [String] = []
}

extension SMTPServer {
    /// The session rules a configuration implies.
    static func sessionConfiguration(_ config: TernConfig) -> ServerConfiguration {
        let s = config.server
        var c = ServerConfiguration(
            hostname: config.hostname, maxMessageSize: s.maxMessageSize, maxRecipients: s.maxRecipients,
            maxErrors: s.maxErrors, maxLineLength: s.maxLineLength, maxHops: s.maxHops, keepBcc: s.keepBcc,
            vrfy: s.vrfy, expn: s.expn,
            policy: RelayPolicy(hostname: config.hostname, acceptDomains: s.acceptDomains, aliases: config.aliases))
        c.recipientOvershootLimit = s.recipientOvershootLimit
        c.startTLS = config.tls.enabled
        c.authEnabled = config.auth.enabled
        return c
    }

    /// The same for submission listeners (RFC 6409): AUTH before MAIL.
    static func submissionConfiguration(_ config: TernConfig) -> ServerConfiguration {
        var c = sessionConfiguration(config)
        c.requireAuth = true
        return c
    }

    /// Puts `new` in force, except for the parts that need a restart (see the file's header).
    @discardableResult
    public func reload(_ new: TernConfig) -> ReloadOutcome {
        let old = config
        var next = new
        var outcome = ReloadOutcome()

        // Kept as they are until a restart.
        if next.hostname != old.hostname { outcome.needRestart.append("hostname") }
        next.hostname = old.hostname
        if next.server.listen != old.server.listen { outcome.needRestart.append("server.listen") }
        next.server.listen = old.server.listen
        if next.server.submission != old.server.submission { outcome.needRestart.append("server.submission") }
        next.server.submission = old.server.submission
        if next.server.submissions != old.server.submissions { outcome.needRestart.append("server.submissions") }
        next.server.submissions = old.server.submissions
        if next.spool != old.spool { outcome.needRestart.append("spool") }
        next.spool = old.spool
        if next.dns != old.dns { outcome.needRestart.append("dns") }
        next.dns = old.dns
        if next.delivery != old.delivery { outcome.needRestart.append("delivery") }
        next.delivery = old.delivery
        if next.log != old.log { outcome.needRestart.append("log") }
        next.log = old.log
        if next.admin != old.admin { outcome.needRestart.append("admin") }
        next.admin = old.admin
        if next.bounce != old.bounce { outcome.needRestart.append("bounce") }
        next.bounce = old.bounce
        if next.suppression != old.suppression { outcome.needRestart.append("suppression") }
        next.suppression = old.suppression
        if next.events != old.events { outcome.needRestart.append("events") }
        next.events = old.events
        // The tokens come with the files (`install`), read again on every SIGHUP; the listener stays.
        if next.http != old.http { outcome.needRestart.append("http") }
        next.http = old.http
        if next.cluster != old.cluster { outcome.needRestart.append("cluster") }
        next.cluster = old.cluster

        if next.server != old.server { outcome.applied.append("server") }
        if next.aliases != old.aliases { outcome.applied.append("aliases") }
        if next.priority != old.priority { outcome.applied.append("priority") }
        if next.routes != old.routes { outcome.applied.append("routes") }
        if next.shapingRules != old.shapingRules { outcome.applied.append("shaping") }
        if next.backoff != old.backoff { outcome.applied.append("backoff") }
        if next.egress != old.egress { outcome.applied.append("egress") }
        // The keys themselves come with the files (`install`), read again on every SIGHUP.
        if next.dkim != old.dkim { outcome.applied.append("dkim") }

        if next.tls != old.tls { outcome.applied.append("tls") }
        if next.auth != old.auth { outcome.applied.append("auth") }
        // The failure counting keeps its limits until a restart (its state would be lost otherwise).
        if next.auth.maxFailures != old.auth.maxFailures || next.auth.lockoutTime != old.auth.lockoutTime {
            outcome.needRestart.append("auth.max_failures/lockout_time")
        }

        config = next
        dataBudget.limit = next.server.maxBufferedData
        if dataBudget.mayResume { resumeSessionsWaitingForBudget() }
        serverConfiguration = Self.sessionConfiguration(next)
        submissionConfiguration = Self.submissionConfiguration(next)
        serverConfiguration.recipientCheck = suppression
        submissionConfiguration.recipientCheck = suppression
        // Next hops, TLS policies and credentials (password files read again by the parse) for every
        // connection opened from now on; idle and busy connections under the old ones are not reused.
        delivery?.applyRoutes(next.routes)
        // [delivery] was kept above, so the policy's defaults and dead-destination values are the old ones.
        delivery?.applyShaping(next.shaping)
        delivery?.closeIdleConnections()
        return outcome
    }
}

/// SIGHUP's bookkeeping, on the loop: one reload at a time. A signal during a reload is remembered
/// (however many come) and answered by one more reload when it ends, so an edit saved while the file
/// was being read is still applied.
public struct ReloadGate: Sendable {
    public private(set) var running = false
    public private(set) var pending = false

    public init() {}

    /// A SIGHUP: true if a reload starts now; false if one is running (another follows it).
    public mutating func signal() -> Bool {
        if running {
            pending = true
            return false
        }
        running = true
        return true
    }

    /// The running reload ended: true if another starts now (a signal came during this one).
    public mutating func finished() -> Bool {
        if pending {
            pending = false
            return true
        }
        running = false
        return false
    }
}
