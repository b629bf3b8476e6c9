// BounceConfig.swift: [bounce] and its [[bounce.rule]] tables, the rules that give each failure reply
// a class (MailQueue's BounceClass.swift), and the built-in set from etc/bounce-classes.toml.
//
//   [bounce]
//   builtin_rules = true          # false: only the rules below
//   [[bounce.rule]]
//   class = "SpamBlock"           # a name: letters and digits, KumoMTA's or your own
//   reply = ["blocked by example-rbl"]   # regular expressions (one string or a list)

import MailQueue
import TOMLKit

public struct BounceConfig: Equatable, Sendable {
    /// The config's own rules, tried before the built-in ones.
    public var rules: [BounceRule] = []
    /// The built-in rules (etc/bounce-classes.toml) after the config's.
    public var builtinRules = true

    public init() {}

    /// The rules in the order they are tried.
    public var effectiveRules: [BounceRule] {
        rules + (builtinRules ? Self.builtin : [])
    }

    /// The rules of etc/bounce-classes.toml, embedded.
    public static let builtin: [BounceRule] = {
        // The embedded text is checked by the tests; a failure here is a build with a broken file.
        do {
            let document = try TOMLTable(string: DefaultBounceClasses.text)
            var root = TableReader(document, path: [], context: ParseContext(text: DefaultBounceClasses.text,
                                                                             source: "<built-in bounce-classes.toml>"))
            guard let bounce = try root.read("bounce", Decode.table) else { return [] }
            var reader = TableReader(bounce, path: ["bounce"], context: root.context)
            return try readRules(&reader)
        } catch {
            fatalError("the built-in bounce classes do not load: \(error)")
        }
    }()

    /// A class name: what logs, events, metrics labels and suppression rules carry.
    static func isClassName(_ text: String) -> Bool {
        (1...64).contains(text.utf8.count) && text.utf8.allSatisfy {
            ($0 >= 48 && $0 <= 57) || ($0 >= 65 && $0 <= 90) || ($0 >= 97 && $0 <= 122) || $0 == 95
        }
    }

    /// [[bounce.rule]] tables: class and reply (a regular expression or a list of them).
    static func readRules(_ reader: inout TableReader) throws -> [BounceRule] {
        guard let tables = try reader.read("rule", Decode.tables("bounce.rule")) else { return [] }
        var rules: [BounceRule] = []
        for (index, table) in tables.enumerated() {
            var r = TableReader(table, path: reader.path + ["rule[\(index)]"], context: reader.context)
            guard let name = try r.read("class", Decode.string) else {
                throw r.error("class", "is required: the class the rule gives, e.g. \"SpamBlock\"")
            }
            try r.check("class", isClassName(name),
                        "\"\(name)\" is not a class name (1-64 letters, digits or '_', e.g. \"InvalidRecipient\")")
            let replies = try r.read("reply") { value -> [String] in
                if value.string != nil { return [try Decode.regex(value)] }
                return try Decode.list { text in try Decode.regex(text) }(value)
            }
            guard let replies, !replies.isEmpty else {
                throw r.error("reply", "is required: a regular expression over \"code enhanced text\", or a list of them")
            }
            try r.rejectUnknownKeys()
            rules.append(BounceRule(bounceClass: name, replies: replies))
        }
        return rules
    }
}

/// [suppression]: which hard bounces put their recipient on the suppression list.
public struct SuppressionConfig: Equatable, Sendable {
    /// A recipient that bounces (permanently) with one of these classes is suppressed for every sender.
    public var autoClasses: [String] = ["InvalidRecipient", "BadDomain"]

    public init() {}
}

extension TernConfig {
    static func readSuppression(_ config: inout TernConfig, _ reader: inout TableReader) throws {
        try reader.read("auto_classes", into: &config.suppression.autoClasses, Decode.list { name in
            guard BounceConfig.isClassName(name) else {
                throw ConfigError(message: "\"\(name)\" is not a class name (1-64 letters, digits or '_')")
            }
            return name
        })
    }

    func renderSuppression(_ out: inout TOMLWriter) {
        out.table("suppression")
        out.key("auto_classes", strings: suppression.autoClasses)
    }

    static func readBounce(_ config: inout TernConfig, _ reader: inout TableReader) throws {
        try reader.read("builtin_rules", into: &config.bounce.builtinRules, Decode.bool)
        config.bounce.rules = try BounceConfig.readRules(&reader)
    }

    /// The classifier of this config's rules (their patterns were checked when the config was read).
    public func bounceClassifier() -> BounceClassifier {
        do {
            return try BounceClassifier(rules: bounce.effectiveRules)
        } catch {
            fatalError("bounce rules that were checked do not compile: \(error)")
        }
    }

    func renderBounce(_ out: inout TOMLWriter) {
        out.table("bounce")
        out.key("builtin_rules", bounce.builtinRules)
        for rule in bounce.rules {
            out.arrayTable("bounce.rule")
            out.key("class", string: rule.bounceClass)
            out.key("reply", strings: rule.replies)
        }
    }
}
