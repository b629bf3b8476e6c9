// HTTPClient: HTTP requests on the loop with libcurl's multi-socket interface (curl's multi-uv example
// has the same shape): curl says which sockets to watch (one uv_poll_t each) and when to wake it (one
// uv_timer_t); libuv says which socket is ready, and curl moves every transfer on. Nothing blocks the
// loop and no thread is started per request (Debian's libcurl resolves names on a thread of its own).
//
// Rules this file keeps (libcurl 7.88):
// - curl_multi_socket_action is never called from inside a curl callback: only from libuv's.
// - A socket curl removes gets its poll stopped and closed before curl closes the socket.
// - Each transfer keeps itself alive (Unmanaged.passRetained as CURLOPT_PRIVATE) until it is done.
// - Only http:// and https:// URLs; no redirects; no "Expect: 100-continue" wait before a body.

import CCurl
import CLibUV

public final class HTTPClient: UVHandleOwner {
    public struct Response: Sendable {
        public var status: Int
        /// The first `maxKeptBody` bytes of the answer (for a log line).
        public var body: [UInt8]
    }

    public struct Failure: Error, CustomStringConvertible, Sendable {
        public var description: String
    }

    public typealias Done = (Result<Response, Failure>) -> Void

    static let maxKeptBody = 4096

    let loop: EventLoop
    private let multi: UnsafeMutableRawPointer
    private var timer: Timer?
    private var polls: [Int32: UnsafeMutablePointer<uv_poll_t>] = [:]
    private var running: [ObjectIdentifier: Transfer] = [:]
    public private(set) var isClosed = false

    private static let globalInit: Void = { _ = curl_global_init(Int(CURL_GLOBAL_DEFAULT)) }()

    public init(loop: EventLoop) {
        _ = Self.globalInit
        self.loop = loop
        guard let m = curl_multi_init() else { fatalError("curl_multi_init failed (out of memory)") }
        multi = m
        timer = Timer(loop: loop)
        let me = Unmanaged.passUnretained(self).toOpaque()
        _ = tern_curl_multi_setopt_socket(multi, httpClientSocketCallback)
        _ = tern_curl_multi_setopt_pointer(multi, CURLMOPT_SOCKETDATA, me)
        _ = tern_curl_multi_setopt_timer(multi, httpClientTimerCallback)
        _ = tern_curl_multi_setopt_pointer(multi, CURLMOPT_TIMERDATA, me)
    }

    /// Requests in flight.
    public var inFlight: Int { running.count }

    /// POSTs `body` to `url`; `done` runs on the loop with the answer (any status), or why there was
    /// none (refused, timed out, closed).
    public func post(url: String, body: [UInt8], headers: [String], timeoutMilliseconds: Int, _ done: @escaping Done) {
        guard !isClosed, let easy = curl_easy_init() else {
            return done(.failure(Failure(description: "the HTTP client is closed")))
        }
        let transfer = Transfer(easy: easy, done: done)
        for h in headers + ["Expect:"] { transfer.headers = curl_slist_append(transfer.headers, h) }
        _ = tern_curl_easy_setopt_string(easy, CURLOPT_URL, url)
        _ = tern_curl_easy_setopt_string(easy, CURLOPT_PROTOCOLS_STR, "http,https")
        _ = tern_curl_easy_setopt_long(easy, CURLOPT_NOSIGNAL, 1)
        _ = tern_curl_easy_setopt_long(easy, CURLOPT_TIMEOUT_MS, timeoutMilliseconds)
        _ = tern_curl_easy_setopt_long(easy, CURLOPT_CONNECTTIMEOUT_MS, min(timeoutMilliseconds, 10_000))
        _ = tern_curl_easy_setopt_slist(easy, CURLOPT_HTTPHEADER, transfer.headers)
        _ = tern_curl_easy_setopt_off(easy, CURLOPT_POSTFIELDSIZE_LARGE, curl_off_t(body.count))
        body.withUnsafeBufferPointer { b in
            _ = tern_curl_easy_setopt_pointer(easy, CURLOPT_COPYPOSTFIELDS,
                                              UnsafeMutableRawPointer(mutating: b.baseAddress ?? UnsafePointer(bitPattern: 1)!))
        }
        let opaque = Unmanaged.passRetained(transfer).toOpaque()
        _ = tern_curl_easy_setopt_pointer(easy, CURLOPT_PRIVATE, opaque)
        _ = tern_curl_easy_setopt_pointer(easy, CURLOPT_WRITEDATA, opaque)
        _ = tern_curl_easy_setopt_write(easy, httpClientWriteCallback)
        running[ObjectIdentifier(transfer)] = transfer
        let code = curl_multi_add_handle(multi, easy)
        if code != CURLM_OK {
            finish(transfer, .failure(Failure(description: String(cString: curl_multi_strerror(code)))))
        }
    }

    /// Ends every transfer (each `done` gets a failure) and frees curl's and libuv's handles.
    public func close() {
        guard !isClosed else { return }
        isClosed = true
        for transfer in Array(running.values) {
            finish(transfer, .failure(Failure(description: "the HTTP client was closed")))
        }
        for (_, poll) in polls { closePoll(poll) }
        polls = [:]
        timer?.close()
        timer = nil
        curl_multi_cleanup(multi)
    }

    // MARK: From curl's callbacks (only bookkeeping: no call back into curl here)

    fileprivate func watch(_ fd: Int32, what: Int32) {
        if what == CURL_POLL_REMOVE {
            if let poll = polls.removeValue(forKey: fd) { closePoll(poll) }
            return
        }
        let poll: UnsafeMutablePointer<uv_poll_t>
        if let existing = polls[fd] {
            poll = existing
        } else {
            poll = allocateZeroed(uv_poll_t.self)
            guard uv_poll_init_socket(loop.raw, poll, fd) == 0 else {
                poll.deallocate()
                return  // curl times the transfer out
            }
            poll.pointee.data = Unmanaged.passUnretained(self).toOpaque()
            loop.register(poll)
            polls[fd] = poll
        }
        var events: Int32 = 0
        if what & CURL_POLL_IN != 0 { events |= Int32(UV_READABLE.rawValue) }
        if what & CURL_POLL_OUT != 0 { events |= Int32(UV_WRITABLE.rawValue) }
        uv_poll_start(poll, events, httpClientPollCallback)
    }

    fileprivate func setTimer(_ milliseconds: Int) {
        guard let timer else { return }
        if milliseconds < 0 { return timer.stop() }
        timer.start(afterMilliseconds: UInt64(max(milliseconds, 1))) { [weak self] in
            self?.act(socket: CURL_SOCKET_TIMEOUT, flags: 0)
        }
    }

    // MARK: From libuv's callbacks

    fileprivate func act(socket: Int32, flags: Int32) {
        guard !isClosed else { return }
        var stillRunning: Int32 = 0
        _ = curl_multi_socket_action(multi, socket, flags, &stillRunning)
        reapFinished()
    }

    private func reapFinished() {
        var left: Int32 = 0
        while !isClosed, let message = curl_multi_info_read(multi, &left) {
            guard message.pointee.msg == CURLMSG_DONE, let easy = message.pointee.easy_handle else { continue }
            let result = tern_curl_msg_result(message)
            var opaque: UnsafeMutableRawPointer?
            _ = tern_curl_easy_getinfo_pointer(easy, CURLINFO_PRIVATE, &opaque)
            guard let opaque else { continue }
            let transfer = Unmanaged<Transfer>.fromOpaque(opaque).takeUnretainedValue()
            if result == CURLE_OK {
                var status = 0
                _ = tern_curl_easy_getinfo_long(easy, CURLINFO_RESPONSE_CODE, &status)
                finish(transfer, .success(Response(status: status, body: transfer.received)))
            } else {
                finish(transfer, .failure(Failure(description: String(cString: curl_easy_strerror(result)))))
            }
        }
    }

    private func finish(_ transfer: Transfer, _ result: Result<Response, Failure>) {
        guard running.removeValue(forKey: ObjectIdentifier(transfer)) != nil else { return }
        curl_multi_remove_handle(multi, transfer.easy)
        curl_easy_cleanup(transfer.easy)
        curl_slist_free_all(transfer.headers)
        transfer.headers = nil
        let done = transfer.done
        transfer.done = nil
        Unmanaged.passUnretained(transfer).release()  // the retain of `post`
        done?(result)
    }

    private func closePoll(_ poll: UnsafeMutablePointer<uv_poll_t>) {
        uv_poll_stop(poll)
        uv_close(poll.cast(to: uv_handle_t.self)) { handle in
            EventLoop.from(handle!.pointee.loop).unregister(handle!)
            handle!.deallocate()
        }
    }
}

/// One request: what curl's callbacks reach through CURLOPT_PRIVATE and CURLOPT_WRITEDATA.
private final class Transfer {
    let easy: UnsafeMutableRawPointer
    var done: HTTPClient.Done?
    var headers: UnsafeMutablePointer<curl_slist>?
    var received: [UInt8] = []

    init(easy: UnsafeMutableRawPointer, done: @escaping HTTPClient.Done) {
        self.easy = easy
        self.done = done
    }
}

private func httpClient(_ pointer: UnsafeMutableRawPointer?) -> HTTPClient? {
    pointer.map { Unmanaged<HTTPClient>.fromOpaque($0).takeUnretainedValue() }
}

private let httpClientSocketCallback: tern_curl_socket_callback = { _, fd, what, userp, _ in
    httpClient(userp)?.watch(fd, what: what)
    return 0
}

private let httpClientTimerCallback: tern_curl_timer_callback = { _, milliseconds, userp in
    httpClient(userp)?.setTimer(milliseconds)
    return 0
}

/// Keeps the first bytes of the answer; the rest is read and dropped.
private let httpClientWriteCallback: tern_curl_write_callback = { data, size, count, userdata in
    let n = size * count
    guard let data, let userdata else { return n }
    let transfer = Unmanaged<Transfer>.fromOpaque(userdata).takeUnretainedValue()
    let keep = min(n, HTTPClient.maxKeptBody - transfer.received.count)
    if keep > 0 {
        transfer.received.append(contentsOf: UnsafeRawBufferPointer(start: data, count: keep))
    }
    return n
}

private func httpClientPollCallback(_ poll: UnsafeMutablePointer<uv_poll_t>?, _ status: Int32, _ events: Int32) {
    guard let poll, let client = httpClient(poll.pointee.data) else { return }
    var fd: uv_os_fd_t = -1
    uv_fileno(poll.cast(to: uv_handle_t.self), &fd)
    var flags: Int32 = 0
    if status < 0 {
        flags = CURL_CSELECT_ERR
    } else {
        if events & Int32(UV_READABLE.rawValue) != 0 { flags |= CURL_CSELECT_IN }
        if events & Int32(UV_WRITABLE.rawValue) != 0 { flags |= CURL_CSELECT_OUT }
    }
    client.act(socket: fd, flags: flags)
}
