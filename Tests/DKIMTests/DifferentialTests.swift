// Tern's canonicalization against dkimpy's on random header blocks and bodies (dkimpy runs as a
// subprocess, see DKIMPy.swift). Bodies are also fed to Tern in random pieces.

import Testing
import Randomness
@testable import DKIM

struct RandomMail {
    var rng: SplitMix64

    mutating func int(_ n: Int) -> Int { Int(rng.next() % UInt64(n)) }
    mutating func pick<T>(_ xs: [T]) -> T { xs[int(xs.count)] }

    /// A run of whitespace, words, 8-bit bytes.
    mutating func text(maxPieces: Int) -> [UInt8] {
        var out: [UInt8] = []
        for _ in 0..<int(maxPieces + 1) {
            switch int(6) {
            case 0: out += pick([[0x20], [0x09], [0x20, 0x20], [0x09, 0x20, 0x09], [0x20, 0x09]])
            case 1: out += Array("Grüße".utf8)
            case 2: out += [UInt8(0x80 + int(0x80))]
            default: out += Array(pick(["a", "Hello", "x=1;", "<id@example.com>", ":", "b c"]).utf8)
            }
        }
        return out
    }

    /// Fields with folds, whitespace around values and before line ends, repeated names.
    mutating func headerBlock() -> [UInt8] {
        var out: [UInt8] = []
        for _ in 0..<(1 + int(6)) {
            out += Array(pick(["From", "To", "SUBJECT", "subject", "X-Mixed-Case", "Received", "Date"]).utf8)
            out += [0x3A]
            out += text(maxPieces: 4)
            for _ in 0..<int(3) {
                out += [0x0D, 0x0A]
                out += pick([[0x20], [0x09], [0x20, 0x09]])
                out += text(maxPieces: 3)
            }
            out += [0x0D, 0x0A]
        }
        return out
    }

    /// Lines of text and whitespace, empty lines (often at the end), sometimes no final CRLF,
    /// now and then a CR or LF alone.
    mutating func body() -> [UInt8] {
        var out: [UInt8] = []
        for _ in 0..<int(8) {
            switch int(8) {
            case 0: out += [0x0D, 0x0A]
            case 1: out += pick([[0x0D], [0x0A], [0x20, 0x0D], [0x0D, 0x0D, 0x0A]])
            default:
                out += text(maxPieces: 5)
                out += [0x0D, 0x0A]
            }
        }
        if int(3) == 0 { out += text(maxPieces: 2) }  // a last line without CRLF
        if int(2) == 0 { out += Array(repeating: [0x0D, 0x0A], count: int(4)).flatMap { $0 } }
        return out
    }
}

@Suite struct DifferentialTests {
    @Test func canonicalizationMatchesDKIMPy() throws {
        var mail = RandomMail(rng: SplitMix64(seed: 0x6376_2011))
        var lines: [String] = []
        var expected: [[UInt8]] = []
        for i in 0..<800 {
            let mode: Canonicalization = i % 2 == 0 ? .relaxed : .simple
            if i % 4 < 2 {
                let block = mail.headerBlock()
                lines.append("H \(mode.rawValue) \(hex(block))")
                expected.append(try HeaderBlock.parse(block).flatMap { HeaderCanonicalizer.canonicalize($0, mode) })
            } else {
                let body = mail.body()
                lines.append("B \(mode.rawValue) \(hex(body))")
                // Tern's result fed in random pieces must equal the whole.
                var cuts: [Int] = []
                var at = 0
                while at < body.count {
                    at += 1 + mail.int(5)
                    if at < body.count { cuts.append(at) }
                }
                let pieces = canonicalBody(body, mode, cuts: cuts)
                let whole = BodyCanonicalizer.canonicalize(body, mode)
                #expect(pieces == whole)
                expected.append(whole)
            }
        }
        let dkimpy = try DKIMPy.run("canon", lines)
        var mismatches = 0
        for (i, got) in dkimpy.enumerated() where got != hex(expected[i]) {
            mismatches += 1
            if mismatches <= 5 { Issue.record("case \(i) \(lines[i]): dkimpy \(got), Tern \(hex(expected[i]))") }
        }
        #expect(mismatches == 0)
    }

    /// The comparison can fail: a canonical form that is off by one byte is caught.
    @Test func aWrongCanonicalFormIsCaught() throws {
        let got = try DKIMPy.run("canon", ["B relaxed \(hex(bytes("a  b \r\n\r\n")))", "H relaxed \(hex(bytes("A:  x \r\n")))"])
        #expect(got == [hex(bytes("a b\r\n")), hex(bytes("a:x\r\n"))])
        #expect(got[0] != hex(bytes("a b \r\n")))
    }
}
