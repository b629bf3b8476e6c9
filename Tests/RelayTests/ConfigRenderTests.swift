import MailQueue
import SMTPProtocol
#if canImport(Glibc)
import Glibc
#endif
import DKIM
import Testing
@testable import Relay

/// `tern check-config` prints TernConfig.tomlText: it must load back to the same configuration.
@Suite struct ConfigRenderTests {
    @Test func defaultsRoundTrip() throws {
        let config = try TernConfig.parse("hostname = \"relay.test\"\n")
        let again = try TernConfig.parse(config.tomlText)
        #expect(again == config)
        #expect(config.tomlText.contains("max_connections = 20000"))
        #expect(config.tomlText.contains("listen = [\"127.0.0.1:2525\"]"))
    }

    @Test func everyKeyChangedRoundTrips() throws {
        var c = try TernConfig.parse("hostname = \"relay.test\"\n")
        c.hostname = "mx.example.org"
        c.server.listen = ["127.0.0.1:2600", "[::1]:2600"]
        c.server.relayNetworks = [try CIDR(parsing: "10.0.0.0/8"), try CIDR(parsing: "2001:db8::/32")]
        c.server.proxyProtocolFrom = [try CIDR(parsing: "10.1.0.0/24")]
        c.server.acceptDomains = ["example.org", "example.net"]
        c.server.maxMessageSize = 1234
        c.server.maxBufferedData = 4_194_304
        c.server.recipientOvershootLimit = 17
        c.server.maxRecipients = 5
        c.server.maxConnections = 6
        c.server.maxConnectionsPerIP = 7
        c.server.vrfy = true
        c.server.expn = true
        c.server.maxErrors = 8
        c.server.maxLineLength = 2000
        c.server.maxHops = 9
        c.server.keepBcc = true
        c.server.commandTimeout = 1.5
        c.server.dataTimeout = 90
        c.server.reverseDNS = false
        c.spool.path = "/var/spool/tern \"quoted\""
        c.dns.servers = ["127.0.0.1:5353"]
        c.delivery.enabled = false
        c.delivery.chunking = false
        c.delivery.port = 2525
        c.delivery.maxConnections = 11
        c.delivery.maxConnectionsPerDestination = 3
        c.delivery.retrySchedule = [1, 61, 7200, 0.25]
        c.delivery.maxQueueLifetime = 86400 * 3
        c.delivery.delayWarningTime = 14400
        c.delivery.connectTimeout = 12
        c.delivery.greetingTimeout = 13
        c.delivery.commandTimeout = 14
        c.delivery.dataTimeout = 15
        c.delivery.connectionCacheTime = 7
        c.routes.routes = ["corp.example": try NextHopSpec(parsing: "[10.0.0.5]:25"),
                           "*": try NextHopSpec(parsing: "smtp.upstream.example:587"),
                           "v6.example": try NextHopSpec(parsing: "[::1]:2526")]
        c.priority.senderDomains = ["alerts.example": 5, "bulk.example": -9]
        c.priority.recipientDomains = ["vip.example": 9]
        c.aliases = ["postmaster": ["root@example.org"], "list@example.org": ["a@x.example", "b@y.example"],
                     "o'brien@example.org": ["ob@example.org"]]
        c.log.format = .json
        c.server.submission = ["127.0.0.1:2587"]
        c.server.submissions = ["127.0.0.1:2465"]
        c.delivery.tls = .verify
        c.delivery.honorTLSRequiredNo = true
        c.bounce.builtinRules = false
        c.suppression.autoClasses = ["InvalidRecipient", "LocalBlock"]
        c.events.file = "/var/log/tern/events.jsonl"
        var hook = WebhookConfig(url: "https://crm.example/hook?a=1", name: "crm")
        hook.events = ["delivery", "bounce"]
        hook.batchSize = 250
        hook.interval = 5
        hook.timeout = 12
        hook.maxOutboxSize = 65536
        hook.headers = ["Authorization": "Bearer x\"y", "X-Tern": "1"]
        c.events.webhooks = [hook, WebhookConfig(url: "http://127.0.0.1:9000/")]
        c.http.listen = "127.0.0.1:8080"
        c.http.tokensFile = "/etc/tern/tokens"
        c.http.maxBodySize = 2048
        c.http.maxConnections = 7
        c.http.requestTimeout = 9
        c.cluster.redis = "/run/redis/redis.sock"
        c.cluster.node = "mta-1.east"
        c.cluster.timeout = 0.25
        c.bounce.rules = [BounceRule(bounceClass: "LocalBlock", replies: [#"^550 5\.7\.1 .*rbl\.example"#, "a\"quote"])]
        c.routes.security = ["corp.example": RouteSecurity(tls: .require)]
        c.tls.certificate = "/etc/tern/cert.pem"
        c.tls.key = "/etc/tern/key.pem"
        c.tls.ciphers = "high"
        c.tls.submissionCiphers = "ECDHE+AESGCM:!aNULL"
        c.auth.usersFile = "/etc/tern/users"
        c.auth.maxFailures = 3
        c.auth.lockoutTime = 600
        c.auth.cleartextFromLoopback = true
        c.auth.senders = ["alice": ["alice@example.org", "@example.net"]]
        c.admin.listen = "127.0.0.1:9025"
        c.admin.requestTimeout = 3
        c.delivery.deadDestination = DeadDestinationPolicy(failures: 2, initial: 30, maximum: 600)
        c.egress.sources = [EgressSource(name: "a", address: "127.0.0.21", ehlo: "mta-a.example.org"),
                            EgressSource(name: "b", address: "::1")]
        c.egress.pools = [EgressPool(name: "bulk", sources: [("a", 3), ("b", 1)])]
        c.egress.select = EgressSelect(users: ["alice": "bulk"], senderDomains: ["news.example.org": "bulk"],
                                       defaultPool: "bulk")
        c.routes.pools = ["corp.example": "bulk"]
        c.shapingRules = [ShapingRule(name: "google", domains: ["gmail.com"], mx: [".google.com"], maxConnections: 5,
                                      maxMessagesPerConnection: 50, maxMessageRate: Rate(count: 300, period: 60),
                                      maxConnectionRate: Rate(count: 2, period: 1), connectionCacheTime: 4,
                                      pool: "bulk", tls: .verify)]
        c.backoff = [BackoffRule(name: "slow", reply: "^421 ", threshold: Threshold(count: 3, window: 300),
                                 action: .throttle(rate: Rate(count: 1, period: 1), connections: 1), duration: 600,
                                 rules: ["google"])]
        var sign = DKIMSignConfig(domain: "example.org", selector: "s2026", key: "/etc/tern/dkim.pem")
        sign.algorithm = .ed25519SHA256
        sign.canonicalization = .simpleSimple
        sign.headers = ["from", "subject"]
        sign.expire = 86400
        c.dkim.sign = [sign]
        c.dkim.users = ["newsletter": "example.org"]
        c.dkim.routes = ["corp.example": "example.org"]
        let text = c.tomlText
        let again = try TernConfig.parse(text)
        #expect(again == c, "rendered:\n\(text)")

        // Every key of every table is changed above, so a key the rendering forgets fails the test:
        // a key added to TernConfig must be added here.
        let defaults = Self.leaves(try TernConfig.parse("hostname = \"relay.test\"\n"))
        let changed = Self.leaves(c)
        #expect(defaults.count == changed.count && defaults.count > 50)
        for (name, value) in defaults {
            #expect(changed[name] != value, "\(name) keeps its default in everyKeyChangedRoundTrips")
        }
    }

    /// The stored properties of the config and of each of its tables, by dotted name, as text.
    static func leaves(_ config: TernConfig) -> [String: String] {
        var out: [String: String] = [:]
        for top in Mirror(reflecting: config).children {
            let name = top.label ?? "?"
            let table = Mirror(reflecting: top.value)
            if table.displayStyle == .struct && !table.children.isEmpty {
                for key in table.children { out["\(name).\(key.label ?? "?")"] = "\(key.value)" }
            } else {
                out[name] = "\(top.value)"
            }
        }
        return out
    }

    @Test func upstreamPasswordsAreNotPrinted() throws {
        var c = try TernConfig.parse("hostname = \"relay.test\"\n")
        c.routes.routes = ["*": try NextHopSpec(parsing: "[smtp.upstream.example]:587")]
        c.routes.security = ["*": RouteSecurity(tls: .verify, credentials: ClientCredentials(user: "relay", password: "s3cret"))]
        let text = c.tomlText
        #expect(!text.contains("s3cret"))
        #expect(text.contains("auth_user = \"relay\""))
        // Left out, so the rendering refuses to load rather than send another password.
        #expect(!text.contains("auth_password ="))
        #expect(text.contains("# auth_password of \"*\" is a secret written inline, not printed"))
        #expect(c.hasInlineSecrets)
        #expect(throws: ConfigError.self) { try TernConfig.parse(text) }
    }

    /// With an inline password the printed text does not load, but the rest of it is still checked:
    /// a rendering that loses or changes another key is a problem (check-config exits 70).
    @Test func inlinePasswordDoesNotHideARenderingMistake() throws {
        var c = try TernConfig.parse("hostname = \"relay.test\"\n")
        c.server.maxHops = 9
        c.routes.routes = ["*": try NextHopSpec(parsing: "[smtp.upstream.example]:587")]
        c.routes.security = ["*": RouteSecurity(tls: .verify, credentials: ClientCredentials(user: "relay", password: "s3cret"))]
        let (text, problem) = c.renderingCheck()
        #expect(problem == nil, "\(problem ?? "")")
        #expect(text == c.tomlText && !text.contains("s3cret"))

        var expected = c
        expected.routes.security["*"]?.credentials?.password = TernConfig.inlinePasswordPlaceholder
        let checked = c.tomlText(inlinePassword: TernConfig.inlinePasswordPlaceholder)
        #expect(TernConfig.checkRendering(checked, of: expected) == nil)
        let wrong = checked.replacingOccurrences(of: "max_hops = 9", with: "max_hops = 10")
        #expect(wrong != checked)
        #expect(TernConfig.checkRendering(wrong, of: expected) == "the printed configuration does not load back the same")
        let lost = checked.replacingOccurrences(of: "max_hops = 9\n", with: "")
        #expect(TernConfig.checkRendering(lost, of: expected) != nil)
        #expect(TernConfig.checkRendering(text, of: expected)?.hasPrefix("the printed configuration does not load:") == true)
    }

    /// A password file or variable is printed as its key, and the rendering loads back the same.
    @Test func passwordFileAndVariableRoundTrip() throws {
        let dir = "/tmp/tern-render-\(getpid())"
        mkdir(dir, 0o700)
        defer { unlink(dir + "/relay.pw"); rmdir(dir) }
        let pw = fopen(dir + "/relay.pw", "w")!
        fputs("from file\n", pw)
        fclose(pw)
        setenv("TERN_RENDER_TEST_PW", "from env", 1)
        let text = """
            hostname = "relay.test"
            [routes]
            "*" = { next_hop = "[127.0.0.2]:587", auth_user = "relay", auth_password_file = "relay.pw" }
            "b.example" = { next_hop = "[127.0.0.3]:587", auth_user = "b", auth_password_env = "TERN_RENDER_TEST_PW" }
            """
        let c = try TernConfig.parse(text, baseDirectory: dir)
        #expect(c.routes.security["*"]?.credentials?.password == "from file")
        let rendered = c.tomlText
        #expect(rendered.contains("auth_password_file = \"\(dir)/relay.pw\""), "\(rendered)")
        #expect(rendered.contains("auth_password_env = \"TERN_RENDER_TEST_PW\""))
        #expect(!rendered.contains("from file") && !rendered.contains("from env") && !rendered.contains("(hidden)"))
        #expect(!c.hasInlineSecrets)
        #expect(try TernConfig.parse(rendered) == c)
    }

    @Test(arguments: [(0.0, "0s"), (1, "1s"), (90, "90s"), (300, "5m"), (7200, "2h"), (432_000, "5d"),
                      (1.5, "1500ms"), (0.25, "250ms"), (3660, "61m")])
    func durations(_ seconds: Double, _ text: String) throws {
        #expect(formatDuration(seconds) == text)
        #expect(try parseDuration(text) == seconds)
    }

    @Test func quoting() {
        #expect(TOMLWriter.quoted("a\"b\\c\nd\u{1}") == "\"a\\\"b\\\\c\\nd\\u0001\"")
        #expect(TOMLWriter.key("bare_key-1") == "bare_key-1")
        #expect(TOMLWriter.key("a.b") == "\"a.b\"")
        #expect(TOMLWriter.key("*") == "\"*\"")
    }
}

/// check-config's errors name the line even inside an inline table.
@Suite struct ConfigErrorLineTests {
    @Test func keyInsideAnInlineTable() {
        let text = "hostname = \"relay.test\"\n\n[priority]\nsender_domains = { \"alerts.example\" = 50 }\n"
        do {
            _ = try TernConfig.parse(text)
            Issue.record("parsed")
        } catch let error as ConfigError {
            #expect(error.line == 4)
            #expect(error.key == "priority.sender_domains.\"alerts.example\"")
        } catch {
            Issue.record("\(error)")
        }
    }

    @Test func unknownKeyBesideAnInlineTable() {
        let text = "[server]\nvrfy = true\n\n[priority]\n\nrecipient_domains = { \"a.example\" = 1 }\nbogus = { x = 1 }\n"
        do {
            _ = try TernConfig.parse(text)
            Issue.record("parsed")
        } catch let error as ConfigError {
            #expect(error.line == 7)
            #expect(error.key == "priority.bogus")
        } catch {
            Issue.record("\(error)")
        }
    }
}
