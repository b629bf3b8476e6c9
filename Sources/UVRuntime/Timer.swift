// Timer: a uv_timer_t. One-shot or repeating; stop and restart freely, close when done.
//
// Lifetime: the Timer keeps itself alive (Unmanaged.passRetained in handle.data) until the close
// callback, so it must be closed, and `fire` is dropped then (breaking cycles through captures).
// Name clash: modules that also import Foundation write `UVRuntime.Timer`.

import CLibUV

public final class Timer: UVHandleOwner {
    private let handle: UnsafeMutablePointer<uv_timer_t>
    private var fire: (() -> Void)?
    public private(set) var isClosed = false

    public init(loop: EventLoop) {
        handle = allocateZeroed(uv_timer_t.self)
        let result = uv_timer_init(loop.raw, handle)  // only initialises the struct: cannot fail
        precondition(result == 0, "uv_timer_init: \(UVError(code: result))")
        handle.pointee.data = Unmanaged.passRetained(self).toOpaque()
        loop.register(handle)
    }

    /// Fires after `afterMilliseconds`, then every `repeatMilliseconds` if that is not 0.
    /// Starting a running timer restarts it with the new values and closure.
    public func start(afterMilliseconds: UInt64, repeatMilliseconds: UInt64 = 0, _ fire: @escaping () -> Void) {
        guard !isClosed else { return }
        self.fire = fire
        uv_timer_start(handle, { handle in
            Unmanaged<Timer>.fromOpaque(handle!.pointee.data!).takeUnretainedValue().fire?()
        }, afterMilliseconds, repeatMilliseconds)
    }

    public func stop() {
        guard !isClosed else { return }
        uv_timer_stop(handle)
    }

    /// Whether the timer is started and will fire.
    public var isActive: Bool {
        !isClosed && uv_is_active(handle.cast(to: uv_handle_t.self)) != 0
    }

    public func close() {
        guard !isClosed else { return }
        isClosed = true
        uv_close(handle.cast(to: uv_handle_t.self)) { handle in
            let timer = Unmanaged<Timer>.fromOpaque(handle!.pointee.data!).takeRetainedValue()
            timer.fire = nil
            EventLoop.from(handle!.pointee.loop).unregister(handle!)
            handle!.deallocate()
        }
    }
}
