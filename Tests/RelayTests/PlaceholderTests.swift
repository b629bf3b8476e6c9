import Testing
@testable import Relay
@Test func placeholder() { #expect(1 + 1 == 2) }
