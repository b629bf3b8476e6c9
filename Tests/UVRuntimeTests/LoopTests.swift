import Testing
@testable import UVRuntime
#if canImport(Glibc)
import Glibc
#endif

@Suite struct LoopTests {
    init() { ignoreSIGPIPE() }

    @Test func timerFiresOnceAfterTheDelay() throws {
        let loop = try EventLoop()
        defer { loop.close() }
        let timer = UVRuntime.Timer(loop: loop)
        loop.updateTime()
        let started = loop.nowMilliseconds
        var firedAt: [UInt64] = []
        timer.start(afterMilliseconds: 50) { firedAt.append(loop.nowMilliseconds) }
        #expect(timer.isActive)
        #expect(run(loop) { !firedAt.isEmpty })
        run(loop, forMilliseconds: 150)  // a one-shot timer does not fire again
        #expect(firedAt.count == 1)
        let delay = (firedAt.first ?? 0) - started
        #expect(delay >= 50)
        #expect(delay < 1000)
        #expect(!timer.isActive)
        timer.close()
    }

    @Test func repeatingTimerRepeatsUntilStopped() throws {
        let loop = try EventLoop()
        defer { loop.close() }
        let timer = UVRuntime.Timer(loop: loop)
        var count = 0
        timer.start(afterMilliseconds: 5, repeatMilliseconds: 10) {
            count += 1
            if count == 5 { timer.stop() }
        }
        #expect(run(loop) { count >= 5 })
        run(loop, forMilliseconds: 60)
        #expect(count == 5)
        // Restart after stop.
        timer.start(afterMilliseconds: 1) { count += 100 }
        #expect(run(loop) { count == 105 })
        timer.close()
        #expect(timer.isClosed)
    }

    @Test func closedTimerReleasesItsClosure() throws {
        let loop = try EventLoop()
        defer { loop.close() }
        final class Token {}
        weak var weakToken: Token?
        let timer = UVRuntime.Timer(loop: loop)
        do {
            let token = Token()
            weakToken = token
            timer.start(afterMilliseconds: 60_000) { _ = token }
        }
        #expect(weakToken != nil)
        timer.close()
        run(loop, forMilliseconds: 5)
        #expect(weakToken == nil)
        #expect(loop.openHandleCount == 0)
    }

    @Test func queueWorkRunsOffTheLoopThreadAndCompletesOnIt() throws {
        let loop = try EventLoop()
        defer { loop.close() }
        let loopThread = pthread_self()
        var workThread: pthread_t?
        var doneThread: pthread_t?
        var workDoneBeforeDone = false
        var results = 0
        for _ in 0..<4 {
            loop.queueWork({
                workThread = pthread_self()  // read only after `done`, which libuv orders after `work`
                usleep(10_000)
            }, done: {
                workDoneBeforeDone = workThread != nil
                doneThread = pthread_self()
                results += 1
            })
        }
        #expect(results == 0)  // never inline
        #expect(run(loop) { results == 4 })
        #expect(workDoneBeforeDone)
        #expect(pthread_equal(try #require(workThread), loopThread) == 0)
        #expect(pthread_equal(try #require(doneThread), loopThread) != 0)
    }

    @Test func signalWatcherSeesRaisedSignal() throws {
        let loop = try EventLoop()
        defer { loop.close() }
        var seen = 0
        let watcher = try SignalWatcher(loop: loop, signal: SIGUSR1) { seen += 1 }
        #expect(seen == 0)
        // Test threads are libdispatch workers, which block signals: unblock SIGUSR1 here so the
        // thread-directed raise() is delivered (synchronously), then restore the mask.
        var unblock = sigset_t()
        var previous = sigset_t()
        sigemptyset(&unblock)
        sigaddset(&unblock, SIGUSR1)
        pthread_sigmask(SIG_UNBLOCK, &unblock, &previous)
        raise(SIGUSR1)
        pthread_sigmask(SIG_SETMASK, &previous, nil)
        #expect(run(loop) { seen >= 1 })
        #expect(seen == 1)
        watcher.close()
    }

    @Test func asyncWakerRunsHandlerOnLoopThread() throws {
        let loop = try EventLoop()
        defer { loop.close() }
        let loopThread = pthread_self()
        var handlerOnLoop = false
        var wakes = 0
        let waker = try AsyncWaker(loop: loop) {
            handlerOnLoop = pthread_equal(pthread_self(), loopThread) != 0
            wakes += 1
        }
        // Wake from a thread-pool thread.
        loop.queueWork({ waker.wake() }, done: {})
        #expect(run(loop) { wakes >= 1 })
        #expect(handlerOnLoop)
        waker.close()
        waker.wake()  // after close: a no-op, not a crash
        run(loop, forMilliseconds: 10)
        #expect(wakes == 1)
    }

    @Test func raiseFileLimitReachesTheHardLimit() {
        let soft = raiseFileLimit()
        var limit = rlimit()
        #expect(getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit) == 0)
        #expect(soft == Int(limit.rlim_cur))
        #expect(limit.rlim_cur == limit.rlim_max)
    }
}

@Suite struct PrepareTests {
    @Test func runsOncePerIterationUntilClosedAndDoesNotKeepTheLoopAlive() throws {
        let loop = try EventLoop()
        defer { loop.close() }
        var runs = 0
        let prepare = Prepare(loop: loop) { runs += 1 }
        // Alone it is no reason to run: the loop returns at once.
        loop.run()
        #expect(runs == 0)
        run(loop, forMilliseconds: 50)  // a 5 ms tick: several iterations
        #expect(runs >= 3)
        prepare.close()
        let before = runs
        run(loop, forMilliseconds: 30)
        #expect(runs == before)
    }
}
