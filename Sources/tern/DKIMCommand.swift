// `tern dkim keygen`: a new DKIM key in a PKCS#8 PEM file (mode 0600, never over an existing file)
// and the TXT record to publish for it, in zone-file form on standard output. `tern dkim check`: the
// published record of every [[dkim.sign]] table, looked up through the config's DNS, against its key.

import ArgumentParser
import DKIM
import Relay
import SMTPProtocol
import UVRuntime

#if canImport(Glibc)
import Glibc
#endif

struct DKIMCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dkim",
        abstract: "DKIM signing keys.",
        subcommands: [DKIMKeygen.self, DKIMCheck.self])
}

enum KeygenAlgorithm: String, ExpressibleByArgument, CaseIterable {
    case rsa2048 = "rsa-2048"
    case ed25519

    var kind: SigningKey.Kind { self == .ed25519 ? .ed25519 : .rsa(bits: 2048) }
    var dkim: DKIMAlgorithm { self == .ed25519 ? .ed25519SHA256 : .rsaSHA256 }
}

struct DKIMKeygen: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keygen",
        abstract: "Make a DKIM key and print the TXT record to publish.",
        discussion: """
            The key is written as PKCS#8 PEM, mode 0600; an existing file is never overwritten. The record \
            goes to standard output as a zone-file line for SELECTOR._domainkey.DOMAIN (long records split \
            into strings of at most 255 characters, as DNS needs). Name the file in a [[dkim.sign]] table.
            """)

    @Option(name: .long, help: "The signing domain (d=).")
    var domain: String

    @Option(name: .long, help: "The selector (s=): the record is at SELECTOR._domainkey.DOMAIN.")
    var selector: String

    @Option(name: .long, help: "rsa-2048 (rsa-sha256) or ed25519 (ed25519-sha256, RFC 8463).")
    var algorithm: KeygenAlgorithm = .rsa2048

    @Option(name: .long, help: "The key file to write (default: DOMAIN.SELECTOR.pem here).")
    var out: String?

    func run() throws {
        guard DKIMSignatureTags.isDomainName(domain) else {
            fputs("tern dkim keygen: \"\(terminalSafe(domain))\" is not a domain name (an IDN as A-labels)\n", stderr)
            throw ExitCode(64)
        }
        guard DKIMSignatureTags.isSelector(selector) else {
            fputs("tern dkim keygen: \"\(terminalSafe(selector))\" is not a selector (letters, digits, '-', '_', '.')\n", stderr)
            throw ExitCode(64)
        }
        let path = out ?? "\(domain.lowercased()).\(selector).pem"
        let record: String
        do {
            let key = try SigningKey.generate(algorithm.kind, path: path)
            try key.write(to: path)
            record = dkimKeyRecord(algorithm: algorithm.dkim, publicKey: try key.publicKeyForDNS())
        } catch {
            fputs("tern dkim keygen: \(error)\n", stderr)
            throw ExitCode(73)  // EX_CANTCREAT
        }
        print("\(selector)._domainkey.\(domain.lowercased()). IN TXT ( \(Self.zoneStrings(record)) )")
        fflush(stdout)  // the record before the note on a shared terminal
        fputs("tern dkim keygen: wrote \(path) (\(algorithm.rawValue)); publish the record above, then sign with\n"
              + "  [[dkim.sign]]\n  domain = \"\(domain.lowercased())\"\n  selector = \"\(selector)\"\n"
              + "  key = \"\(path)\"\n  algorithm = \"\(algorithm.dkim.rawValue)\"\n", stderr)
    }

    /// The record as quoted character-strings of at most 255 bytes each (RFC 1035 §3.3.14); a TXT
    /// record's strings are joined without spaces by DKIM verifiers (RFC 6376 §3.6.2.2).
    static func zoneStrings(_ record: String) -> String {
        var parts: [String] = []
        var rest = Substring(record)
        while !rest.isEmpty {
            parts.append("\"\(rest.prefix(255))\"")
            rest = rest.dropFirst(255)
        }
        return parts.joined(separator: " ")
    }
}

struct DKIMCheck: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Check that the published DKIM records match the configured keys.",
        discussion: """
            For each [[dkim.sign]] table (of --domain only, if given), looks up the TXT record at \
            SELECTOR._domainkey.DOMAIN through [dns] servers of the config and compares it with the key \
            file: one line per table, "ok" or "FAIL" and why. Exit status 0 when every record matches, \
            1 when one does not (or is not found), 78 for a config or key error.
            """)

    @Option(name: .long, help: "Path of the TOML config file (default: the built-in etc/tern.toml).")
    var config: String?

    @Option(name: .long, help: "Only the tables of this signing domain.")
    var domain: String?

    func run() throws {
        let settings: TernConfig
        do {
            settings = try config.map { try TernConfig.load(path: $0) } ?? TernConfig.embeddedDefault
        } catch {
            fputs("tern dkim check: \(error)\n", stderr)
            throw ExitCode(78)  // EX_CONFIG
        }
        let tables = settings.dkim.sign.filter { domain == nil || $0.domain == domain!.lowercased() }
        guard !tables.isEmpty else {
            fputs("tern dkim check: no [[dkim.sign]] table\(domain.map { " for \(terminalSafe($0))" } ?? "")\n", stderr)
            throw ExitCode(78)
        }
        var keys: [[UInt8]] = []
        for (i, table) in tables.enumerated() {
            do {
                let key = try SigningKey.load(path: table.key)
                let fits: Bool
                switch key.kind {
                case .rsa: fits = table.algorithm == .rsaSHA256
                case .ed25519: fits = table.algorithm == .ed25519SHA256
                }
                guard fits else {
                    throw KeyFileError(path: table.key, "not a key for \(table.algorithm.rawValue)")
                }
                keys.append(try key.publicKeyForDNS())
            } catch {
                fputs("tern dkim check: dkim.sign[\(i)].key: \(error)\n", stderr)
                throw ExitCode(78)
            }
        }
        let loop = try EventLoop()
        let resolver = try Resolver(loop: loop, servers: settings.dns.servers, timeoutMilliseconds: 2000, tries: 2)
        var lines = [String?](repeating: nil, count: tables.count)
        var failed = false
        for (i, table) in tables.enumerated() {
            let name = "\(table.selector)._domainkey.\(table.domain)"
            resolver.lookupTXT(name) { result in
                var verdict: String
                switch result {
                case .failure(let error):
                    verdict = "FAIL \(name): no record (\(error))"
                case .success(let answer):
                    let texts = answer.records.map { String(decoding: $0, as: UTF8.self) }
                    let dkimTexts = texts.filter { !$0.contains("v=spf1") }
                    if dkimTexts.count != 1 {
                        verdict = "FAIL \(name): \(dkimTexts.count) TXT records, one expected"
                    } else if let why = dkimKeyRecordMismatch(dkimTexts[0], algorithm: table.algorithm, publicKey: keys[i]) {
                        verdict = "FAIL \(name): \(why)"
                    } else {
                        verdict = "ok   \(name) (\(table.algorithm.rawValue), \(table.key))"
                    }
                }
                if verdict.hasPrefix("FAIL") { failed = true }
                lines[i] = terminalSafe(verdict)
                if lines.allSatisfy({ $0 != nil }) { loop.stop() }
            }
        }
        loop.run()
        resolver.close()
        for line in lines { print(line ?? "FAIL (no answer)") }
        if failed { throw ExitCode(1) }
    }
}
