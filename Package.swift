// swift-tools-version:6.0
// Tern: an SMTP relay MTA on libuv and c-ares.
import PackageDescription

let package = Package(
    name: "Tern",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "tern", targets: ["tern"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/LebJe/TOMLKit", from: "0.6.0"),
        .package(url: "https://github.com/apple/swift-collections", from: "1.1.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
    ],
    targets: [
        // C libraries from Debian, found with pkg-config.
        .systemLibrary(name: "CLibUV", path: "Modules/CLibUV", pkgConfig: "libuv",
                       providers: [.apt(["libuv1-dev"])]),
        .systemLibrary(name: "CCAres", path: "Modules/CCAres", pkgConfig: "libcares",
                       providers: [.apt(["libc-ares-dev"])]),
        .systemLibrary(name: "COpenSSL", path: "Modules/COpenSSL", pkgConfig: "openssl",
                       providers: [.apt(["libssl-dev"])]),
        .systemLibrary(name: "CZlib", path: "Modules/CZlib", pkgConfig: "zlib",
                       providers: [.apt(["zlib1g-dev"])]),
        .systemLibrary(name: "CCurl", path: "Modules/CCurl", pkgConfig: "libcurl",
                       providers: [.apt(["libcurl4-openssl-dev"])]),
        .systemLibrary(name: "CISAL", path: "Modules/CISAL", pkgConfig: "libisal",
                       providers: [.apt(["libisal-dev"])]),
        // No pkgConfig: hiredis.pc adds -D_FILE_OFFSET_BITS=64, which SwiftPM refuses with a warning.
        .systemLibrary(name: "CRedis", path: "Modules/CRedis",
                       providers: [.apt(["libhiredis-dev"])]),

        // The version, and the git commit the binary was built from (generated before each build).
        .target(name: "BuildInfo", plugins: ["BuildInfoPlugin"]),
        .plugin(name: "BuildInfoPlugin", capability: .buildTool()),

        // SplitMix64: the one seeded generator, for repeatable faults, blast sizes, jitter and tests.
        .target(name: "Randomness", swiftSettings: [.swiftLanguageMode(.v6)]),
        // Pure SMTP: framing, commands, replies, addresses, the server state machine. No I/O.
        .target(name: "SMTPProtocol", swiftSettings: [.swiftLanguageMode(.v6)]),
        // Envelopes, the spool format, queue ids. Blocking file calls run on libuv's thread pool.
        .target(name: "MailQueue", dependencies: ["SMTPProtocol", "Randomness"],
                swiftSettings: [.swiftLanguageMode(.v6)]),
        // DKIM (RFC 6376, RFC 8463) without I/O or cryptography: canonicalization, header selection, the
        // DKIM-Signature field, the data to sign. The hash and the signature are passed in (UVRuntime's).
        .target(name: "DKIM", swiftSettings: [.swiftLanguageMode(.v6)]),
        // The only Swift code that touches libuv, c-ares, OpenSSL, ISA-L, libcurl and hiredis. Knows
        // nothing of SMTP.
        .target(name: "UVRuntime", dependencies: ["CLibUV", "CCAres", "COpenSSL", "CISAL", "CCurl", "CRedis"]),
        // The glue: config, listeners, inbound sessions.
        .target(name: "Relay", dependencies: [
            "SMTPProtocol", "MailQueue", "UVRuntime", "BuildInfo", "Randomness", "DKIM",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "TOMLKit", package: "TOMLKit"),
            .product(name: "Collections", package: "swift-collections"),
            .product(name: "Metrics", package: "swift-metrics"),
            .product(name: "Prometheus", package: "swift-prometheus"),
        ]),
        // `tern blast`: the load generator (SMTPProtocol's client session on UVRuntime's loop).
        .target(name: "Blast", dependencies: [
            "SMTPProtocol", "UVRuntime", "Randomness",
            .product(name: "Histogram", package: "hdrhistogram-swift"),
        ]),
        .executableTarget(name: "tern", dependencies: [
            "Relay", "Blast", "BuildInfo", "DKIM",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),

        .testTarget(name: "SMTPProtocolTests", dependencies: ["SMTPProtocol", "Randomness"]),
        .testTarget(name: "MailQueueTests", dependencies: ["MailQueue", "Randomness", "CZlib"]),
        .testTarget(name: "DKIMTests", dependencies: ["DKIM", "UVRuntime", "Randomness"], exclude: ["dkimpy_check.py"]),
        .testTarget(name: "UVRuntimeTests", dependencies: ["UVRuntime", "Randomness", "RedisTestSupport"]),
        .testTarget(name: "RelayTests", dependencies: ["Relay", "BuildInfo", "Randomness", "DKIM", "RedisTestSupport"]),
        // Debian's redis-server started for a test (RedisClient's and the cluster scripts' tests).
        .target(name: "RedisTestSupport", path: "Tests/RedisTestSupport"),
        .testTarget(name: "BlastTests", dependencies: ["Blast", "Randomness"]),
    ],
    swiftLanguageModes: [.v5]
)
