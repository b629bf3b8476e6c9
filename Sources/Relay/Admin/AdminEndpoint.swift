// The relay's admin endpoint ([admin] listen): the HTTP server of Admin/HTTPServer.swift on the
// relay's own loop, answering the routes of AdminRoutes.swift. Metrics and actions are answered on
// the loop from memory; listing and showing read envelopes from the spool on the thread pool (the
// spool is the truth; memory adds what is in flight or held), so the loop never blocks on a big queue.

import Foundation
import MailQueue
import SMTPProtocol
import UVRuntime

public final class AdminEndpoint {
    unowned let server: SMTPServer
    let http: HTTPServer

    /// On TCP at `address`, or on the unix socket at `unixPath` when given.
    init(server: SMTPServer, address: SocketAddress?, unixPath: String?) throws {
        self.server = server
        var handle: HTTPServer.AsyncHandler = { _, answer in answer(Self.json(AdminError(503, "starting"))) }
        let forward: HTTPServer.AsyncHandler = { request, answer in handle(request, answer) }
        let requestTimeoutMs = UInt64(server.config.admin.requestTimeout * 1000)
        if let unixPath {
            http = try HTTPServer(loop: server.loop, unixPath: unixPath, maxConnections: 16,
                                  requestTimeoutMs: requestTimeoutMs, asyncHandler: forward)
        } else {
            http = try HTTPServer(loop: server.loop, address: address!, maxConnections: 16,
                                  requestTimeoutMs: requestTimeoutMs, asyncHandler: forward)
        }
        // Malformed requests too are answered in JSON, as every other error of the endpoint.
        http.errorResponse = { status, _, message in Self.json(AdminError(status, message)) }
        handle = { [unowned self] request, answer in self.handle(request, answer) }
    }

    public var localAddress: SocketAddress { http.localAddress }
    public var listenDescription: String { http.listenDescription }

    func start() throws { try http.start() }

    func close() { http.close() }

    func handle(_ request: HTTPRequest, _ answer: @escaping (HTTPResponse) -> Void) {
        // A browser cannot reach a unix socket: the Host check is for TCP on loopback.
        let admin = server.config.admin
        if let refused = Self.refusedAsFromABrowser(request, loopback: admin.unixPath == nil && admin.isLoopback) {
            answer(Self.json(refused))
            return
        }
        let route: AdminRoute
        do {
            route = try AdminRoute.parse(method: request.method, target: request.target)
        } catch let error as AdminError {
            answer(Self.json(error))
            return
        } catch {
            answer(Self.json(AdminError(500, "\(error)")))
            return
        }
        switch route {
        case .health:
            answer(Self.json(["status": "ok"]))
        case .ready:
            ready(answer)
        case .metrics:
            let metrics = server.relayMetrics
            metrics.updateBufferGauges(server.dataBudget)
            let reply = {
                answer(HTTPResponse(status: 200, reason: "OK",
                                    headers: [HTTPHeader("Content-Type", "text/plain; version=0.0.4; charset=utf-8")],
                                    body: metrics.exposition()))
            }
            if let delivery = server.delivery {
                metrics.updateQueueGauges(delivery.queueCounts())
                metrics.updateShapingMetrics(delivery.shapingMetrics())
                reply()
            } else {
                // Delivery off (maintenance): nothing in memory knows the queue, the spool does.
                let spool = server.spool
                var counts = RelayMetrics.QueueCounts()
                server.loop.queueWork({
                    for id in (try? spool.list()) ?? [] {
                        guard let e = try? spool.load(id) else { continue }
                        counts.add(state: QueueEntry.state(of: e, inFlight: false, held: false), priority: e.priority)
                    }
                }, done: {
                    metrics.updateQueueGauges(counts)
                    reply()
                })
            }
        case .list(let filter):
            list(filter, answer)
        case .show(let id):
            show(id, answer)
        case .message(let id):
            message(id, headOnly: request.method == "HEAD", answer)
        case .flush(let domain):
            guard let delivery = server.delivery else { return answer(Self.json(Self.deliveryOff)) }
            answer(Self.json(delivery.flush(domain: domain)))
        case .bulk(let action, let filter):
            guard let delivery = server.delivery else { return answer(Self.json(Self.deliveryOff)) }
            bulk(action, filter, delivery, answer)
        case .destinations:
            let rows = server.delivery?.destinations() ?? []
            answer(Self.json(ShapingDestinationListing(rows, deliveryEnabled: server.delivery != nil)))
        case .suspend(let request):
            guard let delivery = server.delivery else { return answer(Self.json(Self.deliveryOff)) }
            answer(Self.json(delivery.postmasterSuspend(request)))
        case .suppression(let ask):
            suppression(ask, body: request.body, answer)
        case .cluster:
            guard let cluster = server.cluster else {
                return answer(Self.json(AdminError(404, "this node is in no cluster ([cluster] redis is not set)")))
            }
            answer(Self.json(cluster.view))
        case .resume(let destination):
            guard let delivery = server.delivery else { return answer(Self.json(Self.deliveryOff)) }
            answer(Self.json(delivery.postmasterResume(destination)))
        case .act(let action, let id):
            guard let delivery = server.delivery else { return answer(Self.json(Self.deliveryOff)) }
            delivery.control(action, id: id) { result in
                switch result {
                case .success(let reply): answer(Self.json(reply, status: reply.pending ? 202 : 200))
                case .failure(let error): answer(Self.json(error))
                }
            }
        }
    }

    /// A web page must not reach the endpoint through the postmaster's browser: a cross-site POST needs
    /// no permission to be sent (CSRF: a page could delete mail), and a name rebound to 127.0.0.1 would
    /// let a page read the queue. Browsers send Origin on such requests and the page's name as Host;
    /// `tern queue`, curl and Prometheus send no Origin, and on loopback they name the address itself.
    static func refusedAsFromABrowser(_ request: HTTPRequest, loopback: Bool) -> AdminError? {
        if request.header("Origin") != nil {
            return AdminError(403, "requests from web pages (with an Origin header) are refused")
        }
        guard loopback, let host = request.header("Host") else { return nil }
        var name = Substring(host)
        if name.hasPrefix("[") {
            name = name.dropFirst().prefix { $0 != "]" }
        } else if let colon = name.lastIndex(of: ":") {
            name = name[..<colon]
        }
        let lowered = name.lowercased()
        if lowered == "localhost" || IPAddress.parseRaw(lowered) != nil { return nil }
        return AdminError(403, "Host \"\(host)\" is not this machine's address: use 127.0.0.1 or localhost")
    }

    static let deliveryOff = AdminError(409, "delivery is switched off ([delivery] enabled = false): nothing to act on")

    // MARK: Health and readiness

    /// GET /ready: 200 when the listeners accept, the spool takes a new file and the queue found in
    /// the spool at start-up is loaded; else 503 saying which is not. The spool is tried on the thread
    /// pool (a write that blocks on a sick disk must not stop the loop, which is what /health tells).
    /// One probe at a time: requests that come while it runs get its answer (a disk that hangs holds
    /// one pool thread, not one per probe).
    private func ready(_ answer: @escaping (HTTPResponse) -> Void) {
        readyWaiting.append(answer)
        guard readyWaiting.count == 1 else { return }
        let spool = server.spool
        var failure: SpoolError?
        server.loop.queueWork({ failure = spool.probeWritable() }, done: { [self] in
            let status = Self.readiness(listening: server.isListening, loadingSpool: server.delivery?.isLoadingSpool == true,
                                        spoolFailure: failure.map { "\($0)" })
            let response = Self.json(status, status: status.error == nil ? 200 : 503)
            let waiting = readyWaiting
            readyWaiting = []
            for answer in waiting { answer(response) }
        })
    }

    private var readyWaiting: [(HTTPResponse) -> Void] = []

    /// What /ready answers from what is known: ready, or not ready with every reason.
    static func readiness(listening: Bool, loadingSpool: Bool, spoolFailure: String?) -> ReadyStatus {
        var reasons: [String] = []
        if !listening { reasons.append("not listening for mail (starting or stopping)") }
        if loadingSpool { reasons.append("still loading the queue from the spool") }
        if let spoolFailure { reasons.append("the spool is not writable: \(spoolFailure)") }
        return ReadyStatus(status: reasons.isEmpty ? "ready" : "not ready", listening: listening,
                           recoveryDone: !loadingSpool, spoolWritable: spoolFailure == nil,
                           error: reasons.isEmpty ? nil : reasons.joined(separator: "; "))
    }

    struct ReadyStatus: Encodable, Equatable {
        var status: String
        var listening: Bool
        var recoveryDone: Bool
        var spoolWritable: Bool
        var error: String?

        enum CodingKeys: String, CodingKey {
            case status, listening, error
            case recoveryDone = "recovery_done"
            case spoolWritable = "spool_writable"
        }
    }

    // MARK: Reading the queue

    /// Every envelope in the spool, read on the thread pool; then, on the loop, the entries that
    /// `filter` selects, with their states from memory.
    private func select(_ filter: QueueFilter, _ done: @escaping (Result<[QueueEntry], AdminError>) -> Void) {
        let spool = server.spool
        var envelopes: [Envelope] = []
        var failure: Error?
        server.loop.queueWork({
            do {
                for id in try spool.list() {
                    // A message may leave the queue between the listing and the read: skip it.
                    if let e = try? spool.load(id) { envelopes.append(e) }
                }
            } catch {
                failure = error
            }
        }, done: { [self] in
            if let failure { return done(.failure(AdminError(500, "cannot read the spool: \(failure)"))) }
            let now = server.loop.clock.wallSeconds()
            done(.success(envelopes.filter { server.delivery?.isLeaving($0.id) != true }
                .map(entry).filter { filter.matches($0, now: now) }))
        })
    }

    private func list(_ filter: QueueFilter, _ answer: @escaping (HTTPResponse) -> Void) {
        select(filter) { [self] result in
            switch result {
            case .failure(let error): answer(Self.json(error))
            case .success(let entries):
                answer(Self.json(QueueListing(count: entries.count, messages: entries,
                                              deliveryEnabled: server.delivery != nil)))
            }
        }
    }

    /// The action on every message selected by `filter` as the queue is now (as postsuper does with
    /// ALL): the selection is read once, then each message is acted on; messages that arrive meanwhile
    /// are not in it. Release takes only held messages and flush none (a flush does not release).
    private func bulk(_ action: QueueAction, _ filter: QueueFilter, _ delivery: DeliveryManager,
                      _ answer: @escaping (HTTPResponse) -> Void) {
        select(filter) { result in
            let entries: [QueueEntry]
            switch result {
            case .failure(let error): return answer(Self.json(error))
            case .success(let selected): entries = selected
            }
            let ids = entries.filter { e in
                switch action {
                case .release: return e.state == "held"
                case .flush: return e.state != "held"
                case .hold, .delete, .bounce: return true
                }
            }.compactMap { QueueID(rawValue: $0.id) }
            var results = [QueueActionReply?](repeating: nil, count: ids.count)
            var waiting = ids.count
            guard waiting > 0 else { return answer(Self.json(QueueBulkReply(action: action, results: []))) }
            for (i, id) in ids.enumerated() {
                delivery.control(action, id: id) { outcome in
                    switch outcome {
                    case .success(let reply):
                        results[i] = reply
                    case .failure(let error):
                        results[i] = QueueActionReply(action: action, id: id.rawValue, result: error.status == 404 ? "gone" : "failed",
                                                      message: error.message)
                    }
                    waiting -= 1
                    if waiting == 0 { answer(Self.json(QueueBulkReply(action: action, results: results.compactMap { $0 }))) }
                }
            }
        }
    }

    private func show(_ id: QueueID, _ answer: @escaping (HTTPResponse) -> Void) {
        let notQueued = Self.json(AdminError(404, "\(id): no such message in the queue"))
        if server.delivery?.isLeaving(id) == true { return answer(notQueued) }
        if let e = server.delivery?.envelopeInMemory(id) { return answer(Self.json(entry(e))) }
        let spool = server.spool
        var envelope: Envelope?
        server.loop.queueWork({
            envelope = try? spool.load(id)
        }, done: { [self] in
            guard let envelope, server.delivery?.isLeaving(id) != true else { return answer(notQueued) }
            var shown = entry(server.delivery?.envelopeInMemory(id) ?? envelope)
            if server.delivery == nil { shown.deliveryEnabled = false }
            answer(Self.json(shown))
        })
    }

    /// GET /queue/ID/message: the stored bytes. A message may be tens of MB, so one answer at a time
    /// is read and held, across all connections, until the client has taken it (or gone); the others
    /// wait their turn. HEAD answers from the size, without reading the message.
    private func message(_ id: QueueID, headOnly: Bool, _ answer: @escaping (HTTPResponse) -> Void) {
        let notQueued = Self.json(AdminError(404, "\(id): no such message in the queue"))
        let spool = server.spool
        let loop = server.loop
        func found(_ body: [UInt8]) -> HTTPResponse {
            HTTPResponse(status: 200, reason: "OK", headers: [HTTPHeader("Content-Type", "message/rfc822")], body: body)
        }
        if headOnly {
            var size: Int?
            loop.queueWork({ size = try? spool.messageSize(id) }, done: {
                guard let size else { return answer(notQueued) }
                var response = found([])
                response.headLength = size
                answer(response)
            })
            return
        }
        withMessageTurn { done in
            var bytes: [UInt8]?
            loop.queueWork({ bytes = try? spool.readMessage(id) }, done: {
                guard let read = bytes else {
                    done()
                    return answer(notQueued)
                }
                bytes = nil  // the answer holds the only reference
                var response = found(read)
                response.whenSent = done
                answer(response)
            })
        }
    }

    private var messageTurnTaken = false
    private var messageTurnWaiting: [(@escaping () -> Void) -> Void] = []

    /// Runs `work` when no other message answer is read or held; `work` calls its argument when done.
    private func withMessageTurn(_ work: @escaping (_ done: @escaping () -> Void) -> Void) {
        guard !messageTurnTaken else { return messageTurnWaiting.append(work) }
        messageTurnTaken = true
        var finished = false
        // Weak: the answer may finish after the endpoint is gone (a reload or shutdown meanwhile).
        work { [weak self] in
            guard let self, !finished else { return }
            finished = true
            self.messageTurnTaken = false
            if !self.messageTurnWaiting.isEmpty { self.withMessageTurn(self.messageTurnWaiting.removeFirst()) }
        }
    }

    private func entry(_ spooled: Envelope) -> QueueEntry {
        guard let delivery = server.delivery else {
            return QueueEntry(spooled, state: QueueEntry.state(of: spooled, inFlight: false, held: false))
        }
        let e = delivery.envelopeInMemory(spooled.id) ?? spooled
        return QueueEntry(e, state: delivery.state(of: e))
    }

    // MARK: JSON

    static func json<T: Encodable>(_ value: T, status: Int = 200) -> HTTPResponse {
        HTTPResponse.json(value, status: status)
    }

    static func json(_ error: AdminError) -> HTTPResponse {
        json(["error": error.message], status: error.status)
    }

}

extension SMTPServer {
    /// Binds [admin] listen (nothing when it is ""); a failure to bind is a start-up error that names it.
    func openAdminEndpoint() throws {
        let text = config.admin.listen
        guard !text.isEmpty else { return }
        do {
            if let path = config.admin.unixPath {
                admin = try AdminEndpoint(server: self, address: nil, unixPath: path)
            } else {
                admin = try AdminEndpoint(server: self, address: try SocketAddress(parsing: text), unixPath: nil)
            }
        } catch {
            throw ServerStartError(message: "cannot listen on admin.listen \(text): \(error)")
        }
        if !config.admin.isLoopback {
            log.warning("admin endpoint on \(text), not loopback: whoever reaches it can delete mail")
        }
    }
}

extension AdminEndpoint {
    /// The suppression list's requests (SuppressionAdmin.swift): changes answered once synced.
    func suppression(_ ask: SuppressionRequest, body: [UInt8], _ answer: @escaping (HTTPResponse) -> Void) {
        let store = server.suppression
        let log = server.log
        let now = Int(server.loop.clock.wallSeconds())
        switch ask {
        case .list(let offset, let limit):
            let page = store.list.entries(from: offset, limit: limit)
            answer(Self.json(SuppressionListing(total: store.list.count, offset: offset,
                                                entries: page.map(SuppressionView.init))))
        case .show(let key):
            guard let e = store.list.entry(address: key.address, scope: key.scope) else {
                return answer(Self.json(AdminError(404, "\(terminalSafe(key.address)) is not suppressed\(key.scope.isEmpty ? "" : " for \(terminalSafe(key.scope))")")))
            }
            answer(Self.json(SuppressionView(e)))
        case .add(let key, let reason):
            let entry = SuppressionEntry(address: key.address, scope: key.scope, reason: reason, time: now)
            let server = self.server
            let added = store.add(entry) { failure in
                if let failure { return answer(Self.json(AdminError(500, "suppression.list not written: \(failure)"))) }
                server.suppressionEvent(entry)
                log.info("suppression: \(angleQuoted(key.address))\(key.scope.isEmpty ? "" : " for \(key.scope)") added by the postmaster: \(terminalSafe(reason))")
                answer(Self.json(SuppressionReply(message: "\(key.address) suppressed\(key.scope.isEmpty ? "" : " for \(key.scope)")")))
            }
            if !added { answer(Self.json(AdminError(400, "address: cannot be kept"))) }
        case .remove(let key):
            let removed = store.remove(address: key.address, scope: key.scope) { failure in
                if let failure { return answer(Self.json(AdminError(500, "suppression.list not written: \(failure)"))) }
                log.info("suppression: \(angleQuoted(key.address))\(key.scope.isEmpty ? "" : " for \(key.scope)") removed by the postmaster")
                answer(Self.json(SuppressionReply(message: "\(key.address) no longer suppressed\(key.scope.isEmpty ? "" : " for \(key.scope)")")))
            }
            if !removed {
                answer(Self.json(AdminError(404, "\(terminalSafe(key.address)) is not suppressed\(key.scope.isEmpty ? "" : " for \(terminalSafe(key.scope))")")))
            }
        case .importLines(let scope, let reason):
            let (addresses, refused, refusedCount) = SuppressionRequest.importedAddresses(body)
            let last = addresses.count - 1
            let reply = SuppressionReply(message: "\(addresses.count) suppressed, \(refusedCount) lines refused",
                                         added: addresses.count, refusedCount: refusedCount, refused: refused)
            guard last >= 0 else { return answer(Self.json(reply)) }
            for address in addresses {
                store.add(SuppressionEntry(address: address, scope: scope, reason: reason, time: now))
            }
            store.whenSynced { failure in
                if let failure { return answer(Self.json(AdminError(500, "suppression.list not written: \(failure)"))) }
                log.info("suppression: \(addresses.count) addresses imported by the postmaster\(scope.isEmpty ? "" : " for \(scope)")")
                answer(Self.json(reply))
            }
        }
    }
}

