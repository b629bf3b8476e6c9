import Foundation
import Glibc
import Logging
import Testing
import UVRuntime
@testable import Relay

@Suite struct WebhookTests {
    @Test func aBatchIsWholeLinesAsAJSONArray() {
        let lines = Array("{\"a\":1}\n{\"b\":2}\n{\"c\":3}\n{\"d\"".utf8)
        let two = OutboxBatch.make(lines[...], maxEvents: 2)
        #expect(String(decoding: two.body, as: UTF8.self) == "[{\"a\":1},{\"b\":2}]")
        #expect(two.events == 2 && two.bytes == 16)
        let all = OutboxBatch.make(lines[...], maxEvents: 100)
        #expect(String(decoding: all.body, as: UTF8.self) == "[{\"a\":1},{\"b\":2},{\"c\":3}]")
        #expect(all.events == 3 && all.bytes == 24, "the line cut short is not in it")
    }

    func tempDirectory() -> String {
        var template = Array("/tmp/tern-outbox-XXXXXX".utf8CString)
        return template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)) }
    }

    func write(_ path: String, _ text: String) {
        _ = FileManager.default.createFile(atPath: path, contents: Data(text.utf8))
    }

    @Test func loadingDropsSentFilesAndATornLineAndCountsFromTheCursor() throws {
        let dir = tempDirectory()
        write(dir + "/00000001.jsonl", "{\"old\":1}\n")
        write(dir + "/00000002.jsonl", "{\"x\":1}\n{\"x\":2}\n{\"x\":3}\n")
        write(dir + "/00000003.jsonl", "{\"y\":1}\n{\"y\":2")
        write(dir + "/cursor", "2 8\n")
        guard case .success(let state) = OutboxState.load(dir, segmentSize: 4096) else {
            Issue.record("not loaded")
            return
        }
        close(state.fd)
        #expect(state.segments.map(\.number) == [2, 3])
        #expect(state.segments.map(\.lines) == [3, 1])
        #expect(state.cursor.segment == 2 && state.cursor.offset == 8 && state.cursor.linesBefore == 1)
        #expect(!FileManager.default.fileExists(atPath: dir + "/00000001.jsonl"), "wholly sent: removed")
        // The torn line is zeroed, and the file appended to is filled with zeros to a file's size.
        let third = try Data(contentsOf: URL(fileURLWithPath: dir + "/00000003.jsonl"))
        #expect(third.count == 4096 && Array(third.prefix(8)) == Array("{\"y\":1}\n".utf8) && third.dropFirst(8).allSatisfy { $0 == 0 })
        // Loaded again: the same events, not the zeros.
        guard case .success(let again) = OutboxState.load(dir, segmentSize: 4096) else { return }
        close(again.fd)
        #expect(again.segments.map(\.size) == [24, 8] && again.segments.map(\.lines) == [3, 1])
        #expect(OutboxState.parseCursor("3 0\n")! == (3, 0))
        #expect(OutboxState.parseCursor("x 1") == nil && OutboxState.parseCursor("0 5") == nil)
    }

    @Test func configReadsWebhooksAndNamesBadKeys() throws {
        let c = try TernConfig.parse("""
            [[events.webhook]]
            url = "http://127.0.0.1:9000/hook"
            events = ["delivery", "bounce"]
            batch_size = 10
            interval = "250ms"
            headers = { Authorization = "Bearer t" }
            [[events.webhook]]
            url = "https://crm.example/e"
            name = "crm"
            """)
        #expect(c.events.webhooks.count == 2)
        #expect(c.events.webhooks[0].events == ["delivery", "bounce"] && c.events.webhooks[0].batchSize == 10)
        #expect(c.events.webhooks[0].interval == 0.25 && c.events.webhooks[0].headers == ["Authorization": "Bearer t"])
        #expect(c.events.webhooks[0].name.hasPrefix("webhook-") && c.events.webhooks[1].name == "crm")
        #expect(c.events.webhooks[1].events == EventsConfig.types)
        func key(_ text: String) -> String? {
            do {
                _ = try TernConfig.parse(text)
                return nil
            } catch let error as ConfigError {
                return error.key
            } catch {
                return "?"
            }
        }
        #expect(key("[[events.webhook]]\nbatch_size = 5") == "events.webhook[0].url")
        #expect(key("[[events.webhook]]\nurl = \"ftp://x/\"") == "events.webhook[0].url")
        #expect(key("[[events.webhook]]\nurl = \"http://x/\"\nevents = [\"sent\"]") == "events.webhook[0].events")
        #expect(key("[[events.webhook]]\nurl = \"http://x/\"\nbatch_size = 0") == "events.webhook[0].batch_size")
        #expect(key("[[events.webhook]]\nurl = \"http://x/\"\nmax_outbox_size = 100") == "events.webhook[0].max_outbox_size")
        #expect(key("[[events.webhook]]\nurl = \"http://x/\"\nheaders = { \"A\" = \"b\\nc\" }") == "events.webhook[0].headers")
        #expect(key("[[events.webhook]]\nurl = \"http://x/\"\nname = \"a\"\n[[events.webhook]]\nurl = \"http://y/\"\nname = \"a\"")
                    == "events.webhook[1].name")
        #expect(key("[http]\nlisten = \"127.0.0.1:8080\"") == "http.tokens_file")
    }

    /// The client on the loop against the relay's own HTTP server: the body arrives, the status comes
    /// back; a closed port is a failure.
    @Test func httpClientPostsAndReportsFailures() throws {
        let loop = try EventLoop()
        var received: [[UInt8]] = []
        let server = try HTTPServer(loop: loop, address: try SocketAddress(ip: "127.0.0.1", port: 0)) { request in
            received.append(request.body)
            return HTTPResponse.text(request.header("X-Want").flatMap(Int.init) ?? 200, "S", "answer")
        }
        try server.start()
        let client = HTTPClient(loop: loop)
        let url = "http://127.0.0.1:\(server.localAddress.port)/hook"
        var results: [Result<HTTPClient.Response, HTTPClient.Failure>] = []
        client.post(url: url, body: Array("[1]".utf8), headers: ["Content-Type: application/json"], timeoutMilliseconds: 5000) {
            results.append($0)
        }
        client.post(url: url, body: Array(repeating: 65, count: 100_000), headers: ["X-Want: 503"], timeoutMilliseconds: 5000) {
            results.append($0)
        }
        loop.run(until: { results.count == 2 })
        #expect(received.count == 2 && received.first == Array("[1]".utf8) && received.last?.count == 100_000)
        let statuses = results.compactMap { try? $0.get().status }.sorted()
        #expect(statuses == [200, 503])
        #expect(results.compactMap { try? $0.get().body }.contains(Array("answer".utf8)))
        server.close()
        var refused: Result<HTTPClient.Response, HTTPClient.Failure>?
        client.post(url: url, body: [], headers: [], timeoutMilliseconds: 2000) { refused = $0 }
        loop.run(until: { refused != nil })
        if case .success = refused { Issue.record("a closed port answered") }
        #expect(refused != nil)
        client.close()
        loop.run(until: { true })
    }

    /// Events emitted reach the server as batches, the cursor moves past them, and a new Webhook on
    /// the same outbox sends nothing again.
    @Test func eventsAreSentOnceAndTheCursorKeepsThem() throws {
        let loop = try EventLoop()
        var batches: [[Any]] = []
        var status = 503
        let server = try HTTPServer(loop: loop, address: try SocketAddress(ip: "127.0.0.1", port: 0)) { request in
            if status == 200, let a = try? JSONSerialization.jsonObject(with: Data(request.body)) as? [Any] { batches.append(a) }
            return HTTPResponse.text(status, "S", "")
        }
        try server.start()
        let spool = tempDirectory()
        var config = WebhookConfig(url: "http://127.0.0.1:\(server.localAddress.port)/", name: "t")
        config.batchSize = 3
        config.interval = 0.05
        let client = HTTPClient(loop: loop)
        let metrics = RelayMetrics()
        let log = Logger(label: "t") { _ in SwiftLogNoOpLogHandler() }
        let hook = Webhook(config: config, spoolPath: spool, loop: loop, client: client, log: log, metrics: metrics)
        try hook.load()
        hook.start()
        var synced = false
        for i in 0..<7 { hook.emit(Array("{\"n\":\(i)}\n".utf8)) }
        hook.whenSynced { synced = true }
        loop.run(until: { synced })
        #expect(hook.unsent == 7)
        // Refused first (503): kept; then accepted.
        loop.run(until: { false }, turns: 20)
        status = 200
        loop.run(until: { batches.reduce(0) { $0 + $1.count } == 7 && hook.unsent == 0 }, turns: 1000)
        let numbers = batches.flatMap { $0 }.compactMap { ($0 as? [String: Any])?["n"] as? Int }
        #expect(numbers == Array(0..<7))
        #expect(batches.allSatisfy { $0.count <= 3 })
        var closed = false
        hook.close { closed = true }
        loop.run(until: { closed })
        let again = Webhook(config: config, spoolPath: spool, loop: loop, client: client, log: log, metrics: metrics)
        try again.load()
        #expect(again.unsent == 0, "the cursor was written past what was acknowledged")
        again.close()
        client.close()
        server.close()
        loop.run(until: { true })
    }
}
