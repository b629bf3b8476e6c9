import Randomness
import Testing
@testable import SMTPProtocol

/// Every CR is followed by LF and every LF follows a CR, checked byte by byte.
func clientHasOnlyCRLF(_ bytes: [UInt8]) -> Bool {
    for (i, b) in bytes.enumerated() {
        if b == 13 && (i + 1 == bytes.count || bytes[i + 1] != 10) { return false }
        if b == 10 && (i == 0 || bytes[i - 1] != 13) { return false }
    }
    return true
}

func clientEncode(_ s: String) -> String {
    String(decoding: encodeOutboundData(Array(s.utf8)), as: UTF8.self)
}

/// The encoder's contract byte by byte, as a reference for the run-copying one.
func referenceEncode(_ m: [UInt8]) -> [UInt8] {
    var out: [UInt8] = []
    var lineStart = true
    var i = 0
    while i < m.count {
        let b = m[i]
        if b == 13 || b == 10 {
            if b == 13 && i + 1 < m.count && m[i + 1] == 10 { i += 1 }
            out += [13, 10]
            lineStart = true
        } else {
            if lineStart && b == UInt8(ascii: ".") { out.append(b) }
            out.append(b)
            lineStart = false
        }
        i += 1
    }
    if !lineStart { out += [13, 10] }
    return out + Array(".\r\n".utf8)
}

@Suite struct ClientOutboundDataTests {
    /// Longer messages than the exhaustive test reaches, so that the eight-bytes-at-a-time scan meets
    /// line ends and dots at every offset within a word: same bytes as the reference.
    @Test func runCopyingMatchesTheByteByByteReference() {
        var rng = SplitMix64(seed: 42)
        let alphabet: [UInt8] = [13, 10, UInt8(ascii: "."), UInt8(ascii: "a"), UInt8(ascii: "b"), 0, 0xC3, 0x8D]
        for round in 0..<3000 {
            let length = Int(rng.next() % 300)
            // Some rounds mostly ordinary bytes (long runs), some dense with CR, LF and dots.
            let dense = round % 3 == 0
            let m: [UInt8] = (0..<length).map { _ in
                let r = rng.next()
                if !dense && r % 16 != 0 { return UInt8(ascii: "x") }
                return alphabet[Int((r >> 8) % UInt64(alphabet.count))]
            }
            let got = encodeOutboundData(m)
            let want = referenceEncode(m)
            #expect(got == want, "message \(m)")
            if got != want { return }
        }
        // A large, well-formed message: one run with stuffed dots.
        var big: [UInt8] = []
        for n in 0..<5000 { big += Array((n % 7 == 0 ? ".line \(n)\r\n" : "line \(n) text text\r\n").utf8) }
        #expect(encodeOutboundData(big) == referenceEncode(big))
    }

    @Test func dotStuffing() {
        #expect(clientEncode(".hidden\r\n..two\r\n.\r\nmid.dle\r\n") == "..hidden\r\n...two\r\n..\r\nmid.dle\r\n.\r\n")
    }

    @Test func bareLineEndsBecomeCRLF() {
        #expect(clientEncode("a\nb\n") == "a\r\nb\r\n.\r\n")
        #expect(clientEncode("a\rb\r") == "a\r\nb\r\n.\r\n")
        #expect(clientEncode("a\r\r\nb") == "a\r\n\r\nb\r\n.\r\n")
        #expect(clientEncode("a\n\rb") == "a\r\n\r\nb\r\n.\r\n")
        // A dot after a bare line end still starts a line: it must be stuffed.
        #expect(clientEncode("a\n.\nb\r.\r") == "a\r\n..\r\nb\r\n..\r\n.\r\n")
    }

    @Test func missingFinalCRLFIsAdded() {
        #expect(clientEncode("abc") == "abc\r\n.\r\n")
        #expect(clientEncode(".") == "..\r\n.\r\n")
        #expect(clientEncode("abc\r\n") == "abc\r\n.\r\n")
    }

    @Test func emptyMessageIsOnlyTheTerminator() {
        #expect(encodeOutboundData([]) == Array(".\r\n".utf8))
        #expect(clientEncode("\r\n") == "\r\n.\r\n")
    }

    @Test func checkerCatchesBareCRAndLF() {
        #expect(!clientHasOnlyCRLF(Array("a\rb".utf8)))
        #expect(!clientHasOnlyCRLF(Array("a\nb".utf8)))
        #expect(!clientHasOnlyCRLF(Array("\n".utf8)))
        #expect(!clientHasOnlyCRLF(Array("a\r".utf8)))
        #expect(clientHasOnlyCRLF(Array("a\r\nb\r\n".utf8)))
    }

    /// Every message of up to 6 bytes from { CR, LF, ".", "a", NUL-free 8-bit }: only CRLF on the wire,
    /// one terminator at the end and nowhere before it, and the server's DataDecoder reads back the
    /// message with its line ends repaired.
    @Test func exhaustiveShortMessages() {
        let alphabet: [UInt8] = [13, 10, UInt8(ascii: "."), UInt8(ascii: "a"), 0xC3]
        var messages: [[UInt8]] = [[]]
        var frontier: [[UInt8]] = [[]]
        for _ in 0..<6 {
            frontier = frontier.flatMap { m in alphabet.map { m + [$0] } }
            messages += frontier
        }
        var failures = 0
        for m in messages where failures < 5 {
            let wire = encodeOutboundData(m)
            var ok = clientHasOnlyCRLF(wire)
            ok = ok && (wire == Array(".\r\n".utf8) || wire.suffix(5) == Array("\r\n.\r\n".utf8))
            // Reference: repair line ends, add the last one.
            var repaired: [UInt8] = []
            var i = 0
            while i < m.count {
                if m[i] == 13 || m[i] == 10 {
                    if m[i] == 13 && i + 1 < m.count && m[i + 1] == 10 { i += 1 }
                    repaired += [13, 10]
                } else {
                    repaired.append(m[i])
                }
                i += 1
            }
            if !repaired.isEmpty && repaired.last != 10 { repaired += [13, 10] }
            var decoder = DataDecoder(limits: .init())
            var decoded: [UInt8] = []
            let consumed = wire.withUnsafeBytes { decoder.decode($0, into: &decoded) }
            ok = ok && consumed == wire.count && decoder.isFinished && decoder.problem == nil && decoded == repaired
            if !ok {
                failures += 1
                Issue.record("message \(m) encoded as \(wire)")
            }
        }
        #expect(failures == 0)
        #expect(messages.count == 19531)
    }
}
