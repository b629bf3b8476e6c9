// Resolver: asynchronous DNS (MX, A/AAAA, PTR, CNAME, TXT) with c-ares driven by the libuv loop.
//
// c-ares owns the sockets; it reports each one through ARES_OPT_SOCK_STATE_CB and we watch it with
// one uv_poll_t. One uv_timer_t is re-armed from ares_timeout after every call into c-ares. Nothing
// blocks and no thread is started: everything runs on the loop thread.
//
// Rules this file keeps (c-ares 1.18):
// - A query callback can run inside ares_query (bad name, no server), inside ares_process_fd and
//   inside ares_destroy. Lookups are only queued by the public calls and started from the loop, so
//   `done` never runs before lookupX returns while the resolver is open.
// - ares_destroy is never called from inside a c-ares callback: close() there only marks the channel,
//   and it is destroyed when the outermost call into c-ares has returned.
// - At most maxInFlight lookups run at once; the rest wait in a FIFO queue.
// - ares_timeout rounds down to whole milliseconds: the timer gets one more (see the shim).
//
// Every c-ares call goes through Modules/CCAres/shim.h, so a newer c-ares changes only that file.

import CCAres
import CLibUV

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// MARK: - Public types

public enum DNSError: Error, Equatable {
    case nxdomain, noData, serverFailure, refused, timeout, badResponse, cancelled
    /// Any other c-ares status (ARES_ECONNREFUSED, ARES_EBADNAME, ...).
    case other(Int32)

    /// c-ares's own words for a status ("Could not contact DNS servers").
    public static func text(ofStatus status: Int32) -> String {
        guard let text = ares_strerror(status) else { return "status \(status)" }
        return String(cString: text)
    }
}

public struct MXRecord: Equatable {
    public let preference: UInt16
    /// The exchange without its trailing dot; "" (or ".") is a null MX (RFC 7505).
    public let host: String

    public init(preference: UInt16, host: String) {
        self.preference = preference
        self.host = host
    }

    /// RFC 7505: "MX 0 ." says the domain accepts no mail.
    public var isNullMX: Bool { host.isEmpty || host == "." }
}

public struct DNSAnswer<T> {
    public let records: T
    /// The smallest TTL among the records used, CNAMEs on the way included.
    public let ttl: UInt32
    /// The name the records belong to when the answer followed a CNAME chain, else nil.
    public let canonicalName: String?

    public init(records: T, ttl: UInt32, canonicalName: String?) {
        self.records = records
        self.ttl = ttl
        self.canonicalName = canonicalName
    }
}

extension DNSAnswer: Equatable where T: Equatable {}

// MARK: - Resolver

/// A DNS stub resolver on a libuv loop. Use it on the loop's thread only.
///
/// Call close() before closing the loop: the resolver owns libuv handles until then. Dropping the
/// last reference closes it too.
public final class Resolver {
    let core: ResolverCore

    /// - Parameters:
    ///   - servers: "ip:port" strings ("127.0.0.1:5353", "[::1]:5353", or "ip" for port 53);
    ///     empty means the servers of /etc/resolv.conf.
    ///   - timeoutMilliseconds: the first try's timeout; c-ares doubles it on each further round.
    ///   - tries: rounds over the server list before a lookup fails with .timeout.
    ///   - maxInFlight: lookups running at once; more are queued in order.
    public init(loop: EventLoop, servers: [String], timeoutMilliseconds: Int = 3000,
                tries: Int = 2, maxInFlight: Int = 256) throws {
        core = try ResolverCore(loop: loop.raw, servers: servers, timeoutMilliseconds: timeoutMilliseconds,
                                tries: tries, maxInFlight: maxInFlight)
    }

    deinit { core.close() }

    /// MX records of `domain`, sorted by preference (answer order among equals).
    public func lookupMX(_ domain: String, _ done: @escaping (Result<DNSAnswer<[MXRecord]>, DNSError>) -> Void) {
        core.submit(ResolverLookup(queries: [(domain, TERN_DNS_TYPE_MX)]) { replies in
            done(ResolverDecode.mx(replies[0], queried: domain))
        } cancel: { done(.failure($0)) })
    }

    /// A and AAAA records as text, IPv4 first. Fails with .noData only if both are empty; one of the
    /// two failing otherwise (a timeout, say) still gives the other's addresses.
    public func lookupAddresses(_ host: String, _ done: @escaping (Result<DNSAnswer<[String]>, DNSError>) -> Void) {
        core.submit(ResolverLookup(queries: [(host, TERN_DNS_TYPE_A), (host, TERN_DNS_TYPE_AAAA)]) { replies in
            done(ResolverDecode.addresses(a: replies[0], aaaa: replies[1], queried: host))
        } cancel: { done(.failure($0)) })
    }

    /// The PTR names of an IPv4 or IPv6 address. A string that is not an address fails with
    /// .other(ARES_EBADNAME).
    public func lookupPTR(_ ip: String, _ done: @escaping (Result<[String], DNSError>) -> Void) {
        guard let reverse = ResolverReverseName(ip) else {
            core.submit(ResolverLookup(failing: .other(TERN_ARES_EBADNAME)) { done(.failure($0)) })
            return
        }
        core.submit(ResolverLookup(queries: [(reverse.name, TERN_DNS_TYPE_PTR)]) { replies in
            done(ResolverDecode.ptr(replies[0], reverse: reverse))
        } cancel: { done(.failure($0)) })
    }

    /// Where the CNAME chain that starts at `name` ends (records and canonicalName both hold it);
    /// .noData when `name` is no alias.
    public func lookupCNAME(_ name: String, _ done: @escaping (Result<DNSAnswer<String>, DNSError>) -> Void) {
        core.submit(ResolverLookup(queries: [(name, TERN_DNS_TYPE_CNAME)]) { replies in
            done(ResolverDecode.cname(replies[0], queried: name))
        } cancel: { done(.failure($0)) })
    }

    /// TXT records of `name` (after CNAMEs), each its character-strings joined (as DKIM and SPF read
    /// them, RFC 6376 §3.6.2.2).
    public func lookupTXT(_ name: String, _ done: @escaping (Result<DNSAnswer<[[UInt8]]>, DNSError>) -> Void) {
        core.submit(ResolverLookup(queries: [(name, TERN_DNS_TYPE_TXT)]) { replies in
            done(ResolverDecode.txt(replies[0], queried: name))
        } cancel: { done(.failure($0)) })
    }

    /// Cancels every queued and running lookup (their callbacks get .cancelled, before close returns
    /// unless close is called from inside a callback, then as soon as that returns) and closes the
    /// polls and the timer. Lookups asked for afterwards fail at once with .cancelled.
    public func close() { core.close() }
}

// MARK: - Lookups

/// One user-level lookup: one or two DNS queries whose raw replies are decoded together.
final class ResolverLookup {
    typealias Reply = Result<[UInt8], DNSError>

    let queries: [(name: String, type: Int32)]
    let failure: DNSError?
    private var replies: [Reply?]
    private var remaining: Int
    private var onReplies: (([Reply]) -> Void)?
    private var onCancel: ((DNSError) -> Void)?

    init(queries: [(String, Int32)], decode: @escaping ([Reply]) -> Void, cancel: @escaping (DNSError) -> Void) {
        self.queries = queries.map { (name: $0.0, type: $0.1) }
        failure = nil
        replies = Array(repeating: nil, count: queries.count)
        remaining = queries.count
        onReplies = decode
        onCancel = cancel
    }

    /// A lookup that fails with `failure` when its turn comes (invalid input).
    init(failing failure: DNSError, cancel: @escaping (DNSError) -> Void) {
        queries = []
        self.failure = failure
        replies = []
        remaining = 0
        onReplies = nil
        onCancel = cancel
    }

    /// Records one query's reply; true when that was the last one outstanding.
    func record(_ reply: Reply, at index: Int) -> Bool {
        guard replies[index] == nil else { return false }
        replies[index] = reply
        remaining -= 1
        return remaining == 0
    }

    /// Calls the user's callback, once.
    func finish(overridingWith error: DNSError?) {
        let replies = self.replies
        let decode = onReplies, cancel = onCancel
        onReplies = nil
        onCancel = nil
        if let error = error ?? failure {
            cancel?(error)
        } else {
            decode?(replies.map { $0 ?? .failure(.cancelled) })
        }
    }
}

/// The argument of one ares_query, passed retained and taken back in its callback.
private final class ResolverQueryContext {
    let core: ResolverCore
    let lookup: ResolverLookup
    let index: Int
    init(core: ResolverCore, lookup: ResolverLookup, index: Int) {
        self.core = core
        self.lookup = lookup
        self.index = index
    }
}

// MARK: - Core: the channel, its polls and timers

/// c-ares wants its library initialised once per process before the first channel.
private let resolverLibraryStatus: Int32 = tern_ares_library_init()

final class ResolverCore {
    private let loop: UnsafeMutablePointer<uv_loop_t>
    private var channel: ares_channel?
    private let maxInFlight: Int

    /// One poll per socket c-ares asked us to watch.
    private var polls: [Int32: UnsafeMutablePointer<uv_poll_t>] = [:]
    /// c-ares timeouts; re-armed after every call into c-ares.
    private let aresTimer: UnsafeMutablePointer<uv_timer_t>
    /// Zero-delay timer that starts queued lookups on the next turn of the loop.
    private let startTimer: UnsafeMutablePointer<uv_timer_t>
    private var startTimerArmed = false

    private var queue: [ResolverLookup?] = []
    private var queueHead = 0
    private(set) var inFlight = 0
    /// The most lookups ever running at once (tests check the bound).
    private(set) var peakInFlight = 0
    var queuedCount: Int { queue.count - queueHead }

    /// Depth of calls into c-ares on the stack; ares_destroy waits until it is zero.
    private var aresDepth = 0
    private var pumping = false
    private(set) var closed = false
    private var destroyPending = false
    private var destroyed = false
    private var openHandles = 0
    /// Keeps this object alive while libuv handles point at it; released by the last close callback.
    private var selfReference: Unmanaged<ResolverCore>?

    init(loop: UnsafeMutablePointer<uv_loop_t>, servers: [String], timeoutMilliseconds: Int, tries: Int,
         maxInFlight: Int) throws {
        self.loop = loop
        self.maxInFlight = max(1, maxInFlight)
        aresTimer = resolverAllocateHandle(uv_timer_t.self)
        startTimer = resolverAllocateHandle(uv_timer_t.self)

        var failure: DNSError?
        if resolverLibraryStatus != TERN_ARES_SUCCESS {
            failure = .other(resolverLibraryStatus)
        } else {
            var channel: ares_channel?
            let unmanaged = Unmanaged.passUnretained(self).toOpaque()
            let status = tern_ares_init(&channel, Int32(clamping: max(1, timeoutMilliseconds)),
                                        Int32(clamping: max(1, tries)), resolverSocketStateCallback, unmanaged)
            if status != TERN_ARES_SUCCESS {
                failure = .other(status)
            } else if let channel {
                self.channel = channel
                if !servers.isEmpty {
                    let csv = servers.joined(separator: ",")
                    let status = tern_ares_set_servers(channel, csv)
                    if status != TERN_ARES_SUCCESS {
                        tern_ares_destroy(channel)
                        self.channel = nil
                        failure = .other(status)
                    }
                }
            } else {
                failure = .other(TERN_ARES_ENOMEM)
            }
        }
        if let failure {
            aresTimer.deallocate()
            startTimer.deallocate()
            throw failure
        }

        let me = Unmanaged.passUnretained(self).toOpaque()
        uv_timer_init(loop, aresTimer)
        aresTimer.pointee.data = me
        uv_timer_init(loop, startTimer)
        startTimer.pointee.data = me
        openHandles = 2
        selfReference = Unmanaged.passRetained(self)
    }

    // MARK: Lookups in and out

    func submit(_ lookup: ResolverLookup) {
        if closed {
            lookup.finish(overridingWith: .cancelled)
            return
        }
        queue.append(lookup)
        if !startTimerArmed {
            startTimerArmed = true
            uv_timer_start(startTimer, resolverStartTimerCallback, 0, 0)
        }
    }

    /// Starts queued lookups while there is room.
    func pump() {
        guard !pumping else { return }
        pumping = true
        defer { pumping = false }
        while !closed, inFlight < maxInFlight, queueHead < queue.count {
            let lookup = queue[queueHead]!
            queue[queueHead] = nil
            queueHead += 1
            start(lookup)
        }
        if queueHead == queue.count {
            queue.removeAll(keepingCapacity: true)
            queueHead = 0
        } else if queueHead > 1024, queueHead * 2 > queue.count {
            queue.removeFirst(queueHead)
            queueHead = 0
        }
        rearmTimer()
    }

    private func start(_ lookup: ResolverLookup) {
        inFlight += 1
        peakInFlight = max(peakInFlight, inFlight)
        if lookup.failure != nil {
            complete(lookup)
            return
        }
        for (index, query) in lookup.queries.enumerated() {
            guard let channel, !destroyed else {
                queryReplied(lookup, index: index, reply: .failure(.cancelled))
                continue
            }
            let context = Unmanaged.passRetained(ResolverQueryContext(core: self, lookup: lookup, index: index))
            withAres {
                tern_ares_query(channel, query.name, query.type, resolverQueryCallback, context.toOpaque())
            }
        }
    }

    fileprivate func queryReplied(_ lookup: ResolverLookup, index: Int, reply: ResolverLookup.Reply) {
        if lookup.record(reply, at: index) {
            complete(lookup)
        }
    }

    private func complete(_ lookup: ResolverLookup) {
        inFlight -= 1
        lookup.finish(overridingWith: closed ? .cancelled : nil)
        pump()
    }

    // MARK: Calls into c-ares

    /// Runs a call into c-ares; a close() asked for meanwhile destroys the channel once the outermost
    /// such call has returned (c-ares must not be destroyed from inside its own callbacks).
    private func withAres(_ body: () -> Void) {
        aresDepth += 1
        body()
        aresDepth -= 1
        if aresDepth == 0, destroyPending {
            finishClose()
        }
    }

    private func rearmTimer() {
        guard let channel, !destroyed else { return }
        let milliseconds = tern_ares_timeout_ms(channel)
        if milliseconds < 0 {
            uv_timer_stop(aresTimer)
        } else {
            uv_timer_start(aresTimer, resolverAresTimerCallback, UInt64(milliseconds), 0)
        }
    }

    fileprivate func aresTimerFired() {
        guard let channel, !destroyed else { return }
        withAres { tern_ares_process_fd(channel, TERN_ARES_SOCKET_BAD, TERN_ARES_SOCKET_BAD) }
        rearmTimer()
    }

    fileprivate func startTimerFired() {
        startTimerArmed = false
        pump()
    }

    fileprivate func socketReady(_ fd: Int32, status: Int32, events: Int32) {
        guard let channel, !destroyed else { return }
        var readFD = TERN_ARES_SOCKET_BAD, writeFD = TERN_ARES_SOCKET_BAD
        if status < 0 {
            // Let c-ares read and write, meet the error and drop the connection.
            readFD = fd
            writeFD = fd
        } else {
            if events & Int32(UV_READABLE.rawValue) != 0 { readFD = fd }
            if events & Int32(UV_WRITABLE.rawValue) != 0 { writeFD = fd }
        }
        withAres { tern_ares_process_fd(channel, readFD, writeFD) }
        rearmTimer()
    }

    /// ARES_OPT_SOCK_STATE_CB: watch `fd` for what c-ares wants, or stop (c-ares closes it next).
    fileprivate func socketStateChanged(_ fd: Int32, readable: Bool, writable: Bool) {
        if !readable && !writable {
            if let poll = polls.removeValue(forKey: fd) {
                closeHandle(poll)
            }
            return
        }
        guard !destroyed else { return }
        let poll: UnsafeMutablePointer<uv_poll_t>
        if let existing = polls[fd] {
            poll = existing
        } else {
            poll = resolverAllocateHandle(uv_poll_t.self)
            guard uv_poll_init_socket(loop, poll, fd) == 0 else {
                // c-ares will time the query out; nothing better can be done without the socket.
                poll.deallocate()
                return
            }
            poll.pointee.data = Unmanaged.passUnretained(self).toOpaque()
            openHandles += 1
            polls[fd] = poll
        }
        var events: Int32 = 0
        if readable { events |= Int32(UV_READABLE.rawValue) }
        if writable { events |= Int32(UV_WRITABLE.rawValue) }
        uv_poll_start(poll, events, resolverPollCallback)
    }

    // MARK: Closing

    func close() {
        guard !closed else { return }
        closed = true
        let waiting = queue[queueHead...].compactMap { $0 }
        queue.removeAll()
        queueHead = 0
        for lookup in waiting {
            lookup.finish(overridingWith: .cancelled)
        }
        if aresDepth > 0 {
            destroyPending = true
        } else {
            finishClose()
        }
    }

    private func finishClose() {
        guard !destroyed else { return }
        destroyPending = false
        if let channel {
            // Running queries end here with ARES_EDESTRUCTION (→ .cancelled); c-ares reports each
            // socket closed through socketStateChanged, which closes its poll.
            aresDepth += 1
            tern_ares_destroy(channel)
            aresDepth -= 1
            self.channel = nil
        }
        destroyed = true
        for (_, poll) in polls {
            closeHandle(poll)
        }
        polls.removeAll()
        closeHandle(aresTimer)
        closeHandle(startTimer)
    }

    private func closeHandle<T>(_ handle: UnsafeMutablePointer<T>) {
        let base = UnsafeMutableRawPointer(handle).assumingMemoryBound(to: uv_handle_t.self)
        if uv_is_closing(base) == 0 {
            uv_close(base, resolverHandleClosed)
        }
    }

    fileprivate func handleClosed() {
        openHandles -= 1
        if openHandles == 0, destroyed {
            let reference = selfReference
            selfReference = nil
            reference?.release()
        }
    }
}

// MARK: - C callbacks

private func resolverAllocateHandle<T>(_ type: T.Type) -> UnsafeMutablePointer<T> {
    let pointer = UnsafeMutablePointer<T>.allocate(capacity: 1)
    UnsafeMutableRawPointer(pointer).initializeMemory(as: UInt8.self, repeating: 0, count: MemoryLayout<T>.size)
    return pointer
}

private func resolverCore(_ data: UnsafeMutableRawPointer?) -> ResolverCore? {
    guard let data else { return nil }
    return Unmanaged<ResolverCore>.fromOpaque(data).takeUnretainedValue()
}

private func resolverSocketStateCallback(_ data: UnsafeMutableRawPointer?, _ fd: ares_socket_t,
                                         _ readable: Int32, _ writable: Int32) {
    resolverCore(data)?.socketStateChanged(fd, readable: readable != 0, writable: writable != 0)
}

private func resolverQueryCallback(_ arg: UnsafeMutableRawPointer?, _ status: Int32, _ timeouts: Int32,
                                   _ abuf: UnsafeMutablePointer<UInt8>?, _ alen: Int32) {
    guard let arg else { return }
    let context = Unmanaged<ResolverQueryContext>.fromOpaque(arg).takeRetainedValue()
    let reply: ResolverLookup.Reply
    if status == TERN_ARES_SUCCESS {
        if let abuf, alen > 0 {
            reply = .success(Array(UnsafeBufferPointer(start: abuf, count: Int(alen))))
        } else {
            reply = .failure(.badResponse)
        }
    } else {
        reply = .failure(DNSError(aresStatus: status))
    }
    context.core.queryReplied(context.lookup, index: context.index, reply: reply)
}

private func resolverPollCallback(_ poll: UnsafeMutablePointer<uv_poll_t>?, _ status: Int32, _ events: Int32) {
    guard let poll, let core = resolverCore(poll.pointee.data) else { return }
    var fd: uv_os_fd_t = -1
    let base = UnsafeMutableRawPointer(poll).assumingMemoryBound(to: uv_handle_t.self)
    guard uv_fileno(base, &fd) == 0 else { return }
    core.socketReady(Int32(fd), status: status, events: events)
}

private func resolverAresTimerCallback(_ timer: UnsafeMutablePointer<uv_timer_t>?) {
    resolverCore(timer?.pointee.data)?.aresTimerFired()
}

private func resolverStartTimerCallback(_ timer: UnsafeMutablePointer<uv_timer_t>?) {
    resolverCore(timer?.pointee.data)?.startTimerFired()
}

private func resolverHandleClosed(_ handle: UnsafeMutablePointer<uv_handle_t>?) {
    guard let handle else { return }
    let core = resolverCore(handle.pointee.data)
    UnsafeMutableRawPointer(handle).deallocate()
    core?.handleClosed()
}

extension DNSError {
    /// c-ares status → DNSError.
    init(aresStatus status: Int32) {
        switch status {
        case TERN_ARES_ENOTFOUND: self = .nxdomain
        case TERN_ARES_ENODATA: self = .noData
        case TERN_ARES_ESERVFAIL: self = .serverFailure
        case TERN_ARES_EREFUSED: self = .refused
        case TERN_ARES_ETIMEOUT: self = .timeout
        case TERN_ARES_EBADRESP: self = .badResponse
        case TERN_ARES_ECANCELLED, TERN_ARES_EDESTRUCTION: self = .cancelled
        default: self = .other(status)
        }
    }
}
