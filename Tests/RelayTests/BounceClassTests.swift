// BounceClassTests.swift: the built-in bounce classes (etc/bounce-classes.toml) against published
// replies, Tern's own failures, the config's [[bounce.rule]] tables and their errors.

@testable import MailQueue
import Testing
@testable import Relay

@Suite struct BounceClassTests {
    static let builtin = try! BounceClassifier(rules: BounceConfig.builtin)

    @Test func embeddedTextIsByteIdenticalToEtcBounceClassesToml() throws {
        let path = repositoryRoot + "/etc/bounce-classes.toml"
        let file = try #require(readBytes(path), "cannot read \(path)")
        #expect(Array(DefaultBounceClasses.text.utf8) == file, "DefaultBounceClasses.text differs from \(path)")
        #expect(BounceConfig.builtin.count > 15)
    }

    @Test func publishedRepliesGetTheirClass() {
        var wrong: [String] = []
        for row in publishedReplies {
            let got = Self.builtin.classify(row.reply)
            if got != row.bounceClass { wrong.append("\(row.reply) -> \(got), expected \(row.bounceClass) (\(row.source))") }
        }
        #expect(wrong.isEmpty, "\(wrong.joined(separator: "\n"))")
        #expect(publishedReplies.count >= 50)
        // Every class of the table is met, so no rule is tested only by accident.
        #expect(Set(publishedReplies.map(\.bounceClass)).count >= 14)
    }

    /// Tern's own failures have no reply code: the core reads them as "<class>00 <status> <text>".
    @Test func ternsOwnFailures() {
        let cases: [(String, String)] = [
            ("400 4.4.1 connect to mx.example.net[192.0.2.25]:25: connection refused", "NoAnswerFromHost"),
            ("400 4.4.1 connect to mx.example.net[192.0.2.25]:25: operation timed out", "NoAnswerFromHost"),
            ("400 4.4.2 lost connection with mx.example.net[192.0.2.25]:25", "BadConnection"),
            ("400 4.7.5 TLS handshake with mx.example.net[192.0.2.25]:25 failed: connection closed", "BadConnection"),
            ("400 4.4.3 DNS lookup of example.net failed: server failure", "DNSFailure"),
            ("500 5.1.2 example.invalid has a null MX (RFC 7505): it accepts no mail", "BadDomain"),
            ("550 5.7.30 REQUIRETLS support required: the next hop does not offer REQUIRETLS", "PolicyRelated"),
            ("554 5.6.3 The next hop does not support BINARYMIME, which this message requires", "Uncategorized"),
        ]
        for (reply, expected) in cases {
            #expect(Self.builtin.classify(reply) == expected, "\(reply)")
        }
    }

    @Test func theConfigsRulesComeFirstAndTheBuiltinOnesCanBeLeftOut() throws {
        let config = try TernConfig.parse("""
            hostname = "relay.test"
            [[bounce.rule]]
            class = "LocalBlock"
            reply = '^550 5\\.7\\.1 .*example-rbl'
            [[bounce.rule]]
            class = "Custom_2"
            reply = ["alpha", "BETA"]
            """)
        #expect(config.bounce.rules == [BounceRule(bounceClass: "LocalBlock", replies: [#"^550 5\.7\.1 .*example-rbl"#]),
                                        BounceRule(bounceClass: "Custom_2", replies: ["alpha", "BETA"])])
        let classifier = config.bounceClassifier()
        #expect(classifier.classify("550 5.7.1 blocked using spamhaus and example-rbl") == "LocalBlock")
        #expect(classifier.classify("550 5.7.1 blocked using spamhaus") == "SpamBlock")
        #expect(classifier.classify("451 4.0.0 beta test") == "Custom_2")  // no case
        #expect(classifier.classNames.contains("LocalBlock") && classifier.classNames.contains("MessageExpired"))
        let only = try TernConfig.parse("""
            hostname = "relay.test"
            [bounce]
            builtin_rules = false
            [[bounce.rule]]
            class = "Mine"
            reply = "quota"
            """)
        #expect(only.bounceClassifier().classify("552 5.2.2 over quota") == "Mine")
        #expect(only.bounceClassifier().classify("550 5.1.1 user unknown") == "Uncategorized")
        // The rendered config loads back the same.
        #expect(try TernConfig.parse(config.tomlText) == config)
    }

    @Test(arguments: [
        ("[[bounce.rule]]\nreply = \"x\"\n", "bounce.rule[0].class", "is required"),
        ("[[bounce.rule]]\nclass = \"Bad Name\"\nreply = \"x\"\n", "bounce.rule[0].class", "not a class name"),
        ("[[bounce.rule]]\nclass = \"A\"\n", "bounce.rule[0].reply", "is required"),
        ("[[bounce.rule]]\nclass = \"A\"\nreply = []\n", "bounce.rule[0].reply", "is required"),
        ("[[bounce.rule]]\nclass = \"A\"\nreply = \"(unclosed\"\n", "bounce.rule[0].reply", "not a regular expression"),
        ("[[bounce.rule]]\nclass = \"A\"\nreply = \"x\"\nweight = 3\n", "bounce.rule[0].weight", "unknown key"),
        ("[bounce]\nbuiltin_rules = \"no\"\n", "bounce.builtin_rules", "expected true or false"),
    ])
    func badRulesNameTheKey(text: String, key: String, message: String) {
        guard let error = configError("hostname = \"relay.test\"\n" + text) else { return }
        #expect(error.key == key, "\(text)")
        #expect(error.message.contains(message), "\(error.message)")
    }

    /// A next hop's reply may run to 400 KiB: only its start is read (the quadratic patterns stay cheap).
    @Test func longRepliesAreReadFromTheirStartOnly() {
        let long = "450 4.4.1 " + String(repeating: "connect to ", count: 40_000)
        #expect(Self.builtin.classify(long) == "NoAnswerFromHost")
        let late = "550 " + String(repeating: "x", count: 600) + " user unknown"
        #expect(Self.builtin.classify(late) == "Uncategorized")
    }

    @Test func answersAreRememberedAndTheMemoryIsBounded() throws {
        let c = try BounceClassifier(rules: [BounceRule(bounceClass: "A", replies: ["^5"])])
        for i in 0..<(BounceClassifier.rememberedLimit * 2 + 10) {
            #expect(c.classify("5\(i) x") == "A")
        }
        #expect(c.classify("451 x") == "Uncategorized")
        #expect(throws: BounceClassifier.BadPattern.self) { try BounceClassifier(rules: [BounceRule(bounceClass: "A", replies: ["ok", "(bad"])]) }
    }
}
