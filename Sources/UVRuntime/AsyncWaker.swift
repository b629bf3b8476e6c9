// AsyncWaker: a uv_async_t, the one way to wake the loop from another thread.
//
// `wake()` may be called from any thread; several wakes before the loop gets to it run the handler
// once. A mutex makes `wake()` after (or racing with) `close()` a safe no-op.

import CLibUV
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

public final class AsyncWaker: UVHandleOwner {
    private let handle: UnsafeMutablePointer<uv_async_t>
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private var handler: (() -> Void)?
    private var isClosed = false  // guarded by mutex

    public init(loop: EventLoop, _ handler: @escaping () -> Void) throws {
        handle = allocateZeroed(uv_async_t.self)
        mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
        let result = uv_async_init(loop.raw, handle) { handle in
            Unmanaged<AsyncWaker>.fromOpaque(handle!.pointee.data!).takeUnretainedValue().handler?()
        }
        if result < 0 {
            handle.deallocate()
            pthread_mutex_destroy(mutex)
            mutex.deallocate()
            throw UVError(code: result)
        }
        self.handler = handler
        handle.pointee.data = Unmanaged.passRetained(self).toOpaque()
        loop.register(handle)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    /// Any thread. The handler runs soon after on the loop thread.
    public func wake() {
        pthread_mutex_lock(mutex)
        if !isClosed {
            uv_async_send(handle)
        }
        pthread_mutex_unlock(mutex)
    }

    /// Loop thread only.
    public func close() {
        pthread_mutex_lock(mutex)
        let wasClosed = isClosed
        isClosed = true
        pthread_mutex_unlock(mutex)
        guard !wasClosed else { return }
        uv_close(handle.cast(to: uv_handle_t.self)) { handle in
            let waker = Unmanaged<AsyncWaker>.fromOpaque(handle!.pointee.data!).takeRetainedValue()
            waker.handler = nil
            EventLoop.from(handle!.pointee.loop).unregister(handle!)
            handle!.deallocate()
        }
    }
}
