import Testing
@testable import UVRuntime
@Test func placeholder() { #expect(1 + 1 == 2) }
