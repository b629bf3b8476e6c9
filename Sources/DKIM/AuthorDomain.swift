// The domains of the From: header's mailboxes (RFC 5322 §3.6.2, §3.4): what DMARC aligns with, so
// the default signing domain. Comments, quoted strings, display names and groups are skipped; an
// address literal or a mailbox without a domain gives nothing.

public enum AuthorDomain {
    /// The domains (lowercased, in order) of every mailbox of every From field. Usually one; the
    /// caller decides what several (or none) mean.
    public static func domains(in fields: [HeaderField]) -> [String] {
        fields.filter { $0.lowercasedName == "from" }.flatMap { domains(ofValue: Array($0.raw[$0.valueStart...])) }
    }

    /// The domains of the mailboxes of one mailbox-list value (continuation lines and CRLFs allowed).
    public static func domains(ofValue value: [UInt8]) -> [String] {
        // First pass: the value without comments and with quoted strings reduced to a placeholder,
        // so that '<', '>', ',', ':', ';' and '@' inside them are not taken for syntax.
        var plain: [UInt8] = []
        var i = 0
        var depth = 0
        var quoted = false
        while i < value.count {
            let b = value[i]
            if b == 0x5C && (quoted || depth > 0) {  // quoted-pair
                i += 2
                continue
            }
            if quoted {
                if b == 0x22 { quoted = false }
            } else if depth > 0 {
                if b == 0x28 { depth += 1 } else if b == 0x29 { depth -= 1 }
            } else if b == 0x22 {
                quoted = true
                plain.append(0x71)  // a word stands for the quoted string
            } else if b == 0x28 {
                depth = 1
                plain.append(sp)
            } else {
                plain.append(b)
            }
            i += 1
        }
        // Second pass: mailboxes are separated by ',' (and a group's "name:" and ";" are dropped).
        var out: [String] = []
        for var part in plain.split(separator: 0x2C, omittingEmptySubsequences: true) {
            if let colon = part.firstIndex(of: 0x3A), !part[..<colon].contains(0x3C) {
                part = part[(colon + 1)...]  // group display name
            }
            if let semicolon = part.firstIndex(of: 0x3B) { part = part[..<semicolon] }
            var spec = part
            if let open = part.lastIndex(of: 0x3C) {
                guard let close = part[open...].firstIndex(of: 0x3E) else { continue }
                spec = part[(open + 1)..<close]
            }
            guard let at = spec.lastIndex(of: 0x40) else { continue }
            let domain = spec[(at + 1)...].filter { !isWSP($0) && $0 != cr && $0 != lf }
            guard !domain.isEmpty, domain.first != 0x5B else { continue }  // none, or an address literal
            var name = asciiLowercased(String(decoding: domain, as: UTF8.self))
            if name.hasSuffix(".") { name.removeLast() }
            guard !name.isEmpty else { continue }
            out.append(name)
        }
        return out
    }
}
