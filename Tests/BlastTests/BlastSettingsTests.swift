import Testing
import UVRuntime
@testable import Blast

@Suite struct BlastSettingsTests {
    @Test func serverForms() throws {
        #expect(try BlastSettings.parseServer("127.0.0.1:2525").description == "127.0.0.1:2525")
        #expect(try BlastSettings.parseServer("127.0.0.1").description == "127.0.0.1:25")
        #expect(try BlastSettings.parseServer("[::1]:2525").description == "[::1]:2525")
        #expect(try BlastSettings.parseServer("::1").description == "[::1]:25")
        #expect(try BlastSettings.parseServer("localhost:26").description == "127.0.0.1:26")
        for bad in ["mail.example.com:25", "127.0.0.1:99999", "127.0.0.1:", ""] {
            #expect(throws: BlastOptionError.self, "\(bad)") { try BlastSettings.parseServer(bad) }
        }
    }

    @Test func durations() throws {
        #expect(try BlastSettings.parseDuration("30s", option: "--duration") == 30)
        #expect(try BlastSettings.parseDuration("1500ms", option: "--duration") == 1.5)
        #expect(try BlastSettings.parseDuration("2m", option: "--duration") == 120)
        #expect(try BlastSettings.parseDuration("1h", option: "--duration") == 3600)
        #expect(try BlastSettings.parseDuration("2.5", option: "--duration") == 2.5)
        for bad in ["", "0s", "-1s", "5x", "s", "inf", "8d"] {
            do {
                _ = try BlastSettings.parseDuration(bad, option: "--duration")
                Issue.record("\(bad) parsed")
            } catch {
                #expect(error.message.hasPrefix("--duration:"))
            }
        }
    }

    @Test func recipientCounts() throws {
        #expect(try BlastSettings.parseRecipients("3") == 3...3)
        #expect(try BlastSettings.parseRecipients("1-5") == 1...5)
        for bad in ["0", "5-1", "1-", "x", "1001", "1-2-3"] {
            #expect(throws: BlastOptionError.self, "\(bad)") { try BlastSettings.parseRecipients(bad) }
        }
    }

    @Test func bindListsAndFamilies() throws {
        let b = try BlastSettings.parseBind(["127.0.0.2,127.0.0.3", "127.0.0.4"])
        #expect(b.map(\.ip) == ["127.0.0.2", "127.0.0.3", "127.0.0.4"])
        #expect(throws: BlastOptionError.self) { try BlastSettings.parseBind(["localhost"]) }
        var s = BlastSettings(server: try SocketAddress(parsing: "127.0.0.1:25"),
                              sender: try AddressPattern(parsing: "a@b"), recipient: try AddressPattern(parsing: "c@d"))
        s.bind = try BlastSettings.parseBind(["::1"])
        #expect(throws: BlastOptionError("--bind: ::1 is not of the same address family as --server 127.0.0.1:25")) {
            try s.validate()
        }
    }

    @Test func validateNamesTheOption() throws {
        let base = BlastSettings(server: try SocketAddress(parsing: "127.0.0.1:25"),
                                 sender: try AddressPattern(parsing: "a@b"), recipient: try AddressPattern(parsing: "c@d"))
        try base.validate()
        var s = base
        s.concurrency = 0
        #expect(throws: BlastOptionError("--concurrency: must be from 1 to 100000")) { try s.validate() }
        s = base
        s.messages = 0
        #expect(throws: BlastOptionError("--messages: must be at least 1")) { try s.validate() }
        s = base
        s.rate = 0
        #expect(throws: BlastOptionError.self) { try s.validate() }
        s = base
        s.helo = "bad name"
        #expect(throws: BlastOptionError.self) { try s.validate() }
    }
}
