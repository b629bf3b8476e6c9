// ConfigRender.swift: the effective configuration written back as TOML, for `tern check-config`.
//
// Every key is written, defaults included, in the order of etc/tern.toml, so that an operator sees
// what the running server will use. The text loads back to the same TernConfig (checked by
// `renderingCheck` and the tests): a table added to TernConfig must add its lines here too.
// Paths are printed resolved (absolute when the config came from a file). Secrets are never printed:
// a password file or variable is printed as its key; an inline password is left out (see tomlText).

import MailQueue

extension TernConfig {
    /// The configuration as a TOML document that `parse` turns back into an equal TernConfig (with an
    /// inline password, left out, it does not load: see `renderingCheck`).
    public var tomlText: String { tomlText(inlinePassword: nil) }

    /// `inlinePassword`: written in place of each inline password, for `renderingCheck`; nil: left out.
    func tomlText(inlinePassword placeholder: String?) -> String {
        var out = TOMLWriter()
        out.comment("Effective configuration: every key, defaults filled in.")
        out.key("hostname", string: hostname)

        let s = server
        out.table("server")
        out.key("listen", strings: s.listen)
        out.key("relay_networks", strings: s.relayNetworks.map(\.description))
        out.key("proxy_protocol_from", strings: s.proxyProtocolFrom.map(\.description))
        out.key("accept_domains", strings: s.acceptDomains)
        out.key("max_message_size", s.maxMessageSize)
        out.key("max_buffered_data", s.maxBufferedData)
        out.key("max_recipients", s.maxRecipients)
        out.key("recipient_overshoot_limit", s.recipientOvershootLimit)
        out.key("max_connections", s.maxConnections)
        out.key("max_connections_per_ip", s.maxConnectionsPerIP)
        out.key("vrfy", s.vrfy)
        out.key("expn", s.expn)
        out.key("max_errors", s.maxErrors)
        out.key("max_line_length", s.maxLineLength)
        out.key("max_hops", s.maxHops)
        out.key("keep_bcc", s.keepBcc)
        out.key("command_timeout", duration: s.commandTimeout)
        out.key("data_timeout", duration: s.dataTimeout)
        out.key("reverse_dns", s.reverseDNS)
        out.key("submission", strings: s.submission)
        out.key("submissions", strings: s.submissions)

        out.table("spool")
        out.key("path", string: spool.path)

        out.table("dns")
        out.key("servers", strings: dns.servers)

        let d = delivery
        out.table("delivery")
        out.key("enabled", d.enabled)
        out.key("port", Int(d.port))
        out.key("max_connections", d.maxConnections)
        out.key("max_connections_per_destination", d.maxConnectionsPerDestination)
        out.raw("retry_schedule = [" + d.retrySchedule.map { TOMLWriter.quoted(formatDuration($0)) }
                    .joined(separator: ", ") + "]")
        out.key("max_queue_lifetime", duration: d.maxQueueLifetime)
        out.key("delay_warning_time", duration: d.delayWarningTime)
        out.key("connect_timeout", duration: d.connectTimeout)
        out.key("greeting_timeout", duration: d.greetingTimeout)
        out.key("command_timeout", duration: d.commandTimeout)
        out.key("data_timeout", duration: d.dataTimeout)
        out.key("connection_cache_time", duration: d.connectionCacheTime)
        out.key("chunking", d.chunking)
        out.key("tls", string: d.tls.rawValue)
        out.key("honor_tls_required_no", d.honorTLSRequiredNo)
        out.key("dead_destination_failures", d.deadDestination.failures)
        out.key("dead_destination_initial", duration: d.deadDestination.initial)
        out.key("dead_destination_maximum", duration: d.deadDestination.maximum)

        out.table("routes")
        for domain in routes.routes.keys.sorted() {
            let hop = TOMLWriter.quoted(routes.routes[domain]!.description)
            let pool = routes.pools[domain]
            guard routes.security[domain] != nil || pool != nil else {
                out.raw("\(TOMLWriter.key(domain)) = \(hop)")
                continue
            }
            let security = routes.security[domain] ?? RouteSecurity()
            var items = ["next_hop = \(hop)"]
            if let tls = security.tls { items.append("tls = \(TOMLWriter.quoted(tls.rawValue))") }
            if let pool { items.append("pool = \(TOMLWriter.quoted(pool))") }
            if let c = security.credentials {
                // A password is never printed: its file or variable is, as written. An inline one is
                // left out, so this line does not load (auth_user needs a password) rather than
                // load with a wrong password.
                items.append("auth_user = \(TOMLWriter.quoted(c.user))")
                if let file = security.passwordFile {
                    items.append("auth_password_file = \(TOMLWriter.quoted(file))")
                } else if let env = security.passwordEnv {
                    items.append("auth_password_env = \(TOMLWriter.quoted(env))")
                } else if let placeholder {
                    items.append("auth_password = \(TOMLWriter.quoted(placeholder))")
                } else {
                    out.comment("auth_password of \(TOMLWriter.key(domain)) is a secret written inline, not printed: "
                                + "this line does not load until you give it (better: auth_password_file).")
                }
            }
            out.raw("\(TOMLWriter.key(domain)) = { " + items.joined(separator: ", ") + " }")
        }

        renderShaping(&out)
        renderDKIM(&out)
        renderBounce(&out)
        renderSuppression(&out)
        renderEvents(&out)
        renderHTTP(&out)
        renderCluster(&out)

        out.table("priority")
        for (name, levels) in [("sender_domains", priority.senderDomains),
                               ("recipient_domains", priority.recipientDomains)] {
            let items = levels.keys.sorted().map { "\(TOMLWriter.key($0)) = \(levels[$0]!)" }
            out.raw("\(name) = {" + (items.isEmpty ? "" : " " + items.joined(separator: ", ") + " ") + "}")
        }

        out.table("tls")
        out.key("certificate", string: tls.certificate)
        out.key("key", string: tls.key)
        out.key("ciphers", string: tls.ciphers)
        out.key("submission_ciphers", string: tls.submissionCiphers)

        out.table("auth")
        out.key("users_file", string: auth.usersFile)
        out.key("max_failures", auth.maxFailures)
        out.key("lockout_time", duration: auth.lockoutTime)
        out.key("cleartext_from_loopback", auth.cleartextFromLoopback)
        let senders = auth.senders.keys.sorted().map { user in
            "\(TOMLWriter.key(user)) = [" + auth.senders[user]!.map(TOMLWriter.quoted).joined(separator: ", ") + "]"
        }
        out.raw("senders = {" + (senders.isEmpty ? "" : " " + senders.joined(separator: ", ") + " ") + "}")

        out.table("log")
        out.key("format", string: log.format.rawValue)

        out.table("admin")
        out.key("listen", string: admin.listen)
        out.key("request_timeout", duration: admin.requestTimeout)

        out.table("aliases")
        for name in aliases.keys.sorted() {
            let targets = aliases[name]!
            out.raw("\(TOMLWriter.key(name)) = [" + targets.map(TOMLWriter.quoted).joined(separator: ", ") + "]")
        }
        return out.text
    }

    /// [[shaping]], [[backoff]] and [egress], only as far as the file has them (they have no defaults).
    func renderShaping(_ out: inout TOMLWriter) {
        for rule in shapingRules {
            out.arrayTable("shaping")
            out.key("name", string: rule.name)
            if !rule.domains.isEmpty { out.key("domains", strings: rule.domains) }
            if !rule.mx.isEmpty { out.key("mx", strings: rule.mx) }
            if let n = rule.maxConnections { out.key("max_connections", n) }
            if let n = rule.maxMessagesPerConnection { out.key("max_messages_per_connection", n) }
            if let rate = rule.maxMessageRate { out.key("max_message_rate", string: rate.description) }
            if let rate = rule.maxConnectionRate { out.key("max_connection_rate", string: rate.description) }
            if let time = rule.connectionCacheTime { out.key("connection_cache_time", duration: time) }
            if let tls = rule.tls { out.key("tls", string: tls.rawValue) }
            if let pool = rule.pool { out.key("pool", string: pool) }
        }
        for (index, rule) in backoff.enumerated() {
            out.arrayTable("backoff")
            if rule.name != "backoff[\(index)]" { out.key("name", string: rule.name) }
            out.key("reply", string: rule.reply)
            out.key("threshold", string: "\(rule.threshold.count) in \(formatDuration(rule.threshold.window))")
            switch rule.action {
            case .suspend:
                out.key("action", string: "suspend")
            case .throttle(let rate, let connections):
                out.key("action", string: "throttle")
                if let rate { out.key("rate", string: rate.description) }
                if let connections { out.key("connections", connections) }
            }
            out.key("duration", duration: rule.duration)
            if !rule.rules.isEmpty { out.key("rules", strings: rule.rules) }
        }
        for source in egress.sources {
            out.table("egress.sources.\(TOMLWriter.key(source.name))")
            out.key("address", string: source.address)
            if let ehlo = source.ehlo { out.key("ehlo", string: ehlo) }
        }
        for pool in egress.pools {
            out.table("egress.pools.\(TOMLWriter.key(pool.name))")
            out.raw("sources = { " + pool.sources.map { "\(TOMLWriter.key($0.name)) = \($0.weight)" }
                        .joined(separator: ", ") + " }")
        }
        let select = egress.select
        if select != EgressSelect() {
            out.table("egress.select")
            for (name, map) in [("users", select.users), ("sender_domains", select.senderDomains)] where !map.isEmpty {
                let items = map.keys.sorted().map { "\(TOMLWriter.key($0)) = \(TOMLWriter.quoted(map[$0]!))" }
                out.raw("\(name) = { " + items.joined(separator: ", ") + " }")
            }
            if let pool = select.defaultPool { out.key("default", string: pool) }
        }
    }

    /// Some route has its password inline (auth_password): its rendering does not load.
    public var hasInlineSecrets: Bool {
        routes.security.values.contains { $0.credentials != nil && $0.passwordFile == nil && $0.passwordEnv == nil }
    }

    /// check-config's guard: the text it prints, and why it does not load back to this configuration
    /// (nil: it does). An inline password is not printed, so that text does not load; the same
    /// rendering with a placeholder in the password's place is checked instead, against this
    /// configuration with that placeholder as the password, so a mistake elsewhere is still caught.
    public func renderingCheck() -> (text: String, problem: String?) {
        guard hasInlineSecrets else { return (tomlText, Self.checkRendering(tomlText, of: self)) }
        var expected = self
        for (domain, security) in routes.security
        where security.credentials != nil && security.passwordFile == nil && security.passwordEnv == nil {
            expected.routes.security[domain]?.credentials?.password = Self.inlinePasswordPlaceholder
        }
        let checked = tomlText(inlinePassword: Self.inlinePasswordPlaceholder)
        return (tomlText, Self.checkRendering(checked, of: expected))
    }

    static let inlinePasswordPlaceholder = "inline password, not printed"

    /// Why `text` does not load back to `expected`; nil when it does.
    static func checkRendering(_ text: String, of expected: TernConfig) -> String? {
        do {
            let again = try parse(text, source: "<rendered>")
            return again == expected ? nil : "the printed configuration does not load back the same"
        } catch {
            return "the printed configuration does not load: \(error)"
        }
    }
}

/// Seconds as the shortest duration string that reads back exactly: 300 → "5m", 1.5 → "1500ms", 0 → "0s".
func formatDuration(_ seconds: Double) -> String {
    if seconds == 0 { return "0s" }
    if seconds == seconds.rounded() {
        let s = Int(seconds)
        for (unit, size) in [("d", 86400), ("h", 3600), ("m", 60)] where s % size == 0 { return "\(s / size)\(unit)" }
        return "\(s)s"
    }
    let ms = seconds * 1000
    if ms == ms.rounded() { return "\(Int(ms))ms" }
    return "\(seconds)s"
}

/// Just enough TOML writing for the config: tables, keys, strings, integers, booleans, arrays.
struct TOMLWriter {
    var text = ""

    mutating func comment(_ line: String) { text += "# \(line)\n" }
    mutating func raw(_ line: String) { text += line + "\n" }
    mutating func table(_ name: String) { text += "\n[\(name)]\n" }
    mutating func arrayTable(_ name: String) { text += "\n[[\(name)]]\n" }
    mutating func key(_ name: String, _ value: Int) { raw("\(name) = \(value)") }
    mutating func key(_ name: String, _ value: Bool) { raw("\(name) = \(value)") }
    mutating func key(_ name: String, string: String) { raw("\(name) = \(Self.quoted(string))") }
    mutating func key(_ name: String, duration: Double) { raw("\(name) = \(Self.quoted(formatDuration(duration)))") }
    mutating func key(_ name: String, strings: [String]) {
        raw("\(name) = [" + strings.map(Self.quoted).joined(separator: ", ") + "]")
    }
    /// `name = { key = "value", ... }`, keys sorted.
    mutating func inlineTable(_ name: String, _ map: [String: String]) {
        raw("\(name) = { " + map.keys.sorted().map { "\(Self.key($0)) = \(Self.quoted(map[$0]!))" }.joined(separator: ", ") + " }")
    }

    /// A basic string with the escapes TOML requires.
    static func quoted(_ s: String) -> String {
        var out = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\t": out += "\\t"
            case "\r": out += "\\r"
            default:
                if u.value < 0x20 || u.value == 0x7F {
                    let hex = String(u.value, radix: 16, uppercase: true)
                    out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                } else {
                    out.unicodeScalars.append(u)
                }
            }
        }
        return out + "\""
    }

    /// A key, bare when TOML allows it, else quoted.
    static func key(_ name: String) -> String {
        let bare = !name.isEmpty && name.unicodeScalars.allSatisfy {
            ($0.value < 128) && (($0.properties.isAlphabetic) || ("0"..."9").contains($0) || $0 == "_" || $0 == "-")
        }
        return bare ? name : quoted(name)
    }
}
