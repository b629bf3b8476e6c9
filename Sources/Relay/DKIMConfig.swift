// DKIMConfig.swift: [[dkim.sign]] tables (issue 17), one per signature: two for the same domain sign
// it twice (the usual RSA + Ed25519 pair). Only read and checked here; the keys are loaded, and mail
// signed, by the receive path. A mistake is an error naming its key ("dkim.sign[1].selector").

import DKIM
import UVRuntime

// Relay is where the DKIM core and OpenSSL's hash meet.
extension SHA256: DKIMHasher {}

public struct DKIMSignConfig: Sendable, Equatable {
    /// d=: the signing domain.
    public var domain: String
    /// s=: the key record is at selector._domainkey.domain.
    public var selector: String
    /// The PEM private key file (PKCS#8 or traditional RSA), resolved from the config's directory.
    public var key: String
    public var algorithm: DKIMAlgorithm = .rsaSHA256
    public var canonicalization: CanonicalizationPair = .relaxedRelaxed
    /// The fields signed when present; From is always among them and signed once more than it appears.
    public var headers: [String] = SignedHeaders.defaults
    /// x= is the signing time plus this many seconds; nil leaves x= out.
    public var expire: Double?

    public init(domain: String, selector: String, key: String) {
        self.domain = domain
        self.selector = selector
        self.key = key
    }
}

extension DKIMSignConfig {
    /// What DKIMMessageSigner needs from this table (x= in whole seconds, rounded up).
    public var signerSettings: DKIMSignerSettings {
        DKIMSignerSettings(domain: domain, selector: selector, algorithm: algorithm, canonicalization: canonicalization,
                           headers: headers, expiresAfter: expire.map { UInt64($0.rounded(.up)) })
    }
}

public struct DKIMConfig: Sendable, Equatable {
    /// [[dkim.sign]] tables in the file's order.
    public var sign: [DKIMSignConfig] = []
    /// [dkim] users: an authenticated user's fixed signing domain (a [[dkim.sign]] domain), whatever
    /// the From: header says.
    public var users: [String: String] = [:]
    /// [dkim] routes: a route's fixed signing domain, by [routes] key (a lowercase domain or "*").
    public var routes: [String: String] = [:]
    public init() {}
}

extension TernConfig {
    /// [dkim]: the [[dkim.sign]] tables, then the users' and routes' fixed signing domains (after
    /// [routes], which the sections read first).
    static func readDKIM(_ config: inout TernConfig, _ reader: inout TableReader) throws {
        try readDKIMSign(&config, &reader)
        let signing = Set(config.dkim.sign.map(\.domain))
        func fixedDomain(_ r: inout TableReader, _ key: String) throws -> String? {
            guard let domain = try r.read(key, Decode.string) else { return nil }
            let name = domain.lowercased()
            try r.check(key, signing.contains(name),
                        "\"\(domain)\" has no [[dkim.sign]] table: a fixed signing domain needs its key")
            return name
        }
        if let table = try reader.read("users", Decode.table) {
            var r = TableReader(table, path: reader.path + ["users"], context: reader.context)
            for user in table.keys.sorted() {
                guard let domain = try fixedDomain(&r, user) else { continue }
                try r.check(user, UsersFile.isValidUserName(user),
                            "\"\(user)\" is not a user name (1-256 printable characters, no ':' or spaces)")
                config.dkim.users[user] = domain
            }
            try r.rejectUnknownKeys()
        }
        if let table = try reader.read("routes", Decode.table) {
            var r = TableReader(table, path: reader.path + ["routes"], context: reader.context)
            for route in table.keys.sorted() {
                guard let domain = try fixedDomain(&r, route) else { continue }
                let name = route == "*" ? route : normalizedDomain(route)
                try r.check(route, config.routes.routes[name] != nil,
                            "there is no [routes] entry \"\(route)\" (a route's domain as written there, or \"*\")")
                try r.check(route, config.dkim.routes[name] == nil, "duplicate route (domains are not case-sensitive)")
                config.dkim.routes[name] = domain
            }
            try r.rejectUnknownKeys()
        }
    }

    private static func readDKIMSign(_ config: inout TernConfig, _ reader: inout TableReader) throws {
        guard let tables = try reader.read("sign", Decode.tables("dkim.sign")) else { return }
        var seen: [String: Int] = [:]  // "selector._domainkey.domain": its table
        for (index, table) in tables.enumerated() {
            var r = TableReader(table, path: ["dkim", "sign[\(index)]"], context: reader.context)
            func required(_ key: String, _ what: String) throws -> String {
                guard let value = try r.read(key, Decode.string) else { throw r.error(key, "is required: \(what)") }
                return value
            }
            let domain = try required("domain", "the signing domain (d=)")
            try r.check("domain", DKIMSignatureTags.isDomainName(domain),
                        "\"\(domain)\" is not a domain name (letters, digits, '-' and '.'; an IDN as A-labels)")
            let selector = try required("selector", "the key's selector (s=)")
            try r.check("selector", DKIMSignatureTags.isSelector(selector),
                        "\"\(selector)\" is not a selector (letters, digits, '-', '_' and '.')")
            guard let key = try r.readPath("key", nonEmpty: true) else {
                throw r.error("key", "is required: the PEM file of the private key")
            }
            var sign = DKIMSignConfig(domain: domain.lowercased(), selector: selector, key: key)
            let record = "\(selector.lowercased())._domainkey.\(sign.domain)"
            if let other = seen[record] {
                throw r.error("selector", "\(record) is also dkim.sign[\(other)]'s key record: one selector, one key")
            }
            seen[record] = index
            if let text = try r.read("algorithm", Decode.string) {
                guard let algorithm = DKIMAlgorithm(rawValue: text) else {
                    throw r.error("algorithm", "\"\(text)\" is not \"rsa-sha256\" or \"ed25519-sha256\"")
                }
                sign.algorithm = algorithm
            }
            if let text = try r.read("canonicalization", Decode.string) {
                guard let c = CanonicalizationPair(text) else {
                    throw r.error("canonicalization", "\"\(text)\" is not header/body canonicalization such as "
                                  + "\"relaxed/relaxed\" or \"simple/simple\"")
                }
                sign.canonicalization = c
            }
            if let headers = try r.read("headers", Decode.list(Decode.nonEmptyStringItem)) {
                for name in headers {
                    try r.check("headers", DKIMSignatureTags.isHeaderName(name), "\"\(name)\" is not a header field name")
                }
                let lower = headers.map { $0.lowercased() }
                try r.check("headers", lower.contains("from"), "must include From (RFC 6376 §5.4: From is always signed)")
                var unique: [String] = []
                for name in lower where !unique.contains(name) { unique.append(name) }
                sign.headers = unique
            }
            sign.expire = try r.read("expire", Decode.duration)
            try r.rejectUnknownKeys()
            config.dkim.sign.append(sign)
        }
    }

    /// [dkim] and [[dkim.sign]], only as far as the file has them (there are none by default).
    func renderDKIM(_ out: inout TOMLWriter) {
        if !dkim.users.isEmpty || !dkim.routes.isEmpty {
            out.table("dkim")
            for (name, map) in [("users", dkim.users), ("routes", dkim.routes)] where !map.isEmpty {
                out.inlineTable(name, map)
            }
        }
        for sign in dkim.sign {
            out.arrayTable("dkim.sign")
            out.key("domain", string: sign.domain)
            out.key("selector", string: sign.selector)
            out.key("key", string: sign.key)
            out.key("algorithm", string: sign.algorithm.rawValue)
            out.key("canonicalization", string: sign.canonicalization.description)
            if sign.headers != SignedHeaders.defaults { out.key("headers", strings: sign.headers) }
            if let expire = sign.expire { out.key("expire", duration: expire) }
        }
    }
}

extension Decode {
    static func nonEmptyStringItem(_ text: String) throws -> String {
        guard !text.isEmpty else { throw ConfigError(message: "must not be empty") }
        return text
    }
}
