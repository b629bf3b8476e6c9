// ReceivedTrace.swift: reads the Received chain of a stored message and checks that it hangs together.
//
// Each MTA prepends one trace field (RFC 5321 §4.4, RFC 5322 §3.6.7):
//
//   Received: from HELO (RDNS [IP]) by HOST (software) with PROTOCOL id QUEUEID for <rcpt>; DATE
//
// The newest hop is on top. Reading the chain from the bottom up, each hop received the message from
// the one below it, so the `from` of a hop should name (by HELO, reverse DNS or address) the `by` of
// the hop before it, and dates should not go backwards. This is how a postmaster spots a forged
// header: a spammer can write any lines below his own hop, but not above it.
//
// Trust, as a postmaster reads a header: only the hops written by MTAs he trusts (his own, and the
// hosts he names) are facts. Walking down from the top, a trusted MTA's hop names its client; when
// that client is trusted too (named, or on loopback: the same machine), the hop below is also a fact.
// The first hop whose client is not trusted is the boundary: there the trusted MTA recorded the
// client's address and reverse DNS name, and the client's HELO name is only a claim. A HELO that
// disagrees with what the MTA recorded is flagged, naming the real sender; every hop below the
// boundary was written by that sender and is reported as unverified (it may be consistent and true,
// but nothing proves it).
//
// The clause grammar is lenient on purpose, to read what Postfix, Exim, Sendmail, Gmail, Exchange
// and Tern write: a clause's value is one word, words that follow it until the next keyword belong to
// it (Exchange writes "with Microsoft SMTP Server"), and comments (nested parentheses) attach to the
// clause they follow. The date is whatever follows the last ";" outside comments. Pure: no I/O, `now`
// is a parameter.

/// One Received field, parsed.
public struct ReceivedHop: Sendable, Equatable {
    /// The unfolded field value (after "Received:").
    public var raw: String
    /// The from-domain as written: the client's HELO name or an address literal.
    public var from: String?
    /// The comments after the from-domain, e.g. "localhost [127.0.0.1]" or "helo=client.example".
    public var fromComments: [String] = []
    /// The client's address, from an address literal in the from clause.
    public var fromIP: String?
    public var by: String?
    /// The comments after the by-domain, usually the software ("Postfix", "Exim 4.96").
    public var byComments: [String] = []
    public var via: String?
    /// The protocol (RFC 3848: SMTP, ESMTP, ESMTPS, ESMTPSA, UTF8SMTP, LMTP, ...), with any
    /// words that follow it.
    public var with: String?
    public var id: String?
    public var recipient: String?
    public var dateText: String?
    /// Seconds since the Unix epoch, when the date could be read.
    public var date: Int?
    /// What could not be read in this field.
    public var problems: [String] = []

    /// Names the sending host goes by in this hop's from clause: the HELO name, names in the comment
    /// (reverse DNS, Exim's helo=), and the address. Lowercased, without a trailing dot or brackets.
    public var fromIdentities: Set<String> {
        var names = Set<String>()
        if let from { names.insert(normalizedHost(from)) }
        if let fromIP { names.insert(normalizedHost(fromIP)) }
        for comment in fromComments {
            for word in commentWords(comment) {
                let lower = word.lowercased()
                if lower.hasPrefix("helo=") {
                    names.insert(normalizedHost(String(word.dropFirst(5))))
                } else if looksLikeHost(word) {
                    names.insert(normalizedHost(word))
                }
            }
        }
        names.remove("")
        return names
    }

    /// The name the client gave in HELO/EHLO, as this hop recorded it: Exim's "helo=NAME" and
    /// qmail's "(HELO NAME)" in the comment (where the from-domain is the reverse DNS name), else the
    /// from-domain itself (Postfix, Sendmail, Tern: "from HELO (RDNS [IP])").
    public var heloName: String? {
        for comment in fromComments {
            let words = commentWords(comment)
            for (i, word) in words.enumerated() {
                if word.lowercased().hasPrefix("helo=") { return String(word.dropFirst(5)) }
                if word.uppercased() == "HELO", i + 1 < words.count { return words[i + 1] }
            }
        }
        return from
    }

    /// The client's reverse DNS name as the receiving MTA looked it up: the host name beside the
    /// address in the from comment ("(turmeric.com [104.128.23.115])"), or Exim's and qmail's
    /// from-domain when the HELO name is in the comment. Nil when the MTA found none ("unknown").
    public var reverseName: String? {
        let heloInComment = fromComments.contains { comment in
            let words = commentWords(comment)
            return words.contains { $0.lowercased().hasPrefix("helo=") || $0.uppercased() == "HELO" }
        }
        if heloInComment {
            guard let from, addressIn(from) == nil, looksLikeHost(from) else { return nil }
            return from
        }
        // Only the comment that holds the address: another comment may carry words with dots
        // ("using TLSv1.3 with cipher ...").
        guard let comment = fromComments.first(where: { addressInComment($0) != nil }) else { return nil }
        return commentWords(comment).first { word in
            addressIn(word) == nil && !word.hasPrefix("[") && looksLikeHost(word)
        }
    }

    /// The client as the receiving MTA recorded it: "turmeric.com [104.128.23.115]", the address
    /// alone, or the HELO name when nothing else was recorded.
    public var clientAsRecorded: String? {
        switch (reverseName, fromIP) {
        case let (name?, ip?): return "\(name) [\(ip)]"
        case let (name?, nil): return name
        case let (nil, ip?): return heloName.map { "[\(ip)] (HELO \($0))" } ?? "[\(ip)]"
        case (nil, nil): return heloName
        }
    }

    /// The HELO name contradicts what the receiving MTA recorded: an address literal that is not
    /// the client's address, or a name that is not the client's reverse DNS name. Without a reverse
    /// name a HELO name cannot be checked and is not held against the client.
    var heloDisagrees: Bool {
        guard let helo = heloName.map(normalizedHost), !helo.isEmpty else { return false }
        if addressIn(heloName!) != nil {
            guard let ip = fromIP else { return false }
            return helo != normalizedHost(ip)
        }
        guard let reverse = reverseName else { return false }
        return helo != normalizedHost(reverse)
    }

    /// The client is one of `trusted` (by its reverse name or address, never by its HELO name, which
    /// it chose), on loopback (the same machine), or not a network client at all (no from clause:
    /// a local hand-over).
    func clientIsTrusted(_ trusted: Set<String>) -> Bool {
        if from == nil { return true }
        if let ip = fromIP {
            if isLoopback(ip) || trusted.contains(normalizedHost(ip)) { return true }
        }
        if let name = reverseName, trusted.contains(normalizedHost(name)) { return true }
        return false
    }
}

/// Something in the chain that looks forged or broken. `hop` counts from 1 at the oldest (bottom) field.
public struct TraceFinding: Sendable, Equatable, CustomStringConvertible {
    public enum Kind: String, Sendable {
        case unparsable        // a field, or part of it, could not be read
        case brokenChain       // from does not match the by of the hop before
        case dateBackwards     // older than the hop before it
        case dateInFuture
        case notedByMTA        // the receiving MTA said so itself ("may be forged")
        case forgedHelo        // at the first untrusted hop: HELO disagrees with what the trusted MTA recorded
    }
    public var hop: Int
    public var kind: Kind
    public var message: String

    public var description: String { "hop \(hop): \(message)" }
}

public struct ReceivedTrace: Sendable, Equatable {
    /// Oldest first: hops[0] is the bottom Received field, the first MTA the message passed through.
    public var hops: [ReceivedHop]
    public var findings: [TraceFinding]
    /// The first untrusted hop (0-based): the topmost hop whose writer is trusted and whose client
    /// is not. Nil when every hop's client is trusted, or there are no hops.
    public var boundary: Int?
    /// The client of the boundary hop as the trusted MTA recorded it: who sent the message, and so
    /// who wrote every hop below.
    public var sender: String?

    /// - Parameters:
    ///   - message: the message, or at least its header section (reading stops at the first empty
    ///     line). CRLF or bare LF line ends.
    ///   - now: seconds since the epoch, for dates in the future.
    ///   - allowedSkew: seconds a clock may be off before a date counts as backwards or in the future.
    ///   - trusted: hosts (names or addresses) whose hops are facts, besides the top hop's writer,
    ///     which is always trusted (the MTA that stored the message).
    public init(message: [UInt8], now: Int, allowedSkew: Int = 0, trusted: Set<String> = []) {
        let fields = receivedFields(of: message)
        hops = fields.reversed().map(parseReceived)
        findings = []
        let trustedNames = Set(trusted.map(normalizedHost))
        // Down from the top while each trusted writer's client is trusted too.
        var top = hops.count - 1
        while top >= 0 && hops[top].clientIsTrusted(trustedNames) { top -= 1 }
        if top >= 0 {
            boundary = top
            sender = hops[top].clientAsRecorded
        }
        for (index, hop) in hops.enumerated() {
            let number = index + 1
            for problem in hop.problems {
                findings.append(TraceFinding(hop: number, kind: .unparsable, message: problem))
            }
            if hop.fromComments.contains(where: { $0.lowercased().contains("may be forged") }) {
                findings.append(TraceFinding(hop: number, kind: .notedByMTA,
                                             message: "\(hop.by ?? "the receiving MTA") noted the client name may be forged"))
            }
            if let date = hop.date, date > now + allowedSkew {
                findings.append(TraceFinding(hop: number, kind: .dateInFuture,
                                             message: "date \(hop.dateText ?? "") is \(formatDelay(date - now)) in the future"))
            }
            if index == boundary, hop.heloDisagrees, let sender {
                findings.append(TraceFinding(hop: number, kind: .forgedHelo, message:
                    "HELO \(hop.heloName!), but \(hop.by ?? "the trusted MTA") recorded the client as \(sender): "
                    + "the message came from \(sender)"))
            }
            guard index > 0 else { continue }
            let previous = hops[index - 1]
            // A hop without a from clause (Gmail's internal "Received: by 2002:..." hops) names no
            // client, so there is nothing to compare.
            if let by = previous.by, hop.from != nil, !hop.receivedFrom(by: by) {
                let comments = hop.fromComments.map { " (\($0))" }.joined()
                findings.append(TraceFinding(hop: number, kind: .brokenChain,
                                             message: "from \"\(hop.from!)\"\(comments) does not match by \"\(by)\" of hop \(index)"))
            }
            if let date = hop.date, let before = previous.date, date < before - allowedSkew {
                findings.append(TraceFinding(hop: number, kind: .dateBackwards,
                                             message: "date goes backwards: \(formatDelay(before - date)) before hop \(index)"))
            }
        }
    }

    /// Hop `index` (0-based) lies below the first untrusted hop: written by the sender, unverified.
    public func isUnverified(_ index: Int) -> Bool {
        boundary.map { index < $0 } ?? false
    }

    /// Seconds between hop `index` (0-based) and the one before it, when both dates are known.
    public func delay(ofHop index: Int) -> Int? {
        guard index > 0, let date = hops[index].date, let before = hops[index - 1].date else { return nil }
        return date - before
    }
}

extension ReceivedHop {
    /// Whether this hop's client is the host named `by` in the hop before it. A hand-over on the same
    /// machine over loopback (a content filter re-injecting mail) also counts.
    func receivedFrom(by: String) -> Bool {
        let name = normalizedHost(by)
        if fromIdentities.contains(name) { return true }
        if let ip = fromIP, isLoopback(ip), let mine = self.by, normalizedHost(mine) == name { return true }
        return false
    }
}

// MARK: - Finding the fields

/// The unfolded values of the Received fields, top first.
func receivedFields(of message: [UInt8]) -> [String] {
    var fields: [String] = []
    var current: [UInt8]?  // the Received field being unfolded
    var lineStart = 0
    var i = 0
    func finish() {
        if let c = current { fields.append(String(decoding: c, as: UTF8.self)) }
        current = nil
    }
    while lineStart < message.count {
        i = lineStart
        while i < message.count && message[i] != 0x0A { i += 1 }
        var end = i
        if end > lineStart && message[end - 1] == 0x0D { end -= 1 }
        let line = message[lineStart..<end]
        lineStart = i + 1
        if line.isEmpty { break }  // end of the header section
        if line.first == 0x20 || line.first == 0x09 {
            current?.append(0x20)
            current?.append(contentsOf: line.drop(while: { $0 == 0x20 || $0 == 0x09 }))
            continue
        }
        finish()
        let name = Array("received:".utf8)
        if line.count >= name.count,
           zip(line.prefix(name.count), name).allSatisfy({ ($0 | 0x20) == $1 || $0 == $1 }) {
            current = Array(line.dropFirst(name.count).drop(while: { $0 == 0x20 || $0 == 0x09 }))
        }
    }
    finish()
    return fields
}

// MARK: - Parsing one field

enum TraceToken: Equatable {
    case word(String)
    case comment(String)
    case semicolon
}

/// Words, comments (nested, with backslash escapes) and semicolons. Quoted strings and [literals] stay
/// inside one word. Returns nil when a parenthesis or quote is left open.
func traceTokens(_ text: String) -> [TraceToken]? {
    var tokens: [TraceToken] = []
    let chars = Array(text)
    var i = 0
    while i < chars.count {
        let c = chars[i]
        if c == " " || c == "\t" { i += 1; continue }
        if c == ";" { tokens.append(.semicolon); i += 1; continue }
        if c == "(" {
            var depth = 1
            var body = ""
            i += 1
            while i < chars.count && depth > 0 {
                let d = chars[i]
                if d == "\\" && i + 1 < chars.count { body.append(chars[i + 1]); i += 2; continue }
                if d == "(" { depth += 1 } else if d == ")" { depth -= 1; if depth == 0 { break } }
                body.append(d)
                i += 1
            }
            guard depth == 0 else { return nil }
            i += 1
            tokens.append(.comment(body))
            continue
        }
        if c == ")" { return nil }
        var word = ""
        while i < chars.count {
            let d = chars[i]
            if d == " " || d == "\t" || d == "(" || d == ")" || d == ";" { break }
            if d == "\"" {
                word.append(d)
                i += 1
                while i < chars.count && chars[i] != "\"" {
                    if chars[i] == "\\" && i + 1 < chars.count { word.append(chars[i]); i += 1 }
                    word.append(chars[i])
                    i += 1
                }
                guard i < chars.count else { return nil }
            }
            word.append(chars[i])
            i += 1
        }
        tokens.append(.word(word))
    }
    return tokens
}

func parseReceived(_ raw: String) -> ReceivedHop {
    var hop = ReceivedHop(raw: raw)
    guard let tokens = traceTokens(raw) else {
        hop.problems.append("cannot parse (unbalanced parentheses or quotes): \(abbreviated(raw))")
        return hop
    }
    // The date follows the last ";" outside comments.
    var clauseTokens = tokens
    if let semicolon = tokens.lastIndex(of: .semicolon) {
        clauseTokens = Array(tokens[..<semicolon])
        let dateWords = tokens[(semicolon + 1)...].compactMap { token -> String? in
            if case .word(let w) = token { return w }
            return nil
        }
        let text = dateWords.joined(separator: " ")
        hop.dateText = text
        switch parseRFC5322Date(text) {
        case .success(let seconds): hop.date = seconds
        case .failure(let why): hop.problems.append("cannot read the date \"\(text)\": \(why.reason)")
        }
    } else {
        hop.problems.append("no date (no \";\" in the field)")
    }

    var clause: String?  // the keyword whose value and comments are being read
    var valueSeen = false
    var stray: [String] = []
    for token in clauseTokens {
        switch token {
        case .semicolon:
            stray.append(";")
        case .comment(let text):
            switch clause {
            case "from": hop.fromComments.append(text)
            case "by": hop.byComments.append(text)
            default: break
            }
        case .word(let word):
            let keyword = word.lowercased()
            if ["from", "by", "via", "with", "id", "for"].contains(keyword) && (valueSeen || clause == nil) {
                clause = keyword
                valueSeen = false
                continue
            }
            guard let current = clause else {
                stray.append(word)
                continue
            }
            if !valueSeen {
                valueSeen = true
                switch current {
                case "from": hop.from = word
                case "by": hop.by = word
                case "via": hop.via = word
                case "with": hop.with = word
                case "id": hop.id = word
                default: hop.recipient = word
                }
            } else if current == "with" {
                hop.with! += " " + word
            }
            // Other extra words (Exim's "tls CIPHER" after a comment, say) are tolerated: no MTA
            // depends on them and they name nothing we check.
        }
    }
    if let from = hop.from {
        // The address the receiving MTA recorded (in the comment) before an address literal in the
        // from-domain, which is the client's HELO in most MTAs' form, its claim.
        hop.fromIP = hop.fromComments.lazy.compactMap(addressInComment).first ?? addressIn(from)
    }
    if hop.from == nil && hop.by == nil && hop.with == nil {
        // Nothing of a trace field: one finding says so, rather than one per missing part.
        hop.problems = ["cannot parse \"\(abbreviated(raw))\": no from, by or with clause"]
        return hop
    }
    if !stray.isEmpty {
        hop.problems.append("cannot parse \"\(abbreviated(stray.joined(separator: " ")))\" before the first clause")
    }
    if hop.by == nil { hop.problems.append("no by clause") }
    return hop
}

private func abbreviated(_ s: String) -> String {
    s.count <= 80 ? s : String(s.prefix(77)) + "..."
}

// MARK: - Names and addresses

/// "Mail.Example.", "[192.0.2.1]", "[IPv6:2001:db8::1]" → "mail.example", "192.0.2.1", "2001:db8::1".
func normalizedHost(_ text: String) -> String {
    var s = Substring(text)
    if s.hasPrefix("[") {
        s = s.dropFirst()
        if let close = s.firstIndex(of: "]") { s = s[..<close] }
        if s.lowercased().hasPrefix("ipv6:") { s = s.dropFirst(5) }
    }
    if s.hasSuffix(".") { s = s.dropLast() }
    return s.lowercased()
}

/// The address in a literal "[192.0.2.1]", "[IPv6:...]" or "[192.0.2.1]:port", or a bare address.
func addressIn(_ word: String) -> String? {
    var s = Substring(word)
    if s.hasPrefix("[") {
        guard let close = s.firstIndex(of: "]") else { return nil }
        s = s[s.index(after: s.startIndex)..<close]
        if s.lowercased().hasPrefix("ipv6:") { s = s.dropFirst(5) }
    }
    let text = String(s)
    return isIPv4(text) || isIPv6(text) ? text : nil
}

/// The first address in a comment: "localhost [127.0.0.1]", "[192.0.2.1]:4321 helo=x", "2603:10b6::14".
func addressInComment(_ comment: String) -> String? {
    commentWords(comment).lazy.compactMap(addressIn).first
}

func commentWords(_ comment: String) -> [String] {
    comment.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "," || $0 == "(" || $0 == ")" }).map(String.init)
}

/// A host name worth comparing: has a dot or is "localhost"; not a bare keyword or "unknown".
func looksLikeHost(_ word: String) -> Bool {
    let w = normalizedHost(word)
    if w == "localhost" { return true }
    guard w.contains("."), !w.contains("@"), !w.contains("=") else { return false }
    return w.allSatisfy { $0.isLetter || $0.isNumber || $0 == "." || $0 == "-" || $0 == "_" || $0 == ":" }
}

func isIPv4(_ s: String) -> Bool {
    let parts = s.split(separator: ".", omittingEmptySubsequences: false)
    return parts.count == 4 && parts.allSatisfy { p in
        (1...3).contains(p.count) && (asciiNumber(p).map { $0 <= 255 } ?? false)
    }
}

func isIPv6(_ s: String) -> Bool {
    let chars = Array(s)
    guard chars.count >= 2, chars.count <= 45, chars.contains(":") else { return false }
    var compressions = 0
    for i in 1..<chars.count where chars[i] == ":" && chars[i - 1] == ":" { compressions += 1 }
    guard compressions <= 1, !s.contains(":::") else { return false }
    var groups = s.split(separator: ":", omittingEmptySubsequences: true)
    var needed = 8
    if let last = groups.last, last.contains(".") {
        guard isIPv4(String(last)) else { return false }
        groups.removeLast()
        needed = 6
    }
    guard groups.allSatisfy({ $0.count <= 4 && $0.allSatisfy(\.isHexDigit) }) else { return false }
    if s.hasPrefix(":") && !s.hasPrefix("::") { return false }
    if s.hasSuffix(":") && !s.hasSuffix("::") { return false }
    return compressions == 1 ? groups.count < needed : groups.count == needed
}

func isLoopback(_ ip: String) -> Bool {
    ip.hasPrefix("127.") || ip == "::1"
}

// MARK: - Dates (RFC 5322 §3.3, with the obsolete forms of §4.3)

public struct DateError: Error, Equatable, Sendable {
    public var reason: String
}

/// "Thu, 26 Nov 2026 16:46:14 +0000", "26 Nov 26 16:46 GMT", "Thu, 26 Nov 2026 08:00:00 -0800 (PST)"
/// → seconds since the epoch. The day of the week, when given, must be the right one.
public func parseRFC5322Date(_ text: String) -> Result<Int, DateError> {
    func fail(_ why: String) -> Result<Int, DateError> { .failure(DateError(reason: why)) }
    // Comments ("(PST)") carry nothing we need.
    var plain = ""
    var depth = 0
    for c in text {
        if c == "(" { depth += 1; continue }
        if c == ")" { depth = max(0, depth - 1); continue }
        if depth == 0 { plain.append(c) }
    }
    var words = plain.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "," }).map(String.init)
    guard !words.isEmpty else { return fail("empty") }
    let weekdays = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]
    var weekday: Int?
    if let w = weekdays.firstIndex(where: { $0.lowercased() == words[0].lowercased() }) {
        weekday = w
        words.removeFirst()
    }
    guard words.count >= 4 else { return fail("expected day month year time zone") }
    let months = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
    guard words[0].count <= 2, let day = asciiNumber(words[0]) else { return fail("bad day \"\(words[0])\"") }
    guard let monthIndex = months.firstIndex(of: words[1].lowercased()) else { return fail("bad month \"\(words[1])\"") }
    // Two or three digits are RFC 5322's obsolete years; more than four is nobody's (and would overflow).
    guard (2...4).contains(words[2].count), var year = asciiNumber(words[2]) else {
        return fail("bad year \"\(words[2])\"")
    }
    if words[2].count == 2 { year += year < 50 ? 2000 : 1900 } else if words[2].count == 3 { year += 1900 }
    let timeParts = words[3].split(separator: ":", omittingEmptySubsequences: false)
    let clock = timeParts.map { $0.count == 2 ? asciiNumber($0) : nil }
    guard (2...3).contains(clock.count), let hour = clock[0], let minute = clock[1],
          let second = clock.count == 3 ? clock[2] : 0 else {
        return fail("bad time \"\(words[3])\"")
    }
    guard hour < 24, minute < 60, second <= 60 else { return fail("bad time \"\(words[3])\"") }
    let month = monthIndex + 1
    guard day >= 1, day <= daysInMonth(month, year) else { return fail("no day \(day) in \(words[1]) \(year)") }
    guard words.count >= 5 else { return fail("no time zone") }
    guard let offset = zoneOffset(words[4]) else { return fail("bad time zone \"\(words[4])\"") }
    guard words.count == 5 else { return fail("unexpected \"\(words[5...].joined(separator: " "))\" after the zone") }
    let days = daysFromCivil(year, month, day)
    if let weekday, ((days % 7) + 11) % 7 != weekday {
        return fail("\(words[0]) \(words[1]) \(year) is not a \(weekdays[weekday])")
    }
    return .success(days * 86400 + hour * 3600 + minute * 60 + second - offset)
}

/// "+0100" → 3600; the obsolete names of RFC 5322 §4.3. Military letters count as +0000, as the RFC says.
func zoneOffset(_ zone: String) -> Int? {
    if zone.count == 5, let sign = zone.first, sign == "+" || sign == "-",
       let hh = asciiNumber(zone.dropFirst().prefix(2)), let mm = asciiNumber(zone.suffix(2)) {
        guard hh < 24, mm < 60 else { return nil }
        return (sign == "-" ? -1 : 1) * (hh * 3600 + mm * 60)
    }
    let named = ["ut": 0, "utc": 0, "gmt": 0, "z": 0, "est": -5, "edt": -4, "cst": -6, "cdt": -5,
                 "mst": -7, "mdt": -6, "pst": -8, "pdt": -7]
    if let hours = named[zone.lowercased()] { return hours * 3600 }
    if zone.count == 1, zone.first!.isLetter, zone.first!.isASCII { return 0 }
    return nil
}

/// "0042" → 42. ASCII digits only: `isNumber` also holds for "٠" or "½", which `Int()` then refuses,
/// and a sign or an empty string is no number in a date or an address.
func asciiNumber<S: StringProtocol>(_ text: S) -> Int? {
    guard !text.isEmpty, text.utf8.count <= 18, text.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) else { return nil }
    return text.utf8.reduce(0) { $0 * 10 + Int($1 - 0x30) }
}

func daysInMonth(_ month: Int, _ year: Int) -> Int {
    switch month {
    case 2: return (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 ? 29 : 28
    case 4, 6, 9, 11: return 30
    default: return 31
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil).
func daysFromCivil(_ y0: Int, _ m: Int, _ d: Int) -> Int {
    let y = m <= 2 ? y0 - 1 : y0
    let era = (y >= 0 ? y : y - 399) / 400
    let yoe = y - era * 400
    let doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
    return era * 146_097 + doe - 719_468
}

/// A scalar that draws nothing yet changes what a reader sees around it: Unicode's format characters
/// (general category Cf: bidi overrides and isolates U+202A-202E and U+2066-2069, zero-width U+200B-200F,
/// BOM U+FEFF, soft hyphen U+00AD, tags...) and the line and paragraph separators U+2028 and U+2029.
/// "\u{202E}gpj.exe" shows as "exe.jpg"; U+2028 ends a line for some viewers and parsers.
public func isInvisibleFormatting(_ scalar: Unicode.Scalar) -> Bool {
    guard scalar.value >= 0xAD else { return false }  // none below the soft hyphen: ASCII stays cheap
    switch scalar.properties.generalCategory {
    case .format, .lineSeparator, .paragraphSeparator: return true
    default: return false
    }
}

/// Text from a message made safe for a terminal: control characters (C0, DEL and C1, which a
/// terminal may act on) and invisible formatting (isInvisibleFormatting) written as \u{1B}, \u{202E};
/// everything else as it is.
public func terminalSafe(_ text: String) -> String {
    var out = ""
    out.unicodeScalars.reserveCapacity(text.unicodeScalars.count)
    for scalar in text.unicodeScalars {
        let v = scalar.value
        if v < 0x20 || (0x7F...0x9F).contains(v) || isInvisibleFormatting(scalar) {
            out += "\\u{" + String(v, radix: 16, uppercase: true) + "}"
        } else {
            out.unicodeScalars.append(scalar)
        }
    }
    return out
}

/// A stored message made safe for a terminal (`tern queue show --message` on a tty): as terminalSafe,
/// but tabs, line feeds and a CR before LF stay (the message keeps its lines), and bytes that are not
/// UTF-8 show as \xFF, so that nothing the sender wrote is acted on or hidden by the terminal.
public func terminalSafeMessage(_ bytes: [UInt8]) -> String {
    var out = ""
    out.unicodeScalars.reserveCapacity(bytes.count)
    var parser = Unicode.UTF8.ForwardParser()
    var input = bytes.makeIterator()
    var position = 0
    while true {
        switch parser.parseScalar(from: &input) {
        case .valid(let encoded):
            let scalar = Unicode.UTF8.decode(encoded)
            let v = scalar.value
            position += encoded.count
            let kept = v == 0x09 || v == 0x0A || (v == 0x0D && position < bytes.count && bytes[position] == 0x0A)
            if !kept && (v < 0x20 || (0x7F...0x9F).contains(v) || isInvisibleFormatting(scalar)) {
                out += "\\u{" + String(v, radix: 16, uppercase: true) + "}"
            } else {
                out.unicodeScalars.append(scalar)
            }
        case .error(let length):
            for b in bytes[position..<(position + length)] {
                out += "\\x" + (b < 0x10 ? "0" : "") + String(b, radix: 16, uppercase: true)
            }
            position += length
        case .emptyInput:
            return out
        }
    }
}

/// 0 → "0s", 75 → "1m15s", 7260 → "2h01m", 90000 → "1d01h".
public func formatDelay(_ seconds: Int) -> String {
    let s = abs(seconds)
    let sign = seconds < 0 ? "-" : ""
    func two(_ v: Int) -> String { v < 10 ? "0\(v)" : "\(v)" }
    if s < 60 { return "\(sign)\(s)s" }
    if s < 3600 { return "\(sign)\(s / 60)m\(two(s % 60))s" }
    if s < 86400 { return "\(sign)\(s / 3600)h\(two(s / 60 % 60))m" }
    return "\(sign)\(s / 86400)d\(two(s / 3600 % 24))h"
}
