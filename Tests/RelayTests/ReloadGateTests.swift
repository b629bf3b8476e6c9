import Testing
@testable import Relay

/// SIGHUP's bookkeeping: one reload at a time, and a signal during one is never dropped.
@Suite struct ReloadGateTests {
    @Test func aSignalWhileIdleStartsAReload() {
        var gate = ReloadGate()
        #expect(gate.signal())
        #expect(gate.running)
        #expect(!gate.finished())
        #expect(!gate.running)
        #expect(gate.signal())
    }

    /// An edit saved while the first read runs: the second signal is answered when the first ends.
    @Test func aSignalDuringAReloadStartsOneMoreWhenItEnds() {
        var gate = ReloadGate()
        #expect(gate.signal())
        #expect(!gate.signal())  // not now: one is running
        #expect(gate.pending)
        #expect(gate.finished())  // the one more
        #expect(gate.running && !gate.pending)
        #expect(!gate.finished())
        #expect(!gate.running)
    }

    /// Many signals during one reload are answered by one more, not by as many.
    @Test func signalsDuringAReloadMerge() {
        var gate = ReloadGate()
        #expect(gate.signal())
        for _ in 0..<5 { #expect(!gate.signal()) }
        #expect(gate.finished())
        #expect(!gate.finished())
    }
}
