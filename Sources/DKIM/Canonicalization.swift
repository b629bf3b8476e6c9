// DKIM canonicalization (RFC 6376 §3.4), on bytes. The body canonicalizer streams: it takes chunks
// split anywhere (inside a CRLF too) and hands canonical bytes to a hash as soon as they are known,
// holding back only what the next bytes decide: a CR that may start a CRLF, a run of whitespace that
// is dropped at the end of a line, and the count of empty lines that are dropped at the end of the body.

/// A hash fed canonical bytes (SHA-256 in practice). The DKIM target has no cryptography of its own:
/// the caller passes one in.
public protocol DKIMHasher {
    mutating func update(_ bytes: UnsafeRawBufferPointer)
    mutating func finish() -> [UInt8]
}

extension DKIMHasher {
    public mutating func update(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { update($0) }
    }
}

/// Collects what it is fed: the canonical form itself, for tests and for the data to sign.
public struct DKIMByteCollector: DKIMHasher, Sendable {
    public var bytes: [UInt8] = []
    public init() {}
    public mutating func update(_ bytes: UnsafeRawBufferPointer) { self.bytes.append(contentsOf: bytes) }
    public mutating func finish() -> [UInt8] { bytes }
}

public enum Canonicalization: String, Sendable, Equatable {
    case simple, relaxed
}

/// The c= tag: header and body canonicalization. "relaxed" alone means relaxed/simple (§3.5).
public struct CanonicalizationPair: Sendable, Equatable, CustomStringConvertible {
    public var header: Canonicalization
    public var body: Canonicalization

    public init(header: Canonicalization, body: Canonicalization) {
        self.header = header
        self.body = body
    }

    public static let relaxedRelaxed = CanonicalizationPair(header: .relaxed, body: .relaxed)
    public static let simpleSimple = CanonicalizationPair(header: .simple, body: .simple)

    /// "relaxed/relaxed", "simple/relaxed", "relaxed" (body simple), ...; nil for anything else.
    public init?(_ text: String) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 1 || parts.count == 2,
              let header = Canonicalization(rawValue: String(parts[0])),
              let body = parts.count == 2 ? Canonicalization(rawValue: String(parts[1])) : .simple
        else { return nil }
        self.init(header: header, body: body)
    }

    public var description: String { "\(header.rawValue)/\(body.rawValue)" }
}

let cr: UInt8 = 0x0D
let lf: UInt8 = 0x0A
let sp: UInt8 = 0x20
let htab: UInt8 = 0x09

@inline(__always) func isWSP(_ b: UInt8) -> Bool { b == sp || b == htab }

/// 32 CRLFs: held empty lines are written from it when content follows them.
private let crlfBlock: [UInt8] = Array(repeatElement([cr, lf], count: 32).joined())

/// The body canonicalizer of §3.4.3 (simple) and §3.4.4 (relaxed). Lines end with CRLF; a CR or LF
/// alone is an ordinary byte (as every verifier treats it). State between chunks is O(1): the held CR,
/// the pending whitespace flag and the count of pending CRLFs.
public struct BodyCanonicalizer: Sendable {
    public let mode: Canonicalization
    /// CRLFs seen but not yet written: empty lines at the end of the body are dropped.
    private var pendingCRLFs = 0
    /// relaxed: whitespace seen since the last written byte; written as one SP unless a CRLF follows.
    private var pendingWSP = false
    /// The last byte was a CR: whether it ends a line depends on the next byte.
    private var heldCR = false
    /// Some canonical byte other than the final CRLF was written (relaxed: an empty body hashes as nothing).
    private var wroteContent = false
    /// Canonical bytes handed to the hash so far.
    public private(set) var canonicalLength = 0

    public init(_ mode: Canonicalization) { self.mode = mode }

    public mutating func update<H: DKIMHasher>(_ bytes: [UInt8], into hash: inout H) {
        bytes.withUnsafeBytes { update($0, into: &hash) }
    }

    /// Feeds the next chunk of the body (the bytes after the blank line that ends the header block).
    public mutating func update<H: DKIMHasher>(_ chunk: UnsafeRawBufferPointer, into hash: inout H) {
        guard chunk.count > 0 else { return }
        // Canonical bytes are gathered in a buffer and reach the hash in large pieces: relaxed text
        // breaks at every space, and a hash call (or an array append) per word costs more than the copy.
        let slice = min(chunk.count, Self.sliceSize)
        let capacity = slice + 2  // see process
        let out = UnsafeMutablePointer<UInt8>.allocate(capacity: capacity)
        defer { out.deallocate() }
        var at = 0
        while at < chunk.count {
            let end = min(chunk.count, at + slice)
            process(UnsafeRawBufferPointer(rebasing: chunk[at..<end]), out, capacity: capacity, into: &hash)
            at = end
        }
    }

    private static let sliceSize = 65536

    /// One piece of at most `capacity - 2` bytes. Each input byte writes at most one output byte; the
    /// SP of whitespace and the CR held from the piece before add at most two; CRLFs held from pieces
    /// before, which may be many, are written straight to the hash when they do not fit.
    private mutating func process<H: DKIMHasher>(_ p: UnsafeRawBufferPointer, _ out: UnsafeMutablePointer<UInt8>,
                                                 capacity: Int, into hash: inout H) {
        let relaxed = mode == .relaxed
        var k = 0
        // The state in locals (registers) for the loop; stored back at the end.
        var crlfs = pendingCRLFs, wsp = pendingWSP, held = heldCR, wrote = wroteContent
        var length = canonicalLength
        let n = p.count
        var i = 0
        while i < n {
            let b = p[i]
            i += 1
            if held {
                held = false
                if b == lf {
                    wsp = false  // whitespace at the end of a line goes (relaxed)
                    crlfs += 1
                    continue
                }
                // A CR alone is content: what was held before it goes first.
                if crlfs > 0 { Self.writeCRLFs(&crlfs, out, &k, capacity, reserve: n - i + 3, &length, &hash) }
                if wsp {
                    out[k] = sp
                    k += 1
                    wsp = false
                }
                out[k] = cr
                k += 1
                wrote = true
            }
            if b == cr {
                held = true
                continue
            }
            if relaxed && (b == sp || b == htab) {
                wsp = true
                continue
            }
            if crlfs > 0 { Self.writeCRLFs(&crlfs, out, &k, capacity, reserve: n - i + 3, &length, &hash) }
            if wsp {
                out[k] = sp
                k += 1
                wsp = false
            }
            out[k] = b
            k += 1
            wrote = true
            // Nothing is pending now: the run of bytes above SP that follows (most of any text) is
            // copied with one comparison each, not the state checks above.
            while i < n {
                let c = p[i]
                guard c > sp else { break }
                out[k] = c
                k += 1
                i += 1
            }
        }
        // Once per piece: a write past `out` would have corrupted the heap (the budget above).
        precondition(k <= capacity, "DKIM body canonicalizer wrote \(k) bytes into a \(capacity)-byte buffer")
        if k > 0 {
            hash.update(UnsafeRawBufferPointer(start: out, count: k))
            length += k
        }
        pendingCRLFs = crlfs
        pendingWSP = wsp
        heldCR = held
        wroteContent = wrote
        canonicalLength = length
    }

    /// Held empty lines, now followed by content: into `out` when they fit beside what the rest of the
    /// piece may still write (`reserve`: one byte per input byte left, and the SP, CR and byte at hand),
    /// else `out` is handed to the hash and the CRLFs go straight after it. Held CRLFs may come from
    /// pieces before, so they are not covered by this piece's one-output-byte-per-input-byte budget.
    private static func writeCRLFs<H: DKIMHasher>(_ crlfs: inout Int, _ out: UnsafeMutablePointer<UInt8>, _ k: inout Int,
                                                  _ capacity: Int, reserve: Int, _ length: inout Int, _ hash: inout H) {
        if 2 * crlfs + reserve > capacity - k {
            hash.update(UnsafeRawBufferPointer(start: out, count: k))
            length += k
            k = 0
            while crlfs > 0 {
                let m = min(crlfs, crlfBlock.count / 2)
                crlfBlock.withUnsafeBytes { hash.update(UnsafeRawBufferPointer(rebasing: $0[0..<2 * m])) }
                length += 2 * m
                crlfs -= m
            }
            return
        }
        for _ in 0..<crlfs {
            out[k] = cr
            out[k + 1] = lf
            k += 2
        }
        crlfs = 0
    }

    /// The end of the body: writes the final CRLF (simple: always; relaxed: unless the body is empty).
    public mutating func finish<H: DKIMHasher>(into hash: inout H) {
        if heldCR {
            heldCR = false
            writePending(into: &hash)  // a CR alone is content
            write([cr], into: &hash)
        }
        if pendingWSP { writePending(into: &hash) }  // whitespace on a last line without CRLF: one SP, as dkimpy
        pendingCRLFs = 0  // the empty lines at the end
        if mode == .simple || wroteContent { write([cr, lf], into: &hash) }
    }

    private mutating func writePending<H: DKIMHasher>(into hash: inout H) {
        while pendingCRLFs > 0 {
            let m = min(pendingCRLFs, crlfBlock.count / 2)
            crlfBlock.withUnsafeBytes { hash.update(UnsafeRawBufferPointer(rebasing: $0[0..<2 * m])) }
            canonicalLength += 2 * m
            wroteContent = true
            pendingCRLFs -= m
        }
        if pendingWSP {
            pendingWSP = false
            write([sp], into: &hash)
        }
    }

    private mutating func write<H: DKIMHasher>(_ bytes: [UInt8], into hash: inout H) {
        bytes.withUnsafeBytes { hash.update($0) }
        canonicalLength += bytes.count
        wroteContent = true
    }
}

extension BodyCanonicalizer {
    /// The canonical form of a whole body (tests, small messages).
    public static func canonicalize(_ body: [UInt8], _ mode: Canonicalization) -> [UInt8] {
        var c = BodyCanonicalizer(mode)
        var out = DKIMByteCollector()
        c.update(body, into: &out)
        c.finish(into: &out)
        return out.bytes
    }
}

/// The header canonicalizations of §3.4.1 (simple) and §3.4.2 (relaxed), of one field with its CRLF.
public enum HeaderCanonicalizer {
    public static func canonicalize(_ field: HeaderField, _ mode: Canonicalization) -> [UInt8] {
        switch mode {
        case .simple:
            return field.raw
        case .relaxed:
            var out: [UInt8] = []
            out.reserveCapacity(field.raw.count)
            for b in field.name.utf8 { out.append(b >= 0x41 && b <= 0x5A ? b + 0x20 : b) }
            out.append(0x3A)  // ':'
            // The value: unfolded (CRLFs gone), each run of WSP one SP, none at either end.
            var pendingSpace = false
            var wroteValue = false
            var i = field.valueStart
            let raw = field.raw
            while i < raw.count {
                let b = raw[i]
                if b == cr && i + 1 < raw.count && raw[i + 1] == lf {
                    i += 2
                    continue
                }
                if isWSP(b) {
                    pendingSpace = true
                } else {
                    if pendingSpace && wroteValue { out.append(sp) }
                    pendingSpace = false
                    wroteValue = true
                    out.append(b)
                }
                i += 1
            }
            out.append(cr)
            out.append(lf)
            return out
        }
    }
}
