// Helpers for driving a loop in tests: run until a condition holds, with a deadline so a bug fails
// the test instead of hanging it.

import Testing
@testable import UVRuntime
#if canImport(Glibc)
import Glibc
#endif

/// Runs `loop` until `done()` is true or `timeoutMs` of loop time passes; returns `done()`.
@discardableResult
func run(_ loop: EventLoop, timeoutMs: UInt64 = 5000, until done: () -> Bool) -> Bool {
    // A repeating timer keeps each blocking iteration short so the deadline is checked.
    let tick = UVRuntime.Timer(loop: loop)
    tick.start(afterMilliseconds: 5, repeatMilliseconds: 5) {}
    loop.updateTime()
    let deadline = loop.nowMilliseconds + timeoutMs
    while !done() && loop.nowMilliseconds < deadline {
        loop.runOnce(nowait: false)
    }
    tick.close()
    loop.runOnce(nowait: true)  // reap the tick's close callback so handle counts are exact
    return done()
}

/// Runs `loop` for `milliseconds` of loop time.
func run(_ loop: EventLoop, forMilliseconds milliseconds: UInt64) {
    loop.updateTime()
    let end = loop.nowMilliseconds + milliseconds
    run(loop, timeoutMs: milliseconds + 1000) { loop.nowMilliseconds >= end }
}

/// A deterministic, non-repeating-looking pattern so reordered or lost bytes are detected.
func pattern(count: Int, seed: UInt8 = 0) -> [UInt8] {
    (0..<count).map { UInt8(truncatingIfNeeded: ($0 &* 7 &+ $0 / 251) ) &+ seed }
}

/// Index of the first byte where `a` and `b` differ (or the shorter length); nil when equal.
/// (Comparing megabyte arrays with `#expect(a == b)` makes a failure report compute a huge diff.)
func firstDifference(_ a: [UInt8], _ b: [UInt8]) -> Int? {
    for i in 0..<min(a.count, b.count) where a[i] != b[i] { return i }
    return a.count == b.count ? nil : min(a.count, b.count)
}
