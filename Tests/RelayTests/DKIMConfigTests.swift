// DKIMConfigTests.swift: [[dkim.sign]] tables read into DKIMSignConfig; each mistake is an error naming
// its key and line; the rendering loads back.

import DKIM
import Testing
@testable import Relay

private func parse(_ text: String) throws -> TernConfig {
    try TernConfig.parse("hostname = \"relay.test\"\n" + text, baseDirectory: "/etc/tern")
}

private func parseError(_ text: String, sourceLocation: SourceLocation = #_sourceLocation) -> ConfigError? {
    do {
        let config = try parse(text)
        Issue.record("parsed without error: \(config.dkim)", sourceLocation: sourceLocation)
    } catch let error as ConfigError {
        return error
    } catch {
        Issue.record("unexpected error type: \(error)", sourceLocation: sourceLocation)
    }
    return nil
}

@Suite struct DKIMConfigTests {
    static let dual = """
        [[dkim.sign]]
        domain = "Example.COM"
        selector = "s2026r"
        key = "dkim/example.com.rsa.pem"

        [[dkim.sign]]
        domain = "example.com"
        selector = "s2026e"
        key = "/var/lib/tern/example.com.ed25519.pem"
        algorithm = "ed25519-sha256"
        canonicalization = "simple"
        headers = ["From", "Subject", "Date", "subject", "List-Unsubscribe"]
        expire = "7d"
        """

    @Test func noTablesSignNothing() throws {
        #expect(try parse("").dkim.sign.isEmpty)
        #expect(try TernConfig.embeddedDefault.dkim.sign.isEmpty)
    }

    @Test func twoTablesForOneDomainSignTwice() throws {
        let sign = try parse(Self.dual).dkim.sign
        #expect(sign.count == 2)
        #expect(sign[0].domain == "example.com")
        #expect(sign[0].selector == "s2026r")
        #expect(sign[0].key == "/etc/tern/dkim/example.com.rsa.pem")
        #expect(sign[0].algorithm == .rsaSHA256)
        #expect(sign[0].canonicalization == .relaxedRelaxed)
        #expect(sign[0].headers == SignedHeaders.defaults)
        #expect(sign[0].expire == nil)
        #expect(sign[1].key == "/var/lib/tern/example.com.ed25519.pem")
        #expect(sign[1].algorithm == .ed25519SHA256)
        #expect(sign[1].canonicalization == CanonicalizationPair(header: .simple, body: .simple))
        #expect(sign[1].headers == ["from", "subject", "date", "list-unsubscribe"])
        #expect(sign[1].expire == 604_800.0)
    }

    @Test func signerSettingsCarryEveryKey() throws {
        let sign = try parse(Self.dual).dkim.sign
        let s = sign[1].signerSettings
        #expect(s == DKIMSignerSettings(domain: "example.com", selector: "s2026e", algorithm: .ed25519SHA256,
                                        canonicalization: .simpleSimple,
                                        headers: ["from", "subject", "date", "list-unsubscribe"], expiresAfter: 604_800))
        #expect(sign[0].signerSettings.expiresAfter == nil)
        #expect(sign[0].signerSettings.oversigned == ["from"])
    }

    @Test func renderingLoadsBack() throws {
        let config = try parse(Self.dual)
        #expect(config.tomlText.contains("\n[[dkim.sign]]\ndomain = \"example.com\"\nselector = \"s2026r\"\n"))
        #expect(try TernConfig.parse(config.tomlText) == config)
        #expect(config.renderingCheck().problem == nil)
    }

    @Test func mistakesNameTheirKeyAndLine() {
        let table = "[[dkim.sign]]\ndomain = \"example.com\"\nselector = \"s1\"\nkey = \"k.pem\"\n"
        let cases: [(String, String, Int?, String)] = [
            ("[[dkim.sign]]\nselector = \"s\"\nkey = \"k.pem\"\n", "dkim.sign[0].domain", 1, "is required"),
            ("[[dkim.sign]]\ndomain = \"example.com\"\nkey = \"k.pem\"\n", "dkim.sign[0].selector", 1, "is required"),
            ("[[dkim.sign]]\ndomain = \"example.com\"\nselector = \"s\"\n", "dkim.sign[0].key", 1, "is required"),
            (table + "[[dkim.sign]]\ndomain = \"exa mple.com\"\nselector = \"s\"\nkey = \"k\"\n",
             "dkim.sign[1].domain", 6, "is not a domain name"),
            (table + "[[dkim.sign]]\ndomain = \"example.com\"\nselector = \"s;x\"\nkey = \"k\"\n",
             "dkim.sign[1].selector", 7, "is not a selector"),
            (table + "[[dkim.sign]]\ndomain = \"EXAMPLE.com\"\nselector = \"s1\"\nkey = \"other.pem\"\n",
             "dkim.sign[1].selector", 7, "s1._domainkey.example.com is also dkim.sign[0]'s key record"),
            (table + "algorithm = \"rsa-sha1\"\n", "dkim.sign[0].algorithm", 5, "is not \"rsa-sha256\" or \"ed25519-sha256\""),
            (table + "canonicalization = \"relaxed/loose\"\n", "dkim.sign[0].canonicalization", 5, "is not header/body"),
            (table + "headers = [\"Subject\"]\n", "dkim.sign[0].headers", 5, "must include From"),
            (table + "headers = [\"From\", \"Sub:ject\"]\n", "dkim.sign[0].headers", 5, "is not a header field name"),
            (table + "headers = [\"From\", \"\"]\n", "dkim.sign[0].headers", 5, "must not be empty"),
            (table + "expire = \"0s\"\n", "dkim.sign[0].expire", 5, "must be greater than zero"),
            (table + "l = 100\n", "dkim.sign[0].l", 5, "unknown key dkim.sign[0].l"),
            ("[dkim]\nsign = 1\n", "dkim.sign", 2, "expected [[dkim.sign]] tables"),
            ("[dkim]\nverify = true\n", "dkim.verify", 2, "unknown key dkim.verify"),
        ]
        for (text, key, line, message) in cases {
            guard let error = parseError(text) else { continue }
            #expect(error.key == key, "\(error)")
            #expect(error.line.map { $0 - 1 } == line, "\(error)")  // parse() adds the hostname line
            #expect(error.description.contains(message), "\(error)")
        }
    }

    static let fixed = dual + """

        [[dkim.sign]]
        domain = "esp.example"
        selector = "esp"
        key = "esp.pem"

        [dkim]
        users = { newsletter = "ESP.example", "alice@example.com" = "example.com" }
        routes = { "Partner.Example" = "esp.example", "*" = "example.com" }

        [routes]
        "partner.example" = "[192.0.2.1]:25"
        "*" = "smarthost.example:587"
        """

    @Test func usersAndRoutesFixTheSigningDomain() throws {
        let config = try parse(Self.fixed)
        #expect(config.dkim.users == ["newsletter": "esp.example", "alice@example.com": "example.com"])
        #expect(config.dkim.routes == ["partner.example": "esp.example", "*": "example.com"])
        #expect(config.tomlText.contains("\n[dkim]\nusers = { \"alice@example.com\" = \"example.com\", newsletter = \"esp.example\" }\n"))
        #expect(try TernConfig.parse(config.tomlText) == config)
        #expect(config.renderingCheck().problem == nil)
    }

    @Test func fixedDomainMistakesNameTheirKey() {
        let table = "[[dkim.sign]]\ndomain = \"example.com\"\nselector = \"s1\"\nkey = \"k.pem\"\n"
        let routes = "[routes]\n\"partner.example\" = \"[192.0.2.1]:25\"\n"
        let cases: [(String, String, Int?, String)] = [
            (table + "[dkim]\nusers = { bob = \"example.org\" }\n", "dkim.users.bob", 6,
             "\"example.org\" has no [[dkim.sign]] table"),
            (table + "[dkim]\nusers = { \"bad user\" = \"example.com\" }\n", "dkim.users.\"bad user\"", 6, "is not a user name"),
            (table + "[dkim]\nusers = { bob = 1 }\n", "dkim.users.bob", 6, "expected a string"),
            (routes + table + "[dkim]\nroutes = { \"other.example\" = \"example.com\" }\n", "dkim.routes.\"other.example\"", 8,
             "there is no [routes] entry \"other.example\""),
            (routes + table + "[dkim]\nroutes = { \"partner.example\" = \"news.example.com\" }\n",
             "dkim.routes.\"partner.example\"", 8, "has no [[dkim.sign]] table"),
            (routes + table + "[dkim]\nroutes = { \"partner.example\" = \"example.com\", \"PARTNER.example\" = \"example.com\" }\n",
             "dkim.routes.\"partner.example\"", 8, "duplicate route"),
            ("[dkim]\nusers = { bob = \"example.com\" }\n", "dkim.users.bob", 2, "has no [[dkim.sign]] table"),
        ]
        for (text, key, line, message) in cases {
            guard let error = parseError(text) else { continue }
            #expect(error.key == key, "\(error)")
            #expect(error.line.map { $0 - 1 } == line, "\(error)")
            #expect(error.description.contains(message), "\(error)")
        }
    }
}
