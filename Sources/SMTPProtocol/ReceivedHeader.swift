// The trace field every hop prepends (RFC 5321 §4.4), in the form Postfix and most MTAs write:
//
//   Received: from HELO (RDNS [IP])
//   	by HOSTNAME (Tern) with ESMTP id QUEUEID
//   	for <rcpt>; Thu, 26 Nov 2026 16:46:14 +0000
//
// Under TLS a comment line "(using TLSv1.3 with cipher … (256/256 bits))" follows the "from" part,
// as Postfix writes it.
//
// "for" appears only with exactly one recipient, so that a message to many people does not
// disclose the others' addresses to each of them.

public struct ReceivedHeader: Sendable {
    public var helo: String
    public var reverseName: String?
    public var clientIP: String
    public var hostname: String
    /// "SMTP", "ESMTP", "UTF8SMTP" … (RFC 3848, RFC 6531 §3.7.3)
    public var protocolName: String
    public var queueID: String
    public var recipients: [String]
    /// Seconds since the Unix epoch.
    public var time: Int
    /// The TLS session ("TLSv1.3 with cipher …"), nil in the clear.
    public var tls: String?

    public init(helo: String, reverseName: String?, clientIP: String, hostname: String, protocolName: String,
                queueID: String, recipients: [String], time: Int, tls: String? = nil) {
        self.helo = helo
        self.reverseName = reverseName
        self.clientIP = clientIP
        self.hostname = hostname
        self.protocolName = protocolName
        self.queueID = queueID
        self.recipients = recipients
        self.time = time
        self.tls = tls
    }

    /// The address literal for the client: "[192.0.2.1]" or "[IPv6:2001:db8::1]" (RFC 5321 §4.1.3).
    public static func addressLiteral(_ ip: String) -> String {
        ip.contains(":") ? "[IPv6:\(ip)]" : "[\(ip)]"
    }

    public var bytes: [UInt8] {
        var s = "Received: from \(sanitized(helo)) (\(reverseName.map(sanitized) ?? "unknown") "
        s += ReceivedHeader.addressLiteral(clientIP) + ")\r\n"
        if let tls { s += "\t(using \(sanitized(tls)))\r\n" }
        s += "\tby \(hostname) (Tern) with \(protocolName) id \(queueID)"
        if recipients.count == 1 {
            s += "\r\n\tfor <\(sanitized(recipients[0]))>; "
        } else {
            s += "; "
        }
        s += rfc5322Date(time) + "\r\n"
        return Array(s.utf8)
    }
}

/// Keeps a client-supplied string from breaking the header: no control characters, no parentheses
/// that would end our comment early.
func sanitized(_ s: String) -> String {
    var out = String.UnicodeScalarView()
    for u in s.unicodeScalars {
        if u.value < 32 || u.value == 127 { out.append("?") } else { out.append(u) }
    }
    return String(out)
}

/// RFC 5322 §3.3 date-time in UTC, e.g. "Thu, 26 Nov 2026 16:46:14 +0000". No Foundation formatter:
/// it runs for every message.
public func rfc5322Date(_ epochSeconds: Int) -> String {
    let days = epochSeconds >= 0 ? epochSeconds / 86400 : (epochSeconds - 86399) / 86400
    let secondsOfDay = epochSeconds - days * 86400
    let (year, month, day) = civilFromDays(days)
    let weekday = ((days % 7) + 11) % 7  // 1970-01-01 was a Thursday (index 4 with Sunday = 0)
    let weekdays = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]
    let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
    func two(_ v: Int) -> String { v < 10 ? "0\(v)" : "\(v)" }
    return "\(weekdays[weekday]), \(day) \(months[month - 1]) \(year) "
        + "\(two(secondsOfDay / 3600)):\(two(secondsOfDay / 60 % 60)):\(two(secondsOfDay % 60)) +0000"
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's civil_from_days).
func civilFromDays(_ z0: Int) -> (Int, Int, Int) {
    let z = z0 + 719_468
    let era = (z >= 0 ? z : z - 146_096) / 146_097
    let doe = z - era * 146_097
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365
    let y = yoe + era * 400
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
    let mp = (5 * doy + 2) / 153
    let d = doy - (153 * mp + 2) / 5 + 1
    let m = mp < 10 ? mp + 3 : mp - 9
    return (m <= 2 ? y + 1 : y, m, d)
}
