import Testing
@testable import Relay

/// Feeds `text` in pieces of `step` bytes; returns the requests and the error, if any.
private func parse(_ text: String, step: Int = .max, parser: HTTPRequestParser = HTTPRequestParser())
    -> (requests: [HTTPRequest], error: HTTPParseError?) {
    var p = parser
    let bytes = Array(text.utf8)
    var out: [HTTPRequest] = []
    var i = 0
    while i < bytes.count {
        let end = min(bytes.count, i + max(1, min(step, bytes.count)))
        p.feed(Array(bytes[i..<end]))
        i = end
        do {
            while let r = try p.next() { out.append(r) }
        } catch let e as HTTPParseError {
            return (out, e)
        } catch {
            Issue.record("\(error)")
        }
    }
    return (out, nil)
}

@Suite struct HTTPRequestParserTests {
    let get = "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:8026\r\nAccept: text/plain\r\n\r\n"

    @Test func simpleGetWholeAndByteByByte() {
        for step in [Int.max, 1, 2, 3, 7] {
            let (reqs, err) = parse(get, step: step)
            #expect(err == nil)
            #expect(reqs.count == 1)
            let r = reqs[0]
            #expect(r.method == "GET" && r.target == "/metrics" && r.path == "/metrics" && r.minorVersion == 1)
            #expect(r.header("host") == "127.0.0.1:8026")
            #expect(r.headers == [HTTPHeader("Host", "127.0.0.1:8026"), HTTPHeader("Accept", "text/plain")])
            #expect(r.keepAlive)
        }
    }

    @Test func incompleteHeadWaits() {
        var p = HTTPRequestParser()
        p.feed(Array("GET / HTTP/1.1\r\nHost: x\r\n\r".utf8))
        #expect((try? p.next()) == .some(nil))
        p.feed(Array("\n".utf8))
        #expect((try? p.next())??.target == "/")
    }

    @Test func pipelinedRequestsInOrder() {
        let text = get + "GET /other?x=1 HTTP/1.0\r\n\r\n" + "HEAD /metrics HTTP/1.1\r\nConnection: close\r\n\r\n"
        for step in [Int.max, 1, 5] {
            let (reqs, err) = parse(text, step: step)
            #expect(err == nil)
            #expect(reqs.map(\.target) == ["/metrics", "/other?x=1", "/metrics"])
            #expect(reqs[1].path == "/other" && reqs[1].minorVersion == 0 && !reqs[1].keepAlive)
            #expect(reqs[2].method == "HEAD" && !reqs[2].keepAlive)
        }
    }

    @Test func bodyByContentLength() {
        let text = "POST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\n\r\n"
        for step in [Int.max, 1] {
            let (reqs, err) = parse(text, step: step)
            #expect(err == nil)
            #expect(reqs.count == 2)
            #expect(reqs[0].body == Array("hello".utf8))
            #expect(reqs[1].target == "/")
        }
    }

    /// RFC 9112 §6.3: neither Content-Length nor Transfer-Encoding is a zero-length body (`curl -X POST`);
    /// the next request on the connection follows at once.
    @Test func postWithoutContentLengthHasNoBody() {
        let text = "POST /queue/0123456789ABCD/flush HTTP/1.1\r\nHost: x\r\n\r\nGET /metrics HTTP/1.1\r\n\r\n"
        for step in [Int.max, 1] {
            let (reqs, err) = parse(text, step: step)
            #expect(err == nil)
            #expect(reqs.map(\.method) == ["POST", "GET"])
            #expect(reqs.first?.body == [])
        }
    }

    @Test func leadingEmptyLinesIgnored() {
        let (reqs, err) = parse("\r\n\r\n" + get)
        #expect(err == nil && reqs.count == 1)
    }

    @Test func keepAliveRules() {
        #expect(parse("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").requests[0].keepAlive)
        #expect(!parse("GET / HTTP/1.1\r\nConnection: upgrade, close\r\n\r\n").requests[0].keepAlive)
    }

    @Test func errors() {
        let cases: [(String, Int)] = [
            ("GET /metrics\r\n\r\n", 400),
            ("GET  /metrics HTTP/1.1\r\n\r\n", 400),
            ("G(T / HTTP/1.1\r\n\r\n", 400),
            ("GET / HTTP/2.0\r\n\r\n", 505),
            ("GET / HTTX/1.1\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nNoColon\r\n\r\n", 400),
            ("GET / HTTP/1.1\nHost: x\n\n", 400),
            ("GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400),
            ("POST / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n", 413),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 501),
        ]
        for (text, status) in cases {
            for step in [Int.max, 1] {
                let (reqs, err) = parse(text, step: step)
                #expect(reqs.isEmpty, "\(text.debugDescription)")
                #expect(err?.status == status, "\(text.debugDescription) step \(step): \(String(describing: err))")
            }
        }
    }

    @Test func headTooLarge() {
        let big = "GET / HTTP/1.1\r\nX: " + String(repeating: "a", count: 9000)
        #expect(parse(big).error?.status == 431)
        #expect(parse(big + "\r\n\r\n", step: 100).error?.status == 431)
    }

    @Test func afterAnErrorNothingMore() throws {
        var p = HTTPRequestParser()
        p.feed(Array("BAD\r\n\r\n".utf8))
        #expect(throws: HTTPParseError.self) { try p.next() }
        p.feed(Array(get.utf8))
        #expect(try p.next() == nil)
        #expect(p.failed)
    }

    @Test func responseWireForm() {
        let r = HTTPResponse.text(200, "OK", "hi\n")
        #expect(String(decoding: r.serialized(close: false), as: UTF8.self)
                == "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 3\r\n\r\nhi\n")
        #expect(String(decoding: r.serialized(close: true, headOnly: true), as: UTF8.self)
                == "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 3\r\nConnection: close\r\n\r\n")
    }

    /// Issue 14: 2 MiB of empty lines after a request took 27 s (each empty line copied the rest of the
    /// buffer). They are skipped in linear time and count toward the next request's head: 431.
    @Test func aFloodOfEmptyLinesIsLinearAndRefused() {
        var p = HTTPRequestParser()
        p.feed(Array(get.utf8) + [UInt8](repeating: 0, count: 2 << 20).enumerated().map { $0.offset % 2 == 0 ? 13 : 10 })
        let clock = ContinuousClock()
        var first: HTTPRequest?
        var error: HTTPParseError?
        let took = clock.measure {
            first = try? p.next()
            do { _ = try p.next() } catch let e as HTTPParseError { error = e } catch {}
        }
        #expect(first?.target == "/metrics")
        #expect(error?.status == 431)
        #expect(took < .seconds(5))  // quadratic, it took 27 s (release)
        // A few empty lines before a request are still ignored (RFC 9112 §2.2), even fed byte by byte.
        #expect(parse("\r\n\r\n" + get, step: 1).requests.count == 1)
        #expect(parse(String(repeating: "\r\n", count: 5000) + get).error?.status == 431)
    }

    /// Issue 14: the head was parsed again on every read while its body arrived, and the search for its
    /// end started over at byte 0 each time (quadratic for a slow client). Fed byte by byte, each byte
    /// is looked at once, and a 4 KiB head with a 256 KiB body takes no longer than fed whole.
    @Test func byteByByteIsLinear() throws {
        let fields = (0..<100).map { "X-Field-\($0): " + String(repeating: "v", count: 25) + "\r\n" }.joined()
        let body = String(repeating: "b", count: 256 << 10)
        let text = "POST /queue/flush HTTP/1.1\r\nHost: x\r\n" + fields + "Content-Length: \(body.utf8.count)\r\n\r\n" + body
            + "\r\nGET /health HTTP/1.1\r\n\r\n"
        let bytes = Array(text.utf8)
        var p = HTTPRequestParser(maxHeadBytes: 8192, maxBodyBytes: 1 << 20)
        var requests: [HTTPRequest] = []
        let took = ContinuousClock().measure {
            for b in bytes {
                p.feed([b])
                while let r = try? p.next() { requests.append(r) }
            }
        }
        #expect(requests.map(\.target) == ["/queue/flush", "/health"])
        #expect(requests.first?.headers.count == 102)
        #expect(requests.first?.body == Array(body.utf8))
        #expect(p.bufferedBytes == 0 && !p.failed)
        // Heads only (the body is counted, not scanned): at most every byte of the two heads once.
        #expect(p.bytesScanned <= bytes.count - body.utf8.count, "scanned \(p.bytesScanned) of \(bytes.count)")
        #expect(took < .seconds(3), "took \(took)")  // re-parsing the head per byte: minutes
        #expect(parse(text, step: 1).requests == parse(text).requests)
    }

    /// Many small pipelined requests in one read: each taken without copying the rest of the buffer.
    @Test func manyPipelinedRequestsInOneRead() {
        let one = "GET /health HTTP/1.1\r\n\r\n"
        var p = HTTPRequestParser()
        p.feed(Array(String(repeating: one, count: 20_000).utf8))
        var n = 0
        while let r = try? p.next() {
            #expect(r.target == "/health")
            n += 1
        }
        #expect(n == 20_000 && p.bufferedBytes == 0)
        #expect(p.bytesScanned == one.utf8.count * 20_000)
    }

    /// A head exactly at the limit is taken, one byte more is 431, whichever way the bytes come.
    @Test func headLimitIsExact() {
        let prefix = "GET / HTTP/1.1\r\nX: "
        let fits = prefix + String(repeating: "a", count: 100 - prefix.utf8.count) + "\r\n\r\n"
        let over = prefix + String(repeating: "a", count: 101 - prefix.utf8.count) + "\r\n\r\n"
        for step in [Int.max, 1] {
            #expect(parse(fits, step: step, parser: HTTPRequestParser(maxHeadBytes: 100)).requests.count == 1)
            #expect(parse(over, step: step, parser: HTTPRequestParser(maxHeadBytes: 100)).error?.status == 431)
            #expect(parse("\r\n" + fits, step: step, parser: HTTPRequestParser(maxHeadBytes: 100)).error?.status == 431)
        }
    }
}
