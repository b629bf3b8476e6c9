import Testing
import SMTPProtocol
@testable import Blast

@Suite struct MessageFactoryTests {
    /// Every line ends in CRLF, there is no bare CR or LF, and no line starts with ".".
    static func checkLines(_ m: [UInt8]) {
        #expect(m.suffix(2) == [13, 10])
        var lineStart = true
        for (i, b) in m.enumerated() {
            if lineStart { #expect(b != UInt8(ascii: "."), "line at \(i) starts with a dot") }
            if b == 13 { #expect(i + 1 < m.count && m[i + 1] == 10, "bare CR at \(i)") }
            if b == 10 { #expect(i > 0 && m[i - 1] == 13, "bare LF at \(i)") }
            lineStart = b == 10
        }
    }

    @Test func everySizeIsExactAndNeedsNoRepair() throws {
        let factory = MessageFactory(sizes: try SizeDistribution(parsing: "16-400"))
        for size in 16...400 {
            let wire = factory.wireData(size: size)
            #expect(wire.suffix(3) == Array(".\r\n".utf8))
            let m = Array(wire.dropLast(3))
            #expect(m.count == size)
            Self.checkLines(m)
            // Dot-safe and CRLF-clean: encoding it changes nothing but the terminator.
            #expect(encodeOutboundData(m) == wire)
        }
    }

    @Test func largeMessagesHaveShortLines() throws {
        let factory = MessageFactory(sizes: .fixed(1 << 20))
        let m = Array(factory.wireData(size: 1 << 20).dropLast(3))
        #expect(m.count == 1 << 20)
        Self.checkLines(m)
        var longest = 0, current = 0
        for b in m { if b == 10 { longest = max(longest, current); current = 0 } else { current += 1 } }
        #expect(longest <= 78)
        // The header comes first, then a blank line.
        #expect(String(decoding: m.prefix(80), as: UTF8.self).hasPrefix("From: <blast@tern.test>\r\nTo: "))
    }

    @Test func fewSizesAreBuiltOnceAndShared() throws {
        let factory = MessageFactory(sizes: try SizeDistribution(parsing: "1k:1,2k:1"))
        #expect(Set(factory.cache.keys) == [1024, 2048])
        #expect(factory.wireData(size: 1024) == factory.cache[1024])
    }
}
