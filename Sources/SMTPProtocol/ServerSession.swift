// The server side of one SMTP session as a state machine: bytes and events in, actions out.
// No sockets, no files, no clock of its own, so every path is tested byte by byte.
//
// Input is framed into command lines that end in CRLF only (RFC 5321 §2.3.8); a bare CR or LF is
// never a line end. Pipelined commands (RFC 2920) are answered in order however the bytes are split.
// While a message is being made durable the session reads no further input, so a reply can never
// overtake the "250 queued" that comes before it.
//
// Reply codes (RFC 5321 §4.2, enhanced codes RFC 3463; none on the greeting, HELO and EHLO replies,
// RFC 2034 §3):
//   503 5.5.1 out of sequence         500 5.5.2 unknown command, line too long, bare CR/LF
//   501 5.5.4 bad syntax / parameter  555 5.5.4 unknown MAIL/RCPT parameter
//   552 5.3.4 message too big         452 4.5.3 too many recipients (no error up to the overshoot)
//   501 5.5.2 HELO/EHLO name with a control character or invalid UTF-8
//   554 5.7.1 relay access denied     554 5.4.6 too many Received headers (mail loop)
//   554 5.6.0 message refused for its content: bare CR or LF, NUL, a line over max_line_length
//   553 5.6.7 non-ASCII address without SMTPUTF8 (RFC 6531 §3.7.4)
//   451 4.3.0 the message could not be stored
//   421 4.7.0 too many errors / 421 4.4.2 timeout / 421 4.3.2 shutting down, then close
//
// Hooks (SessionHooks.swift, set only by `tern sink`) may delay or replace the positive replies at
// the greeting, MAIL, RCPT, DATA and the end of DATA, or drop the connection mid-DATA.
// STARTTLS (RFC 3207) and AUTH (RFC 4954) are in ServerSession+Security.swift. Every refusal is also
// a `.refused` action (ServerSession+Refusal.swift), which the caller counts and logs.

public struct ServerConfiguration: Sendable {
    public var hostname: String
    public var maxMessageSize: Int
    public var maxRecipients: Int
    /// RCPT commands past max_recipients answered 452 without counting towards max_errors, as
    /// Postfix's smtpd_recipient_overshoot_limit: the client sends the rest in another transaction
    /// (RFC 5321 §4.5.3.1.8).
    public var recipientOvershootLimit: Int = 1000
    public var maxErrors: Int
    public var maxLineLength: Int
    public var maxHops: Int
    public var keepBcc: Bool
    public var vrfy: Bool
    public var expn: Bool
    public var policy: RelayPolicy
    /// Extra EHLO keywords advertised after the built-in ones.
    public var extraExtensions: [String]
    /// Keywords advertised in the EHLO reply (all by default; `tern sink` can switch them off).
    public var extensions: AdvertisedExtensions = .all
    /// A certificate is loaded: offer STARTTLS (RFC 3207) until the session is under TLS.
    public var startTLS = false
    /// A users file is loaded: AUTH PLAIN and LOGIN are offered under TLS (or in the clear to a client
    /// whose PeerInfo allows it).
    public var authEnabled = false
    /// A submission listener (RFC 6409): AUTH before MAIL, 530 5.7.0 otherwise.
    public var requireAuth = false
    /// Asked about each recipient the policy accepted; nil: none is refused after the policy.
    public var recipientCheck: (any RecipientCheck)?

    public init(hostname: String, maxMessageSize: Int = 52_428_800, maxRecipients: Int = 1000, maxErrors: Int = 20,
                maxLineLength: Int = 1000, maxHops: Int = 50, keepBcc: Bool = false, vrfy: Bool = false,
                expn: Bool = false, policy: RelayPolicy? = nil, extraExtensions: [String] = []) {
        self.hostname = hostname
        self.maxMessageSize = maxMessageSize
        self.maxRecipients = maxRecipients
        self.maxErrors = maxErrors
        self.maxLineLength = maxLineLength
        self.maxHops = maxHops
        self.keepBcc = keepBcc
        self.vrfy = vrfy
        self.expn = expn
        self.policy = policy ?? RelayPolicy(hostname: hostname)
        self.extraExtensions = extraExtensions
    }
}

/// What the session knows of its peer.
public struct PeerInfo: Sendable, Equatable {
    public var ip: String
    /// In relay_networks: may relay to any domain.
    public var trusted: Bool
    public var reverseName: String?
    /// AUTH may be offered without TLS (a loopback client, when the config allows it).
    public var cleartextAuthAllowed: Bool
    public init(ip: String, trusted: Bool, reverseName: String? = nil, cleartextAuthAllowed: Bool = false) {
        self.ip = ip
        self.trusted = trusted
        self.reverseName = reverseName
        self.cleartextAuthAllowed = cleartextAuthAllowed
    }
}

/// The envelope of a message whose data is about to arrive.
public struct MessageStart: Sendable, Equatable {
    public var sender: MailPath
    /// Final recipient addresses, after alias expansion, without duplicates.
    public var recipients: [String]
    public var helo: String
    /// "SMTP", "ESMTP" or "UTF8SMTP", for the Received header.
    public var protocolName: String
    public var bodyType: String?
    public var smtputf8: Bool
    /// MT-PRIORITY (RFC 6710, -9...9) as given by a trusted client; nil when absent or not honoured.
    public var priority: Int?
    /// The TLS session, "TLSv1.3 with cipher … (256/256 bits)", for the Received header.
    public var tls: String? = nil
    /// The user the client authenticated as (RFC 4954).
    public var authenticatedUser: String? = nil
    /// RET= and ENVID= (RFC 3461), ENVID as it arrived (xtext); nil when not given.
    public var ret: DSNReturn? = nil
    public var envid: String? = nil
    /// NOTIFY= and ORCPT= of the RCPT each recipient came from: empty when no RCPT carried either,
    /// else one per recipient, in the order of `recipients`.
    public var recipientDSN: [RecipientDSN] = []
    /// MAIL FROM … REQUIRETLS (RFC 8689): relay only over verified TLS to next hops that offer it.
    public var requireTLS = false
    /// Which message of the session this is (1, 2, …): `prefixMessageData` checks it, since the
    /// caller may act on this start after the session has moved on to a later message.
    public var serial = 0
}

public enum ServerAction: Equatable, Sendable {
    /// Bytes for the client.
    case reply([UInt8])
    /// A message begins: open a spool file.
    case beginMessage(MessageStart)
    /// Decoded message bytes, in order, to append to the spool file.
    case messageData([UInt8])
    /// End of data, accepted: make the message durable, then call `commitFinished`.
    case commitMessage
    /// The message was refused: discard what was written.
    case abortMessage
    /// Close the connection once the replies before this action are written.
    case close
    /// Hold the actions that follow this long (only with hooks: a delayed reply, a tarpit).
    case delay(milliseconds: Int)
    /// Close the connection at once, without a reply (only with hooks: a connection dropped mid-DATA).
    case drop
    /// The reply just sent refused a command (or ended the session): count it, log it if `logged`.
    case refused(Refusal)
    /// Begin the TLS handshake once the replies before this action are written; then call
    /// `tlsEstablished`. Nothing read in the clear after the STARTTLS line reaches the session.
    case startTLS
    /// Check these credentials (off the loop thread), then call `authFinished`.
    case authenticate(user: String, password: String)
}

/// The transaction (RFC 5321 §3.3): what MAIL and RCPT gathered, from MAIL to the end of DATA.
struct Transaction {
    var sender: MailPath
    /// Final recipient addresses, after alias expansion, without duplicates.
    var recipients: [String] = []
    var acceptedRcptCommands = 0
    var rcptCommands = 0
    /// RCPT commands past max_recipients in this transaction.
    var overshoot = 0
    var bodyType: String?
    var smtputf8 = false
    var priority: Int?
    var ret: DSNReturn?
    var envid: String?
    var requireTLS = false
    /// Empty until a RCPT carries NOTIFY or ORCPT; then one per recipient (MessageStart.recipientDSN).
    var recipientDSN: [RecipientDSN] = []

    /// BODY=BINARYMIME: BDAT only, and the body is taken as octets.
    var isBinary: Bool { bodyType == "BINARYMIME" }

    /// Adds a recipient once, with the DSN parameters of the RCPT it came from.
    mutating func add(_ address: String, dsn: RecipientDSN) {
        guard !recipients.contains(address) else { return }
        if !dsn.isEmpty || !recipientDSN.isEmpty {
            // The recipients before the first with parameters get none.
            recipientDSN += Array(repeating: RecipientDSN(), count: recipients.count - recipientDSN.count)
            recipientDSN.append(dsn)
        }
        recipients.append(address)
    }
}

public struct ServerSession {
    /// Where the session stands, each phase with what it owns (swift-nio's state-machine style).
    /// A payload is changed by taking it out and putting it back (`.modifying` in between), so the
    /// decoder's buffers and the recipient list stay uniquely referenced and are never copied.
    enum State {
        case connected
        case ready
        case mail(Transaction)
        /// `dropInData`: a hook asked to drop the connection once message data arrives.
        case data(Transaction, DataDecoder, dropInData: Bool)
        /// BDAT (RFC 3030, ServerSession+Chunking.swift): reading a chunk's octets.
        case chunk(Transaction, DataDecoder, ChunkRead)
        /// BDAT: a chunk was read and answered; the next is announced by another BDAT command.
        case betweenChunks(Transaction, DataDecoder)
        /// The octets of a refused BDAT chunk, read and dropped; then the session is back in `after`.
        indirect case discarding(remaining: Int, after: State)
        case committing(Transaction)
        case startingTLS
        case authChallenge(SASLExchange)
        /// The user whose credentials are being checked.
        case authenticating(user: String)
        case closed
        /// Only while a payload is out being changed; never seen outside one method.
        case modifying
    }

    public enum Phase: Equatable, Sendable {
        case connected      // greeting sent, no HELO/EHLO yet
        case ready          // HELO/EHLO done, no transaction
        case mail           // MAIL accepted
        case data           // reading message data
        case committing     // waiting for the spool
        case startingTLS    // 220 to STARTTLS sent; waiting for the handshake
        case authChallenge  // 334 sent; the next line is a SASL response
        case authenticating // waiting for the credentials check
        case closed
    }

    public let config: ServerConfiguration
    public private(set) var client: PeerInfo
    var state = State.connected
    public var phase: Phase {
        switch state {
        case .connected: return .connected
        case .ready: return .ready
        case .mail: return .mail
        case .data, .chunk, .discarding: return .data
        case .betweenChunks: return .mail
        case .committing: return .committing
        case .startingTLS: return .startingTLS
        case .authChallenge: return .authChallenge
        case .authenticating: return .authenticating
        case .closed: return .closed
        case .modifying: preconditionFailure("ServerSession's state read while being modified")
        }
    }
    public internal(set) var helo: String?
    public internal(set) var esmtp = false
    public private(set) var errorCount = 0
    /// Under TLS (after STARTTLS, or on an implicit-TLS listener).
    public internal(set) var tlsActive = false
    /// The negotiated TLS session, once known.
    public internal(set) var tlsSummary: String?
    public internal(set) var authenticatedUser: String?
    /// MAIL FROM addresses the authenticated user may use; nil means any.
    public internal(set) var allowedSenders: [String]?

    /// The transaction under way (MAIL accepted, up to the end of its commit), if any.
    var transaction: Transaction? {
        switch state {
        case .mail(let t), .data(let t, _, _), .committing(let t), .chunk(let t, _, _), .betweenChunks(let t, _): return t
        default: return nil
        }
    }

    /// A message has begun (its queue id given, `.beginMessage` emitted) and is neither committed nor
    /// aborted: in DATA, or in or between BDAT chunks.
    public var hasOpenMessage: Bool {
        switch state {
        case .data, .chunk, .betweenChunks: return true
        default: return false
        }
    }

    /// The DATA buffer: decoded message bytes not yet handed on. A field of its own, outside `state`,
    /// so the hot path appends to it in place (it also keeps its capacity until the next message).
    var dataOut: [UInt8] = []
    /// Some of this message's data was handed on already (`.messageData`).
    var messageDataEmitted = false
    /// Messages begun in this session (DATA accepted): the serial of the latest MessageStart.
    var messagesBegun = 0
    /// A BDAT chunk of the transaction was refused: the BDATs the client pipelined behind it are read,
    /// dropped and answered 503 without counting as errors (RFC 3030 §2), until RSET, MAIL or EHLO.
    var chunkRefused = false
    /// Input not yet handled: a partial line, or commands pipelined behind a message being committed.
    var inbox: [UInt8] = []
    /// Set while an over-long command line is being skipped up to its CRLF.
    var discardingLongLine = false
    /// Command lines (and SASL responses) read so far, complete or refused.
    public private(set) var linesRead = 0
    /// Part of a command line has arrived, not its CRLF: the session's command deadline runs from the
    /// line's first byte, so a client dripping a byte at a time cannot hold a connection forever.
    public var hasPartialLine: Bool {
        switch phase {
        case .connected, .ready, .mail, .authChallenge: return !inbox.isEmpty || discardingLongLine
        default: return false
        }
    }
    /// The command being handled (or last handled), for refusals: "RCPT", "END-OF-MESSAGE", …
    var currentCommand = "CONNECT"
    /// Reply bytes made since the last `takeActions`: past `maxRepliesPerCall` no further command is
    /// read in this call.
    var replyBytesThisCall = 0
    /// Complete command lines wait in the inbox because this call made `maxRepliesPerCall` of replies:
    /// the caller sends those, reads no more input, and calls `continueInput` (when the client takes
    /// its replies). A client pipelining thousands of NOOPs to a socket it never reads thus holds at
    /// most one read of input and one call's replies, not a reply for every line it sent.
    public var hasBacklog: Bool { stoppedAtReplyCap && !inbox.isEmpty && phase != .closed }
    var stoppedAtReplyCap = false
    public static let maxRepliesPerCall = 32 * 1024

    var actions: [ServerAction] = []
    var replyBytes: [UInt8] = []

    /// Fault injection for `tern sink`; nil in the relay.
    public var hooks: (any SessionHooks)?
    /// The greeting was a refusal: every command but QUIT gets 503 (RFC 5321 §3.1).
    var refusedAtGreeting = false

    static let maxCommandLine = 512  // octets including CRLF, RFC 5321 §4.5.3.1.4
    /// Decoded data is handed on in chunks of up to `dataChunk` bytes: a message that fits (nearly all)
    /// arrives whole, one array that the journal writes and delivery sends without joining pieces. The
    /// buffer doubles from `dataReserve` to `dataBuffer`; the chunk is a little smaller, so the few bytes
    /// the decoder holds back (a CR, a header line) never make it double again.
    public static let dataBuffer = 256 * 1024
    static let dataChunk = dataBuffer - 4096
    /// Reserved when message data arrives, not before: sessions outside DATA, and sessions in DATA whose
    /// reading the relay stopped, hold no buffer. 128 KiB, so that a message up to that size never grows
    /// it (a doubling copies what came so far); a smaller message leaves in an array of its own size at
    /// the end of DATA, so this is held only while DATA lasts.
    static let dataReserve = 128 * 1024
    /// What the DATA buffer reserves when data next arrives: `dataReserve` for a message's first bytes,
    /// `dataBuffer` once a chunk was handed on (the next is likely full too).
    var nextDataReserve = dataReserve

    /// `implicitTLS`: the connection is under TLS from its start (RFC 8314 submissions).
    public init(config: ServerConfiguration, client: PeerInfo, implicitTLS: Bool = false) {
        self.config = config
        self.client = client
        self.tlsActive = implicitTLS
    }

    /// Whether the caller should keep reading from the socket. False while committing (input waits
    /// in the kernel, which pushes back on the client) and after close.
    /// For the message being committed: it needs no dot-stuffing or line end repair to be sent on
    /// (no line of it started with a dot; bare CR and LF were refused), so delivery can skip the check.
    public private(set) var lastMessageIsWireReady = false
    /// The message just committed had "TLS-Required: No" and no REQUIRETLS (RFC 8689 §5).
    public private(set) var lastMessageTLSOptional = false
    /// The message just committed's Message-ID (DataDecoder.messageID), for events.
    public private(set) var lastMessageID: String?

    public var wantsInput: Bool { phase != .committing && phase != .authenticating && phase != .closed }

    public mutating func setReverseName(_ name: String?) { client.reverseName = name }

    // MARK: - Events

    /// The 220 greeting (RFC 5321 §4.3.1).
    public mutating func greeting() -> [ServerAction] {
        let verdict = consult(.greeting, recipients: [])
        if let refusal = verdict.reply {
            answerFault(refusal)
            if phase != .closed { refusedAtGreeting = true }
        } else {
            reply(Reply(220, nil, "\(config.hostname) ESMTP Tern"))
        }
        return takeActions()
    }

    /// Bytes from the client.
    public mutating func receive(_ bytes: UnsafeRawBufferPointer) -> [ServerAction] {
        guard phase != .closed else { return [] }
        stoppedAtReplyCap = false
        if inbox.isEmpty {
            let consumed = process(bytes)
            if consumed < bytes.count, phase != .closed {
                inbox.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[consumed...]))
            }
        } else {
            inbox.append(contentsOf: bytes)
            drainInbox()
        }
        flushDataOut(force: false)
        return takeActions()
    }

    /// Answers the commands left waiting by the reply cap (`hasBacklog`), again up to the cap.
    public mutating func continueInput() -> [ServerAction] {
        guard hasBacklog else { return [] }
        stoppedAtReplyCap = false
        drainInbox()
        flushDataOut(force: false)
        return takeActions()
    }

    /// Convenience for tests and tools.
    public mutating func receive(_ bytes: [UInt8]) -> [ServerAction] {
        bytes.withUnsafeBytes { receive($0) }
    }

    /// The spool finished (or failed) making the message durable.
    /// `signingFailed`: the message was not queued because it could not be DKIM-signed.
    public mutating func commitFinished(queueID: String?, signingFailed: Bool = false) -> [ServerAction] {
        guard phase == .committing else { return [] }
        if let queueID {
            reply(Reply(250, "2.0.0", "Ok: queued as \(queueID)"))
        } else if signingFailed {
            fail(refusal(Reply(451, "4.3.0", "Error: the message could not be signed, try again later"), .queueWriteError,
                         logged: true, command: "END-OF-MESSAGE", inMessage: true))
        } else {
            fail(refusal(Reply(451, "4.3.0", "Error: queue file write error, try again later"), .queueWriteError,
                         logged: true, command: "END-OF-MESSAGE", inMessage: true))
        }
        if case .committing = state { state = .ready }  // unless too many errors closed the session
        drainInbox()
        flushDataOut(force: false)
        return takeActions()
    }

    /// The idle timer ran out (RFC 5321 §4.5.3.2).
    public mutating func timedOut() -> [ServerAction] {
        guard phase != .closed, phase != .committing else { return [] }
        let r = Reply(421, "4.4.2", "\(config.hostname) Error: timeout exceeded")
        reply(r)
        emit(.refused(refusal(r, .timeout, logged: true, inMessage: hasOpenMessage)))
        close()
        return takeActions()
    }

    /// The server is stopping: tell the client to come back later.
    public mutating func shuttingDown() -> [ServerAction] {
        guard phase != .closed else { return [] }
        let r = Reply(421, "4.3.2", "\(config.hostname) Service shutting down, closing connection")
        reply(r)
        emit(.refused(refusal(r, .shuttingDown, inMessage: hasOpenMessage)))
        close()
        return takeActions()
    }

    // MARK: - Input

    mutating func drainInbox() {
        guard !inbox.isEmpty else { return }
        let consumed = inbox.withUnsafeBytes { process($0) }
        if phase == .closed {
            inbox = []
        } else {
            inbox.removeFirst(consumed)
        }
    }

    /// Handles as much of `buffer` as the current phase allows; returns the bytes consumed.
    mutating func process(_ buffer: UnsafeRawBufferPointer) -> Int {
        guard let base = buffer.baseAddress?.assumingMemoryBound(to: UInt8.self) else { return 0 }
        let count = buffer.count
        var offset = 0
        while offset < count {
            switch state {
            case .closed, .committing, .authenticating:
                return offset
            case .startingTLS:
                // RFC 3207 §4.2 and CVE-2011-0411: what follows STARTTLS in the clear is dropped.
                return count
            case .data(let transaction, var decoder, let dropInData):
                if dropInData {
                    dropConnection()
                    return count
                }
                state = .modifying  // the decoder is now referenced once: decoding changes it in place
                if dataOut.capacity == 0 { dataOut.reserveCapacity(nextDataReserve) }
                // No more input than the chunk has room for: it is handed on before it outgrows its buffer.
                let end = min(count, offset + max(Self.dataChunk - dataOut.count, 1))
                offset += decoder.decode(UnsafeRawBufferPointer(rebasing: buffer[offset..<end]), into: &dataOut)
                let finished = decoder.isFinished
                state = .data(transaction, decoder, dropInData: dropInData)
                if finished { endOfData() }
                flushDataOut(force: false)
            case .chunk(let transaction, var decoder, var chunk):
                if chunk.dropInData {
                    dropConnection()
                    return count
                }
                state = .modifying
                if dataOut.capacity == 0 { dataOut.reserveCapacity(nextDataReserve) }
                // All of the chunk's octets in this buffer, but no more than the data chunk has room for.
                let take = min(count - offset, chunk.remaining, max(Self.dataChunk - dataOut.count, 1))
                _ = decoder.decode(UnsafeRawBufferPointer(rebasing: buffer[offset..<(offset + take)]), into: &dataOut)
                offset += take
                chunk.remaining -= take
                state = .chunk(transaction, decoder, chunk)
                if chunk.remaining == 0 { endOfChunk() }
                flushDataOut(force: false)
            case .discarding(let remaining, let after):
                let take = min(count - offset, remaining)
                offset += take
                state = take == remaining ? after : .discarding(remaining: remaining - take, after: after)
            case .modifying:
                preconditionFailure("ServerSession's state read while being modified")
            case .connected, .ready, .mail, .betweenChunks, .authChallenge:
                guard let lf = findLF(base, from: offset, to: count) else {
                    // No complete line yet. Keep at most one command line's worth.
                    if count - offset >= commandLineLimit {
                        discardingLongLine = true
                        // Keep a trailing CR: its LF may arrive in the next read.
                        return base[count - 1] == 13 ? count - 1 : count
                    }
                    return offset
                }
                if replyBytesThisCall >= Self.maxRepliesPerCall {
                    stoppedAtReplyCap = true  // the rest when the client has taken these replies
                    return offset
                }
                let lineEnd = lf - 1  // index of the CR
                let start = offset
                offset = lf + 1
                linesRead += 1
                if discardingLongLine || lf + 1 - start > commandLineLimit {
                    discardingLongLine = false
                    currentCommand = "UNKNOWN"
                    // A line too long ends a SASL exchange: the next line is a command, not the password.
                    if case .authChallenge = state { state = .ready }
                    fail(Reply(500, "5.5.2", "Error: line too long"), .lineTooLong)
                } else {
                    let line = Array(UnsafeBufferPointer(start: base + start, count: lineEnd - start))
                    if case .authChallenge(let exchange) = state {
                        handleSASLResponse(line, exchange)
                    } else {
                        handleCommandLine(line)
                    }
                }
            }
        }
        return offset
    }

    /// The index of the next LF that follows a CR. Bare LFs are skipped: they are not line ends.
    func findLF(_ base: UnsafePointer<UInt8>, from: Int, to: Int) -> Int? {
        var i = from
        while i < to {
            guard let p = memchrLF(base + i, to - i) else { return nil }
            let j = p - base
            if j > from && base[j - 1] == 13 { return j }
            i = j + 1
        }
        return nil
    }

    // MARK: - Commands

    mutating func handleCommandLine(_ line: [UInt8]) {
        if line.contains(13) || line.contains(10) {
            currentCommand = Self.verb(of: line)
            fail(Reply(500, "5.5.2", "Error: bare CR or LF in command; lines must end with CRLF"), .bareLineEnd)
            return
        }
        let command: Command
        do {
            command = try CommandParser.parse(line[...])
        } catch {
            currentCommand = Self.verb(of: line)
            switch error {
            case .unknown:
                fail(Reply(500, "5.5.2", "Error: command not recognized"))
            case .syntax(let why):
                guard currentCommand != "BDAT" else { return badChunkSize(why) }
                fail(Reply(501, "5.5.4", "Syntax error: \(why)"))
            case .address(let addressError):
                switch addressError {
                case .needsSMTPUTF8:
                    fail(Reply(553, "5.6.7", "Error: non-ASCII address requires SMTPUTF8"))
                case .tooLong:
                    fail(Reply(501, "5.5.4", "Syntax error: address too long"))
                case .syntax(let why):
                    fail(Reply(501, "5.5.4", "Syntax error in address: \(why)"))
                }
            }
            return
        }
        currentCommand = command.verb
        if refusedAtGreeting, command != .quit {
            fail(Reply(503, "5.5.1", "Error: no SMTP service here; send QUIT"))
            if case .bdat(let size, _) = command { discardChunk(size) }
            return
        }
        switch command {
        case .helo, .ehlo:
            guard Self.isPrintableHeloName(line) else {
                return fail(Reply(501, "5.5.2", "Error: \(currentCommand) name contains control characters or invalid UTF-8"),
                            .badHelo, logged: true)
            }
        default: break
        }
        switch command {
        case .helo(let domain): hello(domain, extended: false)
        case .ehlo(let domain): hello(domain, extended: true)
        case .mail(let path, let params): mail(path, params)
        case .rcpt(let path, let params): rcpt(path, params)
        case .data: data()
        case .rset:
            abandonMessage()
            if case .mail = state { state = .ready }
            chunkRefused = false
            reply(Reply(250, "2.0.0", "Ok"))
        case .noop:
            reply(Reply(250, "2.0.0", "Ok"))
        case .quit:
            reply(Reply(221, "2.0.0", "Bye"))
            close()
        case .help:
            reply(Reply(214, "2.0.0", helpText))
        case .vrfy(let arg): vrfy(arg)
        case .expn(let arg): expn(arg)
        case .startTLS: startTLS()
        case .auth(let mechanism, let initial): auth(mechanism, initial)
        case .bdat(let size, let last): bdat(size: size, last: last)
        }
    }

    /// HELP lists the commands this session takes: VRFY and EXPN only when enabled, STARTTLS and AUTH
    /// only when offered.
    var helpText: String {
        var text = "Commands: HELO EHLO MAIL RCPT DATA RSET NOOP QUIT HELP"
        if config.vrfy { text += " VRFY" }
        if config.expn { text += " EXPN" }
        if offersStartTLS { text += " STARTTLS" }
        if offersAuth { text += " AUTH" }
        return text
    }

    mutating func hello(_ domain: String, extended: Bool) {
        // A new HELO/EHLO resets any transaction (RFC 5321 §4.1.4).
        abandonMessage()
        chunkRefused = false
        helo = domain
        esmtp = extended
        state = .ready
        if extended {
            var lines = [config.hostname]
            let on = config.extensions
            if on.contains(.pipelining) { lines.append("PIPELINING") }
            if on.contains(.size) { lines.append("SIZE \(config.maxMessageSize)") }
            if on.contains(.eightBitMIME) { lines.append("8BITMIME") }
            if on.contains(.enhancedStatusCodes) { lines.append("ENHANCEDSTATUSCODES") }
            if on.contains(.smtputf8) { lines.append("SMTPUTF8") }
            if on.contains(.mtPriority) { lines.append("MT-PRIORITY") }
            if on.contains(.dsn) { lines.append("DSN") }
            if on.contains(.requireTLS) && tlsActive { lines.append("REQUIRETLS") }
            if on.contains(.chunking) { lines.append("CHUNKING") }
            if on.contains(.chunking) && on.contains(.binaryMIME) { lines.append("BINARYMIME") }
            if offersStartTLS { lines.append("STARTTLS") }
            if offersAuth { lines.append("AUTH PLAIN LOGIN") }
            lines += config.extraExtensions
            lines.append("HELP")
            reply(Reply(250, nil, lines))
        } else {
            reply(Reply(250, nil, config.hostname))
        }
    }

    mutating func mail(_ path: MailPath, _ params: [ESMTPParameter]) {
        guard phase != .connected else { return fail(Reply(503, "5.5.1", "Error: send HELO/EHLO first")) }
        guard phase == .ready else { return fail(Reply(503, "5.5.1", "Error: nested MAIL command")) }
        var body: String?
        var utf8 = false
        var mtPriority: Int?
        var ret: DSNReturn?
        var envid: String?
        var requireTLS = false
        var seen: Set<String> = []
        for param in params {
            guard seen.insert(param.keyword).inserted else {
                return fail(Reply(501, "5.5.4", "Error: duplicate \(param.keyword) parameter"))
            }
            if config.extensions != .all, let needs = Self.extensionOfParameter[param.keyword],
               !config.extensions.contains(needs) {
                return fail(Reply(555, "5.5.4", "Error: unsupported parameter \(param.keyword)"))
            }
            switch param.keyword {
            case "SIZE":
                guard let v = param.value, v.utf8.count <= 20, v.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }) else {
                    return fail(Reply(501, "5.5.4", "Error: bad SIZE parameter"))
                }
                if v.utf8.count > 18 || (Int(v) ?? .max) > config.maxMessageSize {
                    return fail(Reply(552, "5.3.4", "Error: message size exceeds fixed limit"), .messageTooBig,
                                logged: true, sender: path)
                }
            case "BODY":
                guard let v = param.value?.uppercased(), v == "7BIT" || v == "8BITMIME" || v == "BINARYMIME" else {
                    return fail(Reply(501, "5.5.4", "Error: BODY must be 7BIT, 8BITMIME or BINARYMIME"))
                }
                // RFC 3030 §3: BINARYMIME only beside CHUNKING, as offered.
                if v == "BINARYMIME" && !config.extensions.isSuperset(of: [.chunking, .binaryMIME]) {
                    return fail(Reply(555, "5.5.4", "Error: BODY=BINARYMIME is not offered"))
                }
                body = v
            case "MT-PRIORITY":
                // RFC 6710 §3: an integer -9...9. Honoured only from trusted clients; from others it is
                // accepted and ignored (§5: a server may lower what it does not trust).
                guard let v = param.value, v.utf8.count <= 2, let level = Int(v), (-9...9).contains(level)
                else { return fail(Reply(501, "5.5.4", "Error: MT-PRIORITY must be an integer from -9 to 9")) }
                mtPriority = client.trusted ? level : nil
            case "SMTPUTF8":
                guard param.value == nil else { return fail(Reply(501, "5.5.4", "Error: SMTPUTF8 takes no value")) }
                utf8 = true
            case "RET":
                guard let v = param.value, let parsed = DSNReturn(rawValue: v.uppercased()) else {
                    return fail(Reply(501, "5.5.4", "Error: RET must be FULL or HDRS"))
                }
                ret = parsed
            case "ENVID":
                guard let v = param.value, let parsed = validENVID(v) else {
                    return fail(Reply(501, "5.5.4", "Error: ENVID must be xtext of at most 100 octets"))
                }
                envid = parsed
            case "REQUIRETLS":
                // Offered only under TLS (RFC 8689 §4.1): in the clear it is an unknown parameter.
                guard tlsActive, config.extensions.contains(.requireTLS) else {
                    return fail(Reply(555, "5.5.4", "Error: unsupported parameter REQUIRETLS"))
                }
                guard param.value == nil else { return fail(Reply(501, "5.5.4", "Error: REQUIRETLS takes no value")) }
                requireTLS = true
            default:
                return fail(Reply(555, "5.5.4", "Error: unsupported parameter \(param.keyword)"))
            }
        }
        if !utf8 && !path.isASCII {
            return fail(Reply(553, "5.6.7", "Error: non-ASCII address requires SMTPUTF8"), .smtputf8Required,
                        logged: true, sender: path)
        }
        if let (r, reason) = senderRefusal(path) { return fail(r, reason, logged: true, sender: path) }
        if hooks != nil {
            hooks?.transactionStarted()
            let verdict = consult(.mail, sender: path, recipients: [])
            if let refusal = verdict.reply { return answerFault(refusal) }
        }
        state = .mail(Transaction(sender: path, bodyType: body, smtputf8: utf8, priority: mtPriority, ret: ret,
                                  envid: envid, requireTLS: requireTLS))
        chunkRefused = false
        reply(Reply(250, "2.1.0", "Ok"))
    }

    mutating func rcpt(_ path: MailPath, _ params: [ESMTPParameter]) {
        if case .betweenChunks = state { return fail(Reply(503, "5.5.1", "Error: RCPT after BDAT")) }
        guard case .mail(let t) = state else { return fail(Reply(503, "5.5.1", "Error: need MAIL command")) }
        changeTransaction { $0.rcptCommands += 1 }
        var dsn = RecipientDSN()
        var seen: Set<String> = []
        for param in params {
            guard seen.insert(param.keyword).inserted else {
                return fail(Reply(501, "5.5.4", "Error: duplicate \(param.keyword) parameter"))
            }
            guard config.extensions.contains(.dsn) else {
                return fail(Reply(555, "5.5.4", "Error: unsupported parameter \(param.keyword)"))
            }
            switch param.keyword {
            case "NOTIFY":
                guard let v = param.value, let parsed = DSNNotify(keyword: v) else {
                    return fail(Reply(501, "5.5.4", "Error: NOTIFY must be NEVER or SUCCESS, FAILURE, DELAY"))
                }
                dsn.notify = parsed
            case "ORCPT":
                guard let v = param.value, let parsed = validORCPT(v) else {
                    return fail(Reply(501, "5.5.4", "Error: ORCPT must be addr-type;xtext of at most 500 octets"))
                }
                dsn.orcpt = parsed
            default:
                return fail(Reply(555, "5.5.4", "Error: unsupported parameter \(param.keyword)"))
            }
        }
        if !t.smtputf8 && !path.isASCII {
            return fail(Reply(553, "5.6.7", "Error: non-ASCII address requires SMTPUTF8"), .smtputf8Required,
                        logged: true, recipient: path.address)
        }
        guard t.acceptedRcptCommands < config.maxRecipients else {
            // The client is expected to send the rest in another transaction (RFC 5321 §4.5.3.1.8):
            // up to the overshoot limit that is no error. Logged once per transaction, counted each time.
            let overshoot = t.overshoot + 1
            changeTransaction { $0.overshoot = overshoot }
            let r = Reply(452, "4.5.3", "Error: too many recipients")
            let excess = refusal(r, .tooManyRecipients, logged: overshoot == 1, recipient: path.address)
            guard overshoot > config.recipientOvershootLimit else {
                reply(r)
                return emit(.refused(excess))
            }
            return fail(excess)
        }
        // An authenticated user may relay to any domain (RFC 6409 §5).
        switch config.policy.checkRecipient(path, trusted: client.trusted || authenticatedUser != nil) {
        case .deny(let r):
            fail(r, Self.reason(of: r), logged: true, recipient: path.address)
        case .accept(var addresses):
            if let check = config.recipientCheck {
                // An alias's other members still get the mail; the RCPT is refused only when none is left.
                var first: (address: String, reply: Reply)?
                addresses.removeAll { a in
                    guard let r = check.refusal(of: a, sender: t.sender) else { return false }
                    if first == nil { first = (a, r) }
                    return true
                }
                if addresses.isEmpty, let first {
                    return fail(first.reply, .suppressed, logged: true, recipient: first.address)
                }
            }
            var answer = Reply(250, "2.1.5", "Ok")
            if hooks != nil {
                let verdict = consult(.rcpt, recipients: addresses)
                if let other = verdict.reply {
                    guard other.code < 400 else { return answerFault(other) }
                    answer = other
                }
            }
            changeTransaction { t in
                t.acceptedRcptCommands += 1
                for a in addresses { t.add(a, dsn: dsn) }
            }
            reply(answer)
        }
    }

    mutating func data() {
        if case .betweenChunks = state { return fail(Reply(503, "5.5.1", "Error: DATA after BDAT")) }
        guard case .mail(let t) = state else { return fail(Reply(503, "5.5.1", "Error: need MAIL command")) }
        // RFC 3030 §3: a BINARYMIME body has no lines for DATA's end to be found in.
        if t.isBinary { return fail(Reply(503, "5.5.1", "Error: BODY=BINARYMIME requires BDAT, not DATA")) }
        if let (r, reason) = missingRecipients(t) { return fail(r, reason, logged: reason == .noValidRecipients) }
        var drop = false
        if hooks != nil {
            let verdict = consult(.data, recipients: t.recipients)
            if let refusal = verdict.reply { return answerFault(refusal) }
            drop = verdict.dropInData
        }
        let start = openMessage(t)
        state = .data(t, messageDecoder(chunked: false), dropInData: drop)
        reply(Reply(354, nil, "End data with <CR><LF>.<CR><LF>"))
        emit(.beginMessage(start))
    }

    /// DATA or BDAT with no recipient accepted: 554 if some were refused, else 503.
    func missingRecipients(_ t: Transaction) -> (Reply, Refusal.Reason)? {
        guard t.acceptedRcptCommands == 0 else { return nil }
        if t.rcptCommands > 0 { return (Reply(554, "5.5.1", "Error: no valid recipients"), .noValidRecipients) }
        return (Reply(503, "5.5.1", "Error: need RCPT command"), .badSequence)
    }

    /// A message begins (DATA, or the first BDAT): its envelope, and an empty DATA buffer.
    mutating func openMessage(_ t: Transaction) -> MessageStart {
        let start = MessageStart(
            sender: t.sender, recipients: t.recipients, helo: helo ?? client.ip,
            protocolName: protocolName,
            bodyType: t.bodyType, smtputf8: t.smtputf8, priority: t.priority, tls: tlsSummary,
            authenticatedUser: authenticatedUser, ret: t.ret, envid: t.envid, recipientDSN: t.recipientDSN,
            requireTLS: t.requireTLS, serial: messagesBegun + 1)
        messagesBegun += 1
        dataOut = []
        nextDataReserve = Self.dataReserve
        messageDataEmitted = false
        return start
    }

    func messageDecoder(chunked: Bool, binary: Bool = false) -> DataDecoder {
        DataDecoder(limits: .init(maxLineLength: config.maxLineLength, maxMessageSize: config.maxMessageSize,
                                  keepBcc: config.keepBcc), chunked: chunked, binary: binary)
    }

    /// The reply that refuses a message for what its data held.
    func refusalReply(_ problem: DataDecoder.Problem) -> Reply {
        switch problem {
        case .tooBig: return Reply(552, "5.3.4", "Error: message size exceeds fixed limit")
        case .bareCR: return Reply(554, "5.6.0", "Error: bare CR in message; lines must end with CRLF")
        case .bareLF: return Reply(554, "5.6.0", "Error: bare LF in message; lines must end with CRLF")
        case .nul: return Reply(554, "5.6.0", "Error: NUL character in message")
        case .lineTooLong: return Reply(554, "5.6.0", "Error: line longer than \(config.maxLineLength) octets in message")
        }
    }

    /// The decoder found the end of data.
    mutating func endOfData() {
        guard case .data(let t, let d, _) = state else { return }
        finishMessage(t, d)
    }

    /// The end of a message's data (DATA's final dot, BDAT LAST): the message is refused, or goes to
    /// be committed. The transaction stays in `state` until then, so that a refusal carries the envelope.
    mutating func finishMessage(_ t: Transaction, _ d: DataDecoder) {
        if let problem = d.problem {
            return refuseMessage(refusalReply(problem), problem == .tooBig ? .messageTooBig : .badMessageData)
        }
        if d.receivedCount > config.maxHops {
            return refuseMessage(Reply(554, "5.4.6", "Error: too many hops (\(d.receivedCount) Received headers): mail loop?"),
                                 .tooManyHops)
        }
        if hooks != nil, let refusal = consult(.dot, recipients: t.recipients).reply, refusal.code >= 400 {
            dataOut = []
            emit(.abortMessage)
            state = .ready
            answerFault(refusal)
            return
        }
        flushDataOut(force: true)
        lastMessageIsWireReady = d.unstuffedLines == 0 && !d.binary  // a binary body has no lines to be ready
        // RFC 8689 §4.1: with REQUIRETLS on MAIL, the header field is ignored.
        lastMessageTLSOptional = d.tlsRequiredNo && !t.requireTLS
        lastMessageID = d.messageID.map { String(decoding: $0, as: UTF8.self) }
        emit(.commitMessage)
        state = .committing(t)
    }

    /// A message refused at the end of its data: the refusal carries the envelope, then it is forgotten.
    mutating func refuseMessage(_ r: Reply, _ reason: Refusal.Reason, command: String = "END-OF-MESSAGE") {
        let refused = refusal(r, reason, logged: true, command: command, inMessage: true)
        dataOut = []
        emit(.abortMessage)
        state = .ready
        fail(refused)
    }

    mutating func vrfy(_ arg: String) {
        guard config.vrfy else {
            return reply(Reply(252, "2.5.2", "Cannot VRFY user, but will accept message and attempt delivery"))
        }
        let address = stripAngles(arg)
        if config.policy.isKnown(address) {
            reply(Reply(250, "2.1.5", "<\(address)>"))
        } else {
            fail(Reply(550, "5.1.1", "<\(address)>: Recipient address unknown"))
        }
    }

    mutating func expn(_ arg: String) {
        guard config.expn else { return fail(Reply(502, "5.5.1", "Error: EXPN not available")) }
        let address = stripAngles(arg)
        if let members = config.policy.listMembers(address), !members.isEmpty {
            reply(Reply(250, "2.1.5", members.map { "<\($0)>" }))
        } else {
            fail(Reply(550, "5.1.1", "<\(address)>: not a mailing list"))
        }
    }

    // MARK: - Helpers

    /// Changes the transaction of the MAIL phase in place (taken out of `state`, so its recipient
    /// list is not copied to be appended to).
    mutating func changeTransaction(_ body: (inout Transaction) -> Void) {
        guard case .mail(var t) = state else { return }
        state = .modifying
        body(&t)
        state = .mail(t)
    }

    mutating func reply(_ r: Reply) {
        if let hold = hooks?.replyDelay(), hold > 0 { emit(.delay(milliseconds: hold)) }
        let before = replyBytes.count
        defer { replyBytesThisCall += replyBytes.count - before }
        if r.enhanced != nil && !config.extensions.contains(.enhancedStatusCodes) {
            return Reply(r.code, nil, r.lines).appendWireBytes(to: &replyBytes)
        }
        r.appendWireBytes(to: &replyBytes)
    }

    /// Asks the hooks about a stage; a delay they want goes out as an action before the reply.
    mutating func consult(_ stage: SessionStage, sender: MailPath? = nil, recipients: [String]) -> StageVerdict {
        guard hooks != nil else { return .none }
        let sender = sender ?? transaction?.sender
        guard let verdict = hooks?.verdict(at: stage, sender: sender, recipients: recipients) else { return .none }
        if verdict.delayMilliseconds > 0 { emit(.delay(milliseconds: verdict.delayMilliseconds)) }
        return verdict
    }

    /// An injected refusal. Unlike `fail` it does not count towards max_errors (the client did nothing
    /// wrong); a 421 closes the connection, as it announces (RFC 5321 §3.8).
    mutating func answerFault(_ r: Reply) {
        reply(r)
        if r.code == 421 { close() }
    }

    /// The hooks asked for a connection dropped mid-DATA: no reply, the message is forgotten.
    mutating func dropConnection() {
        emit(.abortMessage)
        dataOut = []
        state = .closed
        inbox = []
        emit(.drop)
    }

    static let extensionOfParameter: [String: AdvertisedExtensions] = [
        "SIZE": .size, "BODY": .eightBitMIME, "SMTPUTF8": .smtputf8, "MT-PRIORITY": .mtPriority,
        "RET": .dsn, "ENVID": .dsn,
    ]

    /// A refusal; counts towards max_errors. `reason` defaults to what the enhanced code stands for.
    /// `logged` defaults to whether the reason is a postmaster's business (`isLogged`).
    mutating func fail(_ r: Reply, _ reason: Refusal.Reason? = nil, logged: Bool? = nil, sender: MailPath? = nil,
                       recipient: String? = nil, user: String? = nil) {
        let reason = reason ?? Self.reason(of: r)
        var refused = refusal(r, reason, logged: logged ?? Self.isLogged(reason), recipient: recipient, user: user)
        if let sender { refused.sender = sender }
        fail(refused)
    }

    mutating func fail(_ refused: Refusal) {
        reply(refused.reply)
        emit(.refused(refused))
        errorCount += 1
        if errorCount >= config.maxErrors && phase != .closed {
            let r = Reply(421, "4.7.0", "\(config.hostname) Error: too many errors")
            reply(r)
            emit(.refused(refusal(r, .tooManyErrors, logged: true, inMessage: hasOpenMessage)))
            close()
        }
    }

    /// Closes the session; a message still open is aborted first.
    mutating func close() {
        if hasOpenMessage {
            dataOut = []
            emit(.abortMessage)
        }
        state = .closed
        inbox = []
        flushReplies()
        emit(.close)
    }

    /// Actions keep their order relative to replies: replies so far go out first.
    mutating func emit(_ action: ServerAction) {
        flushReplies()
        actions.append(action)
    }

    mutating func flushReplies() {
        if !replyBytes.isEmpty {
            actions.append(.reply(replyBytes))
            replyBytes = []
        }
    }

    mutating func flushDataOut(force: Bool) {
        if !dataOut.isEmpty && (force || dataOut.count >= Self.dataChunk) {
            if force && dataOut.capacity > 2 * dataOut.count + 4096 {
                // A small message in the DATA buffer: hand on an array of its own size, since it stays
                // in memory (journal batch, delivery's cache) long after the session; copying a few KiB
                // is cheaper than holding 64 KiB for each.
                emit(.messageData(dataOut.withUnsafeBufferPointer { Array($0) }))
            } else {
                emit(.messageData(dataOut))
            }
            messageDataEmitted = true
            dataOut = []
            // A message larger than a chunk: the next is likely full too (reserved when it arrives).
            nextDataReserve = Self.dataBuffer
        }
    }

    /// Puts `bytes` (the relay's Received header) in front of the message's data, so that a message of
    /// up to a chunk still arrives as one array. False once some data was handed on (a client that
    /// sent its message without waiting for the 354) or the message ended: the caller then keeps the
    /// bytes itself, in front of the first `.messageData`.
    /// `start` is the message the bytes belong to: a client that did not wait for the 354 can have the
    /// session in a later message (after this one was refused) by the time the caller asks.
    public mutating func prefixMessageData(_ bytes: [UInt8], for start: MessageStart) -> Bool {
        guard hasOpenMessage, !messageDataEmitted, start.serial == messagesBegun else { return false }
        if dataOut.capacity == 0 { dataOut.reserveCapacity(nextDataReserve) }
        dataOut.insert(contentsOf: bytes, at: 0)
        return true
    }

    /// Bytes of memory the DATA buffer holds now (its capacity, reserved or filled): what a memory
    /// budget for message data counts.
    public var dataBufferCapacity: Int { dataOut.capacity }

    /// Hands on what the DATA buffer holds and frees the buffer, for a caller that stops reading until
    /// memory is available and writes out what this session holds meanwhile. The message loses nothing;
    /// its data only arrives in one more piece. Nil when the buffer holds no data (it is freed all the same).
    public mutating func takeBufferedData() -> [UInt8]? {
        guard hasOpenMessage, !dataOut.isEmpty else {
            if hasOpenMessage { dataOut = [] }
            return nil
        }
        // An array of its own size: it waits in the writer's queue, counted by its capacity.
        let bytes = dataOut.capacity > dataOut.count + 4096 ? dataOut.withUnsafeBufferPointer { Array($0) } : dataOut
        dataOut = []
        messageDataEmitted = true
        return bytes
    }

    mutating func takeActions() -> [ServerAction] {
        flushReplies()
        replyBytesThisCall = 0
        let a = actions
        actions = []
        return a
    }
}

func stripAngles(_ s: String) -> String {
    if s.hasPrefix("<") && s.hasSuffix(">") && s.count >= 2 { return String(s.dropFirst().dropLast()) }
    return s
}

@inline(__always)
func memchrLF(_ p: UnsafePointer<UInt8>, _ n: Int) -> UnsafePointer<UInt8>? {
    var i = 0
    while i < n {
        if p[i] == 10 { return p + i }
        i += 1
    }
    return nil
}

extension ServerSession {
    /// Since when input that completes no command has been pending (loop milliseconds), after a read:
    /// a complete line, or the end of the TLS handshake, ends what was pending (a partial line or a
    /// handshake still under way starts it again now); raw bytes that complete nothing start it if it
    /// is not running. So bytes dripped in the clear, or a ClientHello or TLS record that decrypts to
    /// nothing, cannot hold a connection past command_timeout. Nil in DATA (timed per read) and while
    /// the session reads nothing.
    public func inputPendingSince(_ previous: UInt64?, linesBefore: Int, handshaking: Bool, handshakeDone: Bool,
                                  now: UInt64) -> UInt64? {
        switch phase {
        case .data, .committing, .authenticating, .closed:
            return nil
        default:
            break
        }
        if linesRead != linesBefore || handshakeDone {
            return hasPartialLine || handshaking ? now : nil
        }
        return previous ?? now
    }
}
