import Testing
import Randomness
@testable import MailQueue

@Suite struct RetryPolicyTests {
    static let schedule: [Double] = [60, 300, 900, 1800, 3600, 7200, 14400]
    let noJitter = RetryPolicy(schedule: RetryPolicyTests.schedule, maxLifetime: 5 * 86400, jitter: 0)

    @Test func scheduleProgressesThenRepeatsTheLastDelay() {
        let arrival = 1_700_000_000.0
        var now = arrival
        var delays: [Double] = []
        for attempts in 1...10 {
            let next = noJitter.nextAttempt(after: attempts, arrival: arrival, now: now, random: 0.3)!
            delays.append(next - now)
            now = next
        }
        #expect(delays == [60, 300, 900, 1800, 3600, 7200, 14400, 14400, 14400, 14400])
    }

    @Test func attemptsBelowOneCountAsTheFirstFailure() {
        #expect(noJitter.nextAttempt(after: 0, arrival: 0, now: 10, random: 0) == 70)
        #expect(noJitter.nextAttempt(after: -3, arrival: 0, now: 10, random: 0) == 70)
    }

    @Test func jitterStaysWithinTenPercentAndCoversTheRange() {
        let policy = RetryPolicy(schedule: [1000], maxLifetime: 1e9)
        #expect(policy.jitter == 0.1)
        #expect(policy.nextAttempt(after: 1, arrival: 0, now: 0, random: 0) == 900)
        #expect(policy.nextAttempt(after: 1, arrival: 0, now: 0, random: 0.5) == 1000)
        let top = policy.nextAttempt(after: 1, arrival: 0, now: 0, random: 1.0.nextDown)!
        #expect(top <= 1100 && top > 1099.99)  // 1 - ulp may round to exactly +10%
        // Out-of-range and NaN randomness cannot push it outside the band.
        #expect(policy.nextAttempt(after: 1, arrival: 0, now: 0, random: -5) == 900)
        #expect(policy.nextAttempt(after: 1, arrival: 0, now: 0, random: 7)! <= 1100)
        #expect(policy.nextAttempt(after: 1, arrival: 0, now: 0, random: .nan) == 1000)

        var generator = SplitMix64(seed: 2026)  // seeded: a failure replays
        var lowest = Double.infinity, highest = -Double.infinity
        for _ in 0..<10_000 {
            let delay = policy.nextAttempt(after: 1, arrival: 0, now: 0, random: Double.random(in: 0..<1, using: &generator))!
            lowest = min(lowest, delay)
            highest = max(highest, delay)
        }
        #expect(lowest >= 900 && highest <= 1100)
        #expect(lowest < 910 && highest > 1090, "jitter should spread over the whole band")
    }

    @Test func expiresWhenTheNextAttemptWouldBeAtOrPastTheLifetime() {
        let policy = RetryPolicy(schedule: [100], maxLifetime: 1000, jitter: 0)
        #expect(policy.nextAttempt(after: 5, arrival: 0, now: 899, random: 0) == 999)
        #expect(policy.nextAttempt(after: 5, arrival: 0, now: 900, random: 0) == nil)  // exactly at the limit
        #expect(policy.nextAttempt(after: 5, arrival: 0, now: 950, random: 0) == nil)
        #expect(policy.nextAttempt(after: 5, arrival: 500, now: 950, random: 0) == 1050)

        // A five-day lifetime with the standard schedule: the message is tried until about day 5, then bounced.
        let standard = RetryPolicy.standard
        let arrival = 1_700_000_000.0
        var now = arrival, attempts = 0
        while let next = standard.nextAttempt(after: attempts + 1, arrival: arrival, now: now, random: 0.99) {
            #expect(next > now)
            now = next
            attempts += 1
        }
        #expect(now < arrival + 5 * 86400)
        #expect(now > arrival + 5 * 86400 - 1.1 * 14400)
        #expect(attempts > 25 && attempts < 35)
    }

    @Test func jitterIsClamped() {
        #expect(RetryPolicy(schedule: [1], maxLifetime: 1, jitter: 3).jitter == 1)
        #expect(RetryPolicy(schedule: [1], maxLifetime: 1, jitter: -1).jitter == 0)
        #expect(RetryPolicy(schedule: [1], maxLifetime: 1, jitter: .nan).jitter == 0)
    }
}

@Suite struct BackoffTests {
    @Test func doublesFromInitialToMaximum() {
        let b = Backoff(initial: 1, maximum: 300)
        var wait = 0.0
        var waits: [Double] = []
        for _ in 0..<11 {
            wait = b.next(after: wait)
            waits.append(wait)
        }
        #expect(waits == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300])
        // A maximum below the initial wait wins (a config may say so).
        #expect(Backoff(initial: 60, maximum: 30).next(after: 0) == 30)
    }

    @Test func jitterStaysWithinItsBand() {
        let b = Backoff(initial: 1, maximum: 300, jitter: 0.2)
        #expect(b.jittered(10, random: 0) == 8)
        #expect(b.jittered(10, random: 0.5) == 10)
        #expect(b.jittered(10, random: 0.999) < 12 && b.jittered(10, random: 0.999) > 11.9)
        #expect(b.jittered(10, random: 7) == 12, "out of range: clamped")
        #expect(Backoff(initial: 1, maximum: 2).jittered(10, random: 0.9) == 10, "no jitter")
    }
}
