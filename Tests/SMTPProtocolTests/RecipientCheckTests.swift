import Testing
@testable import SMTPProtocol

/// ServerConfiguration.recipientCheck (the relay's suppression list): asked for each recipient the
/// policy accepted; a reply refuses that one RCPT and the transaction goes on.
@Suite struct RecipientCheckTests {
    struct Refuse: RecipientCheck {
        let address: String
        func refusal(of recipient: String, sender: MailPath) -> Reply? {
            recipient == address && sender.domain == "example.org"
                ? Reply(550, "5.1.1", "Error: recipient address suppressed") : nil
        }
    }

    @Test func aSuppressedRecipientIsRefusedAndTheOthersGoOn() {
        var config = ServerConfiguration(hostname: "relay.test")
        config.recipientCheck = Refuse(address: "gone@example.net")
        var d = Driver(config)
        d.send(lines("EHLO client.test", "MAIL FROM:<a@example.org>", "RCPT TO:<gone@example.net>",
                     "RCPT TO:<here@example.net>", "DATA", "Subject: x", "", "hi", "."))
        #expect(d.codes == ["220", "250", "250", "550", "250", "354", "250"])
        #expect(d.replies.contains("550 5.1.1 Error: recipient address suppressed\r\n"))
        #expect(d.refusals.map(\.reason) == [.suppressed])
        #expect(d.refusals.first?.recipient == "gone@example.net")
        #expect(d.messages.first?.start.recipients == ["here@example.net"])
        // An alias with a suppressed member: the others get it; all suppressed: refused.
        var aliased = ServerConfiguration(hostname: "relay.test",
                                          policy: RelayPolicy(hostname: "relay.test", acceptDomains: ["list.test"],
                                                              aliases: ["team@list.test": ["gone@example.net", "here@example.net"],
                                                                        "lost@list.test": ["gone@example.net"]]))
        aliased.recipientCheck = Refuse(address: "gone@example.net")
        var a = Driver(aliased)
        a.send(lines("EHLO client.test", "MAIL FROM:<a@example.org>", "RCPT TO:<team@list.test>", "RCPT TO:<lost@list.test>",
                     "DATA", "Subject: x", "", "hi", "."))
        #expect(a.codes == ["220", "250", "250", "250", "550", "354", "250"])
        #expect(a.messages.first?.start.recipients == ["here@example.net"])
        // Another sender's mail to the same address is not refused by this check.
        d.send(lines("MAIL FROM:<a@other.example>", "RCPT TO:<gone@example.net>"))
        #expect(d.codes.suffix(2) == ["250", "250"])
    }
}
