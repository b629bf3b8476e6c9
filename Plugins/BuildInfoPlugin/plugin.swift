// Runs scripts/build-info.sh to write BuildCommit.swift (the git commit the binary is built from and
// the Swift compiler's version) for the BuildInfo target.
//
// A build command with declared inputs, not a prebuild command: SwiftPM does not rerun prebuild
// commands on every build as documented (swift-package-manager#5476: only after Package.swift
// changes), which would leave an old commit in a new binary. The inputs are what moves when the
// commit or the tree does: .git/HEAD, .git/logs/HEAD (appended by every commit, checkout, reset, merge
// and pull), .git/index and .git/packed-refs, every source file of the package (for "-dirty"), the
// script, and the `swift` found on PATH (a new toolchain). The script is cheap and rewrites its output
// only when the text changed, so a rerun that finds the same commit recompiles nothing.

import Foundation
import PackagePlugin

@main
struct BuildInfoPlugin: BuildToolPlugin {
    func createBuildCommands(context: PluginContext, target: Target) throws -> [Command] {
        let package = context.package.directoryURL
        let output = context.pluginWorkDirectoryURL.appendingPathComponent("BuildCommit.swift")
        let script = package.appendingPathComponent("scripts/build-info.sh")
        var inputs = [script]
        if let git = Self.gitDirectory(of: package) {
            for name in ["HEAD", "logs/HEAD", "index", "packed-refs"] {
                let file = git.appendingPathComponent(name)
                if FileManager.default.fileExists(atPath: file.path) { inputs.append(file) }
            }
        }
        for case let module as SourceModuleTarget in context.package.targets {
            inputs += module.sourceFiles.map(\.url)
        }
        let environment = ProcessInfo.processInfo.environment
        if let swift = Self.find("swift", in: environment["PATH"] ?? "") { inputs.append(swift) }
        return [.buildCommand(
            displayName: "Recording the git commit in BuildInfo",
            executable: URL(fileURLWithPath: "/bin/sh"),
            arguments: [script.path, package.path, output.path],
            // PATH for git and swift; TERN_COMMIT when a build from a tarball passes the commit in.
            environment: environment.filter { ["PATH", "HOME", "TERN_COMMIT"].contains($0.key) },
            inputFiles: inputs,
            outputFiles: [output])]
    }

    /// The repository's git directory: `.git`, or where a `.git` file points (a worktree, a submodule).
    static func gitDirectory(of package: URL) -> URL? {
        let dotGit = package.appendingPathComponent(".git")
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: dotGit.path, isDirectory: &isDirectory) else { return nil }
        if isDirectory.boolValue { return dotGit }
        guard let text = try? String(contentsOf: dotGit, encoding: .utf8),
              let line = text.split(separator: "\n").first, line.hasPrefix("gitdir: ") else { return nil }
        let path = String(line.dropFirst("gitdir: ".count))
        return path.hasPrefix("/") ? URL(fileURLWithPath: path) : package.appendingPathComponent(path)
    }

    static func find(_ tool: String, in path: String) -> URL? {
        for directory in path.split(separator: ":") {
            let candidate = URL(fileURLWithPath: String(directory)).appendingPathComponent(tool)
            if FileManager.default.isExecutableFile(atPath: candidate.path) { return candidate.resolvingSymlinksInPath() }
        }
        return nil
    }
}
