// ConfigTests.swift: the typed config, CIDR blocks, listen addresses and durations.

import Testing
@testable import Relay

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Parses `text` expecting failure; returns the error for inspection. Fails the test on success
/// or on an error of another type.
func configError(_ text: String, sourceLocation: SourceLocation = #_sourceLocation) -> ConfigError? {
    do {
        let config = try TernConfig.parse(text)
        Issue.record("parsed without error: \(config)", sourceLocation: sourceLocation)
    } catch let error as ConfigError {
        return error
    } catch {
        Issue.record("unexpected error type: \(error)", sourceLocation: sourceLocation)
    }
    return nil
}

func readBytes(_ path: String) -> [UInt8]? {
    guard let file = fopen(path, "rb") else { return nil }
    defer { fclose(file) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 4096)
    while true {
        let n = fread(&chunk, 1, chunk.count, file)
        bytes.append(contentsOf: chunk[0..<n])
        if n < chunk.count { break }
    }
    return bytes
}

/// The repository root, found from this file: Tests/RelayTests/ConfigTests.swift (shared by the
/// tests that read etc/).
let repositoryRoot: String = {
    var parts = "\(#filePath)".split(separator: "/", omittingEmptySubsequences: false)
    parts.removeLast(3)
    return parts.joined(separator: "/")
}()

@Suite struct DefaultConfigTests {
    @Test func embeddedTextIsByteIdenticalToEtcTernToml() throws {
        let path = repositoryRoot + "/etc/tern.toml"
        let file = try #require(readBytes(path), "cannot read \(path)")
        let embedded = Array(DefaultConfig.text.utf8)
        #expect(!file.isEmpty)
        #expect(embedded.count == file.count, "lengths differ")
        let firstDifference = zip(embedded, file).enumerated().first { $0.element.0 != $0.element.1 }?.offset
        #expect(firstDifference == nil, "DefaultConfig.text differs from etc/tern.toml at byte \(firstDifference ?? -1)")
    }

    @Test func embeddedDefaultParses() throws {
        let config = try TernConfig.embeddedDefault
        #expect(config.server.listen == ["127.0.0.1:2525"])
        #expect(config.hostname == TernConfig.systemHostname())
        #expect(config.hostname != "localhost" || TernConfig.systemHostname() == "localhost")
        #expect(config.spool.path == "var/spool")
        #expect(config.aliases.isEmpty, "no default alias to an address Tern cannot deliver to")
    }

    /// One source of truth: etc/tern.toml (the embedded default) is exactly the built-in defaults, so
    /// no --config, an empty file and the example file run the same thing. Fails if they drift.
    @Test func exampleFileIsTheBuiltInDefaults() throws {
        #expect(try TernConfig.embeddedDefault == (try TernConfig.parse("")))
        #expect(try TernConfig.embeddedDefault == TernConfig())
    }

    /// Every key of every table is written out in the file (uncommented), so it states each default.
    @Test func exampleFileNamesEveryKey() throws {
        let rendered = try TernConfig.parse("").tomlText
        for line in rendered.split(separator: "\n") where line.contains(" = ") && !line.hasPrefix("#") {
            let key = line.prefix(while: { $0 != " " })
            if key == "hostname" { continue }  // commented out: the machine's name
            #expect(DefaultConfig.text.contains("\n\(key) = "), "etc/tern.toml lacks \(key)")
        }
    }

    @Test func loadReadsTheExampleFile() throws {
        let config = try TernConfig.load(path: repositoryRoot + "/etc/tern.toml")
        var expected = try TernConfig.embeddedDefault
        expected.spool.path = repositoryRoot + "/etc/var/spool"  // relative paths: from the file's directory
        #expect(config == expected)
    }

    @Test func emptyFileGivesTheBuiltInDefaults() throws {
        let config = try TernConfig.parse("")
        let server = config.server
        #expect(server.listen == ["127.0.0.1:2525"])
        #expect(server.relayNetworks.map(\.description) == ["127.0.0.0/8", "::1/128"])
        #expect(server.acceptDomains == [])
        #expect(server.maxMessageSize == 52_428_800)
        #expect(server.maxRecipients == 1000)
        #expect(server.maxConnections == 20000)
        #expect(server.maxConnectionsPerIP == 100)
        #expect(server.vrfy == false && server.expn == false && server.keepBcc == false)
        #expect(server.maxErrors == 20)
        #expect(server.maxLineLength == 1000)
        #expect(server.maxHops == 50)
        #expect(server.commandTimeout == 300 && server.dataTimeout == 300)
        #expect(server.reverseDNS == true)
        #expect(config.spool.path == "var/spool")
        #expect(config.aliases.isEmpty)
        #expect(config.hostname == TernConfig.systemHostname())
    }
}

@Suite struct ConfigParsingTests {
    @Test func everyKeyParses() throws {
        let config = try TernConfig.parse("""
            hostname = "mx1.Example.net"

            [server]
            listen = ["192.0.2.1:25", "[2001:db8::1]:587", "0.0.0.0:0"]
            relay_networks = ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"]
            accept_domains = ["Example.COM", "example.org."]
            max_message_size = 1_000_000
            max_recipients = 50
            max_connections = 300
            max_connections_per_ip = 7
            vrfy = true
            expn = true
            max_errors = 3
            max_line_length = 2000
            max_hops = 30
            keep_bcc = true
            command_timeout = "30s"
            data_timeout = 600
            reverse_dns = false

            [spool]
            path = "/var/spool/tern"

            [aliases]
            "Abuse@Example.COM" = "ops@example.com"
            root = ["a@example.com", "b@example.com"]
            """)
        #expect(config.hostname == "mx1.Example.net")
        let s = config.server
        #expect(s.listen == ["192.0.2.1:25", "[2001:db8::1]:587", "0.0.0.0:0"])
        #expect(s.relayNetworks.map(\.description) == ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7/32"])
        #expect(s.acceptDomains == ["example.com", "example.org"])
        #expect(s.maxMessageSize == 1_000_000)
        #expect(s.maxRecipients == 50)
        #expect(s.maxConnections == 300)
        #expect(s.maxConnectionsPerIP == 7)
        #expect(s.vrfy == true)
        #expect(s.expn == true)
        #expect(s.maxErrors == 3)
        #expect(s.maxLineLength == 2000)
        #expect(s.maxHops == 30)
        #expect(s.keepBcc == true)
        #expect(s.commandTimeout == 30)
        #expect(s.dataTimeout == 600)
        #expect(s.reverseDNS == false)
        #expect(config.spool.path == "/var/spool/tern")
        #expect(config.aliases == ["abuse@example.com": ["ops@example.com"],
                                   "root": ["a@example.com", "b@example.com"]])
    }

    @Test func dottedKeysAndInlineTablesWorkToo() throws {
        let config = try TernConfig.parse("""
            server.max_hops = 9
            spool = { path = "q" }
            """)
        #expect(config.server.maxHops == 9)
        #expect(config.spool.path == "q")
    }

    @Test(arguments: [
        ("hostnme = \"x\"", "hostnme", "unknown key hostnme", 1),
        ("[server]\nlistne = []", "server.listne", "unknown key server.listne", 2),
        ("[spool]\npth = \"x\"", "spool.pth", "unknown key spool.pth", 2),
        ("[server]\n[deliveries]\nport = 25", "deliveries", "unknown table [deliveries]", 2),
        ("[server.tls]\ncert = \"x\"", "server.tls", "unknown table [server.tls]", 1),
        ("delivery.retry = 5", "delivery.retry", "unknown key delivery.retry", 1),
        ("[priority]\nsenders = 5", "priority.senders", "unknown key priority.senders", 2),
    ])
    func unknownKeysAreErrorsNamingTheKey(text: String, key: String, message: String, line: Int) {
        guard let error = configError(text) else { return }
        #expect(error.key == key)
        #expect(error.message == message)
        #expect(error.line == line)
        #expect(error.description == "config: line \(line): \(message)")
    }

    @Test func unknownKeyDescriptionWithoutALine() {
        let error = ConfigError(key: "server.listne", line: nil, message: "unknown key server.listne",
                                source: nil, keyInMessage: true)
        #expect(error.description == "config: unknown key server.listne")
    }

    @Test(arguments: [
        ("[server]\nmax_recipients = \"10\"", "server.max_recipients", "expected an integer, got string"),
        ("[server]\nmax_message_size = 1.5", "server.max_message_size", "expected an integer, got float"),
        ("[server]\nvrfy = \"yes\"", "server.vrfy", "expected true or false, got string"),
        ("[server]\nreverse_dns = 1", "server.reverse_dns", "expected true or false, got integer"),
        ("[server]\nlisten = \"127.0.0.1:25\"", "server.listen", "expected an array of strings, got string"),
        ("[server]\nrelay_networks = [\"::1\", 1]", "server.relay_networks", "item 2: expected a string, got integer"),
        ("[server]\ncommand_timeout = true", "server.command_timeout",
         "expected a duration like \"5m\" or an integer number of seconds, got boolean"),
        ("[spool]\npath = 5", "spool.path", "expected a string, got integer"),
        ("hostname = [\"a\"]", "hostname", "expected a string, got array"),
        ("server = 5", "server", "expected a table, got integer"),
        ("aliases = \"x\"", "aliases", "expected a table, got string"),
        ("[aliases]\npostmaster = 5", "aliases.postmaster", "expected a string or an array of strings, got integer"),
        ("[aliases]\npostmaster = [\"a@b.c\", 5]", "aliases.postmaster", "item 2: expected a string, got integer"),
        ("[aliases]\npostmaster.x = \"a@b.c\"", "aliases.postmaster",
         "expected a string or an array of strings, got table"),
    ])
    func wrongTypesNameTheKey(text: String, key: String, message: String) {
        guard let error = configError(text) else { return }
        #expect(error.key == key)
        #expect(error.message == message)
        #expect(error.description == "config: line \(text.split(separator: "\n").count): \(key): \(message)")
    }

    @Test(arguments: [
        ("[server]\nmax_recipients = 0", "server.max_recipients", "must be a positive integer, got 0"),
        ("[server]\nmax_connections = -1", "server.max_connections", "must be a positive integer, got -1"),
        ("[server]\nmax_connections_per_ip = 0", "server.max_connections_per_ip", "positive"),
        ("[server]\nmax_errors = 0", "server.max_errors", "positive"),
        ("[server]\nmax_hops = 0", "server.max_hops", "positive"),
        ("[server]\nmax_message_size = 0", "server.max_message_size", "positive"),
        ("[server]\nmax_line_length = 998", "server.max_line_length", "at least 1000"),
        ("[server]\nlisten = [\"127.0.0.1\"]", "server.listen", "missing \":port\""),
        ("[server]\nlisten = [\"localhost:25\"]", "server.listen", "\"localhost\" is not an IPv4 address"),
        ("[server]\nlisten = [\"::1:25\"]", "server.listen", "brackets"),
        ("[server]\nlisten = [\"[::1]:65536\"]", "server.listen", "port must be 0 to 65535"),
        ("[server]\nlisten = [\"[127.0.0.1]:25\"]", "server.listen", "is not an IPv6 address"),
        ("[server]\nlisten = []", "server.listen", "at least one"),
        ("[server]\nlisten = [\"127.0.0.1:25\", \"127.0.0.1:25\"]", "server.listen", "twice"),
        ("[server]\nrelay_networks = [\"10.0.0.0/33\"]", "server.relay_networks", "prefix length must be 0 to 32"),
        ("[server]\nrelay_networks = [\"::/129\"]", "server.relay_networks", "prefix length must be 0 to 128"),
        ("[server]\nrelay_networks = [\"10.0.0/8\"]", "server.relay_networks", "is not a CIDR block"),
        ("[server]\nrelay_networks = [\"10.0.0.0/\"]", "server.relay_networks", "prefix length"),
        ("[server]\naccept_domains = [\"exa mple.com\"]", "server.accept_domains", "not a valid domain"),
        ("[server]\ncommand_timeout = \"5x\"", "server.command_timeout", "unknown unit \"x\""),
        ("[server]\ndata_timeout = \"0s\"", "server.data_timeout", "greater than zero"),
        ("[server]\ndata_timeout = -5", "server.data_timeout", "greater than zero"),
        ("[spool]\npath = \"\"", "spool.path", "must not be empty"),
        ("hostname = \"\"", "hostname", "not a valid domain"),
        ("hostname = \"bad_host.example\"", "hostname", "not a valid domain"),
        ("hostname = \"192.0.2.1\"", "hostname", "not a valid domain"),
        ("[aliases]\n\"two words\" = \"a@b.c\"", "aliases.\"two words\"", "bare local part"),
        ("[aliases]\n\"@example.com\" = \"a@b.c\"", "aliases.\"@example.com\"", "bare local part"),
        ("[aliases]\npostmaster = []", "aliases.postmaster", "at least one"),
        ("[aliases]\npostmaster = \"a@\"", "aliases.postmaster", "\"a@\" is not an address"),
        ("[aliases]\nroot = \"x\"\nRoot = \"y\"", "aliases.root", "duplicate alias"),
    ])
    func badValuesNameTheKey(text: String, key: String, fragment: String) {
        guard let error = configError(text) else { return }
        #expect(error.key == key)
        #expect(error.message.contains(fragment), "message: \(error.message)")
        #expect(error.description.hasPrefix("config: line "), "\(error)")
    }

    @Test func syntaxErrorReportsTheLine() {
        guard let error = configError("hostname = \"localhost\"\n\n[server]\nmax_hops = = 3\n") else { return }
        #expect(error.line == 4)
        #expect(error.key == nil)
        #expect(!error.message.isEmpty)
        #expect(error.description.hasPrefix("config: line 4: "))
    }

    @Test func duplicateKeyIsASyntaxError() {
        guard let error = configError("[server]\nmax_hops = 3\nmax_hops = 4\n") else { return }
        #expect(error.line == 3)
    }

    @Test func errorLineFindsKeysInTheRightTable() {
        // "[server]" and "max_hops =" appear in a comment and inside a multi-line string before
        // the real ones; the error must point at line 8.
        let text = """
            # [server] max_hops = "no"
            hostname = "localhost"
            [spool]
            path = '''
            [server]
            max_hops = "still a string'''
            [server]
            max_hops = "x"
            """
        guard let error = configError(text) else { return }
        #expect(error.key == "server.max_hops")
        #expect(error.line == 8)
    }

    @Test func errorLineIsNilWhenTheKeyCannotBeFound() {
        guard let error = configError("server = { max_hops = \"x\" }") else { return }
        #expect(error.key == "server.max_hops")
        #expect(error.line == nil)
        #expect(error.description == "config: server.max_hops: expected an integer, got string")
    }

    @Test func loadOfAMissingFileNamesThePath() {
        let path = "/nonexistent-tern-dir/tern.toml"
        do {
            _ = try TernConfig.load(path: path)
            Issue.record("loaded a missing file")
        } catch let error as ConfigError {
            #expect(error.source == path)
            #expect(error.description.contains(path))
            #expect(error.description.contains("No such file"))
        } catch {
            Issue.record("unexpected error type: \(error)")
        }
    }

    @Test func loadErrorsNameTheFileAndLine() throws {
        let path = "/tmp/tern-config-test-\(getpid()).toml"
        guard let file = fopen(path, "wb") else { Issue.record("cannot create \(path)"); return }
        let text = "[server]\n\nmax_recipients = \"many\"\n"
        _ = text.utf8CString.withUnsafeBufferPointer { fwrite($0.baseAddress, 1, text.utf8.count, file) }
        fclose(file)
        defer { unlink(path) }
        do {
            _ = try TernConfig.load(path: path)
            Issue.record("loaded a bad file")
        } catch let error as ConfigError {
            #expect(error.description == "config: \(path): line 3: server.max_recipients: expected an integer, got string")
        }
    }

    @Test func aliasValueIsAStringOrAList() throws {
        let config = try TernConfig.parse("""
            [aliases]
            one = "a@example.com"
            many = ["b@example.com", "c@example.com"]
            "Mixed.Case@Example.Org" = "postmaster"
            """)
        #expect(config.aliases["one"] == ["a@example.com"])
        #expect(config.aliases["many"] == ["b@example.com", "c@example.com"])
        #expect(config.aliases["mixed.case@example.org"] == ["postmaster"])
        #expect(config.aliases.count == 3)
    }
}

@Suite struct CIDRTests {
    @Test func ipv4Boundaries() throws {
        let block = try CIDR(parsing: "192.0.2.0/24")
        #expect(block.contains("192.0.2.0"))
        #expect(block.contains("192.0.2.255"))
        #expect(!block.contains("192.0.3.0"))
        #expect(!block.contains("192.0.1.255"))
        let odd = try CIDR(parsing: "10.0.0.0/9")
        #expect(odd.contains("10.127.255.255"))
        #expect(!odd.contains("10.128.0.0"))
    }

    @Test func ipv4ZeroAndThirtyTwo() throws {
        let all = try CIDR(parsing: "0.0.0.0/0")
        #expect(all.contains("0.0.0.0") && all.contains("255.255.255.255") && all.contains("::ffff:8.8.8.8"))
        #expect(!all.contains("::1"))
        let one = try CIDR(parsing: "203.0.113.9/32")
        #expect(one.contains("203.0.113.9"))
        #expect(!one.contains("203.0.113.8") && !one.contains("203.0.113.10"))
        let plain = try CIDR(parsing: "203.0.113.9")
        #expect(plain == one)
        #expect(plain.description == "203.0.113.9/32")
    }

    @Test func ipv6ZeroAnd128() throws {
        let all = try CIDR(parsing: "::/0")
        #expect(all.contains("::") && all.contains("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff") && all.contains("::1"))
        #expect(!all.contains("127.0.0.1"))  // IPv4 clients need 0.0.0.0/0
        let loopback = try CIDR(parsing: "::1/128")
        #expect(loopback.contains("::1") && loopback.contains("0:0:0:0:0:0:0:1"))
        #expect(!loopback.contains("::2") && !loopback.contains("::"))
        #expect(!loopback.contains("127.0.0.1"))
        #expect(try CIDR(parsing: "::1") == loopback)
    }

    @Test func ipv6PrefixInsideAByte() throws {
        let block = try CIDR(parsing: "2001:db8:8000::/33")
        #expect(block.contains("2001:db8:8000::1"))
        #expect(block.contains("2001:db8:ffff:ffff::"))
        #expect(!block.contains("2001:db8:7fff:ffff::"))
        #expect(block.description == "2001:db8:8000::/33")
    }

    @Test func mappedIPv4MatchesTheIPv4Block() throws {
        let block = try CIDR(parsing: "127.0.0.0/8")
        #expect(block.contains("::ffff:127.0.0.1"))
        #expect(block.contains("::FFFF:127.1.2.3"))
        #expect(!block.contains("::ffff:128.0.0.1"))
        #expect(!block.contains("::127.0.0.1"))  // IPv4-compatible, not mapped
        let mapped = try CIDR(parsing: "::ffff:127.0.0.0/104")
        #expect(mapped == block)
        #expect(mapped.contains("127.255.255.255"))
        #expect(try CIDR(parsing: "::ffff:10.1.2.3") == CIDR(parsing: "10.1.2.3/32"))
    }

    @Test func hostBitsAreMaskedAndNotAddressesAreOutside() throws {
        let block = try CIDR(parsing: "10.1.2.3/8")
        #expect(block.description == "10.0.0.0/8")
        #expect(block == (try CIDR(parsing: "10.0.0.0/8")))
        #expect(block.contains("10.200.0.1"))
        #expect(!block.contains("") && !block.contains("10.0.0") && !block.contains("localhost"))
        #expect(try CIDR(parsing: "fe80::/10").contains("fe80::1%eth0"))
    }

    @Test(arguments: ["", "/8", "10.0.0.0/8/8", "10.0.0.0/-1", "10.0.0.0/+8", "10.0.0.0/ 8", "300.0.0.0/8",
                      "example.com/24", "::1/129", "1.2.3.4/33", "010.0.0.1"])
    func badCIDRsAreRejected(text: String) {
        #expect(throws: ConfigError.self) { try CIDR(parsing: text) }
    }

    @Test func listenAddressParts() throws {
        let v6 = try ListenAddress(parsing: "[::]:25")
        #expect(v6.host == "::" && v6.port == 25 && v6.family == .ipv6)
        let v4 = try ListenAddress(parsing: "127.0.0.1:2525")
        #expect(v4.host == "127.0.0.1" && v4.port == 2525 && v4.family == .ipv4)
        #expect(v6.description == "[::]:25" && v4.description == "127.0.0.1:2525")
        for bad in ["127.0.0.1:", ":25", "[::1]25", "[::1:25", "127.0.0.1:+25", "127.0.0.1:99999"] {
            #expect(throws: ConfigError.self, "\(bad)") { try ListenAddress(parsing: bad) }
        }
    }
}

@Suite struct DurationTests {
    @Test(arguments: [
        ("30s", 30.0), ("5m", 300.0), ("2h", 7200.0), ("5d", 432_000.0), ("1500ms", 1.5),
        ("45", 45.0), ("0", 0.0), ("1h30m", 5400.0), ("1.5s", 1.5), ("0s", 0.0),
    ])
    func accepted(text: String, seconds: Double) throws {
        #expect(try parseDuration(text) == seconds)
    }

    @Test(arguments: ["", "5x", "-5", "-5s", "s", "5 m", " 5m", "5m ", "1.5", ".5s", "5.s", "5M", "+5s", "1e3s", "5mm"])
    func rejected(text: String) {
        #expect(throws: ConfigError.self) { try parseDuration(text) }
    }

    @Test func messageNamesTheText() {
        #expect {
            try parseDuration("5x")
        } throws: { error in
            (error as? ConfigError)?.message.contains("\"5x\"") == true
        }
    }
}

@Suite struct DNSConfigTests {
    @Test func serversParseAndDefaultToEmpty() throws {
        #expect(try TernConfig.parse("hostname = \"a.test\"").dns.servers == [])
        let c = try TernConfig.parse("hostname = \"a.test\"\n[dns]\nservers = [\"127.0.0.1:5353\", \"[::1]:53\"]")
        #expect(c.dns.servers == ["127.0.0.1:5353", "[::1]:53"])
    }

    @Test func badServerNamesTheKey() {
        #expect {
            try TernConfig.parse("hostname = \"a.test\"\n[dns]\nservers = [\"resolver.example\"]")
        } throws: { ($0 as? ConfigError)?.key == "dns.servers" }
    }
}

// MARK: - [delivery], [routes], [priority]

/// The error of parsing `text` (after a valid hostname line), or nil with a recorded issue.
private func sectionError(_ text: String, sourceLocation: SourceLocation = #_sourceLocation) -> ConfigError? {
    configError("hostname = \"a.test\"\n" + text, sourceLocation: sourceLocation)
}

@Suite struct DeliveryConfigTests {
    @Test func defaults() throws {
        let d = try TernConfig.parse("hostname = \"a.test\"").delivery
        #expect(d.enabled == true)
        #expect(d.port == 25)
        #expect(d.maxConnections == 1000)
        #expect(d.maxConnectionsPerDestination == 20)
        #expect(d.retrySchedule == [60, 300, 900, 1800, 3600, 7200, 14400])
        #expect(d.maxQueueLifetime == 5 * 86400)
        #expect(d.delayWarningTime == 0)
        #expect(d.connectTimeout == 30)
        #expect(d.greetingTimeout == 300)
        #expect(d.commandTimeout == 300)
        #expect(d.dataTimeout == 600)
        #expect(d == DeliveryConfig())
    }

    @Test func everyKeyParses() throws {
        let d = try TernConfig.parse("""
            hostname = "a.test"
            [delivery]
            enabled = false
            port = 2525
            max_connections = 50
            max_connections_per_destination = 3
            retry_schedule = ["10s", 30, "1h30m"]
            max_queue_lifetime = "2d"
            delay_warning_time = "4h"
            connect_timeout = "5s"
            greeting_timeout = 120
            command_timeout = "1m"
            data_timeout = "15m"
            """).delivery
        #expect(d.enabled == false)
        #expect(d.port == 2525)
        #expect(d.maxConnections == 50)
        #expect(d.maxConnectionsPerDestination == 3)
        #expect(d.retrySchedule == [10, 30, 5400])
        #expect(d.maxQueueLifetime == 172_800)
        #expect(d.delayWarningTime == 14_400)
        #expect(d.connectTimeout == 5)
        #expect(d.greetingTimeout == 120)
        #expect(d.commandTimeout == 60)
        #expect(d.dataTimeout == 900)
    }

    @Test(arguments: ["\"0s\"", "0", "\"0m\""])
    func delayWarningZeroMeansOff(value: String) throws {
        let d = try TernConfig.parse("hostname = \"a.test\"\n[delivery]\ndelay_warning_time = \(value)").delivery
        #expect(d.delayWarningTime == 0)
    }

    @Test(arguments: [
        ("port = 0", "delivery.port", "must be 1 to 65535, got 0"),
        ("port = 65536", "delivery.port", "must be 1 to 65535, got 65536"),
        ("port = \"25\"", "delivery.port", "expected an integer, got string"),
        ("enabled = \"no\"", "delivery.enabled", "expected true or false, got string"),
        ("max_connections = 0", "delivery.max_connections", "must be a positive integer, got 0"),
        ("max_connections_per_destination = -1", "delivery.max_connections_per_destination",
         "must be a positive integer, got -1"),
        ("retry_schedule = []", "delivery.retry_schedule", "must list at least one duration"),
        ("retry_schedule = [\"1m\", \"0s\"]", "delivery.retry_schedule", "item 2: must be greater than zero"),
        ("retry_schedule = [\"1m\", \"5x\"]", "delivery.retry_schedule", "item 2: \"5x\" is not a duration"),
        ("retry_schedule = [\"1m\", true]", "delivery.retry_schedule", "item 2: expected a duration"),
        ("retry_schedule = \"1m\"", "delivery.retry_schedule", "expected an array of durations"),
        ("max_queue_lifetime = \"0s\"", "delivery.max_queue_lifetime", "must be greater than zero"),
        ("delay_warning_time = \"-1s\"", "delivery.delay_warning_time", "is not a duration"),
        ("delay_warning_time = -1", "delivery.delay_warning_time", "must be greater than zero"),
        ("connect_timeout = 0", "delivery.connect_timeout", "must be greater than zero"),
        ("greeting_timeout = true", "delivery.greeting_timeout", "expected a duration"),
        ("command_timeout = \"5q\"", "delivery.command_timeout", "unknown unit \"q\""),
        ("data_timeout = \"\"", "delivery.data_timeout", "empty"),
    ])
    func badValuesNameTheKey(line: String, key: String, fragment: String) {
        guard let error = sectionError("[delivery]\n" + line) else { return }
        #expect(error.key == key)
        #expect(error.message.contains(fragment), "message: \(error.message)")
        #expect(error.line == 3)
        #expect(error.description.hasPrefix("config: line 3: \(key): "), "\(error)")
    }

    @Test func unknownKeyIsAnError() {
        guard let error = sectionError("[delivery]\nretry = [\"1m\"]") else { return }
        #expect(error.key == "delivery.retry")
        #expect(error.message == "unknown key delivery.retry")
    }
}

@Suite struct RouteConfigTests {
    @Test func routesParse() throws {
        let routes = try TernConfig.parse("""
            hostname = "a.test"
            [routes]
            "Corp.Example." = "[10.0.0.5]:25"
            "*" = "[smtp.upstream.example]:587"
            "lookup.example" = "Relay.Example"
            "v6.example" = "[::1]:2525"
            """).routes.routes
        #expect(routes == [
            "corp.example": NextHopSpec(host: "10.0.0.5", port: 25, lookupMX: false),
            "*": NextHopSpec(host: "smtp.upstream.example", port: 587, lookupMX: false),
            "lookup.example": NextHopSpec(host: "relay.example", port: nil, lookupMX: true),
            "v6.example": NextHopSpec(host: "::1", port: 2525, lookupMX: false),
        ])
    }

    @Test func noRoutesByDefault() throws {
        #expect(try TernConfig.parse("hostname = \"a.test\"").routes.routes.isEmpty)
        #expect(try TernConfig.embeddedDefault.routes.routes.isEmpty)
    }

    @Test(arguments: [
        ("\"corp.example\" = \"[10.0.0.5\"", "routes.\"corp.example\"", "missing \"]\""),
        ("\"corp.example\" = \"10.0.0.5:25\"", "routes.\"corp.example\"", "write it in brackets"),
        ("\"corp.example\" = \"[10.0.0.5]:0\"", "routes.\"corp.example\"", "port must be 1 to 65535"),
        ("\"corp.example\" = \"relay.example:99999\"", "routes.\"corp.example\"", "port must be 1 to 65535"),
        ("\"corp.example\" = \"\"", "routes.\"corp.example\"", "no host"),
        ("\"corp.example\" = \"bad_host.example\"", "routes.\"corp.example\"", "is not a host name"),
        ("\"corp.example\" = 25", "routes.\"corp.example\"", "expected a string like"),
        ("corp.example = \"[10.0.0.5]\"", "routes.corp", "quote a domain that has dots"),
        ("\"bad domain\" = \"[10.0.0.5]\"", "routes.\"bad domain\"", "is not a domain name or \"*\""),
        ("\"10.0.0.1\" = \"[10.0.0.5]\"", "routes.\"10.0.0.1\"", "is not a domain name or \"*\""),
    ])
    func badRoutesNameTheKey(line: String, key: String, fragment: String) {
        guard let error = sectionError("[routes]\n" + line) else { return }
        #expect(error.key == key)
        #expect(error.message.contains(fragment), "message: \(error.message)")
        #expect(error.line == 3, "\(error)")
    }

    @Test func duplicateRouteIgnoringCase() {
        guard let error = sectionError("[routes]\n\"A.example\" = \"x.test\"\n\"a.example\" = \"y.test\"") else { return }
        #expect(error.key == "routes.\"a.example\"")
        #expect(error.message.contains("duplicate route"))
    }
}

@Suite struct PriorityConfigTests {
    @Test func levelsParseInlineAndAsTables() throws {
        let inline = try TernConfig.parse("""
            hostname = "a.test"
            [priority]
            sender_domains = { "Alerts.Example.com" = 5, "bulk.example" = -9 }
            recipient_domains = { "vip.example" = 9 }
            """).priority
        #expect(inline.senderDomains == ["alerts.example.com": 5, "bulk.example": -9])
        #expect(inline.recipientDomains == ["vip.example": 9])

        let tables = try TernConfig.parse("""
            hostname = "a.test"
            [priority.sender_domains]
            "alerts.example.com" = 3
            [priority.recipient_domains]
            "vip.example" = -2
            """).priority
        #expect(tables == PriorityConfig(senderDomains: ["alerts.example.com": 3], recipientDomains: ["vip.example": -2]))
    }

    @Test func emptyByDefault() throws {
        #expect(try TernConfig.parse("hostname = \"a.test\"").priority == PriorityConfig())
        #expect(try TernConfig.embeddedDefault.priority == PriorityConfig())
    }

    @Test(arguments: [
        ("sender_domains = { \"x\" = 12 }", "priority.sender_domains.x", "must be -9..9"),
        ("recipient_domains = { \"vip.example\" = -10 }", "priority.recipient_domains.\"vip.example\"", "must be -9..9"),
        ("sender_domains = { \"x\" = \"high\" }", "priority.sender_domains.x", "expected an integer from -9 to 9, got string"),
        ("sender_domains = { \"bad domain\" = 1 }", "priority.sender_domains.\"bad domain\"", "is not a domain name"),
        ("sender_domains = { \"X\" = 1, \"x\" = 2 }", "priority.sender_domains.x", "duplicate domain"),
        ("sender_domains = 5", "priority.sender_domains", "expected a table, got integer"),
    ])
    func badLevelsNameTheKey(line: String, key: String, fragment: String) {
        guard let error = sectionError("[priority]\n" + line) else { return }
        #expect(error.key == key)
        #expect(error.message.contains(fragment), "message: \(error.message)")
        #expect(error.description.contains("\(key): "), "\(error)")
    }

    @Test func levelErrorInATableHasItsLine() {
        guard let error = sectionError("[priority.sender_domains]\n\"ok.example\" = 1\n\"x.example\" = 10") else { return }
        #expect(error.key == "priority.sender_domains.\"x.example\"")
        #expect(error.line == 4)
    }
}
