// The From: domains that choose the signing key: display names, comments, quoted strings with
// syntax characters in them, groups, folding, several mailboxes, and values with no domain.

import Testing
@testable import DKIM

@Suite struct AuthorDomainTests {
    func domains(_ value: String) -> [String] { AuthorDomain.domains(ofValue: bytes(value)) }

    @Test func commonForms() {
        #expect(domains(" alice@Example.COM\r\n") == ["example.com"])
        #expect(domains(" Alice <alice@example.com>\r\n") == ["example.com"])
        #expect(domains(" \"Smith, Alice <boss@evil.example>\" <alice@example.com>\r\n") == ["example.com"])
        #expect(domains(" Alice (from @evil.example, really) <alice@example.com>\r\n") == ["example.com"])
        #expect(domains(" alice@example.com (Alice <x@evil.example>)\r\n") == ["example.com"])
        #expect(domains(" \"quoted\\\"@evil.example\"@example.com\r\n") == ["example.com"])
        #expect(domains(" Alice\r\n <alice@sub.example.com.>\r\n") == ["sub.example.com"])
        #expect(domains(" Jörg <jörg@bücher.example>\r\n") == ["bücher.example"])
    }

    @Test func severalMailboxesAndGroups() {
        #expect(domains(" a@one.example, B <b@two.example>\r\n") == ["one.example", "two.example"])
        #expect(domains(" Team: a@one.example, b@two.example;\r\n") == ["one.example", "two.example"])
        #expect(domains(" undisclosed-recipients:;\r\n") == [])
    }

    @Test func noDomain() {
        #expect(domains(" alice\r\n") == [])
        #expect(domains(" <alice@[192.0.2.1]>\r\n") == [])
        #expect(domains(" Alice <alice@example.com\r\n") == [])
        #expect(domains(" \r\n") == [])
    }

    @Test func everyFromFieldOfAHeaderBlock() throws {
        let fields = try HeaderBlock.parse(bytes("To: x@to.example\r\nFrom: a@one.example\r\nfrom: b@Two.example\r\n"))
        #expect(AuthorDomain.domains(in: fields) == ["one.example", "two.example"])
    }
}
