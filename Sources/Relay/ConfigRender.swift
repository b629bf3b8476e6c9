// ConfigRender.swift: the effective configuration written back as TOML, for `tern check-config`.
//
// Every key is written, defaults included, in the order of etc/tern.toml, so that an operator sees
// what the running server will use. The text loads back to the same TernConfig (checked by
// `renderedAndReloaded` and the tests): a table added to TernConfig must add its lines here too.

extension TernConfig {
    /// The configuration as a TOML document that `parse` turns back into an equal TernConfig.
    public var tomlText: String {
        var out = TOMLWriter()
        out.comment("Effective configuration: every key, defaults filled in.")
        out.key("hostname", string: hostname)

        let s = server
        out.table("server")
        out.key("listen", strings: s.listen)
        out.key("relay_networks", strings: s.relayNetworks.map(\.description))
        out.key("accept_domains", strings: s.acceptDomains)
        out.key("max_message_size", s.maxMessageSize)
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
        out.key("tls", string: d.tls.rawValue)

        out.table("routes")
        for domain in routes.routes.keys.sorted() {
            let hop = TOMLWriter.quoted(routes.routes[domain]!.description)
            guard let security = routes.security[domain] else {
                out.raw("\(TOMLWriter.key(domain)) = \(hop)")
                continue
            }
            var items = ["next_hop = \(hop)"]
            if let tls = security.tls { items.append("tls = \(TOMLWriter.quoted(tls.rawValue))") }
            if let c = security.credentials {
                // The password itself is never printed (see `hidingSecrets`).
                items.append("auth_user = \(TOMLWriter.quoted(c.user))")
                items.append("auth_password = \(TOMLWriter.quoted(Self.hiddenPassword))")
            }
            out.raw("\(TOMLWriter.key(domain)) = { " + items.joined(separator: ", ") + " }")
        }

        out.table("priority")
        for (name, levels) in [("sender_domains", priority.senderDomains),
                               ("recipient_domains", priority.recipientDomains)] {
            let items = levels.keys.sorted().map { "\(TOMLWriter.key($0)) = \(levels[$0]!)" }
            out.raw("\(name) = {" + (items.isEmpty ? "" : " " + items.joined(separator: ", ") + " ") + "}")
        }

        out.table("tls")
        out.key("certificate", string: tls.certificate)
        out.key("key", string: tls.key)

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

        out.table("aliases")
        for name in aliases.keys.sorted() {
            let targets = aliases[name]!
            out.raw("\(TOMLWriter.key(name)) = [" + targets.map(TOMLWriter.quoted).joined(separator: ", ") + "]")
        }
        return out.text
    }

    /// What upstream passwords are printed as.
    static let hiddenPassword = "(hidden)"

    /// The same configuration with every upstream password replaced as `tomlText` prints it.
    public var hidingSecrets: TernConfig {
        var c = self
        for (domain, security) in c.routes.security where security.credentials != nil {
            c.routes.security[domain]!.credentials!.password = Self.hiddenPassword
        }
        return c
    }

    /// The rendered text and what it loads back as; check-config refuses to print a text that does not
    /// load back to the same configuration (`hidingSecrets` of it: passwords are not printed).
    public var renderedAndReloaded: (text: String, reloaded: Result<TernConfig, Error>) {
        let text = tomlText
        return (text, Result { try TernConfig.parse(text, source: "<rendered>") })
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
    mutating func key(_ name: String, _ value: Int) { raw("\(name) = \(value)") }
    mutating func key(_ name: String, _ value: Bool) { raw("\(name) = \(value)") }
    mutating func key(_ name: String, string: String) { raw("\(name) = \(Self.quoted(string))") }
    mutating func key(_ name: String, duration: Double) { raw("\(name) = \(Self.quoted(formatDuration(duration)))") }
    mutating func key(_ name: String, strings: [String]) {
        raw("\(name) = [" + strings.map(Self.quoted).joined(separator: ", ") + "]")
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
