// `tern passwd --file F USER`: adds a user to the AUTH users file, or changes the user's password.
// The password comes from standard input (first line) or, on a terminal, from a prompt without echo.
// The file is rewritten through a temporary file and rename, mode 0600.

import ArgumentParser
import Relay
import SMTPProtocol
import UVRuntime

#if canImport(Glibc)
import Glibc
#endif

struct Passwd: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Add a user to the AUTH users file, or change the user's password.",
        discussion: """
            The file holds one "user:$scrypt$ln=15,r=8,p=1$SALT$KEY" line per user (scrypt, RFC 7914; \
            salt and key in hex). Point [auth] users_file at it.
            """)

    @Option(name: .long, help: "The users file (created if missing).")
    var file: String

    @Flag(name: .long, help: "Remove the user instead.")
    var delete = false

    @Argument(help: "The user name (any printable characters but ':' and spaces).")
    var user: String

    func run() throws {
        guard UsersFile.isValidUserName(user) else {
            fputs("tern passwd: bad user name \"\(terminalSafe(user))\"\n", stderr)  // a BOM or U+202E shown, not hidden
            throw ExitCode(64)
        }
        var users = UsersFile()
        if access(file, F_OK) == 0 {
            do {
                users = try UsersFile.load(path: file)
            } catch {
                fputs("tern passwd: \(error)\n", stderr)
                throw ExitCode(65)
            }
        }
        if delete {
            guard users.hashes.removeValue(forKey: user) != nil else {
                fputs("tern passwd: no user \(user) in \(file)\n", stderr)
                throw ExitCode(67)
            }
            users.order.removeAll { $0 == user }
        } else {
            let password = try readPassword()
            guard !password.isEmpty else {
                fputs("tern passwd: empty password\n", stderr)
                throw ExitCode(65)
            }
            users.set(user: user, hash: try PasswordHash.make(password))
        }
        try write(users.text, to: file)
    }

    /// The password, or an exit with the one message that says why there is none (each failure says
    /// its own thing: a mismatch is not an empty password).
    func readPassword() throws -> String {
        func noPassword() -> ExitCode {
            fputs("tern passwd: no password given (end of input)\n", stderr)
            return ExitCode(65)
        }
        if isatty(0) != 0 {
            guard let first = prompt("Password for \(user): ") else { throw noPassword() }
            guard let again = prompt("Again: ") else { throw noPassword() }
            guard first == again else {
                fputs("tern passwd: the passwords differ; nothing changed\n", stderr)
                throw ExitCode(65)
            }
            return first
        }
        guard let line = readLine(strippingNewline: true) else { throw noPassword() }
        return line.hasSuffix("\r") ? String(line.dropLast()) : line
    }

    /// Reads a line from the terminal with echo off. The prompt is shown once echo is off (TCSAFLUSH
    /// drops what was typed before it), so what is typed after the prompt is read.
    func prompt(_ text: String) -> String? {
        var old = termios()
        tcgetattr(0, &old)
        var quiet = old
        quiet.c_lflag &= ~tcflag_t(ECHO)
        tcsetattr(0, TCSAFLUSH, &quiet)
        fputs(text, stderr)
        defer {
            tcsetattr(0, TCSAFLUSH, &old)
            fputs("\n", stderr)
        }
        return readLine(strippingNewline: true)
    }

    func write(_ text: String, to path: String) throws { try writeSecretFile(text, to: path, command: "tern passwd") }
}

/// A file of secrets (users, tokens) written whole: beside it, mode 0600, synced, renamed over it.
func writeSecretFile(_ text: String, to path: String, command: String) throws {
    let temporary = path + ".tmp.\(getpid())"
    let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
    guard fd >= 0 else {
        fputs("\(command): \(temporary): \(String(cString: strerror(errno)))\n", stderr)
        throw ExitCode(73)
    }
    let bytes = Array(text.utf8)
    var offset = 0
    while offset < bytes.count {
        let n = bytes[offset...].withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        if n <= 0 {
            close(fd)
            unlink(temporary)
            fputs("\(command): \(temporary): \(String(cString: strerror(errno)))\n", stderr)
            throw ExitCode(74)
        }
        offset += n
    }
    fsync(fd)
    close(fd)
    guard rename(temporary, path) == 0 else {
        unlink(temporary)
        fputs("\(command): \(path): \(String(cString: strerror(errno)))\n", stderr)
        throw ExitCode(73)
    }
}
