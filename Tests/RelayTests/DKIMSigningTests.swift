// DKIMSigningTests.swift: the loaded [[dkim.sign]] keys (type checked against the algorithm, the
// closest configured parent domain) and the signing of one message fed whole or in pieces.

import DKIM
import Foundation
import Testing
import UVRuntime
@testable import Relay

private func keyFile(_ kind: SigningKey.Kind, in dir: String, _ name: String) throws -> String {
    let path = dir + "/" + name
    try SigningKey.generate(kind, path: path).write(to: path)
    return path
}

private func withKeys(_ body: (String, String, String) throws -> Void) throws {
    let dir = NSTemporaryDirectory() + "tern-dkim-\(UInt64.random(in: 0...UInt64.max))"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: dir) }
    try body(dir, try keyFile(.rsa(bits: 2048), in: dir, "rsa.pem"), try keyFile(.ed25519, in: dir, "ed.pem"))
}

private func table(_ domain: String, _ selector: String, _ key: String, _ algorithm: DKIMAlgorithm = .rsaSHA256) -> DKIMSignConfig {
    var t = DKIMSignConfig(domain: domain, selector: selector, key: key)
    t.algorithm = algorithm
    return t
}

private func load(_ tables: [DKIMSignConfig], users: [String: String] = [:], routes: [String: String] = [:],
                  routeKeys: Set<String> = [], source: String? = nil) throws -> DKIMKeySet? {
    var config = DKIMConfig()
    config.sign = tables
    config.users = users
    config.routes = routes
    return try DKIMKeySet.load(config, routeKeys: routeKeys, source: source)
}

/// The selectors that sign a message from `author` with the envelope's choice.
private func selectors(_ keys: DKIMKeySet, _ choice: DKIMSigningChoice, author: String?) -> [String] {
    keys.signatures(of: keys.policy.domains(choice, authorDomain: author)).map(\.settings.selector)
}

private let message = Array("From: Alice <alice@news.example.com>\r\nTo: bob@example.net\r\nSubject: hi\r\n\r\nHello.\r\n".utf8)

@Suite struct DKIMSigningTests {
    @Test func noTablesNoKeySet() throws {
        #expect(try load([]) == nil)
    }

    @Test func aKeyOfTheWrongTypeNamesTheTableAndTheFile() throws {
        try withKeys { _, rsa, ed in
            let error = try #require(throws: ConfigError.self) {
                try load([table("example.com", "a", rsa), table("example.com", "b", rsa, .ed25519SHA256)],
                         source: "/etc/tern/tern.toml")
            }
            #expect(error.key == "dkim.sign[1].key")
            #expect(error.message.contains(rsa) && error.message.contains("RSA"))
            let missing = try #require(throws: ConfigError.self) {
                try load([table("example.com", "a", ed + ".gone", .ed25519SHA256)])
            }
            #expect(missing.key == "dkim.sign[0].key" && missing.message.contains(ed + ".gone"))
        }
    }

    @Test func theClosestConfiguredParentSigns() throws {
        try withKeys { _, rsa, ed in
            let keys = try #require(try load([
                table("example.com", "r", rsa), table("example.com", "e", ed, .ed25519SHA256),
                table("deep.news.example.com", "d", rsa),
            ]))
            #expect(selectors(keys, .byAuthor, author: "example.com") == ["r", "e"])
            #expect(selectors(keys, .byAuthor, author: "news.example.com") == ["r", "e"])
            #expect(selectors(keys, .byAuthor, author: "a.deep.news.example.com") == ["d"])
            #expect(selectors(keys, .byAuthor, author: "example.org").isEmpty)
            #expect(selectors(keys, .byAuthor, author: "notexample.com").isEmpty)
            #expect(selectors(keys, .byAuthor, author: nil).isEmpty)
        }
    }

    @Test func wholeAndInPiecesGiveTheSameFields() throws {
        try withKeys { _, rsa, ed in
            let keys = try #require(try load([table("example.com", "r", rsa), table("example.com", "e", ed, .ed25519SHA256)]))
            let request = DKIMRequest(keys: keys, choice: .byAuthor)
            let whole = try DKIMMessageSigning.sign(message, request, time: 1_800_000_000)
            let text = String(decoding: whole, as: UTF8.self)
            #expect(text.components(separatedBy: "DKIM-Signature:").count == 3)
            #expect(text.contains("d=example.com") && text.contains("s=r;") && text.contains("s=e;"))
            // Ed25519 signatures are deterministic, RSA PKCS#1 v1.5 too: the same bytes in any pieces.
            for size in [1, 2, 3, 7, 50] {
                let signing = DKIMMessageSigning(request)
                var i = 0
                while i < message.count {
                    signing.update(Array(message[i..<min(message.count, i + size)]))
                    i += size
                }
                #expect(try signing.finish(time: 1_800_000_000) == whole, "pieces of \(size)")
            }
        }
    }

    /// RFC 6376 §5.3: an 8BITMIME message that gets a signature is made 7-bit first, so that a next hop
    /// without 8BITMIME gets the signed bytes; one that is not signed, or not 8BITMIME, stays as it is.
    @Test func eightBitMailIsMadeSevenBitBeforeItIsSigned() throws {
        try withKeys { _, rsa, _ in
            let request = DKIMRequest(keys: try #require(try load([table("example.com", "r", rsa)])), choice: .byAuthor)
            let latin = Array("From: alice@example.com\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGr".utf8)
                + [0xC3, 0xBC] + Array("\r\n".utf8)
            let (signed, converted) = try MessageWriter.signed(latin, request, time: 1, eightBit: true)
            #expect(converted)
            #expect(!signed.contains { $0 >= 0x80 })
            let text = String(decoding: signed, as: UTF8.self)
            #expect(text.hasPrefix("DKIM-Signature:") && text.contains("Content-Transfer-Encoding: quoted-printable"))
            #expect(text.hasSuffix("\r\n\r\nGr=C3=BC\r\n"))
            // Not 8BITMIME (declared 7BIT or nothing): as it is.
            let same = try MessageWriter.signed(latin, request, time: 1, eightBit: false)
            #expect(!same.converted && Array(same.bytes.suffix(latin.count)) == latin)
            // Not signed (a domain without keys): never converted.
            let other = Array("From: carol@example.org\r\nContent-Type: text/plain\r\n\r\nGr".utf8) + [0xC3, 0xBC] + Array("\r\n".utf8)
            let unsigned = try MessageWriter.signed(other, request, time: 1, eightBit: true)
            #expect(!unsigned.converted && unsigned.bytes == other)
            // Not MIME-convertible (8-bit header field): signed as it is.
            let header8 = Array("From: alice@example.com\r\nSubject: ".utf8) + [0xC3, 0xBC] + Array("\r\n\r\nx\r\n".utf8)
            let asIs = try MessageWriter.signed(header8, request, time: 1, eightBit: true)
            #expect(!asIs.converted && Array(asIs.bytes.suffix(header8.count)) == header8)
            #expect(DKIMMessageSigning.wouldSign(latin, request) && !DKIMMessageSigning.wouldSign(other, request))
        }
    }

    @Test func unsignedDomainsAndUnparsableHeaders() throws {
        try withKeys { _, rsa, _ in
            let keys = DKIMRequest(keys: try #require(try load([table("example.com", "r", rsa)])), choice: .byAuthor)
            let other = Array("From: carol@example.org\r\n\r\nbody\r\n".utf8)
            #expect(try DKIMMessageSigning.sign(other, keys, time: 1).isEmpty)
            let broken = Array("From: alice@example.com\r\nno colon here\r\n\r\nbody\r\n".utf8)
            #expect(throws: DKIMError.self) { try DKIMMessageSigning.sign(broken, keys, time: 1) }
            let brokenOther = Array("no colon here\r\nFrom: carol@example.org\r\n\r\nbody\r\n".utf8)
            #expect(try DKIMMessageSigning.sign(brokenOther, keys, time: 1).isEmpty)
            let noFrom = Array("no colon here\r\n\r\nbody\r\n".utf8)
            #expect(throws: DKIMError.self) { try DKIMMessageSigning.sign(noFrom, keys, time: 1) }
            // No empty line: all header, signed with an empty body.
            let allHeader = Array("From: alice@example.com\r\nSubject: x\r\n".utf8)
            #expect(!(try DKIMMessageSigning.sign(allHeader, keys, time: 1)).isEmpty)
        }
    }

    @Test func aUserOrARouteFixesTheSigningDomain() throws {
        try withKeys { _, rsa, ed in
            let keys = try #require(try load(
                [table("example.com", "r", rsa), table("esp.example", "esp", ed, .ed25519SHA256)],
                users: ["newsletter": "esp.example"], routes: ["partner.example": "esp.example"],
                routeKeys: ["partner.example", "other.example"]))
            func signed(_ user: String?, _ recipients: [String]) throws -> String {
                let request = keys.request(authenticatedUser: user, recipients: recipients)
                return String(decoding: try DKIMMessageSigning.sign(message, request, time: 1), as: UTF8.self)
            }
            // The user's domain alone, whatever the From: (news.example.com, signed by example.com otherwise).
            let byUser = try signed("newsletter", ["bob@example.net"])
            #expect(byUser.components(separatedBy: "DKIM-Signature:").count == 2 && byUser.contains("d=esp.example"))
            // Another user, no route: the From: domain's parent key.
            let byAuthor = try signed("alice", ["bob@example.net"])
            #expect(byAuthor.components(separatedBy: "DKIM-Signature:").count == 2 && byAuthor.contains("d=example.com"))
            // A recipient through the fixed route (its domain's case and trailing dot as routing sees them).
            let byRoute = try signed(nil, ["x@Partner.Example."])
            #expect(byRoute.components(separatedBy: "DKIM-Signature:").count == 2 && byRoute.contains("d=esp.example"))
            // Recipients through the route and elsewhere: both domains sign.
            let both = try signed(nil, ["x@partner.example", "y@other.example"])
            #expect(both.components(separatedBy: "DKIM-Signature:").count == 3)
            #expect(both.contains("d=esp.example") && both.contains("d=example.com"))
            // A fixed domain signs even an author domain without keys, and an unparsable header block fails.
            let foreign = Array("From: carol@example.org\r\n\r\nbody\r\n".utf8)
            let request = keys.request(authenticatedUser: "newsletter", recipients: ["z@example.net"])
            #expect(String(decoding: try DKIMMessageSigning.sign(foreign, request, time: 1), as: UTF8.self).contains("d=esp.example"))
            let brokenOther = Array("no colon here\r\nFrom: carol@example.org\r\n\r\nbody\r\n".utf8)
            #expect(throws: DKIMError.self) { try DKIMMessageSigning.sign(brokenOther, request, time: 1) }
        }
    }
}
