import Foundation
import Testing
import SMTPProtocol
import UVRuntime
@testable import Blast

@Suite struct BlastReportTests {
    static let ok = Reply(250, "2.0.0", "Ok")
    static func outcome(mail: Int = 250, rcpts: [Int?] = [250], data: Int? = 250) -> TransactionOutcome {
        TransactionOutcome(mailReply: Reply(mail, nil, "x"), recipientReplies: rcpts.map { $0.map { Reply($0, nil, "x") } },
                           dataReply: data.map { Reply($0, nil, "x") })
    }

    static func settings() throws -> BlastSettings {
        var s = BlastSettings(server: try SocketAddress(parsing: "127.0.0.1:2526"),
                              sender: try AddressPattern(parsing: "a@b"), recipient: try AddressPattern(parsing: "r{r}@d"))
        s.messages = 10
        s.concurrency = 3
        s.sizes = try SizeDistribution(parsing: "1k-2k")
        s.recipients = 1...3
        return s
    }

    @Test func outcomesAreClassified() {
        var st = BlastStats()
        st.account(Self.outcome(), size: 1000)                                  // accepted
        st.account(Self.outcome(rcpts: [250, 550, 450]), size: 2000)            // accepted, 1 of 3 refused for good, 1 for now
        st.account(Self.outcome(mail: 451, rcpts: [nil], data: nil), size: 10)  // MAIL 4xx
        st.account(Self.outcome(mail: 553, rcpts: [nil], data: nil), size: 10)  // MAIL 5xx
        st.account(Self.outcome(rcpts: [550, 450], data: nil), size: 10)        // no recipient: a 4xx among them → 4xx
        st.account(Self.outcome(rcpts: [550], data: 554), size: 10)             // pipelined DATA refused after 550: 5xx
        st.account(Self.outcome(data: 452), size: 10)                           // end of data 4xx
        #expect(st.messagesAccepted == 2)
        #expect(st.recipientsAccepted == 2)
        #expect(st.bytesAccepted == 3000)
        #expect(st.messagesTempFailed == 3)
        #expect(st.messagesPermFailed == 2)
        #expect(st.messagesAttempted == 7)
        #expect(st.recipientsPermFailed == 3)
        #expect(st.recipientsTempFailed == 2)
        // Replies are counted as they arrive (countedAsTheyArrive), not from the outcome.
        #expect(st.replies.allSatisfy { $0 == [0, 0, 0, 0] })
    }

    @Test func repliesAreCountedWhereTheirCommandIs() {
        var st = BlastStats()
        st.count([RepliedCommand(.greeting, 220), RepliedCommand(.ehlo, 250), RepliedCommand(.startTLS, 220),
                  RepliedCommand(.ehlo, 250), RepliedCommand(.mail, 250), RepliedCommand(.rcpt, 250),
                  RepliedCommand(.rcpt, 550), RepliedCommand(.data, 354), RepliedCommand(.dataEnd, 250),
                  RepliedCommand(.rset, 250), RepliedCommand(.mail, 451), RepliedCommand(.data, 554),
                  RepliedCommand(.helo, 250), RepliedCommand(.auth, 235), RepliedCommand(.dataEnd, 999)])
        #expect(st.replies[ReplyStage.greeting.rawValue] == [1, 0, 0, 0])
        #expect(st.replies[ReplyStage.ehlo.rawValue] == [3, 0, 0, 0])
        #expect(st.replies[ReplyStage.starttls.rawValue] == [1, 0, 0, 0])
        #expect(st.replies[ReplyStage.mail.rawValue] == [1, 0, 1, 0])
        #expect(st.replies[ReplyStage.rcpt.rawValue] == [1, 0, 0, 1])
        #expect(st.replies[ReplyStage.data.rawValue] == [0, 1, 0, 1])
        #expect(st.replies[ReplyStage.dataEnd.rawValue] == [1, 0, 0, 0])
    }

    @Test func reportRatesAndPercentiles() throws {
        var st = BlastStats()
        for _ in 0..<50 { st.account(Self.outcome(rcpts: [250, 250]), size: 1000) }
        st.connectionsOpened = 50
        for us in 1...1000 { st.record(.mail, microseconds: UInt64(us)) }
        st.record(.connect, microseconds: 5_000_000_000)  // longer than an hour's worth is clamped, not lost
        let r = BlastReport(stats: st, settings: try Self.settings(), elapsedSeconds: 2)
        #expect(r.messages.accepted == 50)
        #expect(r.rates.messagesPerSecond == 25)
        #expect(r.rates.recipientsPerSecond == 50)
        #expect(r.rates.bytesPerSecond == 25_000)
        let mail = r.latencyMs["mail"]!
        #expect(mail.count == 1000)
        #expect(abs(mail.p50 - 0.5) < 0.001)
        #expect(abs(mail.p90 - 0.9) < 0.001)
        #expect(abs(mail.p99 - 0.99) < 0.001)
        #expect(mail.max == 1.0)
        #expect(r.latencyMs["connect"]!.count == 1)
        #expect(r.latencyMs["connect"]!.max >= 3_599_000)
        #expect(r.latencyMs["rcpt"]!.count == 0)
        #expect(r.settings.recipients == "1-3")
        #expect(r.settings.size == "1k-2k")
    }

    @Test func jsonRoundTripsWithStableKeys() throws {
        var st = BlastStats()
        st.account(Self.outcome(), size: 4096)
        st.record(.dataEnd, microseconds: 1234)
        st.count(.greeting, code: 220)
        st.count(.data, code: 354)
        st.count(.dataEnd, code: 250)
        st.noteError("connect to 127.0.0.1:2526: ECONNREFUSED")
        let r = BlastReport(stats: st, settings: try Self.settings(), elapsedSeconds: 0.5)
        let text = r.json()
        let back = try JSONDecoder().decode(BlastReport.self, from: Data(text.utf8))
        #expect(back == r)
        let object = try JSONSerialization.jsonObject(with: Data(text.utf8)) as! [String: Any]
        #expect(Set(object.keys) == ["server", "settings", "elapsed_s", "messages", "handshakes", "recipients",
                                     "bytes_accepted", "rates", "connections", "replies", "latency_ms", "errors"])
        let messages = object["messages"] as! [String: Int]
        #expect(messages == ["attempted": 1, "accepted": 1, "temp_failed": 0, "perm_failed": 0, "failed": 0])
        let latency = object["latency_ms"] as! [String: [String: Any]]
        #expect(Set(latency.keys) == ["connect", "greeting", "ehlo", "tls", "mail", "rcpt", "data", "data_end", "transaction",
                                      "handshake"])
        #expect(latency["data_end"]!["p99"] as? Double == 1.234)
        let replies = object["replies"] as! [String: [String: Int]]
        #expect(replies["greeting"] == ["2xx": 1, "3xx": 0, "4xx": 0, "5xx": 0])
        #expect(Set(replies.keys) == ["greeting", "ehlo", "starttls", "mail", "rcpt", "data", "data_end"])
        #expect(replies["data"] == ["2xx": 0, "3xx": 1, "4xx": 0, "5xx": 0])
        #expect(replies["data_end"] == ["2xx": 1, "3xx": 0, "4xx": 0, "5xx": 0])
    }

    @Test func absentSettingsAreNullNotMissing() throws {
        var s = try Self.settings()
        s.messages = nil
        s.duration = 30
        let text = BlastReport(stats: BlastStats(), settings: s, elapsedSeconds: 30).json()
        let object = try JSONSerialization.jsonObject(with: Data(text.utf8)) as! [String: Any]
        let settings = object["settings"] as! [String: Any]
        #expect(settings["messages"] is NSNull)
        #expect(settings["rate"] is NSNull)
        #expect(settings["duration_s"] as? Double == 30)
    }

    @Test func tableShowsRatesRepliesAndPercentiles() throws {
        var st = BlastStats()
        for _ in 0..<1234 { st.account(Self.outcome(), size: 4096) }
        st.account(Self.outcome(mail: 451, rcpts: [nil], data: nil), size: 4096)
        for _ in 0..<1234 { st.count([RepliedCommand(.mail, 250), RepliedCommand(.data, 354), RepliedCommand(.dataEnd, 250)]) }
        st.count(.mail, code: 451)
        st.record(.connect, microseconds: 250)
        st.record(.data, microseconds: 100)
        st.record(.dataEnd, microseconds: 100)
        let table = BlastReport(stats: st, settings: try Self.settings(), elapsedSeconds: 1).table()
        let lines = table.split(separator: "\n").map(String.init)
        // The reply rows are the latency rows: DATA (its 354) and DATA end (after the final ".").
        #expect(lines.contains { $0.hasPrefix("DATA    ") && $0.hasSuffix("0     1,234         0         0") })
        #expect(lines.contains { $0.hasPrefix("DATA end") && $0.hasSuffix("1,234         0         0         0") })
        #expect(lines.contains { $0.hasPrefix("DATA end") && $0.contains("0.100") })
        #expect(lines.contains { $0.hasPrefix("messages") && $0.contains("1,234") })
        #expect(lines.contains { $0.hasPrefix("MAIL") && $0.hasSuffix("1,234         0         1         0") })
        #expect(lines.contains { $0.hasPrefix("connect") && $0.contains("0.250") })
        #expect(lines.contains { $0.hasPrefix("RCPT") && $0.hasSuffix("-") })
        #expect(table.contains("1,235 attempted, 1,234 accepted, 1 4xx, 0 5xx"))
    }

    @Test func serverTextInErrorsIsEscaped() throws {
        var st = BlastStats()
        st.noteError("554 go away\u{1B}]0;pwned\u{7}: the next hop refused the connection (554)")
        #expect(st.firstErrors == ["554 go away\\u{1B}]0;pwned\\u{7}: the next hop refused the connection (554)"])
        let table = BlastReport(stats: st, settings: try Self.settings(), elapsedSeconds: 1).table()
        #expect(!table.unicodeScalars.contains { $0.value == 0x1B || $0.value == 0x07 })
    }

    @Test func groupedNumbers() {
        #expect(BlastReport.grouped(0) == "0")
        #expect(BlastReport.grouped(999) == "999")
        #expect(BlastReport.grouped(1000) == "1,000")
        #expect(BlastReport.grouped(1_234_567) == "1,234,567")
        #expect(BlastReport.grouped(-1000) == "-1,000")
    }

    @Test func progressLineReportsTheRateOfTheLastInterval() {
        var p = ProgressLine()
        var st = BlastStats()
        for _ in 0..<100 { st.account(Self.outcome(), size: 1) }
        #expect(p.line(elapsed: 1, stats: st, openConnections: 4, target: 1000).contains("100/1,000 messages  100/s"))
        for _ in 0..<300 { st.account(Self.outcome(), size: 1) }
        let second = p.line(elapsed: 2, stats: st, openConnections: 4, target: nil)
        #expect(second.contains("400 messages  300/s"))
        #expect(second.contains("4 connections"))
    }
}
