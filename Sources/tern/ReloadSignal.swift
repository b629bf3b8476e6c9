// SIGHUP: read the config file again and put it in force without dropping a session or a message.
// The file, and the certificate, key and users file it names, are read and parsed on the thread pool.
// A reload where any of them fails is refused whole (as `tern serve` and `check-config` refuse it),
// with a log line naming the key and path, and the running configuration stays. A SIGHUP during a
// reload is answered by one more reload when it ends (ReloadGate).

import Logging
import Relay
import UVRuntime

#if canImport(Glibc)
import Glibc
#endif

func watchForReload(loop: EventLoop, server: SMTPServer, path: String?, log: Logger) throws -> SignalWatcher {
    guard let path else {
        return try SignalWatcher(loop: loop, signal: SIGHUP) {
            log.notice("SIGHUP: running on the built-in configuration (no --config); nothing to reload")
        }
    }
    var gate = ReloadGate()
    func start() {
        var loaded: Result<(TernConfig, SecurityFiles), Error>?
        loop.queueWork({
            // Reading and parsing files (config, certificate, key, users) stays off the loop thread.
            loaded = Result {
                let new = try TernConfig.load(path: path)
                return (new, try new.openSecurityFiles(source: path))
            }
        }, done: {
            apply(loaded!)
            if gate.finished() { start() }
        })
    }
    func apply(_ loaded: Result<(TernConfig, SecurityFiles), Error>) {
        switch loaded {
        case .failure(let error):
            log.error("reload refused, the running configuration stays: \(error)")
        case .success(let (new, files)):
            let outcome = server.reload(new)
            var line = "reloaded \(path)"
            line += outcome.applied.isEmpty ? ": no change in force" : ": changed \(outcome.applied.joined(separator: ", "))"
            if !outcome.needRestart.isEmpty {
                line += "; not applied until a restart: \(outcome.needRestart.joined(separator: ", "))"
            }
            log.notice("\(line)")
            // The certificate, key and users file were read again, changed or not (renewed in place).
            server.install(files)
        }
    }
    return try SignalWatcher(loop: loop, signal: SIGHUP) {
        if gate.signal() { start() }
    }
}
