import UVRuntime

extension EventLoop {
    /// Runs the loop until `done()`; a 10 ms timer keeps each turn short. Bounded in turns, not timed.
    func run(until done: () -> Bool, turns limit: Int = 3000) {
        let tick = UVRuntime.Timer(loop: self)
        tick.start(afterMilliseconds: 10, repeatMilliseconds: 10) {}
        var turns = 0
        while !done() && turns < limit {
            runOnce(nowait: false)
            turns += 1
        }
        tick.close()
        runOnce(nowait: true)
    }
}
