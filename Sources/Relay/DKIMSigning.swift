// DKIMSigning.swift: the [[dkim.sign]] keys at run time (issue 17) and the signing of one message as
// the receive path writes it. Keys are read with the certificate and users file (openSecurityFiles:
// at start-up, and on the thread pool at SIGHUP); a message is signed on the thread pool before its
// commit, so the spooled copy, and every attempt, carries the DKIM-Signature fields.

import DKIM
import UVRuntime

/// The loaded keys by signing domain. Immutable: a reload makes a new set.
public final class DKIMKeySet: Sendable {
    struct Signature: Sendable {
        let settings: DKIMSignerSettings
        let key: SigningKey
    }
    /// d= (lowercase) to its signatures, in the config's order.
    let byDomain: [String: [Signature]]

    init(byDomain: [String: [Signature]]) {
        self.byDomain = byDomain
    }

    /// Reads every table's key (blocking). A key that cannot be read, or whose type is not the
    /// table's algorithm, is a ConfigError naming dkim.sign[i].key and the file. Nil without tables.
    static func load(_ tables: [DKIMSignConfig], source: String?) throws -> DKIMKeySet? {
        guard !tables.isEmpty else { return nil }
        var byDomain: [String: [Signature]] = [:]
        for (index, table) in tables.enumerated() {
            let name = "dkim.sign[\(index)].key"
            let key: SigningKey
            do {
                key = try SigningKey.load(path: table.key)
            } catch let error as KeyFileError {
                throw ConfigError(key: name, message: error.description, source: source)
            }
            switch (table.algorithm, key.kind) {
            case (.rsaSHA256, .rsa), (.ed25519SHA256, .ed25519):
                break
            case (_, .rsa(let bits)):
                throw ConfigError(key: name, message: "\(table.key): an RSA key (\(bits) bits), but the algorithm is \(table.algorithm.rawValue)",
                                  source: source)
            case (_, .ed25519):
                throw ConfigError(key: name, message: "\(table.key): an Ed25519 key, but the algorithm is \(table.algorithm.rawValue)",
                                  source: source)
            }
            byDomain[table.domain, default: []].append(Signature(settings: table.signerSettings, key: key))
        }
        return DKIMKeySet(byDomain: byDomain)
    }

    /// The signatures for mail from `domain` (the From: header's): its own domain's, or else the
    /// closest configured parent's (a key for example.com signs news.example.com). Empty: unsigned.
    func signatures(forAuthorDomain domain: String) -> [Signature] {
        var name = Substring(domain)
        while true {
            if let found = byDomain[String(name)] { return found }
            guard let dot = name.firstIndex(of: ".") else { return [] }
            name = name[name.index(after: dot)...]
        }
    }
}

/// Signs one message fed in order, in chunks of any size (the Received header, then the client's
/// data, dot-unstuffed). The header block is held until its end is seen: the From: domain there picks
/// the keys. Used by one thread at a time (the message's pool work items run one after another).
// @unchecked: no lock; handed from one pool work item to the next, never used by two at once.
final class DKIMMessageSigning: @unchecked Sendable {
    let keys: DKIMKeySet
    /// The start of the message while the end of its header block is not seen yet.
    private var head: [UInt8] = []
    /// Decided once the header block is complete: the signers of the From: domain (maybe none).
    private var signers: [(signer: DKIMMessageSigner<SHA256>, key: SigningKey)]?
    private var failure: DKIMError?

    /// A header block larger than this (with no end in sight) is refused rather than held.
    static let maxHeaderBlock = 1 << 20

    init(keys: DKIMKeySet) {
        self.keys = keys
    }

    func update(_ chunk: [UInt8]) {
        guard failure == nil else { return }
        if signers != nil {
            for i in signers!.indices { signers![i].signer.update(chunk) }
            return
        }
        let old = head.count
        head.append(contentsOf: chunk)
        let ended = head.withUnsafeBytes { all -> Bool in
            if all.count >= 2 && all[0] == 13 && all[1] == 10 { return true }
            var i = max(0, old - 3)
            while i + 3 < all.count {
                if all[i] == 13 && all[i + 1] == 10 && all[i + 2] == 13 && all[i + 3] == 10 { return true }
                i += 1
            }
            return false
        }
        if ended {
            decide(head)
            head = []
        } else if head.count > Self.maxHeaderBlock {
            failure = DKIMError("the header block is larger than \(Self.maxHeaderBlock) bytes")
            head = []
        }
    }

    /// Picks the signers from the From: domain of the header block that `start` begins with (all of
    /// `start` when it has no empty line) and feeds them `start`.
    private func decide(_ start: [UInt8]) {
        let fields: [HeaderField]
        do {
            fields = try start.withUnsafeBytes { try HeaderBlock.parse(UnsafeRawBufferPointer(rebasing: $0[..<HeaderBlock.split($0).headerEnd])) }
        } catch {
            // Unsignable, but only a failure if the config says to sign it: the From: domain of a
            // line that looks like one decides (a domain without keys passes unsigned, as ever).
            let from = Self.looseAuthorDomain(start)
            if from == nil || !keys.signatures(forAuthorDomain: from!).isEmpty {
                failure = DKIMError("unparsable header block: \(error)")
            } else {
                signers = []
            }
            return
        }
        let domain = AuthorDomain.domains(in: fields).first
        let chosen = domain.map { keys.signatures(forAuthorDomain: $0) } ?? []
        var made = chosen.map { (signer: DKIMMessageSigner(settings: $0.settings, hasher: SHA256()), key: $0.key) }
        for i in made.indices { made[i].signer.update(start) }
        signers = made
    }

    /// The domain of the first line starting "From:" in the header block of `start`, without parsing
    /// the block (which failed); nil when there is none.
    static func looseAuthorDomain(_ start: [UInt8]) -> String? {
        let end = start.withUnsafeBytes { HeaderBlock.split($0).headerEnd }
        var lineStart = 0
        while lineStart < end {
            var lineEnd = lineStart
            while lineEnd < end && start[lineEnd] != 10 { lineEnd += 1 }
            let line = start[lineStart..<lineEnd]
            if line.count >= 5, String(decoding: line.prefix(5), as: UTF8.self).lowercased() == "from:" {
                return AuthorDomain.domains(ofValue: Array(line.dropFirst(5))).first
            }
            lineStart = lineEnd + 1
        }
        return nil
    }

    /// The DKIM-Signature fields to put in front of the message: empty when its From: domain has no
    /// key (the message stays as it is). Throws a DKIMError saying why the message cannot be signed.
    func finish(time: UInt64) throws -> [UInt8] {
        if let failure { throw failure }
        if signers == nil {  // no empty line: the whole message is header
            decide(head)
            head = []
        }
        if let failure { throw failure }
        var fields: [UInt8] = []
        for i in signers!.indices {
            let key = signers![i].key
            do {
                fields += try signers![i].signer.finish(time: time) { try key.signSHA256($0) }
            } catch let error as KeyFileError {
                throw DKIMError("signing with \(error)")
            }
        }
        return fields
    }

    /// Signs a whole message: the fields to put in front of it (empty: not signed).
    static func sign(_ message: [UInt8], keys: DKIMKeySet, time: UInt64) throws -> [UInt8] {
        let signing = DKIMMessageSigning(keys: keys)
        signing.decide(message)  // no copy into `head`: the whole message is here
        return try signing.finish(time: time)
    }
}
