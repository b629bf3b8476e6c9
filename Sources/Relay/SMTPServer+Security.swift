// The server's side of TLS and AUTH: listener roles, loading and reloading the certificate and the
// users file, and checking credentials off the loop thread with the per-IP failure throttle.

import Logging
import SMTPProtocol
import UVRuntime

/// What a listener is for (issue 4): `relay` (port 25: relay from relay_networks, AUTH optional),
/// `submission` (587: STARTTLS, AUTH before MAIL), `submissions` (465: implicit TLS, AUTH before MAIL).
public enum ListenerRole: String, Sendable, CustomStringConvertible {
    case relay, submission, submissions
    public var description: String { rawValue }
}

extension SMTPServer {
    /// Puts files read by `TernConfig.openSecurityFiles` (on the thread pool) in force, on the loop.
    /// New sessions use them; open sessions keep theirs.
    public func install(_ files: SecurityFiles) {
        tlsContext = files.relayTLS
        submissionTLSContext = files.submissionTLS
        users = files.users
        delivery?.reloadClientTLSContext()  // the CA store, read again on the thread pool
        let what = (files.relayTLS == nil ? "no certificate" : "certificate \(config.tls.certificate)")
            + (files.users.map { ", \($0.hashes.count) users" } ?? "")
        log.notice("reloaded: \(what)")
    }

    /// The certificate context for a session of this role: submission listeners have their own cipher policy.
    func tlsContext(for role: ListenerRole) -> TLSContext? {
        role == .relay ? tlsContext : submissionTLSContext
    }

    /// Checks a user's password on the thread pool. A failure is answered after a delay that grows
    /// with the failures from this IP; after `auth.max_failures` the IP is locked out.
    func authenticate(ip: String, user: String, password: String, _ done: @escaping (AuthResult) -> Void) {
        let now = Double(loop.nowMilliseconds) / 1000
        if authThrottle.isLockedOut(ip, now: now) {
            log.warning("AUTH from [\(ip)] refused: locked out after \(config.auth.maxFailures) failures")
            done(.lockedOut)
            return
        }
        // Checks in flight count toward the limit, so parallel connections cannot outrun it: the
        // attempts beyond it wait for one to finish (bounded by max_connections_per_ip).
        guard authThrottle.begin(ip, now: now) else {
            authWaitingForIP[ip, default: []].append { [weak self] in
                self?.authenticate(ip: ip, user: user, password: password, done)
            }
            return
        }
        // An unknown user costs the same as a wrong password, so timing does not reveal user names.
        let hash = users?.hashes[user]
        let checked = hash ?? Self.dummyHash
        final class Box: @unchecked Sendable { var ok = false }
        let box = Box()
        runPasswordCheck({ box.ok = PasswordHash.verify(password, against: checked) }) { [weak self] in
            guard let self else { return }
            if box.ok && hash != nil {
                self.authThrottle.succeeded(ip, user: user)
                self.wakeAuthWaiting(ip)
                self.log.info("AUTH user=\(angleQuoted(user)) from [\(ip)]")
                done(.success(allowedSenders: self.config.auth.senders[user]))
                return
            }
            let (delay, locked) = self.authThrottle.failed(ip, user: user, now: Double(self.loop.nowMilliseconds) / 1000)
            self.wakeAuthWaiting(ip)
            self.log.warning("AUTH failed for user=\(angleQuoted(user)) from [\(ip)]\(locked ? ": locked out" : "")")
            let timer = Timer(loop: self.loop)
            timer.start(afterMilliseconds: UInt64(delay * 1000)) {
                timer.close()
                done(.failure)
            }
        }
    }

    /// A check from this IP finished: the attempts waiting for it try again (454 if now locked out).
    func wakeAuthWaiting(_ ip: String) {
        guard let waiting = authWaitingForIP.removeValue(forKey: ip) else { return }
        for attempt in waiting { attempt() }
    }

    /// At most `maxConcurrentPasswordChecks` scrypt runs at once (each holds 32 MiB), so a flood of
    /// AUTH attempts queues instead of taking the machine's memory; the rest wait in order.
    func runPasswordCheck(_ work: @escaping () -> Void, done: @escaping () -> Void) {
        guard authChecksRunning < Self.maxConcurrentPasswordChecks else {
            authChecksWaiting.append { [weak self] in self?.runPasswordCheck(work, done: done) }
            return
        }
        authChecksRunning += 1
        loop.queueWork(work) { [weak self] in
            guard let self else { return }
            self.authChecksRunning -= 1
            if !self.authChecksWaiting.isEmpty { self.authChecksWaiting.removeFirst()() }
            done()
        }
    }

    static let maxConcurrentPasswordChecks = 8

    /// A valid hash of a random password, checked for unknown users.
    static let dummyHash: String = (try? PasswordHash.make(Base64.encode(secureRandomBytes(12)))) ?? ""
}
