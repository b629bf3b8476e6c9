// Bounce classification: each failure reply gets a class, in KumoMTA's names (InvalidRecipient,
// BadDomain, QuotaIssues, SpamBlock, …), so that logs, events, suppression and metrics can say what
// kind of failure it was without every reader parsing reply texts.
//
// A rule is a class and regular expressions over the reply as the log shows it: "code enhanced text"
// ("550 5.1.1 user unknown"), case-insensitive. Rules are tried in order and the first match wins:
// the config's own rules ([[bounce.rule]]) before the default set (etc/bounce-classes.toml, embedded).
// A reply no rule matches is Uncategorized. Classes are names, not an enum: a config may add its own,
// and they stay a bounded label set for metrics because only configured names can appear.
//
// Classifying runs a few dozen regular expressions, so the answers are remembered by reply text
// (replies repeat: a provider's deferral text is the same for every message); the memory is bounded
// and starts over when full. Only a reply's first `maxReplyBytes` are looked at: a next hop may send
// 400 KiB of reply lines, and a pattern like "connect to .*refused" is quadratic over what it reads.

/// One rule: the class and its patterns (any may match).
public struct BounceRule: Sendable, Equatable {
    public var bounceClass: String
    public var replies: [String]

    public init(bounceClass: String, replies: [String]) {
        self.bounceClass = bounceClass
        self.replies = replies
    }
}

/// What the classifier says for a reply nothing matched, for an expired message and for a message the
/// postmaster returned.
public enum BounceClassName {
    public static let uncategorized = "Uncategorized"
    public static let messageExpired = "MessageExpired"
    public static let adminBounce = "AdminBounce"
}

public final class BounceClassifier: @unchecked Sendable {
    // @unchecked: the rules are immutable after init; `remembered` is changed only by the loop thread
    // that owns the delivery core (the only caller of classify).
    public let rules: [BounceRule]
    private let compiled: [(bounceClass: String, pattern: Regex<AnyRegexOutput>)]
    private var remembered: [String: String] = [:]
    static let rememberedLimit = 4096
    /// What of a reply the rules see (and the memory keeps): its start, where the code and the
    /// reason are.
    public static let maxReplyBytes = 512

    /// A pattern that does not compile names its rule and pattern by index: "rule[3].reply[1]".
    public struct BadPattern: Error, Equatable {
        public var rule: Int
        public var reply: Int
        public var message: String
    }

    public init(rules: [BounceRule]) throws(BadPattern) {
        self.rules = rules
        var compiled: [(String, Regex<AnyRegexOutput>)] = []
        for (i, rule) in rules.enumerated() {
            for (j, text) in rule.replies.enumerated() {
                do {
                    compiled.append((rule.bounceClass, try Regex(text).ignoresCase()))
                } catch {
                    throw BadPattern(rule: i, reply: j, message: "\(error)")
                }
            }
        }
        self.compiled = compiled
    }

    /// The class of a failure reply, "code enhanced text" (NextHop's RecipientResult.reply).
    public func classify(_ reply: String) -> String {
        let reply = reply.utf8.count <= Self.maxReplyBytes
            ? reply : String(decoding: reply.utf8.prefix(Self.maxReplyBytes), as: UTF8.self)
        if let known = remembered[reply] { return known }
        var found = BounceClassName.uncategorized
        for rule in compiled where reply.contains(rule.pattern) {
            found = rule.bounceClass
            break
        }
        if remembered.count >= Self.rememberedLimit { remembered.removeAll(keepingCapacity: true) }
        remembered[reply] = found
        return found
    }

    /// Every class a rule can give, and Uncategorized, MessageExpired and AdminBounce: the label set.
    public var classNames: [String] {
        var seen: [String] = []
        for name in rules.map(\.bounceClass) + [BounceClassName.uncategorized, BounceClassName.messageExpired,
                                                 BounceClassName.adminBounce] where !seen.contains(name) {
            seen.append(name)
        }
        return seen
    }
}

extension BounceClassifier: Equatable {
    public static func == (a: BounceClassifier, b: BounceClassifier) -> Bool { a.rules == b.rules }
}
