import Testing
@testable import Blast

@Suite struct AddressPatternTests {
    @Test func literalPatternIsItself() throws {
        let p = try AddressPattern(parsing: "blast@example.test")
        #expect(p.render(message: 5, connection: 2) == "blast@example.test")
        #expect(!p.usesRecipientNumber)
    }

    @Test func placeholdersTakeTheirNumbers() throws {
        let p = try AddressPattern(parsing: "u{n}.c{c}.r{r}@x.test")
        #expect(p.render(message: 17, connection: 3, recipient: 2) == "u17.c3.r2@x.test")
        #expect(p.usesRecipientNumber)
    }

    @Test func moduloCycles() throws {
        let p = try AddressPattern(parsing: "user{n%3}@x.test")
        #expect((1...6).map { p.render(message: $0, connection: 1) }
                == ["user1@x.test", "user2@x.test", "user0@x.test", "user1@x.test", "user2@x.test", "user0@x.test"])
    }

    @Test func emptyIsTheNullSender() throws {
        #expect(try AddressPattern(parsing: "", option: "--from").render(message: 1, connection: 1) == "")
    }

    @Test(arguments: ["a{x}@b", "a{n@b", "a}@b", "a b@c", "<a@b>", "a{n%0}@b", "a{n%}@b", "a\r\n@b"])
    func badPatternsNameTheOption(_ text: String) {
        do {
            _ = try AddressPattern(parsing: text, option: "--from")
            Issue.record("\(text.debugDescription) parsed")
        } catch {
            #expect(error.message.hasPrefix("--from:"))
        }
    }
}
