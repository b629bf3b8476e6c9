// Message sizes for `tern blast --size`: one size, a uniform range, or a weighted list.
//
//   4096  4k  1m         every message that size (k = 1024 bytes, m = 1024 k)
//   1k-100k              uniform between the two, inclusive
//   1k:70,10k:25,1m:5    a weighted list: 70 % 1 KiB, 25 % 10 KiB, 5 % 1 MiB; an entry may be a range
//                        ("1k-10k:90,1m:10"); weights are positive integers, not necessarily summing to 100
//
// A size is the whole message as handed to DATA (header and body, CRLF lines, before dot-stuffing
// and without the final "."), so a sink's byte counters match it.

import SMTPProtocol

public struct SizeDistribution: Equatable, Sendable, CustomStringConvertible {
    public struct Entry: Equatable, Sendable {
        public var sizes: ClosedRange<Int>
        public var weight: Int
    }

    /// Smallest and largest message size accepted (the template is generated once at the largest).
    public static let minimumSize = 16
    public static let maximumSize = 256 << 20

    public let entries: [Entry]
    /// The text it was parsed from, for reports.
    public let spec: String
    let totalWeight: Int

    public init(entries: [Entry], spec: String) {
        precondition(!entries.isEmpty)
        self.entries = entries
        self.spec = spec
        totalWeight = entries.reduce(0) { $0 + $1.weight }
    }

    public static func fixed(_ size: Int) -> SizeDistribution {
        SizeDistribution(entries: [Entry(sizes: size...size, weight: 1)], spec: String(size))
    }

    public var description: String { spec }

    /// Parses the forms above; the error says what is wrong with which part.
    public init(parsing text: String) throws(BlastOptionError) {
        let trimmed = text.trimmingSpaces
        guard !trimmed.isEmpty else { throw BlastOptionError("--size: empty") }
        let parts = trimmed.split(separator: ",", omittingEmptySubsequences: false)
        var entries: [Entry] = []
        for part in parts {
            let p = String(part).trimmingSpaces
            var rangeText = p
            var weight = 1
            if let colon = p.firstIndex(of: ":") {
                rangeText = String(p[..<colon])
                let w = p[p.index(after: colon)...]
                guard let n = Int(w), n > 0, n <= 1_000_000 else {
                    throw BlastOptionError("--size: weight \"\(w)\" in \"\(p)\" is not a whole number from 1 to 1000000")
                }
                weight = n
            } else if parts.count > 1 {
                throw BlastOptionError("--size: \"\(p)\" in a list needs a weight (SIZE:WEIGHT)")
            }
            let sizes: ClosedRange<Int>
            if let dash = rangeText.firstIndex(of: "-") {
                let lo = try Self.parseBytes(String(rangeText[..<dash]))
                let hi = try Self.parseBytes(String(rangeText[rangeText.index(after: dash)...]))
                guard lo <= hi else { throw BlastOptionError("--size: range \"\(rangeText)\" goes downwards") }
                sizes = lo...hi
            } else {
                let n = try Self.parseBytes(rangeText)
                sizes = n...n
            }
            entries.append(Entry(sizes: sizes, weight: weight))
        }
        self.init(entries: entries, spec: trimmed)
    }

    /// "4096", "4k", "4K", "4kb", "4KiB", "1m": bytes, with binary multiples.
    public static func parseBytes(_ text: String) throws(BlastOptionError) -> Int {
        let t = text.trimmingSpaces.lowercased()
        var digits = Substring(t)
        var unit = 1
        for (suffix, multiple) in [("kib", 1 << 10), ("kb", 1 << 10), ("k", 1 << 10),
                                   ("mib", 1 << 20), ("mb", 1 << 20), ("m", 1 << 20), ("b", 1)] {
            if t.hasSuffix(suffix) {
                digits = t.dropLast(suffix.count)
                unit = multiple
                break
            }
        }
        guard !digits.isEmpty, digits.allSatisfy({ $0.isASCII && $0.isNumber }), let n = Int(digits),
              n <= maximumSize / unit
        else { throw BlastOptionError("--size: \"\(text)\" is not a size (bytes, or with k or m: 4096, 4k, 1m)") }
        let bytes = n * unit
        guard bytes >= minimumSize, bytes <= maximumSize else {
            throw BlastOptionError("--size: \(bytes) bytes is outside \(minimumSize) bytes to \(maximumSize >> 20) MiB")
        }
        return bytes
    }

    public var largest: Int { entries.map(\.sizes.upperBound).max()! }
    public var smallest: Int { entries.map(\.sizes.lowerBound).min()! }

    /// Every size it can produce, when there are few enough to generate each message once; else nil.
    public var distinctSizes: [Int]? {
        var count = 0
        for e in entries { count += e.sizes.count; if count > 64 { return nil } }
        return Array(Set(entries.flatMap { Array($0.sizes) })).sorted()
    }

    /// The expected size of a message.
    public var mean: Double {
        entries.reduce(0.0) { $0 + Double($1.weight) * (Double($1.sizes.lowerBound) + Double($1.sizes.upperBound)) / 2 }
            / Double(totalWeight)
    }

    /// One size: an entry chosen by weight, then a size uniformly within it.
    public func sample<G: RandomNumberGenerator>(using rng: inout G) -> Int {
        var entry = entries[0]
        if entries.count > 1 {
            var pick = Int.random(in: 0..<totalWeight, using: &rng)
            for e in entries {
                if pick < e.weight { entry = e; break }
                pick -= e.weight
            }
        }
        if entry.sizes.count == 1 { return entry.sizes.lowerBound }
        return Int.random(in: entry.sizes, using: &rng)
    }
}

/// A bad `tern blast` argument; the message names the option.
public struct BlastOptionError: Error, Equatable, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}


extension String {
    var trimmingSpaces: String {
        var s = Substring(self)
        while let f = s.first, f == " " || f == "\t" { s = s.dropFirst() }
        while let l = s.last, l == " " || l == "\t" { s = s.dropLast() }
        return String(s)
    }
}
