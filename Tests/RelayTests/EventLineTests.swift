import Testing
@testable import Relay

/// EventLine: the hand-built JSON of an event, escaped as JSON and for terminals.
@Suite struct EventLineTests {
    @Test func membersInOrderAndEscaped() {
        var line = EventLine(type: "bounce", time: 1_765_000_000.1234)
        line.add("queue_id", "0661FCAA570DBE")
        line.add("recipient", "a\"b\\c@x.test")
        line.add("reply", "550 5.1.1 tab\there\r\nESC\u{1B}[31m C1\u{9B} ünï 日本")
        line.add("attempt", 3)
        line.add("missing", nil as String?)
        line.add("none", nil as Int?)
        let text = String(decoding: line.finished(), as: UTF8.self)
        #expect(text == #"{"type":"bounce","time":1765000000.123,"queue_id":"0661FCAA570DBE","recipient":"a\"b\\c@x.test","reply":"550 5.1.1 tab\u0009here\u000d\u000aESC\u001b[31m C1\u009b ünï 日本","attempt":3}"# + "\n")
    }

    @Test func invisibleFormattingIsEscaped() {
        var line = EventLine(type: "t", time: 0)
        line.add("helo", "a\u{202E}b\u{200B}c\u{E0001}d")
        #expect(String(decoding: line.finished(), as: UTF8.self)
                == #"{"type":"t","time":0.000,"helo":"a\u202eb\u200bc\udb40\udc01d"}"# + "\n")
    }

    @Test func timeHasMilliseconds() {
        #expect(String(decoding: EventLine(type: "t", time: 5.007).finished(), as: UTF8.self) == "{\"type\":\"t\",\"time\":5.007}\n")
        #expect(String(decoding: EventLine(type: "t", time: 5.25).finished(), as: UTF8.self) == "{\"type\":\"t\",\"time\":5.250}\n")
        #expect(String(decoding: EventLine(type: "t", time: 0).finished(), as: UTF8.self) == "{\"type\":\"t\",\"time\":0.000}\n")
    }

    @Test func integersInDecimal() {
        for value in [0, 7, 10, 99, 100, 4211, -1, -305, Int.max, Int.min] {
            var line = EventLine(type: "t", time: 0)
            line.add("size", value)
            #expect(String(decoding: line.finished(), as: UTF8.self) == "{\"type\":\"t\",\"time\":0.000,\"size\":\(value)}\n")
        }
    }

    /// `finish` takes the bytes out (no copy); `finished` leaves the line as it was.
    @Test func finishTakesTheLine() {
        var line = EventLine(type: "t", time: 1.5)
        let copy = line.finished()
        #expect(line.finish() == copy)
        #expect(line.bytes.isEmpty)
    }
}
