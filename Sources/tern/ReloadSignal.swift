// SIGHUP: read the config file again and put it in force without dropping a session or a message.
// The file is read and parsed on the thread pool; a file that does not load is refused with a log
// line naming the key and line, and the running configuration stays.

import Logging
import Relay
import UVRuntime

#if canImport(Glibc)
import Glibc
#endif

func watchForReload(loop: EventLoop, server: SMTPServer, path: String?, log: Logger) throws -> SignalWatcher {
    var reloading = false
    return try SignalWatcher(loop: loop, signal: SIGHUP) {
        guard let path else {
            log.notice("SIGHUP: running on the built-in configuration (no --config); nothing to reload")
            return
        }
        guard !reloading else { return }
        reloading = true
        var loaded: Result<TernConfig, Error>?
        var security: Result<SecurityFiles, Error>?
        loop.queueWork({
            // Reading and parsing files (config, certificate, key, users) stays off the loop thread.
            loaded = Result { try TernConfig.load(path: path) }
            if case .success(let new) = loaded { security = Result { try new.openSecurityFiles(source: path) } }
        }, done: {
            reloading = false
            switch loaded! {
            case .failure(let error):
                log.error("reload refused, the running configuration stays: \(error)")
            case .success(let new):
                let outcome = server.reload(new)
                var line = "reloaded \(path)"
                line += outcome.applied.isEmpty ? ": no change in force" : ": changed \(outcome.applied.joined(separator: ", "))"
                if !outcome.needRestart.isEmpty {
                    line += "; not applied until a restart: \(outcome.needRestart.joined(separator: ", "))"
                }
                log.notice("\(line)")
                // The certificate, key and users file were read again, changed or not (renewed in place).
                switch security! {
                case .success(let files): server.install(files)
                case .failure(let error): log.error("reload failed for the TLS/AUTH files, keeping the old ones: \(error)")
                }
            }
        })
    }
}
