// The envelope: everything about a queued message except its data (RFC 5321 section 2.3.1).
// Delivery updates the per-recipient state and rewrites the envelope; the data file never changes.

import SMTPProtocol

/// Where a recipient stands. `pending` and `deferred` still need delivery; the other two are final.
public enum RecipientState: String, Sendable, CaseIterable {
    case pending, deferred, delivered, bounced

    public var isFinal: Bool { self == .delivered || self == .bounced }
}

public struct Recipient: Sendable, Equatable {
    /// The forward-path without angle brackets, as the client sent it.
    public var address: String
    public var state: RecipientState
    /// The last reply from a next hop (or our own reason), for logs, `tern queue` and bounces.
    public var lastReply: String?
    /// NOTIFY= (RFC 3461) of its RCPT; nil when not given.
    public var notify: DSNNotify?
    /// ORCPT= as it arrived ("rfc822;" and xtext); nil when not given.
    public var orcpt: String?

    public init(address: String, state: RecipientState = .pending, lastReply: String? = nil,
                notify: DSNNotify? = nil, orcpt: String? = nil) {
        self.address = address
        self.state = state
        self.lastReply = lastReply
        self.notify = notify
        self.orcpt = orcpt
    }
}

/// Who handed us the message: goes into the Received: header and the logs.
public struct ClientInfo: Sendable, Equatable {
    public var ip: String
    public var helo: String
    public var reverseName: String?
    /// "SMTP" or "ESMTP" (RFC 3848 adds "ESMTPS", "ESMTPA", ...).
    public var protocolName: String
    /// The AUTH identity the client submitted as (egress pool and DKIM choices depend on it).
    public var authenticatedUser: String?

    public init(ip: String, helo: String, reverseName: String? = nil, protocolName: String = "ESMTP",
                authenticatedUser: String? = nil) {
        self.ip = ip
        self.helo = helo
        self.reverseName = reverseName
        self.protocolName = protocolName
        self.authenticatedUser = authenticatedUser
    }
}

public struct Envelope: Sendable, Equatable {
    public var id: QueueID
    /// The reverse-path without angle brackets; "" for the null sender <> (bounces, RFC 5321 4.5.5).
    public var sender: String
    public var recipients: [Recipient]
    /// MT-PRIORITY, -9...9 (RFC 6710); 0 when the client gave none.
    public var priority: Int
    /// Seconds since the epoch; stored with microsecond precision.
    public var arrival: Double
    public var attempts: Int
    /// Seconds since the epoch; stored with microsecond precision.
    public var nextAttempt: Double
    /// Bytes of the data file.
    public var size: Int
    /// BODY= as the client declared it ("7BIT" / "8BITMIME"), nil when absent.
    public var bodyType: String?
    /// BODY=8BITMIME.
    public var isEightBitMIME: Bool { bodyType?.uppercased() == "8BITMIME" }
    public var smtputf8: Bool
    /// RET= and ENVID= (RFC 3461; ENVID as it arrived, in xtext); nil when not given.
    public var ret: DSNReturn?
    public var envid: String?
    /// REQUIRETLS (RFC 8689): only over verified TLS to next hops that offer it.
    public var requireTLS = false
    /// "TLS-Required: No" in the header section, without REQUIRETLS (RFC 8689 §5): the sender asks that
    /// TLS policies not stop delivery. Honoured only when [delivery] allows it (honor_tls_required_no).
    public var tlsOptional = false
    /// The message's Message-ID field as received (for events); nil when it had none.
    public var messageID: String?
    public var client: ClientInfo
    /// A delay warning was sent to the sender (sent once per message).
    public var delayWarned = false
    /// Put on hold by the postmaster (`tern queue hold`): kept, never tried, until released.
    public var held = false

    public init(id: QueueID, sender: String, recipients: [Recipient], priority: Int = 0,
                arrival: Double, attempts: Int = 0, nextAttempt: Double? = nil, size: Int = 0,
                bodyType: String? = nil, smtputf8: Bool = false, client: ClientInfo) {
        self.id = id
        self.sender = sender
        self.recipients = recipients
        self.priority = priority
        self.arrival = arrival
        self.attempts = attempts
        self.nextAttempt = nextAttempt ?? arrival
        self.size = size
        self.bodyType = bodyType
        self.smtputf8 = smtputf8
        self.client = client
    }

    /// Recipients still waiting for delivery (pending or deferred).
    public var hasPendingRecipients: Bool { recipients.contains { !$0.state.isFinal } }
}
