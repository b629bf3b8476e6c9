// Private keys for message signatures (DKIM): RSA and Ed25519 from PEM files, signing with OpenSSL's
// EVP_DigestSign, the public key in the forms DNS records publish, key generation, and a streaming
// SHA-256. Nothing here knows DKIM's header rules; the DKIM target does that without cryptography.

import COpenSSL
#if canImport(Glibc)
import Glibc
#endif

/// A key file that could not be read, parsed, used or written; says which file and why.
public struct KeyFileError: Error, CustomStringConvertible, Sendable, Equatable {
    public let path: String
    public let reason: String
    public init(path: String, _ reason: String) {
        self.path = path
        self.reason = reason
    }
    public var description: String { "\(path): \(reason)" }

    static func fromQueue(path: String, _ what: String) -> KeyFileError {
        KeyFileError(path: path, TLSError.fromQueue(what).message)
    }
}

/// SHA-256, fed in pieces.
// @unchecked: one owner at a time; the context is never shared between threads.
public final class SHA256: @unchecked Sendable {
    private let ctx: OpaquePointer
    private var finished = false

    public init() {
        // EVP_MD_CTX_new fails only when malloc does; Swift's own allocations would fail then too.
        ctx = EVP_MD_CTX_new()!
        EVP_DigestInit_ex(ctx, EVP_sha256(), nil)
    }

    deinit { EVP_MD_CTX_free(ctx) }

    public func update(_ bytes: UnsafeRawBufferPointer) {
        precondition(!finished, "SHA256 updated after finish")
        guard let base = bytes.baseAddress, bytes.count > 0 else { return }
        EVP_DigestUpdate(ctx, base, bytes.count)
    }

    public func update(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { update($0) }
    }

    /// The 32-byte digest. The hash cannot be fed again afterwards.
    public func finish() -> [UInt8] {
        precondition(!finished, "SHA256 finished twice")
        finished = true
        var out = [UInt8](repeating: 0, count: 32)
        var length: UInt32 = 0
        EVP_DigestFinal_ex(ctx, &out, &length)
        return out
    }

    public static func hash(_ bytes: [UInt8]) -> [UInt8] {
        let h = SHA256()
        h.update(bytes)
        return h.finish()
    }
}

/// A private key for signing: RSA (at least 1024 bits, RFC 8301) or Ed25519.
// @unchecked: the EVP_PKEY is never changed after init; OpenSSL allows concurrent signing with it.
public final class SigningKey: @unchecked Sendable {
    public enum Kind: Sendable, Equatable {
        case rsa(bits: Int)
        case ed25519
    }

    let pkey: OpaquePointer
    public let kind: Kind
    /// The file it came from or went to, for errors.
    public let path: String

    private init(pkey: OpaquePointer, kind: Kind, path: String) {
        self.pkey = pkey
        self.kind = kind
        self.path = path
    }

    /// Takes ownership of `pkey`: a key of another type or too small is freed and an error.
    private static func wrap(_ pkey: OpaquePointer, path: String) throws -> SigningKey {
        switch EVP_PKEY_get_base_id(pkey) {
        case EVP_PKEY_RSA:
            let bits = Int(EVP_PKEY_get_bits(pkey))
            guard bits >= 1024 else {
                EVP_PKEY_free(pkey)
                throw KeyFileError(path: path, "an RSA key of \(bits) bits; DKIM needs at least 1024 (RFC 8301)")
            }
            return SigningKey(pkey: pkey, kind: .rsa(bits: bits), path: path)
        case EVP_PKEY_ED25519:
            return SigningKey(pkey: pkey, kind: .ed25519, path: path)
        default:
            EVP_PKEY_free(pkey)
            throw KeyFileError(path: path, "neither an RSA nor an Ed25519 key")
        }
    }

    deinit { EVP_PKEY_free(pkey) }

    /// A key from PEM text: PKCS#8 ("PRIVATE KEY") or traditional RSA ("RSA PRIVATE KEY"). An
    /// encrypted key is refused (nothing prompts for a passphrase). `path` names it in errors.
    public static func fromPEM(_ pem: [UInt8], path: String) throws -> SigningKey {
        ERR_clear_error()
        guard let bio = pem.withUnsafeBytes({ BIO_new_mem_buf($0.baseAddress, Int32($0.count)) }) else {
            throw KeyFileError.fromQueue(path: path, "BIO_new_mem_buf")
        }
        defer { BIO_free(bio) }
        // A passphrase callback that has none: an encrypted key fails instead of reading the terminal.
        guard let key = PEM_read_bio_PrivateKey(bio, nil, { _, _, _, _ in 0 }, nil) else {
            throw KeyFileError.fromQueue(path: path, "not a PEM private key (PKCS#8 or RSA), or an encrypted one")
        }
        return try wrap(key, path: path)
    }

    /// Reads the key file (a blocking read: call it off the loop thread).
    public static func load(path: String) throws -> SigningKey {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw KeyFileError(path: path, String(cString: strerror(errno))) }
        defer { close(fd) }
        var data: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 16384)
        while true {
            let n = read(fd, &buffer, buffer.count)
            if n < 0 {
                if errno == EINTR { continue }
                throw KeyFileError(path: path, String(cString: strerror(errno)))
            }
            if n == 0 { break }
            data += buffer[0..<n]
            guard data.count <= 1 << 20 else { throw KeyFileError(path: path, "larger than 1 MiB, not a key") }
        }
        defer { data.withUnsafeMutableBytes { if let b = $0.baseAddress { memset(b, 0, $0.count) } } }
        return try fromPEM(data, path: path)
    }

    /// A new key: RSA of `bits` bits or Ed25519. `path` is where it will be written (for errors).
    public static func generate(_ kind: Kind, path: String = "new key") throws -> SigningKey {
        ERR_clear_error()
        let name: String
        switch kind {
        case .rsa: name = "RSA"
        case .ed25519: name = "ED25519"
        }
        guard let ctx = EVP_PKEY_CTX_new_from_name(nil, name, nil) else {
            throw KeyFileError.fromQueue(path: path, "EVP_PKEY_CTX_new_from_name")
        }
        defer { EVP_PKEY_CTX_free(ctx) }
        guard EVP_PKEY_keygen_init(ctx) == 1 else { throw KeyFileError.fromQueue(path: path, "EVP_PKEY_keygen_init") }
        if case .rsa(let bits) = kind {
            guard EVP_PKEY_CTX_set_rsa_keygen_bits(ctx, Int32(bits)) == 1 else {
                throw KeyFileError.fromQueue(path: path, "EVP_PKEY_CTX_set_rsa_keygen_bits")
            }
        }
        var key: OpaquePointer?
        guard EVP_PKEY_generate(ctx, &key) == 1, let key else { throw KeyFileError.fromQueue(path: path, "EVP_PKEY_generate") }
        return try wrap(key, path: path)
    }

    /// The key as PKCS#8 PEM ("BEGIN PRIVATE KEY"), unencrypted.
    public func pkcs8PEM() throws -> [UInt8] {
        ERR_clear_error()
        guard let bio = BIO_new(BIO_s_mem()) else { throw KeyFileError.fromQueue(path: path, "BIO_new") }
        defer { BIO_free(bio) }
        guard PEM_write_bio_PKCS8PrivateKey(bio, pkey, nil, nil, 0, nil, nil) == 1 else {
            throw KeyFileError.fromQueue(path: path, "PEM_write_bio_PKCS8PrivateKey")
        }
        var out = [UInt8](repeating: 0, count: tern_BIO_pending(bio))
        let n = BIO_read(bio, &out, Int32(out.count))
        guard n == out.count else { throw KeyFileError.fromQueue(path: path, "BIO_read") }
        return out
    }

    /// Writes the key as PKCS#8 PEM to `path`, a new file of mode 0600: an existing file is never
    /// overwritten (it may be the key a published record names).
    public func write(to path: String) throws {
        var pem = try pkcs8PEM()
        defer { pem.withUnsafeMutableBytes { if let b = $0.baseAddress { memset(b, 0, $0.count) } } }
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw KeyFileError(path: path, String(cString: strerror(errno))) }
        var ok = false
        defer {
            close(fd)
            if !ok { unlink(path) }
        }
        var written = 0
        while written < pem.count {
            let n = pem.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + written, $0.count - written) }
            if n < 0 {
                if errno == EINTR { continue }
                throw KeyFileError(path: path, String(cString: strerror(errno)))
            }
            written += n
        }
        guard fsync(fd) == 0 else { throw KeyFileError(path: path, String(cString: strerror(errno))) }
        ok = true
    }

    /// The public key as DNS key records publish it: for RSA the DER SubjectPublicKeyInfo (RFC 6376
    /// §3.6.1 p=), for Ed25519 the raw 32 bytes (RFC 8463 §4.2).
    public func publicKeyForDNS() throws -> [UInt8] {
        ERR_clear_error()
        switch kind {
        case .rsa:
            let length = i2d_PUBKEY(pkey, nil)
            guard length > 0 else { throw KeyFileError.fromQueue(path: path, "i2d_PUBKEY") }
            var out = [UInt8](repeating: 0, count: Int(length))
            let written = out.withUnsafeMutableBufferPointer { buffer -> Int32 in
                var p: UnsafeMutablePointer<UInt8>? = buffer.baseAddress
                return i2d_PUBKEY(pkey, &p)
            }
            guard written == length else { throw KeyFileError.fromQueue(path: path, "i2d_PUBKEY") }
            return out
        case .ed25519:
            var out = [UInt8](repeating: 0, count: 32)
            var length = out.count
            guard EVP_PKEY_get_raw_public_key(pkey, &out, &length) == 1, length == 32 else {
                throw KeyFileError.fromQueue(path: path, "EVP_PKEY_get_raw_public_key")
            }
            return out
        }
    }

    /// The signature of `data` as DKIM makes it: RSA PKCS#1 v1.5 with SHA-256 (rsa-sha256), or
    /// Ed25519 over the SHA-256 of `data` (ed25519-sha256, RFC 8463 §3). Thread-safe.
    public func signSHA256(_ data: [UInt8]) throws -> [UInt8] {
        ERR_clear_error()
        guard let ctx = EVP_MD_CTX_new() else { throw KeyFileError.fromQueue(path: path, "EVP_MD_CTX_new") }
        defer { EVP_MD_CTX_free(ctx) }
        let message: [UInt8]
        switch kind {
        case .rsa:
            guard EVP_DigestSignInit(ctx, nil, EVP_sha256(), nil, pkey) == 1 else {
                throw KeyFileError.fromQueue(path: path, "EVP_DigestSignInit")
            }
            message = data
        case .ed25519:
            // Pure Ed25519 takes no digest of its own: the one-shot call signs the 32 bytes.
            guard EVP_DigestSignInit(ctx, nil, nil, nil, pkey) == 1 else {
                throw KeyFileError.fromQueue(path: path, "EVP_DigestSignInit")
            }
            message = SHA256.hash(data)
        }
        var length = 0
        guard message.withUnsafeBytes({ EVP_DigestSign(ctx, nil, &length, $0.baseAddress, $0.count) }) == 1 else {
            throw KeyFileError.fromQueue(path: path, "EVP_DigestSign")
        }
        var signature = [UInt8](repeating: 0, count: length)
        guard message.withUnsafeBytes({ EVP_DigestSign(ctx, &signature, &length, $0.baseAddress, $0.count) }) == 1 else {
            throw KeyFileError.fromQueue(path: path, "EVP_DigestSign")
        }
        return Array(signature[0..<length])
    }
}
