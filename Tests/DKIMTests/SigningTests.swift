// Whole messages signed by Tern (DKIM core + UVRuntime's keys) and verified by dkimpy, its dnsfunc
// answering with the TXT record Tern exports. Altered messages must fail: the verifier really checks.

import Foundation
import Testing
import Randomness
import UVRuntime
@testable import DKIM

extension UVRuntime.SHA256: DKIMHasher {}

struct TestSigner {
    let key: SigningKey
    let algorithm: DKIMAlgorithm
    let selector: String
    let domain = "example.com"

    init(_ kind: SigningKey.Kind) throws {
        key = try SigningKey.generate(kind)
        algorithm = kind == .ed25519 ? .ed25519SHA256 : .rsaSHA256
        selector = kind == .ed25519 ? "s2026e" : "s2026r"
    }

    var recordName: String { "\(selector)._domainkey.\(domain)." }
    var record: String { get throws { dkimKeyRecord(algorithm: algorithm, publicKey: try key.publicKeyForDNS()) } }

    /// The DKIM-Signature field for `message`, fed in pieces cut by `rng` (whole if nil).
    func signature(_ message: [UInt8], _ c: CanonicalizationPair, time: UInt64 = now(), expiresAfter: UInt64? = nil,
                   rng: inout SplitMix64?) throws -> [UInt8] {
        let settings = DKIMSignerSettings(domain: domain, selector: selector, algorithm: algorithm,
                                          canonicalization: c, expiresAfter: expiresAfter)
        var signer = DKIMMessageSigner(settings: settings, hasher: UVRuntime.SHA256())
        var at = 0
        while at < message.count {
            let n = rng.map { _ in 1 + Int(rng!.next() % 300) } ?? message.count
            signer.update(Array(message[at..<min(message.count, at + n)]))
            at += n
        }
        return try signer.finish(time: time) { try key.signSHA256($0) }
    }

    static func now() -> UInt64 { UInt64(Date().timeIntervalSince1970) }
}

/// One line of dkimpy_check.py verify's input: the message and the records of the signers.
func verifyLine(_ message: [UInt8], _ signers: [TestSigner]) throws -> String {
    ([hex(message)] + (try signers.map { "\($0.recordName)=\(hex(Array(try $0.record.utf8)))" })).joined(separator: " ")
}

@Suite struct SigningTests {
    static let crlf = "\r\n"

    /// Messages as they reach the signer: CRLF lines, dot-unstuffed.
    static let messages: [(String, [UInt8])] = {
        var out: [(String, [UInt8])] = []
        func add(_ name: String, _ s: String) { out.append((name, Array(s.utf8))) }
        add("plain", "From: Alice <alice@example.com>\r\nTo: bob@example.net\r\nSubject: Hello\r\n"
            + "Date: Sun, 06 Dec 2026 03:00:00 +0000\r\nMessage-ID: <1@example.com>\r\n\r\nHi Bob.\r\n")
        add("folded and repeated", "Received: from a by b;\r\n\tSun, 06 Dec 2026 03:00:00 +0000\r\n"
            + "From: alice@example.com\r\nTo: bob@example.net,\r\n  carol@example.net\r\nTo: dave@example.net\r\n"
            + "Received: from c by d\r\nSubject: a long\r\n subject\r\n\t folded twice\r\n"
            + "List-Unsubscribe: <mailto:u@example.com>\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
            + "MIME-Version: 1.0\r\nContent-Type: text/plain;\r\n charset=utf-8\r\n\r\nbody\r\n")
        add("trailing whitespace", "From: alice@example.com \t\r\nSubject:   spaced   out  \r\n\r\n"
            + "line one  \r\n\tline\t\ttwo\t\r\n \r\nlast \r\n")
        add("blank lines at the end", "From: alice@example.com\r\nSubject: x\r\n\r\ntext\r\n\r\n\r\n \r\n\r\n")
        add("empty body", "From: alice@example.com\r\nSubject: nothing\r\n\r\n")
        add("no empty line", "From: alice@example.com\r\nSubject: no body at all\r\n")
        add("8-bit", "From: Jörg <jörg@example.com>\r\nTo: 田中 <tanaka@example.jp>\r\nSubject: Grüße, 日本\r\n"
            + "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
            + "Grüße aus Köln — 日本語のテキスト\r\n")
        add("dot lines", "From: alice@example.com\r\nSubject: dots\r\n\r\n.\r\n..\r\n.leading dot\r\n. \r\n")
        var big = "From: alice@example.com\r\nSubject: big\r\n\r\n"
        for i in 0..<4000 { big += "line \(i) of a longer body, with  some   spaces \t and tabs\t\r\n" }
        add("240 KB", big)
        // Every byte value but CR and LF, in CRLF lines: a CR or LF alone is not allowed in a message
        // (RFC 5322 §2.3) and verifiers differ on it (dkimpy reads a lone LF as a line end, Tern as a
        // byte as the RFC's canonicalization does): the canonicalization tests cover those.
        var binary = Array("From: alice@example.com\r\nSubject: raw bytes\r\n\r\n".utf8)
        var rng = SplitMix64(seed: 8463)
        for i in 1...2000 {
            let b = UInt8(truncatingIfNeeded: rng.next())
            binary.append(b == 0x0D || b == 0x0A ? 0x20 : b)
            if i % 70 == 0 { binary += [0x0D, 0x0A] }
        }
        binary += Array("\r\n".utf8)
        out.append(("every byte value but CR and LF in the body", binary))
        return out
    }()

    static let canonicalizations: [CanonicalizationPair] = [
        .relaxedRelaxed, .simpleSimple, CanonicalizationPair(header: .relaxed, body: .simple),
        CanonicalizationPair(header: .simple, body: .relaxed),
    ]

    @Test func dkimpyVerifiesEveryMessageAlgorithmAndCanonicalization() throws {
        let signers = [try TestSigner(.rsa(bits: 2048)), try TestSigner(.ed25519)]
        var lines: [String] = []
        var names: [String] = []
        var rng: SplitMix64? = SplitMix64(seed: 6376)
        for (name, message) in Self.messages {
            for signer in signers {
                for c in Self.canonicalizations {
                    let field = try signer.signature(message, c, rng: &rng)
                    lines.append(try verifyLine(field + message, [signer]))
                    names.append("\(name), \(signer.algorithm.rawValue), \(c)")
                }
            }
            // Dual signature: RSA and Ed25519 on the same message, both verified.
            var whole: SplitMix64? = nil
            let rsa = try signers[0].signature(message, .relaxedRelaxed, rng: &whole)
            let ed = try signers[1].signature(message, .relaxedRelaxed, rng: &whole)
            lines.append(try verifyLine(ed + rsa + message, signers))
            names.append("\(name), dual")
        }
        let results = try DKIMPy.run("verify", lines)
        for (i, result) in results.enumerated() { #expect(result == "pass", "\(names[i]): \(result)") }
    }

    /// A signature that verifies, then the same message changed after signing: each change fails.
    @Test func dkimpyRejectsMessagesAlteredAfterSigning() throws {
        let signers = [try TestSigner(.rsa(bits: 2048)), try TestSigner(.ed25519)]
        let message = Self.messages[0].1
        var lines: [String] = []
        var expected: [String] = []
        var names: [String] = []
        var whole: SplitMix64? = nil
        func replace(_ m: [UInt8], _ a: String, _ b: String) -> [UInt8] {
            Array(String(decoding: m, as: UTF8.self).replacingOccurrences(of: a, with: b).utf8)
        }
        for signer in signers {
            for c in [CanonicalizationPair.relaxedRelaxed, .simpleSimple] {
                let field = try signer.signature(message, c, rng: &whole)
                let signed = field + message
                let cases: [(String, [UInt8], Bool)] = [
                    ("unchanged", signed, true),
                    ("an unsigned field added", Array("X-Added: yes\r\n".utf8) + signed, true),
                    ("body changed", replace(signed, "Hi Bob.", "Hi Rob."), false),
                    ("body line added", signed + Array("P.S.\r\n".utf8), false),
                    ("subject changed", replace(signed, "Subject: Hello", "Subject: Hellp"), false),
                    ("second From added", Array("From: mallory@example.org\r\n".utf8) + signed, false),
                    ("Cc added (absent when signed, not in h=)", Array("Cc: x@example.org\r\n".utf8) + signed, true),
                    ("whitespace changed in a header", replace(signed, "Subject: Hello", "Subject:  Hello"), c.header == .relaxed),
                    ("whitespace added in the body", replace(signed, "Hi Bob.", "Hi  Bob.  "), c.body == .relaxed),
                    ("empty lines added at the end", signed + Array("\r\n\r\n".utf8), true),
                ]
                for (what, m, ok) in cases {
                    lines.append(try verifyLine(m, [signer]))
                    expected.append(ok ? "pass" : "fail")
                    names.append("\(signer.algorithm.rawValue) \(c): \(what)")
                }
                // The record of another key of the same type does not verify it.
                let other = try TestSigner(signer.algorithm == .ed25519SHA256 ? .ed25519 : .rsa(bits: 1024))
                lines.append(try verifyLine(signed, [other]))
                expected.append("fail")
                names.append("\(signer.algorithm.rawValue) \(c): another key's record")
            }
        }
        // x= is there: a signature that expired (x= two days ago) fails, one that has not, passes.
        let rsa = signers[0]
        let old = TestSigner.now() - 2 * 86400
        lines.append(try verifyLine(try rsa.signature(message, .relaxedRelaxed, time: old, expiresAfter: 3600, rng: &whole) + message, [rsa]))
        expected.append("fail")
        names.append("expired x=")
        lines.append(try verifyLine(try rsa.signature(message, .relaxedRelaxed, expiresAfter: 86400, rng: &whole) + message, [rsa]))
        expected.append("pass")
        names.append("x= tomorrow")
        let results = try DKIMPy.run("verify", lines)
        for (i, result) in results.enumerated() {
            #expect(result.hasPrefix(expected[i]), "\(names[i]): \(result)")
        }
    }

    @Test func unparsableHeaderBlocksAndSignerErrorsAreThrown() throws {
        let settings = DKIMSignerSettings(domain: "example.com", selector: "s", algorithm: .rsaSHA256)
        #expect(throws: DKIMError.self) {
            _ = try DKIMMessageSigner.sign(Array("From: a\r\nbroken line\r\n\r\nbody\r\n".utf8), settings: settings,
                                           hasher: DKIMByteCollector(), time: 1) { _ in [1] }
        }
        struct KeyGone: Error {}
        #expect(throws: KeyGone.self) {
            _ = try DKIMMessageSigner.sign(Array("From: a\r\n\r\n".utf8), settings: settings,
                                           hasher: DKIMByteCollector(), time: 1) { _ in throw KeyGone() }
        }
        var bad = settings
        bad.domain = "example.com; x=1"
        #expect(throws: DKIMError.self) {
            _ = try DKIMMessageSigner.sign(Array("From: a\r\n\r\n".utf8), settings: bad,
                                           hasher: DKIMByteCollector(), time: 1) { _ in [1] }
        }
    }

    /// The header block is found wherever the chunks cut it: every split of a small message gives
    /// the same signature input as the whole.
    @Test func everySplitOfAMessageSignsTheSameData() throws {
        let message = Array("From: a@example.com\r\nSubject: s\r\n\r\n\r\nbody \r\n\r\n".utf8)
        let settings = DKIMSignerSettings(domain: "example.com", selector: "s", algorithm: .ed25519SHA256)
        var wholeData: [UInt8] = []
        _ = try DKIMMessageSigner.sign(message, settings: settings, hasher: DKIMByteCollector(), time: 5) {
            wholeData = $0
            return [1]
        }
        #expect(String(decoding: wholeData, as: UTF8.self).contains("bh=" + base64(Array("\r\nbody\r\n".utf8))))
        for i in 0...message.count {
            for j in i...message.count {
                var signer = DKIMMessageSigner(settings: settings, hasher: DKIMByteCollector())
                signer.update(Array(message[0..<i]))
                signer.update(Array(message[i..<j]))
                signer.update(Array(message[j...]))
                var data: [UInt8] = []
                _ = try signer.finish(time: 5) {
                    data = $0
                    return [1]
                }
                #expect(data == wholeData, "cut at \(i), \(j)")
            }
        }
    }
}
