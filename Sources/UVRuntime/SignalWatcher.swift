// SignalWatcher: a uv_signal_t. The handler runs on the loop thread, not in the signal handler.

import CLibUV

public final class SignalWatcher: UVHandleOwner {
    private let handle: UnsafeMutablePointer<uv_signal_t>
    private var handler: (() -> Void)?
    private var isClosed = false

    public init(loop: EventLoop, signal: Int32, _ handler: @escaping () -> Void) throws {
        handle = allocateZeroed(uv_signal_t.self)
        let initResult = uv_signal_init(loop.raw, handle)
        if initResult < 0 {
            handle.deallocate()
            throw UVError(code: initResult)
        }
        self.handler = handler
        handle.pointee.data = Unmanaged.passRetained(self).toOpaque()
        loop.register(handle)
        let result = uv_signal_start(handle, { handle, _ in
            Unmanaged<SignalWatcher>.fromOpaque(handle!.pointee.data!).takeUnretainedValue().handler?()
        }, signal)
        if result < 0 {
            close()
            throw UVError(code: result)
        }
    }

    public func close() {
        guard !isClosed else { return }
        isClosed = true
        uv_close(handle.cast(to: uv_handle_t.self)) { handle in
            let watcher = Unmanaged<SignalWatcher>.fromOpaque(handle!.pointee.data!).takeRetainedValue()
            watcher.handler = nil
            EventLoop.from(handle!.pointee.loop).unregister(handle!)
            handle!.deallocate()
        }
    }
}

extension SignalWatcher {
    /// From now until the process exits, these signals never take their default action (for SIGTERM:
    /// terminate, exit 143). libuv puts a signal's default action back when its last watcher stops, so
    /// tearing the loop down at the end of a graceful stop would leave a few hundred microseconds in
    /// which the second SIGTERM that `timeout`, systemd and container runtimes may send kills the
    /// process. The watchers here sit on a loop of their own that is never run nor closed, kept until
    /// exit: libuv's handler stays installed and only notes the signal for that loop. Call it when the
    /// stop begins, not before: until then a SIGTERM must still stop the process.
    public static func holdUntilExit(_ signals: [Int32]) throws {
        let keeper = try EventLoop()
        for signal in signals { _ = try SignalWatcher(loop: keeper, signal: signal) {} }
        // Never released: its deinit would close the watchers.
        _ = Unmanaged.passRetained(keeper)
    }
}
