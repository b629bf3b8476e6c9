// InjectionEndpoint.swift: POST /api/inject on the [http] listener (issue 19). A request with a valid
// bearer token gets its messages queued exactly as over SMTP: the same MessageWriter (DKIM signing
// for the token's user, the journal and its fsync), the same priority rules, the suppression list
// (a suppressed recipient is refused in the answer, the others are queued), and delivery shapes them
// as any other. The answer, only once every message is on disk:
//
//   200 {"queue_ids": ["…"], "rejected": [{"email": "…", "reply": "550 5.1.1 …"}]}
//   400 {"error": "recipients[1].email: not a valid address", "field": "recipients[1].email"}
//   401 without a valid token (logged), 404/405 elsewhere, 413 for a body over max_body_size, a
//   message over server.max_message_size or a request that would make over 128 MiB of mail, 503
//   (Retry-After) while 256 MiB of injected mail is being written, 500 when the spool or DKIM failed.
//
// A request that fails queues nothing: its messages are committed together and enqueued only when
// all of them are on disk; should one write fail, those already written are taken out again.

import Foundation
import Logging
import MailQueue
import SMTPProtocol
import UVRuntime

final class InjectionEndpoint {
    unowned let server: SMTPServer
    let http: HTTPServer
    /// Boundaries of built messages differ from request to request.
    private var boundarySeed: UInt64

    init(server: SMTPServer, address: SocketAddress) throws {
        self.server = server
        let c = server.config.http
        var handle: HTTPServer.AsyncHandler = { _, answer in answer(Self.error(503, "starting")) }
        http = try HTTPServer(loop: server.loop, address: address, maxConnections: c.maxConnections,
                              requestTimeoutMs: UInt64(c.requestTimeout * 1000),
                              asyncHandler: { request, answer in handle(request, answer) })
        http.maxBodyBytes = c.maxBodySize
        http.errorResponse = { status, _, message in Self.error(status, message) }
        boundarySeed = server.nowMicroseconds()
        handle = { [unowned self] request, answer in self.handle(request, answer) }
    }

    var localAddress: SocketAddress { http.localAddress }

    func start() throws { try http.start() }

    func close() { http.close() }

    func handle(_ request: HTTPRequest, _ answer: @escaping (HTTPResponse) -> Void) {
        let path = request.path
        guard path == "/api/inject" || path == "/api/inject/v1" else {
            return answer(Self.error(404, "no such resource: POST /api/inject"))
        }
        guard request.method == "POST" else {
            var response = Self.error(405, "use POST")
            response.headers.append(HTTPHeader("Allow", "POST"))
            return answer(response)
        }
        let client = request.client ?? "unknown"
        guard let user = authorized(request) else {
            server.log.warning("http: injection refused from \(client): no valid bearer token (401)",
                               metadata: ["client": "\(client)"])
            var response = Self.error(401, "a valid \"Authorization: Bearer TOKEN\" is required")
            response.headers.append(HTTPHeader("WWW-Authenticate", "Bearer"))
            return answer(response)
        }
        let parsed: InjectionRequest
        do {
            parsed = try InjectionRequest.parse(request.body)
        } catch let error as InjectionError {
            return answer(HTTPResponse.json(["error": error.description, "field": error.field], status: 400))
        } catch {
            return answer(Self.error(400, "\(error)"))
        }
        // Bounded: what one request may make, and what all of them hold in memory until on disk.
        let estimate = parsed.estimatedBytes
        guard estimate <= Self.maxMailPerRequest else {
            return answer(Self.error(413, "the request would make about \(estimate) bytes of mail, over \(Self.maxMailPerRequest): send fewer recipients per request"))
        }
        guard mailInFlight + estimate <= Self.maxMailInFlight else {
            var response = Self.error(503, "busy: \(mailInFlight) bytes of injected mail are being written; try again")
            response.headers.append(HTTPHeader("Retry-After", "1"))
            return answer(response)
        }
        mailInFlight += estimate
        requestsInFlight += 1
        inject(parsed, user: user, client: client) { [self] response in
            mailInFlight -= estimate
            requestsInFlight -= 1
            answer(response)
            if requestsInFlight == 0 {
                let waiters = idleWaiters
                idleWaiters = []
                for w in waiters { w() }
            }
        }
    }

    /// Requests being written to the spool: a stop waits for them (their messages are queued, and
    /// their reception events written, before the process exits).
    private(set) var requestsInFlight = 0
    private var idleWaiters: [() -> Void] = []

    func whenIdle(_ done: @escaping () -> Void) {
        if requestsInFlight == 0 { return done() }
        idleWaiters.append(done)
    }

    /// Mail one request may make (its messages together), and all requests being written at once.
    static let maxMailPerRequest = 128 << 20
    static let maxMailInFlight = 256 << 20
    private var mailInFlight = 0

    /// The token's name, or nil.
    private func authorized(_ request: HTTPRequest) -> String? {
        guard let value = request.header("Authorization"), let tokens = server.tokens else { return nil }
        let parts = value.split(separator: " ", maxSplits: 1)
        guard parts.count == 2, parts[0].lowercased() == "bearer" else { return nil }
        return tokens.name(of: parts[1].trimmingCharacters(in: .whitespaces))
    }

    private func inject(_ request: InjectionRequest, user: String, client: String,
                        _ answer: @escaping (HTTPResponse) -> Void) {
        let nowMicros = server.nowMicroseconds()
        let now = Int(nowMicros / 1_000_000)
        let hostname = server.config.hostname
        let sender = try? parsePath("<" + request.envelopeSender + ">", allowNull: false)
        // Suppressed recipients are refused; the others go on.
        var rejected: [[String: String]] = []
        var allowed = [Bool](repeating: true, count: request.recipients.count)
        if let sender {
            for (i, r) in request.recipients.enumerated() {
                guard let reply = server.suppression.refusal(of: r.email, sender: sender) else { continue }
                allowed[i] = false
                let text = "\(reply.code) \(reply.enhanced ?? "") \(reply.lines.joined(separator: " "))"
                rejected.append(["email": r.email, "reply": text])
                server.log.info("NOQUEUE: reject: HTTP from \(client): \(text); from=\(angleQuoted(request.envelopeSender)) to=\(angleQuoted(r.email))")
                if let events = server.events {
                    var line = EventLine(type: "rejection", time: server.loop.clock.wallSeconds())
                    line.add("sender", request.envelopeSender)
                    line.add("recipient", r.email)
                    line.add("command", "HTTP")
                    line.add("reply", text)
                    line.add("dsn", reply.enhanced)
                    line.add("reason", "suppressed")
                    line.add("client", client)
                    line.add("user", user)
                    events.emit(line)
                }
            }
        }
        var idCounter = 0
        boundarySeed = boundarySeed &+ 0x9E37_79B9_7F4A_7C15
        let messages = request.messages(date: rfc5322Date(now), newMessageID: {
            idCounter += 1
            return "<\(nowMicros).\(idCounter).\(self.boundarySeed % 1_000_000)@\(hostname)>"
        }, boundarySeed: boundarySeed)

        var writers: [MessageWriter] = []
        for m in messages {
            let indexes = m.recipients.filter { allowed[$0] }
            guard !indexes.isEmpty else { continue }
            let recipients = indexes.map { request.recipients[$0].email }
            let id = server.nextQueueID()
            let received = ReceivedHeader(helo: "api", reverseName: nil, clientIP: client, hostname: hostname,
                                          protocolName: "HTTP", queueID: id.rawValue, recipients: recipients,
                                          time: now).bytes
            let size = received.count + m.bytes.count
            guard size <= server.config.server.maxMessageSize else {
                for w in writers { w.abort() }  // a large one may have begun its file
                return answer(Self.error(413, "content: the message is \(size) bytes, over server.max_message_size (\(server.config.server.maxMessageSize))"))
            }
            let eightBit = m.bytes.contains { $0 >= 0x80 }
            let utf8 = (recipients + [request.envelopeSender]).contains { $0.utf8.contains { $0 >= 0x80 } }
            let arrival = Double(nowMicros) / 1_000_000
            var envelope = Envelope(
                id: id, sender: request.envelopeSender,
                recipients: recipients.map { Recipient(address: $0) },
                priority: server.priority(sender: request.envelopeSender, recipients: recipients),
                arrival: arrival, nextAttempt: arrival, bodyType: eightBit ? "8BITMIME" : nil, smtputf8: utf8,
                client: MailQueue.ClientInfo(ip: client, helo: "api", reverseName: nil, protocolName: "HTTP",
                                             authenticatedUser: user))
            envelope.messageID = m.messageID
            // Mail injected with a token is the relay's own users' mail: signed as AUTH mail is.
            let dkim = server.dkimKeys?.request(authenticatedUser: user, recipients: recipients)
            let writer = MessageWriter(loop: server.loop, spool: server.spool, journal: server.journal, id: id,
                                       envelope: envelope, firstBytes: received, dkim: dkim)
            writer.append(m.bytes)
            writers.append(writer)
        }
        guard !writers.isEmpty else {
            return answer(HTTPResponse.json(Answer(queueIDs: [], rejected: rejected)))
        }
        commitAll(writers) { [self] failure in
            if let failure {
                server.log.error("http: injection from \(client) failed, nothing queued: \(failure)")
                return answer(Self.error(500, "\(failure); nothing was queued"))
            }
            for w in writers {
                let env = w.envelope
                server.metrics.messagesAccepted += 1
                server.relayMetrics.messageReceived(recipients: env.recipients.count, bytes: env.size)
                server.log.info("\(w.id): client=\(client), user=\(user), protocol=HTTP, from=\(angleQuoted(env.sender)), nrcpt=\(env.recipients.count), size=\(env.size)",
                                metadata: ["qid": "\(w.id)"])
                server.receptionEvents(env)
                server.delivery?.enqueue(env, due: env.arrival, message: w.committedBytes, wireReady: false)
            }
            let response = HTTPResponse.json(Answer(queueIDs: writers.map(\.id.rawValue), rejected: rejected))
            // 200 once the reception events are in the webhooks' outboxes on disk, as the messages are.
            guard let events = server.events else { return answer(response) }
            events.whenSynced { answer(response) }
        }
    }

    /// Commits every writer; `done` gets nil once all are on disk, or the first failure after those
    /// that were written are taken out of the spool again.
    private func commitAll(_ writers: [MessageWriter], _ done: @escaping (String?) -> Void) {
        var left = writers.count
        var failure: String?
        var committed: [QueueID] = []
        for w in writers {
            w.commit { [self] id, error in
                if let id { committed.append(id) } else if failure == nil { failure = error.map { "\($0)" } ?? "spool write failed" }
                left -= 1
                guard left == 0 else { return }
                guard failure != nil else { return done(nil) }
                let spool = server.spool
                let ids = committed
                server.loop.queueWork({ _ = spool.remove(ids) }, done: { done(failure) })
            }
        }
    }

    struct Answer: Encodable {
        var queueIDs: [String]
        var rejected: [[String: String]]
        enum CodingKeys: String, CodingKey {
            case queueIDs = "queue_ids"
            case rejected
        }
    }

    static func error(_ status: Int, _ message: String) -> HTTPResponse {
        HTTPResponse.json(["error": message], status: status)
    }
}
