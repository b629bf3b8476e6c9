// The retry policy: when a deferred message is tried again, and when it has been queued too long and
// must bounce (RFC 5321 section 4.5.4.1: retry at least 30 minutes apart, give up after 4-5 days).
//
// A pure function of its inputs. The caller supplies the clock (`now`) and the randomness (`random`), so
// tests pin both. Jitter spreads the retries of messages that failed together (a next hop that was down
// for a minute) so they do not all come back in the same second.

public struct RetryPolicy: Sendable, Equatable {
    /// Delays in seconds after the 1st, 2nd, ... failed attempt; past the end, the last one repeats.
    public let schedule: [Double]
    /// Seconds after arrival at which a message that is still undelivered bounces.
    public let maxLifetime: Double
    /// Each delay is scaled by a factor in [1 - jitter, 1 + jitter] (the top only by rounding). Clamped to 0...1.
    public let jitter: Double

    /// Postfix-like defaults: 1 min, 5 min, 15 min, 30 min, 1 h, 2 h, then every 4 h, for 5 days.
    public static let standard = RetryPolicy(schedule: [60, 300, 900, 1800, 3600, 7200, 14400],
                                             maxLifetime: 5 * 86400)

    /// `schedule` must not be empty and its delays must be finite and positive; the config layer checks
    /// this and reports it to the operator, so here it is a precondition.
    public init(schedule: [Double], maxLifetime: Double, jitter: Double = 0.1) {
        precondition(!schedule.isEmpty, "retry schedule is empty")
        precondition(schedule.allSatisfy { $0.isFinite && $0 > 0 }, "retry delays must be finite and positive")
        precondition(!maxLifetime.isNaN, "maximum lifetime is NaN")
        self.schedule = schedule
        self.maxLifetime = maxLifetime
        self.jitter = jitter.isFinite ? min(max(jitter, 0), 1) : 0
    }

    /// When to try again after `attempts` failed attempts (1 = the first failure), or nil when the
    /// message has outlived `maxLifetime` (arrival + maxLifetime <= the next attempt time): bounce it.
    /// `random` is in 0..<1 (values outside are clamped; NaN counts as 0.5, no jitter).
    /// `attempts` below 1 counts as 1.
    public func nextAttempt(after attempts: Int, arrival: Double, now: Double, random: Double) -> Double? {
        let delay = schedule[min(max(attempts, 1), schedule.count) - 1]
        let r = random.isNaN ? 0.5 : min(max(random, 0), 1.0.nextDown)
        let next = now + delay * (1 + jitter * (2 * r - 1))
        return arrival + maxLifetime <= next ? nil : next
    }
}

/// A wait that doubles after each failure, from `initial` up to `maximum`: a dead destination's
/// suspension (Shaper), a webhook's retries. Pure: the caller keeps the current wait and gives the
/// randomness for the jitter.
public struct Backoff: Sendable, Equatable {
    public var initial: Double
    public var maximum: Double
    /// The wait is scaled by a factor in [1 - jitter, 1 + jitter).
    public var jitter: Double

    public init(initial: Double, maximum: Double, jitter: Double = 0) {
        self.initial = initial
        self.maximum = maximum
        self.jitter = jitter
    }

    /// The wait after one more failure (`previous` 0: the first failure).
    public func next(after previous: Double) -> Double {
        Swift.min(Swift.max(previous * 2, initial), maximum)
    }

    /// `wait` with its jitter; `random` in 0..<1.
    public func jittered(_ wait: Double, random: Double) -> Double {
        wait * (1 + jitter * (2 * Swift.min(Swift.max(random, 0), 1) - 1))
    }
}
