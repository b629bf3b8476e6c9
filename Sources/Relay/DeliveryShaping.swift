// What the admin endpoint asks of traffic shaping (`tern queue destinations/suspend/resume`, the
// per-rule metrics): thin calls into the delivery core, on the loop, at the loop's clock.

import MailQueue

extension DeliveryManager {
    /// Per destination (or rule) × source: queued, connections, rate, state.
    public func shapingView() -> [ShapingLaneView] { core.shapingView(now: now) }

    /// The postmaster suspends a destination or a rule (every source) for `seconds`. The group it
    /// applied to comes back (a destination under a rule is suspended as that rule).
    @discardableResult
    public func suspend(_ target: String, for seconds: Double, reason: String) -> ShapingGroup {
        let t = now
        let group = core.suspend(target, until: t + seconds, reason: reason, now: t)
        shapingChanged()
        return group
    }

    /// The postmaster lifts every suspension, throttle and dead state of a destination or rule.
    @discardableResult
    public func resume(_ target: String) -> ShapingGroup {
        let group = core.resume(target, now: now)
        shapingChanged()
        return group
    }

    /// Per rule label × source (bounded label sets): sent, deferred, seconds suspended, connections.
    public func shapingMetrics() -> [ShapingMetricKey: ShapingCounters] { core.shapingMetrics(now: now) }

    /// Shaping's state changed outside a delivery step: log its events, save it, go on delivering.
    func shapingChanged() {
        pump()
    }
}
