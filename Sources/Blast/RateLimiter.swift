// The rate cap of `tern blast --rate`: a virtual schedule (GCRA). Each permit is due one interval
// after the one before; a caller that comes early is told how long to wait, so permits are spread
// evenly instead of bunched at the start of each second. After an idle spell at most `burst` permits
// are due at once. Pure: the caller passes the time (nanoseconds from any fixed origin).

public struct RateLimiter: Sendable {
    /// Nanoseconds between permits.
    public let interval: UInt64
    public let burst: Int
    /// When the next permit is due; nil before the first.
    var next: UInt64?

    public init(perSecond rate: Double, burst: Int = 1) {
        precondition(rate > 0 && burst >= 1)
        interval = Swift.max(1, UInt64((1e9 / rate).rounded()))
        self.burst = burst
    }

    /// Takes the next permit. Returns how many nanoseconds from `now` it may be used (0: at once).
    public mutating func reserve(now: UInt64) -> UInt64 {
        let window = UInt64(burst - 1) * interval
        var due = next ?? now
        // Idle time does not bank more than `burst` permits.
        let earliest = now > window ? now - window : 0
        if due < earliest { due = earliest }
        next = due + interval
        return due > now ? due - now : 0
    }
}
