import Foundation
@testable import MailQueue
import Testing
@testable import Relay

/// The spool's state files (shaping.state, cluster.state): the newest snapshot is the one that stays, whatever order the writes run in
/// (the shutdown's final write on the loop, an earlier one on the thread pool finishing late).
@Suite struct StateFileWriterTests {
    private func snapshot(_ savedAt: Double) -> ShapingSnapshot {
        var s = ShapingSnapshot(savedAt: savedAt)
        s.groups = [.init(group: .domain("a.example"), until: savedAt + 600, reason: "postmaster")]
        return s
    }

    @Test func anOlderSnapshotWrittenLateIsDropped() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tern-shaping-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = ShapingStateFile.path(spool: dir.path)
        let writer = StateFileWriter<ShapingSnapshot>()
        let poolWrite = writer.nextGeneration()  // taken first, its write queued on the pool
        let finalWrite = writer.nextGeneration()  // shutdown
        #expect(try writer.write(snapshot(200), generation: finalWrite, to: path))
        #expect(try !writer.write(snapshot(100), generation: poolWrite, to: path), "the pool's write ran after the final one")
        #expect(try StateFile.read(ShapingSnapshot.self, at: path) == snapshot(200))
    }

    @Test func aFailedWriteDoesNotCountAsWritten() throws {
        let writer = StateFileWriter<ShapingSnapshot>()
        struct DiskFull: Error {}
        var files: [Double] = []
        let first = writer.nextGeneration(), second = writer.nextGeneration()
        #expect(throws: DiskFull.self) {
            try writer.write(snapshot(2), generation: second, to: "x") { _, _ in throw DiskFull() }
        }
        // The older one may still land: nothing newer is on disk.
        #expect(try writer.write(snapshot(1), generation: first, to: "x") { s, _ in files.append(s.savedAt) })
        let third = writer.nextGeneration()
        #expect(try writer.write(snapshot(3), generation: third, to: "x") { s, _ in files.append(s.savedAt) })
        #expect(try !writer.write(snapshot(2), generation: second, to: "x") { s, _ in files.append(s.savedAt) })
        #expect(files == [1, 3])
    }
}
