// The `tern` command: one executable, a subcommand per job.

import ArgumentParser
import BuildInfo
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
        version: BuildInfo.versionLine,
        subcommands: [Serve.self, Sink.self, BlastCommand.self, Trace.self, CheckConfig.self, Passwd.self, Queue.self, Health.self,
                      DKIMCommand.self, Suppress.self, Token.self])

    static func main() {
        keepOpenSSLUntilExit()  // before anything touches OpenSSL (see its comment)
        main(nil)
    }
}

struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the relay: accept mail on the configured listeners and spool it.")

    @Option(name: .long, help: "Path of the TOML config file (default: the built-in etc/tern.toml).")
    var config: String?

    @Flag(name: .long, help: "Log every session event.")
    var verbose = false

    @Option(name: .long, help: "Log lines as \"plain\" text or \"json\" (default: [log] format, else plain).")
    var logFormat: LogFormat?

    @Option(name: .long, help: "Seconds that messages in flight may take to finish on SIGTERM/SIGINT (a second signal, a second or more later, ends the wait).")
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
        // fsyncs of many sessions overlap on the pool; 4 threads (libuv's default) would serialise them,
        // and far more than 16 made the kernel's own contention (and context switches) cost more CPU per
        // message than the overlap gained (bench/README.md). UV_THREADPOOL_SIZE in the environment wins.
        if getenv("UV_THREADPOOL_SIZE") == nil { setThreadPoolSize(16) }
        tuneMallocForMessageBuffers()
        let level: Logger.Level = verbose ? .debug : .info
        let format = logFormat ?? settings.log.format
        LoggingSystem.bootstrap { _ in TernLogHandler(format: format, level: level) }
        let log = Logger(label: "tern")

        let loop = try EventLoop()
        let server: SMTPServer
        do {
            server = try SMTPServer(loop: loop, config: settings, log: log, configPath: config)
            try server.start()
        } catch let error as ConfigError {
            fputs("tern: \(error)\n", stderr)
            throw ExitCode(78)  // EX_CONFIG: the same error `tern check-config` reports
        } catch {
            fputs("tern: \(error)\n", stderr)
            throw ExitCode(1)
        }
        log.info("tern ready: version \(BuildInfo.version), commit \(BuildInfo.commit), hostname \(settings.hostname), spool \(settings.spool.path), \(files) file descriptors")
        // systemd (Type=notify): $NOTIFY_SOCKET hears READY=1 below, STOPPING=1 when a stop begins.
        let notifier: ServiceNotifier?
        do {
            notifier = try ServiceNotifier()
        } catch {
            log.warning("systemd notification off: \(error)")
            notifier = nil
        }

        var stopBegan: UInt64?
        let stop = { (name: String) in
            if let began = stopBegan {
                // `timeout` signals the process and then its group, a runtime may do the same: a second
                // signal within a second is the same request. A later one asks for the stop to end now.
                if loop.nowMilliseconds - began >= 1000 {
                    let cut = server.endGrace()
                    log.notice("\(name) again: grace period ended\(cut > 0 ? ", \(cut) sessions told 421" : "")")
                }
                return
            }
            stopBegan = loop.nowMilliseconds
            // From here to exit no SIGTERM, SIGINT or SIGHUP may kill the process (exit 143) instead.
            do { try SignalWatcher.holdUntilExit([SIGTERM, SIGINT, SIGHUP]) } catch { log.warning("\(error)") }
            if let notifier, let problem = notifier.notify("STOPPING=1") { log.warning("systemd notification: \(problem)") }
            server.stop(grace: grace) {
                log.info("stopped: \(server.metrics.messagesAccepted) messages accepted")
                loop.stop()
            }
        }
        let term = try SignalWatcher(loop: loop, signal: SIGTERM) { stop("SIGTERM") }
        let int = try SignalWatcher(loop: loop, signal: SIGINT) { stop("SIGINT") }
        let hup = try watchForReload(loop: loop, server: server, path: config, log: log)
        // SIGUSR1: logrotate moved the events file; it is opened again by its name.
        let usr1 = try SignalWatcher(loop: loop, signal: SIGUSR1) {
            log.info("SIGUSR1: reopening the events file")
            server.reopenEventLog()
        }
        // Log lines go out once per loop iteration, not with a write each.
        LogBuffer.shared.start(fd: 2)
        let flushLog = Prepare(loop: loop) { LogBuffer.shared.flush() }
        defer { LogBuffer.shared.stop() }
        // Ready: listening, the spool recovered (queued mail resumes in the background, as it does
        // without systemd), and a SIGTERM from here on is a graceful stop.
        if let notifier, let problem = notifier.notify("READY=1") { log.warning("systemd notification: \(problem)") }
        loop.run()
        flushLog.close()
        term.close()
        int.close()
        hup.close()
        usr1.close()
    }
}

extension LogFormat: ExpressibleByArgument {}
