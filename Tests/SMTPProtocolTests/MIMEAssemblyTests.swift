import Testing
@testable import SMTPProtocol

/// MIMEAssembly.swift: a message from its parts (the injection API's content object).
@Suite struct MIMEAssemblyTests {
    func text(_ parts: MessageParts, seed: UInt64 = 1) -> String {
        String(decoding: assembleMessage(parts, date: "Sun, 06 Dec 2026 21:30:00 +0000", messageID: "<m1@relay.test>",
                                         boundarySeed: seed), as: UTF8.self)
    }

    @Test func aTextBodyAloneIsOnePart() {
        let t = text(MessageParts(from: "Alice <alice@example.org>", to: ["bob@example.net"], subject: "Hello",
                                  textBody: "Hi Bob\n.dot line\n"))
        #expect(t == "From: Alice <alice@example.org>\r\nTo: bob@example.net\r\nSubject: Hello\r\n"
                + "Date: Sun, 06 Dec 2026 21:30:00 +0000\r\nMessage-ID: <m1@relay.test>\r\nMIME-Version: 1.0\r\n"
                + "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 7bit\r\n\r\n"
                + "Hi Bob\r\n.dot line\r\n")
    }

    @Test func textAndHTMLAreAlternativesAndAttachmentsMixed() {
        let t = text(MessageParts(from: "a@x.test", to: ["b@y.test", "Carol <c@y.test>"], subject: "s",
                                  replyTo: "r@x.test", headers: [("X-Campaign", "spring")],
                                  textBody: "plain", htmlBody: "<p>html</p>",
                                  attachments: [.init(filename: "data.bin", data: [0, 1, 2, 255])]))
        #expect(t.contains("To: b@y.test, Carol <c@y.test>\r\nReply-To: r@x.test\r\n"))
        #expect(t.contains("X-Campaign: spring\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="))
        #expect(t.contains("Content-Type: multipart/alternative; boundary="))
        let plain = t.range(of: "text/plain")!, html = t.range(of: "text/html")!
        #expect(plain.lowerBound < html.lowerBound)  // the preferred form last
        #expect(t.contains("Content-Type: application/octet-stream; name=\"data.bin\"\r\nContent-Transfer-Encoding: base64\r\n"
                           + "Content-Disposition: attachment; filename=\"data.bin\"\r\n\r\nAAEC/w==\r\n"))
        // Every line CRLF, no bare LF, at most 998 octets.
        let bytes = Array(t.utf8)
        for (i, b) in bytes.enumerated() where b == 10 { #expect(i > 0 && bytes[i - 1] == 13) }
        #expect(t.split(separator: "\r\n").allSatisfy { $0.utf8.count <= 998 })
    }

    @Test func nonASCIIHeadersAreEncodedWordsAndBodiesQuotedPrintable() {
        let t = text(MessageParts(from: "Jörg Müller <j@x.test>", to: ["b@y.test"],
                                  subject: "Grüße aus Köln, und ein langer Betreff der über fünfundsiebzig Zeichen hinausgeht",
                                  textBody: "Grüße\n"))
        #expect(t.contains("From: =?UTF-8?B?"))
        #expect(t.contains("?= <j@x.test>\r\n"))
        #expect(t.contains("Subject: =?UTF-8?B?"))
        // Folded: no header line over 78 characters, and every encoded word at most 75.
        let header = t.components(separatedBy: "\r\n\r\n")[0]
        for line in header.split(separator: "\r\n") {
            #expect(line.utf8.count <= 78, "\(line)")
            for word in line.split(separator: " ") where word.hasPrefix("=?") { #expect(word.utf8.count <= 75) }
        }
        #expect(t.contains("Content-Transfer-Encoding: quoted-printable\r\n\r\nGr=C3=BC=C3=9Fe\r\n"))
        #expect(t.utf8.allSatisfy { $0 < 128 })
        // A display name with specials is quoted.
        #expect(text(MessageParts(from: "Doe, John <j@x.test>", to: [], subject: "s")).hasPrefix("From: \"Doe, John\" <j@x.test>\r\n"))
    }

    @Test func noFieldIsInjectedThroughAValue() {
        let t = text(MessageParts(from: "a@x.test", to: ["b@y.test"], subject: "hi\r\nBcc: victim@z.test",
                                  headers: [("X-Note", "one\ntwo")], textBody: "x"))
        #expect(!t.contains("\r\nBcc:"))
        #expect(t.contains("Subject: hi Bcc: victim@z.test\r\n") && t.contains("X-Note: one two\r\n"))
        // Nor through an attachment's file name (in its part's fields).
        let a = text(MessageParts(from: "a@x.test", to: [], subject: "s", textBody: "x",
                                  attachments: [.init(filename: "a.txt\r\nContent-Type: text/html", data: [1])]))
        #expect(!a.contains("\r\nContent-Type: text/html"))
        #expect(a.contains("filename=\"a.txt__Content-Type: text/html\""))
    }

    @Test func theBoundaryNeverOccursInTheContent() {
        // The text holds the boundary the seed would make: another is chosen.
        let first = text(MessageParts(from: "a@x.test", to: [], subject: "s", textBody: "a", htmlBody: "b"), seed: 7)
        let boundary = first.components(separatedBy: "boundary=\"")[1].components(separatedBy: "\"")[0]
        let t = text(MessageParts(from: "a@x.test", to: [], subject: "s", textBody: "--" + boundary, htmlBody: "b"), seed: 7)
        let chosen = t.components(separatedBy: "boundary=\"")[1].components(separatedBy: "\"")[0]
        #expect(chosen != boundary && chosen.hasPrefix(boundary))
    }
}
