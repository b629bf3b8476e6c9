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
private func configError(_ text: String, sourceLocation: SourceLocation = #_sourceLocation) -> ConfigError? {
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

private func readBytes(_ path: String) -> [UInt8]? {
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

/// The repository root, found from this file: Tests/RelayTests/ConfigTests.swift.
private let repositoryRoot: String = {
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
        #expect(config.hostname == "localhost")
        #expect(config.spool.path == "var/spool")
        #expect(config.aliases == ["postmaster": ["root@localhost"]])
    }

    /// Apart from listen, hostname and aliases, the example file states the built-in defaults.
    @Test func exampleFileStatesTheDefaults() throws {
        var fromFile = try TernConfig.embeddedDefault
        fromFile.server.listen = ServerConfig().listen
        fromFile.aliases = [:]
        #expect(fromFile == TernConfig(hostname: "localhost"))
    }

    @Test func loadReadsTheExampleFile() throws {
        let config = try TernConfig.load(path: repositoryRoot + "/etc/tern.toml")
        #expect(config == (try TernConfig.embeddedDefault))
    }

    @Test func emptyFileGivesTheBuiltInDefaults() throws {
        let config = try TernConfig.parse("")
        let server = config.server
        #expect(server.listen == ["0.0.0.0:25", "[::]:25"])
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
        ("[server]\n[delivery]\nport = 25", "delivery", "unknown table [delivery]", 2),
        ("[server.tls]\ncert = \"x\"", "server.tls", "unknown table [server.tls]", 1),
        ("delivery.retry = 5", "delivery", "unknown table [delivery]", 1),
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
