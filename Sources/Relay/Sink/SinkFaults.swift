// Fault injection for `tern sink`: rules, magic recipients and the hooks that apply them to one
// session. Pure: no I/O, no clock; randomness comes from a seeded generator so a test run can be
// repeated exactly (`--seed`).
//
// A rule names a stage, a fraction, and what happens there: a 4xx/5xx reply, a delay (fixed or
// a random range), or (at DATA) a connection dropped once message data arrives. The fraction is a
// coin tossed per command, per transaction (once at MAIL) or per session (once at connect).
// Magic recipients let one message ask for a behaviour: rcpt-NNN, data-NNN, delay-MS, drop.

import Randomness
import SMTPProtocol

// MARK: - Random numbers

// MARK: - Delays

/// A fixed delay ("250ms") or a uniform random one in a range ("100ms..2s"), in milliseconds.
public struct DelaySpec: Sendable, Equatable {
    public var low: Int
    public var high: Int

    public init(low: Int, high: Int) {
        self.low = low
        self.high = high
    }

    public static func parse(_ text: String) throws -> DelaySpec {
        var parts = [text]
        if let dots = text.firstRange(of: "..") {
            parts = [String(text[..<dots.lowerBound]), String(text[dots.upperBound...])]
        }
        let bounds = try parts.map { part -> Int in
            let seconds = try parseDuration(part)
            guard seconds <= 3600 else { throw ConfigError(message: "\"\(part)\" is longer than an hour") }
            return Int((seconds * 1000).rounded())
        }
        let spec = DelaySpec(low: bounds[0], high: bounds.last!)
        guard spec.low <= spec.high else { throw ConfigError(message: "range \"\(text)\" runs backwards") }
        return spec
    }

    func pick(_ rng: inout SplitMix64) -> Int {
        low == high ? low : low + Int(rng.next() % UInt64(high - low + 1))
    }
}

// MARK: - Rules

public struct FaultRule: Sendable, Equatable {
    /// Where the rule acts: a session stage, or every reply (a tarpit).
    public enum Stage: String, Sendable, CaseIterable {
        case greeting, mail, rcpt, data, dot, all
        var sessionStage: SessionStage? { SessionStage(rawValue: rawValue) }
    }
    /// How often the coin is tossed.
    public enum Scope: String, Sendable, CaseIterable { case command, transaction, session }

    public var stage: Stage
    public var fraction: Double = 1
    public var per: Scope = .command
    /// A 4xx or 5xx reply (2xx allowed at RCPT).
    public var reply: Int?
    public var dropInData = false
    public var delay: DelaySpec?
    /// Glob on the recipient address ("*@slow.test"); rcpt, data and dot only.
    public var recipient: String?
    /// Only sessions on this listener ("127.0.0.1:2526"); nil: every listener.
    public var listen: String?

    public init(stage: Stage) { self.stage = stage }

    /// A rule from key/value fields, the same for a `[[sink.fault]]` table and a `--fault` flag.
    /// `error(key, message)` builds the error that names the key where the user wrote it.
    static func make(_ fields: [String: FieldValue], error: (String, String) -> ConfigError) throws -> FaultRule {
        let known = ["stage", "fraction", "per", "reply", "drop", "delay", "recipient", "listen"]
        if let unknown = fields.keys.sorted().first(where: { !known.contains($0) }) {
            throw error(unknown, "unknown fault key \(unknown) (known: \(known.joined(separator: ", ")))")
        }
        func string(_ key: String) throws -> String? {
            switch fields[key] {
            case nil: return nil
            case .string(let s): return s
            // `delay = 2` and `--fault delay=2`: whole seconds, as durations elsewhere.
            case .number(let n) where n >= 0 && n == n.rounded() && n < 1e9: return String(Int(n))
            default: throw error(key, "expected a string")
            }
        }
        guard let stageName = try string("stage") else {
            throw error("stage", "missing; one of \(Stage.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        guard let stage = Stage(rawValue: stageName.lowercased()) else {
            throw error("stage", "\"\(stageName)\" is not one of \(Stage.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        var rule = FaultRule(stage: stage)
        if let value = fields["fraction"] {
            guard let f = value.number, f >= 0, f <= 1 else { throw error("fraction", "expected a number from 0 to 1") }
            rule.fraction = f
        }
        if let per = try string("per") {
            guard let scope = Scope(rawValue: per.lowercased()) else {
                throw error("per", "\"\(per)\" is not one of command, transaction, session")
            }
            rule.per = scope
        }
        if let value = fields["reply"] {
            guard let n = value.number, n == n.rounded(), let code = Int(exactly: n) else {
                throw error("reply", "expected a reply code such as 451 or 550")
            }
            // At RCPT also the positive replies RFC 5321 §4.3.2 gives it (as the magic rcpt-NNN).
            let positive = stage == .rcpt && (code == 250 || code == 251)
            guard positive || (400...599).contains(code) else {
                throw error("reply", "\(code) is not a \(stage == .rcpt ? "250, 251, 4xx or 5xx" : "4xx or 5xx") reply code")
            }
            rule.reply = code
        }
        if let value = fields["drop"] {
            guard case .bool(let b) = value else { throw error("drop", "expected true or false") }
            rule.dropInData = b
        }
        if let text = try string("delay") {
            do { rule.delay = try DelaySpec.parse(text) } catch let e as ConfigError { throw error("delay", e.message) }
        }
        rule.recipient = try string("recipient")?.lowercased()
        if let listen = try string("listen") {
            do { _ = try ListenAddress(parsing: listen) } catch let e as ConfigError { throw error("listen", e.message) }
            rule.listen = listen
        }
        // Combinations that could never do what they say.
        if rule.reply == nil && !rule.dropInData && rule.delay == nil {
            throw error("stage", "a fault needs reply, drop or delay")
        }
        if rule.dropInData && stage != .data { throw error("drop", "only at stage = \"data\"") }
        if rule.dropInData && rule.reply != nil { throw error("drop", "cannot be combined with reply") }
        if stage == .all && rule.reply != nil { throw error("reply", "stage = \"all\" (tarpit) takes only a delay") }
        if rule.recipient != nil && ![.rcpt, .data, .dot].contains(stage) {
            throw error("recipient", "only at stages rcpt, data and dot (no recipient is known before)")
        }
        if (stage == .greeting || stage == .all) && rule.per == .transaction {
            throw error("per", "\"transaction\" does not apply to stage \(stage.rawValue)")
        }
        return rule
    }

    /// "stage=rcpt,fraction=0.1,reply=451,recipient=*@slow.test": the `--fault` flag.
    public static func parse(flag text: String) throws -> FaultRule {
        var fields: [String: FieldValue] = [:]
        for item in text.split(separator: ",", omittingEmptySubsequences: true) {
            guard let eq = item.firstIndex(of: "=") else {
                throw ConfigError(key: "--fault", message: "\"\(item)\" is not key=value")
            }
            let key = item[..<eq].trimmingSpaces.lowercased()
            let value = item[item.index(after: eq)...].trimmingSpaces
            if let n = Double(value) {
                fields[key] = .number(n)
            } else if value == "true" || value == "false" {
                fields[key] = .bool(value == "true")
            } else {
                fields[key] = .string(value)
            }
        }
        return try make(fields) { key, message in ConfigError(key: "--fault \(key)", message: message) }
    }

    func matches(_ recipients: [String]) -> Bool {
        guard let pattern = recipient else { return true }
        return recipients.contains { globMatch(pattern, $0.lowercased()) }
    }

    func applies(toListener address: String) -> Bool {
        guard let listen else { return true }
        return (try? ListenAddress(parsing: listen)) == (try? ListenAddress(parsing: address))
    }
}

/// A value of a fault field, whichever syntax it came from.
enum FieldValue: Equatable {
    case string(String)
    case number(Double)
    case bool(Bool)
    var number: Double? { if case .number(let n) = self { return n } else { return nil } }
}

extension Substring {
    var trimmingSpaces: String {
        String(drop(while: { $0 == " " }).reversed().drop(while: { $0 == " " }).reversed())
    }
}

/// Shell-style glob: `*` any run of characters, `?` any one character. Iterative, no backtracking blow-up.
func globMatch(_ pattern: String, _ text: String) -> Bool {
    let p = Array(pattern.utf8), t = Array(text.utf8)
    var i = 0, j = 0, star = -1, mark = 0
    while j < t.count {
        if i < p.count && (p[i] == UInt8(ascii: "?") || p[i] == t[j]) {
            i += 1; j += 1
        } else if i < p.count && p[i] == UInt8(ascii: "*") {
            star = i; mark = j; i += 1
        } else if star >= 0 {
            i = star + 1; mark += 1; j = mark
        } else {
            return false
        }
    }
    while i < p.count && p[i] == UInt8(ascii: "*") { i += 1 }
    return i == p.count
}

// MARK: - Magic recipients

/// A recipient whose local part asks for a behaviour. Any domain.
public enum MagicRecipient: Equatable, Sendable {
    /// rcpt-NNN: answered NNN at RCPT.
    case rcpt(Int)
    /// data-NNN: the end of DATA is answered NNN.
    case data(Int)
    /// delay-MS: the RCPT reply is held MS milliseconds.
    case delay(Int)
    /// drop: the connection is closed in the middle of DATA.
    case drop

    /// Longest delay a magic recipient may ask for (10 minutes, twice RFC 5321's 5-minute RCPT
    /// timeout: enough to make any client time out).
    static let maxDelay = 600_000

    /// A magic recipient, or nil for an ordinary one (including one that only looks magic but asks
    /// for something out of range: see `refusal(address:)`).
    public init?(address: String) {
        guard case .magic(let m)? = Self.read(address) else { return nil }
        self = m
    }

    /// The RCPT reply for a recipient that looks magic (rcpt-, data- or delay- and digits) but asks
    /// for something out of range, such as rcpt-999, rcpt-200 or delay-99999999: 553 5.1.3, the
    /// mailbox name is not allowed (RFC 5321 §4.2.2; RFC 3463 X.1.3, bad destination mailbox
    /// address syntax), saying what the range is. Nil for any other recipient.
    public static func refusal(address: String) -> Reply? {
        guard case .outOfRange(let why)? = read(address) else { return nil }
        return Reply(553, "5.1.3", why)
    }

    enum Reading {
        case magic(MagicRecipient)
        case outOfRange(String)
    }

    /// nil: an ordinary recipient.
    static func read(_ address: String) -> Reading? {
        let local = address.split(separator: "@", maxSplits: 1).first.map { $0.lowercased() } ?? ""
        if local == "drop" { return .magic(.drop) }
        for prefix in ["rcpt-", "data-", "delay-"] where local.hasPrefix(prefix) {
            let digits = local.dropFirst(prefix.count)
            guard !digits.isEmpty, digits.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }) else { return nil }
            // Too many digits for an Int is out of range as well.
            let n = digits.count <= 9 ? Int(digits)! : Int.max
            switch prefix {
            case "rcpt-":
                if n == 250 || n == 251 || (400...599).contains(n) { return .magic(.rcpt(n)) }
                return .outOfRange("\(local): a magic rcpt- code is 250, 251 or 400 to 599")
            case "data-":
                if n == 250 || (400...599).contains(n) { return .magic(.data(n)) }
                return .outOfRange("\(local): a magic data- code is 250 or 400 to 599")
            default:
                if n <= maxDelay { return .magic(.delay(n)) }
                return .outOfRange("\(local): a magic delay- is 0 to \(maxDelay) milliseconds")
            }
        }
        return nil
    }
}

// MARK: - Reply texts

/// The reply for an injected code at a stage, with an enhanced status code (RFC 3463) that says
/// what such a reply usually means there. The greeting carries none (RFC 2034 §3).
public func faultReply(_ code: Int, at stage: SessionStage) -> Reply {
    let cls = code / 100
    let text = "tern sink: \(code) injected at \(stage.rawValue)"
    if stage == .greeting { return Reply(code, nil, text) }
    let detail: String
    switch (code, stage) {
    case (421, _): detail = "3.2"                       // system not accepting messages
    case (_, .rcpt) where cls == 2: detail = "1.5"      // destination address valid
    case (_, .dot) where cls == 2: detail = "0.0"
    case (450, .rcpt), (550, .rcpt): detail = code == 550 ? "1.1" : "2.1"  // no such user / mailbox disabled
    case (451, _): detail = "3.0"                       // other mail system status
    case (452, .rcpt): detail = "5.3"                   // too many recipients
    case (452, _), (552, .dot): detail = code == 452 ? "3.1" : "3.4"  // storage / message too big
    case (552, _): detail = "2.2"                       // mailbox full
    case (551, _): detail = "1.6"                       // mailbox has moved
    case (553, _): detail = stage == .mail ? "1.7" : "1.3"  // bad sender / bad destination syntax
    case (554, .dot): detail = "6.0"                    // content refused
    case (_, .mail): detail = "1.0"                     // sender address status
    case (_, .rcpt): detail = "1.0"
    case (_, .data), (_, .dot): detail = "3.0"
    default: detail = "0.0"
    }
    return Reply(code, "\(cls).\(detail)", text)
}

// MARK: - The hooks of one session

/// Which kind of fault was injected, for the counters.
public enum FaultKind: String, Sendable, CaseIterable {
    case reply, delay, drop
}

/// Applies the rules of one listener and the magic recipients to one session.
public struct SinkFaultHooks: SessionHooks {
    let rules: [FaultRule]
    let magic: Bool
    var rng: SplitMix64
    /// Per rule: the session's coin (tossed at connect) and the transaction's (tossed at MAIL).
    var sessionCoins: [Bool]
    var transactionCoins: [Bool]
    /// Called for every fault injected (the sink counts them).
    let record: (SessionStage?, FaultKind) -> Void
    let tarpit: [Int]

    public init(rules: [FaultRule], magic: Bool, seed: UInt64, record: @escaping (SessionStage?, FaultKind) -> Void) {
        self.rules = rules
        self.magic = magic
        self.record = record
        rng = SplitMix64(seed: seed)
        tarpit = rules.indices.filter { rules[$0].stage == .all }
        sessionCoins = []
        transactionCoins = Array(repeating: false, count: rules.count)
        sessionCoins = rules.map { $0.per == .session ? rng.unit() < $0.fraction : false }
    }

    public mutating func transactionStarted() {
        for i in rules.indices where rules[i].per == .transaction {
            transactionCoins[i] = rng.unit() < rules[i].fraction
        }
    }

    mutating func fires(_ i: Int) -> Bool {
        switch rules[i].per {
        case .session: return sessionCoins[i]
        case .transaction: return transactionCoins[i]
        case .command: return rules[i].fraction >= 1 || rng.unit() < rules[i].fraction
        }
    }

    public mutating func verdict(at stage: SessionStage, sender: MailPath?, recipients: [String]) -> StageVerdict {
        var verdict = StageVerdict()
        // A recipient that asks for what the sink cannot do is refused, not taken as ordinary: the
        // test that sent it would pass for the wrong reason. Bad input, not a fault: not counted.
        if magic && stage == .rcpt, let refusal = recipients.lazy.compactMap(MagicRecipient.refusal).first {
            return StageVerdict(reply: refusal)
        }
        if magic && stage != .greeting && stage != .mail {
            for address in recipients {
                guard let m = MagicRecipient(address: address) else { continue }
                switch (m, stage) {
                case (.rcpt(let code), .rcpt):
                    verdict.reply = faultReply(code, at: .rcpt)
                case (.delay(let ms), .rcpt):
                    verdict.delayMilliseconds += ms
                case (.data(let code), .dot) where verdict.reply == nil && code >= 400:
                    verdict.reply = faultReply(code, at: .dot)
                case (.drop, .data):
                    verdict.dropInData = true
                default:
                    break
                }
            }
        }
        for i in rules.indices {
            let rule = rules[i]
            guard rule.stage.sessionStage == stage, rule.matches(recipients), fires(i) else { continue }
            if let delay = rule.delay { verdict.delayMilliseconds += delay.pick(&rng) }
            if let code = rule.reply, verdict.reply == nil { verdict.reply = faultReply(code, at: stage) }
            if rule.dropInData { verdict.dropInData = true }
        }
        if verdict.dropInData { verdict.reply = nil }
        if verdict.reply != nil { record(stage, .reply) }
        if verdict.dropInData { record(stage, .drop) }
        if verdict.delayMilliseconds > 0 { record(stage, .delay) }
        return verdict
    }

    public mutating func replyDelay() -> Int {
        var total = 0
        for i in tarpit where fires(i) { total += rules[i].delay?.pick(&rng) ?? 0 }
        if total > 0 { record(nil, .delay) }
        return total
    }
}
