// tern blast's client side of TLS (TLSContext.unverifiedClient and decodeECKeysWithBuiltInCode):
// what it leaves out (the chain check, which it would ignore) and what it still does (parse the
// server's certificate, check the point of its EC key, check signatures with it), and that a
// connection it opens can skip reading its addresses.

import COpenSSL
import Foundation
import Testing
@testable import UVRuntime

@Suite struct LoadClientTLSTests {
    static let certs = try! ChainCertificates()

    /// A full handshake of `client` with a server using the chain file (or `certificate`/`key`).
    static func handshake(_ client: TLSContext, certificate: String? = nil, key: String? = nil) throws -> TLSEngine {
        let server = try TLSEngine(context: .server(certificatePath: certificate ?? Self.certs.leafAndIntermediate,
                                                    keyPath: key ?? Self.certs.key))
        let engine = try TLSEngine(context: client, serverName: "chain.test")
        try engine.start()
        try engine.send(Array("EHLO blast.test\r\n".utf8))
        try server.send(Array("250 chain.test\r\n".utf8))
        let got = try pump(engine, server)
        try #require(String(decoding: got.client, as: UTF8.self) == "250 chain.test\r\n")
        try #require(engine.handshakeComplete && !engine.sessionReused && !server.sessionReused)
        return engine
    }

    static func peerKey(_ engine: TLSEngine) -> OpaquePointer? {
        guard let cert = SSL_get0_peer_certificate(engine.ssl) else { return nil }
        return X509_get0_pubkey(cert)
    }

    static func certificate(_ path: String) -> OpaquePointer? {
        guard let bio = BIO_new_file(path, "r") else { return nil }
        defer { BIO_free(bio) }
        return PEM_read_bio_X509(bio, nil, nil, nil)
    }

    // MARK: No chain check

    @Test func unverifiedClientChecksNoChainEvenWithATrustedRoot() throws {
        // A store that holds the root: a client that checks the chain verifies the server...
        let checking = try TLSContext.client(bundle: Self.certs.root, directory: nil)
        #expect(try Self.handshake(checking).peerVerified)
        // ...the load generator's context, given the same root, does not build the chain at all,
        // and says so instead of claiming a verified peer.
        let blast = try TLSContext.unverifiedClient()
        #expect(X509_STORE_load_file(SSL_CTX_get_cert_store(blast.raw), Self.certs.root) == 1)
        let engine = try Self.handshake(blast)
        #expect(!engine.peerVerified)
        #expect(engine.verifyError == "application verification failure", "\(engine.verifyError ?? "")")
    }

    // MARK: Built-in EC key decoding
    //
    // Registering the engine changes EC keys for the whole process, and every suite shares this one:
    // each of these tests runs in a child process of its own (an exit test).

    @Test func builtInECDecodingDecodesTheServersKeyAndChecksWithIt() async {
        await #expect(processExitsWith: .success) { try LoadClientTLSTests.decodesTheServersKeyAndChecksWithIt() }
    }

    @Test func builtInECDecodingRefusesAPointOffTheCurve() async {
        await #expect(processExitsWith: .success) { try LoadClientTLSTests.refusesAPointOffTheCurve() }
    }

    @Test func otherKeysAreDecodedAsBefore() async {
        await #expect(processExitsWith: .success) { try LoadClientTLSTests.decodesOtherKeysAsBefore() }
    }

    // In a child process an expectation that fails must end it with a failure: #require throughout.
    static func decodesTheServersKeyAndChecksWithIt() throws {
        try #require(TLSContext.decodeECKeysWithBuiltInCode())  // Debian's OpenSSL 3 has engines
        let engine = try handshake(try TLSContext.unverifiedClient())
        let key = try #require(peerKey(engine))
        // Decoded by the built-in EC code: a key no provider holds (a provider-decoded one names its
        // provider), and the same key as in the server's certificate.
        try #require(EVP_PKEY_get0_provider(key) == nil)
        try #require(String(cString: EVP_PKEY_get0_type_name(key)) == "EC")
        let leaf = try #require(Self.certificate(Self.certs.leafOnly))
        defer { X509_free(leaf) }
        try #require(EVP_PKEY_eq(key, X509_get0_pubkey(leaf)) == 1)

        // It checks signatures: one the server's private key made over these bytes, not others.
        let keyBIO = try #require(BIO_new_file(Self.certs.key, "r"))
        let privateKey = try #require(PEM_read_bio_PrivateKey(keyBIO, nil, nil, nil))
        BIO_free(keyBIO)
        defer { EVP_PKEY_free(privateKey) }
        let message = Array("TLS 1.3, server CertificateVerify".utf8)
        var signature = [UInt8](repeating: 0, count: 128)
        var length = signature.count
        let signing = EVP_MD_CTX_new()
        defer { EVP_MD_CTX_free(signing) }
        try #require(EVP_DigestSignInit(signing, nil, EVP_sha256(), nil, privateKey) == 1)
        try #require(EVP_DigestSign(signing, &signature, &length, message, message.count) == 1)
        func verifies(_ data: [UInt8]) -> Bool {
            let verifying = EVP_MD_CTX_new()
            defer { EVP_MD_CTX_free(verifying) }
            guard EVP_DigestVerifyInit(verifying, nil, EVP_sha256(), nil, key) == 1 else { return false }
            return EVP_DigestVerify(verifying, signature, length, data, data.count) == 1
        }
        try #require(verifies(message))
        try #require(!verifies(Array("TLS 1.3, server CertificateVerify!".utf8)))
        ERR_clear_error()
    }

    static func refusesAPointOffTheCurve() throws {
        try #require(TLSContext.decodeECKeysWithBuiltInCode())
        let leaf = try #require(Self.certificate(Self.certs.leafOnly))
        defer { X509_free(leaf) }
        var der: UnsafeMutablePointer<UInt8>?
        let count = Int(i2d_X509(leaf, &der))
        let bytes = Array(UnsafeBufferPointer(start: try #require(der), count: count))
        CRYPTO_free(der, #fileID, #line)
        func parsedKey(_ bytes: [UInt8]) -> Bool {
            bytes.withUnsafeBufferPointer { buffer in
                var p: UnsafePointer<UInt8>? = buffer.baseAddress
                guard let cert = d2i_X509(nil, &p, buffer.count) else { return false }
                defer { X509_free(cert) }
                return X509_get0_pubkey(cert) != nil
            }
        }
        try #require(parsedKey(bytes))
        // The key is a BIT STRING of 66 bytes: no unused bits, 04 (uncompressed), x, y.
        let start = try #require((0..<(bytes.count - 4)).first { bytes[$0..<($0 + 4)] == [0x03, 0x42, 0x00, 0x04] })
        var bad = bytes
        bad[start + 4 + 10] ^= 0x01  // a bit of x: (x, y) is no longer on P-256
        try #require(!parsedKey(bad))
        ERR_clear_error()
    }

    static func decodesOtherKeysAsBefore() throws {
        try #require(TLSContext.decodeECKeysWithBuiltInCode())
        let d = Self.certs.directory
        try TestCertificates.shell("""
            cd \(d) && openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=chain.test \
              -addext subjectAltName=DNS:chain.test -keyout rsa-key.pem -out rsa.pem 2>/dev/null
            """)
        let engine = try handshake(try TLSContext.unverifiedClient(), certificate: d + "/rsa.pem", key: d + "/rsa-key.pem")
        let key = try #require(peerKey(engine))
        try #require(String(cString: EVP_PKEY_get0_type_name(key)) == "RSA")
        try #require(EVP_PKEY_get0_provider(key) != nil)  // the provider decoders, as everywhere else
    }

    // MARK: Connections without their addresses

    @Test func aConnectionCanSkipReadingItsAddresses() throws {
        let loop = try EventLoop()
        defer { loop.close() }
        let listener = try StreamListener(loop: loop, address: SocketAddress(parsing: "127.0.0.1:0"))
        var served: [TCPConnection] = []
        try listener.start { connection in
            served.append(connection)
            connection.onRead = { [unowned connection] bytes in connection.write(bytes) }
            connection.startReading()
        }
        var plain: Result<TCPConnection, UVError>?
        var bare: Result<TCPConnection, UVError>?
        TCPConnection.connect(loop: loop, to: listener.localAddress) { plain = $0 }
        TCPConnection.connect(loop: loop, to: listener.localAddress, readAddresses: false) { bare = $0 }
        #expect(run(loop) { plain != nil && bare != nil })
        let withAddresses = try #require(try plain?.get())
        let without = try #require(try bare?.get())
        #expect(withAddresses.peerAddress == listener.localAddress)
        #expect(withAddresses.localAddress?.ip == "127.0.0.1")
        #expect(without.peerAddress == nil && without.localAddress == nil)
        // And it works as any other.
        var echoed: [UInt8] = []
        without.onRead = { echoed += Array($0) }
        without.startReading()
        without.write(Array("QUIT\r\n".utf8))
        #expect(run(loop) { echoed.count == 6 })
        #expect(echoed == Array("QUIT\r\n".utf8))
        for c in [withAddresses, without] + served { c.close() }
        listener.close()
        run(loop, forMilliseconds: 10)
    }
}
