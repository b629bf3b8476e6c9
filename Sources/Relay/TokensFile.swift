// TokensFile.swift: the bearer tokens of the HTTP injection API ([http] tokens_file, issue 19), one
// "NAME:sha256$HEX" line per token, '#' comments and blank lines allowed.
//
// A token is 32 random bytes (`tern token` makes one, prints it once and keeps only its hash). With
// that much entropy a fast hash is enough (a slow one, like the AUTH users file's scrypt, guards guessable
// passwords and would cost every request tens of milliseconds): SHA-256, compared in constant time.

import UVRuntime

public struct TokensFile: Equatable, Sendable {
    /// Name and SHA-256 of each token, in file order.
    public private(set) var entries: [(name: String, hash: [UInt8])] = []

    public init() {}

    public static func == (a: TokensFile, b: TokensFile) -> Bool {
        a.entries.map(\.name) == b.entries.map(\.name) && a.entries.map(\.hash) == b.entries.map(\.hash)
    }

    /// "tern_" and 64 hex digits.
    public static func newToken() -> String {
        "tern_" + PasswordHash.hex(secureRandomBytes(32))
    }

    public static func hash(_ token: String) -> [UInt8] { SHA256.hash(Array(token.utf8)) }

    /// A name: 1-64 letters, digits, '-', '_' or '.'.
    public static func isValidName(_ name: String) -> Bool {
        (1...64).contains(name.utf8.count) && name.utf8.allSatisfy {
            ($0 >= 48 && $0 <= 57) || ($0 >= 65 && $0 <= 90) || ($0 >= 97 && $0 <= 122) || $0 == 45 || $0 == 95 || $0 == 46
        }
    }

    public static func parse(_ text: String, source: String) throws -> TokensFile {
        var file = TokensFile()
        for (index, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.hasSuffix("\r") ? raw.dropLast() : raw
            if line.isEmpty || line.hasPrefix("#") { continue }
            let parts = line.split(separator: ":", maxSplits: 1)
            guard parts.count == 2, isValidName(String(parts[0])), parts[1].hasPrefix("sha256$"),
                  let hash = PasswordHash.unhex(parts[1].dropFirst(7)), hash.count == 32 else {
                throw ConfigError(line: index + 1, message: "not a \"name:sha256$HEX\" line (make one with `tern token`)",
                                  source: source)
            }
            guard !file.entries.contains(where: { $0.name == String(parts[0]) }) else {
                throw ConfigError(line: index + 1, message: "token name \"\(parts[0])\" is there twice", source: source)
            }
            file.entries.append((String(parts[0]), hash))
        }
        return file
    }

    /// The name of the token presented, or nil. Every entry is compared in full, whichever matches.
    public func name(of token: String) -> String? {
        let presented = Self.hash(token)
        var found: String?
        for entry in entries {
            var difference: UInt8 = 0
            for (a, b) in zip(presented, entry.hash) { difference |= a ^ b }
            if difference == 0 && found == nil { found = entry.name }
        }
        return found
    }

    /// The file with a token added (or its hash replaced) under `name`.
    public func adding(name: String, token: String) -> TokensFile {
        var copy = self
        let hash = Self.hash(token)
        if let i = copy.entries.firstIndex(where: { $0.name == name }) {
            copy.entries[i].hash = hash
        } else {
            copy.entries.append((name, hash))
        }
        return copy
    }

    public func removing(name: String) -> TokensFile {
        var copy = self
        copy.entries.removeAll { $0.name == name }
        return copy
    }

    public var text: String {
        entries.map { "\($0.name):sha256$\(PasswordHash.hex($0.hash))\n" }.joined()
    }
}
