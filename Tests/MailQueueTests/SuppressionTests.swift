import Randomness
import Testing
@testable import MailQueue

/// The suppression list (Suppression.swift): keys, scopes, domains, removal, the file's records, and
/// its size at scale.
@Suite struct SuppressionTests {
    @Test func addressesAndDomainsGloballyAndPerSenderDomain() {
        var list = SuppressionList()
        let r1 = list.add(SuppressionEntry(address: "Bob@Example.NET", reason: "InvalidRecipient 5.1.1", time: 100,
                                          source: .bounce))
        #expect(r1)
        let r2 = list.add(SuppressionEntry(address: "@closed.example", reason: "gone", time: 200))
        #expect(r2)
        let r3 = list.add(SuppressionEntry(address: "carol@example.net", scope: "News.Example.ORG", reason: "unsubscribed",
                                          time: 300))
        #expect(r3)
        #expect(list.count == 3)
        // Case does not matter (ASCII), on either side.
        #expect(list.isSuppressed(recipient: "bob@example.net", senderDomain: nil))
        #expect(list.isSuppressed(recipient: "BOB@EXAMPLE.NET", senderDomain: "any.example"))
        #expect(list.suppressing(recipient: "bob@example.net", senderDomain: nil)
                == SuppressionEntry(address: "bob@example.net", reason: "InvalidRecipient 5.1.1", time: 100, source: .bounce))
        // A domain entry covers every address at it, not its subdomains or lookalikes.
        #expect(list.isSuppressed(recipient: "anyone@closed.example", senderDomain: nil))
        #expect(!list.isSuppressed(recipient: "anyone@sub.closed.example", senderDomain: nil))
        #expect(!list.isSuppressed(recipient: "anyone@notclosed.example", senderDomain: nil))
        // A scoped entry only for that sender domain.
        #expect(list.isSuppressed(recipient: "carol@example.net", senderDomain: "news.example.org"))
        #expect(!list.isSuppressed(recipient: "carol@example.net", senderDomain: "billing.example.org"))
        #expect(!list.isSuppressed(recipient: "carol@example.net", senderDomain: nil))
        #expect(!list.isSuppressed(recipient: "dave@example.net", senderDomain: "news.example.org"))
        // No "@": only the address key applies.
        #expect(!list.isSuppressed(recipient: "postmaster", senderDomain: nil))
    }

    @Test func addingAgainReplacesAndRemoveLifts() {
        var list = SuppressionList()
        list.add(SuppressionEntry(address: "a@x.test", reason: "first", time: 1))
        list.add(SuppressionEntry(address: "A@X.TEST", reason: "second", time: 2, source: .bounce))
        #expect(list.count == 1)
        #expect(list.entry(address: "a@x.test")?.reason == "second")
        #expect(list.entry(address: "a@x.test")?.source == .bounce)
        let r4 = list.remove(address: "A@x.test")
        #expect(r4)
        let r5 = list.remove(address: "a@x.test")
        #expect(!r5)
        #expect(list.count == 0 && !list.isSuppressed(recipient: "a@x.test", senderDomain: nil))
        // Added again after removal: found again.
        list.add(SuppressionEntry(address: "a@x.test", reason: "third", time: 3))
        #expect(list.entry(address: "a@x.test")?.reason == "third" && list.count == 1)
    }

    @Test func badKeysAreRefused() {
        var list = SuppressionList()
        let r6 = list.add(SuppressionEntry(address: "", reason: "x", time: 1))
        #expect(!r6)
        let r7 = list.add(SuppressionEntry(address: "a\nb@x.test", reason: "x", time: 1))
        #expect(!r7)
        let r8 = list.add(SuppressionEntry(address: "a@x.test", scope: "a\0b", reason: "x", time: 1))
        #expect(!r8)
        let r9 = list.add(SuppressionEntry(address: String(repeating: "a", count: 600) + "@x.test", reason: "x", time: 1))
        #expect(!r9)
        #expect(list.count == 0)
    }

    /// A seeded model: the list answers as a dictionary would after every add and remove, through
    /// growth, tombstones and compaction.
    @Test(arguments: [1, 2, 3] as [UInt64])
    func behavesLikeADictionary(seed: UInt64) {
        var random = SplitMix64(seed: seed)
        var list = SuppressionList()
        var model: [String: String] = [:]
        for step in 0..<6000 {
            let address = "u\(random.next() % 2500)@d\(random.next() % 7).test"
            if random.next() % 3 == 0 {
                let r10 = list.remove(address: address)
                #expect(r10 == (model.removeValue(forKey: address) != nil), "step \(step)")
            } else {
                list.add(SuppressionEntry(address: address, reason: "r\(step % 5)", time: step))
                model[address] = "r\(step % 5)"
            }
            if step % 500 == 0 || step == 5999 {
                #expect(list.count == model.count)
                for k in 0..<2500 {
                    for d in 0..<7 {
                        let a = "u\(k)@d\(d).test"
                        #expect(list.entry(address: a)?.reason == model[a], "\(a) at step \(step)")
                    }
                }
            }
        }
        #expect(Set(list.entries.map(\.address)) == Set(model.keys))
    }

    @Test func recordsRoundTripAndACutShortLineIsNotOne() {
        let entries = [
            SuppressionEntry(address: "bob@example.net", reason: "InvalidRecipient 5.1.1", time: 1_765_000_000, source: .bounce),
            SuppressionEntry(address: "@closed.example", scope: "news.example.org", reason: "tab\there\r\nand lines", time: 5),
        ]
        var file: [UInt8] = []
        for e in entries { file += SuppressionRecord.add(e).line }
        file += SuppressionRecord.remove(address: "bob@example.net", scope: "").line
        file += Array("garbage line\n".utf8)
        file += SuppressionRecord.add(SuppressionEntry(address: "late@x.test", reason: "r", time: 9)).line.dropLast(3)
        var list = SuppressionList()
        let result = SuppressionRecord.replay(file, into: &list)
        #expect(result.bad == 1 && result.cutShort)
        #expect(list.entries == [SuppressionEntry(address: "@closed.example", scope: "news.example.org",
                                                  reason: "tab here  and lines", time: 5)])
        #expect(SuppressionRecord.parse(SuppressionRecord.add(entries[0]).line.dropLast()) == .add(entries[0]))
        #expect(SuppressionRecord.parse(Array("+\t\tbob@x\t-1\tmanual\tr".utf8)[...]) == nil)
        #expect(SuppressionRecord.parse(Array("+\t\tbob@x\t1\tlater\tr".utf8)[...]) == nil)
        #expect(SuppressionRecord.parse(Array("-\t\t".utf8)[...]) == nil)
    }

    /// A million entries: the size the issue bounds (under 100 bytes an entry), and lookups that find
    /// them. Time is for bench/, not here.
    @Test func aMillionEntriesFitInUnderAHundredBytesEach() {
        var list = SuppressionList()
        for i in 0..<1_000_000 {
            list.add(SuppressionEntry(address: "user\(i)@domain\(i % 1000).example", reason: "InvalidRecipient 5.1.1",
                                      time: 1_765_000_000, source: .bounce))
        }
        #expect(list.count == 1_000_000)
        #expect(list.bytesHeld / list.count < 100, "\(list.bytesHeld / list.count) bytes an entry")
        #expect(list.isSuppressed(recipient: "user999999@domain999.example", senderDomain: "x.example"))
        #expect(!list.isSuppressed(recipient: "user1000000@domain0.example", senderDomain: nil))
    }

    /// Which hard bounces suppress their recipient ([suppression] auto_classes).
    @Test func onlyARecipientsOwnHardBounceOfAListedClassSuppresses() {
        var e = RecipientEvent(id: QueueID(microseconds: 1_765_000_000_000_000), to: "Gone@X.test", relay: "mx",
                               tls: nil, delay: 1, dsn: "5.1.1", status: .bounced, reply: "550 5.1.1 no such user",
                               bounceClass: "InvalidRecipient", recipientSpecific: true)
        let classes = ["InvalidRecipient", "BadDomain"]
        #expect(SuppressionEntry.fromHardBounce(e, autoClasses: classes, time: 7)
                == SuppressionEntry(address: "gone@x.test", reason: "InvalidRecipient 5.1.1", time: 7, source: .bounce))
        var other = e
        other.status = .deferred
        #expect(SuppressionEntry.fromHardBounce(other, autoClasses: classes, time: 7) == nil)
        other = e
        other.recipientSpecific = false  // MAIL or DATA refused: the sender's problem
        #expect(SuppressionEntry.fromHardBounce(other, autoClasses: classes, time: 7) == nil)
        other = e
        other.bounceClass = "SpamBlock"
        #expect(SuppressionEntry.fromHardBounce(other, autoClasses: classes, time: 7) == nil)
        #expect(SuppressionEntry.fromHardBounce(e, autoClasses: [], time: 7) == nil)
        e.dsn = "5.1.8"
        #expect(SuppressionEntry.fromHardBounce(e, autoClasses: classes, time: 7) == nil)
    }
}
