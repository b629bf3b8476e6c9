// Prepare: a uv_prepare_t, a closure run once per loop iteration just before the loop waits for I/O.
// Used for work that is cheaper done once per iteration than once per event (flushing buffered log
// lines). Same lifetime rules as Timer: it keeps itself alive until closed.

import CLibUV

public final class Prepare: UVHandleOwner {
    private let handle: UnsafeMutablePointer<uv_prepare_t>
    private var body: (() -> Void)?
    public private(set) var isClosed = false

    public init(loop: EventLoop, _ body: @escaping () -> Void) {
        handle = allocateZeroed(uv_prepare_t.self)
        let result = uv_prepare_init(loop.raw, handle)  // only initialises the struct: cannot fail
        precondition(result == 0, "uv_prepare_init: \(UVError(code: result))")
        handle.pointee.data = Unmanaged.passRetained(self).toOpaque()
        loop.register(handle)
        self.body = body
        uv_prepare_start(handle) { handle in
            Unmanaged<Prepare>.fromOpaque(handle!.pointee.data!).takeUnretainedValue().body?()
        }
        // Not a reason for the loop to keep running.
        uv_unref(handle.cast(to: uv_handle_t.self))
    }

    public func close() {
        guard !isClosed else { return }
        isClosed = true
        uv_prepare_stop(handle)
        uv_close(handle.cast(to: uv_handle_t.self)) { handle in
            let prepare = Unmanaged<Prepare>.fromOpaque(handle!.pointee.data!).takeRetainedValue()
            prepare.body = nil
            EventLoop.from(handle!.pointee.loop).unregister(handle!)
            handle!.deallocate()
        }
    }
}
