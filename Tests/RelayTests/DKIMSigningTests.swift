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

private let message = Array("From: Alice <alice@news.example.com>\r\nTo: bob@example.net\r\nSubject: hi\r\n\r\nHello.\r\n".utf8)

@Suite struct DKIMSigningTests {
    @Test func noTablesNoKeySet() throws {
        #expect(try DKIMKeySet.load([], source: nil) == nil)
    }

    @Test func aKeyOfTheWrongTypeNamesTheTableAndTheFile() throws {
        try withKeys { _, rsa, ed in
            let error = try #require(throws: ConfigError.self) {
                try DKIMKeySet.load([table("example.com", "a", rsa), table("example.com", "b", rsa, .ed25519SHA256)],
                                    source: "/etc/tern/tern.toml")
            }
            #expect(error.key == "dkim.sign[1].key")
            #expect(error.message.contains(rsa) && error.message.contains("RSA"))
            let missing = try #require(throws: ConfigError.self) {
                try DKIMKeySet.load([table("example.com", "a", ed + ".gone", .ed25519SHA256)], source: nil)
            }
            #expect(missing.key == "dkim.sign[0].key" && missing.message.contains(ed + ".gone"))
        }
    }

    @Test func theClosestConfiguredParentSigns() throws {
        try withKeys { _, rsa, ed in
            let keys = try #require(try DKIMKeySet.load([
                table("example.com", "r", rsa), table("example.com", "e", ed, .ed25519SHA256),
                table("deep.news.example.com", "d", rsa),
            ], source: nil))
            #expect(keys.signatures(forAuthorDomain: "example.com").map(\.settings.selector) == ["r", "e"])
            #expect(keys.signatures(forAuthorDomain: "news.example.com").map(\.settings.selector) == ["r", "e"])
            #expect(keys.signatures(forAuthorDomain: "a.deep.news.example.com").map(\.settings.selector) == ["d"])
            #expect(keys.signatures(forAuthorDomain: "example.org").isEmpty)
            #expect(keys.signatures(forAuthorDomain: "notexample.com").isEmpty)
        }
    }

    @Test func wholeAndInPiecesGiveTheSameFields() throws {
        try withKeys { _, rsa, ed in
            let keys = try #require(try DKIMKeySet.load([table("example.com", "r", rsa),
                                                         table("example.com", "e", ed, .ed25519SHA256)], source: nil))
            let whole = try DKIMMessageSigning.sign(message, keys: keys, time: 1_800_000_000)
            let text = String(decoding: whole, as: UTF8.self)
            #expect(text.components(separatedBy: "DKIM-Signature:").count == 3)
            #expect(text.contains("d=example.com") && text.contains("s=r;") && text.contains("s=e;"))
            // Ed25519 signatures are deterministic, RSA PKCS#1 v1.5 too: the same bytes in any pieces.
            for size in [1, 2, 3, 7, 50] {
                let signing = DKIMMessageSigning(keys: keys)
                var i = 0
                while i < message.count {
                    signing.update(Array(message[i..<min(message.count, i + size)]))
                    i += size
                }
                #expect(try signing.finish(time: 1_800_000_000) == whole, "pieces of \(size)")
            }
        }
    }

    @Test func unsignedDomainsAndUnparsableHeaders() throws {
        try withKeys { _, rsa, _ in
            let keys = try #require(try DKIMKeySet.load([table("example.com", "r", rsa)], source: nil))
            let other = Array("From: carol@example.org\r\n\r\nbody\r\n".utf8)
            #expect(try DKIMMessageSigning.sign(other, keys: keys, time: 1).isEmpty)
            let broken = Array("From: alice@example.com\r\nno colon here\r\n\r\nbody\r\n".utf8)
            #expect(throws: DKIMError.self) { try DKIMMessageSigning.sign(broken, keys: keys, time: 1) }
            let brokenOther = Array("no colon here\r\nFrom: carol@example.org\r\n\r\nbody\r\n".utf8)
            #expect(try DKIMMessageSigning.sign(brokenOther, keys: keys, time: 1).isEmpty)
            let noFrom = Array("no colon here\r\n\r\nbody\r\n".utf8)
            #expect(throws: DKIMError.self) { try DKIMMessageSigning.sign(noFrom, keys: keys, time: 1) }
            // No empty line: all header, signed with an empty body.
            let allHeader = Array("From: alice@example.com\r\nSubject: x\r\n".utf8)
            #expect(!(try DKIMMessageSigning.sign(allHeader, keys: keys, time: 1)).isEmpty)
        }
    }
}
