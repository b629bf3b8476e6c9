import Logging
import Randomness
import Testing
@testable import Relay

/// The byte renderer (LogLine.swift) against the String renderer it replaced (StringLogRenderer):
/// the same bytes for generated events of every kind, in both formats.
@Suite struct LogLineTests {
    /// Seeded, so that a failure repeats.
    typealias Dice = SplitMix64

    static let queueIDs = ["0661312EF1B4A7", "0661312EF1B4A8", "FFFFFFFFFFFFFF", "00000000000000"]

    /// Pieces a message is made of: words, control characters, JSON's special characters, UTF-8 of
    /// one to four bytes, combining marks, C1 controls and invisible formatting.
    static let pieces = ["to=<bob@example.net>", " ", ", ", "status=sent", "x", "\0", "\t", "\n", "\r\n", "\u{1}",
                         "\u{1F}", "\u{7F}", "\"", "\\", "é", "e\u{301}", "\u{301}", "日本", "👍🏽", "🇫🇷", "\u{200D}",
                         "0661312EF1B4A7", ": ", "qid", "{}", "[1,2]", "\u{80}", "\u{FFFF}", "ß",
                         "\u{9B}", "\u{9F}", "\u{A0}", "\u{AD}", "\u{202E}", "\u{2028}", "\u{FEFF}", "\u{E0067}"]

    static func message(_ dice: inout Dice) -> String {
        var text = ""
        switch Int.random(in: 0..<10, using: &dice) {
        case 0...3: text = queueIDs.randomElement(using: &dice)! + ": "  // a delivery line's "ID: "
        case 4: text = "0661312ef1b4a7: "  // lowercase: not a queue id
        case 5: text = "0661312EF1B4A: "  // 13 digits
        case 6: text = "0661312EF1B4A7:" // no space
        case 7: text = queueIDs[0] + ": " + ["\u{301}", "\u{200D}", "é", "\u{7F}"].randomElement(using: &dice)!
        default: break
        }
        for _ in 0..<Int.random(in: 0..<8, using: &dice) { text += pieces.randomElement(using: &dice)! }
        return text
    }

    static let keys = ["session", "qid", "ts", "level", "msg", "a", "b", "zeta", "Z", "é", "e\u{301}", "key with space",
                       "k\n", "\"q\"", "10", "9", "日"]

    static func value(_ dice: inout Dice, depth: Int = 0) -> Logger.MetadataValue {
        switch Int.random(in: 0..<(depth < 2 ? 7 : 4), using: &dice) {
        case 0, 1: return .string(message(&dice))
        case 2: return .stringConvertible(Int.random(in: -5...100_000, using: &dice))
        case 3: return .string(queueIDs.randomElement(using: &dice)!)
        case 4: return .stringConvertible(queueIDs.randomElement(using: &dice)!)
        case 5: return .array((0..<Int.random(in: 0..<3, using: &dice)).map { _ in value(&dice, depth: depth + 1) })
        default:
            var d: [String: Logger.MetadataValue] = [:]
            for _ in 0..<Int.random(in: 0..<3, using: &dice) {
                d[keys.randomElement(using: &dice)!] = value(&dice, depth: depth + 1)
            }
            return .dictionary(d)
        }
    }

    static func metadata(_ dice: inout Dice, upTo count: Int) -> Logger.Metadata {
        var m: Logger.Metadata = [:]
        for _ in 0..<Int.random(in: 0...count, using: &dice) { m[keys.randomElement(using: &dice)!] = value(&dice) }
        return m
    }

    /// Around the boundaries of a second, a day, a year, a leap day, year 10000, and before 1970.
    static let seconds = [0, -1, 59, 86_399, 86_400, 1_795_711_574, 1_798_761_599, 1_798_761_600, 1_709_164_799,
                          1_709_164_800, 951_868_799, 253_402_300_799, 253_402_300_800, -62_135_596_800]

    static func time(_ dice: inout Dice) -> (seconds: Int, millis: Int) {
        let base = Int.random(in: 0..<3, using: &dice) == 0
            ? Int.random(in: 0...4_102_444_800, using: &dice)
            : seconds.randomElement(using: &dice)! + Int.random(in: -1...1, using: &dice)
        let millis = [0, 999, 1, 10, 100].randomElement(using: &dice)!
        return (base, Int.random(in: 0..<2, using: &dice) == 0 ? millis : Int.random(in: 0...999, using: &dice))
    }

    @Test(arguments: LogFormat.allCases)
    func sameBytesAsTheStringRenderer(_ format: LogFormat) {
        var dice = Dice(seed: format == .plain ? 1 : 2)
        var clock = LogClock()  // kept across lines, as LogBuffer keeps it
        var mismatches = 0
        for _ in 0..<20_000 {
            let time = Self.time(&dice)
            let level = Logger.Level.allCases.randomElement(using: &dice)!
            let message = Self.message(&dice)
            // The handler's metadata (often none) and the event's (often none or one key).
            let handler = Int.random(in: 0..<3, using: &dice) == 0 ? Self.metadata(&dice, upTo: 3) : [:]
            var extra: Logger.Metadata? = Int.random(in: 0..<4, using: &dice) == 0 ? nil : Self.metadata(&dice, upTo: 4)
            if Int.random(in: 0..<3, using: &dice) == 0 {
                // The session lines: a session id and the message's own queue id.
                extra = ["session": "\(Int.random(in: 1...999, using: &dice))",
                         "qid": .string(Self.queueIDs.randomElement(using: &dice)!)]
            }
            var merged = handler
            if let extra { merged.merge(extra) { _, new in new } }
            let expected = StringLogRenderer.render(format: format, time: time, level: level, message: message, metadata: merged)
            var bytes: [UInt8] = []
            TernLogHandler.appendLine(to: &bytes, clock: &clock, format: format, time: time, level: level, message: message,
                                      metadata: handler, extra: extra)
            if bytes != Array(expected.utf8) {
                mismatches += 1
                if mismatches <= 5 {
                    let got = String(decoding: bytes, as: UTF8.self)
                    let event = "\(format) \(time) \(message.debugDescription) \(handler) \(String(describing: extra))"
                    Issue.record(Comment(rawValue: "\(event):\nwant \(expected.debugDescription)\ngot  \(got.debugDescription)"))
                }
            }
        }
        #expect(mismatches == 0)
    }

    @Test func everyMillisecondAndTheSecondsAroundBoundaries() {
        var clock = LogClock()
        for second in Self.seconds {
            for s in (second - 1)...(second + 1) {
                for millis in 0...999 {
                    var bytes: [UInt8] = []
                    clock.append((s, millis), to: &bytes)
                    #expect(bytes == Array(StringLogRenderer.timestamp((s, millis)).utf8))
                }
            }
        }
    }

    @Test func aLineAppendsToWhatIsAlreadyThere() {
        var clock = LogClock()
        var bytes = Array("earlier line\n".utf8)
        TernLogHandler.appendLine(to: &bytes, clock: &clock, format: .plain, time: (1_795_711_574, 7), level: .info,
                                  message: "0661312EF1B4A7: removed", metadata: ["session": "4"], extra: nil)
        #expect(String(decoding: bytes, as: UTF8.self)
                == "earlier line\n2026-11-26T16:46:14.007Z info 0661312EF1B4A7: removed session=4\n")
    }

    /// InboundSession's lines: "session" set once on its logger and no "qid" for a message that starts
    /// with "<qid>: " give the line the old renderer made from both as event metadata.
    @Test(arguments: LogFormat.allCases)
    func sessionLinesNeedNeitherDictionary(_ format: LogFormat) {
        let id = "0661312EF1B4A7"
        for message in ["\(id): client=unknown[127.0.0.1], helo=<x>", "\(id): to=<b@x.test>", "\(id): queued as \(id), size=9, nrcpt=1",
                        "\(id): \u{301}combining", "\(id): "] {
            let before = StringLogRenderer.render(format: format, time: (1_795_711_574, 7), level: .info, message: message,
                                                  metadata: ["session": "12", "qid": .string(id)])
            var clock = LogClock()
            var after: [UInt8] = []
            TernLogHandler.appendLine(to: &after, clock: &clock, format: format, time: (1_795_711_574, 7), level: .info,
                                      message: message, metadata: ["session": "12"], extra: nil)
            #expect(String(decoding: after, as: UTF8.self) == before)
        }
    }

    @Test(arguments: [("0661312EF1B4A7: x", "0661312EF1B4A7", true), ("0661312EF1B4A7: ", "0661312EF1B4A7", true),
                      ("0661312EF1B4A7: x", "0661312EF1B4A8", false), ("0661312EF1B4A7:x", "0661312EF1B4A7", false),
                      ("0661312EF1B4A70: x", "0661312EF1B4A70", false), ("0661312ef1b4a7: x", "0661312ef1b4a7", false),
                      ("connect from x", "0661312EF1B4A7", false)])
    func startsWithQueueID(_ message: String, _ id: String, _ starts: Bool) {
        #expect(TernLogHandler.startsWithQueueID(message, id) == starts)
        // True only where the handler finds that same id in the prefix.
        if starts { #expect(TernLogHandler.leadingQueueID(message) == id) }
    }
}
