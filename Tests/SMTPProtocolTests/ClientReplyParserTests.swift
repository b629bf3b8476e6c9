import Testing
@testable import SMTPProtocol

/// Parses `text` whole, byte by byte and split at every point; all must agree. Returns the whole result.
func clientParseEverySplit(_ text: String, sourceLocation: SourceLocation = #_sourceLocation)
    -> Result<[Reply], ReplyParseError> {
    let bytes = Array(text.utf8)
    func parse(_ chunks: [[UInt8]]) -> Result<[Reply], ReplyParseError> {
        var p = ReplyParser()
        var replies: [Reply] = []
        for c in chunks {
            do { replies += try p.feed(c) } catch { return .failure(error) }
        }
        return .success(replies)
    }
    let whole = parse([bytes])
    #expect(parse(bytes.map { [$0] }) == whole, "byte by byte", sourceLocation: sourceLocation)
    for cut in 0...bytes.count {
        #expect(parse([Array(bytes[..<cut]), Array(bytes[cut...])]) == whole, "split at \(cut)",
                sourceLocation: sourceLocation)
    }
    return whole
}

@Suite struct ClientReplyParserTests {
    @Test func multiLineReply() {
        let r = clientParseEverySplit("250-mx.test Hello\r\n250-PIPELINING\r\n250 SIZE 100\r\n")
        #expect(r == .success([Reply(250, nil, ["mx.test Hello", "PIPELINING", "SIZE 100"])]))
    }

    @Test func severalRepliesInOneRead() {
        let r = clientParseEverySplit("250 2.1.0 Ok\r\n550-5.1.1 no such\r\n550 5.1.1 user\r\n354 go\r\n")
        #expect(r == .success([Reply(250, "2.1.0", "Ok"), Reply(550, "5.1.1", ["no such", "user"]),
                               Reply(354, nil, "go")]))
    }

    @Test func enhancedCodeExtraction() {
        func one(_ line: String) -> Reply? {
            var p = ReplyParser()
            return (try? p.feed(Array(line.utf8)))?.first
        }
        #expect(one("550 5.1.1 <x@y.test>: unknown\r\n") == Reply(550, "5.1.1", "<x@y.test>: unknown"))
        #expect(one("452 4.5.3 too many\r\n")?.enhanced == "4.5.3")
        #expect(one("250 2.0.0\r\n") == Reply(250, "2.0.0", ""))
        #expect(one("552 5.3.400 big\r\n")?.enhanced == "5.3.400")
        // The class digit must match the reply's; three digits at most; a space or the end must follow.
        #expect(one("550 4.1.1 mixed\r\n") == Reply(550, nil, "4.1.1 mixed"))
        #expect(one("550 5.1.1000 long\r\n")?.enhanced == nil)
        #expect(one("550 5.1 short\r\n")?.enhanced == nil)
        #expect(one("550 5.1.1: colon\r\n")?.enhanced == nil)
        #expect(one("354 3.0.0 no class 3\r\n")?.enhanced == nil)
        #expect(one("220 mx.test ESMTP\r\n")?.enhanced == nil)
        // A line that does not repeat the code keeps its text.
        #expect(one("451-4.3.0 one\r\n451 other\r\n") == Reply(451, "4.3.0", ["one", "other"]))
    }

    @Test func codeOnlyAndBareLF() {
        #expect(clientParseEverySplit("250\r\n") == .success([Reply(250, nil, "")]))
        #expect(clientParseEverySplit("250-\r\n250 x\r\n") == .success([Reply(250, nil, ["", "x"])]))
        // A bare LF ends a line too (lenient reader), with no CR left in the text.
        #expect(clientParseEverySplit("250-a\n250 b\r\n") == .success([Reply(250, nil, ["a", "b"])]))
    }

    @Test func wireFormRoundTrips() throws {
        for text in ["250 2.1.0 Ok\r\n", "550-5.7.1 one\r\n550 5.7.1 two\r\n", "220 mx.test ESMTP\r\n", "250 2.0.0\r\n"] {
            var p = ReplyParser()
            let r = try p.feed(Array(text.utf8))
            #expect(r.count == 1)
            #expect(r.first.map { String(decoding: $0.wireBytes, as: UTF8.self) } == text)
        }
    }

    @Test func notAReply() {
        #expect(clientParseEverySplit("hello\r\n") == .failure(.badLine("hello")))
        #expect(clientParseEverySplit("25\r\n") == .failure(.badLine("25")))
        #expect(clientParseEverySplit("250x\r\n") == .failure(.badLine("250x")))
        #expect(clientParseEverySplit("650 no\r\n") == .failure(.badLine("650 no")))
        #expect(clientParseEverySplit("190 no\r\n") == .failure(.badLine("190 no")))
        #expect(clientParseEverySplit("260 no\r\n") == .failure(.badLine("260 no")))
        #expect(clientParseEverySplit("250-a\r\n251 b\r\n") == .failure(.codeMismatch("251 b")))
    }

    @Test func limits() {
        // maxLineLength counts the CRLF: "250 12345\r\n" is 11 octets.
        var p = ReplyParser(maxLineLength: 10, maxLines: 3)
        #expect(throws: ReplyParseError.lineTooLong) { try p.feed(Array("250 12345\r\n".utf8)) }
        var q = ReplyParser(maxLineLength: 11, maxLines: 3)
        #expect((try? q.feed(Array("250 12345\r\n".utf8))) == [Reply(250, nil, "12345")])
        // Too long even before its line end arrives: 11 octets and no LF yet.
        var r = ReplyParser(maxLineLength: 11, maxLines: 3)
        #expect(throws: ReplyParseError.lineTooLong) { try r.feed(Array("250 1234567".utf8)) }
        var s = ReplyParser(maxLineLength: 11, maxLines: 3)
        #expect((try? s.feed(Array("250 123456".utf8))) == [])
        #expect(throws: ReplyParseError.lineTooLong) { try s.feed(Array("\r\n".utf8)) }
        var t = ReplyParser(maxLineLength: 100, maxLines: 3)
        #expect(throws: ReplyParseError.tooManyLines) { try t.feed(Array("250-a\r\n250-b\r\n250-c\r\n250 d\r\n".utf8)) }
        var u = ReplyParser(maxLineLength: 100, maxLines: 3)
        #expect((try? u.feed(Array("250-a\r\n250-b\r\n250 c\r\n".utf8)))?.first?.lines == ["a", "b", "c"])
        // The same limits hold however the input is split.
        for cut in 0...11 {
            let bytes = Array("250 12345\r\n".utf8)
            var v = ReplyParser(maxLineLength: 10, maxLines: 3)
            #expect(throws: ReplyParseError.lineTooLong) {
                _ = try v.feed(Array(bytes[..<cut]))
                _ = try v.feed(Array(bytes[cut...]))
            }
        }
    }

    @Test func errorsAreSticky() {
        var p = ReplyParser()
        #expect(throws: ReplyParseError.badLine("junk")) { try p.feed(Array("junk\r\n".utf8)) }
        #expect(throws: ReplyParseError.badLine("junk")) { try p.feed(Array("250 ok\r\n".utf8)) }
    }

    @Test func nextStopsAtTheFirstBadLine() throws {
        var p = ReplyParser()
        p.append(Array("250 ok\r\nnope\r\n".utf8))
        #expect(try p.next() == Reply(250, nil, "ok"))
        #expect(throws: ReplyParseError.badLine("nope")) { try p.next() }
    }

    @Test func partialInputIsKept() throws {
        var p = ReplyParser()
        #expect(try p.feed(Array("250-a\r\n25".utf8)) == [])
        #expect(p.hasPartialInput)
        #expect(try p.feed(Array("0 b\r\n".utf8)) == [Reply(250, nil, ["a", "b"])])
        #expect(!p.hasPartialInput)
    }
}
