import Testing
@testable import Relay

/// `tern suppress` through the admin endpoint: the routes, their parameters and what they refuse.
@Suite struct SuppressionAdminTests {
    func route(_ method: String, _ target: String) throws -> AdminRoute { try AdminRoute.parse(method: method, target: target) }

    @Test func routes() throws {
        #expect(try route("GET", "/suppression") == .suppression(.list(offset: 0, limit: 1000)))
        #expect(try route("GET", "/suppression?offset=20000&limit=10000") == .suppression(.list(offset: 20000, limit: 10000)))
        #expect(try route("GET", "/suppression?address=Bob%40Example.NET&scope=News.Example")
                == .suppression(.show(SuppressionKey(address: "bob@example.net", scope: "news.example"))))
        #expect(try route("POST", "/suppression/add?address=%40closed.example&reason=asked+to+stop")
                == .suppression(.add(SuppressionKey(address: "@closed.example", scope: ""), reason: "asked to stop")))
        #expect(try route("POST", "/suppression/add?address=a%40x.test")
                == .suppression(.add(SuppressionKey(address: "a@x.test", scope: ""), reason: SuppressionRequest.defaultReason)))
        #expect(try route("POST", "/suppression/remove?address=a%40x.test&scope=s.test")
                == .suppression(.remove(SuppressionKey(address: "a@x.test", scope: "s.test"))))
        #expect(try route("POST", "/suppression/import?scope=s.test") == .suppression(.importLines(scope: "s.test", reason: SuppressionRequest.defaultReason)))
    }

    @Test(arguments: [
        ("POST", "/suppression", 405, "use GET"),
        ("GET", "/suppression/add?address=a%40x.test", 405, "use POST"),
        ("POST", "/suppression/add", 400, "address: required"),
        ("POST", "/suppression/add?address=no+at+sign", 400, "is not an address"),
        ("POST", "/suppression/add?address=a%40", 400, "is not an address"),
        ("POST", "/suppression/add?address=a%40x.test%0D%0ARCPT", 400, "is not an address"),
        ("POST", "/suppression/add?address=a%40x.test&scope=not+a+domain", 400, "scope:"),
        ("POST", "/suppression/add?address=a%40x.test&reason=a%0Ab", 400, "reason:"),
        ("POST", "/suppression/add?address=a%40x.test&colour=red", 400, "unknown parameter"),
        ("GET", "/suppression?limit=0", 400, "limit:"),
        ("GET", "/suppression?limit=100001", 400, "limit:"),
        ("GET", "/suppression?offset=-1", 400, "offset:"),
        ("POST", "/suppression/import?address=a%40x.test", 400, "body's lines"),
        ("POST", "/suppression/purge", 404, "no action"),
    ])
    func refusals(method: String, target: String, status: Int, fragment: String) {
        do {
            let r = try route(method, target)
            Issue.record("\(method) \(target) parsed as \(r)")
        } catch let error as AdminError {
            #expect(error.status == status, "\(method) \(target): \(error.message)")
            #expect(error.message.contains(fragment), "\(method) \(target): \(error.message)")
        } catch {
            Issue.record("\(error)")
        }
    }

    @Test func importLines() {
        let body = Array("# a comment\r\nA@X.test\r\n\n@Closed.test\nnot an address\n  spaced@x.test  \nlast@x.test".utf8)
        let (addresses, refused, count) = SuppressionRequest.importedAddresses(body)
        #expect(addresses == ["a@x.test", "@closed.test", "spaced@x.test", "last@x.test"])
        #expect(count == 1 && refused.map(\.line) == [5])
        #expect(refused.first?.error.contains("is not an address") == true)
    }
}
