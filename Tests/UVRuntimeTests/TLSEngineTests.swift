// The TLS engine with no sockets: a client engine and a server engine exchange bytes in memory.
// Certificates are made by the openssl command for each run.

import Foundation
import Testing
@testable import UVRuntime

/// A CA, a server certificate for "mx.test" signed by it, and a self-signed one, in a fresh directory.
final class TestCertificates {
    let directory: String
    var caCert: String { directory + "/ca.pem" }
    var cert: String { directory + "/cert.pem" }
    var key: String { directory + "/key.pem" }
    var selfSignedCert: String { directory + "/self.pem" }
    var selfSignedKey: String { directory + "/self-key.pem" }

    init() throws {
        directory = NSTemporaryDirectory() + "tern-tls-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let d = directory
        try Self.shell("""
            cd \(d) && \
            openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=Tern-Test-CA \
              -keyout ca-key.pem -out ca.pem 2>/dev/null && \
            openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=mx.test \
              -keyout key.pem -out req.pem 2>/dev/null && \
            printf 'subjectAltName=DNS:mx.test,IP:127.0.0.1\\n' > ext.cnf && \
            openssl x509 -req -in req.pem -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 2 \
              -extfile ext.cnf -out cert.pem 2>/dev/null && \
            openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=mx.test \
              -addext subjectAltName=DNS:mx.test -keyout self-key.pem -out self.pem 2>/dev/null
            """)
    }

    deinit { try? FileManager.default.removeItem(atPath: directory) }

    static func shell(_ command: String) throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/sh")
        p.arguments = ["-c", command]
        try p.run()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else { throw TLSError("command failed: \(command)") }
    }
}

/// Moves bytes between the two engines until neither has anything to say. Returns the plaintext
/// each side received.
@discardableResult
func pump(_ client: TLSEngine, _ server: TLSEngine, chunk: Int = .max) throws -> (client: [UInt8], server: [UInt8]) {
    var toClient: [UInt8] = []
    var toServer: [UInt8] = []
    for _ in 0..<1000 {
        let c = client.takeOutput()
        let s = server.takeOutput()
        if c.isEmpty && s.isEmpty { break }
        var i = 0
        while i < c.count {
            toServer += try server.receive(Array(c[i..<min(c.count, i + chunk)]))
            i += chunk == .max ? c.count : chunk
        }
        i = 0
        while i < s.count {
            toClient += try client.receive(Array(s[i..<min(s.count, i + chunk)]))
            i += chunk == .max ? s.count : chunk
        }
    }
    return (toClient, toServer)
}

@Suite struct TLSEngineTests {
    static let certs = try! TestCertificates()

    func serverContext(selfSigned: Bool = false) throws -> TLSContext {
        let c = Self.certs
        return selfSigned ? try .server(certificatePath: c.selfSignedCert, keyPath: c.selfSignedKey)
                          : try .server(certificatePath: c.cert, keyPath: c.key)
    }

    @Test(arguments: [Int.max, 1, 7, 1000])
    func handshakeAndDataBothWays(chunk: Int) throws {
        let server = try TLSEngine(context: serverContext())
        let client = try TLSEngine(context: .client(caFile: Self.certs.caCert), serverName: "mx.test")
        try client.start()
        try client.send(Array("EHLO client.test\r\n".utf8))  // before the handshake: held until it is done
        let first = try pump(client, server, chunk: chunk)
        #expect(client.handshakeComplete && server.handshakeComplete)
        #expect(String(decoding: first.server, as: UTF8.self) == "EHLO client.test\r\n")
        #expect(client.version == "TLSv1.3" && server.version == "TLSv1.3")
        #expect(client.cipher == server.cipher)
        #expect(server.summary.hasPrefix("TLSv1.3 with cipher TLS_"))
        #expect(client.peerVerified)

        let big = pattern(count: 300_000)
        try server.send(big)
        let second = try pump(client, server, chunk: chunk)
        #expect(firstDifference(second.client, big) == nil)
    }

    @Test func selfSignedIsNotVerifiedButWorks() throws {
        let server = try TLSEngine(context: serverContext(selfSigned: true))
        let client = try TLSEngine(context: .client(caFile: Self.certs.caCert), serverName: "mx.test")
        try client.start()
        try pump(client, server)
        #expect(client.handshakeComplete)
        #expect(!client.peerVerified)
        #expect(client.verifyError?.contains("self-signed") == true)
    }

    @Test func wrongNameIsNotVerified() throws {
        let server = try TLSEngine(context: serverContext())
        let client = try TLSEngine(context: .client(caFile: Self.certs.caCert), serverName: "other.test")
        try client.start()
        try pump(client, server)
        #expect(client.handshakeComplete)
        #expect(!client.peerVerified)
    }

    @Test(arguments: [("127.0.0.1", true), ("127.0.0.2", false), ("::1", false)])
    func addressLiteralIsCheckedAgainstIPSubjectAltNames(address: String, verified: Bool) throws {
        // The CA-signed certificate names DNS:mx.test and IP:127.0.0.1.
        let server = try TLSEngine(context: serverContext())
        let client = try TLSEngine(context: .client(caFile: Self.certs.caCert), serverName: address)
        try client.start()
        try pump(client, server)
        #expect(client.handshakeComplete)
        #expect(client.peerVerified == verified)
        #expect(isNumericIP(address) && !isNumericIP("mx.test") && !isNumericIP("1.2.3"))
    }

    @Test func tls12IsAcceptedAndOlderIsNot() throws {
        // TLS 1.2 client.
        let server = try TLSEngine(context: serverContext())
        let client = try TLSEngine(context: .client(caFile: Self.certs.caCert), serverName: "mx.test")
        client.limitVersion(maximum: .tls12)
        try client.start()
        try pump(client, server)
        #expect(server.version == "TLSv1.2")
        #expect(server.handshakeComplete)

        // A TLS 1.1 client gets a handshake failure, not a session.
        let server2 = try TLSEngine(context: serverContext())
        let old = try TLSEngine(context: .client(caFile: Self.certs.caCert), serverName: "mx.test")
        old.limitVersion(maximum: .tls11)
        try old.start()
        #expect(throws: TLSError.self) { try pump(old, server2) }
        #expect(!server2.handshakeComplete)
    }

    @Test func garbageFailsTheHandshake() throws {
        let server = try TLSEngine(context: serverContext())
        #expect(throws: TLSError.self) { _ = try server.receive(Array("EHLO plain.text\r\n".utf8)) }
        // Once failed, it stays failed.
        #expect(throws: TLSError.self) { _ = try server.receive([22, 3, 1]) }
    }

    @Test func closeNotifyIsSeen() throws {
        let server = try TLSEngine(context: serverContext())
        let client = try TLSEngine(context: .client(caFile: Self.certs.caCert), serverName: "mx.test")
        try client.start()
        try pump(client, server)
        client.shutdown()
        try pump(client, server)
        #expect(server.peerClosed)
    }

    @Test func badCertificatePathsAreNamed() throws {
        #expect { try TLSContext.server(certificatePath: "/nonexistent/cert.pem", keyPath: Self.certs.key) }
            throws: { ($0 as? TLSFileError).map { $0.file == .certificate && $0.description.contains("/nonexistent/cert.pem") } == true }
        // A key that belongs to another certificate.
        #expect { try TLSContext.server(certificatePath: Self.certs.cert, keyPath: Self.certs.selfSignedKey) }
            throws: { ($0 as? TLSFileError).map { $0.file == .key && $0.description.contains("mismatch") } == true }
        // A cipher list that selects nothing.
        #expect { try TLSContext.server(certificatePath: Self.certs.cert, keyPath: Self.certs.key, ciphers: "NOPE") }
            throws: { ($0 as? TLSFileError)?.file == .ciphers }
        #expect(TLSContext.isValidCipherList("ECDHE+AESGCM") && !TLSContext.isValidCipherList("NOPE"))
    }

    @Test func passwordHashes() throws {
        let h = try PasswordHash.make("s3cret pass", logN: 10)
        #expect(h.hasPrefix("$scrypt$ln=10,r=8,p=1$"))
        #expect(PasswordHash.verify("s3cret pass", against: h))
        #expect(!PasswordHash.verify("s3cret pasS", against: h))
        #expect(!PasswordHash.verify("", against: h))
        // Same password, new salt, different hash.
        #expect(try PasswordHash.make("s3cret pass", logN: 10) != h)
        #expect(!PasswordHash.verify("x", against: "$scrypt$ln=99,r=8,p=1$00$00"))
        #expect(!PasswordHash.isWellFormed("plain"))
        #expect(PasswordHash.isWellFormed(h))
    }
}
