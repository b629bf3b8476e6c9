// [tls] and [auth]: the server's certificate and the SMTP AUTH users (issue 4). Checked like every
// other table: unknown keys and wrong types are errors naming the key. Files are opened at start-up
// (SMTPServer), so a missing certificate stops `tern serve` with the path in the message.

import MailQueue
import SMTPProtocol
import TOMLKit
import UVRuntime
#if canImport(Glibc)
import Glibc
#endif

// MARK: - [tls]

public struct TLSConfig: Sendable, Equatable, ConfigSection {
    /// PEM certificate chain (leaf first); "" = no TLS offered.
    public var certificate = ""
    /// PEM private key of the certificate.
    public var key = ""
    /// TLS 1.2 ciphers on port 25's STARTTLS (server.listen): "high", "medium" or an OpenSSL cipher list.
    public var ciphers = "medium"
    /// TLS 1.2 ciphers on server.submission and server.submissions.
    public var submissionCiphers = "high"

    public init() {}

    public var enabled: Bool { !certificate.isEmpty }

    static let tableName = "tls"

    mutating func read(_ r: inout TableReader) throws {
        if let path = try r.readPath("certificate") { certificate = path }
        if let path = try r.readPath("key") { key = path }
        try r.read("ciphers", into: &ciphers, Self.decodeCiphers)
        try r.read("submission_ciphers", into: &submissionCiphers, Self.decodeCiphers)
        try r.check("key", certificate.isEmpty == key.isEmpty,
                    certificate.isEmpty ? "is set but tls.certificate is not" : "must be set with tls.certificate")
    }
}

extension TLSConfig {
    /// The named cipher policies (TLS 1.2; TLS 1.3's suites are all AEAD and forward secret).
    /// "high": forward-secret AEAD only (ECDHE with AES-GCM or ChaCha20-Poly1305), for clients we
    /// control. "medium": the same first, then ECDHE with AES-CBC for old peers on port 25, where the
    /// alternative is plain text (Postfix's "medium" idea); never RSA key exchange, export, NULL,
    /// RC4, 3DES or anonymous suites.
    public static let namedCipherLists: [String: String] = [
        "high": "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL",
        "medium": "ECDHE+AESGCM:ECDHE+CHACHA20:ECDHE+AES:!aNULL:!eNULL:!3DES:!RC4:!MD5",
    ]

    /// The OpenSSL cipher list a policy value stands for.
    public static func cipherList(_ value: String) -> String { namedCipherLists[value] ?? value }

    static func decodeCiphers(_ value: TOMLValueConvertible) throws -> String {
        let text = try Decode.nonEmptyString(value)
        guard TLSContext.isValidCipherList(cipherList(text)) else {
            throw ConfigError(message: "\"\(text)\" is neither \"high\", \"medium\" nor an OpenSSL cipher list that selects a cipher")
        }
        return text
    }
}

// MARK: - [auth]

public struct AuthConfig: Sendable, Equatable, ConfigSection {
    /// The users file written by `tern passwd`; "" = no AUTH offered.
    public var usersFile = ""
    /// Failed authentications from one client (an IPv4 address or an IPv6 /64) before it is locked out.
    public var maxFailures = 5
    /// How long a locked-out IP stays locked out (seconds).
    public var lockoutTime: Double = 900
    /// Offer AUTH without TLS to clients on loopback addresses (webmail on the same host).
    public var cleartextFromLoopback = false
    /// Per user: the only MAIL FROM addresses (or "@domain") the user may send as. Users not listed
    /// may use any sender.
    public var senders: [String: [String]] = [:]

    public init() {}

    public var enabled: Bool { !usersFile.isEmpty }

    static let tableName = "auth"

    mutating func read(_ r: inout TableReader) throws {
        if let path = try r.readPath("users_file") { usersFile = path }
        try r.read("max_failures", into: &maxFailures, Decode.positiveInt)
        try r.read("lockout_time", into: &lockoutTime, Decode.duration)
        try r.read("cleartext_from_loopback", into: &cleartextFromLoopback, Decode.bool)
        guard let table = try r.read("senders", Decode.table) else { return }
        var inner = TableReader(table, path: r.path + ["senders"], context: r.context)
        for user in table.keys.sorted() {
            guard let list = try inner.read(user, Decode.list({ text -> String in
                let domainOnly = text.hasPrefix("@") && isPlausibleDomain(String(text.dropFirst()))
                guard domainOnly || isAliasName(text), text.contains("@") else {
                    throw ConfigError(message: "\"\(text)\" is not an address (user@domain) or \"@domain\"")
                }
                return text.lowercased()
            })) else { continue }
            senders[user] = list
        }
        try inner.rejectUnknownKeys()
    }
}

// MARK: - Outbound TLS policy

// OutboundTLSPolicy itself is in MailQueue (ShapingPolicy.swift), so that a [[shaping]] rule carries it.
extension OutboundTLSPolicy {
    static func decode(_ value: TOMLValueConvertible) throws -> OutboundTLSPolicy {
        guard let text = value.string else { throw Decode.wrongType("a string", value) }
        guard let policy = OutboundTLSPolicy(rawValue: text) else {
            throw ConfigError(message: "must be \"none\", \"opportunistic\", \"require\" or \"verify\", got \"\(text)\"")
        }
        return policy
    }
}

extension TernConfig {
    /// Rules that span tables: a submission listener needs AUTH, an implicit-TLS one a certificate.
    func checkSecurity(source: String) throws {
        func error(_ key: String, _ message: String) -> ConfigError {
            ConfigError(key: key, line: nil, message: message, source: source)
        }
        if !server.submission.isEmpty || !server.submissions.isEmpty {
            let key = server.submission.isEmpty ? "server.submissions" : "server.submission"
            guard auth.enabled else { throw error(key, "needs auth.users_file: AUTH is required before MAIL there") }
        }
        if !server.submissions.isEmpty && !tls.enabled {
            throw error("server.submissions", "needs tls.certificate and tls.key (implicit TLS)")
        }
        let all = server.listen + server.submission + server.submissions
        let parsed = all.compactMap { try? ListenAddress(parsing: $0) }
        if Set(parsed).count != parsed.count {
            throw error("server.submission", "an address is listed twice among listen, submission and submissions")
        }
    }
}

// MARK: - Routes as tables

/// What a route in table form adds to its next hop:
///   "*" = { next_hop = "[smtp.upstream.example]:587", tls = "verify", auth_user = "relay",
///           auth_password_file = "/etc/tern/upstream.pw" }
/// The password comes from exactly one of auth_password, auth_password_file (first line) or
/// auth_password_env (an environment variable); it is read at start-up and on SIGHUP. A table may
/// also name the egress pool of the route's mail (`pool = "bulk"`, kept in RouteConfig.pools).
public struct RouteSecurity: Sendable, Equatable {
    /// nil: delivery.tls.
    public var tls: OutboundTLSPolicy?
    public var credentials: ClientCredentials?
    /// Where the password came from: auth_password_file (resolved) or auth_password_env; both nil
    /// for an inline auth_password. check-config prints these keys, never the password.
    public var passwordFile: String?
    public var passwordEnv: String?

    public init(tls: OutboundTLSPolicy? = nil, credentials: ClientCredentials? = nil) {
        self.tls = tls
        self.credentials = credentials
    }
}

extension RouteConfig {
    mutating func readTableRoute(_ key: String, _ r: inout TableReader) throws {
        let table = try r.read(key, Decode.table)!
        var inner = TableReader(table, path: r.path + [key], context: r.context)
        let name = key == "*" ? key : normalizedDomain(key)
        try r.check(key, key == "*" || isPlausibleDomain(key), "\"\(key)\" is not a domain name or \"*\"")
        try r.check(key, routes[name] == nil, "duplicate route (domains are not case-sensitive)")
        let text = try inner.read("next_hop", Decode.string)!
        do {
            routes[name] = try NextHopSpec(parsing: text)
        } catch let error as ConfigError {
            throw inner.error("next_hop", error.message)
        }
        var security = RouteSecurity()
        security.tls = try inner.read("tls", OutboundTLSPolicy.decode)
        // Checked against [egress.pools] once every table is read (TernConfig.checkRoutePools).
        if let pool = try inner.read("pool", Decode.shapingName) { pools[name] = pool }
        let user = try inner.read("auth_user", Decode.nonEmptyString)
        let literal = try inner.read("auth_password", Decode.string)
        let file = try inner.readPath("auth_password_file", nonEmpty: true)
        let env = try inner.read("auth_password_env", Decode.nonEmptyString)
        let given = [literal != nil, file != nil, env != nil].filter { $0 }.count
        if let user {
            try inner.check("auth_user", given == 1,
                            "needs exactly one of auth_password, auth_password_file, auth_password_env")
            var password = literal ?? ""
            if let file {
                do {
                    let text = try readTextFile(file)
                    password = String(text.split(maxSplits: 1, omittingEmptySubsequences: false,
                                                 whereSeparator: { $0 == "\n" || $0 == "\r\n" }).first ?? "")
                } catch let error as ConfigError {
                    throw inner.error("auth_password_file", "\(file): \(error.message)")
                }
            }
            if let env {
                guard let value = getenv(env) else {
                    throw inner.error("auth_password_env", "the environment variable \(env) is not set")
                }
                password = String(cString: value)
            }
            try inner.check("auth_user", !password.isEmpty, "the password is empty")
            security.credentials = ClientCredentials(user: user, password: password)
            security.passwordFile = file
            security.passwordEnv = env
        } else if given > 0 {
            throw inner.error("auth_user", "must be set with a password")
        }
        self.security[name] = security
        try inner.rejectUnknownKeys()
    }
}
