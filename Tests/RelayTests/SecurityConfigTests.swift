// [tls], [auth], route tables and delivery.tls; the users file and the AUTH failure throttle.

import Testing
@testable import Relay
import MailQueue
import SMTPProtocol
import UVRuntime

#if canImport(Glibc)
import Glibc
#endif

private func parseError(_ text: String) -> ConfigError? {
    do {
        _ = try TernConfig.parse("hostname = \"relay.test\"\n" + text)
        return nil
    } catch {
        return error as? ConfigError
    }
}

@Suite struct SecurityConfigTests {
    @Test func defaultsOfferNoTLSAndNoAuth() throws {
        let c = try TernConfig.embeddedDefault
        #expect(!c.tls.enabled && !c.auth.enabled)
        #expect(c.server.submission.isEmpty && c.server.submissions.isEmpty)
        #expect(c.auth.maxFailures == 5 && c.auth.lockoutTime == 900 && !c.auth.cleartextFromLoopback)
        #expect(c.delivery.tls == .opportunistic)
    }

    @Test func fullSecuritySection() throws {
        let c = try TernConfig.parse("""
            hostname = "relay.test"
            [server]
            submission = ["127.0.0.1:587"]
            submissions = ["127.0.0.1:465"]
            [tls]
            certificate = "/c.pem"
            key = "/k.pem"
            [auth]
            users_file = "/users"
            max_failures = 3
            lockout_time = "1h"
            cleartext_from_loopback = true
            senders = { alice = ["Alice@Example.com", "@alice.test"] }
            [delivery]
            tls = "verify"
            """)
        #expect(c.tls.certificate == "/c.pem" && c.tls.key == "/k.pem")
        #expect(c.auth.usersFile == "/users" && c.auth.maxFailures == 3 && c.auth.lockoutTime == 3600)
        #expect(c.auth.senders["alice"] == ["alice@example.com", "@alice.test"])
        #expect(c.delivery.tls == .verify)
        #expect(c.server.submission == ["127.0.0.1:587"] && c.server.submissions == ["127.0.0.1:465"])
    }

    @Test(arguments: [
        ("[tls]\nkey = \"/k\"", "tls.key"),
        ("[tls]\ncertificate = \"/c\"", "tls.key"),
        ("[tls]\ncertificate = 1\nkey = \"/k\"", "tls.certificate"),
        ("[tls]\nciphers = \"x\"", "tls.ciphers"),
        ("[auth]\nmax_failures = 0", "auth.max_failures"),
        ("[auth]\nlockout_time = \"soon\"", "auth.lockout_time"),
        ("[auth]\nsenders = { alice = [\"not an address\"] }", "auth.senders.alice"),
        ("[auth]\nsenders = { alice = \"a@b.test\" }", "auth.senders.alice"),
        ("[delivery]\ntls = \"always\"", "delivery.tls"),
        ("[server]\nsubmission = [\"127.0.0.1:587\"]", "server.submission"),
        ("[server]\nsubmissions = [\"127.0.0.1:465\"]\n[auth]\nusers_file = \"/u\"", "server.submissions"),
        ("[server]\nlisten = [\"127.0.0.1:25\"]\nsubmission = [\"127.0.0.1:25\"]\n[auth]\nusers_file = \"/u\"", "server.submission"),
    ])
    func errorsNameTheKey(text: String, key: String) {
        let error = parseError(text)
        #expect(error?.description.contains(key) == true, "\(error.map { "\($0)" } ?? "no error")")
    }

    @Test func routeTables() throws {
        setenv("TERN_TEST_ROUTE_PW", "from env", 1)
        let c = try TernConfig.parse("""
            hostname = "relay.test"
            [routes]
            "corp.example" = "[10.0.0.5]:25"
            "*" = { next_hop = "[smtp.upstream.example]:587", tls = "verify", auth_user = "relay", auth_password_env = "TERN_TEST_ROUTE_PW" }
            "plain.example" = { next_hop = "mx.plain.example", tls = "none" }
            """)
        #expect(c.routes.routes["*"] == NextHopSpec(host: "smtp.upstream.example", port: 587, lookupMX: false))
        var expected = RouteSecurity(tls: .verify, credentials: ClientCredentials(user: "relay", password: "from env"))
        expected.passwordEnv = "TERN_TEST_ROUTE_PW"
        #expect(c.routes.security["*"] == expected)
        #expect(c.routes.security["plain.example"]?.tls == OutboundTLSPolicy.none)
        #expect(c.routes.security["corp.example"] == nil)
        #expect(c.routes.routes["corp.example"] != nil)
    }

    @Test(arguments: [
        ("\"*\" = { next_hop = \"[a.example]:25\", auth_user = \"u\" }", "routes.\"*\".auth_user"),
        ("\"*\" = { next_hop = \"[a.example]:25\", auth_password = \"p\" }", "routes.\"*\".auth_user"),
        ("\"*\" = { next_hop = \"[a.example]:25\", auth_user = \"u\", auth_password = \"p\", auth_password_env = \"X\" }", "routes.\"*\".auth_user"),
        ("\"*\" = { next_hop = \"[a.example]:25\", auth_user = \"u\", auth_password_env = \"TERN_TEST_UNSET_VARIABLE\" }", "routes.\"*\".auth_password_env"),
        ("\"*\" = { next_hop = \"[a.example]:25\", auth_user = \"u\", auth_password_file = \"/nonexistent/pw\" }", "/nonexistent/pw"),
        ("\"*\" = { next_hop = \"[a.example]:25\", tls = \"maybe\" }", "routes.\"*\".tls"),
        ("\"*\" = { next_hop = \"[a.example\" }", "routes.\"*\".next_hop"),
        ("\"*\" = { next_hop = \"[a.example]:25\", port = 25 }", "routes.\"*\".port"),
        // An unquoted dotted domain is a table without next_hop: the old hint still applies.
        ("corp.example = \"[10.0.0.5]:25\"", "quote a domain"),
    ])
    func routeTableErrors(text: String, expected: String) {
        unsetenv("TERN_TEST_UNSET_VARIABLE")
        let error = parseError("[routes]\n" + text)
        #expect(error?.description.contains(expected) == true, "\(error.map { "\($0)" } ?? "no error")")
    }

    @Test func usersFile() throws {
        let hash = try PasswordHash.make("pw", logN: 10)
        let users = try UsersFile(text: "# comment\n\nalice:\(hash)\nbob:\(hash)\r\n", source: "users")
        #expect(users.order == ["alice", "bob"] && users.hashes["bob"] == hash)
        var changed = users
        changed.set(user: "carol", hash: hash)
        changed.set(user: "alice", hash: hash)
        #expect(changed.order == ["alice", "bob", "carol"])
        #expect(try UsersFile(text: changed.text, source: "x") == changed)
        for (bad, line) in [("alice:secret\n", 1), ("\nnocolon\n", 2), ("alice:\(hash)\nalice:\(hash)\n", 2),
                            ("a b:\(hash)\n", 1)] {
            #expect { try UsersFile(text: bad, source: "users") } throws: { ($0 as? ConfigError)?.line == line }
        }
        // A BOM inside a name (at the start of the file it is skipped: usersFileSkipsAByteOrderMark) or a
        // bidi override makes a name that cannot log in: refused, and shown (issue 14).
        for (bad, shown) in [("bob\u{FEFF}:\(hash)\n", "bob\\u{FEFF}"), ("ali\u{202E}ce:\(hash)\n", "ali\\u{202E}ce")] {
            #expect { try UsersFile(text: bad, source: "users") } throws: {
                ($0 as? ConfigError)?.line == 1 && ($0 as? ConfigError)?.message == "bad user name \"\(shown)\""
            }
        }
    }

    @Test func usersFileSkipsAByteOrderMark() throws {
        let hash = try PasswordHash.make("pw", logN: 10)
        let users = try UsersFile(text: "\u{FEFF}alice:\(hash)\nbob:\(hash)\n", source: "users")
        #expect(users.order == ["alice", "bob"] && users.hashes["alice"] == hash)
        // Only at the start: elsewhere it is part of a name, which the name rule refuses.
        #expect { try UsersFile(text: "alice:\(hash)\n\u{FEFF}bob:\(hash)\n", source: "users") }
            throws: { ($0 as? ConfigError)?.line == 2 }
        // Invisible or separating characters are no part of a user name; letters of any script are.
        for bad in ["\u{FEFF}alice", "ali\u{202E}ce", "ali\u{200B}ce", "ali\u{2028}ce", "ali\u{A0}ce", "ali\u{85}ce"] {
            #expect(!UsersFile.isValidUserName(bad), "\(bad.unicodeScalars.map { $0.value })")
        }
        for good in ["alice", "élise", "用户", "a.b-c_d+e@example.com"] {
            #expect(UsersFile.isValidUserName(good), "\(good)")
        }
    }

    @Test func usersFileRefusesAHashOverTheMemoryBound() throws {
        // 128 * 2^18 * 8 = 256 MiB is the bound itself: accepted (not checked: that would take 256 MiB).
        let salt = String(repeating: "ab", count: 16), key = String(repeating: "cd", count: 32)
        let atBound = "$scrypt$ln=18,r=8,p=1$\(salt)$\(key)"
        #expect(PasswordHash.memoryCost(atBound) == 256 << 20 && PasswordHash.isWellFormed(atBound))
        _ = try UsersFile(text: "alice:\(atBound)\n", source: "users")
        for params in ["ln=20,r=32,p=1", "ln=19,r=8,p=1", "ln=18,r=9,p=1"] {
            let costly = "$scrypt$\(params)$\(salt)$\(key)"
            #expect(!PasswordHash.isWellFormed(costly) && !PasswordHash.verify("pw", against: costly))
            #expect { try UsersFile(text: "# users\nalice:\(atBound)\nbob:\(costly)\n", source: "/etc/tern/users") }
                throws: { error in
                    guard let e = error as? ConfigError else { return false }
                    return e.line == 3 && e.source == "/etc/tern/users" && e.message.contains("MiB per check")
                        && "\(e)".contains("/etc/tern/users: line 3")
                }
        }
        #expect(PasswordHash.memoryCost("$scrypt$ln=20,r=32,p=1$\(salt)$\(key)") == 4 << 30)
    }

    @Test func throttleDelaysGrowThenLocksOutPerIP() {
        var t = AuthThrottle(maxFailures: 3, lockoutTime: 60)
        let a = t.failed("192.0.2.1", now: 0)
        let b = t.failed("192.0.2.1", now: 1)
        #expect(a.delay < b.delay && !a.lockedOut && !b.lockedOut)
        #expect(!t.isLockedOut("192.0.2.1", now: 2))
        let c = t.failed("192.0.2.1", now: 2)
        #expect(c.lockedOut && t.isLockedOut("192.0.2.1", now: 30))
        #expect(!t.isLockedOut("192.0.2.2", now: 30))
        #expect(!t.isLockedOut("192.0.2.1", now: 63))
        // After the lockout the count starts over.
        #expect(t.failed("192.0.2.1", now: 70).delay == a.delay)
        // A success forgets the failures.
        t.succeeded("192.0.2.1")
        #expect(t.entries["192.0.2.1"] == nil)
        // Delays are capped.
        var u = AuthThrottle(maxFailures: 100, lockoutTime: 60)
        var last = 0.0
        for i in 0..<50 { last = u.failed("192.0.2.9", now: Double(i) / 10).delay }
        #expect(last == AuthThrottle.maxDelay)
    }

    @Test func throttleCountsChecksInFlight() {
        var t = AuthThrottle(maxFailures: 3, lockoutTime: 60)
        // Three checks may start at once; a fourth is refused before any of them finishes.
        var started: [Bool] = []
        for _ in 0..<5 { started.append(t.begin("192.0.2.1", now: 0)) }
        #expect(started == [true, true, true, false, false])
        let other = t.begin("192.0.2.2", now: 0)
        #expect(other)
        _ = t.failed("192.0.2.1", now: 1)
        _ = t.failed("192.0.2.1", now: 1)
        let fourth = t.begin("192.0.2.1", now: 1)
        #expect(!fourth)
        let third = t.failed("192.0.2.1", now: 1)
        #expect(third.lockedOut)
        let during = t.begin("192.0.2.1", now: 30)
        let after = t.begin("192.0.2.1", now: 62)
        #expect(!during && after)
    }

    @Test func successDoesNotForgiveGuessesAtOtherUsers() {
        // Four wrong passwords for alice, then mallory logs in as herself, five times over.
        var t = AuthThrottle(maxFailures: 5, lockoutTime: 3600)
        var lockedAt: Int?
        for round in 0..<5 where lockedAt == nil {
            for _ in 0..<4 {
                guard t.begin("192.0.2.1", now: 0) else { lockedAt = round; break }
                _ = t.failed("192.0.2.1", user: "alice", now: 0)
            }
            if lockedAt == nil, t.begin("192.0.2.1", now: 0) { t.succeeded("192.0.2.1", user: "mallory") }
        }
        #expect(lockedAt == 1)
        let locked = t.isLockedOut("192.0.2.1", now: 1)
        #expect(locked)
        // A success for the user who failed does clear that user's failures.
        var u = AuthThrottle(maxFailures: 5, lockoutTime: 3600)
        _ = u.begin("192.0.2.2", now: 0)
        _ = u.failed("192.0.2.2", user: "alice", now: 0)
        _ = u.begin("192.0.2.2", now: 0)
        u.succeeded("192.0.2.2", user: "alice")
        #expect(u.entries["192.0.2.2"] == nil)
    }

    @Test func throttleTableIsBounded() {
        var t = AuthThrottle(maxFailures: 5, lockoutTime: 60)
        for i in 0..<(AuthThrottle.maxEntries + 10) {
            _ = t.failed("ip\(i)", now: 0)
        }
        #expect(t.entries.count <= AuthThrottle.maxEntries)
    }

    @Test func throttleKeyGroupsIPv6By64() {
        let key = AuthThrottle.key(for:)
        // Two addresses in one /64 share a key; the next /64 does not.
        #expect(key("2001:db8:1:2::1") == key("2001:db8:1:2:ffff:eeee:dddd:cccc"))
        #expect(key("2001:db8:1:2::1") == "2001:db8:1:2::/64")
        #expect(key("2001:db8:1:2::1") != key("2001:db8:1:3::1"))
        #expect(key("2001:db8::1") != key("2001:db9::1"))
        // An IPv4-mapped address is the IPv4 address; IPv4 addresses stay apart.
        #expect(key("::ffff:1.2.3.4") == key("1.2.3.4"))
        #expect(key("1.2.3.4") == "1.2.3.4")
        #expect(key("1.2.3.4") != key("1.2.3.5"))
        #expect(key("::ffff:1.2.3.4") != key("::ffff:1.2.3.5"))
        #expect(key("::1") == "::/64" && key("::1") != key("1.2.3.4"))
    }

    @Test func addressesOfOneIPv6BlockShareALockout() {
        var t = AuthThrottle(maxFailures: 3, lockoutTime: 60)
        for host in 1...3 {
            let k = AuthThrottle.key(for: "2001:db8:0:7::\(host)")
            let began = t.begin(k, now: 0)
            #expect(began)
            _ = t.failed(k, now: 0)
        }
        #expect(t.isLockedOut(AuthThrottle.key(for: "2001:db8:0:7:1234::99"), now: 1))
        #expect(!t.isLockedOut(AuthThrottle.key(for: "2001:db8:0:8::1"), now: 1))
        #expect(t.entries.count == 1)
    }

    @Test func fullThrottleTableIsNotPrunedOnEveryInsert() {
        // A full table where only a few entries have expired: a prune that freed only those would
        // run again (filtering the whole table) on nearly every later failure. It frees a quarter.
        var t = AuthThrottle(maxFailures: 5, lockoutTime: 100, maxEntries: 400)
        for i in 0..<10 { _ = t.failed("old\(i)", now: 0) }
        for i in 0..<390 { _ = t.failed("ip\(i)", now: 150) }
        #expect(t.entries.count == 400)
        _ = t.failed("new", now: 151)
        #expect(t.entries.count <= 301 && t.entries["new"] != nil)
    }
}
