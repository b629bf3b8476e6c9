// What this binary is: Tern's version (here, by hand, at a release) and, from the generated
// BuildCommit.swift (scripts/build-info.sh through the BuildInfoPlugin), the git commit it was built
// from and the Swift compiler that built it. For `tern --version`, the ready line and tern_build_info.

public enum BuildInfo {
    public static let version = "0.1.0"
    /// 12 hex digits, "-dirty" when tracked files differed from it; "unknown" without git.
    public static let commit: String = generatedCommit
    /// The compiler's version, "6.3.1".
    public static let swiftVersion: String = generatedSwiftVersion

    /// "tern 0.1.0 (commit 6b15cd6a1b2c, Swift 6.3.1)": what `tern --version` prints.
    public static var versionLine: String { "tern \(version) (commit \(commit), Swift \(swiftVersion))" }
}
