// Which domains sign a message (issue 17), decided without I/O:
// - only mail a relay sends for its own users is signed: from a trusted client (relay_networks) or an
//   authenticated one; mail relayed inbound (accept_domains) never is;
// - an authenticated user with a fixed domain ([dkim] users) has that domain sign, whatever From: says;
// - otherwise each recipient's route ([dkim] routes, keyed like [routes]) may fix the domain for the
//   mail it carries; a recipient without one gets the default:
// - the From: domain's keys, its own or the closest parent's (example.com's key signs
//   news.example.com), since that is what DMARC aligns with. No keys there: that part goes unsigned.
// A message whose recipients take routes with different fixed domains is signed by each of them (a
// message may carry several signatures; each next hop finds the one meant for it).

public struct DKIMSigningPolicy: Sendable, Equatable {
    /// Every d= that has keys (lowercase).
    public var keyDomains: Set<String>
    /// An authenticated user's fixed signing domain.
    public var users: [String: String]
    /// A route's fixed signing domain, by route key: a lowercase recipient domain, or "*".
    public var routes: [String: String]
    /// Every route key in [routes], with a fixed domain or not: a recipient domain routed on its own
    /// does not fall back to "*"'s fixed domain, just as it does not take "*"'s next hop.
    public var routeKeys: Set<String>

    public init(keyDomains: Set<String>, users: [String: String] = [:], routes: [String: String] = [:],
                routeKeys: Set<String> = []) {
        self.keyDomains = keyDomains
        self.users = users
        self.routes = routes
        self.routeKeys = routeKeys.union(routes.keys)
    }

    /// Whether the session's mail is signed at all: a relay_networks client or an authenticated one.
    public static func signs(trustedClient: Bool, authenticatedUser: String?) -> Bool {
        trustedClient || authenticatedUser != nil
    }

    /// What the envelope decides, before the header block is read.
    public func choice(authenticatedUser: String?, recipientDomains: [String]) -> DKIMSigningChoice {
        if let user = authenticatedUser, let domain = users[user] {
            return DKIMSigningChoice(fixed: [domain], byAuthor: false)
        }
        guard !routes.isEmpty else { return .byAuthor }
        var choice = DKIMSigningChoice(fixed: [], byAuthor: false)
        for recipient in recipientDomains {
            let key = routeKeys.contains(recipient) ? recipient : "*"
            if let domain = routes[key] {
                if !choice.fixed.contains(domain) { choice.fixed.append(domain) }
            } else {
                choice.byAuthor = true
            }
        }
        return choice
    }

    /// The d= whose keys sign mail from `authorDomain`: its own, or the closest parent's; nil: none.
    public func keyDomain(forAuthorDomain authorDomain: String) -> String? {
        var name = Substring(authorDomain)
        while true {
            if keyDomains.contains(String(name)) { return String(name) }
            guard let dot = name.firstIndex(of: ".") else { return nil }
            name = name[name.index(after: dot)...]
        }
    }

    /// The signing domains of a message, in order (the From: domain's first), each once; empty:
    /// unsigned. `authorDomain`: the first From: mailbox's domain, nil when there is none.
    public func domains(_ choice: DKIMSigningChoice, authorDomain: String?) -> [String] {
        var out: [String] = []
        if choice.byAuthor, let author = authorDomain, let domain = keyDomain(forAuthorDomain: author) {
            out.append(domain)
        }
        for domain in choice.fixed where !out.contains(domain) { out.append(domain) }
        return out
    }
}

/// The envelope's part of the decision: domains fixed by the user or the routes, and whether the From:
/// domain's keys sign too (some recipient has no fixed domain).
public struct DKIMSigningChoice: Sendable, Equatable {
    public var fixed: [String]
    public var byAuthor: Bool

    public init(fixed: [String], byAuthor: Bool) {
        self.fixed = fixed
        self.byAuthor = byAuthor
    }

    /// The default: the From: domain decides.
    public static let byAuthor = DKIMSigningChoice(fixed: [], byAuthor: true)
}
