import SMTPProtocol
import Randomness
import Testing
@testable import Blast

@Suite struct SizeDistributionTests {
    @Test func bytesWithBinaryUnits() throws {
        #expect(try SizeDistribution.parseBytes("4096") == 4096)
        #expect(try SizeDistribution.parseBytes("4k") == 4096)
        #expect(try SizeDistribution.parseBytes("4K") == 4096)
        #expect(try SizeDistribution.parseBytes("4KiB") == 4096)
        #expect(try SizeDistribution.parseBytes("100kb") == 102_400)
        #expect(try SizeDistribution.parseBytes("1m") == 1 << 20)
        #expect(try SizeDistribution.parseBytes("16b") == 16)
    }

    @Test(arguments: ["", "k", "4x", "-4k", "4.5k", "1k1", "15", "257m", "99999999999999999999"])
    func badSizesNameTheOption(_ text: String) {
        #expect(throws: BlastOptionError.self) { try SizeDistribution.parseBytes(text) }
        do {
            _ = try SizeDistribution(parsing: text)
            Issue.record("\(text) parsed")
        } catch {
            #expect(error.message.hasPrefix("--size:"))
        }
    }

    @Test func fixedSizeAlwaysGivesThatSize() throws {
        let d = try SizeDistribution(parsing: "4k")
        #expect(d.entries == [.init(sizes: 4096...4096, weight: 1)])
        var rng = SplitMix64(seed: 7)
        for _ in 0..<100 { #expect(d.sample(using: &rng) == 4096) }
        #expect(d.distinctSizes == [4096])
        #expect(d.mean == 4096)
    }

    @Test func uniformRangeStaysInsideAndCoversBothEnds() throws {
        let d = try SizeDistribution(parsing: "100-110")
        var rng = SplitMix64(seed: 1)
        var seen = Set<Int>()
        for _ in 0..<2000 { seen.insert(d.sample(using: &rng)) }
        #expect(seen == Set(100...110))
        #expect(d.mean == 105)
        let wide = try SizeDistribution(parsing: "1k-100k")
        #expect(wide.distinctSizes == nil)  // too many to build each once
        #expect(wide.smallest == 1024 && wide.largest == 102_400)
    }

    @Test func downwardRangeIsRefused() {
        #expect(throws: BlastOptionError.self) { try SizeDistribution(parsing: "10k-1k") }
    }

    @Test func weightedListFollowsItsWeights() throws {
        let d = try SizeDistribution(parsing: "1k:70, 10k:25,1m:5")
        #expect(d.entries.map(\.weight) == [70, 25, 5])
        var rng = SplitMix64(seed: 42)
        var counts: [Int: Int] = [:]
        let n = 100_000
        for _ in 0..<n { counts[d.sample(using: &rng), default: 0] += 1 }
        #expect(Set(counts.keys) == [1024, 10240, 1 << 20])
        // Within 1.5 points of the weights over 100,000 draws (a binomial's sd is ~0.15 points).
        #expect(abs(Double(counts[1024]!) / Double(n) - 0.70) < 0.015)
        #expect(abs(Double(counts[10240]!) / Double(n) - 0.25) < 0.015)
        #expect(abs(Double(counts[1 << 20]!) / Double(n) - 0.05) < 0.015)
        #expect(d.largest == 1 << 20)
        #expect(abs(d.mean - (0.7 * 1024 + 0.25 * 10240 + 0.05 * 1048576)) < 0.001)
    }

    @Test func listEntriesMayBeRangesAndNeedWeights() throws {
        let d = try SizeDistribution(parsing: "1k-2k:9,64k:1")
        #expect(d.entries == [.init(sizes: 1024...2048, weight: 9), .init(sizes: 65536...65536, weight: 1)])
        #expect(throws: BlastOptionError.self) { try SizeDistribution(parsing: "1k,2k") }
        #expect(throws: BlastOptionError.self) { try SizeDistribution(parsing: "1k:0,2k:1") }
        #expect(throws: BlastOptionError.self) { try SizeDistribution(parsing: "1k:x") }
    }

    @Test func sameSeedSameSizes() throws {
        let d = try SizeDistribution(parsing: "1k-100k")
        var a = SplitMix64(seed: 9), b = SplitMix64(seed: 9), c = SplitMix64(seed: 10)
        let x = (0..<50).map { _ in d.sample(using: &a) }
        #expect(x == (0..<50).map { _ in d.sample(using: &b) })
        #expect(x != (0..<50).map { _ in d.sample(using: &c) })
    }
}
