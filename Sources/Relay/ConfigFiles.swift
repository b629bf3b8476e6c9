// ConfigFiles.swift: every file a configuration names, opened and parsed the way `tern serve` will,
// by one function that `tern serve`, SIGHUP and `tern check-config` share, so that a config that
// check-config passes is one serve starts with. Nothing here creates anything.
//
// The route password files (auth_password_file) are read by the parse itself (SecurityConfig.swift).

import UVRuntime

#if canImport(Glibc)
import Glibc
#endif

/// The certificate contexts and users a configuration names, read and parsed.
public struct SecurityFiles: Sendable {
    /// Port 25's STARTTLS (tls.ciphers); nil without tls.certificate.
    public var relayTLS: TLSContext?
    /// server.submission and server.submissions (tls.submission_ciphers).
    public var submissionTLS: TLSContext?
    public var users: UsersFile?
    /// The [[dkim.sign]] keys; nil without tables.
    public var dkim: DKIMKeySet?
    /// The injection API's bearer tokens; nil without [http] listen.
    public var tokens: TokensFile?
}

extension TernConfig {
    /// Opens the certificate and key (checking that they match, with both cipher policies) and
    /// parses the users file; checks that every egress source's address is on this machine. Blocking
    /// (file reads): on the thread pool when the loop runs. An error is a ConfigError naming the key
    /// and the path; `source` is the config file's path.
    public func openSecurityFiles(source: String? = nil) throws -> SecurityFiles {
        func fail(_ key: String, _ message: String) -> ConfigError {
            ConfigError(key: key, message: message, source: source)
        }
        try checkEgressAddresses(source: source)
        var files = SecurityFiles()
        if tls.enabled {
            for (key, path) in [("tls.certificate", tls.certificate), ("tls.key", tls.key)] {
                if let problem = Self.unreadable(path) { throw fail(key, "\(path): \(problem)") }
            }
            func context(_ ciphersKey: String, _ policy: String) throws -> TLSContext {
                do {
                    return try TLSContext.server(certificatePath: tls.certificate, keyPath: tls.key,
                                                 ciphers: TLSConfig.cipherList(policy))
                } catch let error as TLSFileError {
                    switch error.file {
                    case .certificate: throw fail("tls.certificate", error.description)
                    case .key: throw fail("tls.key", error.description)
                    case .ciphers: throw fail(ciphersKey, error.description)
                    }
                }
            }
            files.relayTLS = try context("tls.ciphers", tls.ciphers)
            files.submissionTLS = try context("tls.submission_ciphers", tls.submissionCiphers)
        }
        if auth.enabled {
            do {
                files.users = try UsersFile.load(path: auth.usersFile)
            } catch let error as ConfigError {
                let at = error.line.map { ": line \($0)" } ?? ""
                throw fail("auth.users_file", "\(auth.usersFile)\(at): \(error.message)")
            }
        }
        files.dkim = try DKIMKeySet.load(dkim, routeKeys: Set(routes.routes.keys), source: source)
        if !http.listen.isEmpty {
            do {
                files.tokens = try TokensFile.parse(try readTextFile(http.tokensFile), source: http.tokensFile)
            } catch let error as ConfigError {
                let at = error.line.map { ": line \($0)" } ?? ""
                throw fail("http.tokens_file", "\(http.tokensFile)\(at): \(error.message)")
            }
        }
        return files
    }

    /// spool.path: Tern creates the spool directory, and the missing directories between it and the
    /// config file's directory (the working directory for the built-in default), never a missing
    /// parent elsewhere: a typo like /nonexistent/deep/spool is refused. Creates nothing.
    /// `configPath`: the config file, nil for the built-in default.
    public func checkSpoolPath(configPath: String?) throws {
        let cwd = Self.currentDirectory()
        let base = configPath.map(Self.directory(of:)) ?? cwd
        let path = Self.resolve(spool.path, from: cwd)
        func fail(_ message: String) -> ConfigError {
            ConfigError(key: "spool.path", message: "\(spool.path): \(message)", source: configPath)
        }
        var info = stat()
        if stat(path, &info) == 0 {
            guard info.st_mode & S_IFMT == S_IFDIR else { throw fail("not a directory") }
            return
        }
        var parent = String(path[..<(path.lastIndex(of: "/") ?? path.startIndex)])
        if parent.isEmpty { parent = "/" }
        if stat(parent, &info) == 0 {
            guard info.st_mode & S_IFMT == S_IFDIR else { throw fail("\(parent) is not a directory") }
            return
        }
        let prefix = base.hasSuffix("/") ? base : base + "/"
        let below = path.hasPrefix(prefix) ? path.dropFirst(prefix.count) : nil
        guard let below, !below.split(separator: "/").contains("..") else {
            throw fail("the parent directory \(parent) does not exist (Tern creates the spool directory, not its parents)")
        }
    }

    /// Each [egress.sources] address can be bound (port 0, nothing sent): an address that is not on
    /// this machine fails at start-up and on SIGHUP, naming its key, not at each delivery.
    public func checkEgressAddresses(source: String? = nil) throws {
        for s in egress.sources {
            if let problem = Self.unbindable(s.address) {
                throw ConfigError(key: "egress.sources.\(displayKey([s.name])).address",
                                  message: "cannot send from \(s.address): \(problem)", source: source)
            }
        }
    }

    /// Why a TCP socket cannot be bound to `address` (an IP literal), or nil when it can.
    static func unbindable(_ address: String) -> String? {
        guard let ip = IPAddress.parseRaw(address)?.unmapped else { return "not an IP address" }
        let family = ip.family == .ipv4 ? AF_INET : AF_INET6
        #if canImport(Glibc)
        let fd = socket(family, Int32(SOCK_STREAM.rawValue), 0)
        #else
        let fd = socket(family, SOCK_STREAM, 0)
        #endif
        guard fd >= 0 else { return String(cString: strerror(errno)) }
        defer { close(fd) }
        var result: Int32
        if ip.family == .ipv4 {
            var sa = sockaddr_in()
            sa.sin_family = sa_family_t(AF_INET)
            withUnsafeMutableBytes(of: &sa.sin_addr) { $0.copyBytes(from: ip.bytes) }
            result = withUnsafePointer(to: &sa) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
        } else {
            var sa = sockaddr_in6()
            sa.sin6_family = sa_family_t(AF_INET6)
            withUnsafeMutableBytes(of: &sa.sin6_addr) { $0.copyBytes(from: ip.bytes) }
            result = withUnsafePointer(to: &sa) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) }
            }
        }
        if result == 0 { return nil }
        return errno == EADDRNOTAVAIL ? "the address is not on this machine" : String(cString: strerror(errno))
    }

    /// Why `path` cannot be read, or nil when it can.
    static func unreadable(_ path: String) -> String? {
        guard let file = fopen(path, "rb") else { return String(cString: strerror(errno)) }
        fclose(file)
        return nil
    }
}
