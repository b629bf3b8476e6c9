import Foundation
import Testing
@testable import MailQueue

/// The `held` line: written only while a message is on hold, read back, and refused when malformed,
/// so a hold survives a restart and an older record (no line) means "not held".
@Suite struct EnvelopeHeldTests {
    @Test func heldIsWrittenOnlyWhenSetAndReadBack() throws {
        var e = sampleEnvelope()
        #expect(!String(decoding: EnvelopeRecord.encode(e), as: UTF8.self).contains("held"))
        e.held = true
        let text = String(decoding: EnvelopeRecord.encode(e), as: UTF8.self)
        #expect(text.contains("\nnext-attempt\t1700000300.500000\nheld\t1\nrcpt\t"))
        let back = try EnvelopeRecord.decode(Array(text.utf8))
        #expect(back.held)
        #expect(back == e)
    }

    @Test func aRecordWithoutTheLineIsNotHeld() throws {
        #expect(try EnvelopeRecord.decode(Array(sampleRecord.utf8)).held == false)
    }

    @Test func malformedOrRepeatedHeldIsRefusedByName() {
        for bad in ["held\t0\n", "held\tyes\n", "held\t\n", "held\t1\nheld\t1\n"] {
            let text = sampleRecord.replacingOccurrences(of: "rcpt\tpending", with: bad + "rcpt\tpending")
            #expect(throws: EnvelopeRecordError.self) { try EnvelopeRecord.decode(Array(text.utf8)) }
            do {
                _ = try EnvelopeRecord.decode(Array(text.utf8))
            } catch let error as EnvelopeRecordError {
                #expect(error.field == "held")
            } catch {
                Issue.record("unexpected \(error)")
            }
        }
    }
}
