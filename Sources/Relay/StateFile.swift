// StateFile.swift: the small JSON files the relay keeps in its spool beside the mail (shaping.state,
// cluster.state). Each is read once at start, replaced atomically (a temporary name, then rename),
// written on the thread pool while running and once more on the loop at stop; StateFileWriter makes
// sure the newest of those writes is the one that stays.

import Foundation

enum StateFile {
    /// Nil when there is none (a first start). Blocking.
    static func read<T: Decodable>(_ type: T.Type, at path: String) throws -> T? {
        guard FileManager.default.fileExists(atPath: path) else { return nil }
        return try JSONDecoder().decode(type, from: Data(contentsOf: URL(fileURLWithPath: path)))
    }

    /// Blocking: the thread pool's (or once at stop). Sorted keys: the same state, the same bytes.
    static func write<T: Encodable>(_ value: T, to path: String) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        try encoder.encode(value).write(to: URL(fileURLWithPath: path), options: .atomic)
    }
}

/// A state file's writes, one at a time, the newest winning: each snapshot is numbered when it is
/// taken (on the loop), and a write older than one already written is dropped. So the stop's final
/// write is never replaced by a pool write that ran late.
final class StateFileWriter<Snapshot: Encodable>: @unchecked Sendable {
    // `numbered` is the loop's alone; `written` is guarded by the lock (pool threads and the loop).
    private let lock = NSLock()
    private var numbered: UInt64 = 0
    private var written: UInt64 = 0

    /// The number of a snapshot taken now (loop thread).
    func nextGeneration() -> UInt64 {
        numbered += 1
        return numbered
    }

    /// Writes the snapshot unless a newer one was written; false when dropped. Blocking.
    @discardableResult
    func write(_ snapshot: Snapshot, generation: UInt64, to path: String,
               using write: (Snapshot, String) throws -> Void = { try StateFile.write($0, to: $1) }) throws -> Bool {
        lock.lock()
        defer { lock.unlock() }
        guard generation > written else { return false }
        try write(snapshot, path)
        written = generation
        return true
    }
}
