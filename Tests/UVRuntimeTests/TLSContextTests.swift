// What the contexts put in force, per context rather than per handshake: the client's CA store
// (a bundle read once, a hashed directory), the server's chain as the file gives it, and one
// session ticket per full handshake that a client can resume with, while a client that keeps no
// session (tern blast) makes a full handshake every time.

import COpenSSL
import Foundation
import Testing
@testable import UVRuntime

/// A root CA, an intermediate it signed, a leaf for "chain.test" signed by the intermediate, and a
/// hashed directory holding the root as `openssl rehash` would.
final class ChainCertificates {
    let directory: String
    var root: String { directory + "/root.pem" }
    var leafOnly: String { directory + "/leaf.pem" }
    var leafAndIntermediate: String { directory + "/chain.pem" }
    var key: String { directory + "/leaf-key.pem" }
    var hashedDirectory: String { directory + "/hashed" }
    var emptyDirectory: String { directory + "/empty" }

    init() throws {
        directory = NSTemporaryDirectory() + "tern-chain-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: directory + "/hashed", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: directory + "/empty", withIntermediateDirectories: true)
        try TestCertificates.shell("""
            cd \(directory) && \
            openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=Tern-Root \
              -addext basicConstraints=critical,CA:true -keyout root-key.pem -out root.pem 2>/dev/null && \
            openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=Tern-Intermediate \
              -keyout int-key.pem -out int.csr 2>/dev/null && \
            printf 'basicConstraints=critical,CA:true\\n' > int.cnf && \
            openssl x509 -req -in int.csr -CA root.pem -CAkey root-key.pem -CAcreateserial -days 2 \
              -extfile int.cnf -out int.pem 2>/dev/null && \
            openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=chain.test \
              -keyout leaf-key.pem -out leaf.csr 2>/dev/null && \
            printf 'subjectAltName=DNS:chain.test\\n' > leaf.cnf && \
            openssl x509 -req -in leaf.csr -CA int.pem -CAkey int-key.pem -CAcreateserial -days 2 \
              -extfile leaf.cnf -out leaf.pem 2>/dev/null && \
            cat leaf.pem int.pem > chain.pem && \
            cp root.pem hashed/$(openssl x509 -hash -noout -in root.pem).0
            """)
    }

    deinit { try? FileManager.default.removeItem(atPath: directory) }
}

/// Session tickets the client side of a context received (TLS 1.3 NewSessionTicket), counted by
/// OpenSSL's new-session callback on a context of this test's own.
nonisolated(unsafe) private var ticketsSeen = 0

@Suite struct TLSContextTests {
    static let certs = try! ChainCertificates()

    func handshake(_ client: TLSContext, serverName: String = "chain.test",
                   serverFile: String? = nil) throws -> (client: TLSEngine, server: TLSEngine) {
        let server = try TLSEngine(context: .server(certificatePath: serverFile ?? Self.certs.leafAndIntermediate,
                                                    keyPath: Self.certs.key))
        let engine = try TLSEngine(context: client, serverName: serverName)
        try engine.start()
        try pump(engine, server)
        #expect(engine.handshakeComplete && server.handshakeComplete)
        return (engine, server)
    }

    // MARK: The client's CA store

    @Test func bundleAloneIsTrusted() throws {
        let context = try TLSContext.client(bundle: Self.certs.root, directory: nil)
        let (client, _) = try handshake(context)
        #expect(client.peerVerified, "\(client.verifyError ?? "")")
    }

    @Test func hashedDirectoryAloneIsTrusted() throws {
        // No bundle: the root is found by its subject hash in the directory, at handshake time.
        let context = try TLSContext.client(bundle: "/nonexistent/bundle.pem", directory: Self.certs.hashedDirectory)
        let (client, _) = try handshake(context)
        #expect(client.peerVerified, "\(client.verifyError ?? "")")
        // A list of directories, as SSL_CERT_DIR may give: the second one holds the root.
        let list = try TLSContext.client(bundle: nil, directory: Self.certs.emptyDirectory + ":" + Self.certs.hashedDirectory)
        #expect(try handshake(list).client.peerVerified)
    }

    @Test func nothingTrustedVerifiesNothing() throws {
        let context = try TLSContext.client(bundle: "/nonexistent/bundle.pem", directory: Self.certs.emptyDirectory)
        let (client, _) = try handshake(context)
        #expect(!client.peerVerified)
        #expect(client.verifyError?.contains("local issuer") == true, "\(client.verifyError ?? "")")
        // Trusted store, wrong name: not verified either.
        let trusted = try TLSContext.client(bundle: Self.certs.root, directory: nil)
        #expect(try !handshake(trusted, serverName: "other.test").client.peerVerified)
    }

    @Test func theSystemStoreDoesNotTrustATestRoot() throws {
        // The default store (SSL_CERT_FILE / SSL_CERT_DIR or the system's): the handshake works and
        // the test root is not in it.
        let (client, _) = try handshake(try TLSContext.client())
        #expect(!client.peerVerified)
        #expect(!TLSContext.defaultCABundle.isEmpty && !TLSContext.defaultCADirectory.isEmpty)
    }

    // MARK: The server's chain

    @Test func chainIsSentAsTheFileGivesIt() throws {
        let trusted = try TLSContext.client(bundle: Self.certs.root, directory: nil)
        // Leaf and intermediate in the file: a client that trusts only the root verifies.
        #expect(try handshake(trusted, serverFile: Self.certs.leafAndIntermediate).client.peerVerified)
        // The leaf alone: the intermediate is not made up from anywhere, so the same client cannot.
        let (client, _) = try handshake(trusted, serverFile: Self.certs.leafOnly)
        #expect(!client.peerVerified)
        #expect(client.verifyError?.contains("local issuer") == true, "\(client.verifyError ?? "")")
    }

    // MARK: Session tickets

    @Test func oneTicketPerFullHandshakeAndItResumes() throws {
        // A client context that keeps sessions and counts the tickets it is given.
        let counting = try TLSContext.unverifiedClient()
        _ = SSL_CTX_ctrl(counting.raw, SSL_CTRL_SET_SESS_CACHE_MODE, Int(SSL_SESS_CACHE_CLIENT), nil)
        SSL_CTX_sess_set_new_cb(counting.raw) { _, session in
            ticketsSeen += 1
            SSL_SESSION_free(session)
            return 1
        }
        let serverContext = try TLSContext.server(certificatePath: Self.certs.leafAndIntermediate, keyPath: Self.certs.key)
        let first = try TLSEngine(context: counting)
        let server = try TLSEngine(context: serverContext)
        try first.start()
        try first.send(Array("EHLO client.test\r\n".utf8))
        try server.send(Array("250 ok\r\n".utf8))
        let got = try pump(first, server)
        #expect(String(decoding: got.client, as: UTF8.self) == "250 ok\r\n")
        #expect(ticketsSeen == 1)
        #expect(!first.sessionReused && !server.sessionReused)

        // The ticket resumes: no certificate, no signature.
        let second = try TLSEngine(context: counting)
        #expect(second.resume(from: first))
        let server2 = try TLSEngine(context: serverContext)
        try second.start()
        try pump(second, server2)
        #expect(second.sessionReused && server2.sessionReused)

        // An engine given no session (what tern blast makes for every connection) makes a full
        // handshake, even on a context whose connections were given tickets.
        let third = try TLSEngine(context: counting)
        let server3 = try TLSEngine(context: serverContext)
        try third.start()
        try pump(third, server3)
        #expect(third.handshakeComplete && !third.sessionReused && !server3.sessionReused)
    }

    @Test func blastsContextNeverResumes() throws {
        let blast = try TLSContext.unverifiedClient()
        let serverContext = try TLSContext.server(certificatePath: Self.certs.leafAndIntermediate, keyPath: Self.certs.key)
        for _ in 0..<3 {
            let client = try TLSEngine(context: blast)
            let server = try TLSEngine(context: serverContext)
            try client.start()
            try client.send(Array("EHLO\r\n".utf8))
            try server.send(Array("250 ok\r\n".utf8))
            try pump(client, server)  // the ticket arrives; nothing keeps it
            #expect(client.handshakeComplete && !client.sessionReused && !server.sessionReused)
        }
    }
}
