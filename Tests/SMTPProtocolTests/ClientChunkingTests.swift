import Randomness
import Testing
@testable import SMTPProtocol

// BDAT out (RFC 3030): with CHUNKING offered the message goes out as "BDAT n LAST" and its own bytes,
// after the RCPT replies; chunk sizes, refusals at every step, line end repair, and the switch off.

let chunkingEHLO = "250-mx.test Hello relay.test\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-8BITMIME\r\n"
    + "250-ENHANCEDSTATUSCODES\r\n250 CHUNKING\r\n"
let chunkingEHLOPlain = "250-mx.test Hello relay.test\r\n250-8BITMIME\r\n250 CHUNKING\r\n"
/// clientMessage (33 octets, one line starting with a dot) as BDAT carries it: unchanged.
let clientMessageChunk = "BDAT 33 LAST\r\n" + clientMessage

@Suite struct ClientChunkingTests {
    @Test func chunkingIsReadFromEHLO() {
        var s = ClientSession(hostname: "relay.test")
        _ = s.receive(Array(clientGreeting.utf8))
        _ = s.receive(Array(chunkingEHLO.utf8))
        #expect(s.capabilities?.chunking == true)
        #expect(s.capabilities?.pipelining == true)
        #expect(NextHopCapabilities(ehloReply: Reply(250, nil, ["mx", "chunking"])).chunking)
        #expect(!NextHopCapabilities(ehloReply: Reply(250, nil, ["mx", "CHUNKINGX"])).chunking)
    }

    @Test func pipelinedMessageGoesAsOneChunkAfterTheRCPTReplies() {
        let run = clientConverse(
            [clientGreeting, chunkingEHLO,
             "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550 5.1.1 no carol\r\n250 2.1.5 Ok\r\n",
             "250 2.0.0 Ok: 33 octets, queued as 4XyZ\r\n"],
            [(clientThree, clientMessage)])
        #expect(run.sent == [
            "EHLO relay.test\r\n",
            // No DATA in the group: BDAT waits for the RCPT replies.
            "MAIL FROM:<alice@example.org> SIZE=33 BODY=8BITMIME\r\nRCPT TO:<bob@example.net>\r\n"
                + "RCPT TO:<carol@example.net>\r\nRCPT TO:<dave@example.net>\r\n",
            clientMessageChunk,  // ".dot line" as it is: no dot-stuffing, no final "."
            "QUIT\r\n",
        ])
        #expect(run.phases == [.hello, .mail, .dataEnd, .quitting])
        let queued = Reply(250, "2.0.0", "Ok: 33 octets, queued as 4XyZ")
        #expect(run.outcomes.first?.dataReply == queued)
        #expect(run.outcomes.first?.result(forRecipient: 0) == queued)
        #expect(run.outcomes.first?.result(forRecipient: 1) == Reply(550, "5.1.1", "no carol"))
        #expect(run.failure == nil)
    }

    @Test func theChunkIsTheCallersOwnArray() {
        var s = ClientSession(hostname: "relay.test")
        _ = s.receive(Array(clientGreeting.utf8))
        _ = s.receive(Array(chunkingEHLO.utf8))
        let m = Array(clientMessage.utf8)
        _ = s.send(clientOne, message: m)
        let actions = s.receive(Array("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n".utf8))
        #expect(actions == [.send(Array("BDAT 33 LAST\r\n".utf8)), .sendChunk(m)])
        guard case .sendChunk(let sent)? = actions.last else { return }
        // Same storage: the message was not copied on its way out.
        #expect(sent.withUnsafeBufferPointer { $0.baseAddress } == m.withUnsafeBufferPointer { $0.baseAddress })
        #expect(actions.last?.wirePieces == [m])
    }

    @Test func switchedOffUsesDATA() {
        let run = clientConverse(
            [clientGreeting, chunkingEHLO, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n", "250 2.0.0 queued\r\n"],
            [(clientOne, clientMessage)], configure: { $0.useChunking = false })
        #expect(run.sent[1].hasSuffix("RCPT TO:<bob@example.net>\r\nDATA\r\n"))
        #expect(run.sent[2] == clientMessageWire)
        #expect(run.outcomes.first?.dataReply == Reply(250, "2.0.0", "queued"))
    }

    @Test func withoutChunkingOfferedUsesDATA() {
        let run = clientConverse(
            [clientGreeting, clientEHLOPipelining, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n", "250 2.0.0 queued\r\n"],
            [(clientOne, clientMessage)])
        #expect(run.sent[2] == clientMessageWire)
    }

    @Test func wireDataAlwaysGoesWithDATA() {
        // Already dot-stuffed and ending in ".": only DATA can carry that form.
        var s = ClientSession(hostname: "relay.test")
        _ = s.receive(Array(clientGreeting.utf8))
        _ = s.receive(Array(chunkingEHLO.utf8))
        let group = s.send(clientOne, wireData: Array(clientMessageWire.utf8))
        #expect(group.first.map { String(decoding: $0.wirePieces.joined(), as: UTF8.self).hasSuffix("DATA\r\n") } == true)
    }

    @Test func withoutPipeliningOneCommandPerReplyThenBDAT() {
        let t = OutboundTransaction(sender: "", recipients: ["bob@example.net", "carol@example.net"], size: 33)
        let run = clientConverse(
            [clientGreeting, chunkingEHLOPlain, "250 2.1.0 Ok\r\n", "250 2.1.5 Ok\r\n", "450 4.2.1 busy\r\n",
             "250 2.0.0 queued\r\n"],
            [(t, clientMessage)])
        #expect(run.sent == ["EHLO relay.test\r\n", "MAIL FROM:<>\r\n",
                             "RCPT TO:<bob@example.net>\r\n", "RCPT TO:<carol@example.net>\r\n", clientMessageChunk,
                             "QUIT\r\n"])
        #expect(run.phases == [.hello, .mail, .rcpt, .rcpt, .dataEnd, .quitting])
        #expect(run.outcomes.first?.result(forRecipient: 0) == Reply(250, "2.0.0", "queued"))
        #expect(run.outcomes.first?.result(forRecipient: 1) == Reply(450, "4.2.1", "busy"))
    }

    @Test func allRecipientsRefusedSendsNoChunk() {
        let run = clientConverse(
            [clientGreeting, chunkingEHLO, "250 2.1.0 Ok\r\n550 5.1.1 no\r\n"],
            [(clientOne, clientMessage)])
        #expect(run.sent == ["EHLO relay.test\r\n", "MAIL FROM:<alice@example.org> SIZE=33\r\nRCPT TO:<bob@example.net>\r\n",
                             "QUIT\r\n"])
        #expect(run.outcomes.first?.dataReply == nil)
        #expect(run.outcomes.first?.result(forRecipient: 0) == Reply(550, "5.1.1", "no"))
    }

    @Test func refusedMAILSendsNoChunk() {
        let run = clientConverse(
            [clientGreeting, chunkingEHLO, "451 4.3.0 try later\r\n503 5.5.1 need MAIL\r\n"],
            [(clientOne, clientMessage)])
        #expect(run.sent.last == "QUIT\r\n")
        #expect(!run.sent.joined().contains("BDAT"))
        #expect(run.outcomes.first?.mailReply == Reply(451, "4.3.0", "try later"))
        #expect(run.outcomes.first?.recipientReplies == [nil])
        #expect(run.outcomes.first?.dataReply == nil)
    }

    @Test func refusedLastChunkIsTheDataReply() {
        let run = clientConverse(
            [clientGreeting, chunkingEHLO, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n", "554 5.6.0 bad content\r\n"],
            [(clientOne, clientMessage)])
        #expect(run.outcomes.first?.dataReply == Reply(554, "5.6.0", "bad content"))
        #expect(run.outcomes.first?.result(forRecipient: 0) == Reply(554, "5.6.0", "bad content"))
        #expect(run.sent.last == "QUIT\r\n")
    }

    @Test func pipelinedChunksGoAtOnceAndTheFirstRefusalCounts() {
        let t = OutboundTransaction(sender: "a@x.test", recipients: ["b@y.test"], size: 33)
        let replies = "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n"
        let chunks = "BDAT 10\r\nSubject: h" + "BDAT 10\r\ni\r\n\r\nHello" + "BDAT 10\r\n\r\n.dot lin" + "BDAT 3 LAST\r\ne\r\n"
        let ok = clientConverse(
            [clientGreeting, chunkingEHLO, replies, "250 2.0.0 10\r\n250 2.0.0 20\r\n250 2.0.0 30\r\n250 2.0.0 queued\r\n"],
            [(t, clientMessage)], configure: { $0.chunkSize = 10 })
        #expect(ok.sent[2] == chunks)
        #expect(ok.outcomes.first?.dataReply == Reply(250, "2.0.0", "queued"))
        // A refused chunk answers for the transaction; the replies to the chunks after it are read
        // (they are in the pipeline) but change nothing.
        let refused = clientConverse(
            [clientGreeting, chunkingEHLO, replies,
             "250 2.0.0 10\r\n552 5.3.4 too big\r\n503 5.5.1 send RSET\r\n503 5.5.1 send RSET\r\n"],
            [(t, clientMessage), (t, "x\r\n")], configure: { $0.chunkSize = 10 })
        #expect(refused.outcomes.first?.dataReply == Reply(552, "5.3.4", "too big"))
        #expect(refused.outcomes.first?.result(forRecipient: 0) == Reply(552, "5.3.4", "too big"))
        // The next transaction starts clean, with RSET first.
        #expect(refused.sent.last?.hasPrefix("RSET\r\nMAIL FROM:<a@x.test>") == true)
        #expect(refused.failure == nil)
    }

    @Test func withoutPipeliningEachChunkWaitsForItsReply() {
        let t = OutboundTransaction(sender: "a@x.test", recipients: ["b@y.test"], size: 33)
        let run = clientConverse(
            [clientGreeting, chunkingEHLOPlain, "250 2.1.0 Ok\r\n", "250 2.1.5 Ok\r\n", "250 2.0.0 16\r\n",
             "250 2.0.0 32\r\n", "250 2.0.0 queued\r\n"],
            [(t, clientMessage)], configure: { $0.chunkSize = 16 })
        #expect(Array(run.sent[3...5]) == ["BDAT 16\r\nSubject: hi\r\n\r\nH", "BDAT 16\r\nello\r\n.dot line\r",
                                           "BDAT 1 LAST\r\n\n"])
        #expect(run.phases[3...5] == [.dataEnd, .dataEnd, .dataEnd])
        #expect(run.outcomes.first?.dataReply == Reply(250, "2.0.0", "queued"))

        // Refused in the middle: the rest is never sent, the transaction ends there.
        let cut = clientConverse(
            [clientGreeting, chunkingEHLOPlain, "250 2.1.0 Ok\r\n", "250 2.1.5 Ok\r\n", "452 4.3.1 disk full\r\n"],
            [(t, clientMessage)], configure: { $0.chunkSize = 16 })
        #expect(cut.sent.last == "QUIT\r\n")
        #expect(cut.sent.filter { $0.hasPrefix("BDAT") }.count == 1)
        #expect(cut.outcomes.first?.dataReply == Reply(452, "4.3.1", "disk full"))
    }

    @Test func bareLineEndsAreRepairedWithoutDotStuffing() {
        let t = OutboundTransaction(sender: "a@x.test", recipients: ["b@y.test"], size: 11)
        let run = clientConverse(
            [clientGreeting, chunkingEHLO, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n", "250 2.0.0 queued\r\n"],
            [(t, "a\n.b\rc\r\nd")])
        // The count is that of the octets sent, after the repair.
        #expect(run.sent[2] == "BDAT 13 LAST\r\na\r\n.b\r\nc\r\nd\r\n")
    }

    @Test func emptyMessageIsBDATZeroLast() {
        let t = OutboundTransaction(sender: "a@x.test", recipients: ["b@y.test"], size: 0)
        let run = clientConverse(
            [clientGreeting, chunkingEHLO, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n", "250 2.0.0 queued\r\n"],
            [(t, "")])
        #expect(run.sent[2] == "BDAT 0 LAST\r\n")
        #expect(run.outcomes.first?.dataReply == Reply(250, "2.0.0", "queued"))
    }

    @Test func reply421WhileChunksAreOutFailsTheSessionWithoutQUIT() {
        let run = clientConverse(
            [clientGreeting, chunkingEHLO, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n", "421 4.4.2 timeout\r\n"],
            [(clientOne, clientMessage)])
        #expect(run.failure?.reply == Reply(421, "4.4.2", "timeout"))
        #expect(run.sent.last == "")
        #expect(run.closed)
    }

    @Test func timeoutWaitingForTheChunkReplyNamesBDAT() {
        var s = ClientSession(hostname: "relay.test")
        _ = s.receive(Array(clientGreeting.utf8))
        _ = s.receive(Array(chunkingEHLO.utf8))
        _ = s.send(clientOne, message: Array(clientMessage.utf8))
        _ = s.receive(Array("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n".utf8))
        #expect(s.phase == .dataEnd)
        let actions = s.timedOut()
        #expect(actions.contains(.sessionFailed(nil, "timed out waiting for the reply to BDAT LAST")))
        // After BDAT, as after DATA, QUIT could be taken for chunk octets: none is sent.
        #expect(!actions.contains { $0.wirePieces.joined().starts(with: Array("QUIT".utf8)) })
    }

    @Test func repliesSeenNameTheChunks() {
        var s = ClientSession(hostname: "relay.test")
        s.chunkSize = 20
        s.repliesSeen = []
        _ = s.receive(Array(clientGreeting.utf8))
        _ = s.receive(Array(chunkingEHLO.utf8))
        _ = s.send(clientOne, message: Array(clientMessage.utf8))
        _ = s.receive(Array("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.0.0 20\r\n250 2.0.0 queued\r\n".utf8))
        #expect(s.repliesSeen == [RepliedCommand(.greeting, 220), RepliedCommand(.ehlo, 250), RepliedCommand(.mail, 250),
                                  RepliedCommand(.rcpt, 250), RepliedCommand(.bdat, 250), RepliedCommand(.dataEnd, 250)])
    }

    /// Random messages and chunk sizes: the chunk octets put together are the line-end-repaired
    /// message, every count matches its chunk, exactly the last one says LAST, and whether the message
    /// goes out untouched is what `hasCanonicalLineEnds` says.
    @Test func randomMessagesAndChunkSizes() {
        var rng = SplitMix64(seed: 0xBDA7)
        let alphabet: [UInt8] = [13, 10, UInt8(ascii: "."), UInt8(ascii: "a"), UInt8(ascii: " ")]
        for round in 0..<400 {
            let length = Int(rng.next() % 200)
            let m = (0..<length).map { _ in alphabet[Int(rng.next() % UInt64(alphabet.count))] }
            let chunk = round % 4 == 0 ? nil : Int(1 + rng.next() % 64)
            var s = ClientSession(hostname: "relay.test")
            s.chunkSize = chunk
            _ = s.receive(Array(clientGreeting.utf8))
            _ = s.receive(Array(chunkingEHLO.utf8))
            _ = s.send(OutboundTransaction(sender: "a@x.test", recipients: ["b@y.test"], size: m.count), message: m)
            let wire = s.receive(Array("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n".utf8)).flatMap(\.wirePieces).joined()
            // Parse the chunks back.
            var rest = ArraySlice(wire), octets: [UInt8] = [], lasts = 0, commands = 0
            while let end = rest.firstIndex(of: 10) {
                let line = String(decoding: rest[rest.startIndex..<end], as: UTF8.self)
                let words = line.dropLast().split(separator: " ")
                #expect(words.first == "BDAT")
                guard words.count >= 2, let n = Int(words[1]) else { Issue.record("bad line \(line)"); break }
                commands += 1
                if words.count == 3 { lasts += 1 }
                octets += rest[(end + 1)..<(end + 1 + n)]
                rest = rest[(end + 1 + n)...]
                if let c = chunk { #expect(n <= c) }
            }
            #expect(rest.isEmpty)
            #expect(lasts == 1)
            #expect(octets == canonicalizeLineEnds(m), "message \(m)")
            #expect(hasCanonicalLineEnds(octets))
            #expect((octets == m) == hasCanonicalLineEnds(m), "message \(m)")
            if chunk == nil { #expect(commands == 1) }
        }
    }

    /// canonicalizeLineEnds is encodeOutboundData without the dots: removing the stuffed dots and the
    /// final "." from the DATA form gives the BDAT form.
    @Test func canonicalFormIsTheDataFormWithoutTheDots() {
        var rng = SplitMix64(seed: 7)
        let alphabet: [UInt8] = [13, 10, UInt8(ascii: "."), UInt8(ascii: "a")]
        for _ in 0..<2000 {
            let m = (0..<Int(rng.next() % 40)).map { _ in alphabet[Int(rng.next() % 4)] }
            var unstuffed = Array(encodeOutboundData(m).dropLast(3))
            // Every line that starts with "." got one more.
            var i = 0, out: [UInt8] = []
            while i < unstuffed.count {
                let lineStart = i == 0 || unstuffed[i - 1] == 10
                if lineStart && unstuffed[i] == UInt8(ascii: ".") { i += 1 }
                out.append(unstuffed[i]); i += 1
            }
            unstuffed = out
            #expect(canonicalizeLineEnds(m) == unstuffed, "message \(m)")
        }
    }
}
