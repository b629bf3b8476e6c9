// Queue ids: the name of a message in the spool, in logs and in `tern queue` output.
//
// An id is the time the message arrived, as 14 uppercase hex digits of microseconds since the epoch
// (zero-padded; 14 digits last until the year 4253). Fixed width makes string order equal time order, so
// `ls queue/` and `list()` show messages oldest first. Within one process the generator never hands out
// the same id twice, even when the clock stalls or steps back. Across restarts the clock may have gone
// back, so the spool creates data files with O_EXCL and the caller retries with `next()` on EEXIST.

/// A message's queue id, e.g. `060A2418202240`.
public struct QueueID: Hashable, Comparable, CustomStringConvertible, Sendable, RawRepresentable {
    public static let length = 14

    public let rawValue: String

    /// Accepts exactly 14 uppercase hex digits, so a file name that is not ours never parses as an id.
    public init?(rawValue: String) {
        let utf8 = rawValue.utf8
        guard utf8.count == QueueID.length,
              utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x41 && $0 <= 0x46) })
        else { return nil }
        self.rawValue = rawValue
    }

    /// The id for a time in microseconds since the epoch.
    public init(microseconds: UInt64) {
        var digits = [UInt8](repeating: 0x30, count: QueueID.length)
        var value = microseconds
        var index = digits.count - 1
        while value > 0 {
            if index < 0 { digits.insert(0x30, at: 0); index = 0 }  // past year 4253: grow, never truncate
            digits[index] = QueueID.hexDigits[Int(value & 0xF)]
            value >>= 4
            index -= 1
        }
        self.rawValue = String(decoding: digits, as: UTF8.self)
    }

    /// Microseconds since the epoch that this id encodes.
    public var microseconds: UInt64 { UInt64(rawValue, radix: 16) ?? 0 }

    public var description: String { rawValue }

    public static func < (lhs: QueueID, rhs: QueueID) -> Bool {
        // Fixed width, so comparing the strings compares the times; a longer id is a later one.
        let (l, r) = (lhs.rawValue.utf8.count, rhs.rawValue.utf8.count)
        return l != r ? l < r : lhs.rawValue < rhs.rawValue
    }

    private static let hexDigits: [UInt8] = Array("0123456789ABCDEF".utf8)
}

/// Hands out unique ids that sort by time: max(now, last + 1).
/// A value type: the owner (the loop thread) keeps one and calls `next` from one thread at a time.
public struct QueueIDGenerator: Sendable {
    private var last: UInt64 = 0

    public init() {}

    public mutating func next(nowMicroseconds: UInt64) -> QueueID {
        let value = max(nowMicroseconds, last &+ 1)
        last = value
        return QueueID(microseconds: value)
    }

    /// Never hands out `id` or anything before it: at start-up, past the newest id in the spool, so a
    /// clock set back across a restart cannot reuse the id of a message still queued.
    public mutating func advance(past id: QueueID) {
        if let value = UInt64(id.rawValue, radix: 16) { last = max(last, value) }
    }
}
