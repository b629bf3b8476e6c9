// SHA-256 and the signing keys, checked against the openssl command: it makes the key files (each
// PEM form), verifies the signatures, and exports the public keys that publicKeyForDNS must match.

import Foundation
import Testing
@testable import UVRuntime

private func hex(_ bytes: [UInt8]) -> String { bytes.map { String(format: "%02x", $0) }.joined() }

/// A fresh directory with key files made by openssl for each test.
private final class KeyFiles {
    let directory: String
    init() throws {
        directory = NSTemporaryDirectory() + "tern-keys-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }
    deinit { try? FileManager.default.removeItem(atPath: directory) }
    func path(_ name: String) -> String { directory + "/" + name }
    func shell(_ command: String) throws { try TestCertificates.shell("cd \(directory) && \(command)") }
    func read(_ name: String) throws -> [UInt8] { Array(try Data(contentsOf: URL(fileURLWithPath: path(name)))) }
    func write(_ name: String, _ bytes: [UInt8]) throws { try Data(bytes).write(to: URL(fileURLWithPath: path(name))) }
}

@Suite struct SHA256Tests {
    @Test func knownVectors() {
        #expect(hex(SHA256.hash([])) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        #expect(hex(SHA256.hash(Array("abc".utf8))) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    }

    @Test func piecesGiveTheSameDigestAsTheWhole() {
        let data = (0..<1000).map { UInt8(truncatingIfNeeded: $0 &* 37) }
        let whole = SHA256.hash(data)
        for size in [1, 7, 64, 333] {
            let h = SHA256()
            var i = 0
            while i < data.count {
                h.update(Array(data[i..<min(data.count, i + size)]))
                i += size
            }
            #expect(h.finish() == whole)
        }
    }
}

@Suite struct SigningKeyTests {
    @Test func loadsEveryPEMFormAndSignaturesVerifyWithOpenSSL() throws {
        let files = try KeyFiles()
        try files.shell("""
            openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out rsa-pkcs8.pem 2>/dev/null && \
            openssl rsa -in rsa-pkcs8.pem -traditional -out rsa-traditional.pem 2>/dev/null && \
            openssl genpkey -algorithm ED25519 -out ed25519.pem 2>/dev/null && \
            printf 'data to sign\\r\\n' > data.bin
            """)
        #expect(try files.read("rsa-traditional.pem").starts(with: Array("-----BEGIN RSA PRIVATE KEY".utf8)))
        let data = try files.read("data.bin")
        for name in ["rsa-pkcs8.pem", "rsa-traditional.pem"] {
            let key = try SigningKey.load(path: files.path(name))
            #expect(key.kind == .rsa(bits: 2048))
            try files.write("sig-\(name).bin", try key.signSHA256(data))
            try files.shell("openssl pkey -in \(name) -pubout -out pub-\(name) && "
                            + "openssl dgst -sha256 -verify pub-\(name) -signature sig-\(name).bin data.bin >/dev/null")
            // p= of RSA is the DER SubjectPublicKeyInfo.
            try files.shell("openssl pkey -in \(name) -pubout -outform DER -out pub-\(name).der")
            #expect(try key.publicKeyForDNS() == files.read("pub-\(name).der"))
        }
        let ed = try SigningKey.load(path: files.path("ed25519.pem"))
        #expect(ed.kind == .ed25519)
        let signature = try ed.signSHA256(data)
        #expect(signature.count == 64)
        try files.write("sig-ed.bin", signature)
        try files.write("hash.bin", SHA256.hash(data))
        // RFC 8463: Ed25519 signs the SHA-256 of the data, so openssl verifies it over hash.bin.
        try files.shell("openssl pkey -in ed25519.pem -pubout -out pub-ed.pem && "
                        + "openssl pkeyutl -verify -pubin -inkey pub-ed.pem -rawin -in hash.bin -sigfile sig-ed.bin >/dev/null")
        // p= of Ed25519 is the raw key: the last 32 bytes of its 44-byte SubjectPublicKeyInfo.
        try files.shell("openssl pkey -in ed25519.pem -pubout -outform DER -out pub-ed.der")
        let der = try files.read("pub-ed.der")
        #expect(try ed.publicKeyForDNS() == Array(der.suffix(32)))
        // A signature over other data does not verify: the checks above can fail.
        try files.write("sig-ed.bin", try ed.signSHA256(data + [0x21]))
        #expect(throws: (any Error).self) {
            try files.shell("openssl pkeyutl -verify -pubin -inkey pub-ed.pem -rawin -in hash.bin -sigfile sig-ed.bin >/dev/null 2>&1")
        }
    }

    @Test func generatedKeysRoundTripThroughPKCS8Files() throws {
        let files = try KeyFiles()
        for kind in [SigningKey.Kind.rsa(bits: 2048), .ed25519] {
            let path = files.path("new-\(kind == .ed25519 ? "ed" : "rsa").pem")
            let key = try SigningKey.generate(kind, path: path)
            try key.write(to: path)
            let mode = try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int
            #expect(mode == 0o600)
            #expect(String(decoding: try files.read(URL(fileURLWithPath: path).lastPathComponent), as: UTF8.self)
                        .hasPrefix("-----BEGIN PRIVATE KEY-----"))
            let loaded = try SigningKey.load(path: path)
            #expect(loaded.kind == kind)
            #expect(try loaded.publicKeyForDNS() == key.publicKeyForDNS())
            // An existing file is never overwritten.
            let error = #expect(throws: KeyFileError.self) { try key.write(to: path) }
            #expect(error?.path == path)
            #expect(try loaded.publicKeyForDNS() == SigningKey.load(path: path).publicKeyForDNS())
        }
    }

    @Test func badKeyFilesAreErrorsNamingTheFile() throws {
        let files = try KeyFiles()
        try files.shell("""
            openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ec.pem 2>/dev/null && \
            openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -aes128 -pass pass:secret -out encrypted.pem 2>/dev/null && \
            openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:512 -out small.pem 2>/dev/null && \
            printf 'not a key\\n' > garbage.pem && : > empty.pem
            """)
        for (name, reason) in [("ec.pem", "neither an RSA nor an Ed25519 key"), ("encrypted.pem", "encrypted"),
                               ("small.pem", "512 bits"), ("garbage.pem", "not a PEM private key"),
                               ("empty.pem", "not a PEM private key"), ("missing.pem", "No such file")] {
            let path = files.path(name)
            let error = #expect(throws: KeyFileError.self) { try SigningKey.load(path: path) }
            #expect(error?.path == path)
            #expect(error?.description.contains(reason) == true, "\(String(describing: error))")
        }
    }
}
