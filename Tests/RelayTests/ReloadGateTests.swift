import Testing
@testable import Relay

/// SIGHUP's bookkeeping: one reload at a time, and a signal during one is never dropped.
/// `true` from signal(): a reload starts now; from finished(): one more starts now.
@Suite struct ReloadGateTests {
    @Test func aSignalWhileIdleStartsAReload() {
        var gate = ReloadGate()
        var answers: [Bool] = []
        answers.append(gate.signal())
        #expect(gate.running)
        answers.append(gate.finished())
        #expect(!gate.running)
        answers.append(gate.signal())
        #expect(answers == [true, false, true])
    }

    /// An edit saved while the first read runs: the second signal is answered when the first ends.
    @Test func aSignalDuringAReloadStartsOneMoreWhenItEnds() {
        var gate = ReloadGate()
        var answers: [Bool] = []
        answers.append(gate.signal())
        answers.append(gate.signal())  // not now: one is running
        #expect(gate.pending)
        answers.append(gate.finished())  // the one more
        #expect(gate.running && !gate.pending)
        answers.append(gate.finished())
        #expect(!gate.running)
        #expect(answers == [true, false, true, false])
    }

    /// Many signals during one reload are answered by one more, not by as many.
    @Test func signalsDuringAReloadMerge() {
        var gate = ReloadGate()
        var answers: [Bool] = [gate.signal()]
        for _ in 0..<5 { answers.append(gate.signal()) }
        answers.append(gate.finished())
        answers.append(gate.finished())
        #expect(answers == [true, false, false, false, false, false, true, false])
    }
}
