// `tern sink`: the load-test target. Flags override the [sink] table of --config.

import ArgumentParser
import Logging
import Relay
import UVRuntime

#if canImport(Glibc)
import Glibc
#endif

struct Sink: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run an SMTP sink: accept mail and discard, count or keep it, injecting faults on request.",
        discussion: """
            Magic recipients (any domain): rcpt-NNN is answered NNN at RCPT (250, 251 or 400-599), \
            data-NNN makes the end of DATA answer NNN (250 or 400-599), delay-MS holds the RCPT reply MS \
            milliseconds (at most 600000), drop closes the connection in the middle of DATA. One out of \
            range (rcpt-999, delay-99999999) is refused at RCPT with 553 5.1.3.
            A --fault is key=value pairs: stage=greeting|mail|rcpt|data|dot|all, fraction=0..1, \
            per=command|transaction|session, reply=CODE, delay=250ms or 100ms..2s, drop=true (data), \
            recipient=GLOB, listen=ADDR. Example: --fault stage=rcpt,fraction=0.1,reply=451
            """)

    @Option(name: .long, help: "TOML file with a [sink] table (see etc/sink.toml).")
    var config: String?

    @Option(name: .long, help: "Address to listen on, \"ip:port\" (repeatable; default 127.0.0.1:2526).")
    var listen: [String] = []

    @Option(name: .long, help: "Name in the greeting and EHLO reply.")
    var hostname: String?

    @Option(name: .long, help: "discard | keep | count.")
    var mode: String?

    @Option(name: .long, help: "Keep mode: the directory (implies --mode keep).")
    var keepPath: String?

    @Option(name: .long, help: "Keep mode: eml (one .eml file per message) or maildir.")
    var keepFormat: String?

    @Option(name: .long, help: "Serve Prometheus metrics on GET /metrics at \"ip:port\".")
    var metricsListen: String?

    @Option(name: .long, help: "Seed for the fault dice (default: random, printed at start).")
    var seed: UInt64?

    @Option(name: .long, help: "A fault rule (repeatable), e.g. stage=rcpt,fraction=0.1,reply=451.")
    var fault: [String] = []

    @Option(name: .long, help: "Hold the greeting this long (\"2s\", or a range \"1s..5s\").")
    var bannerDelay: String?

    @Option(name: .long, help: "Hold every reply this long (\"1s\", or a range).")
    var tarpit: String?

    @Option(name: .long, help: "Advertise no such EHLO keyword (repeatable): pipelining, size, 8bitmime, enhancedstatuscodes, smtputf8, mt-priority, chunking, dsn, requiretls, binarymime, starttls.")
    var disable: [String] = []

    @Option(name: .long, help: "PEM certificate: offer STARTTLS (with --tls-key).")
    var tlsCertificate: String?

    @Option(name: .long, help: "PEM private key of --tls-certificate.")
    var tlsKey: String?

    @Flag(name: .long, help: "Treat rcpt-NNN, data-NNN, delay-MS and drop as ordinary recipients.")
    var noMagic = false

    @Option(name: .long, help: "Largest message accepted, in bytes.")
    var maxMessageSize: Int?

    @Option(name: .long, help: "Most concurrent sessions; more are told 421.")
    var maxConnections: Int?

    @Flag(name: .long, help: "Log every message (discard and keep modes).")
    var verbose = false

    @Option(name: .long, help: "Log lines as \"plain\" text or \"json\", as tern serve writes them (default plain).")
    var logFormat: LogFormat?

    func makeConfig() throws -> SinkConfig {
        var c = try config.map { try SinkConfig.load(path: $0) } ?? SinkConfig()
        func flagError(_ flag: String, _ message: String) -> ConfigError { ConfigError(key: "--\(flag)", message: message) }
        if !listen.isEmpty {
            for l in listen { _ = try Relay.ListenAddress(parsing: l) }
            c.listen = listen
        }
        if let hostname { c.hostname = hostname }
        if let keepPath {
            c.keepPath = keepPath
            c.mode = .keep
        }
        if let mode {
            guard let m = SinkConfig.Mode(rawValue: mode) else { throw flagError("mode", "\"\(mode)\" is not one of discard, keep, count") }
            c.mode = m
        }
        if let keepFormat {
            guard let f = SinkConfig.KeepFormat(rawValue: keepFormat) else {
                throw flagError("keep-format", "\"\(keepFormat)\" is not one of eml, maildir")
            }
            c.keepFormat = f
        }
        if let metricsListen {
            _ = try Relay.ListenAddress(parsing: metricsListen)
            c.metricsListen = metricsListen
        }
        if let seed { c.seed = seed }
        for f in fault { c.faults.append(try FaultRule.parse(flag: f)) }
        if let bannerDelay { c.faults.append(try SinkConfig.bannerDelay(bannerDelay)) }
        if let tarpit { c.faults.append(try SinkConfig.tarpit(tarpit)) }
        if let tlsCertificate { c.tlsCertificate = tlsCertificate }
        if let tlsKey { c.tlsKey = tlsKey }
        for name in disable {
            if name.lowercased() == "starttls" {
                c.offerStartTLS = false
                continue
            }
            guard let bit = SinkConfig.extensionNames.first(where: { $0.0 == name.lowercased() })?.1 else {
                throw flagError("disable", "\"\(name)\" is not one of \(SinkConfig.extensionNames.map(\.0).joined(separator: ", ")), starttls")
            }
            c.advertise.remove(bit)
        }
        if noMagic { c.magicRecipients = false }
        if let maxMessageSize {
            guard maxMessageSize > 0 else { throw flagError("max-message-size", "must be a positive integer") }
            c.maxMessageSize = maxMessageSize
        }
        if let maxConnections {
            guard maxConnections > 0 else { throw flagError("max-connections", "must be a positive integer") }
            c.maxConnections = maxConnections
        }
        try c.validate { key, message in flagError(key.replacingUnderscores, message) }
        return c
    }

    func run() throws {
        let settings: SinkConfig
        do {
            settings = try makeConfig()
        } catch {
            fputs("tern sink: \(error)\n", stderr)
            throw ExitCode(78)  // EX_CONFIG
        }
        ignoreSIGPIPE()
        let files = raiseFileLimit()
        let level: Logger.Level = verbose ? .debug : .info
        // The same lines as serve's (LogOutput.swift): one grep or log shipper reads both.
        let format = logFormat ?? .plain
        LoggingSystem.bootstrap { _ in TernLogHandler(format: format, level: level) }
        let log = Logger(label: "tern-sink")
        let loop = try EventLoop()
        let sink: SinkServer
        do {
            sink = try SinkServer(loop: loop, config: settings, log: log)
            try sink.start()
        } catch {
            fputs("tern sink: \(error)\n", stderr)
            throw ExitCode(1)
        }
        for address in sink.listenAddresses { log.info("listening on \(address)") }
        if let m = sink.metricsAddress { log.info("metrics on http://\(m)/metrics") }
        log.info("tern sink ready: mode \(settings.mode.rawValue), \(settings.faults.count) fault rules, seed \(sink.seed), \(files) file descriptors")

        var stopping = false
        let stop = {
            if stopping { return }
            stopping = true
            // A second SIGTERM up to exit must not kill the sink before its summary (exit 143).
            try? SignalWatcher.holdUntilExit([SIGTERM, SIGINT])
            sink.stop {
                print(sink.summary)
                fflush(stdout)
                loop.stop()
            }
        }
        let term = try SignalWatcher(loop: loop, signal: SIGTERM, stop)
        let int = try SignalWatcher(loop: loop, signal: SIGINT, stop)
        // Log lines go out once per loop iteration, as serve's do.
        LogBuffer.shared.start(fd: 2)
        let flushLog = Prepare(loop: loop) { LogBuffer.shared.flush() }
        defer { LogBuffer.shared.stop() }
        loop.run()
        flushLog.close()
        term.close()
        int.close()
    }
}

extension String {
    var replacingUnderscores: String { String(map { $0 == "_" ? "-" : $0 }) }
}
