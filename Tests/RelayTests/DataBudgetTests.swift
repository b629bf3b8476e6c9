import Testing
@testable import Relay

/// The bookkeeping of `server.max_buffered_data` (DataBudget.swift): room per read, the limit, the
/// order in which stopped sessions resume, and no deadlock when one read is larger than the limit.
@Suite struct DataBudgetTests {
    @Test func readersReserveRoomAndStopPastTheLimit() {
        var b = DataBudget(limit: 1000, perRead: 300)
        let v1 = b.startReading()
        #expect(v1)  // 300
        let v2 = b.startReading()
        #expect(v2)  // 600
        let v3 = b.startReading()
        #expect(v3)  // 900
        let v4 = b.startReading()
        #expect(!v4, "no room for a fourth read")
        #expect(b.inUse == 900 && b.held == 0)
        b.change(by: 250)  // the first session read
        #expect(b.isOverLimit)
        b.stopReading()  // ... and stops: what it holds stays counted
        #expect(!b.isOverLimit && b.held == 250 && b.inUse == 850)
        b.change(by: -250)  // written to disk
        #expect(b.held == 0 && b.inUse == 600)
    }

    @Test func waitingSessionsResumeInTheOrderTheyStopped() {
        var b = DataBudget(limit: 1000, perRead: 300)
        for _ in 0..<3 { let v5 = b.startReading(); #expect(v5) }
        b.change(by: 100)
        for id in [7, 3, 9] as [UInt64] { b.wait(id) }
        #expect(b.waiting == 3)
        let v6 = b.next()
        #expect(v6 == nil, "no room yet")
        b.stopReading()  // a reader's message ended: room for one
        let v7 = b.next()
        #expect(v7 == 7)
        b.resumed()
        let v8 = b.next()
        #expect(v8 == nil)
        b.stopReading()
        b.stopReading()
        b.change(by: -100)
        let v9 = b.next()
        #expect(v9 == 3)
        b.resumed()
        let v10 = b.next()
        #expect(v10 == 9)
        b.resumed()
        let last = b.next()
        #expect(b.waiting == 0 && last == nil)
        #expect(b.inUse == 3 * 300)
    }

    @Test func aNewcomerWaitsBehindTheSessionsAlreadyWaiting() {
        var b = DataBudget(limit: 1000, perRead: 300)
        b.change(by: 900)
        b.wait(1)
        b.change(by: -900)
        #expect(b.hasRoom)
        let v11 = b.startReading()
        #expect(!v11, "a session that just entered DATA does not overtake one in line")
        #expect(b.mayResume)
        let v12 = b.next()
        #expect(v12 == 1)
        b.resumed()
        let v13 = b.startReading()
        #expect(v13)
    }

    @Test func aSessionThatLeftTheLineIsSkipped() {
        var b = DataBudget(limit: 1000, perRead: 300)
        b.change(by: 900)
        b.wait(1)
        b.wait(2)
        b.cancelWait()  // session 1 closed while waiting
        #expect(b.waiting == 1)
        b.change(by: -900)
        let v14 = b.next()
        #expect(v14 == 1)  // the server finds it gone and gives the room back
        b.stopReading()
        let v15 = b.next()
        #expect(v15 == 2)
        b.resumed()
        #expect(b.waiting == 0 && b.inUse == 300)
    }

    @Test func oneReadLargerThanTheLimitStillPassesWhenNothingElseIsHeld() {
        var b = DataBudget(limit: 100, perRead: 300)
        let v16 = b.startReading()
        #expect(v16, "nothing held: a session may always start")
        b.change(by: 250)
        #expect(b.isOverLimit)
        b.stopReading()
        b.wait(1)
        let v17 = b.next()
        #expect(v17 == nil, "its own bytes are not on disk yet")
        b.change(by: -250)
        let v18 = b.next()
        #expect(v18 == 1, "written out: its turn again")
        b.resumed()
        let v19 = b.startReading()
        #expect(!v19, "a second session waits while the first holds its room")
    }

    @Test func theKeyIsReadRenderedAndChecked() throws {
        #expect(try TernConfig.parse("hostname = \"a.test\"").server.maxBufferedData == 256 << 20)
        let config = try TernConfig.parse("hostname = \"a.test\"\n[server]\nmax_buffered_data = 33554432")
        #expect(config.server.maxBufferedData == 32 << 20)
        #expect(try TernConfig.parse(config.tomlText) == config)
        #expect(throws: ConfigError.self) { try TernConfig.parse("hostname = \"a.test\"\n[server]\nmax_buffered_data = 4096") }
        do {
            _ = try TernConfig.parse("hostname = \"a.test\"\n[server]\nmax_buffered_data = \"1G\"")
            Issue.record("a string was accepted")
        } catch let error as ConfigError {
            #expect(error.description.contains("server.max_buffered_data"))
        }
    }
}
