import Testing
@testable import SMTPProtocol
@Test func placeholder() { #expect(1 + 1 == 2) }
