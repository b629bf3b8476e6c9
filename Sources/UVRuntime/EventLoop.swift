// EventLoop: one uv_loop_t, the loop-wide read buffer, and thread-pool work.
//
// Every handle UVRuntime creates registers here so `close()` can shut them down through their own
// close callbacks (which release the Swift object and free the handle memory). Handles that other
// code in this module creates (the resolver's uv_poll_t) may register the same way.

import CLibUV
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A Swift object that owns a libuv handle and can close it through its own close callback.
protocol UVHandleOwner: AnyObject {
    func close()
}

public final class EventLoop {
    /// The loop itself: zero-filled, our own (never uv_default_loop). `raw.pointee.data` points
    /// (unretained) at this object. Not public: no code outside UVRuntime needs a libuv type.
    let raw: UnsafeMutablePointer<uv_loop_t>

    /// Size of the one read buffer that every connection on this loop reads into.
    public static let readBufferSize = 64 * 1024
    /// Handed out by the alloc callback; valid only during a read callback. A read callback never
    /// runs inside another one, so one buffer per loop suffices.
    let readBuffer: UnsafeMutableRawPointer

    /// Handles created by UVRuntime objects and not yet closed, keyed by handle address; the owner is
    /// found through `handle.data` (an Unmanaged reference to the owner).
    private var ownedHandles = Set<UnsafeMutableRawPointer>()
    private(set) var isClosed = false
    /// The one clock for everything on this loop (Clock.swift); a ManualClock's in tests.
    public let clock: Clock

    public init(clock: Clock = .system) throws {
        self.clock = clock
        raw = UnsafeMutablePointer<uv_loop_t>.allocate(capacity: 1)
        UnsafeMutableRawPointer(raw).initializeMemory(as: UInt8.self, repeating: 0,
                                                      count: MemoryLayout<uv_loop_t>.size)
        readBuffer = UnsafeMutableRawPointer.allocate(byteCount: EventLoop.readBufferSize, alignment: 16)
        let result = uv_loop_init(raw)
        if result < 0 {
            raw.deallocate()
            readBuffer.deallocate()
            isClosed = true
            throw UVError(code: result)
        }
        raw.pointee.data = Unmanaged.passUnretained(self).toOpaque()
    }

    deinit {
        close()
    }

    /// The EventLoop behind a raw loop pointer (for callbacks that only see a handle).
    @inline(__always)
    static func from(_ loop: UnsafeMutablePointer<uv_loop_t>) -> EventLoop {
        Unmanaged<EventLoop>.fromOpaque(loop.pointee.data!).takeUnretainedValue()
    }

    // MARK: Running

    /// Runs until `stop()` is called or no active handles or requests remain.
    public func run() {
        uv_run(raw, UV_RUN_DEFAULT)
    }

    /// One iteration: polls for I/O once, blocking unless `nowait` (then it only handles what is ready).
    public func runOnce(nowait: Bool) {
        uv_run(raw, nowait ? UV_RUN_NOWAIT : UV_RUN_ONCE)
    }

    /// Makes `run()` return at the end of the current iteration.
    public func stop() {
        uv_stop(raw)
    }

    /// The loop's cached time in milliseconds (updated at the start of each iteration), for timer
    /// arithmetic only; the time of day and intervals come from `clock`.
    public var nowMilliseconds: UInt64 {
        uv_now(raw)
    }

    /// Refreshes the cached time (after a long synchronous stretch on the loop thread).
    public func updateTime() {
        uv_update_time(raw)
    }

    // MARK: Thread pool

    private final class Work {
        let work: () -> Void
        let done: () -> Void
        init(work: @escaping () -> Void, done: @escaping () -> Void) {
            self.work = work
            self.done = done
        }
    }

    /// Runs `work` on libuv's thread pool (uv_queue_work), then `done` on the loop thread.
    /// `work` must not touch loop objects; pass results back through captured state that `done` reads.
    public func queueWork(_ work: @escaping () -> Void, done: @escaping () -> Void) {
        let req = UnsafeMutablePointer<uv_work_t>.allocate(capacity: 1)
        UnsafeMutableRawPointer(req).initializeMemory(as: UInt8.self, repeating: 0,
                                                      count: MemoryLayout<uv_work_t>.size)
        req.pointee.data = Unmanaged.passRetained(Work(work: work, done: done)).toOpaque()
        let result = uv_queue_work(raw, req, { req in
            Unmanaged<Work>.fromOpaque(req!.pointee.data!).takeUnretainedValue().work()
        }, { req, _ in
            // Called on the loop thread, also with UV_ECANCELED (we never cancel), so always `done`.
            let item = Unmanaged<Work>.fromOpaque(req!.pointee.data!).takeRetainedValue()
            req!.deallocate()
            item.done()
        })
        precondition(result == 0, "uv_queue_work failed: \(UVError(code: result))")
    }

    // MARK: Handle registry and shutdown

    func register(_ handle: UnsafeMutableRawPointer) {
        ownedHandles.insert(handle)
    }

    func unregister(_ handle: UnsafeMutableRawPointer) {
        ownedHandles.remove(handle)
    }

    /// Number of open handles created through UVRuntime (for tests and metrics).
    public var openHandleCount: Int { ownedHandles.count }

    /// Closes every handle still open (through its owner's close, so Swift objects are released),
    /// runs the loop until all close callbacks and queued work have finished, then closes the loop.
    /// Call from outside `run()`; the loop must not be used afterwards.
    public func close() {
        guard !isClosed else { return }
        isClosed = true
        var result: Int32 = 0
        // Close callbacks may create new handles (a reconnect, say); try a few rounds.
        for _ in 0..<8 {
            closeAllHandles()
            uv_run(raw, UV_RUN_DEFAULT)
            result = uv_loop_close(raw)
            if result != UV_EBUSY.rawValue { break }
        }
        if result == 0 {
            raw.deallocate()
            readBuffer.deallocate()
        }
        // Still busy: leak the loop rather than free memory libuv still uses.
    }

    private func closeAllHandles() {
        var handles: [UnsafeMutablePointer<uv_handle_t>] = []
        withUnsafeMutablePointer(to: &handles) { list in
            uv_walk(raw, { handle, arg in
                arg!.assumingMemoryBound(to: [UnsafeMutablePointer<uv_handle_t>].self).pointee.append(handle!)
            }, list)
        }
        for handle in handles where uv_is_closing(handle) == 0 {
            if ownedHandles.contains(UnsafeMutableRawPointer(handle)), let data = handle.pointee.data,
               let owner = Unmanaged<AnyObject>.fromOpaque(data).takeUnretainedValue() as? UVHandleOwner {
                owner.close()
            } else {
                // Not ours: we cannot know its close callback or how its memory is freed.
                uv_close(handle, nil)
            }
        }
    }
}

// MARK: Handle memory helpers

/// A zero-filled handle or request (libuv never initialises `data`).
@inline(__always)
func allocateZeroed<T>(_ type: T.Type) -> UnsafeMutablePointer<T> {
    let pointer = UnsafeMutablePointer<T>.allocate(capacity: 1)
    UnsafeMutableRawPointer(pointer).initializeMemory(as: UInt8.self, repeating: 0,
                                                      count: MemoryLayout<T>.size)
    return pointer
}

extension UnsafeMutablePointer {
    /// The same memory seen as the libuv base type (uv_tcp_t → uv_stream_t → uv_handle_t).
    @inline(__always)
    func cast<T>(to: T.Type) -> UnsafeMutablePointer<T> {
        UnsafeMutableRawPointer(self).assumingMemoryBound(to: T.self)
    }
}
