// ShapingConfigTests.swift: [[shaping]], [[backoff]], [delivery]'s dead-destination keys and [egress]
// read into a ShapingPolicy; each error names its key; the rendering loads back; etc/tern.toml's
// commented examples parse; SIGHUP hands the new policy over.

import MailQueue
import Testing
@testable import Relay

#if canImport(Glibc)
import Glibc
#endif

private func parse(_ text: String) throws -> TernConfig {
    try TernConfig.parse("hostname = \"relay.test\"\n" + text)
}

/// The error `text` gives; fails the test when it parses.
private func parseError(_ text: String, sourceLocation: SourceLocation = #_sourceLocation) -> ConfigError? {
    do {
        let config = try parse(text)
        Issue.record("parsed without error: \(config.shaping)", sourceLocation: sourceLocation)
    } catch let error as ConfigError {
        return error
    } catch {
        Issue.record("unexpected error type: \(error)", sourceLocation: sourceLocation)
    }
    return nil
}

/// Two pools and their sources, for the tables that name them.
private let egressTables = """
    [egress.sources.a]
    address = "127.0.0.21"
    ehlo = "mta-a.example.net"
    [egress.sources.b]
    address = "::1"
    [egress.pools.bulk]
    sources = { a = 2, b = 1 }
    [egress.pools.transactional]
    sources = { b = 1 }

    """

@Suite struct ShapingConfigTests {
    // MARK: Every key

    @Test func everyKeyParses() throws {
        let c = try parse("""
            [delivery]
            max_connections_per_destination = 7
            connection_cache_time = "3s"
            dead_destination_failures = 3
            dead_destination_initial = "30s"
            dead_destination_maximum = "2h"

            [routes]
            "corp.example" = { next_hop = "[10.0.0.5]:25", pool = "transactional" }

            [[shaping]]
            name = "google"
            domains = ["Gmail.COM", ".Example.com."]
            mx = [".google.com", "aspmx.l.google.com"]
            max_connections = 20
            max_messages_per_connection = 100
            max_message_rate = "300/min"
            max_connection_rate = "10/s"
            connection_cache_time = "5s"
            tls = "verify"
            pool = "bulk"

            [[shaping]]
            name = "small.isp"
            domains = ["small.example"]

            [[backoff]]
            reply = '^421 4\\.7\\.0|too many connections'
            threshold = "3 in 5m"
            action = "suspend"
            duration = "10m"

            [[backoff]]
            name = "rate-limited"
            reply = "rate limit"
            threshold = "1 in 30s"
            action = "throttle"
            rate = "1/s"
            connections = 2
            duration = "1h"
            rules = ["google", "small.isp"]

            \(egressTables)
            [egress.select]
            users = { "alice" = "bulk", "bob@example.org" = "transactional" }
            sender_domains = { "News.Example.org" = "bulk" }
            default = "transactional"
            """)
        let p = c.shaping
        #expect(p.rules.count == 2)
        let google = p.rules[0]
        #expect(google == ShapingRule(name: "google", domains: ["gmail.com", ".example.com"],
                                      mx: [".google.com", "aspmx.l.google.com"], maxConnections: 20,
                                      maxMessagesPerConnection: 100, maxMessageRate: Rate(count: 300, period: 60),
                                      maxConnectionRate: Rate(count: 10, period: 1), connectionCacheTime: 5,
                                      pool: "bulk", tls: .verify))
        #expect(p.rules[1] == ShapingRule(name: "small.isp", domains: ["small.example"]))
        #expect(p.backoff == [
            BackoffRule(name: "backoff[0]", reply: "^421 4\\.7\\.0|too many connections",
                        threshold: Threshold(count: 3, window: 300), action: .suspend, duration: 600),
            BackoffRule(name: "rate-limited", reply: "rate limit", threshold: Threshold(count: 1, window: 30),
                        action: .throttle(rate: Rate(count: 1, period: 1), connections: 2), duration: 3600,
                        rules: ["google", "small.isp"]),
        ])
        #expect(p.dead == DeadDestinationPolicy(failures: 3, initial: 30, maximum: 7200))
        #expect(p.defaults == ShapingRule(name: "default", maxConnections: 7, connectionCacheTime: 3))
        #expect(p.sources == [EgressSource(name: "a", address: "127.0.0.21", ehlo: "mta-a.example.net"),
                              EgressSource(name: "b", address: "::1")])
        #expect(p.pools == [EgressPool(name: "bulk", sources: [("a", 2), ("b", 1)]),
                            EgressPool(name: "transactional", sources: [("b", 1)])])
        #expect(p.select == EgressSelect(users: ["alice": "bulk", "bob@example.org": "transactional"],
                                         senderDomains: ["news.example.org": "bulk"], defaultPool: "transactional"))
        #expect(c.routes.pools == ["corp.example": "transactional"])
    }

    @Test func defaultsShapeNothingBeyondDelivery() throws {
        let c = try TernConfig.embeddedDefault
        #expect(c.shapingRules.isEmpty && c.backoff.isEmpty && c.egress.isEmpty && c.routes.pools.isEmpty)
        #expect(c.shaping == ShapingPolicy())
        #expect(c.delivery.deadDestination == DeadDestinationPolicy(failures: 5, initial: 60, maximum: 3600))
        // The limits of unmatched destinations follow [delivery], whatever sets it.
        var changed = c
        changed.delivery.maxConnectionsPerDestination = 3
        changed.delivery.connectionCacheTime = 0
        #expect(changed.shaping.defaults == ShapingRule(name: "default", maxConnections: 3, connectionCacheTime: 0))
    }

    @Test func rateForms() throws {
        for (text, rate) in [("20/s", Rate(count: 20, period: 1)), ("300/min", Rate(count: 300, period: 60)),
                             ("5000/h", Rate(count: 5000, period: 3600)), ("100000/d", Rate(count: 100000, period: 86400)),
                             ("7/m", Rate(count: 7, period: 60))] {
            let c = try parse("[[shaping]]\nname = \"r\"\ndomains = [\"a.example\"]\nmax_message_rate = \"\(text)\"")
            #expect(c.shapingRules[0].maxMessageRate == rate, "\(text)")
        }
    }

    @Test func arraysOfInlineTablesWork() throws {
        let c = try parse("shaping = [{ name = \"a\", domains = [\"a.example\"] }, { name = \"b\", mx = [\".mx.example\"] }]")
        #expect(c.shapingRules.map(\.name) == ["a", "b"])
    }

    // MARK: Errors name their keys

    /// (config text, the key the error names, words its message has).
    static let errors: [(String, String, String)] = [
        // [[shaping]]
        ("[[shaping]]\ndomains = [\"a.example\"]", "shaping[0].name", "is required"),
        ("[[shaping]]\nname = \"a b\"\ndomains = [\"a.example\"]", "shaping[0].name", "is not a name"),
        ("[[shaping]]\nname = \"default\"\ndomains = [\"a.example\"]", "shaping[0].name", "[delivery]"),
        ("[[shaping]]\nname = \"a\"\ndomains = [\"a.example\"]\n[[shaping]]\nname = \"a\"\ndomains = [\"b.example\"]",
         "shaping[1].name", "also shaping[0]'s name"),
        ("[[shaping]]\nname = \"a\"\ndomains = [\"a.example\"]\n[[shaping]]\nname = \"b\"\n[[shaping]]\nname = \"c\"\ndomains = [\"not a domain\"]",
         "shaping[1].domains", "matches no destination"),
        ("[[shaping]]\nname = \"a\"\ndomains = [\"a.example\"]\n[[shaping]]\nname = \"b\"\ndomains = [\"b.example\"]\n[[shaping]]\nname = \"c\"\ndomains = [\"not a domain\"]",
         "shaping[2].domains", "\"not a domain\" is not a domain name"),
        ("[[shaping]]\nname = \"a\"\ndomains = [\"..example\"]", "shaping[0].domains", "is not a domain name"),
        ("[[shaping]]\nname = \"a\"\nmx = [\"mx_1.example\"]", "shaping[0].mx", "is not a domain name"),
        ("[[shaping]]\nname = \"a\"\ndomains = [\"gmail.com\"]\n[[shaping]]\nname = \"b\"\ndomains = [\"GMAIL.com\"]",
         "shaping[1].domains", "\"gmail.com\" is also claimed by shaping[0] (\"a\")"),
        ("[[shaping]]\nname = \"a\"\nmx = [\".google.com\"]\n[[shaping]]\nname = \"b\"\nmx = [\".google.com\"]",
         "shaping[1].mx", "also claimed by shaping[0] (\"a\")"),
        ("[[shaping]]\nname = \"a\"\ndomains = [\"x.example\", \"x.example\"]", "shaping[0].domains", "twice"),
        ("[[shaping]]\nname = \"a\"\ndomains = [\"a.example\"]\nmax_connections = 0", "shaping[0].max_connections", "positive"),
        ("[[shaping]]\nname = \"a\"\ndomains = [\"a.example\"]\nmax_messages_per_connection = \"10\"",
         "shaping[0].max_messages_per_connection", "expected an integer"),
        ("[[shaping]]\nname = \"a\"\ndomains = [\"a.example\"]\nmax_message_rate = \"300 per minute\"",
         "shaping[0].max_message_rate", "\"300/min\""),
        ("[[shaping]]\nname = \"a\"\ndomains = [\"a.example\"]\nmax_connection_rate = \"0/s\"",
         "shaping[0].max_connection_rate", "\"20/s\""),
        ("[[shaping]]\nname = \"a\"\ndomains = [\"a.example\"]\nconnection_cache_time = \"5 s\"",
         "shaping[0].connection_cache_time", "not a duration"),
        ("[[shaping]]\nname = \"a\"\ndomains = [\"a.example\"]\ntls = \"always\"", "shaping[0].tls", "\"verify\""),
        ("[[shaping]]\nname = \"a\"\ndomains = [\"a.example\"]\npool = \"bulk\"", "shaping[0].pool", "no [egress.pools.bulk]"),
        ("[[shaping]]\nname = \"a\"\ndomains = [\"a.example\"]\nmax_conections = 3", "shaping[0].max_conections", "unknown key"),
        ("[shaping]\nname = \"a\"", "shaping", "write [[shaping]]"),
        ("shaping = [1]", "shaping", "item 1: expected a table"),
        // [[backoff]]
        ("[[backoff]]\nthreshold = \"1 in 1m\"\naction = \"suspend\"\nduration = \"1m\"", "backoff[0].reply", "is required"),
        ("[[backoff]]\nreply = \"(unclosed\"\nthreshold = \"1 in 1m\"\naction = \"suspend\"\nduration = \"1m\"",
         "backoff[0].reply", "is not a regular expression: "),
        ("[[backoff]]\nreply = \"\"\nthreshold = \"1 in 1m\"\naction = \"suspend\"\nduration = \"1m\"",
         "backoff[0].reply", "must not be empty"),
        ("[[backoff]]\nreply = \"x\"\naction = \"suspend\"\nduration = \"1m\"", "backoff[0].threshold", "is required"),
        ("[[backoff]]\nreply = \"x\"\nthreshold = \"3 per 5m\"\naction = \"suspend\"\nduration = \"1m\"",
         "backoff[0].threshold", "\"3 in 5m\""),
        ("[[backoff]]\nreply = \"x\"\nthreshold = \"0 in 5m\"\naction = \"suspend\"\nduration = \"1m\"",
         "backoff[0].threshold", "\"3 in 5m\""),
        ("[[backoff]]\nreply = \"x\"\nthreshold = \"3 in 5 minutes\"\naction = \"suspend\"\nduration = \"1m\"",
         "backoff[0].threshold", "\"3 in 5m\""),
        ("[[backoff]]\nreply = \"x\"\nthreshold = \"3 in 5q\"\naction = \"suspend\"\nduration = \"1m\"",
         "backoff[0].threshold", "not a duration"),
        ("[[backoff]]\nreply = \"x\"\nthreshold = \"1 in 1m\"\nduration = \"1m\"", "backoff[0].action", "is required"),
        ("[[backoff]]\nreply = \"x\"\nthreshold = \"1 in 1m\"\naction = \"pause\"\nduration = \"1m\"",
         "backoff[0].action", "\"suspend\" or \"throttle\", got \"pause\""),
        ("[[backoff]]\nreply = \"x\"\nthreshold = \"1 in 1m\"\naction = \"throttle\"\nduration = \"1m\"",
         "backoff[0].action", "needs rate"),
        ("[[backoff]]\nreply = \"x\"\nthreshold = \"1 in 1m\"\naction = \"suspend\"\nrate = \"1/s\"\nduration = \"1m\"",
         "backoff[0].rate", "only to action = \"throttle\""),
        ("[[backoff]]\nreply = \"x\"\nthreshold = \"1 in 1m\"\naction = \"suspend\"\nconnections = 1\nduration = \"1m\"",
         "backoff[0].connections", "only to action = \"throttle\""),
        ("[[backoff]]\nreply = \"x\"\nthreshold = \"1 in 1m\"\naction = \"throttle\"\nrate = \"fast\"\nduration = \"1m\"",
         "backoff[0].rate", "\"300/min\""),
        ("[[backoff]]\nreply = \"x\"\nthreshold = \"1 in 1m\"\naction = \"throttle\"\nconnections = 0\nduration = \"1m\"",
         "backoff[0].connections", "positive"),
        ("[[backoff]]\nreply = \"x\"\nthreshold = \"1 in 1m\"\naction = \"suspend\"", "backoff[0].duration", "is required"),
        ("[[backoff]]\nreply = \"x\"\nthreshold = \"1 in 1m\"\naction = \"suspend\"\nduration = \"0s\"",
         "backoff[0].duration", "greater than zero"),
        ("[[backoff]]\nreply = \"x\"\nthreshold = \"1 in 1m\"\naction = \"suspend\"\nduration = \"1m\"\nrules = [\"google\"]",
         "backoff[0].rules", "no [[shaping]] rule is named \"google\""),
        ("[[backoff]]\nname = \"x\"\nreply = \"x\"\nthreshold = \"1 in 1m\"\naction = \"suspend\"\nduration = \"1m\"\n"
         + "[[backoff]]\nname = \"x\"\nreply = \"y\"\nthreshold = \"1 in 1m\"\naction = \"suspend\"\nduration = \"1m\"",
         "backoff[1].name", "also backoff[0]'s name"),
        ("[[backoff]]\nreply = \"x\"\nthreshold = \"1 in 1m\"\naction = \"suspend\"\nduration = \"1m\"\nwindow = \"1m\"",
         "backoff[0].window", "unknown key"),
        // [delivery]
        ("[delivery]\ndead_destination_failures = 0", "delivery.dead_destination_failures", "positive"),
        ("[delivery]\ndead_destination_initial = \"0s\"", "delivery.dead_destination_initial", "greater than zero"),
        ("[delivery]\ndead_destination_maximum = \"soon\"", "delivery.dead_destination_maximum", "not a duration"),
        ("[delivery]\ndead_destination_initial = \"2h\"", "delivery.dead_destination_initial",
         "2h is longer than dead_destination_maximum (1h)"),
        ("[delivery]\ndead_destination_initial = \"1m\"\ndead_destination_maximum = \"30s\"",
         "delivery.dead_destination_initial", "longer than dead_destination_maximum (30s)"),
        // [egress]
        ("[egress.sources.a]\nehlo = \"mta.example\"", "egress.sources.a.address", "is required"),
        ("[egress.sources.a]\naddress = \"mta.example.net\"", "egress.sources.a.address", "not an IPv4 or IPv6 address"),
        ("[egress.sources.a]\naddress = \"fe80::1%eth0\"", "egress.sources.a.address", "not an IPv4 or IPv6 address"),
        ("[egress.sources.a]\naddress = \"127.0.0.21\"\nehlo = \"not a name\"", "egress.sources.a.ehlo", "not a host name"),
        ("[egress.sources.a]\naddress = \"127.0.0.21\"\nbind = \"x\"", "egress.sources.a.bind", "unknown key"),
        ("[egress.sources.a]\naddress = \"127.0.0.21\"\n[egress.sources.b]\naddress = \"127.0.0.21\"",
         "egress.sources.b.address", "also egress.sources.a's address"),
        ("[egress.sources.\"a b\"]\naddress = \"127.0.0.21\"", "egress.sources.\"a b\"", "is not a name"),
        ("[egress.sources]\na = \"127.0.0.21\"", "egress.sources.a", "expected a table"),
        ("[egress.pools.bulk]\nsources = { c = 1 }", "egress.pools.bulk.sources.c", "no [egress.sources.c]"),
        ("[egress.sources.a]\naddress = \"127.0.0.21\"\n[egress.pools.bulk]\nsources = { a = 0 }",
         "egress.pools.bulk.sources.a", "positive"),
        ("[egress.pools.bulk]\nsources = {}", "egress.pools.bulk.sources", "at least one source"),
        ("[egress.pools.bulk]\nweights = {}", "egress.pools.bulk.sources", "is required"),
        ("[egress.select]\ndefault = \"bulk\"", "egress.select.default", "no [egress.pools.bulk]"),
        ("[egress.select]\nusers = { alice = \"bulk\" }", "egress.select.users.alice", "no [egress.pools.bulk]"),
        ("[egress.select]\nsender_domains = { \"x.example\" = \"bulk\" }", "egress.select.sender_domains.\"x.example\"",
         "no [egress.pools.bulk]"),
        (egressTables + "[egress.select]\nsender_domains = { \"not a domain\" = \"bulk\" }",
         "egress.select.sender_domains.\"not a domain\"", "not a domain name"),
        (egressTables + "[egress.select]\nsender_domains = { \"x.example\" = \"bulk\", \"X.example\" = \"bulk\" }",
         "egress.select.sender_domains.\"x.example\"", "duplicate domain"),
        ("[egress.select]\nrecipients = \"bulk\"", "egress.select.recipients", "unknown key"),
        ("[egress.select]\nrecipients = {}", "egress.select.recipients", "unknown table [egress.select.recipients]"),
        ("[egress]\nsource = \"127.0.0.1\"", "egress.source", "unknown key"),
        // [routes]
        ("[routes]\n\"corp.example\" = { next_hop = \"[10.0.0.5]:25\", pool = \"bulk\" }", "routes.\"corp.example\".pool",
         "no [egress.pools.bulk]"),
        ("[routes]\n\"corp.example\" = { next_hop = \"[10.0.0.5]:25\", pool = 1 }", "routes.\"corp.example\".pool",
         "expected a string"),
    ]

    @Test(arguments: errors.indices)
    func everyErrorNamesItsKey(_ i: Int) throws {
        let (text, key, words) = Self.errors[i]
        guard let error = parseError(text) else { return }
        let shown = error.description
        #expect(shown.contains(key + ": ") || shown.contains(" " + key) || shown.contains("[\(key)]"), "\(shown): not \(key)")
        if let k = error.key { #expect(k == key, "\(shown)") }
        #expect(shown.contains(words), "\(shown): lacks \(words)")
    }

    @Test func errorsInArrayTablesCarryTheirLines() throws {
        let text = """
            [[shaping]]
            name = "a"
            domains = ["a.example"]

            [[shaping]]
            name = "b"
            domains = ["b.example"]
            max_message_rate = "lots"

            [[shaping]]
            domains = ["c.example"]
            """
        let rate = try #require(parseError(text))
        #expect(rate.key == "shaping[1].max_message_rate")
        #expect(rate.line == 9, "\(rate)")  // the hostname line comes first
        let missing = try #require(parseError(text.replacing("\"lots\"", with: "\"1/s\"")))
        #expect(missing.key == "shaping[2].name")
        #expect(missing.line == 11, "\(missing)")  // its [[shaping]] header
        #expect(missing.description == "config: line 11: shaping[2].name: is required: the rule's name in logs, metrics and [[backoff]] rules")
    }

    @Test func regexErrorsSayWhy() throws {
        let error = try #require(parseError(
            "[[backoff]]\nreply = \"4[0-9\"\nthreshold = \"1 in 1m\"\naction = \"suspend\"\nduration = \"1m\""))
        let said = try #require(error.message.firstRange(of: "is not a regular expression: "), "\(error)")
        #expect(!error.message[said.upperBound...].isEmpty, "\(error)")
    }

    // MARK: Rendering

    @Test func renderingLoadsBack() throws {
        let c = try parse("""
            [delivery]
            dead_destination_failures = 2
            dead_destination_initial = "90s"
            dead_destination_maximum = "3h"
            [routes]
            "corp.example" = { next_hop = "[10.0.0.5]:25", pool = "bulk" }
            "plain.example" = "[10.0.0.6]:25"
            [[shaping]]
            name = "google"
            domains = ["gmail.com", ".example.com"]
            mx = [".google.com"]
            max_connections = 20
            max_messages_per_connection = 100
            max_message_rate = "300/min"
            max_connection_rate = "10/s"
            connection_cache_time = "0s"
            tls = "require"
            pool = "bulk"
            [[shaping]]
            name = "other"
            mx = ["mx.other.example"]
            max_message_rate = "7/d"
            [[backoff]]
            reply = '^4\\d\\d .*"quoted" \\\\ text'
            threshold = "3 in 5m"
            action = "suspend"
            duration = "10m"
            rules = ["google"]
            [[backoff]]
            name = "slow"
            reply = "rate limit"
            threshold = "1 in 90s"
            action = "throttle"
            connections = 1
            duration = "1h"
            [[backoff]]
            reply = "x"
            threshold = "1 in 1m"
            action = "throttle"
            rate = "100/h"
            duration = "1m"
            \(egressTables)
            [egress.select]
            users = { "alice" = "bulk", "o'brien" = "transactional" }
            sender_domains = { "news.example.org" = "bulk" }
            default = "bulk"
            """)
        let text = c.tomlText
        let again = try TernConfig.parse(text)
        #expect(again == c, "rendered:\n\(text)")
        #expect(again.shaping == c.shaping)
        #expect(c.renderingCheck().problem == nil)
        #expect(text.contains("\n[[shaping]]\nname = \"google\"\n"))
        #expect(text.contains("max_message_rate = \"300/min\""))
        #expect(text.contains("threshold = \"1 in 90s\""))
        #expect(text.contains("sources = { a = 2, b = 1 }"))
        #expect(text.contains("\"corp.example\" = { next_hop = \"[10.0.0.5]:25\", pool = \"bulk\" }"))
        #expect(!text.contains("name = \"backoff["), "default names are not written")
        #expect(text.contains("dead_destination_initial = \"90s\""))
    }

    @Test func renderingOfTheDefaultsHasNoShapingTables() throws {
        let text = try TernConfig.embeddedDefault.tomlText
        #expect(!text.contains("[[shaping]]") && !text.contains("[[backoff]]") && !text.contains("[egress"))
        #expect(text.contains("dead_destination_failures = 5\ndead_destination_initial = \"1m\"\ndead_destination_maximum = \"1h\"\n"))
    }

    // MARK: etc/tern.toml's examples

    /// The commented shaping section of etc/tern.toml, its example lines uncommented: from "# Traffic
    /// shaping" to the next table header. Lines whose text is a table header or `key = value` are
    /// examples; the rest is prose.
    static func uncommentedShapingExamples() throws -> (text: String, examples: Int) {
        let lines = DefaultConfig.text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        let start = try #require(lines.firstIndex { $0.hasPrefix("# Traffic shaping") })
        let end = try #require(lines[start...].firstIndex { $0.hasPrefix("[") })  // the next table of the file
        let keyLine = try Regex(#"^[A-Za-z_"][A-Za-z0-9_".-]* = "#)
        var examples = 0
        var out = Array(lines[..<start])
        for line in lines[start..<end] {
            guard line.hasPrefix("# ") else { out.append(line); continue }
            let body = line.dropFirst(2)
            let isHeader = body.hasPrefix("[")
            let isKey = body.firstMatch(of: keyLine) != nil
            if isHeader || isKey {
                out.append(String(body))
                examples += 1
            } else {
                out.append(line)
            }
        }
        return ((out + lines[end...]).joined(separator: "\n"), examples)
    }

    @Test func etcExamplesParseWhenUncommented() throws {
        let (text, examples) = try Self.uncommentedShapingExamples()
        #expect(examples > 30)
        let c = try TernConfig.parse(text)
        #expect(c.shapingRules.map(\.name) == ["bigmail"])
        let rule = try #require(c.shapingRules.first)
        #expect(rule.mx == [".mx.bigmail.example"])
        #expect(rule.maxConnections == 10 && rule.maxMessagesPerConnection == 100)
        #expect(rule.maxMessageRate == Rate(count: 300, period: 60) && rule.maxConnectionRate == Rate(count: 5, period: 1))
        #expect(rule.connectionCacheTime == 5 && rule.tls == .opportunistic && rule.pool == "bulk")
        #expect(c.backoff.map(\.name) == ["too-many-connections", "rate-limited", "try-again-later"])
        #expect(c.backoff.map(\.action) == [.throttle(rate: nil, connections: 2),
                                             .throttle(rate: Rate(count: 1, period: 1), connections: nil), .suspend])
        #expect(c.backoff[2].rules == ["bigmail"])
        #expect(c.egress.sources.map(\.name) == ["a", "b"])
        #expect(c.egress.pools == [EgressPool(name: "bulk", sources: [("a", 2), ("b", 1)])])
        #expect(c.egress.select == EgressSelect(users: ["alice": "bulk"], senderDomains: ["news.example.org": "bulk"],
                                                defaultPool: "bulk"))
        // Everything else is the file's defaults.
        var rest = c
        rest.shapingRules = []
        rest.backoff = []
        rest.egress = EgressConfig()
        #expect(rest == (try TernConfig.embeddedDefault))
    }

    /// The example patterns match the phrases they are named for, and not an ordinary 250 or a 550.
    @Test func etcBackoffExamplesMatchTheirPhrases() throws {
        let c = try TernConfig.parse(try Self.uncommentedShapingExamples().text)
        func matches(_ rule: String, _ reply: String) throws -> Bool {
            let pattern = try #require(c.backoff.first { $0.name == rule }).reply
            return try Regex(pattern).ignoresCase().firstMatch(in: reply) != nil
        }
        #expect(try matches("too-many-connections", "421 4.7.0 Too many connections from your IP"))
        #expect(try matches("too-many-connections", "421 too many concurrent connections"))
        #expect(try matches("rate-limited", "451 4.7.1 Rate limited, slow down"))
        #expect(try matches("rate-limited", "450 4.2.1 rate limit exceeded"))
        #expect(try matches("try-again-later", "451 4.3.0 Please try again later"))
        #expect(try matches("try-again-later", "421 4.7.0 Temporarily deferred"))
        #expect(try !matches("too-many-connections", "550 5.7.1 Too many connections"))
        #expect(try !matches("rate-limited", "250 2.0.0 Ok: queued"))
        #expect(try !matches("try-again-later", "550 5.1.1 try again later? no: user unknown"))
    }

    // MARK: Start-up and SIGHUP

    @Test func egressAddressesMustBeOnTheMachine() throws {
        var c = try parse(egressTables.replacing("\"::1\"", with: "\"127.0.0.22\""))
        try c.checkEgressAddresses()
        _ = try c.openSecurityFiles()
        c.egress.sources.append(EgressSource(name: "far", address: "192.0.2.10"))
        let error = try #require(throws: ConfigError.self) { try c.openSecurityFiles(source: "/etc/tern/tern.toml") }
        #expect(error.key == "egress.sources.far.address")
        #expect(error.description == "config: /etc/tern/tern.toml: egress.sources.far.address: cannot send from 192.0.2.10: the address is not on this machine")
    }

    @Test func reloadHandsTheNewPolicyToDelivery() throws {
        try ReloadTests.withServer(tables: "") { server, spool in
            let new = try ReloadTests.config(tables: """
                [delivery]
                dead_destination_failures = 9
                [[shaping]]
                name = "google"
                mx = [".google.com"]
                max_message_rate = "300/min"
                pool = "bulk"
                [[backoff]]
                reply = "^421 "
                threshold = "3 in 5m"
                action = "suspend"
                duration = "10m"
                \(egressTables)
                """, spool: spool)
            let before = server.config.shaping
            let outcome = server.reload(new)
            #expect(outcome.applied == ["shaping", "backoff", "egress"])
            #expect(outcome.needRestart == ["delivery"])
            let applied = try #require(server.delivery).config.shaping
            #expect(applied.rules == new.shapingRules && applied.backoff == new.backoff)
            #expect(applied.sources == new.egress.sources && applied.pools == new.egress.pools)
            // [delivery] waits for a restart: its dead-destination policy and defaults stay.
            #expect(applied.dead == before.dead && applied.defaults == before.defaults)
            #expect(server.config.shaping == applied)
            #expect(server.reload(server.config) == ReloadOutcome())
        }
    }
}
