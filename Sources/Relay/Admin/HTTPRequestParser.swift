// A small HTTP/1.1 request parser (RFC 9112) for Tern's own endpoints: `/metrics` of `tern sink`
// and the relay's admin endpoint. Pure: bytes in, requests out, so it is tested byte by byte. Work is
// linear in the bytes however they arrive: each is scanned once, a head is parsed once.
//
// Deliberately narrow: a request line, header fields, and a body only by Content-Length (a request
// with neither Content-Length nor Transfer-Encoding has none, RFC 9112 §6.3: `curl -X POST` sends
// that). Anything else gets the status code that says why, and the connection is closed after it:
//   400 malformed request line or header field, bare CR or LF, obs-fold, Content-Length wrong
//   413 body over the limit, 431 request head over the limit,
//   501 Transfer-Encoding (no chunked bodies), 505 not HTTP/1.x.

public struct HTTPHeader: Equatable, Sendable {
    public var name: String
    public var value: String
    public init(_ name: String, _ value: String) {
        self.name = name
        self.value = value
    }
}

public struct HTTPRequest: Equatable, Sendable {
    public var method: String
    /// The request target as sent ("/metrics?x=1").
    public var target: String
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    public var minorVersion: Int
    public var headers: [HTTPHeader]
    public var body: [UInt8]
    /// The client's address, set by the server (not part of what was received).
    public var client: String? = nil

    /// The target without its query.
    public var path: Substring { target.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)[0] }

    /// The first field of that name (case-insensitive).
    public func header(_ name: String) -> String? {
        let lowered = name.lowercased()
        return headers.first { $0.name.lowercased() == lowered }?.value
    }

    /// HTTP/1.1 keeps the connection unless "Connection: close"; HTTP/1.0 only with "keep-alive".
    public var keepAlive: Bool {
        let tokens = (header("Connection") ?? "").lowercased().split(separator: ",").map { $0.trimmingSpaces }
        return minorVersion >= 1 ? !tokens.contains("close") : tokens.contains("keep-alive")
    }
}

public struct HTTPParseError: Error, Equatable, Sendable, CustomStringConvertible {
    public var status: Int
    public var reason: String
    public var description: String { "\(status) \(reason)" }
}

public struct HTTPRequestParser: Sendable {
    public let maxHeadBytes: Int
    public let maxBodyBytes: Int
    /// Received bytes; those before `start` are taken already (dropped now and then, not per request,
    /// so many small pipelined requests do not copy the rest of the buffer each).
    private var buffer: [UInt8] = []
    private var start = 0
    /// Where the current request begins (after the empty lines skipped before it).
    private var requestStart = 0
    /// The next byte the head scan looks at: each byte is looked at once, however it arrives.
    private var scan = 0
    /// Bytes of empty lines skipped before the current request line: they count toward its head, so
    /// a flood of CRLF ends in 431 instead of being read forever.
    private var skippedEmptyLines = 0
    /// The head, parsed once, while its body is still arriving.
    private var head: (request: HTTPRequest, bodyStart: Int, bodyLength: Int)?
    /// Set after an error: the connection is beyond repair and must be closed.
    public private(set) var failed = false
    /// Bytes the head scan has looked at, all requests together: at most the bytes fed (a test checks
    /// that work per byte stays constant however the bytes are split).
    public private(set) var bytesScanned = 0

    public init(maxHeadBytes: Int = 8192, maxBodyBytes: Int = 1 << 20) {
        self.maxHeadBytes = maxHeadBytes
        self.maxBodyBytes = maxBodyBytes
    }

    public mutating func feed(_ bytes: UnsafeRawBufferPointer) {
        guard !failed else { return }
        buffer.append(contentsOf: bytes)
    }

    /// The most a connection may have buffered: one whole request (head and body).
    public var maxBufferedBytes: Int { maxHeadBytes + 4 + maxBodyBytes }

    /// Bytes received and not yet taken as a request.
    public var bufferedBytes: Int { buffer.count - start }

    public mutating func feed(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { feed($0) }
    }

    /// The next complete request, nil when more bytes are needed. After a throw, stop feeding.
    public mutating func next() throws -> HTTPRequest? {
        guard !failed else { return nil }
        do {
            return try parse()
        } catch let error as HTTPParseError {
            failed = true
            buffer = []
            start = 0
            head = nil
            throw error
        }
    }

    private mutating func parse() throws -> HTTPRequest? {
        if head == nil {
            guard let headEnd = try scanForHeadEnd() else { return nil }
            let lines = splitLines(buffer[requestStart..<headEnd])
            var request = try parseRequestLine(lines[0])
            for line in lines.dropFirst() {
                request.headers.append(try parseField(line))
            }
            head = (request, headEnd + 4, try Self.bodyLength(request, max: maxBodyBytes))
        }
        guard let (request, bodyStart, bodyLength) = head, buffer.count - bodyStart >= bodyLength else { return nil }
        var complete = request
        complete.body = Array(buffer[bodyStart..<(bodyStart + bodyLength)])
        start = bodyStart + bodyLength
        head = nil
        skippedEmptyLines = 0
        if start == buffer.count {
            buffer = []
            start = 0
        } else if start >= 1 << 16 && start * 2 >= buffer.count {
            buffer.removeFirst(start)  // rarely: the copy is at most the bytes taken since the last one
            start = 0
        }
        requestStart = start
        scan = start
        return complete
    }

    /// Index of the CR of the CRLFCRLF that ends the current head, nil while it has not arrived. Looks
    /// only at bytes not looked at before. RFC 9112 §2.2: empty lines before a request line are skipped.
    private mutating func scanForHeadEnd() throws -> Int? {
        let tooLarge = HTTPParseError(status: 431, reason: "Request Header Fields Too Large")
        while scan < buffer.count {
            let i = scan
            scan += 1
            bytesScanned += 1
            // The head with its CRLFCRLF and the empty lines before it: at most maxHeadBytes + 4.
            if i + 1 - requestStart + skippedEmptyLines > maxHeadBytes + 4 { throw tooLarge }
            guard buffer[i] == 10 else { continue }
            if i == requestStart || buffer[i - 1] != 13 { throw HTTPParseError(status: 400, reason: "Bad Request: bare LF") }
            if i - 1 == requestStart {
                requestStart = i + 1
                skippedEmptyLines += 2
                if skippedEmptyLines > maxHeadBytes { throw tooLarge }
            } else if i - 3 >= requestStart && buffer[i - 3] == 13 && buffer[i - 2] == 10 {
                return i - 3
            }
        }
        return nil
    }

    /// The body's length by Content-Length (none without it); Transfer-Encoding is refused.
    private static func bodyLength(_ request: HTTPRequest, max: Int) throws -> Int {
        if request.header("Transfer-Encoding") != nil {
            throw HTTPParseError(status: 501, reason: "Not Implemented: Transfer-Encoding")
        }
        let lengths = request.headers.filter { $0.name.lowercased() == "content-length" }
        guard let first = lengths.first else { return 0 }
        guard lengths.allSatisfy({ $0.value == first.value }), !first.value.isEmpty, first.value.utf8.count <= 18,
              first.value.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }), let n = Int(first.value)
        else { throw HTTPParseError(status: 400, reason: "Bad Request: Content-Length") }
        guard n <= max else { throw HTTPParseError(status: 413, reason: "Content Too Large") }
        return n
    }

    private func splitLines(_ head: ArraySlice<UInt8>) -> [ArraySlice<UInt8>] {
        var lines: [ArraySlice<UInt8>] = []
        var start = head.startIndex
        var i = head.startIndex
        while i < head.endIndex {
            if head[i] == 13 && i + 1 < head.endIndex && head[i + 1] == 10 {
                lines.append(head[start..<i])
                i += 2
                start = i
            } else {
                i += 1
            }
        }
        lines.append(head[start..<head.endIndex])
        return lines
    }

    private func parseRequestLine(_ line: ArraySlice<UInt8>) throws -> HTTPRequest {
        try rejectControls(line)
        let parts = line.split(separator: 32, omittingEmptySubsequences: false)
        guard parts.count == 3, !parts[0].isEmpty, !parts[1].isEmpty,
              parts[0].allSatisfy(isTokenChar)
        else { throw HTTPParseError(status: 400, reason: "Bad Request: request line") }
        let version = String(decoding: parts[2], as: UTF8.self)
        let minor: Int
        switch version {
        case "HTTP/1.1": minor = 1
        case "HTTP/1.0": minor = 0
        default:
            guard version.hasPrefix("HTTP/"), version.count == 8 else {
                throw HTTPParseError(status: 400, reason: "Bad Request: request line")
            }
            throw HTTPParseError(status: 505, reason: "HTTP Version Not Supported")
        }
        return HTTPRequest(method: String(decoding: parts[0], as: UTF8.self),
                           target: String(decoding: parts[1], as: UTF8.self), minorVersion: minor, headers: [], body: [])
    }

    private func parseField(_ line: ArraySlice<UInt8>) throws -> HTTPHeader {
        try rejectControls(line)
        // RFC 9112 §5.2: obs-fold is rejected; §5.1: no space before the colon.
        guard let first = line.first, first != 32, first != 9, let colon = line.firstIndex(of: UInt8(ascii: ":")),
              colon > line.startIndex, line[line.startIndex..<colon].allSatisfy(isTokenChar)
        else { throw HTTPParseError(status: 400, reason: "Bad Request: header field") }
        var value = line[(colon + 1)...]
        while let b = value.first, b == 32 || b == 9 { value = value.dropFirst() }
        while let b = value.last, b == 32 || b == 9 { value = value.dropLast() }
        return HTTPHeader(String(decoding: line[line.startIndex..<colon], as: UTF8.self),
                          String(decoding: value, as: UTF8.self))
    }

    private func rejectControls(_ line: ArraySlice<UInt8>) throws {
        if line.contains(where: { $0 == 13 || $0 == 10 || $0 == 0 }) {
            throw HTTPParseError(status: 400, reason: "Bad Request: bare CR, LF or NUL")
        }
    }
}

/// tchar of RFC 9110 §5.6.2.
func isTokenChar(_ b: UInt8) -> Bool {
    switch b {
    case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"):
        return true
    default:
        return "!#$%&'*+-.^_`|~".utf8.contains(b)
    }
}

public struct HTTPResponse {
    public var status: Int
    public var reason: String
    public var headers: [HTTPHeader]
    public var body: [UInt8]
    /// The Content-Length of an answer to HEAD whose body was not read (the size of a file); nil: the body's.
    public var headLength: Int?
    /// Runs on the loop once the answer has left the process (the kernel took it), or will never
    /// leave (the connection closed): a handler that limits how many large answers are held at once
    /// hands its turn on here.
    public var whenSent: (() -> Void)?

    public init(status: Int, reason: String, headers: [HTTPHeader] = [], body: [UInt8] = []) {
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body
    }

    public static func text(_ status: Int, _ reason: String, _ body: String) -> HTTPResponse {
        HTTPResponse(status: status, reason: reason, headers: [HTTPHeader("Content-Type", "text/plain; charset=utf-8")],
                     body: Array(body.utf8))
    }

    /// The head; Content-Length always, and "Connection: close" when the connection ends after it.
    func head(close: Bool) -> [UInt8] {
        var head = "HTTP/1.1 \(status) \(reason)\r\n"
        for h in headers { head += "\(h.name): \(h.value)\r\n" }
        head += "Content-Length: \(headLength ?? body.count)\r\n"
        if close { head += "Connection: close\r\n" }
        head += "\r\n"
        return Array(head.utf8)
    }

    /// The wire form, head and body joined.
    public func serialized(close: Bool, headOnly: Bool = false) -> [UInt8] {
        head(close: close) + (headOnly ? [] : body)
    }

    /// The wire form as two buffers, the body not copied.
    func withWireParts(close: Bool, headOnly: Bool, _ body: ([UnsafeRawBufferPointer]) -> Void) {
        head(close: close).withUnsafeBytes { head in
            self.body.withUnsafeBytes { bytes in body(headOnly ? [head] : [head, bytes]) }
        }
    }
}
