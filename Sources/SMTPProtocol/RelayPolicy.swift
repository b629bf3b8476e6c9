// Who may send where, and what an alias expands to. Pure: the server session asks, nothing here
// does I/O.
//
// - A client in relay_networks ("trusted") may send to any domain.
// - Anyone else may send only to accept_domains, and to postmaster (RFC 5321 §4.5.1).
// - Sender-specified routing ('%', '!', a quoted '@', a source route) from an untrusted client is
//   refused even at an accept domain, as Postfix does with allow_untrusted_routing = no: a backend
//   that honours '%' would otherwise turn the relay into an open one.
// - Aliases expand at RCPT time; a list with many members is a mailing list.

public struct RelayPolicy: Sendable {
    public var hostname: String
    /// Lower-cased domains that anyone may send to.
    public var acceptDomains: Set<String>
    /// Lower-cased address (or bare local part such as "postmaster") → member addresses.
    public var aliases: [String: [String]]

    public init(hostname: String, acceptDomains: [String] = [], aliases: [String: [String]] = [:]) {
        self.hostname = hostname.lowercased()
        self.acceptDomains = Set(acceptDomains.map { $0.lowercased() })
        var lowered: [String: [String]] = [:]
        for (key, members) in aliases { lowered[key.lowercased()] = members }
        self.aliases = lowered
    }

    public enum Decision: Equatable, Sendable {
        /// Accepted; the addresses the message goes to (alias members, or the recipient itself).
        case accept([String])
        case deny(Reply)
    }

    static let relayDenied = Reply(554, "5.7.1", "Relay access denied")

    public func checkRecipient(_ path: MailPath, trusted: Bool) -> Decision {
        if !trusted && path.hasSenderRouting {
            return .deny(Reply(554, "5.7.1", "Sender-specified routing is not allowed: relay access denied"))
        }
        if path.isBarePostmaster {
            return .accept(expand("postmaster@" + hostname, localDomain: true))
        }
        let domain = path.domain.lowercased()
        let local = isLocalDomain(domain)
        if !trusted {
            let isPostmaster = path.localPart.lowercased() == "postmaster" && local
            guard acceptDomains.contains(domain) || isPostmaster else { return .deny(Self.relayDenied) }
        }
        return .accept(expand(path.localPart + "@" + domain, localDomain: local))
    }

    public func isLocalDomain(_ domain: String) -> Bool {
        domain == hostname || acceptDomains.contains(domain)
    }

    /// Recursive expansion with a depth bound; duplicates removed, order kept. A key that lists itself
    /// ends the recursion there (the address is delivered as is).
    public func expand(_ address: String, localDomain: Bool) -> [String] {
        var result: [String] = []
        var seen: Set<String> = []
        func visit(_ addr: String, depth: Int) {
            let key = addr.lowercased()
            if depth < 8, let members = members(of: key, localDomain: localDomain || depth > 0) {
                for member in members where member.lowercased() != key {
                    visit(member, depth: depth + 1)
                }
                if !members.contains(where: { $0.lowercased() == key }) { return }
            }
            if seen.insert(key).inserted { result.append(addr) }
        }
        visit(address, depth: 0)
        return result
    }

    func members(of key: String, localDomain: Bool) -> [String]? {
        if let m = aliases[key] { return m }
        if localDomain, let at = key.lastIndex(of: "@"), let m = aliases[String(key[..<at])] { return m }
        return nil
    }

    /// An alias key or a member of one.
    public func isKnown(_ address: String) -> Bool {
        let key = address.lowercased()
        if aliases[key] != nil { return true }
        return aliases.values.contains { $0.contains { $0.lowercased() == key } }
    }

    /// The members of a list, for EXPN; nil when the address is not an alias.
    public func listMembers(_ address: String) -> [String]? {
        aliases[address.lowercased()]
    }
}
