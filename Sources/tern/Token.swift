// `tern token --file F NAME`: a new bearer token for the HTTP injection API ([http] tokens_file),
// printed once; the file keeps only its SHA-256 (Relay's TokensFile). A NAME already there gets a new
// token (the old one stops working); --delete removes it.

import ArgumentParser
import Foundation
import Relay
import SMTPProtocol

#if canImport(Glibc)
import Glibc
#endif

struct Token: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Make a bearer token for the HTTP injection API, print it once and keep its hash in the tokens file.",
        discussion: """
            The file holds one "NAME:sha256$HEX" line per token (created if missing, mode 0600). Point \
            [http] tokens_file at it; clients send "Authorization: Bearer TOKEN".
            """)

    @Option(name: .long, help: "The tokens file (created if missing).")
    var file: String

    @Flag(name: .long, help: "Remove the token of NAME instead.")
    var delete = false

    @Argument(help: "The token's name (1-64 letters, digits, '-', '_', '.'), for the log.")
    var name: String

    func run() throws {
        guard TokensFile.isValidName(name) else {
            fputs("tern token: bad name \"\(terminalSafe(name))\" (1-64 letters, digits, '-', '_', '.')\n", stderr)
            throw ExitCode(64)
        }
        var tokens = TokensFile()
        if access(file, F_OK) == 0 {
            do {
                tokens = try TokensFile.parse(try String(contentsOfFile: file, encoding: .utf8), source: file)
            } catch {
                fputs("tern token: \(error)\n", stderr)
                throw ExitCode(65)
            }
        }
        if delete {
            guard tokens.entries.contains(where: { $0.name == name }) else {
                fputs("tern token: no token \(name) in \(file)\n", stderr)
                throw ExitCode(67)
            }
            tokens = tokens.removing(name: name)
            try writeSecretFile(tokens.text, to: file, command: "tern token")
            return
        }
        let token = TokensFile.newToken()
        try writeSecretFile(tokens.adding(name: name, token: token).text, to: file, command: "tern token")
        print(token)
    }
}
