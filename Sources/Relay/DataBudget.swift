// DataBudget.swift: one limit on the message data that all inbound sessions hold in memory together
// (`server.max_buffered_data`), so that a flood of large messages cannot ask for gigabytes.
//
// A session in DATA holds bytes between the socket and the disk: its DATA buffer (ServerSession) and
// the chunks its MessageWriter has not written yet. After every read and every finished write the
// session adds the change to `held`: a few integer operations on the loop thread, no lock.
//
// A session reads message data only while it holds room for one more read (`perRead`, the most one
// read can add to what it holds) on top of what it holds. After a read that takes the total over the
// limit it gives that room back, stops reading (uv_read_stop: its client waits, as TCP intends), writes
// out everything it holds and waits in line. As writes finish, the sessions waiting resume in the order
// they stopped, each as soon as there is room for one read. So the data in memory stays within the
// limit, and no session waits on another:
//   - a session that stopped holds nothing once its writes finish, so the total falls to zero when
//     every session is waiting;
//   - a session may always start when nothing is held at all, even if one read alone is over the
//     limit (a message larger than the budget passes, one read at a time).
// Pure bookkeeping: the sessions and SMTPServer carry it out (InboundSession's "memory budget" part).

import Collections

public struct DataBudget: Sendable {
    /// Bytes of message data the sessions may hold together; changed by a reload.
    public var limit: Int
    /// The most one read can add to what a session holds: a read's bytes and a newly reserved DATA
    /// buffer. Reserved for every session reading message data.
    public let perRead: Int
    /// Bytes of message data held in memory now (the gauge `tern_buffered_data_bytes`).
    public private(set) var held = 0
    /// `held` plus the room reserved by the sessions reading message data.
    public private(set) var inUse = 0
    /// Sessions stopped, waiting for room (the gauge `tern_sessions_waiting_for_buffer`).
    public private(set) var waiting = 0
    /// Session ids in the order they stopped. May hold ids that stopped waiting meanwhile (closed, the
    /// message ended): the server skips those when their turn comes.
    private var line = Deque<UInt64>()

    public init(limit: Int, perRead: Int) {
        self.limit = limit
        self.perRead = perRead
    }

    /// Whether a session may start reading now: room for one read, or nothing held at all.
    public var hasRoom: Bool { inUse + perRead <= limit || inUse == 0 }

    /// Over the limit: the session that just read stops.
    public var isOverLimit: Bool { inUse > limit }

    /// A session's message data in memory grew (or shrank: written, committed, dropped).
    public mutating func change(by delta: Int) {
        held += delta
        inUse += delta
    }

    /// A session starts reading message data (DATA began): true with its room reserved, false when it
    /// must `wait` (no room, or others are waiting already: they go first).
    public mutating func startReading() -> Bool {
        guard waiting == 0, hasRoom else { return false }
        inUse += perRead
        return true
    }

    /// A session reading message data stops (it must wait, or its message ended): its room is free.
    public mutating func stopReading() {
        inUse -= perRead
    }

    /// A session that stopped joins the end of the line.
    public mutating func wait(_ session: UInt64) {
        line.append(session)
        waiting += 1
    }

    /// A session stopped waiting without its turn (closed, or its message ended).
    public mutating func cancelWait() {
        waiting -= 1
        if waiting == 0 { line.removeAll(keepingCapacity: true) }  // only ids that stopped waiting are left
    }

    /// The session whose turn it is, with its room reserved, when there is room; nil otherwise. The
    /// caller answers `resumed()` when the session reads again, else gives the room back with
    /// `stopReading()` (it stopped waiting meanwhile).
    public mutating func next() -> UInt64? {
        guard waiting > 0, hasRoom, let session = line.popFirst() else { return nil }
        inUse += perRead
        return session
    }

    public mutating func resumed() {
        waiting -= 1
        if waiting == 0 { line.removeAll(keepingCapacity: true) }
    }

    /// Whether a waiting session can resume now.
    public var mayResume: Bool { waiting > 0 && hasRoom }
}
