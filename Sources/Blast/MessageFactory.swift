// The messages `tern blast` sends, generated once so that sending costs no more than a copy.
//
// One template of the largest size: a few header lines, a blank line, then 78-byte body lines (76
// printable characters and CRLF). A message of size S is the template's first S-2 bytes and a CRLF.
// Every line ends in CRLF and none starts with ".", so the message needs no dot-stuffing and no line
// end is ever repaired on the way out: what the sink receives is exactly S bytes, and the wire form
// is the message and ".\r\n", handed to ClientSession already encoded (with --bdat, the message
// itself: BDAT carries it as it is). When the size distribution has
// only a few sizes, each is built once and shared (arrays are copy-on-write).

public struct MessageFactory {
    let template: [UInt8]
    var cache: [Int: [UInt8]] = [:]
    var messages: [Int: [UInt8]] = [:]

    public init(sizes: SizeDistribution) {
        template = Self.makeTemplate(size: sizes.largest)
        if let distinct = sizes.distinctSizes {
            for s in distinct {
                messages[s] = Self.cut(template, to: s)
                cache[s] = messages[s]! + Self.terminator
            }
        }
    }

    /// The message of exactly `size` bytes in wire form: followed by ".\r\n" (nothing needs stuffing),
    /// for ClientSession.send(_:wireData:). `size` is from 2 to the distribution's largest.
    public func wireData(size: Int) -> [UInt8] {
        if let m = cache[size] { return m }
        return Self.cut(template, to: size) + Self.terminator
    }

    /// The message of exactly `size` bytes as the spool would hold it (no final "."), for
    /// ClientSession.send(_:message:wireReady: true): what BDAT sends.
    public func message(size: Int) -> [UInt8] {
        messages[size] ?? Self.cut(template, to: size)
    }

    static let terminator: [UInt8] = Array(".\r\n".utf8)

    static let header = Array("From: <blast@tern.test>\r\nTo: <sink@tern.test>\r\nSubject: tern blast\r\n\r\n".utf8)

    static func makeTemplate(size: Int) -> [UInt8] {
        var t = header
        t.reserveCapacity(size + 80)
        let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789".utf8)
        var line = 0
        while t.count < size {
            // "line 000001 " then letters, shifted per line so the body does not compress to nothing.
            let number = Array(String(line % 1_000_000).utf8)
            let label = Array("line ".utf8) + Array(repeating: UInt8(ascii: "0"), count: 6 - number.count) + number + [32]
            t += label
            for k in 0..<(76 - label.count) { t.append(alphabet[(k + line) % alphabet.count]) }
            t += [13, 10]
            line += 1
        }
        return t
    }

    static func cut(_ template: [UInt8], to size: Int) -> [UInt8] {
        var m = Array(template[0..<(size - 2)])
        // Cutting between CR and LF would leave a bare CR; a letter takes its place.
        if m.last == 13 { m[m.count - 1] = UInt8(ascii: "x") }
        m += [13, 10]
        return m
    }
}
