// Hooks into the server session, for a test target that misbehaves on purpose (`tern sink`).
//
// The relay never sets hooks, so its path is unchanged but for one nil check per stage. A hook is
// consulted where the server is about to give its own positive answer (the greeting, MAIL, RCPT,
// DATA, the end of DATA) and may delay that answer, replace it, or drop the connection mid-DATA.
// Delays are actions (`ServerAction.delay`): the machine keeps no clock, the I/O layer holds the
// replies that follow until the delay has passed.

/// The points of a session where a hook may interfere.
public enum SessionStage: String, Sendable, CaseIterable, Equatable {
    case greeting
    case mail
    case rcpt
    /// The reply to the DATA command (354).
    case data
    /// The reply after the final "." (Postfix's smtp-sink calls this stage ".").
    case dot
}

/// What a hook wants at one stage. The empty verdict changes nothing.
public struct StageVerdict: Sendable, Equatable {
    /// Hold the reply this long first.
    public var delayMilliseconds: Int
    /// Answer this instead of the server's own reply.
    public var reply: Reply?
    /// Data stage only: answer 354, then close the connection as soon as message data arrives.
    public var dropInData: Bool

    public init(delayMilliseconds: Int = 0, reply: Reply? = nil, dropInData: Bool = false) {
        self.delayMilliseconds = delayMilliseconds
        self.reply = reply
        self.dropInData = dropInData
    }

    public static let none = StageVerdict()
}

/// A check of each recipient the relay policy accepted (the relay's suppression list): a reply refuses
/// that recipient at RCPT; nil accepts it. Asked on the session's thread, once per address.
public protocol RecipientCheck: Sendable {
    func refusal(of recipient: String, sender: MailPath) -> Reply?
}

public protocol SessionHooks {
    /// Consulted at each stage once the server has decided to accept. `recipients` are the accepted
    /// recipients of the transaction (at RCPT: the one being added).
    mutating func verdict(at stage: SessionStage, sender: MailPath?, recipients: [String]) -> StageVerdict
    /// A new transaction begins (MAIL accepted); the previous one is over.
    mutating func transactionStarted()
    /// Milliseconds to hold every reply (a tarpit); 0 for none.
    mutating func replyDelay() -> Int
}

/// The EHLO keywords that can be switched off (a sink imitating a plainer server). Switching one
/// off also refuses its MAIL parameter (555), and without ENHANCEDSTATUSCODES replies carry none.
public struct AdvertisedExtensions: OptionSet, Sendable, Equatable {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }

    public static let pipelining = AdvertisedExtensions(rawValue: 1 << 0)
    public static let size = AdvertisedExtensions(rawValue: 1 << 1)
    public static let eightBitMIME = AdvertisedExtensions(rawValue: 1 << 2)
    public static let enhancedStatusCodes = AdvertisedExtensions(rawValue: 1 << 3)
    public static let smtputf8 = AdvertisedExtensions(rawValue: 1 << 4)
    public static let mtPriority = AdvertisedExtensions(rawValue: 1 << 5)
    /// BDAT (RFC 3030).
    public static let chunking = AdvertisedExtensions(rawValue: 1 << 6)
    /// Delivery status notifications (RFC 3461): NOTIFY, ORCPT, RET, ENVID.
    public static let dsn = AdvertisedExtensions(rawValue: 1 << 7)
    /// REQUIRETLS (RFC 8689), offered only under TLS.
    public static let requireTLS = AdvertisedExtensions(rawValue: 1 << 8)
    /// BODY=BINARYMIME (RFC 3030 §3), offered only beside CHUNKING.
    public static let binaryMIME = AdvertisedExtensions(rawValue: 1 << 9)
    public static let all: AdvertisedExtensions = [.pipelining, .size, .eightBitMIME, .enhancedStatusCodes,
                                                   .smtputf8, .mtPriority, .chunking, .dsn, .requireTLS,
                                                   .binaryMIME]
}
