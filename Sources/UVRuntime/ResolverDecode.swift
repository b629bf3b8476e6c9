// ResolverDecode: turns raw DNS replies into the Resolver's answers.
//
// Records come from c-ares' own parsers (ares_parse_mx_reply, _a_, _aaaa_, _ptr_). Those give no
// TTL for MX and know nothing of CNAME, so ResolverMessage reads the answer section itself
// (RFC 1035 4.1.3) for the TTLs and the CNAME chain; names are expanded by ares_expand_name.

import CCAres

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// MARK: - The answer section

struct ResolverMessage {
    struct Record {
        let name: String
        let type: UInt16
        let ttl: UInt32
        let rdata: Range<Int>
    }

    let bytes: [UInt8]
    let answers: [Record]

    /// nil when the message is truncated or malformed.
    init?(_ bytes: [UInt8]) {
        self.bytes = bytes
        guard bytes.count >= 12 else { return nil }
        let questions = Int(ResolverMessage.u16(bytes, 4))
        let answerCount = Int(ResolverMessage.u16(bytes, 6))
        var offset = 12
        for _ in 0..<questions {
            guard let end = ResolverMessage.skipName(bytes, offset), end + 4 <= bytes.count else { return nil }
            offset = end + 4
        }
        var answers: [Record] = []
        answers.reserveCapacity(answerCount)
        for _ in 0..<answerCount {
            guard let (name, end) = ResolverMessage.expandName(bytes, offset), end + 10 <= bytes.count else {
                return nil
            }
            let type = ResolverMessage.u16(bytes, end)
            var ttl = ResolverMessage.u32(bytes, end + 4)
            if ttl > UInt32(Int32.max) { ttl = 0 }  // RFC 2181 8: a TTL with the top bit set means zero
            let length = Int(ResolverMessage.u16(bytes, end + 8))
            let start = end + 10
            guard start + length <= bytes.count else { return nil }
            answers.append(Record(name: name, type: type, ttl: ttl, rdata: start..<(start + length)))
            offset = start + length
        }
        self.answers = answers
    }

    /// The name in an RR's data (CNAME, PTR target).
    func name(at offset: Int) -> String? {
        ResolverMessage.expandName(bytes, offset)?.name
    }

    /// Follows the CNAMEs of the answer section from `queried`. nil if a CNAME's target is unreadable.
    func chain(from queried: String) -> (name: String, ttls: [UInt32])? {
        var name = resolverTrimDot(queried)
        var ttls: [UInt32] = []
        var seen: Set<String> = [resolverNameKey(name)]
        while let alias = answers.first(where: { $0.type == UInt16(TERN_DNS_TYPE_CNAME)
                                                  && resolverNameKey($0.name) == resolverNameKey(name) }) {
            guard let target = self.name(at: alias.rdata.lowerBound) else { return nil }
            ttls.append(alias.ttl)
            name = target
            if !seen.insert(resolverNameKey(name)).inserted { break }  // a CNAME loop: stop where it closes
        }
        return (name, ttls)
    }

    /// The smallest TTL of the records of `type` owned by `owner` (any owner if none) and `extra`.
    func minimumTTL(type: Int32, owner: String, extra: [UInt32]) -> UInt32 {
        let ofType = answers.filter { $0.type == UInt16(type) }
        let owned = ofType.filter { resolverNameKey($0.name) == resolverNameKey(owner) }
        let ttls = (owned.isEmpty ? ofType : owned).map(\.ttl) + extra
        return ttls.min() ?? 0
    }

    static func u16(_ b: [UInt8], _ i: Int) -> UInt16 { UInt16(b[i]) << 8 | UInt16(b[i + 1]) }

    static func u32(_ b: [UInt8], _ i: Int) -> UInt32 {
        UInt32(b[i]) << 24 | UInt32(b[i + 1]) << 16 | UInt32(b[i + 2]) << 8 | UInt32(b[i + 3])
    }

    /// The offset just past the name at `offset` (labels, then a zero byte or a compression pointer).
    static func skipName(_ b: [UInt8], _ offset: Int) -> Int? {
        var i = offset
        while i < b.count {
            let length = Int(b[i])
            if length == 0 { return i + 1 }
            if length & 0xC0 == 0xC0 { return i + 2 <= b.count ? i + 2 : nil }
            if length & 0xC0 != 0 { return nil }
            i += 1 + length
        }
        return nil
    }

    /// The name at `offset` without its trailing dot, and the offset past its encoding.
    static func expandName(_ b: [UInt8], _ offset: Int) -> (name: String, end: Int)? {
        guard offset < b.count else { return nil }
        var expanded: UnsafeMutablePointer<CChar>?
        var encodedLength = 0
        let status = b.withUnsafeBufferPointer { buffer in
            tern_ares_expand_name(buffer.baseAddress! + offset, buffer.baseAddress!, Int32(buffer.count),
                                  &expanded, &encodedLength)
        }
        guard status == TERN_ARES_SUCCESS, let expanded else { return nil }
        defer { tern_ares_free_string(expanded) }
        return (String(cString: expanded), offset + encodedLength)
    }
}

/// Names compare without case and without a trailing dot.
func resolverNameKey(_ name: String) -> String { resolverTrimDot(name).lowercased() }

func resolverTrimDot(_ name: String) -> String {
    name.hasSuffix(".") && name.count > 1 ? String(name.dropLast()) : name
}

// MARK: - Reverse names for PTR

/// An address and its name under in-addr.arpa (RFC 1035 3.5) or ip6.arpa (RFC 3596 2.5).
struct ResolverReverseName {
    let name: String
    let address: [UInt8]
    let family: Int32

    init?(_ text: String) {
        var ip = text
        if ip.hasPrefix("[") && ip.hasSuffix("]") { ip = String(ip.dropFirst().dropLast()) }
        var v4 = in_addr()
        var v6 = in6_addr()
        if inet_pton(AF_INET, ip, &v4) == 1 {
            address = withUnsafeBytes(of: &v4) { Array($0) }
            family = Int32(AF_INET)
            name = address.reversed().map { String($0) }.joined(separator: ".") + ".in-addr.arpa"
        } else if inet_pton(AF_INET6, ip, &v6) == 1 {
            address = withUnsafeBytes(of: &v6) { Array($0) }
            family = Int32(AF_INET6)
            let digits = Array("0123456789abcdef")
            var labels: [String] = []
            for byte in address.reversed() {
                labels.append(String(digits[Int(byte & 0x0F)]))
                labels.append(String(digits[Int(byte >> 4)]))
            }
            name = labels.joined(separator: ".") + ".ip6.arpa"
        } else {
            return nil
        }
    }
}

// MARK: - Decoders

enum ResolverDecode {
    typealias Reply = Result<[UInt8], DNSError>

    /// The start of every decoder: the reply's bytes, parsed, and the CNAME chain from the queried name.
    static func open(_ reply: Reply, queried: String)
        -> Result<(bytes: [UInt8], message: ResolverMessage, chain: (name: String, ttls: [UInt32])), DNSError> {
        switch reply {
        case .failure(let error): return .failure(error)
        case .success(let bytes):
            guard let message = ResolverMessage(bytes), let chain = message.chain(from: queried) else {
                return .failure(.badResponse)
            }
            return .success((bytes, message, chain))
        }
    }

    static func mx(_ reply: Reply, queried: String) -> Result<DNSAnswer<[MXRecord]>, DNSError> {
        let bytes: [UInt8], message: ResolverMessage, chain: (name: String, ttls: [UInt32])
        do { (bytes, message, chain) = try open(reply, queried: queried).get() } catch { return .failure(error) }
        var head: UnsafeMutablePointer<ares_mx_reply>?
        let status = bytes.withUnsafeBufferPointer { tern_ares_parse_mx($0.baseAddress, Int32($0.count), &head) }
        defer { if let head { tern_ares_free_data(head) } }
        guard status == TERN_ARES_SUCCESS else { return .failure(DNSError(aresStatus: status)) }
        var records: [MXRecord] = []
        var next = head
        while let entry = next {
            let host = entry.pointee.host.map { String(cString: $0) } ?? ""
            records.append(MXRecord(preference: entry.pointee.priority, host: resolverTrimDot(host)))
            next = entry.pointee.next
        }
        guard !records.isEmpty else { return .failure(.noData) }
        // RFC 5321 5.1: lower preference first; the order among equals is left to the router.
        records = records.enumerated()
            .sorted { ($0.element.preference, $0.offset) < ($1.element.preference, $1.offset) }
            .map(\.element)
        let ttl = message.minimumTTL(type: TERN_DNS_TYPE_MX, owner: chain.name, extra: chain.ttls)
        return .success(DNSAnswer(records: records, ttl: ttl, canonicalName: chain.ttls.isEmpty ? nil : chain.name))
    }

    /// One of the two halves of lookupAddresses.
    static func addressHalf(_ reply: Reply, queried: String, type: Int32) -> Result<DNSAnswer<[String]>, DNSError> {
        let bytes: [UInt8], message: ResolverMessage, chain: (name: String, ttls: [UInt32])
        do { (bytes, message, chain) = try open(reply, queried: queried).get() } catch { return .failure(error) }
        // No more addresses than records could fit in the message (an A RR takes at least 16 bytes).
        let capacity = bytes.count / 16 + 1
        var count = Int32(capacity)
        var addresses: [String] = []
        let status: Int32
        if type == TERN_DNS_TYPE_A {
            var entries = [ares_addrttl](repeating: ares_addrttl(), count: capacity)
            status = bytes.withUnsafeBufferPointer {
                tern_ares_parse_a($0.baseAddress, Int32($0.count), &entries, &count)
            }
            if status == TERN_ARES_SUCCESS {
                for i in 0..<Int(count) {
                    var address = entries[i].ipaddr
                    addresses.append(withUnsafeBytes(of: &address) { resolverAddressText(family: AF_INET, $0.baseAddress!) })
                }
            }
        } else {
            var entries = [ares_addr6ttl](repeating: ares_addr6ttl(), count: capacity)
            status = bytes.withUnsafeBufferPointer {
                tern_ares_parse_aaaa($0.baseAddress, Int32($0.count), &entries, &count)
            }
            if status == TERN_ARES_SUCCESS {
                for i in 0..<Int(count) {
                    var address = entries[i].ip6addr
                    addresses.append(withUnsafeBytes(of: &address) { resolverAddressText(family: AF_INET6, $0.baseAddress!) })
                }
            }
        }
        guard status == TERN_ARES_SUCCESS else { return .failure(DNSError(aresStatus: status)) }
        guard !addresses.isEmpty else { return .failure(.noData) }
        let ttl = message.minimumTTL(type: type, owner: chain.name, extra: chain.ttls)
        return .success(DNSAnswer(records: addresses, ttl: ttl, canonicalName: chain.ttls.isEmpty ? nil : chain.name))
    }

    /// A and AAAA together. Any addresses make a success. Without any: NXDOMAIN if either says so
    /// (it is about the name, not the type), else a failure that may pass (timeout, SERVFAIL, ...)
    /// rather than a final .noData.
    static func addresses(a: Reply, aaaa: Reply, queried: String) -> Result<DNSAnswer<[String]>, DNSError> {
        let halves = [addressHalf(a, queried: queried, type: TERN_DNS_TYPE_A),
                      addressHalf(aaaa, queried: queried, type: TERN_DNS_TYPE_AAAA)]
        var records: [String] = []
        var ttl: UInt32?
        var canonicalName: String?
        var errors: [DNSError] = []
        for half in halves {
            switch half {
            case .success(let answer):
                records += answer.records
                ttl = min(ttl ?? answer.ttl, answer.ttl)
                canonicalName = canonicalName ?? answer.canonicalName
            case .failure(let error):
                errors.append(error)
            }
        }
        if let ttl { return .success(DNSAnswer(records: records, ttl: ttl, canonicalName: canonicalName)) }
        if errors.contains(.cancelled) { return .failure(.cancelled) }
        if errors.contains(.nxdomain) { return .failure(.nxdomain) }
        if let passing = errors.first(where: { $0 != .noData }) { return .failure(passing) }
        return .failure(.noData)
    }

    static func ptr(_ reply: Reply, reverse: ResolverReverseName) -> Result<[String], DNSError> {
        let bytes: [UInt8]
        switch reply {
        case .failure(let error): return .failure(error)
        case .success(let b): bytes = b
        }
        var host: UnsafeMutablePointer<hostent>?
        let status = reverse.address.withUnsafeBytes { address in
            bytes.withUnsafeBufferPointer {
                tern_ares_parse_ptr($0.baseAddress, Int32($0.count), address.baseAddress, Int32(address.count),
                                    reverse.family, &host)
            }
        }
        defer { if let host { tern_ares_free_hostent(host) } }
        guard status == TERN_ARES_SUCCESS, let host else {
            return .failure(status == TERN_ARES_SUCCESS ? .badResponse : DNSError(aresStatus: status))
        }
        // c-ares puts every PTR name in h_aliases (and one of them in h_name).
        var names: [String] = []
        if let aliases = host.pointee.h_aliases {
            var i = 0
            while let alias = aliases[i] {
                names.append(String(cString: alias))
                i += 1
            }
        }
        if names.isEmpty, let name = host.pointee.h_name {
            names.append(String(cString: name))
        }
        var seen = Set<String>()
        names = names.map(resolverTrimDot).filter { seen.insert(resolverNameKey($0)).inserted }
        return names.isEmpty ? .failure(.noData) : .success(names)
    }

    static func txt(_ reply: Reply, queried: String) -> Result<DNSAnswer<[[UInt8]]>, DNSError> {
        let bytes: [UInt8], message: ResolverMessage, chain: (name: String, ttls: [UInt32])
        do { (bytes, message, chain) = try open(reply, queried: queried).get() } catch { return .failure(error) }
        var records: [[UInt8]] = []
        for rr in message.answers where rr.type == UInt16(TERN_DNS_TYPE_TXT)
            && resolverNameKey(rr.name) == resolverNameKey(chain.name) {
            var text: [UInt8] = []
            var i = rr.rdata.lowerBound
            while i < rr.rdata.upperBound {
                let length = Int(bytes[i])
                guard i + 1 + length <= rr.rdata.upperBound else { return .failure(.badResponse) }
                text += bytes[(i + 1)..<(i + 1 + length)]
                i += 1 + length
            }
            records.append(text)
        }
        guard !records.isEmpty else { return .failure(.noData) }
        let ttl = message.minimumTTL(type: TERN_DNS_TYPE_TXT, owner: chain.name, extra: chain.ttls)
        return .success(DNSAnswer(records: records, ttl: ttl, canonicalName: chain.ttls.isEmpty ? nil : chain.name))
    }

    static func cname(_ reply: Reply, queried: String) -> Result<DNSAnswer<String>, DNSError> {
        let chain: (name: String, ttls: [UInt32])
        do { chain = try open(reply, queried: queried).get().chain } catch { return .failure(error) }
        guard let ttl = chain.ttls.min() else { return .failure(.noData) }
        return .success(DNSAnswer(records: chain.name, ttl: ttl, canonicalName: chain.name))
    }
}

private func resolverAddressText(family: Int32, _ address: UnsafeRawPointer) -> String {
    var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
    let written = inet_ntop(family, address, &text, socklen_t(text.count))
    return written == nil ? "" : String(cString: text)
}
