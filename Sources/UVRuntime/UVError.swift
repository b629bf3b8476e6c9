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
    public init(_ errno: uv_errno_t) { self.code = errno.rawValue }

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
