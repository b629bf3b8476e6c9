// Clock: the one source of time. The EventLoop owns one (`loop.clock`) and everything on the loop
// reads time through it; tests give the loop a ManualClock's and move time by hand.
//
// Two readings:
// - monotonic: nanoseconds from uv_hrtime, never cached. For intervals and ages (DNS cache, journal
//   segments, a blast's latencies, the sink's busy time): loopback replies take microseconds, so a
//   value fixed for a whole loop iteration would be too coarse for them.
// - wall: seconds and nanoseconds since the epoch (CLOCK_REALTIME), never cached. For what a person or
//   another host reads: Received dates, log timestamps, queue ids, queue times in envelopes.
// The loop's own time, `EventLoop.nowMilliseconds` (uv_now), is the one that is cached: libuv sets it
// once per iteration and measures its timers against it, so a timer started after a long callback
// counts from the start of that iteration. Only timer arithmetic should use it.
//
// A Clock is Sendable: threads off the loop (the log handler on whatever thread logs, the thread
// pool) read it too, through the same value.

import CLibUV
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A moment on the wall clock: whole seconds since the epoch and the nanoseconds past them.
public struct WallTime: Sendable, Equatable, Comparable {
    public var seconds: Int
    public var nanoseconds: Int

    public init(seconds: Int, nanoseconds: Int = 0) {
        self.seconds = seconds
        self.nanoseconds = nanoseconds
    }

    /// Seconds since the epoch as a Double (queue times in envelopes).
    public var secondsSinceEpoch: Double { Double(seconds) + Double(nanoseconds) / 1e9 }
    public var microsecondsSinceEpoch: UInt64 { UInt64(seconds) * 1_000_000 + UInt64(nanoseconds / 1000) }
    public var milliseconds: Int { nanoseconds / 1_000_000 }

    public static func < (a: WallTime, b: WallTime) -> Bool {
        (a.seconds, a.nanoseconds) < (b.seconds, b.nanoseconds)
    }
}

public struct Clock: Sendable {
    private let readMonotonic: @Sendable () -> UInt64
    private let readWall: @Sendable () -> WallTime

    public init(monotonicNanoseconds: @escaping @Sendable () -> UInt64, wall: @escaping @Sendable () -> WallTime) {
        readMonotonic = monotonicNanoseconds
        readWall = wall
    }

    /// Nanoseconds since an arbitrary start; never goes back.
    public func monotonicNanoseconds() -> UInt64 { readMonotonic() }
    public func monotonicSeconds() -> Double { Double(readMonotonic()) / 1e9 }
    public func wall() -> WallTime { readWall() }
    /// Seconds since the epoch (queue times: arrival, next attempt).
    public func wallSeconds() -> Double { readWall().secondsSinceEpoch }

    /// The machine's clocks.
    public static let system = Clock(monotonicNanoseconds: { uv_hrtime() }, wall: {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return WallTime(seconds: Int(ts.tv_sec), nanoseconds: Int(ts.tv_nsec))
    })
}

/// Virtual time for tests: stands still until `advance` moves both readings together.
public final class ManualClock: @unchecked Sendable {
    // Guarded by `lock`: a test's loop and the log handler may read it from different threads.
    private var monotonic: UInt64
    private var wallTime: WallTime
    private let lock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)

    /// Starts at `wall` (default 2026-12-01T00:00:00Z) and an arbitrary nonzero monotonic time.
    public init(wall: WallTime = WallTime(seconds: 1_796_083_200), monotonicNanoseconds: UInt64 = 1_000_000_000) {
        wallTime = wall
        monotonic = monotonicNanoseconds
        pthread_mutex_init(lock, nil)
    }

    deinit {
        pthread_mutex_destroy(lock)
        lock.deallocate()
    }

    /// Moves both readings forward by `seconds`.
    public func advance(by seconds: Double) {
        precondition(seconds >= 0, "a clock does not go back")
        let ns = UInt64((seconds * 1e9).rounded())
        locked {
            monotonic += ns
            let total = UInt64(wallTime.nanoseconds) + ns
            wallTime.seconds += Int(total / 1_000_000_000)
            wallTime.nanoseconds = Int(total % 1_000_000_000)
        }
    }

    public var now: WallTime { locked { wallTime } }
    public var monotonicNanoseconds: UInt64 { locked { monotonic } }

    /// A Clock reading this one (hand it to `EventLoop(clock:)` or anything else that takes a Clock).
    public var clock: Clock {
        Clock(monotonicNanoseconds: { self.monotonicNanoseconds }, wall: { self.now })
    }

    private func locked<T>(_ body: () -> T) -> T {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        return body()
    }
}
