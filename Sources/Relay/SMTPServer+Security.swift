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
        dkimKeys = files.dkim
        tokens = files.tokens
        prepareDummyHash()
        delivery?.reloadClientTLSContext()  // the CA store, read again on the thread pool
        let what = (files.relayTLS == nil ? "no certificate" : "certificate \(config.tls.certificate)")
            + (files.users.map { ", \($0.hashes.count) users" } ?? "")
            + (files.tokens.map { ", \($0.entries.count) API tokens" } ?? "")
            + (files.dkim.map { ", DKIM keys for \($0.byDomain.keys.sorted().joined(separator: " "))" } ?? "")
        log.notice("reloaded: \(what)")
    }

    /// The certificate context for a session of this role: submission listeners have their own cipher policy.
    func tlsContext(for role: ListenerRole) -> TLSContext? {
        role == .relay ? tlsContext : submissionTLSContext
    }

    /// Checks a user's password on the thread pool. A failure is answered after a delay that grows
    /// with the failures from this client (an IPv4 address or an IPv6 /64, `AuthThrottle.key(for:)`);
    /// after `auth.max_failures` it is locked out. `session`: the asking session's id; an attempt
    /// that waits for a turn is dropped if its session has ended meanwhile.
    func authenticate(ip: String, session: UInt64, user: String, password: String,
                      _ done: @escaping (AuthResult) -> Void) {
        let key = AuthThrottle.key(for: ip)
        let now = Double(loop.nowMilliseconds) / 1000
        if authThrottle.isLockedOut(key, now: now) {
            log.warning("AUTH from [\(ip)] refused: locked out after \(config.auth.maxFailures) failures")
            done(.lockedOut)
            return
        }
        // Checks in flight count toward the limit, so parallel connections cannot outrun it: the
        // attempts beyond it wait for one to finish (at most one per live session: ended ones are
        // dropped here and when woken).
        guard authThrottle.begin(key, now: now) else {
            var waiting = authWaitingForIP[key, default: []]
            waiting.removeAll { !isLive($0.session) }
            waiting.append((session, { [weak self] in
                self?.authenticate(ip: ip, session: session, user: user, password: password, done)
            }))
            authWaitingForIP[key] = waiting
            return
        }
        // An unknown user costs the same as a wrong password, so timing does not reveal user names.
        let hash = users?.hashes[user]
        let dummy = dummyHash
        // @unchecked: written on a pool thread, read in the done callback, which libuv runs after it.
        final class Box: @unchecked Sendable { var ok = false }
        let box = Box()
        runPasswordCheck({
            // Before the start-up build is done, a dummy of its own (still off the loop thread).
            let checked = hash ?? dummy ?? Self.makeDummyHash()
            box.ok = PasswordHash.verify(password, against: checked)
        }) { [weak self] in
            guard let self else { return }
            if box.ok && hash != nil {
                self.authThrottle.succeeded(key, user: user)
                self.wakeAuthWaiting(key)
                self.log.info("AUTH user=\(angleQuoted(user)) from [\(ip)]")
                done(.success(allowedSenders: self.config.auth.senders[user]))
                return
            }
            let (delay, locked) = self.authThrottle.failed(key, user: user, now: Double(self.loop.nowMilliseconds) / 1000)
            self.wakeAuthWaiting(key)
            self.log.warning("AUTH failed for user=\(angleQuoted(user)) from [\(ip)]\(locked ? ": locked out" : "")")
            let timer = Timer(loop: self.loop)
            timer.start(afterMilliseconds: UInt64(delay * 1000)) {
                timer.close()
                done(.failure)
            }
        }
    }

    /// A check under this throttle key finished: the attempts waiting for it try again (454 if now
    /// locked out), except those whose session has ended: a dead session's guess is not checked.
    func wakeAuthWaiting(_ key: String) {
        guard let waiting = authWaitingForIP.removeValue(forKey: key) else { return }
        for (session, attempt) in waiting where isLive(session) { attempt() }
    }

    /// Whether the session with this id is still open.
    func isLive(_ session: UInt64) -> Bool {
        sessions[session].map { !$0.closed } ?? false
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

    /// A valid hash of a random password, for unknown users ("" if OpenSSL fails: never matches).
    /// Blocking (one scrypt run): only on the thread pool.
    static func makeDummyHash() -> String {
        (try? PasswordHash.make(Base64.encode(secureRandomBytes(12)))) ?? ""
    }

    /// Builds `dummyHash` on the thread pool, at start-up or when a reload brings a users file, so
    /// that the first AUTH for an unknown user does not run scrypt on the loop thread.
    func prepareDummyHash() {
        guard users != nil, dummyHash == nil, !dummyHashBuilding else { return }
        dummyHashBuilding = true
        // @unchecked: written on a pool thread, read in the done callback, which libuv runs after it.
        final class Box: @unchecked Sendable { var hash = "" }
        let box = Box()
        loop.queueWork({ box.hash = Self.makeDummyHash() }) { [weak self] in
            self?.dummyHash = box.hash
            self?.dummyHashBuilding = false
        }
    }
}
