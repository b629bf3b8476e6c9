// The client side of one outbound SMTP connection as a state machine: reply bytes and events in,
// actions out. No sockets and no clock, like ServerSession, so every path is tested byte by byte.
//
// One connection carries one or more transactions (connection reuse):
//
//   greeting 220 ─▶ EHLO ─(5xx)─▶ HELO ─▶ .ready ─▶ [RSET] MAIL RCPT… DATA ─▶ message ─▶ .ready … QUIT
//
// - EHLO first; a 5xx to it (500/502/504/550) falls back to HELO without extensions (RFC 5321 §4.1.4).
// - With PIPELINING (RFC 2920) RSET, MAIL, every RCPT and DATA go out in one write, DATA last in the
//   group (§3.1); the replies come back in order and are matched to the commands in a FIFO. Without
//   it, one command at a time, each after the reply to the one before.
// - SIZE (RFC 1870): SIZE= is sent when the next hop advertised SIZE; a message larger than its limit
//   is refused here without sending MAIL. SMTPUTF8 (RFC 6531) is never downgraded: a transaction that
//   needs it fails permanently if the next hop lacks it. BODY=8BITMIME only when the next hop offers
//   8BITMIME (RFC 6152); to one that does not, an 8BITMIME message is converted to 7-bit MIME first
//   (SevenBit.swift), or sent as it is when it cannot be (not MIME), which the outcome reports.
// - DSN (RFC 3461): RET= and ENVID= on MAIL, NOTIFY= and ORCPT= on RCPT, as the sender gave them,
//   when the next hop offers DSN; otherwise none (the caller then owes the sender a "relayed" notice
//   where SUCCESS was asked for, RFC 3461 §5.2.2).
// - CHUNKING (RFC 3030): when the next hop offers it (and `useChunking`), the message goes out as
//   "BDAT <n> LAST" and its bytes as they are, with no dot-stuffing and no final ".", instead of
//   DATA. BDAT waits for the RCPT replies, also when pipelining: message bytes never reach a next hop
//   that refused the transaction, and it costs no round trip against DATA, whose 354 is waited for too.
//   A BODY=BINARYMIME message goes only with BDAT, unchanged, to a next hop that offers BINARYMIME
//   and CHUNKING; to any other it fails permanently (554 5.6.3: no conversion is attempted).
// - Refusals before anything is sent are synthetic replies, shaped like a server's so that the
//   caller's bounce/defer logic needs no special case:
//     552 5.3.4 message larger than the next hop's SIZE     553 5.6.7 SMTPUTF8 needed, not offered
//     553 5.1.3 control character in an envelope address   554 5.5.1 no recipients
//     554 5.6.3 BINARYMIME needed, not offered
// - The whole connection is given up (sessionFailed) on: a greeting other than 220, EHLO and HELO
//   both refused, 421 at any time (§3.8: the server is closing, no QUIT needed), a non-2xx to RSET,
//   a line that is not a reply, a code that makes no sense for the command (e.g. 354 to RCPT), a
//   reply when no command is outstanding, or a timeout. The caller may then try the next MX host.
//   QUIT is sent on the way out only when the server refused us politely and no command is in
//   flight: after a pipelined DATA, "QUIT" could be read as message text.
// - Phases drive the caller's timers (RFC 5321 §4.5.3.2): greeting 5 min, MAIL 5, RCPT 5, DATA 2,
//   data block 3, end of data 10.
// - STARTTLS (RFC 3207) and AUTH (RFC 4954) are in ClientSession+Security.swift: after EHLO the
//   session may upgrade to TLS (EHLO again, the first answer forgotten) and authenticate before
//   it becomes ready.

/// What the next hop said it can do in its EHLO reply (all false after HELO).
public struct NextHopCapabilities: Equatable, Sendable {
    /// EHLO was accepted (false after the HELO fallback).
    public var esmtp: Bool
    public var pipelining: Bool
    public var eightBitMIME: Bool
    public var smtputf8: Bool
    public var enhancedStatusCodes: Bool
    public var startTLS: Bool
    /// CHUNKING (RFC 3030): BDAT instead of DATA.
    public var chunking: Bool
    /// DSN (RFC 3461): the sender's NOTIFY, ORCPT, RET and ENVID go on.
    public var dsn: Bool
    /// REQUIRETLS (RFC 8689): a message that asks for it may go to this next hop (under verified TLS).
    public var requireTLS = false
    /// BINARYMIME (RFC 3030 §3): a BODY=BINARYMIME message may go to this next hop (with BDAT).
    public var binaryMIME = false
    /// nil: SIZE not advertised. 0: SIZE advertised without a number, or with 0, which means no fixed
    /// limit (RFC 1870 §4). Otherwise the largest message the next hop takes, in bytes.
    public var size: Int?
    /// SASL mechanisms, upper case, in the order advertised ("AUTH PLAIN LOGIN", or old "AUTH=…").
    public var auth: [String]

    public init(esmtp: Bool = false, pipelining: Bool = false, eightBitMIME: Bool = false,
                smtputf8: Bool = false, enhancedStatusCodes: Bool = false, startTLS: Bool = false,
                size: Int? = nil, auth: [String] = [], chunking: Bool = false, dsn: Bool = false) {
        self.esmtp = esmtp
        self.pipelining = pipelining
        self.eightBitMIME = eightBitMIME
        self.smtputf8 = smtputf8
        self.enhancedStatusCodes = enhancedStatusCodes
        self.startTLS = startTLS
        self.size = size
        self.auth = auth
        self.chunking = chunking
        self.dsn = dsn
    }

    /// Reads the EHLO reply: the first line is the server's name, every other line one keyword with
    /// its parameters (RFC 5321 §4.1.1.1). Keywords are case-insensitive; unknown ones are ignored.
    public init(ehloReply: Reply) {
        self.init(esmtp: true)
        for line in ehloReply.lines.dropFirst() {
            let words = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard let first = words.first else { continue }
            var keyword = first.uppercased()
            var params = words.dropFirst().map { String($0) }
            if keyword.hasPrefix("AUTH=") {  // pre-RFC 4954 form some servers still send
                params.insert(String(keyword.dropFirst(5)), at: 0)
                keyword = "AUTH"
            }
            switch keyword {
            case "PIPELINING": pipelining = true
            case "8BITMIME": eightBitMIME = true
            case "SMTPUTF8": smtputf8 = true
            case "ENHANCEDSTATUSCODES": enhancedStatusCodes = true
            case "STARTTLS": startTLS = true
            case "CHUNKING": chunking = true
            case "DSN": dsn = true
            case "REQUIRETLS": requireTLS = true
            case "BINARYMIME": binaryMIME = true
            case "SIZE":
                // A number too large for Int, or no number at all, is no practical limit.
                if let p = params.first, let n = Int(p), n >= 0 { size = n } else { size = 0 }
            case "AUTH":
                for p in params {
                    let mech = p.uppercased()
                    if !mech.isEmpty && !auth.contains(mech) { auth.append(mech) }
                }
            default: break
            }
        }
    }
}

/// One message for one next hop: the envelope, and what the MAIL parameters need.
public struct OutboundTransaction: Equatable, Sendable {
    /// "" is the null sender <> (bounces).
    public var sender: String
    public var recipients: [String]
    /// Bytes of the message, for SIZE= and the next hop's limit.
    public var size: Int
    /// "8BITMIME" gives BODY=8BITMIME when the next hop offers it. "BINARYMIME" goes only to a next hop
    /// that offers BINARYMIME and CHUNKING, always with BDAT, as it is; elsewhere 554 5.6.3.
    public var bodyType: String?
    /// Sends SMTPUTF8; if the next hop lacks it the transaction fails permanently: 553 5.6.7 (no downgrade).
    public var smtputf8: Bool
    /// RET= and ENVID= (xtext, as received), sent when the next hop offers DSN.
    public var ret: DSNReturn?
    public var envid: String?
    /// NOTIFY= and ORCPT= per recipient, in the order of `recipients`; empty when none has any.
    public var recipientDSN: [RecipientDSN]
    /// REQUIRETLS (RFC 8689): sent only under TLS with a verified certificate to a next hop that offers
    /// REQUIRETLS; anywhere else the transaction fails at once with 550 5.7.30.
    public var requireTLS = false

    /// BODY=BINARYMIME.
    public var isBinary: Bool { bodyType?.uppercased() == "BINARYMIME" }

    public init(sender: String, recipients: [String], size: Int, bodyType: String? = nil, smtputf8: Bool = false,
                ret: DSNReturn? = nil, envid: String? = nil, recipientDSN: [RecipientDSN] = []) {
        self.sender = sender
        self.recipients = recipients
        self.size = size
        self.bodyType = bodyType
        self.smtputf8 = smtputf8
        self.ret = ret
        self.envid = envid
        self.recipientDSN = recipientDSN
    }
}

/// What the next hop said to one transaction.
public struct TransactionOutcome: Equatable, Sendable {
    public var mailReply: Reply
    /// One per recipient, nil if never sent (or, with pipelining, sent after a refused MAIL).
    public var recipientReplies: [Reply?]
    /// The reply to DATA if it was not 354, else the reply to the end of data; nil if DATA was not
    /// reached (MAIL refused, or no recipient accepted).
    public var dataReply: Reply?
    /// What became of an 8BITMIME message at a next hop without 8BITMIME: nil when nothing was needed.
    public var sevenBit: SevenBitConversion?
    /// Refused here, before MAIL: nothing was sent, and the reply is Tern's own, not the next hop's.
    public var refusedHere = false
    /// Refused here because this next hop lacks what the message needs (BINARYMIME, or REQUIRETLS
    /// under verified TLS): another host of the same destination may have it.
    public var thisHostOnly = false

    public init(mailReply: Reply, recipientReplies: [Reply?], dataReply: Reply?) {
        self.mailReply = mailReply
        self.recipientReplies = recipientReplies
        self.dataReply = dataReply
    }

    /// The final word for recipient i: its RCPT reply if that failed, else the DATA/end-of-data reply,
    /// else the MAIL reply.
    public func result(forRecipient i: Int) -> Reply {
        if let r = recipientReplies[i], !r.isPositive { return r }
        if let d = dataReply { return d }
        return mailReply
    }
}

/// An 8BITMIME message for a next hop that does not offer 8BITMIME (RFC 6152 §3).
public enum SevenBitConversion: Equatable, Sendable {
    /// Its 8-bit parts were re-encoded (quoted-printable or base64).
    case converted
    /// It could not be converted (not MIME, or 8-bit where MIME cannot encode it) and went as it was.
    case sentAsIs
}

public enum ClientAction: Equatable, Sendable {
    /// Bytes for the next hop.
    case send([UInt8])
    /// The message for the next hop exactly as given, then `endOfData` (".\r\n"). It needed no
    /// dot-stuffing and no line end repair (`isWireReady`), so it is the caller's own array, not a
    /// copy: write it as its own piece, together with the bytes of any `.send` just before it.
    case sendMessage([UInt8])
    /// The octets of one BDAT chunk, exactly as given and with nothing after them; the "BDAT n" line
    /// that counts them is in the `.send` just before. Like `.sendMessage`, usually the caller's own
    /// array: write it as its own piece.
    case sendChunk([UInt8])
    /// Greeting and EHLO (or HELO) done: give the session a transaction, or quit.
    case ready(NextHopCapabilities)
    /// A transaction is over; the session is ready again (another transaction may follow).
    case transactionFinished(TransactionOutcome)
    /// The connection is unusable for this attempt; the caller may try the next MX host. The reply is
    /// the server's if there was one. A `.close` follows (a polite QUIT, if any, comes just before).
    case sessionFailed(Reply?, String)
    /// Close the connection once the bytes before this action are written.
    case close
    /// The next hop said 220 to STARTTLS: begin the TLS handshake (client side) once the bytes before
    /// this action are written, then call `tlsEstablished`.
    case startTLS
}

extension ClientAction {
    /// What follows a `.sendMessage` on the wire.
    public static let endOfData: [UInt8] = [UInt8(ascii: "."), 13, 10]

    /// The bytes this action puts on the wire, in order, as the arrays the session holds (no copy):
    /// one piece for `.send` and `.sendChunk`, the message and `endOfData` for `.sendMessage`, none
    /// for the others.
    public var wirePieces: [[UInt8]] {
        switch self {
        case .send(let bytes): return [bytes]
        case .sendMessage(let message): return [message, Self.endOfData]
        case .sendChunk(let octets): return [octets]
        case .ready, .transactionFinished, .sessionFailed, .close, .startTLS: return []
        }
    }
}

/// A reply and the command it answered, for a caller that counts replies (`repliesSeen`).
public struct RepliedCommand: Equatable, Sendable {
    public enum Command: Equatable, Sendable {
        case greeting, ehlo, helo, startTLS, auth, rset, mail, rcpt, data
        /// The reply after the final "." (also the one after the lone "." sent following an
        /// unwanted 354, RFC 2920 §3.1), or to the BDAT chunk marked LAST.
        case dataEnd
        /// The reply to a BDAT chunk before the last.
        case bdat
    }
    public var command: Command
    public var code: Int

    init(_ expected: ClientSession.Expected, code: Int) {
        switch expected {
        case .greeting: command = .greeting
        case .ehlo: command = .ehlo
        case .helo: command = .helo
        case .rset: command = .rset
        case .mail: command = .mail
        case .rcpt: command = .rcpt
        case .data: command = .data
        case .dataEnd, .dotAfterRefusal, .bdat(last: true): command = .dataEnd
        case .bdat(last: false): command = .bdat
        case .startTLS: command = .startTLS
        case .auth, .authLoginUser, .authLoginPassword: command = .auth
        }
        self.code = code
    }

    public init(_ command: Command, _ code: Int) {
        self.command = command
        self.code = code
    }
}

public struct ClientSession {
    public enum Phase: Equatable, Sendable {
        case greeting   // waiting for the 220
        case hello      // EHLO or HELO sent
        case ready      // no transaction: send one or quit
        case mail       // RSET or MAIL sent, reply not yet in
        case rcpt       // waiting for RCPT replies
        case data       // waiting for the reply to DATA
        case dataEnd    // message sent (DATA or BDAT), waiting for the final reply
        case quitting   // QUIT sent and the connection closing; nothing more is read
        case startingTLS // 220 to STARTTLS received; waiting for the handshake
        case closed
    }

    /// The command a reply still to come answers, in the order sent.
    enum Expected: Equatable {
        case greeting, ehlo, helo, rset, mail, rcpt(Int), data, dataEnd
        case startTLS, auth, authLoginUser, authLoginPassword
        /// The reply to the lone "." sent after a 354 we did not want (RFC 2920 §3.1).
        case dotAfterRefusal
        /// The reply to a BDAT chunk; the one marked LAST ends the transaction.
        case bdat(last: Bool)
    }

    struct Transaction {
        var envelope: OutboundTransaction
        var message: [UInt8]
        var pipelined: Bool
        /// `message` is already in wire form (see `send(_:wireData:)`).
        var encoded = false
        /// Known to need no encoding (the caller checked): sent as it is without looking again.
        var wireReady = false
        /// Goes out with BDAT instead of DATA (decided when the transaction starts).
        var chunked = false
        /// BDAT without pipelining: the octets of `message` already sent, one chunk at a time.
        var chunkOffset = 0
        var sevenBit: SevenBitConversion?
        var mailReply: Reply?
        var recipientReplies: [Reply?]
        var dataReply: Reply?
        var mailAccepted: Bool { mailReply.map { $0.code < 300 } ?? false }
        var recipientAccepted: Bool { recipientReplies.contains { $0.map { $0.code < 300 } ?? false } }
    }

    /// Our name in EHLO/HELO.
    public let hostname: String
    public internal(set) var phase: Phase = .greeting
    /// Set once EHLO (or HELO) has been accepted.
    public internal(set) var capabilities: NextHopCapabilities?
    /// Transactions that reached the next hop (MAIL sent). From the second on, RSET goes first.
    public private(set) var transactionsStarted = 0
    /// Pipeline when the next hop offers PIPELINING; false sends one command at a time regardless
    /// (a load generator measuring unpipelined clients).
    public var usePipelining = true
    /// Send with BDAT when the next hop offers CHUNKING; false always uses DATA (a next hop whose BDAT
    /// is broken, or a load generator measuring DATA).
    public var useChunking = true
    /// The largest BDAT chunk; nil sends the whole message as one chunk (what delivery does). A load
    /// generator sets it to exercise a server's chunk handling.
    public var chunkSize: Int?
    /// When not nil, every reply is appended as it arrives, with the command it answers, whatever
    /// becomes of the transaction or the session afterwards (tern blast counts them; the caller
    /// empties it). Nil, the default, costs delivery one check per reply.
    public var repliesSeen: [RepliedCommand]?

    var parser: ReplyParser
    /// STARTTLS and AUTH settings and progress (ClientSession+Security.swift).
    public let tlsMode: ClientTLSMode
    let credentials: ClientCredentials?
    /// Under TLS (STARTTLS succeeded and `tlsEstablished` was called).
    public internal(set) var tlsActive = false
    /// AUTH succeeded.
    public internal(set) var authenticated = false
    /// The TLS session's certificate was verified (`tlsEstablished(peerVerified:)`).
    public internal(set) var peerVerified = false
    /// What the EHLO reply offered, kept while STARTTLS or AUTH run before the session is ready.
    var offered: NextHopCapabilities?
    var expected: [Expected] = [.greeting]
    var expectedHead = 0
    var current: Transaction?
    var actions: [ClientAction] = []
    var output: [UInt8] = []

    public init(hostname: String, maxReplyLineLength: Int = 4096, maxReplyLines: Int = 100,
                tls: ClientTLSMode = .none, credentials: ClientCredentials? = nil) {
        self.hostname = hostname
        parser = ReplyParser(maxLineLength: maxReplyLineLength, maxLines: maxReplyLines)
        tlsMode = tls
        self.credentials = credentials
    }

    // MARK: - Events

    /// Bytes from the next hop. Each reply is handled as soon as it is complete, so the actions do not
    /// depend on how the bytes were split.
    public mutating func receive(_ bytes: UnsafeRawBufferPointer) -> [ClientAction] {
        guard phase != .closed && phase != .quitting && phase != .startingTLS else { return [] }
        parser.append(bytes)
        while phase != .closed && phase != .quitting && phase != .startingTLS {
            let reply: Reply?
            do {
                reply = try parser.next()
            } catch {
                failSession(nil, "the next hop sent something that is not an SMTP reply: \(error)")
                break
            }
            guard let reply else { break }
            handle(reply)
        }
        return takeActions()
    }

    /// Convenience for tests and tools.
    public mutating func receive(_ bytes: [UInt8]) -> [ClientAction] {
        bytes.withUnsafeBytes { receive($0) }
    }

    /// Starts a transaction; ignored unless the session is `.ready`. The message bytes are what the
    /// spool holds: CRLF lines, not dot-stuffed, no final ".". After the 354 they go out as
    /// `.sendMessage(message)` when they need no encoding, else encoded, as `.send`.
    /// `wireReady`: the caller knows `isWireReady(message)` (the receiving side saw every line), so it
    /// is not checked again.
    public mutating func send(_ t: OutboundTransaction, message: [UInt8], wireReady: Bool = false) -> [ClientAction] {
        assert(!wireReady || isWireReady(message), "a message said to be wire-ready is not")
        return start(t, message: message, encoded: false, wireReady: wireReady)
    }

    /// Like `send(_:message:)` for an 8BITMIME message the caller already converted for a next hop
    /// without 8BITMIME (`sevenBitMessage`, off the loop for a large one): `sevenBit` says what became
    /// of it, and it is not converted again.
    public mutating func send(_ t: OutboundTransaction, converted message: [UInt8], sevenBit: SevenBitConversion?)
        -> [ClientAction] {
        start(t, message: message, encoded: false, sevenBit: .some(sevenBit))
    }

    /// Like `send(_:message:)` with the message already as `encodeOutboundData` makes it (CRLF lines,
    /// dot-stuffed, ending in ".\r\n"), so a sender of many copies of one message encodes it once.
    public mutating func send(_ t: OutboundTransaction, wireData: [UInt8]) -> [ClientAction] {
        start(t, message: wireData, encoded: true)
    }

    mutating func start(_ t: OutboundTransaction, message: [UInt8], encoded: Bool, wireReady: Bool = false,
                        sevenBit decided: SevenBitConversion?? = nil) -> [ClientAction] {
        guard phase == .ready, current == nil, let caps = capabilities else { return [] }
        let hostLacks = hostRefusal(t, caps)
        if let refusal = Self.refusalBeforeMail(t, caps) ?? hostLacks {
            var outcome = TransactionOutcome(
                mailReply: refusal, recipientReplies: Array(repeating: nil, count: t.recipients.count),
                dataReply: nil)
            outcome.refusedHere = true
            outcome.thisHostOnly = hostLacks != nil && refusal == hostLacks
            emit(.transactionFinished(outcome))
            return takeActions()
        }
        let pipelined = caps.pipelining && usePipelining
        var message = message, wireReady = wireReady
        var sevenBit: SevenBitConversion?
        if let decided {
            sevenBit = decided
        } else if !encoded, Self.needsSevenBit(t, caps) {
            let result = convertToSevenBit(message)
            sevenBit = result.conversion
            if sevenBit == .converted {
                message = result.message
                wireReady = false
            }
        }
        current = Transaction(envelope: t, message: message, pipelined: pipelined, mailReply: nil,
                              recipientReplies: Array(repeating: nil, count: t.recipients.count), dataReply: nil)
        current!.encoded = encoded
        current!.wireReady = wireReady
        current!.sevenBit = sevenBit
        // Wire data is dot-stuffed and ends in ".": that form only DATA can carry. BINARYMIME only BDAT
        // can carry (refusalBeforeMail made sure the next hop offers it), whatever useChunking says.
        current!.chunked = t.isBinary || (caps.chunking && useChunking && !encoded)
        let reusing = transactionsStarted > 0
        transactionsStarted += 1
        if reusing {
            command("RSET")
            expect(.rset)
        }
        if pipelined {
            // RFC 2920 §3.1: the whole group in one write, DATA last.
            sendMail()
            for i in t.recipients.indices { sendRecipient(i) }
            if !current!.chunked {
                command("DATA")
                expect(.data)
            }
        } else if !reusing {
            sendMail()
        }
        updatePhase()
        return takeActions()
    }

    /// Ends the connection: QUIT if nothing is in flight, then close. Does not wait for the 221
    /// (nothing depends on it; Postfix's smtp_skip_quit_response does the same).
    public mutating func quit() -> [ClientAction] {
        switch phase {
        case .closed, .quitting:
            return []
        case .ready, .hello:
            command("QUIT")
            phase = .quitting
        case .greeting, .mail, .rcpt, .data, .dataEnd, .startingTLS:
            // Before the greeting QUIT is out of turn; after a pipelined DATA it could be message text.
            phase = .closed
        }
        discardState()
        emit(.close)
        return takeActions()
    }

    /// The caller's timer for the current phase ran out.
    public mutating func timedOut() -> [ClientAction] {
        guard phase != .closed && phase != .quitting else { return [] }
        let why: String
        switch currentExpected {
        case nil: why = "timed out while idle"
        case .greeting: why = "timed out waiting for the greeting"
        case let e: why = "timed out waiting for the reply to \(describe(e))"
        }
        failSession(nil, why)
        return takeActions()
    }

    // MARK: - Replies

    mutating func handle(_ r: Reply) {
        if repliesSeen != nil, expectedHead < expected.count {
            repliesSeen!.append(RepliedCommand(expected[expectedHead], code: r.code))
        }
        // RFC 5321 §3.8: 421 may come at any time; the server closes, no QUIT.
        if r.code == 421 {
            return failSession(r, "the next hop is closing the connection (421)")
        }
        guard expectedHead < expected.count else {
            return failSession(r, "reply \(r.code) while no command was outstanding")
        }
        let what = expected[expectedHead]
        expectedHead += 1
        if expectedHead == expected.count {
            expected.removeAll(keepingCapacity: true)
            expectedHead = 0
        }
        let positive = r.code < 300
        let negative = r.code >= 400

        switch what {
        case .greeting:
            if r.code == 220 {
                command("EHLO \(hostname)")
                expect(.ehlo)
            } else if negative {
                return failSession(r, "the next hop refused the connection (\(r.code))", quit: true)
            } else {
                return unexpected(r, what)
            }

        case .ehlo:
            if positive {
                afterHello(NextHopCapabilities(ehloReply: r))
            } else if r.code >= 500 && !tlsActive {
                command("HELO \(hostname)")
                expect(.helo)
            } else if negative {
                return failSession(r, "the next hop refused EHLO (\(r.code))", quit: true)
            } else {
                return unexpected(r, what)
            }

        case .helo:
            if positive {
                afterHello(NextHopCapabilities())
            } else if negative {
                return failSession(r, "the next hop refused EHLO and HELO (\(r.code))", quit: true)
            } else {
                return unexpected(r, what)
            }

        case .rset:
            guard positive else {
                return failSession(r, "the next hop refused RSET (\(r.code))")
            }
            if !current!.pipelined { sendMail() }

        case .mail:
            guard positive || negative else { return unexpected(r, what) }
            current!.mailReply = r
            if !current!.pipelined {
                if positive { sendRecipient(0) } else { return finishTransaction() }
            }

        case .rcpt(let i):
            guard positive || negative else { return unexpected(r, what) }
            // After a refused MAIL (pipelined), the RCPT replies mean nothing: "503 need MAIL".
            if current!.mailAccepted { current!.recipientReplies[i] = r }
            let last = i + 1 == current!.envelope.recipients.count
            if !current!.pipelined && !last {
                sendRecipient(i + 1)
            } else if current!.chunked && last {
                // Pipelined or not, BDAT goes only after every RCPT reply, and only if one was 2xx.
                guard current!.mailAccepted && current!.recipientAccepted else { return finishTransaction() }
                sendChunks()
            } else if !current!.pipelined {
                guard current!.recipientAccepted else { return finishTransaction() }
                command("DATA")
                expect(.data)
            }

        case .data:
            let wanted = current!.mailAccepted && current!.recipientAccepted
            if r.code == 354 {
                if wanted {
                    // The message goes out as its own piece after the commands so far, never appended
                    // to `output`: that would copy it once more.
                    let message = current!.message
                    current!.message = []
                    if current!.encoded {
                        emit(.send(message))
                    } else if current!.wireReady || isWireReady(message) {
                        emit(.sendMessage(message))  // the usual case: no copy at all
                    } else {
                        emit(.send(encodeOutboundData(message)))
                    }
                    expect(.dataEnd)
                } else {
                    // RFC 2920 §3.1: a pipelined DATA may get 354 with no valid recipient. Send an
                    // empty message, whose reply we ignore; nothing is delivered by it.
                    output += [UInt8(ascii: "."), 13, 10]
                    expect(.dotAfterRefusal)
                }
            } else if negative {
                if wanted { current!.dataReply = r }
                return finishTransaction()
            } else {
                return unexpected(r, what)
            }

        case .dataEnd:
            guard positive || negative else { return unexpected(r, what) }
            current!.dataReply = r
            return finishTransaction()

        case .dotAfterRefusal:
            return finishTransaction()

        case .bdat(let last):
            guard positive || negative else { return unexpected(r, what) }
            // The first refused chunk is the transaction's answer; pipelined chunks after it are
            // refused too (RFC 3030 §2: the server discards the rest of the transaction).
            if negative && current!.dataReply == nil { current!.dataReply = r }
            if last {
                if current!.dataReply == nil { current!.dataReply = r }
                return finishTransaction()
            }
            if !current!.pipelined {
                // One chunk at a time: the next after this one's 250; after a refusal, nothing more.
                guard positive else { return finishTransaction() }
                sendChunks()
            }

        case .startTLS, .auth, .authLoginUser, .authLoginPassword:
            handleSecurityReply(r, what)
        }
        updatePhase()
    }

    mutating func becomeReady(_ caps: NextHopCapabilities) {
        capabilities = caps
        phase = .ready
        emit(.ready(caps))
    }

    mutating func finishTransaction() {
        let t = current!
        current = nil
        var outcome = TransactionOutcome(
            mailReply: t.mailReply!,
            recipientReplies: t.mailAccepted ? t.recipientReplies : Array(repeating: nil, count: t.recipientReplies.count),
            dataReply: t.dataReply)
        outcome.sevenBit = t.sevenBit
        phase = .ready
        emit(.transactionFinished(outcome))
    }

    mutating func unexpected(_ r: Reply, _ what: Expected) {
        failSession(r, "unexpected reply \(r.code) to \(describe(what))")
    }

    /// Gives up the connection. QUIT only when the server refused us and nothing is in flight; it goes
    /// before .sessionFailed so that a caller who stops reading actions there has already written it.
    mutating func failSession(_ r: Reply?, _ why: String, quit: Bool = false) {
        if quit { command("QUIT") }
        emit(.sessionFailed(r, why))
        phase = .closed
        discardState()
        emit(.close)
    }

    mutating func discardState() {
        current = nil
        expected = []
        expectedHead = 0
    }

    // MARK: - Commands

    /// A synthetic refusal for a transaction that must not reach the next hop, or nil.
    static func refusalBeforeMail(_ t: OutboundTransaction, _ caps: NextHopCapabilities) -> Reply? {
        if t.recipients.isEmpty {
            return Reply(554, "5.5.1", "No recipients in the transaction")
        }
        // A CR or LF in an address would let the spool inject commands; no valid address has one.
        let hasControl = { (s: String) in s.utf8.contains { $0 < 0x20 || $0 == 0x7F } }
        if hasControl(t.sender) || t.recipients.contains(where: hasControl) {
            return Reply(553, "5.1.3", "Control character in an envelope address")
        }
        // ENVID and ORCPT were xtext when they arrived; anything else must not reach a command line.
        let notXtext = { (s: String) in s.utf8.contains { $0 <= 32 || $0 >= 127 } }
        if t.envid.map(notXtext) == true || t.recipientDSN.contains(where: { $0.orcpt.map(notXtext) == true }) {
            return Reply(553, "5.5.4", "ENVID or ORCPT is not xtext")
        }
        // RFC 6531 §3.2: no downgrade; the sender gets a permanent failure.
        if t.smtputf8 && !caps.smtputf8 {
            return Reply(553, "5.6.7", "The next hop does not support SMTPUTF8, which this message requires")
        }
        // RFC 1870 §6: a client should not send a message larger than the advertised limit.
        if let limit = caps.size, limit > 0, t.size > limit {
            return Reply(552, "5.3.4", "Message size \(t.size) exceeds the next hop's limit of \(limit) bytes")
        }
        return nil
    }

    /// An 8BITMIME message for a next hop without 8BITMIME goes as 7-bit MIME (RFC 6152 §3).
    public static func needsSevenBit(_ t: OutboundTransaction, _ caps: NextHopCapabilities) -> Bool {
        !caps.eightBitMIME && t.bodyType?.uppercased() == "8BITMIME"
    }

    /// What this next hop lacks that the message needs, where another host of the destination may have
    /// it (the outcome says `thisHostOnly`):
    /// - RFC 3030 §3: a BINARYMIME body goes only to a next hop that offers BINARYMIME and CHUNKING; it
    ///   has no 7-bit or 8-bit form to fall back to. Otherwise 554 5.6.3.
    /// - RFC 8689 §4.2.1: a REQUIRETLS message goes only under TLS, with a certificate that was
    ///   verified, to a next hop that offers REQUIRETLS. Otherwise 550 5.7.30 (RFC 8689 §6).
    func hostRefusal(_ t: OutboundTransaction, _ caps: NextHopCapabilities) -> Reply? {
        if t.isBinary && !(caps.binaryMIME && caps.chunking) {
            return Reply(554, "5.6.3", "The next hop does not support BINARYMIME, which this message requires")
        }
        guard t.requireTLS else { return nil }
        let why: String
        if !tlsActive {
            why = "the connection is not encrypted"
        } else if !peerVerified {
            why = "the next hop's certificate was not verified"
        } else if !caps.requireTLS {
            why = "the next hop does not offer REQUIRETLS"
        } else {
            return nil
        }
        return Reply(550, "5.7.30", "REQUIRETLS support required: \(why)")
    }

    mutating func sendMail() {
        let t = current!.envelope
        let caps = capabilities!
        var line = "MAIL FROM:<\(t.sender)>"
        if caps.size != nil { line += " SIZE=\(t.size)" }
        if caps.eightBitMIME, t.bodyType?.uppercased() == "8BITMIME" { line += " BODY=8BITMIME" }
        if t.isBinary { line += " BODY=BINARYMIME" }  // only reached when the next hop offers it
        if t.smtputf8 { line += " SMTPUTF8" }  // only reached when the next hop offers it
        if t.requireTLS { line += " REQUIRETLS" }  // likewise
        if caps.dsn {
            if let ret = t.ret { line += " RET=\(ret.rawValue)" }
            if let envid = t.envid { line += " ENVID=\(envid)" }
        }
        command(line)
        expect(.mail)
    }

    mutating func sendRecipient(_ i: Int) {
        let t = current!.envelope
        var line = "RCPT TO:<\(t.recipients[i])>"
        if capabilities!.dsn && i < t.recipientDSN.count {
            if let notify = t.recipientDSN[i].notify { line += " NOTIFY=\(notify.keyword)" }
            if let orcpt = t.recipientDSN[i].orcpt { line += " ORCPT=\(orcpt)" }
        }
        command(line)
        expect(.rcpt(i))
    }

    /// The message with BDAT (RFC 3030): chunks of at most `chunkSize` octets, the last marked LAST.
    /// Pipelined, every chunk at once; otherwise the next chunk, sent after the previous one's 250.
    /// The bytes go out as they are when every line ends in CRLF (leading dots need no doubling);
    /// otherwise bare CR and LF become CRLF first, as for DATA, so no next hop reads a line end we did
    /// not mean.
    mutating func sendChunks() {
        if current!.chunkOffset == 0 && !current!.wireReady && !current!.envelope.isBinary
            && !hasCanonicalLineEnds(current!.message) {
            current!.message = canonicalizeLineEnds(current!.message)
        }
        let total = current!.message.count
        let size = max(1, chunkSize ?? total)
        repeat {
            let start = current!.chunkOffset
            let end = total - start <= size ? total : start + size
            let last = end == total
            command(last ? "BDAT \(end - start) LAST" : "BDAT \(end - start)")
            if start == 0 && last {
                // The usual case, one chunk: the caller's own array goes out, no copy.
                if total > 0 { emit(.sendChunk(current!.message)) }
                current!.message = []
            } else {
                emit(.sendChunk(Array(current!.message[start..<end])))
            }
            current!.chunkOffset = end
            expect(.bdat(last: last))
            if last { current!.message = [] }
        } while current!.pipelined && current!.chunkOffset < total
    }

    mutating func command(_ line: String) {
        output += line.utf8
        output += [13, 10]
    }

    mutating func expect(_ e: Expected) {
        expected.append(e)
    }

    var currentExpected: Expected? {
        expectedHead < expected.count ? expected[expectedHead] : nil
    }

    mutating func updatePhase() {
        guard phase != .closed && phase != .quitting && phase != .startingTLS else { return }
        switch currentExpected {
        case nil: phase = capabilities == nil ? .greeting : .ready
        case .greeting: phase = .greeting
        case .ehlo, .helo, .startTLS, .auth, .authLoginUser, .authLoginPassword: phase = .hello
        case .rset, .mail: phase = .mail
        case .rcpt: phase = .rcpt
        case .data: phase = .data
        case .dataEnd, .dotAfterRefusal, .bdat: phase = .dataEnd
        }
    }

    func describe(_ e: Expected?) -> String {
        switch e {
        case nil: return "nothing"
        case .greeting: return "the greeting"
        case .ehlo: return "EHLO"
        case .helo: return "HELO"
        case .rset: return "RSET"
        case .mail: return "MAIL"
        case .rcpt(let i): return "RCPT \(i + 1)"
        case .data: return "DATA"
        case .dataEnd, .dotAfterRefusal: return "the end of data"
        case .bdat(last: true): return "BDAT LAST"
        case .bdat(last: false): return "BDAT"
        case .startTLS: return "STARTTLS"
        case .auth, .authLoginUser, .authLoginPassword: return "AUTH"
        }
    }

    // MARK: - Actions

    /// Actions keep their order relative to bytes: bytes so far go out first.
    mutating func emit(_ action: ClientAction) {
        flushOutput()
        actions.append(action)
    }

    mutating func flushOutput() {
        if !output.isEmpty {
            actions.append(.send(output))
            output = []
        }
    }

    mutating func takeActions() -> [ClientAction] {
        flushOutput()
        let a = actions
        actions = []
        return a
    }
}
