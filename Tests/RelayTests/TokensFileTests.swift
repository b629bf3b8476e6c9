import Testing
@testable import Relay

/// The injection API's tokens file: "NAME:sha256$HEX" lines, tokens compared by hash.
@Suite struct TokensFileTests {
    @Test func addParseAndRecognise() throws {
        let token = TokensFile.newToken()
        #expect(token.hasPrefix("tern_") && token.utf8.count == 69)
        #expect(TokensFile.newToken() != token)
        let file = TokensFile().adding(name: "app-1", token: token).adding(name: "other", token: TokensFile.newToken())
        let text = file.text
        #expect(text.hasPrefix("app-1:sha256$") && !text.contains(token))
        let parsed = try TokensFile.parse("# tokens\n\n" + text, source: "t")
        #expect(parsed == file)
        #expect(parsed.name(of: token) == "app-1")
        #expect(parsed.name(of: token + "x") == nil && parsed.name(of: "") == nil)
        // A new token for the same name replaces the old one; removing forgets it.
        let renewed = parsed.adding(name: "app-1", token: "tern_new")
        #expect(renewed.name(of: token) == nil && renewed.name(of: "tern_new") == "app-1" && renewed.entries.count == 2)
        #expect(renewed.removing(name: "app-1").name(of: "tern_new") == nil)
    }

    @Test(arguments: [
        ("app:sha256$abcd\n", 1),
        ("ok:sha256$" + String(repeating: "0", count: 64) + "\nbad name:sha256$" + String(repeating: "0", count: 64) + "\n", 2),
        ("app:md5$" + String(repeating: "0", count: 64) + "\n", 1),
        ("app:sha256$" + String(repeating: "0", count: 64) + "\napp:sha256$" + String(repeating: "1", count: 64) + "\n", 2),
    ])
    func badLinesNameTheirLine(text: String, line: Int) {
        #expect(throws: ConfigError.self) { try TokensFile.parse(text, source: "tokens") }
        do {
            _ = try TokensFile.parse(text, source: "tokens")
        } catch let error as ConfigError {
            #expect(error.line == line, "\(error)")
        } catch {
            Issue.record("\(error)")
        }
    }
}
