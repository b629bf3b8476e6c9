// Message data for the wire (RFC 5321 §4.1.1.4, §4.5.2), the client's half of DataDecoder.
//
// The spool holds the message as CRLF lines, not dot-stuffed, without the final ".". Whatever it
// holds, what goes out has only CRLF line ends: a bare CR or a bare LF becomes CRLF, so a next hop can
// never read a line end that we did not mean (SMTP smuggling), and a lone "." inside the message can
// never end DATA early because every line that starts with "." gets a second one.

/// Makes message bytes safe for the wire: every line ends in CRLF (a bare LF or bare CR becomes CRLF),
/// leading dots doubled (§4.5.2), a final CRLF added if missing, then ".\r\n". Never emits a bare CR or LF.
public func encodeOutboundData(_ message: [UInt8]) -> [UInt8] {
    var out: [UInt8] = []
    // Stuffed dots and repaired line ends are rare: a little headroom avoids most regrowth.
    out.reserveCapacity(message.count + message.count / 64 + 8)
    message.withUnsafeBufferPointer { m in
        let n = m.count
        var lineStart = true
        var i = 0
        while i < n {
            let b = m[i]
            if b == 13 || b == 10 {
                // CRLF, a bare CR or a bare LF: each is one line end.
                if b == 13 && i + 1 < n && m[i + 1] == 10 { i += 1 }
                out.append(13)
                out.append(10)
                lineStart = true
            } else {
                if lineStart && b == UInt8(ascii: ".") { out.append(b) }
                out.append(b)
                lineStart = false
            }
            i += 1
        }
        if !lineStart {
            out.append(13)
            out.append(10)
        }
    }
    out.append(UInt8(ascii: "."))
    out.append(13)
    out.append(10)
    return out
}
