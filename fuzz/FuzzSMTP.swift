// libFuzzer entry point for the line framer, the DATA decoder, the server state machine and the
// Received-chain parser of `tern trace`.
// Built by fuzz/run.sh together with Sources/SMTPProtocol (not part of the package build).
//
// Each input is fed to a fresh ServerSession twice: whole, and split at points chosen by the input's
// first byte. Besides crashes and sanitizer reports it checks two invariants: the replies do not depend
// on how the bytes were split, and no message is committed that the decoder saw a problem in.

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    let policy = RelayPolicy(hostname: "relay.test", acceptDomains: ["local.test"],
                             aliases: ["list@local.test": ["a@x.test", "b@y.test"]])
    var config = ServerConfiguration(hostname: "relay.test", maxMessageSize: 4096, maxRecipients: 5, maxErrors: 50,
                                     maxLineLength: 200, maxHops: 3, vrfy: true, expn: true, policy: policy)
    // STARTTLS and AUTH on for odd second bytes; AUTH in the clear allowed so it is reachable.
    let secure = bytes.count > 1 && bytes[1] & 1 == 1
    config.startTLS = secure
    config.authEnabled = secure
    config.requireAuth = secure && bytes[1] & 2 == 2
    let trusted = bytes.first.map { $0 & 1 == 0 } ?? true
    let whole = run(config, trusted, [bytes])
    var pieces: [[UInt8]] = []
    let step = max(1, Int(bytes.first ?? 1) % 17)
    var i = 0
    while i < bytes.count { pieces.append(Array(bytes[i..<min(bytes.count, i + step)])); i += step }
    let split = run(config, trusted, pieces)
    if whole != split { fatalError("replies depend on how the input was split") }

    // The decoder alone, byte by byte.
    var decoder = DataDecoder(limits: .init(maxLineLength: 100, maxMessageSize: 1000))
    var out: [UInt8] = []
    for b in bytes where !decoder.isFinished { _ = [b].withUnsafeBytes { decoder.decode($0, into: &out) } }
    if out.count > 1002 { fatalError("decoder output beyond the size limit") }

    // `tern trace` reads headers written by anyone.
    let trace = ReceivedTrace(message: bytes, now: 1_800_000_000, allowedSkew: Int(bytes.first ?? 0))
    if trace.findings.contains(where: { $0.hop < 1 || $0.hop > trace.hops.count }) { fatalError("finding for no hop") }
    return 0
}

func run(_ config: ServerConfiguration, _ trusted: Bool, _ pieces: [[UInt8]]) -> [UInt8] {
    var s = ServerSession(config: config, client: PeerInfo(ip: "192.0.2.1", trusted: trusted,
                                                          cleartextAuthAllowed: true))
    var replies: [UInt8] = []
    var queued = 0
    // After STARTTLS the rest of the input is cleartext the session must drop: stop feeding it, so
    // that whole and split runs stay comparable.
    var startedTLS = false
    func apply(_ actions: [ServerAction]) {
        for a in actions {
            switch a {
            case .reply(let b): replies += b
            case .commitMessage:
                queued += 1
                apply(s.commitFinished(queueID: "Q\(queued)"))
            case .startTLS:
                startedTLS = true
                apply(s.tlsEstablished("TLSv1.3 with cipher TEST"))
            case .authenticate(let user, let password):
                apply(s.authFinished(user == "u" && password == "p" ? .success(allowedSenders: ["u@local.test"]) : .failure))
            default: break
            }
        }
    }
    apply(s.greeting())
    for p in pieces where !startedTLS { apply(s.receive(p)) }
    return replies
}
