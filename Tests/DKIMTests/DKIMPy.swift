// Runs Tests/DKIMTests/dkimpy_check.py (dkimpy, Debian's python3-dkim) as a subprocess: the
// independent implementation that Tern's canonicalization and signatures are checked against.

import Foundation
import Testing

enum DKIMPy {
    static let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("dkimpy_check.py").path

    /// One output line per input line.
    static func run(_ mode: String, _ lines: [String]) throws -> [String] {
        let dir = NSTemporaryDirectory() + "tern-dkimpy-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let input = dir + "/in", output = dir + "/out"
        try (lines.joined(separator: "\n") + "\n").write(toFile: input, atomically: false, encoding: .utf8)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        p.arguments = [script, mode, input, output]
        try p.run()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else { throw DKIMPyFailed(status: p.terminationStatus) }
        let text = try String(contentsOfFile: output, encoding: .utf8)
        let result = text.split(separator: "\n", omittingEmptySubsequences: false).dropLast().map(String.init)
        #expect(result.count == lines.count)
        return result
    }

    struct DKIMPyFailed: Error { let status: Int32 }
}

func hex(_ bytes: [UInt8]) -> String {
    let digits = Array("0123456789abcdef".utf8)
    var out: [UInt8] = []
    out.reserveCapacity(bytes.count * 2)
    for b in bytes { out += [digits[Int(b >> 4)], digits[Int(b & 15)]] }
    return String(decoding: out, as: UTF8.self)
}
