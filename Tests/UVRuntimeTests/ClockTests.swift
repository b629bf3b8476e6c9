import Testing
import UVRuntime

@Suite struct ClockTests {
    @Test func aLoopReadsTheClockItWasGiven() throws {
        let manual = ManualClock(wall: WallTime(seconds: 1_796_083_200, nanoseconds: 999_000_000),
                                 monotonicNanoseconds: 5_000)
        let loop = try EventLoop(clock: manual.clock)
        defer { loop.close() }
        #expect(loop.clock.wall() == WallTime(seconds: 1_796_083_200, nanoseconds: 999_000_000))
        #expect(loop.clock.monotonicNanoseconds() == 5_000)
        // Stands still until advanced; both readings move together, nanoseconds carry into seconds.
        #expect(loop.clock.wall() == manual.now)
        manual.advance(by: 0.002)
        #expect(loop.clock.wall() == WallTime(seconds: 1_796_083_201, nanoseconds: 1_000_000))
        #expect(loop.clock.monotonicNanoseconds() == 2_005_000)
        #expect(loop.clock.wall().microsecondsSinceEpoch == 1_796_083_201_001_000)
        #expect(loop.clock.wall().milliseconds == 1)
        #expect(loop.clock.wallSeconds() == 1_796_083_201.001)
    }

    @Test func theSystemClockMovesForward() throws {
        let loop = try EventLoop()
        defer { loop.close() }
        let a = loop.clock.monotonicNanoseconds()
        let wall = loop.clock.wall()
        #expect(loop.clock.monotonicNanoseconds() >= a)
        #expect(wall.seconds > 1_700_000_000)  // after November 2023: a real wall clock, not zero
        #expect((0..<1_000_000_000).contains(wall.nanoseconds))
    }
}
