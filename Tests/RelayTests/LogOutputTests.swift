import Foundation  // NSLock
import Logging
import Testing
@testable import Relay

@Suite struct LogOutputTests {
    static let time = (seconds: 1_795_711_574, millis: 7)

    @Test func plainKeepsTheMessageAndAppendsMetadata() {
        let line = TernLogHandler.render(format: .plain, time: Self.time, level: .info,
                                         message: "0661312EF1B4A7: to=<b@x.test>, status=sent",
                                         metadata: ["qid": "0661312EF1B4A7", "session": "12"])
        #expect(line == "2026-11-26T16:46:14.007Z info 0661312EF1B4A7: to=<b@x.test>, status=sent session=12\n")
    }

    @Test func plainAddsTheQueueIDWhenTheMessageLacksIt() {
        let line = TernLogHandler.render(format: .plain, time: Self.time, level: .warning, message: "hello",
                                         metadata: ["qid": "0661312EF1B4A7"])
        #expect(line == "2026-11-26T16:46:14.007Z warning 0661312EF1B4A7: hello\n")
    }

    @Test func plainKeepsOneEventOnOneLine() {
        let line = TernLogHandler.render(format: .plain, time: Self.time, level: .error, message: "bad\r\nreply\u{1}",
                                         metadata: ["why": "a\nb"])
        #expect(line == "2026-11-26T16:46:14.007Z error bad??reply? why=a?b\n")
    }

    /// C1 controls (0x9B is a terminal's CSI), line and paragraph separators, bidi overrides and
    /// isolates, zero-width characters, a BOM and a 4-byte tag character are "?" too (issue 14); other
    /// UTF-8 of 2, 3 and 4 bytes stays, a combining mark included.
    @Test func plainShowsNoInvisibleCharacters() {
        let line = TernLogHandler.render(format: .plain, time: Self.time, level: .error,
                                         message: "a\u{9B}2Jb\u{85}c\u{2028}d\u{2029}e\u{202E}gpj.exe\u{2066}f\u{200B}\u{200F}\u{FEFF}g\u{AD}\u{E0041}",
                                         metadata: ["why": "é\u{202D}日\u{200D}👍🏽e\u{301}\u{80}\u{9F}\u{A0}ß"])
        #expect(line == "2026-11-26T16:46:14.007Z error a?2Jb?c?d?e?gpj.exe?f???g?? why=é?日?👍🏽e\u{301}??\u{A0}ß\n")
    }

    /// JSON keeps the text (a parser gets it back) but shows C1 controls and invisible formatting escaped
    /// to whoever reads the line on a terminal (issue 14); other UTF-8 stays.
    @Test func jsonEscapesInvisibleCharacters() {
        let line = TernLogHandler.render(format: .json, time: Self.time, level: .info,
                                         message: "a\u{9B}2J\u{2028}\u{202E}gpj.exe\u{FEFF}é日👍🏽\u{A0}",
                                         metadata: ["tag": "\u{E0041}\u{200B}\u{85}"])
        #expect(line == "{\"ts\":\"2026-11-26T16:46:14.007Z\",\"level\":\"info\",\"msg\":\"a\\u009B2J\\u2028\\u202Egpj.exe\\uFEFFé日👍🏽\u{A0}\","
                + "\"tag\":\"\\uDB40\\uDC41\\u200B\\u0085\"}\n")
    }

    @Test func jsonTakesTheQueueIDFromThePrefix() {
        // Lines written as "ID: ..." without metadata (the delivery lines) get their qid all the same.
        let line = TernLogHandler.render(format: .json, time: Self.time, level: .info,
                                         message: "0661312EF1B4A7: removed", metadata: [:])
        #expect(line == "{\"ts\":\"2026-11-26T16:46:14.007Z\",\"level\":\"info\",\"qid\":\"0661312EF1B4A7\",\"msg\":\"removed\"}\n")
    }

    @Test func jsonEscapesAndNests() {
        let line = TernLogHandler.render(format: .json, time: Self.time, level: .error,
                                         message: "say \"hi\"\\\n\u{1}", metadata: ["list": .array(["a", "b"]),
                                                                                  "session": "3"])
        #expect(line == "{\"ts\":\"2026-11-26T16:46:14.007Z\",\"level\":\"error\",\"msg\":\"say \\\"hi\\\"\\\\\\n\\u0001\","
                + "\"list\":[\"a\",\"b\"],\"session\":\"3\"}\n")
    }

    @Test(arguments: [("0661312EF1B4A7: x", "0661312EF1B4A7"), ("0661312EF1B4A7:x", nil), ("0661312ef1b4a7: x", nil),
                      ("connect from x", nil), ("0661312EF1B4A: x", nil)])
    func queueIDPrefix(_ message: String, _ id: String?) {
        #expect(TernLogHandler.leadingQueueID(message) == id)
    }

    @Test func loggerFiltersByLevelAndMergesMetadata() {
        let lines = LockedLines()
        var logger = Logger(label: "t") { _ in TernLogHandler(format: .json, level: .info, sink: { lines.append($0) }) }
        logger[metadataKey: "instance"] = "a"
        logger.debug("hidden")
        logger.info("shown", metadata: ["session": "9"])
        #expect(lines.all.count == 1)
        #expect(lines.all.first?.hasSuffix(",\"msg\":\"shown\",\"instance\":\"a\",\"session\":\"9\"}\n") == true)
    }
}

// @unchecked: `lines` is read and written only with `lock` held.
final class LockedLines: @unchecked Sendable {
    private let lock = NSLock()
    private var lines: [String] = []
    func append(_ line: String) { lock.withLock { lines.append(line) } }
    var all: [String] { lock.withLock { lines } }
}
