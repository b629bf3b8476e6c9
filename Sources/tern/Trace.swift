// `tern trace FILE`: prints a stored message's Received chain hop by hop, oldest first, and flags what
// looks forged or broken. Exit status 0 when nothing is flagged, 1 when something is, 2 when the file
// cannot be read (ArgumentParser's usual 64 for bad arguments).

import ArgumentParser
import Relay
import SMTPProtocol

#if canImport(Glibc)
import Glibc
#endif

struct Trace: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print a message's Received chain hop by hop and flag forged or broken hops.",
        discussion: """
            Reads a stored message (a spool .msg file, an .eml, a mailbox export of one message) or stdin \
            with "-" or no FILE. Flags: a hop whose from (HELO name, reverse DNS name or address) does not \
            match the by of the hop before it; dates that go backwards or lie in the future; fields it \
            cannot parse.
            Trust: the top hop (written by the MTA that stored the message), this machine's hostname, the \
            hostname of --config and each --trust host are trusted. Walking down, a hop is a fact while the hop above it received the \
            message from a trusted client (by its reverse DNS name or address, or over loopback). At the \
            first untrusted client the HELO name must agree with the reverse name or address the trusted \
            MTA recorded, or it is flagged, naming the real sender; every hop below it was written by that \
            sender and is shown as unverified.
            Exits 0 when nothing is flagged, 1 when something is.
            """)

    @Argument(help: "The message file; \"-\" or nothing for stdin.")
    var file: String?

    @Option(name: .long, help: "Seconds of clock skew between hosts to tolerate before flagging a date.")
    var allowSkew: Int = 0

    @Option(name: .long, help: ArgumentHelp("A host (name or address) whose Received hops are trusted; repeat or comma-separate.",
                                             valueName: "host"))
    var trust: [String] = []

    @Option(name: .long, help: "A Tern config whose hostname is trusted too (the name its Received hops carry).")
    var config: String?

    func run() throws {
        let path = file ?? "-"
        guard let bytes = readHeaderSection(path) else {
            fputs("tern trace: \(path): \(String(cString: strerror(errno)))\n", stderr)
            throw ExitCode(2)
        }
        var trusted = Set(trust.flatMap { $0.split(separator: ",").map { String($0) } })
        // The name serve stamps on its Received hops when the config sets none.
        trusted.insert(TernConfig.systemHostname())
        if let config {
            do {
                trusted.insert(try TernConfig.load(path: config).hostname)
            } catch {
                fputs("tern trace: \(error)\n", stderr)
                throw ExitCode(78)  // EX_CONFIG, as serve
            }
        }
        let trace = ReceivedTrace(message: bytes, now: time(nil), allowedSkew: max(0, allowSkew), trusted: trusted)
        // Header text may hold control characters: nothing reaches the terminal unescaped.
        print(render(trace).split(separator: "\n", omittingEmptySubsequences: false)
            .map { terminalSafe(String($0)) }.joined(separator: "\n"), terminator: "")
        if !trace.findings.isEmpty { throw ExitCode(1) }
    }

    func render(_ trace: ReceivedTrace) -> String {
        if trace.hops.isEmpty { return "no Received fields\n" }
        var out = ""
        for (index, hop) in trace.hops.enumerated() {
            let pad = "       "
            var from = hop.from.map { "from \($0)" } ?? "from -"
            for comment in hop.fromComments { from += " (\(comment))" }
            out += "hop \(index + 1)".padding(7) + from + "\n"
            out += pad + "ip    \(hop.fromIP ?? "-")\n"
            var by = hop.by ?? "-"
            for comment in hop.byComments { by += " (\(comment))" }
            out += pad + "by    \(by)\n"
            out += pad + "with  \(hop.with ?? "-")\n"
            out += pad + "id    \(hop.id ?? "-")\n"
            if let recipient = hop.recipient { out += pad + "for   \(recipient)\n" }
            var date = hop.dateText ?? "-"
            if let seconds = trace.delay(ofHop: index) { date += "  (delay \(formatDelay(seconds)))" }
            out += pad + "date  \(date)\n"
            if trace.isUnverified(index) {
                out += pad + "trust unverified: written by the sender, \(trace.sender ?? "unknown")\n"
            } else if index == trace.boundary {
                out += pad + "trust trusted; its client is the sender, \(trace.sender ?? "unknown")\n"
            } else {
                out += pad + "trust trusted\n"
            }
            for finding in trace.findings where finding.hop == index + 1 {
                out += pad + "!     \(finding.message)\n"
            }
        }
        let n = trace.findings.count
        out += "\(trace.hops.count) hop\(trace.hops.count == 1 ? "" : "s"), "
            + (n == 0 ? "nothing flagged" : "\(n) flagged")
        if let boundary = trace.boundary, boundary > 0 {
            let hops = boundary == 1 ? "hop 1" : "hops 1-\(boundary)"
            out += "; \(hops) unverified (written by the sender, \(trace.sender ?? "unknown"))"
        }
        return out + "\n"
    }
}

/// The file's bytes up to the end of its header section (the body can be large and is not needed).
private func readHeaderSection(_ path: String) -> [UInt8]? {
    let file: UnsafeMutablePointer<FILE>? = path == "-" ? stdin : fopen(path, "rb")
    guard let file else { return nil }
    defer { if path != "-" { fclose(file) } }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = fread(&chunk, 1, chunk.count, file)
        if n > 0 {
            let searchFrom = max(0, bytes.count - 3)
            bytes.append(contentsOf: chunk[0..<n])
            if endOfHeaders(bytes, from: searchFrom) { break }
        }
        if n < chunk.count {
            if ferror(file) != 0 { return nil }
            break
        }
    }
    return bytes
}

private func endOfHeaders(_ bytes: [UInt8], from start: Int) -> Bool {
    var i = max(start, 1)
    while i < bytes.count {
        if bytes[i] == 0x0A && (bytes[i - 1] == 0x0A || (i >= 2 && bytes[i - 1] == 0x0D && bytes[i - 2] == 0x0A)) {
            return true
        }
        i += 1
    }
    return false
}

private extension String {
    func padding(_ width: Int) -> String {
        count >= width ? self + " " : self + String(repeating: " ", count: width - count)
    }
}
