import BuildInfo
import Foundation
@testable import MailQueue
import SMTPProtocol
import Testing
@testable import Relay

private let id1 = QueueID(microseconds: 1_700_000_000_000_001)

private func entry(id: QueueID = id1, sender: String = "alice@example.org", arrival: Double = 1000,
                   state: String = "deferred", priority: Int = 0,
                   recipients: [(String, RecipientState)] = [("bob@example.net", .deferred)]) -> QueueEntry {
    var e = Envelope(id: id, sender: sender,
                     recipients: recipients.map { Recipient(address: $0.0, state: $0.1, lastReply: $0.1 == .deferred ? "451 4.3.0 later" : nil) },
                     priority: priority, arrival: arrival, attempts: state == "deferred" ? 1 : 0, size: 2048,
                     client: ClientInfo(ip: "192.0.2.7", helo: "mail.example.org"))
    e.held = state == "held"
    return QueueEntry(e, state: state)
}

@Suite struct AdminRouteTests {
    @Test func everyRoute() throws {
        #expect(try AdminRoute.parse(method: "GET", target: "/metrics") == .metrics)
        #expect(try AdminRoute.parse(method: "HEAD", target: "/metrics") == .metrics)
        #expect(try AdminRoute.parse(method: "GET", target: "/queue") == .list(QueueFilter()))
        #expect(try AdminRoute.parse(method: "GET", target: "/queue/") == .list(QueueFilter()))
        #expect(try AdminRoute.parse(method: "GET", target: "/queue/\(id1)") == .show(id1))
        #expect(try AdminRoute.parse(method: "GET", target: "/queue/\(id1.rawValue.lowercased())") == .show(id1))
        #expect(try AdminRoute.parse(method: "GET", target: "/queue/\(id1)/message") == .message(id1))
        for action in QueueAction.allCases {
            #expect(try AdminRoute.parse(method: "POST", target: "/queue/\(id1)/\(action.rawValue)") == .act(action, id1))
        }
        #expect(try AdminRoute.parse(method: "POST", target: "/queue/flush") == .flush(domain: nil))
        #expect(try AdminRoute.parse(method: "POST", target: "/queue/flush?domain=Example.NET.") == .flush(domain: "example.net"))
        #expect(try AdminRoute.parse(method: "GET", target: "/health") == .health)
        #expect(try AdminRoute.parse(method: "HEAD", target: "/health") == .health)
        #expect(try AdminRoute.parse(method: "GET", target: "/ready") == .ready)
    }

    /// POST /queue/ACTION acts on a selection: all=1, or GET /queue's filters; never on a bare POST.
    @Test func selections() throws {
        for action in QueueAction.allCases where action != .flush {
            #expect(try AdminRoute.parse(method: "POST", target: "/queue/\(action.rawValue)?all=1") == .bulk(action, QueueFilter()))
        }
        var held = QueueFilter()
        held.state = "held"
        held.domain = "example.net"
        #expect(try AdminRoute.parse(method: "POST", target: "/queue/delete?state=held&domain=Example.net") == .bulk(.delete, held))
        var sender = QueueFilter()
        sender.sender = "@example.org"
        #expect(try AdminRoute.parse(method: "POST", target: "/queue/flush?sender=%40example.org") == .bulk(.flush, sender))
        #expect(try AdminRoute.parse(method: "POST", target: "/queue/flush?all=1") == .bulk(.flush, QueueFilter()))
    }

    @Test func filtersFromTheQuery() throws {
        guard case .list(let f) = try AdminRoute.parse(
            method: "GET", target: "/queue?domain=Example.net&sender=%40Example.org&state=held&priority=-3&min_age=5m&max_age=2d")
        else { Issue.record("not a list"); return }
        #expect(f.domain == "example.net")
        #expect(f.sender == "@example.org")
        #expect(f.state == "held")
        #expect(f.priority == -3)
        #expect(f.minAge == 300)
        #expect(f.maxAge == 172_800)
    }

    @Test func refusalsSayWhy() {
        let cases: [(String, String, Int)] = [
            ("POST", "/metrics", 405),
            ("GET", "/metrics?x=1", 400),
            ("DELETE", "/queue", 405),
            ("GET", "/queue/\(id1)/delete", 405),  // actions only by POST
            ("POST", "/queue/\(id1)/message", 405),
            ("GET", "/queue/\(id1)/message?x=1", 400),
            ("POST", "/queue/\(id1)/explode", 404),
            ("GET", "/queue/not-an-id", 400),
            ("GET", "/queue/../etc/passwd", 404),
            ("GET", "/", 404),
            ("GET", "/queue?state=stuck", 400),
            ("GET", "/queue?priority=12", 400),
            ("GET", "/queue?min_age=soon", 400),
            ("GET", "/queue?colour=blue", 400),
            ("GET", "/queue?domain=%zz", 400),
            ("POST", "/queue/flush?colour=x", 400),
            ("POST", "/queue/flush?domain=", 400),
            ("POST", "/queue/delete", 400),  // a selection says so: all=1 or filters
            ("POST", "/queue/delete?all=2", 400),
            ("POST", "/queue/release?state=stuck", 400),
            ("GET", "/queue/hold", 405),
            ("GET", "/queue?min_age=5x", 400),  // an unknown unit, as the config refuses it
            ("GET", "/queue?max_age=-5m", 400),
            ("POST", "/health", 405),
            ("GET", "/health?verbose=1", 400),
            ("POST", "/ready", 405),
        ]
        for (method, target, status) in cases {
            do {
                _ = try AdminRoute.parse(method: method, target: target)
                Issue.record("\(method) \(target) was accepted")
            } catch let error as AdminError {
                #expect(error.status == status, "\(method) \(target): \(error.message)")
                #expect(!error.message.isEmpty)
            } catch {
                Issue.record("\(error)")
            }
        }
    }
}

@Suite struct AdminBrowserTests {
    func request(_ headers: [(String, String)]) -> HTTPRequest {
        HTTPRequest(method: "POST", target: "/queue/flush", minorVersion: 1,
                    headers: headers.map { HTTPHeader($0.0, $0.1) }, body: [])
    }

    @Test func webPagesAreRefused() {
        #expect(AdminEndpoint.refusedAsFromABrowser(request([("Host", "127.0.0.1:8025"), ("Origin", "https://evil.example")]),
                                                    loopback: true)?.status == 403)
        #expect(AdminEndpoint.refusedAsFromABrowser(request([("Origin", "null")]), loopback: false)?.status == 403)
        // DNS rebinding: a page's own name pointed at 127.0.0.1.
        #expect(AdminEndpoint.refusedAsFromABrowser(request([("Host", "rebind.evil.example:8025")]), loopback: true)?.status == 403)
        #expect(AdminEndpoint.refusedAsFromABrowser(request([("Host", "mx1.example.org:8025")]), loopback: false) == nil,
                "a public endpoint is scraped by name")
    }

    @Test func toolsAreServed() {
        for host in ["127.0.0.1:8025", "127.0.0.1", "localhost:8025", "LOCALHOST", "[::1]:8025", "[::1]", "192.0.2.1:80"] {
            #expect(AdminEndpoint.refusedAsFromABrowser(request([("Host", host)]), loopback: true) == nil, "\(host)")
        }
        #expect(AdminEndpoint.refusedAsFromABrowser(request([]), loopback: true) == nil, "HTTP/1.0 without Host")
    }
}

@Suite struct QueueViewTests {
    @Test func filterMatches() throws {
        let now = 10_000.0
        let e = entry(arrival: 9_000, recipients: [("bob@Example.NET", .deferred), ("carol@done.example", .delivered)])
        func f(_ q: String) throws -> QueueFilter { try QueueFilter(query: q) }
        #expect(try f("").matches(e, now: now))
        #expect(try f("domain=example.net").matches(e, now: now))
        #expect(try !f("domain=done.example").matches(e, now: now), "delivered recipients do not count")
        #expect(try f("sender=ALICE%40example.org").matches(e, now: now))
        #expect(try f("sender=%40example.org").matches(e, now: now))
        #expect(try !f("sender=%40ample.org").matches(e, now: now), "a domain matches whole, after the @")
        #expect(try !f("sender=bob%40example.org").matches(e, now: now))
        #expect(try f("state=deferred").matches(e, now: now))
        #expect(try !f("state=held").matches(e, now: now))
        #expect(try f("min_age=900&max_age=1100").matches(e, now: now))
        #expect(try !f("min_age=20m").matches(e, now: now))
        #expect(try !f("max_age=10m").matches(e, now: now))
        #expect(try !f("priority=1").matches(e, now: now))
        let bounce = entry(sender: "")
        #expect(try f("sender=%3C%3E").matches(bounce, now: now))
        #expect(try !f("sender=%3C%3E").matches(e, now: now))
    }

    @Test func stateOfAMessage() {
        var e = Envelope(id: id1, sender: "a@b", recipients: [Recipient(address: "c@d")], arrival: 1,
                         client: ClientInfo(ip: "192.0.2.1", helo: "x"))
        #expect(QueueEntry.state(of: e, inFlight: false, held: false) == "queued")
        e.attempts = 2
        #expect(QueueEntry.state(of: e, inFlight: false, held: false) == "deferred")
        #expect(QueueEntry.state(of: e, inFlight: true, held: false) == "active")
        #expect(QueueEntry.state(of: e, inFlight: false, held: true) == "held")
        e.held = true
        #expect(QueueEntry.state(of: e, inFlight: false, held: false) == "held")
    }

    @Test func jsonHasTheDocumentedKeysAndRoundTrips() throws {
        let e = entry()
        let data = try JSONEncoder().encode(e)
        let object = try JSONSerialization.jsonObject(with: data) as! [String: Any]
        #expect(Set(object.keys) == ["id", "sender", "arrival", "size", "priority", "state", "attempts",
                                     "next_attempt", "client_ip", "helo", "recipients"])
        let r = (object["recipients"] as! [[String: Any]])[0]
        #expect(r["address"] as? String == "bob@example.net")
        #expect(r["state"] as? String == "deferred")
        #expect(r["last_reply"] as? String == "451 4.3.0 later")
        #expect(try JSONDecoder().decode(QueueEntry.self, from: data) == e)
        let reply = AdminEndpoint.json(AdminError(404, "gone"))
        #expect(reply.status == 404)
        #expect(String(decoding: reply.body, as: UTF8.self) == "{\"error\":\"gone\"}\n")
    }

    @Test func jsonEscapesWhatATerminalWouldObey() throws {
        // DEL, C1 (0x9B is CSI), U+2028/U+2029 as \uXXXX (upper-case hex, as the JSON log writes them); C0
        // as JSONEncoder writes it; other text as is.
        var e = entry()
        e.helo = "a\u{1B}[2J\u{7F}\u{9B}31m\u{85}\u{2028}\u{2029}é用\u{A0}z"
        let reply = AdminEndpoint.json(e)
        let text = String(decoding: reply.body, as: UTF8.self)
        #expect(text.contains("\"helo\":\"a\\u001b[2J\\u007f\\u009B31m\\u0085\\u2028\\u2029é用\u{A0}z\""), "\(text)")
        #expect(!reply.body.contains(0x7F) && !text.unicodeScalars.contains { (0x80...0x9F).contains($0.value) })
        #expect(try JSONDecoder().decode(QueueEntry.self, from: Data(reply.body)).helo == e.helo)
        // The summary's JSON too (a domain is client text).
        let f = entry(arrival: 0, recipients: [("x@d\u{9B}1m.example", .pending)])
        let summary = QueueShape([f], now: 0).json(deliveryEnabled: true)
        #expect(summary.contains(#"d\u009B1m.example"#) && !summary.unicodeScalars.contains { $0.value == 0x9B })
        #expect(terminalSafeJSON(Array("[\"\u{2028}\u{7F}\"]".utf8)) == Array(#"["\u2028\u007f"]"#.utf8))
        #expect(terminalSafeJSON(Array("{}".utf8)) == Array("{}".utf8))
    }

    @Test func qshapeBuckets() {
        #expect(QueueShape.bucket(ageSeconds: 0) == 0)
        #expect(QueueShape.bucket(ageSeconds: 299) == 0)
        #expect(QueueShape.bucket(ageSeconds: 300) == 1)
        #expect(QueueShape.bucket(ageSeconds: 19 * 60) == 2)
        #expect(QueueShape.bucket(ageSeconds: 1279 * 60) == 8)
        #expect(QueueShape.bucket(ageSeconds: 1280 * 60) == 9)
        #expect(QueueShape.bucket(ageSeconds: 1e9) == 9)
        #expect(QueueShape.bucket(ageSeconds: -5) == 0, "a clock step back counts as new")
    }

    @Test func qshapeCountsMessagesPerDomainAndAge() {
        let now = 100_000.0
        let entries = [
            entry(id: QueueID(microseconds: 1), arrival: now - 60, recipients: [("a@x.example", .pending), ("b@x.example", .deferred)]),
            entry(id: QueueID(microseconds: 2), arrival: now - 3600, recipients: [("a@x.example", .deferred), ("c@y.example", .deferred)]),
            entry(id: QueueID(microseconds: 3), arrival: now - 90_000, recipients: [("c@y.example", .deferred)]),
            entry(id: QueueID(microseconds: 4), arrival: now, recipients: [("d@z.example", .delivered)]),
        ]
        let shape = QueueShape(entries, now: now)
        #expect(shape.total.total == 3, "a message with nothing left to deliver is not counted")
        #expect(shape.total.buckets == [1, 0, 0, 0, 1, 0, 0, 0, 0, 1])
        #expect(shape.rows.map(\.domain) == ["x.example", "y.example"])
        #expect(shape.rows[0].buckets == [1, 0, 0, 0, 1, 0, 0, 0, 0, 0], "one message counts once per domain")
        #expect(shape.rows[1].buckets == [0, 0, 0, 0, 1, 0, 0, 0, 0, 1])
        let lines = shape.text.split(separator: "\n")
        #expect(lines.count == 4)
        #expect(lines[0].split(separator: " ") == ["T", "5", "10", "20", "40", "80", "160", "320", "640", "1280", "1280+"])
        #expect(lines[1].split(separator: " ") == ["TOTAL", "3", "1", "0", "0", "0", "1", "0", "0", "0", "0", "1"])
    }

    @Test func mailqTable() {
        let utc = TimeZone(identifier: "UTC")!
        #expect(MailqFormat.table([], timeZone: utc) == "Mail queue is empty\n")
        var held = entry(id: QueueID(microseconds: 2), sender: "", arrival: 0, state: "held",
                         recipients: [("x@a.example", .pending), ("y@a.example", .delivered)])
        held.size = 100
        let text = MailqFormat.table([entry(), held], timeZone: utc)
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        #expect(lines[1] == "\(id1)      2048 Thu Jan 01 00:16:40  alice@example.org")
        #expect(lines[2].trimmingCharacters(in: .whitespaces) == "(451 4.3.0 later)")
        #expect(lines[3].trimmingCharacters(in: .whitespaces) == "bob@example.net")
        #expect(lines[5].hasPrefix("00000000000002!"))
        #expect(lines[5].hasSuffix("MAILER-DAEMON"))
        #expect(!text.contains("y@a.example"), "delivered recipients are not listed")
        #expect(text.hasSuffix("-- 3 Kbytes in 2 Requests.\n"))
    }

    @Test func mailqEscapesWhatStrangersWrote() {
        // Sender, recipient, HELO and remote reply come from clients and remote servers.
        let utc = TimeZone(identifier: "UTC")!
        var e = entry(sender: "\u{1B}[2Jx@example.org", recipients: [("\u{1B}[31mbob@example.net", .deferred)])
        e.recipients[0].lastReply = "451 4.3.0 \u{1B}]0;owned\u{07} later\u{9B}1m"
        e.helo = "\u{1B}[2J\u{1B}[31mRED"
        let shape = QueueShape([e], now: 2000)
        for text in [MailqFormat.table([e], timeZone: utc), MailqFormat.details(e, now: 2000, timeZone: utc), shape.text] {
            #expect(!text.unicodeScalars.contains { $0.value == 0x1B || $0.value == 0x07 || $0.value == 0x9B }, "\(text)")
        }
        let details = MailqFormat.details(e, now: 2000, timeZone: utc)
        #expect(details.contains("Sender       <\\u{1B}[2Jx@example.org>"), "\(details)")
        #expect(details.contains("helo=\\u{1B}[2J\\u{1B}[31mRED"), "\(details)")
        #expect(details.contains("451 4.3.0 \\u{1B}]0;owned\\u{7} later\\u{9B}1m"), "\(details)")
        #expect(MailqFormat.table([e], timeZone: utc).contains("\\u{1B}[31mbob@example.net"))
    }

    /// The endpoint's JSON (and `tern queue ... --json`) carries what strangers wrote: C1 controls and
    /// invisible characters come as \u escapes, which a parser reads back as they were (issue 14).
    @Test func jsonEscapesInvisibleCharacters() throws {
        var e = entry(recipients: [("bob@example.net", .deferred)])
        e.helo = "a\u{9B}2J\u{202E}gpj.exe\u{200B}é日\u{E0041}\u{A0}"
        let body = AdminEndpoint.json(e).body
        let text = String(decoding: body, as: UTF8.self)
        #expect(text.contains("\"helo\":\"a\\u009B2J\\u202Egpj.exe\\u200Bé日\\uDB40\\uDC41\u{A0}\""), "\(text)")
        #expect(!text.unicodeScalars.contains { (0x80...0x9F).contains($0.value) || isInvisibleFormatting($0) }, "\(text)")
        #expect(try JSONDecoder().decode(QueueEntry.self, from: Data(body)) == e)
        let shape = QueueShape([entry(recipients: [("a@\u{202E}x.example", .deferred)])], now: 100_000)
        let json = shape.json(deliveryEnabled: true)
        #expect(json.contains("\"domain\":\"\\u202Ex.example\""), "\(json)")
    }

    @Test func qshapeAsJSON() throws {
        let now = 100_000.0
        let shape = QueueShape([entry(arrival: now - 600, recipients: [("a@x.example", .deferred)])], now: now)
        let object = try JSONSerialization.jsonObject(with: Data(shape.json(deliveryEnabled: false).utf8)) as! [String: Any]
        #expect(object["bucket_minutes"] as? [Int] == [5, 10, 20, 40, 80, 160, 320, 640, 1280])
        #expect(object["delivery_enabled"] as? Bool == false)
        let total = object["total"] as! [String: Any]
        #expect(total["total"] as? Int == 1 && total["buckets"] as? [Int] == [0, 0, 1, 0, 0, 0, 0, 0, 0, 0])
        let domains = object["domains"] as! [[String: Any]]
        #expect(domains.map { $0["domain"] as? String } == ["x.example"])
    }

    @Test func showSaysDeliveryDisabled() {
        let utc = TimeZone(identifier: "UTC")!
        var e = entry(state: "queued", recipients: [("a@x.example", .pending)])
        #expect(!MailqFormat.details(e, now: 2000, timeZone: utc).contains("disabled"))
        e.deliveryEnabled = false
        let text = MailqFormat.details(e, now: 2000, timeZone: utc)
        #expect(text.contains("State        queued (delivery disabled: [delivery] enabled = false)"), "\(text)")
        #expect(text.contains("Next attempt none: delivery disabled"), "\(text)")
        #expect(!text.contains("due now"))
    }

    /// /ready is 503 with every reason while any check fails; the integration test can make the spool
    /// disk full, not the start-up load slow, so the load is checked here.
    @Test func readiness() throws {
        let ready = AdminEndpoint.readiness(listening: true, loadingSpool: false, spoolFailure: nil)
        #expect(ready.status == "ready" && ready.error == nil)
        let loading = AdminEndpoint.readiness(listening: true, loadingSpool: true, spoolFailure: nil)
        #expect(loading.status == "not ready" && !loading.recoveryDone && loading.spoolWritable)
        #expect(loading.error == "still loading the queue from the spool")
        let all = AdminEndpoint.readiness(listening: false, loadingSpool: true, spoolFailure: "ENOSPC")
        #expect(all.error == "not listening for mail (starting or stopping); still loading the queue from the spool; the spool is not writable: ENOSPC")
        let body = AdminEndpoint.json(loading, status: 503)
        #expect(body.status == 503)
        let object = try JSONSerialization.jsonObject(with: Data(body.body)) as! [String: Any]
        #expect(Set(object.keys) == ["status", "listening", "recovery_done", "spool_writable", "error"])
    }

    @Test func bulkReplyCounts() {
        let results = ["done", "done", "pending", "gone", "failed"].map {
            QueueActionReply(action: .delete, id: "x", result: $0, message: $0)
        }
        let reply = QueueBulkReply(action: .delete, results: results)
        let counts: [Int] = [reply.selected, reply.done, reply.pending, reply.gone, reply.failed]
        #expect(counts == [5, 2, 1, 1, 1])
    }
}

@Suite struct RelayMetricsTests {
    @Test func everyRefusalReasonIsAFamilyMember() {
        let m = RelayMetrics()
        let text = String(decoding: m.exposition(), as: UTF8.self)
        for reason in Refusal.Reason.allCases {
            #expect(text.contains("tern_commands_refused_total{reason=\"\(reason.rawValue)\"} 0"), "\(reason)")
        }
    }

    /// Sample lines of the exposition as name{labels} → value.
    private func samples(_ m: RelayMetrics) -> [String: Double] {
        var out: [String: Double] = [:]
        for line in String(decoding: m.exposition(), as: UTF8.self).split(separator: "\n") where !line.hasPrefix("#") {
            let parts = line.split(separator: " ")
            out[String(parts[0])] = Double(parts[1])
        }
        return out
    }

    @Test func countsWhatHappened() {
        let m = RelayMetrics()
        m.sessionOpened()
        m.sessionOpened()
        m.sessionClosed()
        m.messageReceived(recipients: 3, bytes: 1000)
        m.commandRefused(.relayDenied)
        m.commandRefused(.relayDenied)
        m.commandRefused(.tooManyRecipients)
        m.commandRefused(.other)
        m.commandRefused(.tooManyErrors)
        m.connectionRefused(.tooManyConnections)
        m.dnsLookup(.mx, failed: false)
        m.dnsLookup(.mx, failed: true)
        m.dnsLookup(.address, failed: false)
        m.recipientDelivered(delay: 0.3)
        m.recipientDeferred()
        m.recipientBounced()
        m.bytesDelivered(1000)
        m.messageLeftQueue(delivered: true, bounced: false, deleted: false, residence: 2)
        m.tlsSessionInbound()
        var q = RelayMetrics.QueueCounts()
        q.add(state: "deferred", priority: 0)
        q.add(state: "held", priority: 5)
        q.add(state: "held", priority: 12)  // clamped to 9
        m.updateQueueGauges(q)
        let s = samples(m)
        #expect(s["tern_sessions_total"] == 2)
        #expect(s["tern_sessions_open"] == 1)
        #expect(s["tern_messages_received_total"] == 1)
        #expect(s["tern_recipients_received_total"] == 3)
        #expect(s["tern_message_bytes_in_total"] == 1000)
        #expect(s["tern_commands_refused_total{reason=\"relay_denied\"}"] == 2)
        #expect(s["tern_commands_refused_total{reason=\"too_many_recipients\"}"] == 1)
        #expect(s["tern_commands_refused_total{reason=\"other\"}"] == 1)
        #expect(s["tern_commands_refused_total{reason=\"too_many_errors\"}"] == 1)
        #expect(s["tern_commands_refused_total{reason=\"syntax_error\"}"] == 0, "every reason shows from the start")
        #expect(s["tern_connections_refused_total{reason=\"too_many_connections\"}"] == 1)
        #expect(s["tern_dns_lookups_total{kind=\"mx\"}"] == 2)
        #expect(s["tern_dns_failures_total{kind=\"mx\"}"] == 1)
        #expect(s["tern_dns_lookups_total{kind=\"address\"}"] == 1)
        #expect(s["tern_dns_failures_total{kind=\"address\"}"] == 0)
        #expect(s["tern_recipients_delivered_total"] == 1)
        #expect(s["tern_recipients_deferred_total"] == 1)
        #expect(s["tern_recipients_bounced_total"] == 1)
        #expect(s["tern_messages_delivered_total"] == 1)
        #expect(s["tern_message_bytes_out_total"] == 1000)
        #expect(s["tern_delivery_delay_seconds_count"] == 1)
        #expect(s["tern_delivery_delay_seconds_bucket{le=\"0.25\"}"] == 0)
        #expect(s["tern_delivery_delay_seconds_bucket{le=\"0.5\"}"] == 1)
        #expect(s["tern_queue_residence_seconds_count"] == 1)
        #expect(s["tern_tls_sessions_total{direction=\"in\"}"] == 1)
        #expect(s["tern_tls_sessions_total{direction=\"out\"}"] == 0)
        #expect(s["tern_queue_messages{state=\"held\"}"] == 2)
        #expect(s["tern_queue_messages{state=\"deferred\"}"] == 1)
        #expect(s["tern_queue_messages{state=\"active\"}"] == 0)
        #expect(s["tern_queue_messages_by_priority{priority=\"0\"}"] == 1)
        #expect(s["tern_queue_messages_by_priority{priority=\"9\"}"] == 1)
        #expect(s["tern_queue_messages_by_priority{priority=\"1\"}"] == nil, "a level shows once it was seen")
    }

    /// Family name → (HELP text, TYPE), asserting HELP comes first and once.
    static func families(_ exposition: [UInt8]) -> [String: (help: String, type: String)] {
        var help: [String: String] = [:]
        var out: [String: (help: String, type: String)] = [:]
        for line in String(decoding: exposition, as: UTF8.self).split(separator: "\n") where line.hasPrefix("# ") {
            let parts = line.split(separator: " ", maxSplits: 3).map(String.init)
            if parts[1] == "HELP" {
                #expect(help[parts[2]] == nil && out[parts[2]] == nil, "HELP of \(parts[2]) twice or after TYPE")
                help[parts[2]] = parts.count > 3 ? parts[3] : ""
            } else if parts[1] == "TYPE" {
                out[parts[2]] = (help[parts[2]] ?? "", parts[3])
            }
        }
        return out
    }

    @Test func everyFamilyHasHelpAndTheBuildIsOne() {
        let m = RelayMetrics()
        var q = RelayMetrics.QueueCounts()
        q.add(state: "queued", priority: 0)
        m.updateQueueGauges(q)
        // The shaping families appear with their first rule × source.
        m.updateShapingMetrics([ShapingMetricKey(rule: "default", source: ""): ShapingCounters()])
        // The bounce-class family appears with its first classified failure.
        m.bounceClassified("InvalidRecipient", status: "bounced")
        // The webhook families appear with their first event.
        m.webhookEvents("crm", outcome: "sent", count: 2)
        m.webhookFailure("crm")
        m.webhookOutbox("crm", bytes: 10)
        // The cluster families appear with [cluster].
        m.clusterRedisUp(true)
        m.clusterNodes(3)
        m.clusterRedisFailure()
        m.clusterChangesApplied("suppression")
        m.clusterRequest()
        m.clusterConnectionsShed(2)
        let f = Self.families(m.exposition())
        #expect(f.count == RelayMetrics.help.count + 1, "every family in the table, and tern_build_info")
        for (name, family) in f { #expect(!family.help.isEmpty, "\(name) has no HELP") }
        #expect(f["tern_build_info"]?.type == "gauge")
        let s = samples(m)
        #expect(s["tern_build_info{version=\"\(BuildInfo.version)\",commit=\"\(BuildInfo.commit)\",swift=\"\(BuildInfo.swiftVersion)\"}"] == 1)
        // Every name in the table is a family that exists: no stale help text.
        for name in RelayMetrics.help.keys { #expect(f[name] != nil, "\(name) is not a family") }
    }

    @Test func sinkFamiliesHaveHelp() {
        let f = Self.families(SinkMetrics().exposition())
        #expect(f.count == SinkMetrics.help.count + 1)
        for (name, family) in f { #expect(!family.help.isEmpty, "\(name) has no HELP") }
        #expect(f["tern_build_info"] != nil)
    }
}

@Suite struct AdminClientTests {
    @Test func parsesResponsesWholeOrByContentLength() throws {
        let text = "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 16\r\n\r\n{\"error\":\"gone\"}"
        let bytes = Array(text.utf8)
        for cut in 0..<bytes.count {
            #expect(try AdminClient.parse(Array(bytes[0..<cut]), complete: false) == nil, "cut at \(cut)")
        }
        let r = try #require(try AdminClient.parse(bytes, complete: false))
        #expect(r.status == 404)
        #expect(r.text == "{\"error\":\"gone\"}")
        // Without Content-Length the body runs to EOF.
        let eof = try AdminClient.parse(Array("HTTP/1.0 200 OK\r\n\r\nabc".utf8), complete: true)
        #expect(eof == AdminResponse(status: 200, body: Array("abc".utf8)))
        #expect(throws: AdminClientError.self) { try AdminClient.parse(Array("SMTP 220 hi\r\n\r\n".utf8), complete: true) }
        #expect(throws: AdminClientError.self) { try AdminClient.parse(Array("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nab".utf8), complete: true) }
    }

    @Test func wildcardListenIsReachedOnLoopback() throws {
        #expect(try AdminClient.address(forListen: "0.0.0.0:8025").description == "127.0.0.1:8025")
        #expect(try AdminClient.address(forListen: "[::]:8025").description == "[::1]:8025")
        #expect(try AdminClient.address(forListen: "127.0.0.2:9").description == "127.0.0.2:9")
    }
}

@Suite struct AdminConfigTests {
    @Test func defaultAndOverrides() throws {
        #expect(try TernConfig.parse("hostname = \"relay.test\"\n").admin.listen == "127.0.0.1:8025")
        #expect(try TernConfig.parse("hostname = \"relay.test\"\n[admin]\nlisten = \"[::1]:9000\"").admin.listen == "[::1]:9000")
        #expect(try TernConfig.parse("hostname = \"relay.test\"\n[admin]\nlisten = \"\"").admin.listen == "")
        #expect(try TernConfig.parse("hostname = \"relay.test\"\n").admin.isLoopback)
        #expect(try !TernConfig.parse("hostname = \"relay.test\"\n[admin]\nlisten = \"0.0.0.0:8025\"").admin.isLoopback)
    }

    @Test func unixSocketPath() throws {
        let config = try TernConfig.parse("hostname = \"relay.test\"\n[admin]\nlisten = \"/run/tern/admin.sock\"")
        #expect(config.admin.unixPath == "/run/tern/admin.sock")
        #expect(config.admin.isLoopback)
        #expect(try TernConfig.parse("hostname = \"relay.test\"\n").admin.unixPath == nil)
        #expect(try TernConfig.parse(config.tomlText) == config)
        #expect(try AdminClient.forListen("/run/tern/admin.sock").unixPath == "/run/tern/admin.sock")
        #expect(try AdminClient.forListen("127.0.0.1:8025").unixPath == nil)
    }

    @Test func badValuesNameTheKey() {
        for bad in ["listen = \"8025\"", "listen = 8025", "listen = \"localhost:8025\"", "port = 1",
                    "listen = \"run/admin.sock\"", "listen = \"/" + String(repeating: "x", count: 120) + "\""] {
            do {
                _ = try TernConfig.parse("hostname = \"relay.test\"\n[admin]\n" + bad)
                Issue.record("accepted \(bad)")
            } catch let error as ConfigError {
                #expect(error.description.contains("admin."), "\(error)")
            } catch {
                Issue.record("\(error)")
            }
        }
    }

    @Test func renderedAndReloaded() throws {
        var config = try TernConfig.parse("hostname = \"relay.test\"\n[admin]\nlisten = \"127.0.0.3:18025\"")
        #expect(config.tomlText.contains("\n[admin]\nlisten = \"127.0.0.3:18025\"\n"))
        #expect(try TernConfig.parse(config.tomlText) == config)
        config.admin.listen = ""
        #expect(try TernConfig.parse(config.tomlText) == config)
    }
}
