import Foundation
import SMTPProtocol
import Testing
@testable import Relay

@Suite struct InjectionTests {
    func parse(_ json: String) throws -> InjectionRequest { try InjectionRequest.parse(Array(json.utf8)) }

    func field(_ json: String) -> String? {
        do {
            _ = try parse(json)
            return nil
        } catch let error as InjectionError {
            return error.field
        } catch {
            return "?"
        }
    }

    @Test func eachErrorNamesItsField() {
        let ok = #""recipients":[{"email":"b@y.test"}],"content":"Subject: x\n\nhi""#
        #expect(field("{") == "")
        #expect(field("[]") == "")
        #expect(field("{" + ok + "}") == "envelope_sender")
        #expect(field(#"{"envelope_sender":"nope","# + ok + "}") == "envelope_sender")
        #expect(field(#"{"envelope_sender":"a@x.test","content":"x"}"#) == "recipients")
        #expect(field(#"{"envelope_sender":"a@x.test","recipients":[],"content":"x"}"#) == "recipients")
        #expect(field(#"{"envelope_sender":"a@x.test","recipients":[{"email":"b@y.test"},{"email":"b@"}],"content":"x"}"#)
                    == "recipients[1].email")
        #expect(field(#"{"envelope_sender":"a@x.test","recipients":[{"email":"b@y.test","substitutions":{"k":[1]}}],"content":"x"}"#)
                    == "recipients[0].substitutions.k")
        #expect(field(#"{"envelope_sender":"a@x.test","recipients":[{"email":"b@y.test"}]}"#) == "content")
        #expect(field(#"{"envelope_sender":"a@x.test","recipients":[{"email":"b@y.test"}],"content":7}"#) == "content")
        #expect(field(#"{"envelope_sender":"a@x.test","recipients":[{"email":"b@y.test"}],"content":{"subject":"s"}}"#)
                    == "content.from")
        #expect(field(#"{"envelope_sender":"a@x.test","recipients":[{"email":"b@y.test"}],"content":{"from":"a@x.test","bcc":"z"}}"#)
                    == "content.bcc")
        #expect(field(#"{"envelope_sender":"a@x.test","recipients":[{"email":"b@y.test"}],"content":{"from":"a@x.test","headers":{"To":"z@z.test"}}}"#)
                    == "content.headers.To")
        #expect(field(#"{"envelope_sender":"a@x.test","recipients":[{"email":"b@y.test"}],"content":{"from":"a@x.test","attachments":[{"data":"!!","base64":true}]}}"#)
                    == "content.attachments[0].data")
        #expect(field(#"{"envelope_sender":"a@x.test","recipients":[{"email":"b@y.test"}],"content":{"from":"a@x.test","attachments":[{"data":"AA==","base64":1}]}}"#)
                    == "content.attachments[0].base64")
        #expect(field("{\"envelope_sender\":\"a@x.test\"," + ok + "}") == nil)
    }

    @Test func substitutionsPreferTheRecipientsThenTheRequestsThenNothing() throws {
        let r = try parse(#"{"envelope_sender":"a@x.test","substitutions":{"p":"Tern","n":"all"},"recipients":[{"email":"b@y.test","substitutions":{"n":"Bea","age":42}}],"content":"x"}"#)
        #expect(r.render("{{ n }} {{p}} {{age}} [{{ missing }}] {{ open", for: 0) == "Bea Tern 42 [] {{ open")
    }

    @Test func rawContentGetsCRLFAndTheFieldsItLacks() {
        var made = 0
        let (bytes, id) = InjectionRequest.completed("Subject: x\nFrom: a@x.test\n\nline\rtwo", date: "D",
                                                     newMessageID: { made += 1; return "<m@h>" })
        #expect(String(decoding: bytes, as: UTF8.self) == "Date: D\r\nMessage-ID: <m@h>\r\nSubject: x\r\nFrom: a@x.test\r\n\r\nline\r\ntwo\r\n")
        #expect(id == "<m@h>" && made == 1)
        let (kept, keptID) = InjectionRequest.completed("Date: X\r\nMessage-Id:  <own@h>\r\n\r\nbody\r\n", date: "D",
                                                        newMessageID: { made += 1; return "<new@h>" })
        #expect(String(decoding: kept, as: UTF8.self) == "Date: X\r\nMessage-Id:  <own@h>\r\n\r\nbody\r\n")
        #expect(keptID == "<own@h>" && made == 1)
        // A Message-ID in the body is not the message's.
        let (_, bodyID) = InjectionRequest.completed("Subject: s\r\n\r\nMessage-ID: <no@h>\r\n", date: "D",
                                                     newMessageID: { "<made@h>" })
        #expect(bodyID == "<made@h>")
    }

    @Test func theEstimateCountsEveryHoleFilledWithTheLongestValue() throws {
        let long = String(repeating: "v", count: 1000)
        let holes = String(repeating: "{{x}}", count: 1000)
        let r = try parse(#"{"envelope_sender":"a@x.test","recipients":[{"email":"b@y.test","substitutions":{"x":""# + long
                          + #""}},{"email":"c@y.test"}],"content":"Subject: s\n\n"# + holes + #""}"#)
        // 1000 holes of 1000 bytes each, line breaks doubled, for each of the two recipients.
        #expect(r.estimatedBytes >= 2 * 2 * 1000 * 1000)
        let made = r.messages(date: "D", newMessageID: { "<i@h>" }, boundarySeed: 1).reduce(0) { $0 + $1.bytes.count }
        #expect(made <= r.estimatedBytes, "the estimate is an upper bound of what is made")
        let plain = try parse(#"{"envelope_sender":"a@x.test","recipients":[{"email":"b@y.test"},{"email":"c@y.test"}],"content":"Subject: s\n\n"# + holes + #""}"#)
        #expect(plain.estimatedBytes < 20_000, "without substitutions one message for all, no holes filled")
    }

    @Test func oneMessageForAllUnlessPersonalOrBuilt() throws {
        let raw = try parse(#"{"envelope_sender":"a@x.test","recipients":[{"email":"b@y.test"},{"email":"c@y.test"}],"content":"Subject: s\n\nhi"}"#)
        var n = 0
        let one = raw.messages(date: "D", newMessageID: { n += 1; return "<\(n)@h>" }, boundarySeed: 1)
        #expect(one.count == 1 && one[0].recipients == [0, 1])
        let personal = try parse(#"{"envelope_sender":"a@x.test","recipients":[{"email":"b@y.test","substitutions":{"x":"B"}},{"email":"c@y.test"}],"content":"Subject: {{x}}\n\nhi"}"#)
        let two = personal.messages(date: "D", newMessageID: { n += 1; return "<\(n)@h>" }, boundarySeed: 1)
        #expect(two.map(\.recipients) == [[0], [1]])
        #expect(String(decoding: two[0].bytes, as: UTF8.self).contains("Subject: B\r\n"))
        #expect(String(decoding: two[1].bytes, as: UTF8.self).contains("Subject: \r\n"))
        let built = try parse(#"{"envelope_sender":"a@x.test","recipients":[{"email":"b@y.test","name":"Bea"},{"email":"c@y.test"}],"content":{"from":{"email":"a@x.test","name":"A"},"subject":"s","text_body":"t"}}"#)
        let each = built.messages(date: "D", newMessageID: { n += 1; return "<\(n)@h>" }, boundarySeed: 1)
        #expect(each.count == 2)
        #expect(String(decoding: each[0].bytes, as: UTF8.self).contains("To: Bea <b@y.test>\r\n"))
        #expect(String(decoding: each[1].bytes, as: UTF8.self).contains("To: c@y.test\r\n"))
        #expect(each[0].messageID != each[1].messageID)
    }
}
