// Canonicalization (RFC 6376 §3.4): the example of §3.4.6 and each rule of §3.4.1-§3.4.5, the body
// fed whole, byte by byte, and split at every pair of points.

import Testing
@testable import DKIM

func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }
func text(_ b: [UInt8]) -> String { String(decoding: b, as: UTF8.self) }

/// The body canonicalized with the chunks cut at `cuts`.
func canonicalBody(_ body: [UInt8], _ mode: Canonicalization, cuts: [Int]) -> [UInt8] {
    var c = BodyCanonicalizer(mode)
    var out = DKIMByteCollector()
    var start = 0
    for cut in cuts + [body.count] {
        c.update(Array(body[start..<cut]), into: &out)
        start = cut
    }
    c.finish(into: &out)
    #expect(c.canonicalLength == out.bytes.count)
    return out.bytes
}

/// Checks `body` canonicalizes to `expected` whole, byte by byte, and cut at every pair of points.
func expectBody(_ body: String, _ mode: Canonicalization, _ expected: String,
                sourceLocation: SourceLocation = #_sourceLocation) {
    let b = bytes(body)
    #expect(text(BodyCanonicalizer.canonicalize(b, mode)) == expected, sourceLocation: sourceLocation)
    #expect(text(canonicalBody(b, mode, cuts: Array(0...b.count))) == expected, sourceLocation: sourceLocation)
    for i in 0...b.count {
        for j in i...b.count {
            let got = canonicalBody(b, mode, cuts: [i, j])
            if got != Array(expected.utf8) {
                Issue.record("cut at \(i), \(j): \(text(got).debugDescription)", sourceLocation: sourceLocation)
                return
            }
        }
    }
}

func canonicalHeaders(_ block: String, _ mode: Canonicalization) throws -> String {
    try text(HeaderBlock.parse(bytes(block)).flatMap { HeaderCanonicalizer.canonicalize($0, mode) })
}

@Suite struct CanonicalizationTests {
    // §3.4.6, with <SP>, <HTAB> and <CRLF> written out.
    static let exampleHeader = "A: X\r\nB : Y\t\r\n\tZ  \r\n"
    static let exampleBody = " C \r\nD \t E\r\n\r\n\r\n"

    @Test func rfc6376Example() throws {
        #expect(try canonicalHeaders(Self.exampleHeader, .relaxed) == "a:X\r\nb:Y Z\r\n")
        expectBody(Self.exampleBody, .relaxed, " C\r\nD E\r\n")
        #expect(try canonicalHeaders(Self.exampleHeader, .simple) == Self.exampleHeader)
        expectBody(Self.exampleBody, .simple, " C \r\nD \t E\r\n")
    }

    // §3.4.1: simple header canonicalization changes nothing, not even case or folding.
    @Test func simpleHeadersAreUnchanged() throws {
        let block = "SUBJECT:  Hello \t\r\n   world \r\nX-Tab:\tv\r\n"
        #expect(try canonicalHeaders(block, .simple) == block)
    }

    // §3.4.2: names lowercased, values unfolded, WSP runs one SP, WSP at the ends and around the colon gone.
    @Test func relaxedHeaderRules() throws {
        #expect(try canonicalHeaders("SuBjEcT: Hi\r\n", .relaxed) == "subject:Hi\r\n")
        #expect(try canonicalHeaders("Subject: a\r\n b\r\n\tc\r\n", .relaxed) == "subject:a b c\r\n")
        #expect(try canonicalHeaders("Subject: a \t  b\r\n", .relaxed) == "subject:a b\r\n")
        #expect(try canonicalHeaders("Subject: a  \t\r\n", .relaxed) == "subject:a\r\n")
        #expect(try canonicalHeaders("Subject \t:\t  a\r\n", .relaxed) == "subject:a\r\n")
        #expect(try canonicalHeaders("Subject:\r\n", .relaxed) == "subject:\r\n")
        #expect(try canonicalHeaders("Subject: \r\n \r\n", .relaxed) == "subject:\r\n")
        // Case of the value is kept, 8-bit bytes too.
        #expect(try canonicalHeaders("Subject: ÉtÉ  Été\r\n", .relaxed) == "subject:ÉtÉ Été\r\n")
    }

    // §3.4.3: simple body: empty lines at the end go, an empty body is one CRLF, a missing CRLF is added.
    @Test func simpleBodyRules() {
        expectBody("", .simple, "\r\n")
        expectBody("\r\n", .simple, "\r\n")
        expectBody("\r\n\r\n\r\n", .simple, "\r\n")
        expectBody("a\r\n", .simple, "a\r\n")
        expectBody("a\r\n\r\n\r\n", .simple, "a\r\n")
        expectBody("a", .simple, "a\r\n")
        expectBody("\r\n\r\na \t\r\n\r\nb  \r\n \r\n", .simple, "\r\n\r\na \t\r\n\r\nb  \r\n \r\n")
        // A CR or LF alone is content, not a line end.
        expectBody("a\rb\nc\r\n\r", .simple, "a\rb\nc\r\n\r\r\n")
        expectBody("a\r\r\n\r\n", .simple, "a\r\r\n")
        expectBody("\n\r\n", .simple, "\n\r\n")
    }

    // §3.4.4: relaxed body: WSP at line ends goes, WSP runs are one SP, empty lines at the end go,
    // an empty body stays empty, a missing CRLF is added.
    @Test func relaxedBodyRules() {
        expectBody("", .relaxed, "")
        expectBody("\r\n", .relaxed, "")
        expectBody("\r\n\r\n", .relaxed, "")
        expectBody(" \t\r\n \r\n", .relaxed, "")
        expectBody("a \t\r\n", .relaxed, "a\r\n")
        expectBody("a  b\t\tc \t d\r\n", .relaxed, "a b c d\r\n")
        expectBody("  a\r\n", .relaxed, " a\r\n")
        expectBody("a\r\n\r\n \r\n\t\r\n", .relaxed, "a\r\n")
        expectBody("a\r\n \r\nb\r\n", .relaxed, "a\r\n\r\nb\r\n")
        expectBody("a", .relaxed, "a\r\n")
        // Whitespace on a last line without CRLF: one SP stays (dkimpy and the RFC's order of rules).
        expectBody("a  ", .relaxed, "a \r\n")
        expectBody("a\r\n  ", .relaxed, "a\r\n \r\n")
        // A CR or LF alone is content; whitespace before it is not at the end of a line.
        expectBody("a \rb\r\n", .relaxed, "a \rb\r\n")
        expectBody("a \r\r\n", .relaxed, "a \r\r\n")
        expectBody("a \n \r\n", .relaxed, "a \n\r\n")
        expectBody("a\r", .relaxed, "a\r\r\n")
        // 8-bit bytes are content.
        expectBody("Grüße  \r\n", .relaxed, "Grüße\r\n")
    }

    // §3.4.5: the body is canonicalized only up to the end; l= is never used, so nothing is cut.
    @Test func canonicalLengthCountsEveryByteHashed() {
        var c = BodyCanonicalizer(.relaxed)
        var out = DKIMByteCollector()
        c.update(bytes("a  b\r\n\r\n"), into: &out)
        c.finish(into: &out)
        #expect(c.canonicalLength == 5)
        #expect(text(out.bytes) == "a b\r\n")
    }

    /// Bodies larger than the 64 KiB the canonicalizer works through at a time, and more held empty
    /// lines than fit in its buffer: the same bytes whole, in 64 KiB-straddling pieces and small ones.
    @Test func largeBodiesAndManyHeldEmptyLines() {
        let blank = String(repeating: "\r\n", count: 100_000)
        for mode in [Canonicalization.relaxed, .simple] {
            let body = bytes("a\r\n" + blank + " b \r" + blank + "c" + blank)
            // The space before a CR alone is not at the end of a line, so relaxed keeps it too.
            let expected = "a\r\n" + blank + " b \r" + blank + "c\r\n"
            #expect(text(BodyCanonicalizer.canonicalize(body, mode)) == expected)
            #expect(text(canonicalBody(body, mode, cuts: [65535, 65537, 131_073])) == expected)
            #expect(text(canonicalBody(body, mode, cuts: Array(stride(from: 1, to: body.count, by: 997)))) == expected)
        }
        var text = ""
        for i in 0..<20_000 { text += i % 7 == 0 ? " \t\r\n\r\n" : "w\(i)  x\t \r" }
        let body = bytes(text)
        for mode in [Canonicalization.relaxed, .simple] {
            let whole = BodyCanonicalizer.canonicalize(body, mode)
            #expect(canonicalBody(body, mode, cuts: Array(stride(from: 3, to: body.count, by: 4093))) == whole)
            #expect(canonicalBody(body, mode, cuts: Array(stride(from: 1, to: body.count, by: 1))) == whole)
        }
    }

    /// Empty lines held over from one update, then a whole slice of content in the next: the held
    /// CRLFs must not be put in the slice's buffer ahead of 64 KiB of content (a heap overflow once).
    @Test func heldEmptyLinesBeforeAFullSliceOfContent() {
        for mode in [Canonicalization.relaxed, .simple] {
            for held in [1, 1000, 30_000, 32_767, 40_000] {
                let first = bytes("a" + String(repeating: "\r\n", count: held))
                let second = [UInt8](repeating: UInt8(ascii: "x"), count: 65536) + bytes("\r\n")
                let whole = BodyCanonicalizer.canonicalize(first + second, mode)
                #expect(canonicalBody(first + second, mode, cuts: [first.count]) == whole, "\(mode) \(held)")
                #expect(whole.count == 1 + 2 * held + 65538)
            }
        }
    }

    @Test func cPairsParse() {
        #expect(CanonicalizationPair("relaxed/relaxed") == .relaxedRelaxed)
        #expect(CanonicalizationPair("simple") == .simpleSimple)
        #expect(CanonicalizationPair("relaxed") == CanonicalizationPair(header: .relaxed, body: .simple))
        #expect(CanonicalizationPair("simple/relaxed")?.description == "simple/relaxed")
        for bad in ["", "/", "relaxed/", "loose/simple", "simple/simple/simple", "Relaxed"] {
            #expect(CanonicalizationPair(bad) == nil)
        }
    }
}

@Suite struct HeaderBlockTests {
    @Test func foldedAndRepeatedFields() throws {
        let fields = try HeaderBlock.parse(bytes("Received: a\r\n\tb\r\nTo: x\r\nReceived: c\r\nSubject : s\r\n"))
        #expect(fields.map(\.name) == ["Received", "To", "Received", "Subject"])
        #expect(text(fields[0].raw) == "Received: a\r\n\tb\r\n")
        #expect(fields[3].lowercasedName == "subject")
        #expect(try HeaderBlock.parse([]).isEmpty)
    }

    @Test func unparsableBlocksSayWhichLine() {
        for (block, message) in [
            (" folded: first\r\n", "header line 1: a continuation line"),
            ("To: x\r\nno colon\r\n", "header line 2: header field without a colon"),
            ("To: x\r\n: no name\r\n", "header line 2: header field without a name"),
            ("To: x\nSubject: y\r\n", "header line 1: LF without CR"),
            ("To: x\r\nSubject: y\rz\r\n", "header line 2: CR without LF"),
            ("To: x\r\nSubject: y", "header line 2: the header block does not end with CRLF"),
            ("To: x\r\nSub ject: y\r\n", "header line 2: header field name with a byte"),
        ] {
            #expect(throws: DKIMError.self) { try HeaderBlock.parse(bytes(block)) }
            do {
                _ = try HeaderBlock.parse(bytes(block))
            } catch {
                #expect("\(error)".hasPrefix(message), "\(error)")
            }
        }
    }

    @Test func splitFindsTheEmptyLine() {
        func split(_ s: String) -> (Int, Int) {
            bytes(s).withUnsafeBytes { HeaderBlock.split($0) }
        }
        #expect(split("A: b\r\n\r\nbody") == (6, 8))
        #expect(split("\r\nbody") == (0, 2))
        #expect(split("A: b\r\n") == (6, 6))
        #expect(split("A: b\r\n\r\n") == (6, 8))
    }
}
