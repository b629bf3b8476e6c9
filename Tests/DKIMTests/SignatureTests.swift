// The DKIM-Signature field: h= lists and the bottom-up selection of §5.4.2, the tags and their
// folding, the checks on d=, s=, h= and x=, and the data to sign of §3.7.

import Testing
@testable import DKIM

@Suite struct SignatureTests {
    static let block = "Received: by a\r\nFrom: a@example.com\r\nTo: b@example.net\r\nReceived: by b\r\n"
        + "to: c@example.net\r\nSubject: hi\r\nX-Other: not signed\r\nMESSAGE-ID: <1@example.com>\r\n"

    @Test func hListsEachPresentFieldOncePerInstanceAndFromOnceMore() throws {
        let fields = try HeaderBlock.parse(bytes(Self.block))
        #expect(SignedHeaders.list(for: fields) == ["from", "from", "subject", "to", "to", "message-id"])
        // A message without From still signs From (once), so none can be added.
        #expect(SignedHeaders.list(for: try HeaderBlock.parse(bytes("Subject: x\r\n"))) == ["from", "subject"])
        // Configured names: any case, duplicates once, absent ones left out.
        #expect(SignedHeaders.list(for: fields, names: ["X-Other", "Received", "x-other", "Date"], oversigned: ["received"])
                    == ["x-other", "received", "received", "received"])
    }

    @Test func selectionIsBottomUp() throws {
        let fields = try HeaderBlock.parse(bytes(Self.block))
        let picked = SignedHeaders.select(["to", "received", "TO", "to", "from", "from"], from: fields)
        #expect(picked.map { text($0.raw) } == [
            "to: c@example.net\r\n", "Received: by b\r\n", "To: b@example.net\r\n", "From: a@example.com\r\n",
        ])
    }

    static func tags(_ signedHeaders: [String] = ["from", "from", "subject"], expiration: UInt64? = nil) -> DKIMSignatureTags {
        DKIMSignatureTags(algorithm: .rsaSHA256, canonicalization: .relaxedRelaxed, domain: "example.com",
                          selector: "s2026", timestamp: 1_700_000_000, expiration: expiration,
                          signedHeaders: signedHeaders, bodyHash: Array(repeating: 0xAB, count: 32))
    }

    @Test func fieldHasEveryTagAndFoldsUnder78Columns() throws {
        let h = SignedHeaders.defaults + SignedHeaders.defaults
        let signed = Self.tags(h, expiration: 1_700_003_600).field(signature: Array(repeating: 0x5A, count: 256))
        let lines = text(signed).components(separatedBy: "\r\n")
        #expect(lines.last == "")
        for line in lines.dropFirst() where !line.isEmpty { #expect(line.hasPrefix("\t")) }
        for line in lines { #expect(line.utf8.count <= 78, "\(line)") }
        // Unfolded (relaxed), the tags are all there, in order, h= and b= whole.
        let field = try HeaderField(raw: signed)
        let value = text(HeaderCanonicalizer.canonicalize(field, .relaxed))
        let unfolded = value.replacingOccurrences(of: ": ", with: ":")
        #expect(unfolded.hasPrefix("dkim-signature:v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.com; s=s2026; t=1700000000; x=1700003600; h=from:reply-to:"))
        #expect(unfolded.contains("; bh=q6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=; b="))
        #expect(!value.contains(" l="))
        let b = value.components(separatedBy: "b=").last!.replacingOccurrences(of: " ", with: "")
        #expect(b == base64(Array(repeating: 0x5A, count: 256)) + "\r\n")
    }

    @Test func unsignedFieldIsTheSignedOneWithAnEmptyB() {
        let t = Self.tags()
        let unsigned = text(t.field(signature: []))
        #expect(unsigned.hasSuffix(" b=\r\n"))
        let signed = text(t.field(signature: Array(repeating: 7, count: 64)))
        // What a verifier does (§3.7): delete the b= value with the whitespace in it.
        let prefix = String(signed[..<signed.range(of: "b=")!.upperBound])
        #expect(prefix + "\r\n" == unsigned)
    }

    @Test func badTagsAreErrors() {
        var t = Self.tags()
        #expect(throws: Never.self) { try t.validate() }
        for (domain, selector) in [("", "s"), ("exa mple.com", "s"), ("example.com;", "s"), (".example.com", "s"),
                                   ("example.com", ""), ("example.com", "s;h=x"), ("example.com", "a b")] {
            t.domain = domain
            t.selector = selector
            #expect(throws: DKIMError.self) { try t.validate() }
        }
        t = Self.tags(["from", "sub ject"])
        #expect(throws: DKIMError.self) { try t.validate() }
        t = Self.tags(expiration: 1_700_000_000)
        #expect(throws: DKIMError.self) { try t.validate() }
        t = Self.tags()
        t.selector = "s_2026.sub"
        #expect(throws: Never.self) { try t.validate() }
    }

    @Test func dataToSignIsTheSelectedFieldsThenTheSignatureWithoutItsCRLF() throws {
        let fields = try HeaderBlock.parse(bytes("From:  A <a@example.com>\r\nSubject: one\r\n  two\r\nFrom: second\r\n"))
        for mode in [Canonicalization.relaxed, .simple] {
            var t = Self.tags(["from", "subject", "from", "from"])
            t.canonicalization = CanonicalizationPair(header: mode, body: .simple)
            let data = text(try DKIMSigningData.data(fields: fields, tags: t))
            let sig = try HeaderField(raw: t.field(signature: []))
            let sigCanonical = text(HeaderCanonicalizer.canonicalize(sig, mode).dropLast(2))
            if mode == .relaxed {
                #expect(data == "from:second\r\nsubject:one two\r\nfrom:A <a@example.com>\r\n" + sigCanonical)
                #expect(sigCanonical.hasSuffix("b="))
            } else {
                #expect(data == "From: second\r\nSubject: one\r\n  two\r\nFrom:  A <a@example.com>\r\n" + sigCanonical)
                #expect(sigCanonical.hasPrefix("DKIM-Signature: v=1;"))
            }
        }
    }

    @Test func keyRecord() {
        #expect(dkimKeyRecord(algorithm: .ed25519SHA256, publicKey: [0, 1, 2]) == "v=DKIM1; k=ed25519; p=AAEC")
        #expect(dkimKeyRecord(algorithm: .rsaSHA256, publicKey: [0xFF]) == "v=DKIM1; k=rsa; p=/w==")
        #expect(base64([]) == "" && base64([1, 2, 3, 4, 5]) == "AQIDBAU=")
    }
}

@Suite struct KeyRecordMatchTests {
    @Test func aRecordMatchesItsKeyAndSaysWhyNot() {
        let key: [UInt8] = Array(0..<32)
        let record = dkimKeyRecord(algorithm: .ed25519SHA256, publicKey: key)
        #expect(dkimKeyRecordMismatch(record, algorithm: .ed25519SHA256, publicKey: key) == nil)
        // Whitespace anywhere in p=, a trailing ';', no v= are all as verifiers read them.
        let spaced = "k=ed25519;\r\n p=" + base64(key).map { "\($0) " }.joined() + ";"
        #expect(dkimKeyRecordMismatch(spaced, algorithm: .ed25519SHA256, publicKey: key) == nil)
        #expect(dkimKeyRecordMismatch(record, algorithm: .rsaSHA256, publicKey: key) == "k=ed25519, but the key is rsa")
        #expect(dkimKeyRecordMismatch("v=DKIM1; p=" + base64(key), algorithm: .ed25519SHA256, publicKey: key)
                == "k=rsa, but the key is ed25519")
        #expect(dkimKeyRecordMismatch(record, algorithm: .ed25519SHA256, publicKey: Array(1..<33)) == "p= is another key")
        #expect(dkimKeyRecordMismatch("v=DKIM1; k=rsa; p=", algorithm: .rsaSHA256, publicKey: key)
                == "p= is empty: the key is revoked")
        #expect(dkimKeyRecordMismatch("v=DKIM2; k=rsa; p=AA", algorithm: .rsaSHA256, publicKey: key) == "v=DKIM2, not DKIM1")
        #expect(dkimKeyRecordMismatch("v=DKIM1; k=rsa", algorithm: .rsaSHA256, publicKey: key) == "no p= tag")
        #expect(dkimKeyRecordMismatch("p=AA; p=AA", algorithm: .rsaSHA256, publicKey: key) == "the tag p= appears twice")
        #expect(dkimKeyRecordMismatch("garbage", algorithm: .rsaSHA256, publicKey: key) == "\"garbage\" is not a tag=value pair")
    }
}
