import Randomness
import Testing
@testable import SMTPProtocol

/// What a decoder made of `input` fed in pieces of `piece` bytes (0: all at once).
private func decode(_ input: [UInt8], piece: Int, limits: DataDecoder.Limits, bodyRuns: Bool = true) -> (out: [UInt8], used: Int, problem: DataDecoder.Problem?, size: Int, received: Int, finished: Bool) {
    var d = DataDecoder(limits: limits)
    d.copiesBodyRuns = bodyRuns
    var out: [UInt8] = []
    var used = 0
    let step = piece == 0 ? max(input.count, 1) : piece
    var at = 0
    while at < input.count && !d.isFinished {
        let end = min(at + step, input.count)
        let n = input[at..<end].withUnsafeBytes { d.decode($0, into: &out) }
        used += n
        at = end
    }
    return (out, used, d.problem, d.size, d.receivedCount, d.isFinished)
}

@Suite struct DataDecoderSplitTests {
    /// The line scan takes eight bytes at a time when it can: fed whole or one byte at a time (which
    /// never gives it eight), the decoder must make the same message, problems and end of data.
    @Test func eightBytesAtATimeAgreesWithOneByteAtATime() {
        var rng = SplitMix64(seed: 7)
        let alphabet: [UInt8] = [13, 10, 0, UInt8(ascii: "."), UInt8(ascii: ":"), UInt8(ascii: " "), 0xC3]
        let limits = DataDecoder.Limits(maxLineLength: 60, maxMessageSize: 4000)
        var clean = 0
        for round in 0..<2000 {
            var input: [UInt8] = Array((round % 2 == 0 ? "Subject: x\r\nBcc: a@b\r\n\r\n" : "").utf8)
            // Well-formed CRLF lines (some starting with a dot, some near the length limit) ...
            for _ in 0..<Int(rng.next() % 12) {
                let r = rng.next()
                if r % 5 == 0 { input.append(UInt8(ascii: ".")) }
                for k in 0..<Int((r >> 8) % 57) { input.append(k % 9 == 8 ? UInt8(ascii: " ") : UInt8(ascii: "a") + UInt8(k % 26)) }
                input += [13, 10]
            }
            // ... and in every fourth round, stray CR, LF, NUL and dots anywhere.
            if round % 4 == 0 {
                for _ in 0..<Int(rng.next() % 6) {
                    let r = rng.next()
                    input.insert(alphabet[Int(r % UInt64(alphabet.count))], at: Int((r >> 16) % UInt64(input.count + 1)))
                }
            }
            if round % 3 != 0 { input += Array("\r\n.\r\nNOOP\r\n".utf8) }
            let whole = decode(input, piece: 0, limits: limits)
            let bytewise = decode(input, piece: 1, limits: limits)
            let odd = decode(input, piece: 13, limits: limits)
            // With a problem the message is refused, and how much of it was collected first is moot.
            if whole.problem == nil {
                clean += 1
                #expect(whole.out == bytewise.out && whole.out == odd.out, "round \(round)")
            }
            #expect(whole.problem == bytewise.problem && whole.problem == odd.problem, "round \(round)")
            #expect(whole.used == bytewise.used && whole.used == odd.used, "round \(round)")
            #expect(whole.size == bytewise.size && whole.finished == bytewise.finished, "round \(round)")
            #expect(whole.received == bytewise.received, "round \(round)")
            if (whole.problem == nil && whole.out != bytewise.out) || whole.problem != bytewise.problem { return }
        }
        #expect(clean > 1000, "most rounds should be messages the decoder accepts")
    }

    /// The body is copied a run of lines at a time; line by line (the header section's way, and the
    /// decoder's before runs) is the reference: same message, same first problem, same size, same end,
    /// fed whole, a byte at a time and in odd pieces.
    @Test func bodyRunsAgreeWithLineByLine() {
        var rng = SplitMix64(seed: 11)
        let alphabet: [UInt8] = [13, 10, 0, UInt8(ascii: "."), UInt8(ascii: "a")]
        let limits = DataDecoder.Limits(maxLineLength: 80, maxMessageSize: 6000)
        var clean = 0, refused = 0
        for round in 0..<3000 {
            var input: [UInt8] = Array("Subject: runs\r\n\r\n".utf8)
            for _ in 0..<Int(rng.next() % 60) {
                let r = rng.next()
                if r % 7 == 0 { input.append(UInt8(ascii: ".")) }
                if r % 11 == 0 { input += Array(".\r\n".utf8); continue }  // a line of one stuffed dot
                for k in 0..<Int((r >> 8) % 90) { input.append(UInt8(ascii: "a") + UInt8(k % 26)) }
                input += [13, 10]
            }
            if round % 3 == 0 {
                for _ in 0..<Int(rng.next() % 4) {
                    let r = rng.next()
                    input.insert(alphabet[Int(r % UInt64(alphabet.count))], at: Int((r >> 16) % UInt64(input.count + 1)))
                }
            }
            if round % 5 != 0 { input += Array("\r\n.\r\nQUIT\r\n".utf8) }
            let reference = decode(input, piece: 0, limits: limits, bodyRuns: false)
            if reference.problem == nil { clean += 1 } else { refused += 1 }
            for piece in [0, 1, 7, 64] {
                let runs = decode(input, piece: piece, limits: limits)
                #expect(runs.problem == reference.problem, "round \(round) piece \(piece)")
                if reference.problem == nil { #expect(runs.out == reference.out, "round \(round) piece \(piece)") }
                #expect(runs.used == reference.used && runs.size == reference.size, "round \(round) piece \(piece)")
                #expect(runs.finished == reference.finished, "round \(round) piece \(piece)")
                if runs.problem != reference.problem || (reference.problem == nil && runs.out != reference.out) { return }
            }
        }
        #expect(clean > 1000 && refused > 200, "both accepted and refused messages must be exercised")
    }

    @Test func aNULInsideAWordIsFound() {
        for offset in 0..<16 {
            var input = Array(repeating: UInt8(ascii: "a"), count: 16)
            input[offset] = 0
            input = Array("\r\n".utf8) + input + Array("\r\n.\r\n".utf8)
            let whole = decode(input, piece: 0, limits: .init())
            #expect(whole.problem == .nul, "NUL at \(offset)")
            #expect(whole.finished)
        }
    }
}

@Suite struct LineEndScanTests {
    /// scanForLineEnd's answer and a byte-by-byte search's, from `start`.
    static func scan(_ bytes: [UInt8], from start: Int, stopAtNUL: Bool) -> (got: Int, expected: Int) {
        let expected = (start..<bytes.count).first {
            bytes[$0] == 13 || bytes[$0] == 10 || (stopAtNUL && bytes[$0] == 0)
        } ?? bytes.count
        let got = bytes.withUnsafeBufferPointer {
            scanForLineEnd($0.baseAddress ?? UnsafePointer(bitPattern: 1)!, from: start, count: bytes.count,
                           stopAtNUL: stopAtNUL)
        }
        return (got, expected)
    }

    /// The scan takes sixteen bytes, then eight, then one at a time: a CR, LF or NUL at any offset from
    /// any start, and none at all, must give what a byte-by-byte search gives.
    @Test func agreesWithAByteByByteSearch() {
        for length in 0..<70 {
            for hit in [-1] + Array(0..<length) {
                for value: UInt8 in [13, 10, 0] {
                    var bytes = [UInt8](repeating: UInt8(ascii: "x"), count: length)
                    if hit >= 0 { bytes[hit] = value }
                    for start in [0, 1, 7, 15, 17] where start <= length {
                        for stopAtNUL in [false, true] {
                            let (got, expected) = Self.scan(bytes, from: start, stopAtNUL: stopAtNUL)
                            #expect(got == expected, "length \(length) hit \(hit) value \(value) start \(start)")
                            if got != expected { return }
                        }
                    }
                }
            }
        }
    }

    /// Several line ends in one sixteen-byte block (the first matching lane is taken from the mask):
    /// random bytes drawn mostly from CR, LF, NUL and letters, every start.
    @Test func theFirstOfSeveralInABlockIsFound() {
        var rng = SplitMix64(seed: 0x9E37_79B9_7F4A_7C15)
        func next() -> UInt64 { rng.next() }
        let alphabet: [UInt8] = [13, 10, 0, 65, 66, 67, 68, 69, 70, 71, 72, 73, 74, 75, 76, 77]
        for round in 0..<300 {
            let length = Int(next() % 80)
            let bytes = (0..<length).map { _ in alphabet[Int(next() % UInt64(round % 2 == 0 ? 16 : 5))] }
            for start in 0...length {
                for stopAtNUL in [false, true] {
                    let (got, expected) = Self.scan(bytes, from: start, stopAtNUL: stopAtNUL)
                    #expect(got == expected, "round \(round) start \(start)")
                    if got != expected { return }
                }
            }
        }
    }
}
