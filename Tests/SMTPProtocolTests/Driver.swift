import Testing
@testable import SMTPProtocol

/// Feeds a ServerSession and plays the spool: every commit succeeds with ids Q1, Q2, … unless
/// `failCommits` is set. Collects what a client and the spool would see.
struct Driver {
    var session: ServerSession
    var replies = ""
    var messages: [(start: MessageStart, data: [UInt8])] = []
    /// The session's lastMessageIsWireReady at each commit, in order.
    var wireReady: [Bool] = []
    var current: (start: MessageStart, data: [UInt8])?
    var aborted = 0
    var closed = false
    var failCommits = false
    var commits = 0
    var delays: [Int] = []
    var dropped = false
    /// STARTTLS accepted: the caller would start the handshake now.
    var tlsStarts = 0
    /// Credentials the session asked to check, in order.
    var authRequests: [(user: String, password: String)] = []
    /// Refusals the session reported, in order.
    var refusals: [Refusal] = []

    init(_ config: ServerConfiguration = ServerConfiguration(hostname: "relay.test"),
         client: PeerInfo = PeerInfo(ip: "127.0.0.1", trusted: true), greet: Bool = true) {
        session = ServerSession(config: config, client: client)
        if greet { apply(session.greeting()) }
    }

    mutating func apply(_ actions: [ServerAction]) {
        var pendingCommit = false
        for action in actions {
            switch action {
            case .reply(let bytes): replies += String(decoding: bytes, as: UTF8.self)
            case .beginMessage(let start):
                precondition(current == nil, "beginMessage while a message is open")
                current = (start, [])
            case .messageData(let bytes): current!.data += bytes
            case .commitMessage: pendingCommit = true
            case .abortMessage:
                if current != nil { aborted += 1 }
                current = nil
            case .close: closed = true
            case .delay(let ms): delays.append(ms)
            case .drop: closed = true; dropped = true
            case .startTLS: tlsStarts += 1
            case .authenticate(let user, let password): authRequests.append((user, password))
            case .refused(let r): refusals.append(r)
            }
        }
        if pendingCommit {
            commits += 1
            wireReady.append(session.lastMessageIsWireReady)
            let id: String?
            if failCommits {
                id = nil
            } else {
                messages.append(current!)
                id = "Q\(messages.count)"
            }
            current = nil
            apply(session.commitFinished(queueID: id))
        }
    }

    mutating func send(_ text: String) { send(Array(text.utf8)) }

    mutating func send(_ bytes: [UInt8]) { apply(session.receive(bytes)) }

    /// Sends the bytes one at a time.
    mutating func trickle(_ text: String) {
        for b in text.utf8 { send([b]) }
    }

    /// Reply codes in order, e.g. ["220", "250", …], one per reply (multi-line replies count once).
    var codes: [String] {
        replies.split(separator: "\r\n", omittingEmptySubsequences: true)
            .map { Array($0.utf8) }
            .filter { $0.count >= 4 && $0[3] == UInt8(ascii: " ") }
            .map { String(decoding: $0.prefix(3), as: UTF8.self) }
    }

    var lastReply: String {
        let lines = replies.split(separator: "\r\n")
        return lines.last.map(String.init) ?? ""
    }

    mutating func takeReplies() -> String {
        defer { replies = "" }
        return replies
    }
}

let crlf = "\r\n"

func lines(_ l: String...) -> String { l.map { $0 + crlf }.joined() }

/// Feeds `input` whole, split in two at every byte and a byte at a time; every way must give the same
/// replies and the same messages. Returns the whole run's driver.
@discardableResult
func expectSameAnySplit(_ input: String, config: ServerConfiguration = ServerConfiguration(hostname: "relay.test"),
                        sourceLocation: SourceLocation = #_sourceLocation) -> Driver {
    var whole = Driver(config)
    whole.send(input)
    let bytes = Array(input.utf8)
    for cut in 1..<bytes.count {
        var d = Driver(config)
        d.send(Array(bytes[..<cut]))
        d.send(Array(bytes[cut...]))
        #expect(d.replies == whole.replies, "split at \(cut)", sourceLocation: sourceLocation)
        #expect(d.messages.map(\.data) == whole.messages.map(\.data), "split at \(cut)", sourceLocation: sourceLocation)
    }
    var t = Driver(config)
    t.trickle(input)
    #expect(t.replies == whole.replies, "byte by byte", sourceLocation: sourceLocation)
    #expect(t.messages.map(\.data) == whole.messages.map(\.data), "byte by byte", sourceLocation: sourceLocation)
    return whole
}

