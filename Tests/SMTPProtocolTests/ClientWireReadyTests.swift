import Randomness
import Testing
@testable import SMTPProtocol

/// `isWireReady` accepts exactly the messages that encoding leaves alone: those for which the
/// byte-by-byte reference encoder returns the message itself and ".\r\n".
@Suite struct ClientWireReadyTests {
    static let terminator = Array(".\r\n".utf8)

    /// The check, the run-copying encoder and the reference encoder agree on `m`.
    func agrees(_ m: [UInt8]) -> Bool {
        let unchanged = referenceEncode(m) == m + Self.terminator
        return isWireReady(m) == unchanged && (encodeOutboundData(m) == m + Self.terminator) == unchanged
    }

    @Test func everyShortMessage() {
        let alphabet: [UInt8] = [13, 10, UInt8(ascii: "."), UInt8(ascii: "a"), 0xC3]
        var frontier: [[UInt8]] = [[]]
        var checked = 0, accepted = 0, failures = 0
        for length in 0...6 {
            if length > 0 { frontier = frontier.flatMap { m in alphabet.map { m + [$0] } } }
            for m in frontier where failures < 5 {
                checked += 1
                if isWireReady(m) { accepted += 1 }
                if !agrees(m) {
                    failures += 1
                    Issue.record("message \(m): isWireReady \(isWireReady(m)), reference \(referenceEncode(m))")
                }
            }
        }
        #expect(failures == 0)
        #expect(checked == 19531)
        // [], "\r\n", "a\r\n", "\r\n\r\n", ... : the exhaustive set holds some of each kind.
        #expect(accepted > 20 && accepted < checked / 10)
    }

    /// Longer messages, so that the eight-bytes-at-a-time scan meets CR, LF and dots at every offset in
    /// a word. Most are built from well-formed lines and then sometimes spoiled by one byte, so both
    /// answers come up often.
    @Test func randomMessagesAgreeWithTheReference() {
        var rng = SplitMix64(seed: 2026)
        let spoilers: [UInt8] = [13, 10, UInt8(ascii: ".")]
        var accepted = 0, rejected = 0
        for round in 0..<4000 {
            var m: [UInt8] = []
            let lines = Int(rng.next() % 12)
            for _ in 0..<lines {
                let length = Int(rng.next() % (round % 4 == 0 ? 200 : 20))
                for _ in 0..<length { m.append(UInt8(ascii: "a") + UInt8(rng.next() % 26)) }
                m += [13, 10]
            }
            if !m.isEmpty && rng.next() % 2 == 0 {
                let at = Int(rng.next() % UInt64(m.count))
                m[at] = spoilers[Int(rng.next() % 3)]
            }
            if rng.next() % 8 == 0 && !m.isEmpty { m.removeLast() }  // a CR at the end, or no line end
            if isWireReady(m) { accepted += 1 } else { rejected += 1 }
            #expect(agrees(m), "message \(m)")
            if !agrees(m) { return }
        }
        #expect(accepted > 1000 && rejected > 1000)
    }

    /// A dot that starts a line, a bare LF or a bare CR anywhere in a long message, at every offset.
    @Test func oneBadByteAtEveryOffset() {
        var clean: [UInt8] = []
        for n in 0..<40 { clean += Array("line \(n) of the message, with a.dot inside\r\n".utf8) }
        #expect(isWireReady(clean))
        var lineStarts = [0]
        for i in clean.indices where clean[i] == 10 && i + 1 < clean.count { lineStarts.append(i + 1) }
        for start in lineStarts {
            var m = clean
            m.insert(UInt8(ascii: "."), at: start)
            #expect(!isWireReady(m), "dot at line start \(start)")
        }
        for i in clean.indices where clean[i] != 13 && clean[i] != 10 {
            var lf = clean
            lf[i] = 10
            #expect(!isWireReady(lf), "bare LF at \(i)")
            var cr = clean
            cr[i] = 13
            #expect(!isWireReady(cr), "bare CR at \(i)")
        }
        for k in 1...3 {
            #expect(!isWireReady(Array(clean.dropLast(k))), "last \(k) bytes cut")
        }
    }

    @Test func edgeCases() {
        func ready(_ s: String) -> Bool { isWireReady(Array(s.utf8)) }
        #expect(ready(""))
        #expect(ready("\r\n"))
        #expect(ready("\r\n\r\n"))
        #expect(ready("a.b\r\n"))
        #expect(ready("Subject: x\r\n\r\nbody\r\n"))
        #expect(!ready("."))
        #expect(!ready(".\r\n"))
        #expect(!ready("..\r\n"))
        #expect(!ready("a\r\n.\r\n"))
        #expect(!ready("a\r\n.b\r\n"))
        #expect(!ready("abc"))
        #expect(!ready("abc\r"))
        #expect(!ready("abc\n"))
        #expect(!ready("\n"))
        #expect(!ready("\r"))
        #expect(!ready("a\r\r\n"))
        #expect(!ready("a\n\r\n"))
        #expect(!ready("a\rb\r\n"))
        // A dot after a bare line end starts a line too; either way it is refused.
        #expect(!ready("a\n.b\r\n"))
    }
}
