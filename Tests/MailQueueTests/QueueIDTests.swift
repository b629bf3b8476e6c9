import Testing
@testable import MailQueue

@Suite struct QueueIDTests {
    @Test func formatIsFourteenUppercaseHexDigits() {
        var generator = QueueIDGenerator()
        #expect(generator.next(nowMicroseconds: 0xAB_CDEF).rawValue == "00000000ABCDEF")
        #expect(QueueID(microseconds: 1_700_000_000_123_456).rawValue == "060A2418202240")
        #expect(QueueID(microseconds: 1_700_000_000_123_456).microseconds == 1_700_000_000_123_456)
    }

    @Test func strictlyIncreasingWhenTheClockStallsOrGoesBack() {
        var generator = QueueIDGenerator()
        let clock: [UInt64] = [1_000, 1_000, 1_000, 999, 500, 1_001, 5_000, 4_999, 5_000, 5_000]
        let ids = clock.map { generator.next(nowMicroseconds: $0) }
        for (earlier, later) in zip(ids, ids.dropFirst()) {
            #expect(earlier < later, "\(earlier) should sort before \(later)")
            #expect(earlier.rawValue < later.rawValue, "string order must match time order")
        }
        #expect(Set(ids).count == ids.count)
        #expect(ids.map(\.microseconds) == [1_000, 1_001, 1_002, 1_003, 1_004, 1_005, 5_000, 5_001, 5_002, 5_003])
    }

    @Test func manyIdsAreUnique() {
        var generator = QueueIDGenerator()
        let ids = (0..<10_000).map { generator.next(nowMicroseconds: 1_700_000_000_000_000 + UInt64($0 / 7)) }
        #expect(Set(ids).count == 10_000)
        #expect(ids == ids.sorted())
    }

    @Test func sortsByTime() {
        let times: [UInt64] = [0xF, 0x10, 0xFFFF, 0x1_0000, 1_700_000_000_000_000, 1_700_000_000_000_001]
        let ids = times.shuffled().map { QueueID(microseconds: $0) }
        #expect(ids.sorted().map(\.microseconds) == times)
        #expect(ids.map(\.rawValue).sorted() == times.map { QueueID(microseconds: $0).rawValue })
    }

    @Test func parsingAcceptsOnlyWellFormedIds() {
        #expect(QueueID(rawValue: "060A2418202240") == QueueID(microseconds: 1_700_000_000_123_456))
        for bad in ["", "060A24181E7A4", "060A24182022400", "060a24181e7a40", "060A24181E7A4G", "060A24181E7A4 ",
                    "../../etc/pas"] {
            #expect(QueueID(rawValue: bad) == nil, "\(bad) should not parse")
        }
    }
}
