import Testing
@testable import MailQueue
@Test func placeholder() { #expect(1 + 1 == 2) }
