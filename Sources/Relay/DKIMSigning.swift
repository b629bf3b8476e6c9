// DKIMSigning.swift: the [[dkim.sign]] keys at run time (issue 17) and the signing of one message as
// the receive path writes it. Keys are read with the certificate and users file (openSecurityFiles:
// at start-up, and on the thread pool at SIGHUP); a message is signed on the thread pool before its
// commit, so the spooled copy, and every attempt, carries the DKIM-Signature fields.

import DKIM
import MailQueue
import UVRuntime

/// The loaded keys by signing domain, with the policy that picks among them. Immutable: a reload
/// makes a new set.
public final class DKIMKeySet: Sendable {
    struct Signature: Sendable {
        let settings: DKIMSignerSettings
        let key: SigningKey
    }
    /// d= (lowercase) to its signatures, in the config's order.
    let byDomain: [String: [Signature]]
    /// Which domains sign which message ([dkim] users and routes, the From: domain by default).
    let policy: DKIMSigningPolicy

    init(byDomain: [String: [Signature]], policy: DKIMSigningPolicy) {
        self.byDomain = byDomain
        self.policy = policy
    }

    /// Reads every table's key (blocking). A key that cannot be read, or whose type is not the
    /// table's algorithm, is a ConfigError naming dkim.sign[i].key and the file. Nil without tables.
    /// `routeKeys`: every [routes] key (a domain routed on its own does not take "*"'s fixed domain).
    static func load(_ config: DKIMConfig, routeKeys: Set<String>, source: String?) throws -> DKIMKeySet? {
        guard !config.sign.isEmpty else { return nil }
        var byDomain: [String: [Signature]] = [:]
        for (index, table) in config.sign.enumerated() {
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
        let policy = DKIMSigningPolicy(keyDomains: Set(byDomain.keys), users: config.users, routes: config.routes,
                                       routeKeys: routeKeys)
        return DKIMKeySet(byDomain: byDomain, policy: policy)
    }

    /// The signatures of the domains that sign a message, in order.
    func signatures(of domains: [String]) -> [Signature] {
        domains.flatMap { byDomain[$0] ?? [] }
    }

    /// What a message's envelope decides: the fixed domains of its user or routes, or its From: domain.
    func request(authenticatedUser: String?, recipients: [String]) -> DKIMRequest {
        // The recipients' domains as routing finds them (lowercase, no trailing dot), only when a
        // route fixes a domain: otherwise they cannot change the choice.
        let domains = policy.routes.isEmpty ? [] : recipients.map { normalizedDomain(DeliveryCore.domain(of: $0)) }
        return DKIMRequest(keys: self, choice: policy.choice(authenticatedUser: authenticatedUser, recipientDomains: domains))
    }
}

/// The keys a message is signed with, and the envelope's part of the choice among them.
struct DKIMRequest: Sendable {
    let keys: DKIMKeySet
    let choice: DKIMSigningChoice
}

/// Signs one message fed in order, in chunks of any size (the Received header, then the client's
/// data, dot-unstuffed). The header block is held until its end is seen: the From: domain there picks
/// the keys. Used by one thread at a time (the message's pool work items run one after another).
// @unchecked: no lock; handed from one pool work item to the next, never used by two at once.
final class DKIMMessageSigning: @unchecked Sendable {
    let keys: DKIMKeySet
    let choice: DKIMSigningChoice
    /// The start of the message while the end of its header block is not seen yet.
    private var head: [UInt8] = []
    /// Decided once the header block is complete: the signers of the From: domain (maybe none).
    private var signers: [(signer: DKIMMessageSigner<SHA256>, key: SigningKey)]?
    private var failure: DKIMError?

    /// A header block larger than this (with no end in sight) is refused rather than held.
    static let maxHeaderBlock = 1 << 20

    init(_ request: DKIMRequest) {
        self.keys = request.keys
        self.choice = request.choice
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

    /// Picks the signers (the envelope's fixed domains, the From: domain's keys of the header block
    /// that `start` begins with: all of `start` when it has no empty line) and feeds them `start`.
    private func decide(_ start: [UInt8]) {
        let fields: [HeaderField]
        do {
            fields = try start.withUnsafeBytes { try HeaderBlock.parse(UnsafeRawBufferPointer(rebasing: $0[..<HeaderBlock.split($0).headerEnd])) }
        } catch {
            // Unsignable, but only a failure if the config says to sign it: a fixed domain does, and
            // so does the From: domain of a line that looks like one (a domain without keys passes
            // unsigned, as ever).
            let from = choice.byAuthor ? Self.looseAuthorDomain(start) : nil
            if !choice.fixed.isEmpty || (choice.byAuthor && (from == nil || keys.policy.keyDomain(forAuthorDomain: from!) != nil)) {
                failure = DKIMError("unparsable header block: \(error)")
            } else {
                signers = []
            }
            return
        }
        let author = choice.byAuthor ? AuthorDomain.domains(in: fields).first : nil
        let chosen = keys.signatures(of: keys.policy.domains(choice, authorDomain: author))
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

    /// The DKIM-Signature fields to put in front of the message: empty when no domain signs it (the
    /// message stays as it is). Throws a DKIMError saying why the message cannot be signed.
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

    /// Whether any domain signs the message, from its header block alone (nothing is hashed). A header
    /// block that does not parse says yes: `sign` decides what becomes of it.
    static func wouldSign(_ message: [UInt8], _ request: DKIMRequest) -> Bool {
        guard let fields = try? message.withUnsafeBytes({
            try HeaderBlock.parse(UnsafeRawBufferPointer(rebasing: $0[..<HeaderBlock.split($0).headerEnd]))
        }) else { return true }
        let author = request.choice.byAuthor ? AuthorDomain.domains(in: fields).first : nil
        return !request.keys.signatures(of: request.keys.policy.domains(request.choice, authorDomain: author)).isEmpty
    }

    /// Signs a whole message: the fields to put in front of it (empty: not signed).
    static func sign(_ message: [UInt8], _ request: DKIMRequest, time: UInt64) throws -> [UInt8] {
        let signing = DKIMMessageSigning(request)
        signing.decide(message)  // no copy into `head`: the whole message is here
        return try signing.finish(time: time)
    }
}
