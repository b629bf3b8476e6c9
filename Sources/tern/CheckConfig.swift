// `tern check-config PATH`: loads a config as `tern serve` would, opens and parses every file it names
// (certificate and key, users file, password files; the spool's parent), creating nothing, and prints
// the effective configuration, every default filled in, as TOML that loads back to the same thing. A bad config is
// reported with its key and line, exit status 78 (EX_CONFIG, as `tern serve` uses).

import ArgumentParser
import Relay

#if canImport(Glibc)
import Glibc
#endif

struct CheckConfig: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check-config",
        abstract: "Validate a config file and print the effective configuration with defaults filled in.")

    @Argument(help: "The TOML config file.")
    var path: String

    @Flag(name: .shortAndLong, help: "Print nothing when the config is valid; only the exit status says.")
    var quiet = false

    func run() throws {
        let config: TernConfig
        do {
            config = try TernConfig.load(path: path)
            // Every file serve would open, opened and parsed the same way; nothing is created.
            try config.checkSpoolPath(configPath: path)
            _ = try config.openSecurityFiles(source: path)
        } catch {
            fputs("tern check-config: \(error)\n", stderr)
            throw ExitCode(78)
        }
        let (text, problem) = config.renderingCheck()
        if let problem {
            fputs("tern check-config: internal error: \(problem)\n", stderr)
            throw ExitCode(70)
        }
        if !quiet { print(text, terminator: "") }
    }
}
