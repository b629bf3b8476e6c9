import Testing
@testable import Relay

#if canImport(Glibc)
import Glibc
#endif

/// Relative paths resolve from the config file's directory (issue 13), the spool's parent rule, and
/// the TLS cipher policy keys.
@Suite struct ConfigPathsTests {
    static let text = """
        hostname = "relay.test"
        [spool]
        path = "./spool"
        [tls]
        certificate = "tls/cert.pem"
        key = "/etc/tern/key.pem"
        [auth]
        users_file = "users"
        """

    @Test func relativePathsAreFromTheConfigsDirectory() throws {
        let c = try TernConfig.parse(Self.text, baseDirectory: "/srv/chain")
        #expect(c.spool.path == "/srv/chain/spool")
        #expect(c.tls.certificate == "/srv/chain/tls/cert.pem")
        #expect(c.tls.key == "/etc/tern/key.pem")
        #expect(c.auth.usersFile == "/srv/chain/users")
    }

    @Test func withoutAFileTheyStayRelativeToTheWorkingDirectory() throws {
        let c = try TernConfig.parse(Self.text)
        #expect(c.spool.path == "./spool")
        #expect(c.tls.certificate == "tls/cert.pem")
        #expect(try TernConfig.embeddedDefault.spool.path == "var/spool")
    }

    @Test func directoryOfAConfigPath() {
        #expect(TernConfig.directory(of: "/etc/tern/tern.toml") == "/etc/tern")
        #expect(TernConfig.directory(of: "/tern.toml") == "/")
        let cwd = TernConfig.currentDirectory()
        #expect(TernConfig.directory(of: "tern.toml") == cwd)
        #expect(TernConfig.directory(of: "/nonexistent-dir/../x/host.toml") == "/nonexistent-dir/../x")  // not resolvable: as given
        #expect(TernConfig.directory(of: "/tmp/../etc/tern.toml") == "/etc")
        #expect(TernConfig.directory(of: "./nonexistent-x/host.toml") == cwd + "/nonexistent-x")
    }

    @Test func spoolParentMustExistOutsideTheConfigsDirectory() throws {
        var c = try TernConfig.parse("hostname = \"relay.test\"\n")
        c.spool.path = "/nonexistent/deep/spool"
        let error = try #require(throws: ConfigError.self) { try c.checkSpoolPath(configPath: "/etc/tern/tern.toml") }
        #expect(error.key == "spool.path")
        #expect(error.description.contains("/nonexistent/deep/spool"))
        #expect(error.description.contains("/nonexistent/deep does not exist"))
        c.spool.path = "/tmp/tern-spool-\(getpid())"  // the parent exists: the spool itself is created
        try c.checkSpoolPath(configPath: "/etc/tern/tern.toml")
        #expect(access(c.spool.path, F_OK) != 0, "the check created something")
    }

    @Test func missingDirectoriesBelowTheConfigsDirectoryAreAllowed() throws {
        let base = "/tmp/tern-base-\(getpid())"
        mkdir(base, 0o700)
        defer { rmdir(base) }
        let c = try TernConfig.parse("hostname = \"relay.test\"\n[spool]\npath = \"var/spool\"\n", baseDirectory: base)
        try c.checkSpoolPath(configPath: base + "/tern.toml")
        let above = try TernConfig.parse("hostname = \"relay.test\"\n[spool]\npath = \"../nope-\(getpid())/spool\"\n",
                                         baseDirectory: base)
        #expect(throws: ConfigError.self) { try above.checkSpoolPath(configPath: base + "/tern.toml") }
    }

    @Test func cipherPolicies() throws {
        let c = try TernConfig.parse("hostname = \"relay.test\"\n")
        #expect(c.tls.ciphers == "medium" && c.tls.submissionCiphers == "high")
        let custom = try TernConfig.parse("[tls]\nciphers = \"ECDHE+AESGCM\"\nsubmission_ciphers = \"medium\"\n")
        #expect(custom.tls.ciphers == "ECDHE+AESGCM" && custom.tls.submissionCiphers == "medium")
        for key in ["ciphers", "submission_ciphers"] {
            let error = try #require(throws: ConfigError.self) { try TernConfig.parse("[tls]\n\(key) = \"NOPE-CIPHER\"\n") }
            #expect(error.key == "tls.\(key)")
            #expect(error.line == 2)
        }
        #expect(throws: ConfigError.self) { try TernConfig.parse("[tls]\nciphers = \"\"\n") }
    }
}
