// TLS over memory BIOs: OpenSSL does the protocol, we do the I/O. No sockets here and nothing blocks:
// ciphertext from the peer goes in with `receive`, plaintext comes out of it; plaintext to send goes
// in with `send`; whatever OpenSSL wants on the wire waits in `takeOutput()` for the caller to write.
//
// One TLSContext per certificate (server) or per client policy, shared by every connection; one
// TLSEngine per connection. TLS 1.2 and 1.3 only, no compression, no renegotiation.
//
// Client certificate checks are not made fatal inside OpenSSL (SSL_VERIFY_NONE): the chain and the
// host name are checked all the same, and `peerVerified` reports the result once the handshake is
// done, so the caller decides: opportunistic delivery goes on, `verify` delivery gives up.

import COpenSSL
#if canImport(Glibc)
import Glibc
#endif

/// Called first thing in the process: OpenSSL is not to clean itself up in an atexit handler. At exit
/// libuv's own shutdown waits for its thread pool, and a pool thread may be in the middle of OpenSSL
/// work (an scrypt hash, a TLS context being loaded); with OpenSSL's locks already freed by its
/// atexit cleanup that thread crashed (SIGSEGV at every stop during such work). The kernel frees the
/// memory anyway.
public func keepOpenSSLUntilExit() {
    _ = OPENSSL_init_crypto(UInt64(OPENSSL_INIT_NO_ATEXIT), nil)
}

/// "192.0.2.1" or "2001:db8::1" (not a host name).
func isNumericIP(_ text: String) -> Bool {
    var storage = in6_addr()
    return inet_pton(AF_INET, text, &storage) == 1 || inet_pton(AF_INET6, text, &storage) == 1
}

public struct TLSError: Error, CustomStringConvertible, Sendable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }

    /// The message of OpenSSL's error queue (emptied), after `what`.
    static func fromQueue(_ what: String) -> TLSError {
        var reasons: [String] = []
        while true {
            let code = ERR_get_error()
            if code == 0 { break }
            var buffer = [CChar](repeating: 0, count: 256)
            ERR_error_string_n(code, &buffer, buffer.count)
            reasons.append(String(cString: buffer))
        }
        return TLSError(reasons.isEmpty ? what : "\(what): \(reasons.joined(separator: "; "))")
    }
}

/// A server context's file or setting that failed, so that a config error can name its key.
public struct TLSFileError: Error, CustomStringConvertible, Sendable {
    public enum Part: Sendable { case certificate, key, ciphers }
    public let file: Part
    public let error: TLSError
    public init(file: Part, _ error: TLSError) {
        self.file = file
        self.error = error
    }
    public var description: String { error.message }
}

/// Shared settings and, for a server, the certificate and key. Immutable once made, so a reload
/// makes a new one and connections already open keep theirs.
// @unchecked: the SSL_CTX is only configured in init; afterwards OpenSSL's own locks guard its use.
public final class TLSContext: @unchecked Sendable {
    let raw: OpaquePointer
    public let isServer: Bool

    private init(server: Bool) throws {
        guard let ctx = SSL_CTX_new(TLS_method()) else { throw TLSError.fromQueue("SSL_CTX_new") }
        raw = ctx
        isServer = server
        _ = tern_SSL_CTX_set_min_proto_version(ctx, tern_TLS1_2_VERSION())
        _ = tern_SSL_CTX_set_options(ctx, tern_SSL_OP_NO_COMPRESSION() | tern_SSL_OP_NO_RENEGOTIATION()
                                       | (server ? tern_SSL_OP_CIPHER_SERVER_PREFERENCE() : 0))
        // Idle connections should not hold 2 x 16 KiB of record buffers.
        _ = tern_SSL_CTX_set_mode(ctx, tern_SSL_MODE_RELEASE_BUFFERS() | tern_SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER())
    }

    deinit { SSL_CTX_free(raw) }

    /// True when OpenSSL's cipher list `ciphers` selects at least one TLS 1.2 cipher (unknown words
    /// in it are ignored by OpenSSL, as in every program that takes such a list).
    public static func isValidCipherList(_ ciphers: String) -> Bool {
        guard !ciphers.isEmpty, !ciphers.utf8.contains(0), let ctx = SSL_CTX_new(TLS_method()) else { return false }
        defer { SSL_CTX_free(ctx) }
        ERR_clear_error()
        let ok = SSL_CTX_set_cipher_list(ctx, ciphers) == 1
        ERR_clear_error()
        return ok
    }

    /// A server context with a PEM certificate chain and its private key. Errors name the file.
    /// `ciphers`: an OpenSSL cipher list for TLS 1.2 (TLS 1.3's suites are all AEAD and stay as they are).
    public static func server(certificatePath: String, keyPath: String, ciphers: String? = nil) throws -> TLSContext {
        let context = try TLSContext(server: true)
        ERR_clear_error()
        guard SSL_CTX_use_certificate_chain_file(context.raw, certificatePath) == 1 else {
            throw TLSFileError(file: .certificate, TLSError.fromQueue("cannot load certificate \(certificatePath)"))
        }
        guard SSL_CTX_use_PrivateKey_file(context.raw, keyPath, SSL_FILETYPE_PEM) == 1 else {
            throw TLSFileError(file: .key, TLSError.fromQueue("cannot load key \(keyPath)"))
        }
        guard SSL_CTX_check_private_key(context.raw) == 1 else {
            throw TLSFileError(file: .key, TLSError.fromQueue("key \(keyPath) does not match certificate \(certificatePath)"))
        }
        if let ciphers {
            guard SSL_CTX_set_cipher_list(context.raw, ciphers) == 1 else {
                throw TLSFileError(file: .ciphers, TLSError.fromQueue("no cipher matches \"\(ciphers)\""))
            }
        }
        // The chain is the file's, as loaded. Without this, a file holding only the leaf makes
        // OpenSSL try to build the chain from the context's (empty) CA store on every handshake,
        // and send the leaf alone all the same.
        _ = tern_SSL_CTX_set_mode(context.raw, tern_SSL_MODE_NO_AUTO_CHAIN())
        // One TLS 1.3 session ticket per full handshake, as Postfix's smtpd sends (OpenSSL sends two
        // by default, for browsers that open connections in parallel): each costs the server about
        // 20 µs to make and the client to take. A client that presents it resumes.
        _ = SSL_CTX_set_num_tickets(context.raw, 1)
        return context
    }

    /// A client context that checks peers against the system CA store (or `caFile`: tests).
    /// SSL_CERT_FILE / SSL_CERT_DIR in the environment override the system store, as for openssl(1).
    /// Making one reads the whole CA bundle (tens of milliseconds): make it once, off the loop.
    public static func client(caFile: String? = nil) throws -> TLSContext {
        if let caFile {
            let context = try TLSContext(server: false)
            guard SSL_CTX_load_verify_locations(context.raw, caFile, nil) == 1 else {
                throw TLSError.fromQueue("cannot load CA file \(caFile)")
            }
            SSL_CTX_set_verify(context.raw, SSL_VERIFY_NONE, nil)
            return context
        }
        return try client(bundle: defaultCABundle, directory: defaultCADirectory)
    }

    /// The CA bundle OpenSSL trusts by default: $SSL_CERT_FILE, else the built-in path
    /// (/usr/lib/ssl/cert.pem on Debian, the system's ca-certificates.crt).
    public static var defaultCABundle: String {
        environment(X509_get_default_cert_file_env()) ?? String(cString: X509_get_default_cert_file())
    }

    /// The hashed CA directory (or directories, colon-separated) OpenSSL trusts by default:
    /// $SSL_CERT_DIR, else the built-in path (/usr/lib/ssl/certs on Debian).
    public static var defaultCADirectory: String {
        environment(X509_get_default_cert_dir_env()) ?? String(cString: X509_get_default_cert_dir())
    }

    private static func environment(_ name: UnsafePointer<CChar>) -> String? {
        getenv(name).map { String(cString: $0) }
    }

    /// A client context trusting the certificates of a PEM `bundle` and of a hashed `directory`
    /// (`openssl rehash`), as SSL_CTX_set_default_verify_paths does with the default ones, less its
    /// third lookup: OpenSSL 3 adds a "store" lookup of the same directory, which opens and lists
    /// the directory at every issuer lookup, so on every handshake with a certificate whose issuer
    /// is not in the bundle, a self-signed one for instance (measured: 2 openat, 4 getdents64 and
    /// 4 stat per handshake, about 0.2 ms of CPU). The hashed-directory lookup finds the same
    /// certificates by name: one stat per issuer looked up.
    /// The bundle is read into memory here, once; a missing bundle or directory trusts nothing
    /// from it, as with the default paths.
    static func client(bundle: String?, directory: String?) throws -> TLSContext {
        let context = try TLSContext(server: false)
        guard let store = SSL_CTX_get_cert_store(context.raw) else { throw TLSError.fromQueue("no CA store") }
        if let bundle, let lookup = X509_STORE_add_lookup(store, X509_LOOKUP_file()) {
            _ = tern_X509_LOOKUP_load_file(lookup, bundle)
        }
        if let directory, let lookup = X509_STORE_add_lookup(store, X509_LOOKUP_hash_dir()) {
            _ = tern_X509_LOOKUP_add_dir(lookup, directory)
        }
        ERR_clear_error()  // a missing file is not an error here, as with the default paths
        SSL_CTX_set_verify(context.raw, SSL_VERIFY_NONE, nil)
        return context
    }

    /// A client context that trusts no CA store at all: for a load generator, which checks nothing.
    /// OpenSSL still builds the peer's chain under SSL_VERIFY_NONE, and with the default paths that
    /// reads the system certificate directory on every handshake (several getdents64 and failed
    /// stats each); with an empty store the chain build ends at once.
    /// Nor is the chain built at all: the peer's certificate is parsed and its key checks the
    /// handshake's signature, but the chain check, whose result the caller would ignore, is not
    /// made (`peerVerified` is false, `verifyError` "application verification failure").
    public static func unverifiedClient() throws -> TLSContext {
        let context = try TLSContext(server: false)
        SSL_CTX_set_verify(context.raw, SSL_VERIFY_NONE, nil)
        SSL_CTX_set_cert_verify_callback(context.raw, { store, _ in
            X509_STORE_CTX_set_error(store, X509_V_ERR_APPLICATION_VERIFICATION)
            return 0  // not verified; under SSL_VERIFY_NONE the handshake goes on
        }, nil)
        return context
    }

    /// For a load generator's process (tern blast), once, before its first handshake: certificates'
    /// EC public keys are decoded by OpenSSL's built-in EC code instead of its provider decoders,
    /// whose set-up alone costs OpenSSL 3.0 about 110 µs per certificate parsed (more than the
    /// signature check; measured with bench/tls). Same checks of the point and of the signature.
    /// Process-wide and for good, and for every operation on EC keys (P-256/P-384 key exchange and
    /// ECDSA too): never in `tern serve`, nor in the test process but in a child of its own. False
    /// where OpenSSL has no engines.
    @discardableResult
    public static func decodeECKeysWithBuiltInCode() -> Bool {
        legacyECDecoding
    }

    private static let legacyECDecoding: Bool = tern_use_legacy_ec_key_decoding() == 1
}

public final class TLSEngine {
    public let context: TLSContext
    let ssl: OpaquePointer
    /// Ciphertext from the peer, read by OpenSSL.
    private let inbound: OpaquePointer
    /// Ciphertext for the peer, written by OpenSSL.
    private let outbound: OpaquePointer
    /// Plaintext handed to `send` before the handshake finished (or that OpenSSL could not take yet).
    private var pendingPlaintext: [UInt8] = []
    public private(set) var handshakeComplete = false
    /// The peer sent close_notify.
    public private(set) var peerClosed = false
    private var failed: TLSError?

    /// `serverName` (client only) goes into SNI and is the name the certificate must match.
    public init(context: TLSContext, serverName: String? = nil) throws {
        guard let ssl = SSL_new(context.raw) else { throw TLSError.fromQueue("SSL_new") }
        guard let rbio = BIO_new(BIO_s_mem()), let wbio = BIO_new(BIO_s_mem()) else {
            SSL_free(ssl)
            throw TLSError.fromQueue("BIO_new")
        }
        // An empty read BIO means "more data needed", not end of file.
        _ = tern_BIO_set_mem_eof_return(rbio, -1)
        _ = tern_BIO_set_mem_eof_return(wbio, -1)
        SSL_set_bio(ssl, rbio, wbio)  // ssl owns both from here
        self.context = context
        self.ssl = ssl
        inbound = rbio
        outbound = wbio
        if context.isServer {
            SSL_set_accept_state(ssl)
        } else {
            SSL_set_connect_state(ssl)
            if let serverName, !serverName.isEmpty {
                if isNumericIP(serverName) {
                    // An address: no SNI (RFC 6066 §3); the certificate must name it as an IP SAN.
                    _ = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), serverName)
                } else {
                    _ = tern_SSL_set_tlsext_host_name(ssl, serverName)
                    _ = SSL_set1_host(ssl, serverName)
                }
            }
        }
    }

    deinit { SSL_free(ssl) }

    /// Tests: offers the session (the ticket) of an earlier engine on the same context in this
    /// one's ClientHello. Call before `start`. False if that engine has no session.
    func resume(from other: TLSEngine) -> Bool {
        guard let session = SSL_get1_session(other.ssl) else { return false }
        defer { SSL_SESSION_free(session) }
        return SSL_set_session(ssl, session) == 1
    }

    /// Client: produces the ClientHello (then `takeOutput`). Server: nothing to do until bytes come.
    public func start() throws {
        try advanceHandshake()
    }

    /// Ciphertext from the peer. Returns the plaintext it carried (possibly none). Throws on a
    /// protocol error or failed handshake; after a throw the engine is finished.
    public func receive(_ ciphertext: UnsafeRawBufferPointer) throws -> [UInt8] {
        if let failed { throw failed }
        var offset = 0
        var plaintext: [UInt8] = []
        while offset < ciphertext.count {
            let n = BIO_write(inbound, ciphertext.baseAddress! + offset, Int32(min(ciphertext.count - offset, Int(Int32.max))))
            guard n > 0 else { throw fail(TLSError("BIO_write failed")) }
            offset += Int(n)
            if !handshakeComplete { try advanceHandshake() }
            if handshakeComplete { try readAvailable(into: &plaintext) }
        }
        return plaintext
    }

    public func receive(_ ciphertext: [UInt8]) throws -> [UInt8] {
        try ciphertext.withUnsafeBytes { try receive($0) }
    }

    /// Plaintext for the peer; sent now if the handshake is done, else as soon as it is.
    public func send(_ plaintext: UnsafeRawBufferPointer) throws {
        if let failed { throw failed }
        guard plaintext.count > 0 else { return }
        if !handshakeComplete || !pendingPlaintext.isEmpty {
            pendingPlaintext.append(contentsOf: plaintext)
            if handshakeComplete { try flushPlaintext() }
            return
        }
        var offset = 0
        while offset < plaintext.count {
            let n = SSL_write(ssl, plaintext.baseAddress! + offset, Int32(min(plaintext.count - offset, 1 << 30)))
            if n <= 0 { throw fail(error(n, "SSL_write")) }
            offset += Int(n)
        }
    }

    public func send(_ plaintext: [UInt8]) throws {
        try plaintext.withUnsafeBytes { try send($0) }
    }

    /// Ciphertext that OpenSSL produced since the last call, to write to the socket in order.
    public func takeOutput() -> [UInt8] {
        let pending = tern_BIO_pending(outbound)
        guard pending > 0 else { return [] }
        // Not zero-filled first: BIO_read overwrites it, and a message's worth of records is ~100 KiB.
        return [UInt8](unsafeUninitializedCapacity: pending) { buffer, count in
            count = Int(max(BIO_read(outbound, buffer.baseAddress, Int32(pending)), 0))
        }
    }

    public var hasOutput: Bool { tern_BIO_pending(outbound) > 0 }

    /// Bytes of ciphertext waiting for `takeOutput`.
    public var outputCount: Int { Int(tern_BIO_pending(outbound)) }

    /// Queues close_notify (then `takeOutput`). Best effort: never throws.
    public func shutdown() {
        guard handshakeComplete, failed == nil else { return }
        _ = SSL_shutdown(ssl)
        ERR_clear_error()
    }

    // MARK: What was negotiated

    /// "TLSv1.3", "TLSv1.2".
    public var version: String { String(cString: SSL_get_version(ssl)) }

    /// "TLS_AES_256_GCM_SHA384".
    public var cipher: String {
        guard let c = SSL_get_current_cipher(ssl) else { return "none" }
        return String(cString: SSL_CIPHER_get_name(c))
    }

    /// Secret bits of the cipher, as Postfix logs them ("256").
    public var cipherBits: Int {
        guard let c = SSL_get_current_cipher(ssl) else { return 0 }
        return Int(SSL_CIPHER_get_bits(c, nil))
    }

    /// The handshake resumed a session (a ticket the client had) instead of a full one.
    public var sessionReused: Bool { handshakeComplete && SSL_session_reused(ssl) == 1 }

    /// Client: the peer's chain checked out against the CA store and the name given at init.
    public var peerVerified: Bool {
        guard handshakeComplete, let cert = SSL_get1_peer_certificate(ssl) else { return false }
        X509_free(cert)
        return SSL_get_verify_result(ssl) == X509_V_OK
    }

    /// Why the peer's certificate was not verified, e.g. "self-signed certificate".
    public var verifyError: String? {
        guard handshakeComplete else { return "no handshake" }
        guard let cert = SSL_get1_peer_certificate(ssl) else { return "no certificate" }
        X509_free(cert)
        let result = SSL_get_verify_result(ssl)
        if result == X509_V_OK { return nil }
        return String(cString: X509_verify_cert_error_string(result))
    }

    /// "TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)", as Postfix writes it.
    public var summary: String {
        guard let c = SSL_get_current_cipher(ssl) else { return version }
        var algBits: Int32 = 0
        let bits = SSL_CIPHER_get_bits(c, &algBits)
        return "\(version) with cipher \(cipher) (\(bits)/\(algBits) bits)"
    }

    // MARK: Internals

    private func advanceHandshake() throws {
        let r = SSL_do_handshake(ssl)
        if r == 1 {
            handshakeComplete = true
            if !pendingPlaintext.isEmpty { try flushPlaintext() }
            return
        }
        let e = SSL_get_error(ssl, r)
        if e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE { return }
        throw fail(error(r, "TLS handshake failed"))
    }

    private func flushPlaintext() throws {
        let bytes = pendingPlaintext
        pendingPlaintext = []
        try bytes.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let n = SSL_write(ssl, raw.baseAddress! + offset, Int32(min(raw.count - offset, 1 << 30)))
                if n <= 0 { throw fail(error(n, "SSL_write")) }
                offset += Int(n)
            }
        }
    }

    private func readAvailable(into plaintext: inout [UInt8]) throws {
        // A TLS record holds at most 16 KiB of plaintext.
        try withUnsafeTemporaryAllocation(byteCount: 16 * 1024, alignment: 16) { buffer in
            while true {
                let n = SSL_read(ssl, buffer.baseAddress, Int32(buffer.count))
                if n > 0 {
                    plaintext.append(contentsOf: UnsafeRawBufferPointer(rebasing: buffer[0..<Int(n)]))
                    continue
                }
                let e = SSL_get_error(ssl, n)
                if e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE { return }
                if e == SSL_ERROR_ZERO_RETURN {
                    peerClosed = true
                    return
                }
                throw fail(error(n, "TLS read failed"))
            }
        }
    }

    private func error(_ result: Int32, _ what: String) -> TLSError {
        let e = SSL_get_error(ssl, result)
        if e == SSL_ERROR_SSL || e == SSL_ERROR_SYSCALL { return TLSError.fromQueue(what) }
        ERR_clear_error()
        return TLSError("\(what) (SSL error \(e))")
    }

    private func fail(_ error: TLSError) -> TLSError {
        failed = error
        return error
    }
}

extension TLSEngine {
    public enum ProtocolVersion { case tls11, tls12, tls13 }

    /// Caps the version this engine offers (tests: speaking TLS 1.2, or an old TLS 1.1 client).
    public func limitVersion(maximum: ProtocolVersion) {
        let v: Int32
        switch maximum {
        case .tls11: v = 0x0302
        case .tls12: v = 0x0303
        case .tls13: v = 0x0304
        }
        if maximum == .tls11 {
            _ = tern_SSL_set_min_proto_version(ssl, 0x0301)
            _ = SSL_set_cipher_list(ssl, "DEFAULT:@SECLEVEL=0")
        }
        _ = tern_SSL_set_max_proto_version(ssl, v)
    }
}
