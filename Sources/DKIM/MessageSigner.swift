// Signing a whole message: the header block is kept (it is small), the body is canonicalized and
// hashed as it streams past, then the signature is made over the selected fields.

/// What one signature needs besides the message and the key's operations.
public struct DKIMSignerSettings: Sendable, Equatable {
    public var domain: String
    public var selector: String
    public var algorithm: DKIMAlgorithm
    public var canonicalization: CanonicalizationPair
    /// The header fields to sign when present (lowercase), and those signed once more than they appear.
    public var headers: [String]
    public var oversigned: Set<String>
    /// x= is t= plus this many seconds; nil leaves x= out.
    public var expiresAfter: UInt64?

    public init(domain: String, selector: String, algorithm: DKIMAlgorithm,
                canonicalization: CanonicalizationPair = .relaxedRelaxed,
                headers: [String] = SignedHeaders.defaults, oversigned: Set<String> = SignedHeaders.oversigned,
                expiresAfter: UInt64? = nil) {
        self.domain = domain
        self.selector = selector
        self.algorithm = algorithm
        self.canonicalization = canonicalization
        self.headers = headers
        self.oversigned = oversigned
        self.expiresAfter = expiresAfter
    }
}

/// Signs one message fed in chunks of any size (header block, blank line, body: CRLF lines, dot-
/// unstuffed). `H` hashes the body; `sign` signs the data of §3.7 with the key of `settings.algorithm`
/// (RSA: PKCS#1 v1.5 over its SHA-256; Ed25519: over its SHA-256, RFC 8463).
public struct DKIMMessageSigner<H: DKIMHasher> {
    public let settings: DKIMSignerSettings
    private var bodyHash: H
    private var body: BodyCanonicalizer
    /// The header block until its end is found; then fixed.
    private var header: [UInt8] = []
    private var inBody = false

    public init(settings: DKIMSignerSettings, hasher: H) {
        self.settings = settings
        self.bodyHash = hasher
        self.body = BodyCanonicalizer(settings.canonicalization.body)
    }

    public mutating func update(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { update($0) }
    }

    public mutating func update(_ chunk: UnsafeRawBufferPointer) {
        if inBody {
            body.update(chunk, into: &bodyHash)
            return
        }
        // Look for CRLF CRLF (or a CRLF at the very start) across the chunk boundary.
        let old = header.count
        header.append(contentsOf: chunk)
        let found = header.withUnsafeBytes { all -> (Int, Int)? in
            if all.count >= 2 && all[0] == cr && all[1] == lf { return (0, 2) }  // no header fields
            var i = max(0, old - 3)
            while i + 3 < all.count {
                if all[i] == cr && all[i + 1] == lf && all[i + 2] == cr && all[i + 3] == lf { return (i + 2, i + 4) }
                i += 1
            }
            return nil
        }
        guard let (end, bodyStart) = found else { return }
        inBody = true
        let tail = Array(header[bodyStart...])
        header.removeSubrange(end...)
        tail.withUnsafeBytes { body.update($0, into: &bodyHash) }
    }

    /// The DKIM-Signature field to put before the message (CRLF-terminated, folded). Throws for an
    /// unparsable header block, a bad setting, or the error `sign` throws.
    public mutating func finish(time: UInt64, sign: ([UInt8]) throws -> [UInt8]) throws -> [UInt8] {
        if !inBody {
            inBody = true  // no empty line: everything is header, the body is empty
        }
        body.finish(into: &bodyHash)
        let fields = try HeaderBlock.parse(header)
        let tags = DKIMSignatureTags(
            algorithm: settings.algorithm, canonicalization: settings.canonicalization,
            domain: settings.domain, selector: settings.selector, timestamp: time,
            expiration: settings.expiresAfter.map { time + $0 },
            signedHeaders: SignedHeaders.list(for: fields, names: settings.headers, oversigned: settings.oversigned),
            bodyHash: bodyHash.finish())
        try tags.validate()
        let data = try DKIMSigningData.data(fields: fields, tags: tags)
        let signature = try sign(data)
        guard !signature.isEmpty else { throw DKIMError("the signer returned no signature") }
        return tags.field(signature: signature)
    }

    /// Signs a whole message at once.
    public static func sign(_ message: [UInt8], settings: DKIMSignerSettings, hasher: H, time: UInt64,
                            sign: ([UInt8]) throws -> [UInt8]) throws -> [UInt8] {
        var signer = DKIMMessageSigner(settings: settings, hasher: hasher)
        signer.update(message)
        return try signer.finish(time: time, sign: sign)
    }
}
