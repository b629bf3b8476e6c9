import SMTPProtocol
import Randomness
import Testing
@testable import Blast

/// The limiter takes the time as an argument: these tests drive it with a fake clock.
@Suite struct RateLimiterTests {
    static let second: UInt64 = 1_000_000_000

    @Test func firstPermitAtOnceThenOneIntervalApart() {
        var r = RateLimiter(perSecond: 100)
        #expect(r.interval == 10_000_000)
        let now: UInt64 = 5 * Self.second
        #expect(r.reserve(now: now) == 0)
        #expect(r.reserve(now: now) == 10_000_000)
        #expect(r.reserve(now: now) == 20_000_000)
    }

    @Test func callersThatWaitAsToldGetTheRateExactly() {
        var r = RateLimiter(perSecond: 250)
        var clock: UInt64 = 1000
        var times: [UInt64] = []
        for _ in 0..<1000 {
            clock += r.reserve(now: clock)
            times.append(clock)
        }
        // 1000 permits at 250/s: the last is 999 intervals after the first.
        #expect(times.last! - times.first! == 999 * 4_000_000)
    }

    @Test func idleTimeIsNotBankedBeyondTheBurst() {
        var r = RateLimiter(perSecond: 10, burst: 3)
        #expect(r.reserve(now: 0) == 0)
        let later = 60 * Self.second  // a minute idle
        let waits = (0..<5).map { _ in r.reserve(now: later) }
        #expect(waits == [0, 0, 0, 100_000_000, 200_000_000])
    }

    @Test func slowCallersAreNeverMadeToWait() {
        var r = RateLimiter(perSecond: 10)
        var clock: UInt64 = 0
        for _ in 0..<20 {
            #expect(r.reserve(now: clock) == 0)
            clock += 150_000_000  // slower than 10/s
        }
    }

    @Test func countOverAWindowIsBounded() {
        // However callers arrive, at most rate × window + burst permits fall due within a window.
        var r = RateLimiter(perSecond: 50, burst: 5)
        var rng = SplitMix64(seed: 3)
        var clock: UInt64 = 0
        var due: [UInt64] = []
        for _ in 0..<2000 {
            clock += UInt64.random(in: 0...30_000_000, using: &rng)
            due.append(clock + r.reserve(now: clock))
        }
        for (i, t) in due.enumerated() {
            let inWindow = due[i...].prefix { $0 < t + Self.second }.count
            #expect(inWindow <= 50 + 5)
        }
    }
}
