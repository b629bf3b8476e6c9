import Logging
import Testing
import UVRuntime
@testable import Relay

#if canImport(Glibc)
import Glibc
#endif

/// SMTPServer.reload: what takes effect at once, what waits for a restart. The server is built (spool
/// locked, listener bound, delivery manager made) but never started.
@Suite(.serialized) struct ReloadTests {
    static func config(hostname: String = "relay.test", listen: String = "127.0.0.1:0", server: String = "",
                       tables: String = "", spool: String) throws -> TernConfig {
        try TernConfig.parse("""
            hostname = "\(hostname)"
            [server]
            listen = ["\(listen)"]
            reverse_dns = false
            \(server)
            [spool]
            path = "\(spool)"
            [dns]
            servers = ["127.0.0.1:1"]
            \(tables)
            """)
    }

    static func withServer(tables: String, _ body: (SMTPServer, String) throws -> Void) throws {
        var template = Array("/tmp/tern-reload-XXXXXX".utf8CString)
        let dir = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
        defer { _ = system("rm -rf '\(dir)'") }
        let loop = try EventLoop()
        let server = try SMTPServer(loop: loop, config: try config(tables: tables, spool: dir), log: Logger(label: "test"))
        defer {
            var stopped = false
            server.stop(grace: 0) { stopped = true }
            while !stopped { loop.runOnce(nowait: true) }
            loop.runOnce(nowait: true)
        }
        try body(server, dir)
    }

    static func target(_ server: SMTPServer, _ domain: String) -> String? {
        var plan: RoutePlan?
        server.delivery!.router.route(domain: domain) { plan = $0 }  // literal routes answer at once
        guard case .deliver(let targets)? = plan, let first = targets.first else { return nil }
        return "\(first.address):\(first.port)"
    }

    @Test func routesLimitsAliasesAndRelayNetworksTakeEffect() throws {
        try Self.withServer(tables: "[routes]\n\"*\" = \"[127.0.0.2]:2600\"") { server, spool in
            #expect(Self.target(server, "example.test") == "127.0.0.2:2600")
            let new = try Self.config(server: "max_recipients = 2\nrelay_networks = [\"10.0.0.0/8\"]",
                                      tables: "[routes]\n\"*\" = \"[127.0.0.3]:2601\"\n[aliases]\nteam = \"a@x.test\"",
                                      spool: spool)
            let outcome = server.reload(new)
            #expect(outcome.applied == ["server", "aliases", "routes"])
            #expect(outcome.needRestart == [])
            #expect(Self.target(server, "example.test") == "127.0.0.3:2601")
            #expect(server.config.server.maxRecipients == 2)
            #expect(server.serverConfiguration.maxRecipients == 2)
            #expect(server.config.server.relayNetworks.map(\.description) == ["10.0.0.0/8"])
            #expect(server.config.aliases["team"] == ["a@x.test"])
            #expect(server.config == new)
        }
    }

    @Test func dummyHashForUnknownUsersIsBuiltAtStartOffTheLoop() throws {
        // Built by the thread pool once the server starts, before any AUTH (issue 14): the first
        // AUTH for an unknown user must not run scrypt on the loop thread.
        let users = "/tmp/tern-reload-users-\(getpid())"
        defer { unlink(users) }
        let file = fopen(users, "w")
        fputs("alice:\(try PasswordHash.make("pw", logN: 10))\n", file)
        fclose(file)
        try Self.withServer(tables: "[auth]\nusers_file = \"\(users)\"") { server, _ in
            #expect(server.dummyHash == nil)
            try server.start()
            let deadline = server.loop.nowMilliseconds + 30_000
            while server.dummyHash == nil && server.loop.nowMilliseconds < deadline {
                server.loop.runOnce(nowait: true)
            }
            #expect(server.dummyHash.map(PasswordHash.isWellFormed) == true)
        }
    }

    @Test func restartOnlyKeysKeepTheirValues() throws {
        try Self.withServer(tables: "") { server, spool in
            let before = server.config
            let new = try Self.config(hostname: "other.test", listen: "127.0.0.1:2999",
                                      tables: "[delivery]\nenabled = false\n[log]\nformat = \"json\"",
                                      spool: spool + "/elsewhere")
            let outcome = server.reload(new)
            #expect(outcome.applied == [])
            #expect(outcome.needRestart == ["hostname", "server.listen", "spool", "delivery", "log"])
            #expect(server.config == before)
            #expect(server.delivery != nil)
        }
    }

    @Test func sameConfigChangesNothing() throws {
        try Self.withServer(tables: "") { server, _ in
            #expect(server.reload(server.config) == ReloadOutcome())
        }
    }
}
