// What one `tern blast` run does, validated. The command line (Sources/tern) fills it; everything
// here is checked before a socket is opened, and each error names its option.

import UVRuntime

/// What one session of the run is for.
public enum BlastMode: String, Sendable, Codable {
    /// Transactions: MAIL, RCPT, DATA; the unit counted is the message.
    case mail
    /// Greeting, EHLO, STARTTLS, the TLS handshake, EHLO again, QUIT; the unit counted is the handshake.
    case handshake
}

public struct BlastSettings {
    public var server: SocketAddress
    public var mode: BlastMode = .mail
    /// Handshake mode: stop after this many handshakes (nil: only the duration ends the run).
    public var handshakes: Int?
    /// Stop after this many messages (nil: only the duration ends the run).
    public var messages: Int?
    /// Stop starting transactions after this many seconds (nil: only the count ends the run).
    public var duration: Double?
    /// Connections open at once.
    public var concurrency: Int
    public var sizes: SizeDistribution
    /// Recipients per message: one number, or a range drawn uniformly for each message.
    public var recipients: ClosedRange<Int>
    /// Transactions on one connection before QUIT (0: as many as the run has).
    public var messagesPerConnection: Int
    /// Pipeline MAIL/RCPT/DATA when the server offers PIPELINING.
    public var pipelining: Bool
    /// Send with BDAT (RFC 3030) when the server offers CHUNKING; DATA otherwise.
    public var bdat = false
    /// With `bdat`: the largest chunk in octets (nil: the whole message in one "BDAT n LAST").
    public var chunkSize: Int?
    /// STARTTLS on every connection (the server's certificate is not checked: this is load, not mail).
    public var startTLS = false
    /// Transactions started per second, at most (nil: as fast as the server answers).
    public var rate: Double?
    public var sender: AddressPattern
    public var recipient: AddressPattern
    /// Local addresses to connect from, one connection after the other (empty: the kernel chooses).
    public var bind: [SocketAddress]
    /// Our name in EHLO.
    public var helo: String
    /// Seconds to wait for the connection and for each reply.
    public var timeout: Double
    public var seed: UInt64
    /// Seconds between progress lines on stderr (nil: none).
    public var progressInterval: Double?

    public init(server: SocketAddress, messages: Int? = nil, duration: Double? = nil, concurrency: Int = 10,
                sizes: SizeDistribution = .fixed(4096), recipients: ClosedRange<Int> = 1...1,
                messagesPerConnection: Int = 1, pipelining: Bool = true, rate: Double? = nil,
                sender: AddressPattern, recipient: AddressPattern, bind: [SocketAddress] = [],
                helo: String = "blast.tern.test", timeout: Double = 60, seed: UInt64 = 1,
                progressInterval: Double? = nil) {
        self.server = server
        self.messages = messages
        self.duration = duration
        self.concurrency = concurrency
        self.sizes = sizes
        self.recipients = recipients
        self.messagesPerConnection = messagesPerConnection
        self.pipelining = pipelining
        self.rate = rate
        self.sender = sender
        self.recipient = recipient
        self.bind = bind
        self.helo = helo
        self.timeout = timeout
        self.seed = seed
        self.progressInterval = progressInterval
    }

    /// What bounds the run in its own unit: messages, or handshakes in handshake mode.
    public var limit: Int? { mode == .handshake ? handshakes : messages }

    // MARK: Parsing pieces of the command line

    /// "HOST:PORT" with a numeric IPv4 address, or "[IPv6]:PORT"; without a port, 25.
    public static func parseServer(_ text: String) throws(BlastOptionError) -> SocketAddress {
        var t = text.trimmingSpaces
        if t == "localhost" || t.hasPrefix("localhost:") { t = "127.0.0.1" + t.dropFirst("localhost".count) }
        let colons = t.filter { $0 == ":" }.count
        if t.hasPrefix("[") {
            if !t.contains("]:") { t += ":25" }
        } else if colons == 0 {
            t += ":25"
        } else if colons > 1 {
            t = "[\(t)]:25"  // a bare IPv6 address
        }
        do {
            return try SocketAddress(parsing: t)
        } catch {
            throw BlastOptionError("--server: \"\(text)\" is not ADDRESS:PORT with a numeric address (127.0.0.1:25, [::1]:25)")
        }
    }

    /// Local addresses, comma-separated or given several times: "127.0.0.2,127.0.0.3".
    public static func parseBind(_ texts: [String]) throws(BlastOptionError) -> [SocketAddress] {
        var out: [SocketAddress] = []
        for text in texts {
            for part in text.split(separator: ",") {
                let ip = String(part).trimmingSpaces
                do {
                    out.append(try SocketAddress(ip: ip, port: 0))
                } catch {
                    throw BlastOptionError("--bind: \"\(ip)\" is not a numeric IP address")
                }
            }
        }
        return out
    }

    /// "30s", "1500ms", "2m", "1h", or a plain number of seconds.
    public static func parseDuration(_ text: String, option: String) throws(BlastOptionError) -> Double {
        let t = text.trimmingSpaces.lowercased()
        var number = Substring(t)
        var unit = 1.0
        for (suffix, seconds) in [("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)] where t.hasSuffix(suffix) {
            number = t.dropLast(suffix.count)
            unit = seconds
            break
        }
        guard let n = Double(number), n.isFinite, n > 0, n * unit <= 7 * 86400 else {
            throw BlastOptionError("\(option): \"\(text)\" is not a duration (30s, 1500ms, 2m, 1h)")
        }
        return n * unit
    }

    /// "1", "512", "64k", "1m": octets per BDAT chunk, 1 to 64 MiB.
    public static func parseChunkSize(_ text: String) throws(BlastOptionError) -> Int {
        let t = text.trimmingSpaces.lowercased()
        var digits = Substring(t)
        var unit = 1
        for (suffix, multiple) in [("k", 1 << 10), ("m", 1 << 20)] where t.hasSuffix(suffix) {
            digits = t.dropLast(1)
            unit = multiple
        }
        guard !digits.isEmpty, digits.allSatisfy({ $0.isASCII && $0.isNumber }), let n = Int(digits),
              n >= 1, n <= (64 << 20) / unit
        else { throw BlastOptionError("--chunk-size: \"\(text)\" is not a size from 1 octet to 64m (512, 64k, 1m)") }
        return n * unit
    }

    /// "3" or "1-5".
    public static func parseRecipients(_ text: String) throws(BlastOptionError) -> ClosedRange<Int> {
        let t = text.trimmingSpaces
        let bad = BlastOptionError("--recipients: \"\(text)\" is not a count from 1 to 1000 or a range like 1-5")
        let pieces = t.split(separator: "-", omittingEmptySubsequences: false)
        guard pieces.count == 1 || pieces.count == 2 else { throw bad }
        guard let lo = Int(pieces[0]), let hi = Int(pieces[pieces.count - 1]),
              lo >= 1, hi <= 1000, lo <= hi else { throw bad }
        return lo...hi
    }

    /// Options that shape messages: with --handshake-only no message is sent, so giving one is a
    /// mistake worth saying (the run would not measure what was asked for).
    public static let messageOptions = ["--messages", "--messages-per-connection", "--size", "--recipients",
                                        "--from", "--to", "--pipelining", "--no-pipelining", "--bdat", "--chunk-size"]

    /// `given`: the options the command line carried. Refuses any message option in handshake mode.
    public static func checkHandshakeOnly(given: [String]) throws(BlastOptionError) {
        guard let option = given.first(where: { messageOptions.contains($0) }) else { return }
        if option == "--messages" {
            throw BlastOptionError("--messages: --handshake-only counts handshakes, not messages; use --handshakes N")
        }
        throw BlastOptionError("\(option): --handshake-only sends no message, so this option has no meaning")
    }

    /// Checks the combination; each error names an option.
    public func validate() throws(BlastOptionError) {
        if let m = messages, m < 1 { throw BlastOptionError("--messages: must be at least 1") }
        if let h = handshakes, h < 1 { throw BlastOptionError("--handshakes: must be at least 1") }
        if let c = chunkSize, c < 1 { throw BlastOptionError("--chunk-size: must be at least 1 octet") }
        if chunkSize != nil && !bdat { throw BlastOptionError("--chunk-size: needs --bdat") }
        if mode == .handshake {
            // The command line implies --starttls; a caller that builds settings by hand must too.
            guard startTLS else { throw BlastOptionError("--handshake-only: needs --starttls (the handshake is STARTTLS's)") }
            if messages != nil { throw BlastOptionError("--messages: --handshake-only counts handshakes, not messages; use --handshakes N") }
        } else if handshakes != nil {
            throw BlastOptionError("--handshakes: only with --handshake-only")
        }
        guard concurrency >= 1 && concurrency <= 100_000 else {
            throw BlastOptionError("--concurrency: must be from 1 to 100000")
        }
        guard messagesPerConnection >= 0 else {
            throw BlastOptionError("--messages-per-connection: must be 0 (no limit) or more")
        }
        if let r = rate, !(r > 0 && r.isFinite) { throw BlastOptionError("--rate: must be a positive number of messages per second") }
        guard timeout > 0 else { throw BlastOptionError("--timeout: must be positive") }
        guard !helo.isEmpty, helo.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else {
            throw BlastOptionError("--helo: \"\(helo)\" is not a host name")
        }
        if let b = bind.first(where: { $0.isIPv6 != server.isIPv6 }) {
            throw BlastOptionError("--bind: \(b.ip) is not of the same address family as --server \(server)")
        }
    }
}
