import Testing
@testable import Relay

/// `delivery.connection_cache_time`: parsed like the other delivery durations, "0" turns the
/// connection cache off, bad values name the key, and `tern check-config` renders it back.
@Suite struct ConnectionCacheConfigTests {
    @Test func defaultIsTwoSeconds() throws {
        #expect(try TernConfig.parse("hostname = \"a.test\"").delivery.connectionCacheTime == 2)
    }

    @Test(arguments: [("\"0\"", 0.0), ("0", 0), ("\"0s\"", 0), ("\"500ms\"", 0.5), ("\"10s\"", 10), ("3", 3)])
    func values(text: String, seconds: Double) throws {
        let d = try TernConfig.parse("hostname = \"a.test\"\n[delivery]\nconnection_cache_time = \(text)").delivery
        #expect(d.connectionCacheTime == seconds)
    }

    @Test(arguments: [("\"-1s\"", "is not a duration"), ("-2", "must be greater than zero"),
                      ("\"soon\"", "is not a duration"), ("true", "expected a duration")])
    func badValuesNameTheKey(text: String, fragment: String) {
        do {
            let c = try TernConfig.parse("hostname = \"a.test\"\n[delivery]\nconnection_cache_time = \(text)")
            Issue.record("parsed without error: \(c.delivery.connectionCacheTime)")
        } catch let error as ConfigError {
            #expect(error.key == "delivery.connection_cache_time")
            #expect(error.message.contains(fragment), "message: \(error.message)")
            #expect(error.line == 3)
        } catch {
            Issue.record("unexpected error type: \(error)")
        }
    }

    @Test(arguments: [0.0, 0.25, 2, 90])
    func rendersBack(seconds: Double) throws {
        var c = try TernConfig.parse("hostname = \"relay.test\"\n")
        c.delivery.connectionCacheTime = seconds
        #expect(c.tomlText.contains("connection_cache_time = "))
        #expect(try TernConfig.parse(c.tomlText).delivery.connectionCacheTime == seconds)
    }
}
