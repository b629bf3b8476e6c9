import MailQueue
import Testing
@testable import Relay

/// RFC 8689 §5 in delivery: which messages and policies "TLS-Required: No" relaxes.
@Suite struct TLSRequiredNoTests {
    func envelope(optional: Bool, requireTLS: Bool = false) -> Envelope {
        var e = Envelope(id: QueueID(microseconds: 1_700_000_000_000_000), sender: "a@b.test",
                         recipients: [Recipient(address: "c@d.test")], arrival: 1, client: ClientInfo(ip: "127.0.0.1", helo: "x"))
        e.tlsOptional = optional
        e.requireTLS = requireTLS
        return e
    }

    @Test func onlyRequireAndVerifyAreRelaxedAndOnlyWhenHonoured() {
        let optional = envelope(optional: true)
        for policy in OutboundTLSPolicy.allCases {
            let relaxed = OutboundConnection.relaxesTLS(optional, policy: policy, hasCredentials: false, honor: true)
            #expect(relaxed == (policy == .require || policy == .verify), "\(policy)")
            #expect(!OutboundConnection.relaxesTLS(optional, policy: policy, hasCredentials: false, honor: false))
        }
        // Not asked for, REQUIRETLS beside it, or a route that authenticates: as configured.
        #expect(!OutboundConnection.relaxesTLS(envelope(optional: false), policy: .verify, hasCredentials: false, honor: true))
        #expect(!OutboundConnection.relaxesTLS(envelope(optional: true, requireTLS: true), policy: .verify,
                                               hasCredentials: false, honor: true))
        #expect(!OutboundConnection.relaxesTLS(optional, policy: .require, hasCredentials: true, honor: true))
    }
}
