// UVError and process-wide start-up settings (SIGPIPE, file limit, thread pool size).
//
// UVRuntime is the only Swift code that imports CLibUV. It knows nothing of SMTP: it offers an event
// loop, TCP listeners and connections, timers, signal watchers, a cross-thread waker and a way to run
// blocking work on libuv's thread pool. Everything except `AsyncWaker.wake()` must be called on the
// thread that runs the loop.

import CLibUV
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A libuv error code (always negative, e.g. `UV_ECONNREFUSED.rawValue`).
public struct UVError: Error, CustomStringConvertible, Hashable {
    public let code: Int32

    public init(code: Int32) { self.code = code }
    /// libuv's error constants arrive as enums; this takes one directly: `UVError(UV_ETIMEDOUT)`.
    init(_ errno: uv_errno_t) { self.code = errno.rawValue }

    /// For example "ECONNREFUSED: connection refused".
    public var description: String {
        "\(String(cString: uv_err_name(code))): \(String(cString: uv_strerror(code)))"
    }

    public static let endOfFile = UVError(UV_EOF)
    public static let canceled = UVError(UV_ECANCELED)
    public static let timedOut = UVError(UV_ETIMEDOUT)
    public static let connectionRefused = UVError(UV_ECONNREFUSED)
    public static let connectionReset = UVError(UV_ECONNRESET)
    public static let invalidArgument = UVError(UV_EINVAL)
}

/// Throws a `UVError` for a negative libuv return value.
@inline(__always)
func uvCheck(_ result: Int32) throws {
    if result < 0 { throw UVError(code: result) }
}

/// libuv does not ignore SIGPIPE: a write after the peer reset would kill the process. Call at start-up.
public func ignoreSIGPIPE() {
    signal(SIGPIPE, SIG_IGN)
}

/// Raises the soft RLIMIT_NOFILE to the hard limit and returns the new soft limit
/// (the old one if raising failed).
@discardableResult
public func raiseFileLimit() -> Int {
    var limit = rlimit()
    #if canImport(Glibc)
    let resource = __rlimit_resource_t(RLIMIT_NOFILE.rawValue)
    #else
    let resource = RLIMIT_NOFILE
    #endif
    guard getrlimit(resource, &limit) == 0 else { return -1 }
    if limit.rlim_cur < limit.rlim_max {
        var raised = limit
        raised.rlim_cur = limit.rlim_max
        if setrlimit(resource, &raised) == 0 {
            limit = raised
        }
    }
    return limit.rlim_cur >= rlim_t(Int.max) ? Int.max : Int(limit.rlim_cur)
}

/// Sets the size of libuv's thread pool (default 4; disk fsyncs run there and overlap).
/// libuv reads UV_THREADPOOL_SIZE once, when the first work is queued in the process, so call this
/// at start-up before any `queueWork`.
public func setThreadPoolSize(_ n: Int) {
    setenv("UV_THREADPOOL_SIZE", String(max(1, min(n, 1024))), 1)
}

/// glibc's malloc gives an allocation above its mmap threshold (128 KiB to start with, then as large as
/// the largest such block freed) pages of its own and returns them at free, and gives the top of a heap
/// back to the kernel once more than twice that is free there. A relay frees and allocates message
/// buffers of 64 KiB to 256 KiB all the time, so both happen over and over: fresh pages to fault in and
/// zero for most messages (2,000 relayed messages of 100 KiB: 7,000 to 15,000 page faults with glibc's
/// defaults, 3,000 to 5,000 with these). Fixed limits end that: blocks under 256 KiB come from the heaps
/// and a heap keeps up to 8 MiB free at its top. A full DATA buffer of a large message (256 KiB) gets
/// pages of its own and gives them back when written: mixed with the smaller blocks in the heaps, such
/// buffers left holes that kept the peak 20-30% above the message data held (server.max_buffered_data).
/// Either set in GLIBC_TUNABLES in the environment wins. Call at start-up, before the threads start.
public func tuneMallocForMessageBuffers() {
    #if canImport(Glibc)
    let tunables = getenv("GLIBC_TUNABLES").map { String(cString: $0) } ?? ""
    if !tunables.contains("glibc.malloc.mmap_threshold") { _ = mallopt(M_MMAP_THRESHOLD, 256 << 10) }
    if !tunables.contains("glibc.malloc.trim_threshold") { _ = mallopt(M_TRIM_THRESHOLD, 8 << 20) }
    #endif
}
