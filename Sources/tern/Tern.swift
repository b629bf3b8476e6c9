// The `tern` command: one executable, a subcommand per job.

import ArgumentParser
import Logging
import Relay
import UVRuntime

#if canImport(Glibc)
import Glibc
#endif

@main
struct Tern: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tern",
        abstract: "Tern, an event-driven SMTP relay.",
        subcommands: [Serve.self, Passwd.self])
}

struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the relay: accept mail on the configured listeners and spool it.")

    @Option(name: .long, help: "Path of the TOML config file (default: the built-in etc/tern.toml).")
    var config: String?

    @Flag(name: .long, help: "Log every session event.")
    var verbose = false

    @Option(name: .long, help: "Seconds that messages in flight may take to finish on SIGTERM/SIGINT.")
    var grace: Double = 30

    func run() throws {
        let settings: TernConfig
        do {
            settings = try config.map { try TernConfig.load(path: $0) } ?? TernConfig.embeddedDefault
        } catch {
            fputs("tern: \(error)\n", stderr)
            throw ExitCode(78)  // EX_CONFIG
        }
        ignoreSIGPIPE()
        let files = raiseFileLimit()
        // fsyncs of many sessions overlap on the pool; 4 threads (libuv's default) would serialise them.
        // UV_THREADPOOL_SIZE in the environment wins, so an operator can tune it.
        if getenv("UV_THREADPOOL_SIZE") == nil { setThreadPoolSize(64) }
        let level: Logger.Level = verbose ? .debug : .info
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let log = Logger(label: "tern")

        let loop = try EventLoop()
        let server: SMTPServer
        do {
            server = try SMTPServer(loop: loop, config: settings, log: log)
            try server.start()
        } catch {
            fputs("tern: \(error)\n", stderr)
            throw ExitCode(1)
        }
        log.info("tern ready: hostname \(settings.hostname), spool \(settings.spool.path), \(files) file descriptors")

        var stopping = false
        let stop = {
            if stopping { return }
            stopping = true
            server.stop(grace: grace) {
                log.info("stopped: \(server.metrics.messagesAccepted) messages accepted")
                loop.stop()
            }
        }
        let term = try SignalWatcher(loop: loop, signal: SIGTERM, stop)
        let int = try SignalWatcher(loop: loop, signal: SIGINT, stop)
        // SIGHUP: the TLS certificate and key and the AUTH users file are read again.
        let hup = try SignalWatcher(loop: loop, signal: SIGHUP) {
            do { try server.reload() } catch { log.error("reload failed, keeping the old files: \(error)") }
        }
        loop.run()
        term.close()
        int.close()
        hup.close()
    }
}
