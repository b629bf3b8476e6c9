import Testing
@testable import SMTPProtocol

/// BODY=BINARYMIME (RFC 3030 §3) in ServerSession: only beside CHUNKING, only with BDAT, and the body
/// kept octet for octet.
@Suite struct ServerBinaryMIMETests {
    static let binaryEnvelope = lines("EHLO client.test", "MAIL FROM:<alice@example.org> BODY=BINARYMIME",
                                      "RCPT TO:<bob@example.net>")

    /// "BDAT n[ LAST]\r\n" and the chunk's octets.
    func bdatBytes(_ chunk: [UInt8], last: Bool = false) -> [UInt8] {
        Array("BDAT \(chunk.count)\(last ? " LAST" : "")\r\n".utf8) + chunk
    }

    /// A body a line reader would refuse three times over: NUL, bare CR and LF, a 3,000-octet line,
    /// and no CRLF at the end.
    static let body: [UInt8] = [0, 1, 2, 13, 65, 10, 66, 13, 13, 10, 0xFF, 0xFE]
        + Array(repeating: 0x42, count: 3_000) + [10, 0]

    @Test func offeredBesideChunkingOnly() {
        var d = Driver()
        d.send("EHLO client.test\r\n")
        #expect(d.replies.contains("250-BINARYMIME\r\n"))
        var config = ServerConfiguration(hostname: "relay.test")
        config.extensions = AdvertisedExtensions.all.subtracting(.chunking)
        var noChunking = Driver(config)
        noChunking.send(Self.binaryEnvelope)
        #expect(!noChunking.replies.contains("BINARYMIME\r\n"))
        #expect(noChunking.codes == ["220", "250", "555", "503"])
        #expect(noChunking.replies.contains("555 5.5.4 Error: BODY=BINARYMIME is not offered\r\n"))
        config.extensions = AdvertisedExtensions.all.subtracting(.binaryMIME)
        var off = Driver(config)
        off.send(Self.binaryEnvelope)
        #expect(!off.replies.contains("250-BINARYMIME") && !off.replies.contains("250 BINARYMIME"))
        #expect(off.codes == ["220", "250", "555", "503"])
    }

    @Test func dataIsRefusedWithBinaryMIME() {
        var d = Driver()
        d.send(Self.binaryEnvelope + "DATA\r\n")
        #expect(d.codes == ["220", "250", "250", "250", "503"])
        #expect(d.replies.contains("503 5.5.1 Error: BODY=BINARYMIME requires BDAT, not DATA\r\n"))
        #expect(d.messages.isEmpty)
        // Still in the transaction: BDAT works after the refused DATA.
        d.send(bdatBytes(Array("Subject: x\r\n\r\n".utf8) + Self.body, last: true))
        #expect(d.codes.last == "250")
        #expect(d.messages.count == 1)
    }

    @Test func bodyKeptOctetForOctetAcrossChunks() {
        let header = Array("Subject: bin\r\nBcc: hidden@example.net\r\nContent-Type: application/octet-stream\r\n\r\n".utf8)
        let message = header + Self.body
        let expected = Array("Subject: bin\r\nContent-Type: application/octet-stream\r\n\r\n".utf8) + Self.body
        for cut in stride(from: 0, through: message.count, by: 7) {
            var d = Driver()
            d.send(Self.binaryEnvelope)
            d.send(bdatBytes(Array(message[..<cut])) + bdatBytes(Array(message[cut...]), last: true))
            #expect(d.refusals.isEmpty, "cut at \(cut)")
            #expect(d.messages.map(\.data) == [expected], "cut at \(cut)")
            #expect(d.messages.first?.start.bodyType == "BINARYMIME")
            // Bytes that are not CRLF lines are never "ready" for DATA.
            #expect(d.wireReady == [false])
        }
    }

    /// The header section is still lines: a bare LF in it refuses the message, as for 8BITMIME.
    @Test func headerSectionIsStillChecked() {
        var d = Driver()
        d.send(Self.binaryEnvelope)
        d.send(bdatBytes(Array("Subject: x\nTo: y\r\n\r\n".utf8) + Self.body, last: true))
        #expect(d.messages.isEmpty)
        #expect(d.codes.last == "554")
    }

    @Test func sizeLimitStillApplies() {
        var config = ServerConfiguration(hostname: "relay.test")
        config.maxMessageSize = 2_000
        var d = Driver(config)
        d.send(Self.binaryEnvelope)
        d.send(bdatBytes(Array("Subject: x\r\n\r\n".utf8) + Self.body, last: true))
        #expect(d.messages.isEmpty)
        #expect(d.replies.contains("552 5.3.4"))
    }

    /// Without BODY=BINARYMIME the same octets in BDAT are refused (they are not lines).
    @Test func withoutBinaryMIMETheSameOctetsAreRefused() {
        var d = Driver()
        d.send(envelope)
        d.send(bdatBytes(Array("Subject: x\r\n\r\n".utf8) + Self.body, last: true))
        #expect(d.messages.isEmpty)
        #expect(d.codes.last == "554")
    }
}
