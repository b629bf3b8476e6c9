import Logging
import Testing
import UVRuntime
@testable import Relay

/// Clock users other than delivery (DeliveryClockTests) take their time from the clock they are given.
@Suite struct ClockUsersTests {
    @Test func logTimestampsAreTheInjectedWallTime() {
        let manual = ManualClock(wall: WallTime(seconds: 1_796_083_200))
        let lines = LockedLines()
        let clock = manual.clock
        let logger = Logger(label: "t") { _ in
            TernLogHandler(format: .plain, level: .info, clock: clock, sink: { lines.append($0) })
        }
        logger.info("first")
        manual.advance(by: 3661.5)
        logger.info("second")
        #expect(lines.all == ["2026-12-01T00:00:00.000Z info first\n", "2026-12-01T01:01:01.500Z info second\n"])
    }
}
