// The DATA reader: a small byte state machine (RFC 5321 §4.1.1.4, §4.5.2).
//
// - Only <CR><LF>.<CR><LF> ends the message. A bare CR or a bare LF is never a line end: it is
//   remembered as a problem and the message is refused when the real end arrives. This closes
//   SMTP smuggling, where "\n.\n" or "\r.\r" would end DATA for one server and not for another.
// - A leading dot is removed from every line that has one (dot-unstuffing, §4.5.2).
// - NUL bytes, text lines longer than the limit (CRLF included, §4.5.3.1.6) and messages larger than
//   the size limit are problems too. After the first problem nothing more is output, but the input is
//   still read to its end so that the session stays in step with the client.
// - In the header section it counts Received fields (loop detection), drops Bcc fields and notes a
//   "TLS-Required: No" field (RFC 8689 §5).
//
// BDAT chunks (RFC 3030, `chunked`) go through the same checks, without the dot: the data is the
// message as it is, a line may start with a dot, and the end is the end of the LAST chunk
// (`finishChunks`), not a line.
//
// BODY=BINARYMIME (RFC 3030 §3, `binary`, chunked only): the header section is read as above, and
// the body after it is octets, copied as they come: no line length, no bare CR/LF or NUL, and no
// CRLF added at the end. Only the size limit applies.

public struct DataDecoder {
    public enum Problem: Equatable, Sendable {
        case bareCR, bareLF, nul, lineTooLong, tooBig
    }

    public struct Limits: Sendable {
        public var maxLineLength: Int
        public var maxMessageSize: Int
        public var keepBcc: Bool
        public init(maxLineLength: Int = 1000, maxMessageSize: Int = 52_428_800, keepBcc: Bool = false) {
            self.maxLineLength = maxLineLength
            self.maxMessageSize = maxMessageSize
            self.keepBcc = keepBcc
        }
    }

    enum State: UInt8 { case lineStart, dotAtLineStart, dotCR, inLine, sawCR }

    public let limits: Limits
    /// The first problem seen, if any: the message must then be refused.
    public private(set) var problem: Problem?
    /// Decoded bytes so far (after unstuffing, before Bcc removal).
    public private(set) var size = 0
    /// Received header fields seen in the header section.
    public private(set) var receivedCount = 0
    /// A "TLS-Required: No" field was in the header section (RFC 8689 §5; the value without case).
    public private(set) var tlsRequiredNo = false
    /// The first Message-ID field's value as written on its first line, without the spaces around it
    /// (for events); nil when there is none or it is empty there.
    public private(set) var messageID: [UInt8]?
    public private(set) var isFinished = false
    /// Lines of the decoded message that start with a dot (DATA: removed stuffing; BDAT: kept as
    /// sent). With none, the message can go to the next hop as it is (isWireReady) without being checked.
    public private(set) var unstuffedLines = 0
    /// BDAT: no dot-stuffing and no end-of-data line; `finishChunks` ends the message.
    public let chunked: Bool
    /// BINARYMIME: the body is taken as it is (chunked only).
    public let binary: Bool

    var state = State.lineStart
    var lineLength = 0
    var inHeaders = true
    var droppingField = false
    var headerLine: [UInt8] = []
    /// False only in tests: the body goes line by line too, as the reference for decodeBodyRun.
    var copiesBodyRuns = true

    public init(limits: Limits, chunked: Bool = false, binary: Bool = false) {
        precondition(chunked || !binary, "a BINARYMIME body comes only in BDAT chunks")
        self.limits = limits
        self.chunked = chunked
        self.binary = binary
    }

    /// BDAT LAST has been read: a last line without CRLF is ended with one (as Postfix does); a CR
    /// alone at the very end is a bare CR.
    public mutating func finishChunks(into out: inout [UInt8]) {
        guard chunked, !isFinished else { return }
        if binary && !inHeaders {
            // Octets, not lines: nothing to end or repair.
            isFinished = true
            return
        }
        switch state {
        case .sawCR:
            note(.bareCR)
        case .inLine:
            endOfLine(into: &out)
        case .lineStart, .dotAtLineStart, .dotCR:
            break
        }
        state = .lineStart
        isFinished = true
        flushPartialHeader(into: &out)
    }

    /// Reads `input`, appending decoded message bytes to `out`. Returns how many bytes were consumed:
    /// all of them, or fewer when the end of data was found (the rest belongs to the next command).
    public mutating func decode(_ input: UnsafeRawBufferPointer, into out: inout [UInt8]) -> Int {
        guard let base = input.baseAddress?.assumingMemoryBound(to: UInt8.self), !isFinished else { return 0 }
        let n = input.count
        var i = 0
        while i < n {
            switch state {
            case .lineStart:
                if chunked {
                    // Nothing is stuffed: a dot is the line's first character, to be stuffed when
                    // the message goes on with DATA.
                    if base[i] == UInt8(ascii: ".") { unstuffedLines += 1 }
                    state = .inLine
                } else if base[i] == UInt8(ascii: ".") {
                    state = .dotAtLineStart
                    lineLength = 1
                    i += 1
                } else {
                    state = .inLine
                }
            case .dotAtLineStart:
                if base[i] == 13 {
                    state = .dotCR
                    i += 1
                } else {
                    state = .inLine  // the stuffed dot is dropped; this byte starts the line's text
                    unstuffedLines += 1
                }
            case .dotCR:
                if base[i] == 10 {
                    i += 1
                    isFinished = true
                    flushPartialHeader(into: &out)
                    return i
                }
                note(.bareCR)
                state = .inLine
            case .inLine:
                if binary && !inHeaders {
                    emitRun(base, i, n, into: &out)
                    i = n
                    continue
                }
                if !inHeaders && copiesBodyRuns {
                    i = decodeBodyRun(base, from: i, count: n, into: &out)
                    continue
                }
                let start = i
                i = scanForLineEnd(base, from: i, count: n, stopAtNUL: true)
                if i > start {
                    lineLength += i - start
                    if lineLength + 2 > limits.maxLineLength { note(.lineTooLong) }
                    emit(UnsafeBufferPointer(start: base + start, count: i - start), into: &out)
                }
                if i == n { break }
                switch base[i] {
                case 13: state = .sawCR
                case 10: note(.bareLF)
                default: note(.nul)
                }
                i += 1
            case .sawCR:
                if base[i] == 10 {
                    endOfLine(into: &out)
                    state = .lineStart
                    i += 1
                } else {
                    note(.bareCR)
                    state = .inLine
                }
            }
        }
        return n
    }

    /// In the body, from inside a line: copies whole runs of lines in one append each, up to the next
    /// line that starts with a dot, a stray CR, LF or NUL, or the end of the input. The header section
    /// goes line by line (its fields are looked at); the body only needs its line ends checked, and a
    /// 100 KiB body is about 1,300 lines. Sets `state` for where it stopped and returns that position.
    mutating func decodeBodyRun(_ base: UnsafePointer<UInt8>, from start: Int, count n: Int,
                                into out: inout [UInt8]) -> Int {
        var runStart = start
        var i = start
        while true {
            let j = scanForLineEnd(base, from: i, count: n, stopAtNUL: true)
            lineLength += j - i
            if lineLength + 2 > limits.maxLineLength {
                // Problems are noted in input order: what came before this line's text goes first.
                emitRun(base, runStart, i, into: &out)
                runStart = i
                note(.lineTooLong)
            }
            if j == n {
                emitRun(base, runStart, n, into: &out)
                state = .inLine
                return n
            }
            if base[j] == 13 && j + 1 < n && base[j + 1] == 10 {
                lineLength = 0
                let next = j + 2
                if next == n || base[next] == UInt8(ascii: ".") {
                    // The next line may be stuffed or the end of data: .lineStart decides.
                    emitRun(base, runStart, next, into: &out)
                    state = .lineStart
                    return next
                }
                i = next  // an ordinary line follows: the run goes on
                continue
            }
            emitRun(base, runStart, j, into: &out)
            if base[j] == 13 && j + 1 == n {
                state = .sawCR  // its LF is in the next read
                return n
            }
            // A CR not before LF, a bare LF or a NUL: not output; the line goes on after it.
            note(base[j] == 13 ? .bareCR : base[j] == 10 ? .bareLF : .nul)
            i = j + 1
            runStart = i
        }
    }

    mutating func emitRun(_ base: UnsafePointer<UInt8>, _ from: Int, _ to: Int, into out: inout [UInt8]) {
        if to > from { emit(UnsafeBufferPointer(start: base + from, count: to - from), into: &out) }
    }

    mutating func note(_ p: Problem) {
        if problem == nil { problem = p }
    }

    static let crlf: [UInt8] = [13, 10]

    mutating func emit(_ bytes: UnsafeBufferPointer<UInt8>, into out: inout [UInt8]) {
        size += bytes.count
        if size > limits.maxMessageSize { note(.tooBig) }
        guard problem == nil else { return }
        if inHeaders {
            headerLine.append(contentsOf: bytes)
        } else {
            out.append(contentsOf: bytes)
        }
    }

    mutating func endOfLine(into out: inout [UInt8]) {
        DataDecoder.crlf.withUnsafeBufferPointer { emit($0, into: &out) }
        lineLength = 0
        guard inHeaders, problem == nil else { return }
        classifyHeaderLine(into: &out)
        headerLine.removeAll(keepingCapacity: true)
    }

    /// Decides what one complete header-section line (CRLF included) is, RFC 5322 §2.2.
    mutating func classifyHeaderLine(into out: inout [UInt8]) {
        let line = headerLine
        if line.count == 2 {  // the empty line that ends the header section
            inHeaders = false
            out.append(contentsOf: line)
            return
        }
        if line[0] == UInt8(ascii: " ") || line[0] == 9 {  // folded continuation of the field before
            if !droppingField { out.append(contentsOf: line) }
            return
        }
        var colon = -1
        for (index, b) in line.enumerated() {
            if b == UInt8(ascii: ":") { colon = index; break }
            if b <= 32 || b >= 127 { break }
        }
        guard colon > 0 else {
            // Not a header field: the body starts here without an empty line.
            inHeaders = false
            droppingField = false
            out.append(contentsOf: line)
            return
        }
        let name = line[0..<colon]
        if equalsIgnoringCase(name, "received") { receivedCount += 1 }
        if messageID == nil && equalsIgnoringCase(name, "message-id") {
            var value = line[(colon + 1)...].dropLast(2)
            while let f = value.first, f == 32 || f == 9 { value = value.dropFirst() }
            while let l = value.last, l == 32 || l == 9 { value = value.dropLast() }
            if !value.isEmpty { messageID = Array(value) }
        }
        if equalsIgnoringCase(name, "tls-required") {
            // The value on the field's first line, without the spaces around it and the CRLF.
            var value = line[(colon + 1)...].dropLast(2)
            while let f = value.first, f == 32 || f == 9 { value = value.dropFirst() }
            while let l = value.last, l == 32 || l == 9 { value = value.dropLast() }
            if equalsIgnoringCase(value, "no") { tlsRequiredNo = true }
        }
        droppingField = !limits.keepBcc && equalsIgnoringCase(name, "bcc")
        if !droppingField { out.append(contentsOf: line) }
    }

    mutating func flushPartialHeader(into out: inout [UInt8]) {
        // Every line before the end ended in CRLF, so nothing is pending; kept for clarity.
        if inHeaders, problem == nil, !headerLine.isEmpty { out.append(contentsOf: headerLine) }
        headerLine = []
    }
}

func equalsIgnoringCase(_ bytes: ArraySlice<UInt8>, _ lowercase: String) -> Bool {
    guard bytes.count == lowercase.utf8.count else { return false }
    for (a, b) in zip(bytes, lowercase.utf8) where (a | 0x20) != b { return false }
    return true
}
