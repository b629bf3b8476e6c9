// `tern blast`: the load generator's command line. Parses and checks every option (a bad one exits
// 64 naming it), runs BlastRunner on a fresh loop, prints the table or --json on stdout (progress
// goes to stderr), and exits 0 when it ran, whatever the server answered, or 69 when nothing could
// connect.

import ArgumentParser
import Blast
import UVRuntime

#if canImport(Glibc)
import Glibc
#endif

struct BlastCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "blast",
        abstract: "Send load to an SMTP server and report rates and latencies.",
        discussion: """
            Sizes: 4096, 4k, 1m; a range 1k-100k (uniform); or a weighted list 1k:70,10k:25,1m:5 (an entry \
            may be a range). A size is the whole message (header and body) as given to DATA.
            --handshake-only (or --handshakes N): each connection reads the greeting, sends EHLO and STARTTLS, \
            completes the TLS handshake, sends EHLO again and QUIT; no mail. It implies --starttls and counts \
            handshakes (1000 unless --duration is given); the options that shape messages are refused.
            Address patterns: {n} message number, {c} connection number, {r} recipient number within the \
            message, {n%K} modulo K. An empty --from sends the null sender <>.
            Exit status: 0 when the run happened (4xx and 5xx replies are counted, not fatal), 64 for a bad \
            argument, 69 when no connection could be made.
            """)

    @Option(name: .long, help: "The server: ADDRESS:PORT with a numeric address (127.0.0.1:2525, [::1]:25).")
    var server: String

    @Option(name: .long, help: "Messages to send (default 1000 unless --duration is given).")
    var messages: Int?

    @Option(name: .long, help: "Send for this long instead (30s, 1500ms, 2m); with --messages, whichever ends first.")
    var duration: String?

    @Option(name: .long, help: "Connections at once.")
    var concurrency: Int = 10

    // The options that shape messages have no default here, so that --handshake-only can tell
    // whether one was given (and refuse it); the defaults are applied in settings().
    @Option(name: .long, help: "Message size: 4k, 1k-100k, or 1k:70,10k:25,1m:5 (default 4k).")
    var size: String?

    @Option(name: .long, help: "Recipients per message: N or a range A-B (default 1).")
    var recipients: String?

    @Option(name: .long, help: "Messages per connection before QUIT (0: no limit; default 1).")
    var messagesPerConnection: Int?

    @Flag(name: .long, inversion: .prefixedNo, help: "Pipeline MAIL, RCPT and DATA when the server offers PIPELINING (default on).")
    var pipelining: Bool?

    @Flag(name: .long, help: "Send with BDAT (RFC 3030, no dot-stuffing) when the server offers CHUNKING; DATA otherwise.")
    var bdat = false

    @Option(name: .long, help: "With --bdat: the largest chunk, e.g. 64k (default: the whole message in one BDAT LAST).")
    var chunkSize: String?

    @Option(name: .long, help: "At most this many messages (handshakes with --handshake-only) per second (default: no cap).")
    var rate: Double?

    @Option(name: .long, help: "Sender pattern (default blast@example.test).")
    var from: String?

    @Option(name: .long, help: "Recipient pattern (default rcpt{n}-{r}@example.test).")
    var to: String?

    @Option(name: .long, help: "Local address to connect from; repeat or comma-separate for round-robin.")
    var bind: [String] = []

    @Option(name: .long, help: "Our name in EHLO.")
    var helo: String = "blast.tern.test"

    @Option(name: .long, help: "Longest wait for the connection and for each reply.")
    var timeout: String = "60s"

    @Option(name: .long, help: "Seed for sizes and recipient counts drawn at random.")
    var seed: UInt64 = 1

    @Flag(name: .long, help: "STARTTLS on every connection; a server that does not offer it counts as a failed session. The certificate is not checked.")
    var starttls = false

    @Flag(name: .long, help: "No mail: each connection does greeting, EHLO, STARTTLS, the TLS handshake, EHLO, QUIT and counts one handshake. Implies --starttls.")
    var handshakeOnly = false

    @Option(name: .long, help: "Handshakes to complete or fail (implies --handshake-only; default 1000 unless --duration is given).")
    var handshakes: Int?

    @Flag(name: .long, help: "Print the report as JSON.")
    var json = false

    @Option(name: .long, help: "Interval of the progress display on stderr (default 1s on a terminal, 10s otherwise).")
    var progress: String?

    @Flag(name: .long, help: "No progress display.")
    var quiet = false

    func settings() throws -> BlastSettings {
        do {
            let handshakeMode = handshakeOnly || handshakes != nil
            if handshakeMode {
                let given: [(String, Bool)] = [
                    ("--messages", messages != nil), ("--messages-per-connection", messagesPerConnection != nil),
                    ("--size", size != nil), ("--recipients", recipients != nil), ("--from", from != nil),
                    ("--to", to != nil), (pipelining == false ? "--no-pipelining" : "--pipelining", pipelining != nil),
                    ("--bdat", bdat), ("--chunk-size", chunkSize != nil)]
                try BlastSettings.checkHandshakeOnly(given: given.filter(\.1).map(\.0))
            }
            var s = BlastSettings(server: try BlastSettings.parseServer(server),
                                  sender: try AddressPattern(parsing: from ?? "blast@example.test", option: "--from"),
                                  recipient: try AddressPattern(parsing: to ?? "rcpt{n}-{r}@example.test", option: "--to"))
            s.duration = try duration.map { try BlastSettings.parseDuration($0, option: "--duration") }
            if handshakeMode {
                s.mode = .handshake
                s.handshakes = handshakes ?? (s.duration == nil ? 1000 : nil)
                s.startTLS = true  // implied: the handshake measured is STARTTLS's
            } else {
                s.messages = messages ?? (s.duration == nil ? 1000 : nil)
                s.startTLS = starttls
            }
            s.concurrency = concurrency
            s.sizes = try SizeDistribution(parsing: size ?? "4k")
            s.recipients = try BlastSettings.parseRecipients(recipients ?? "1")
            s.messagesPerConnection = messagesPerConnection ?? 1
            s.pipelining = pipelining ?? true
            s.bdat = bdat
            s.chunkSize = try chunkSize.map { try BlastSettings.parseChunkSize($0) }
            s.rate = rate
            s.bind = try BlastSettings.parseBind(bind)
            s.helo = helo
            s.timeout = try BlastSettings.parseDuration(timeout, option: "--timeout")
            s.seed = seed
            if !quiet {
                s.progressInterval = try progress.map { try BlastSettings.parseDuration($0, option: "--progress") }
                    ?? (isatty(STDERR_FILENO) != 0 ? 1 : 10)
            }
            try s.validate()
            return s
        } catch let e as BlastOptionError {
            throw ValidationError(e.message)
        }
    }

    /// Checked while parsing, so that a bad option is reported with blast's usage, not tern's (an
    /// error thrown from run() is reported against the root command).
    func validate() throws {
        let s = try settings()
        // Raised to the hard limit here already (run does it again, to no effect): the check is an
        // option error too.
        let files = raiseFileLimit()
        if s.concurrency + 32 > files {
            throw ValidationError("--concurrency: \(s.concurrency) connections need more file descriptors than the limit of \(files)")
        }
    }

    func run() throws {
        let s = try settings()
        ignoreSIGPIPE()
        _ = raiseFileLimit()
        // The server certificate's EC key decoded by OpenSSL's built-in code (process-wide, so here in
        // the command and not in BlastRunner, which the test process shares with every other suite).
        if s.startTLS { TLSContext.decodeECKeysWithBuiltInCode() }
        let loop = try EventLoop()
        let runner = BlastRunner(loop: loop, settings: s, progressToTerminal: isatty(STDERR_FILENO) != 0)
        var report: BlastReport?
        runner.start { r in
            report = r
            loop.stop()
        }
        // First Ctrl-C: finish the transactions in flight and report; the second drops them.
        var interrupts = 0
        let onSignal = {
            interrupts += 1
            runner.stop(hard: interrupts > 1)
        }
        let int = try SignalWatcher(loop: loop, signal: SIGINT, onSignal)
        let term = try SignalWatcher(loop: loop, signal: SIGTERM, onSignal)
        if report == nil { loop.run() }
        int.close()
        term.close()
        loop.close()
        guard let report else {
            fputs("tern blast: the run ended without a report\n", stderr)
            throw ExitCode(70)
        }
        print(json ? report.json() : report.table(), terminator: json ? "\n" : "")
        fflush(stdout)
        if report.connections.opened == 0 {
            let why = runner.unreachable ?? report.errors.first ?? "no connection was made"
            fputs("tern blast: \(why)\n", stderr)
            throw ExitCode(69)  // EX_UNAVAILABLE
        }
    }
}
