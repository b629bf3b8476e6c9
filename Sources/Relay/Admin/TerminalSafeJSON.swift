// JSON that is safe to `cat` on a terminal: besides what RFC 8259 requires (JSONEncoder escapes
// C0 controls, '"' and '\'), DEL, the C1 controls U+0080-U+009F (0x9B is CSI on many terminals) and
// invisible formatting (bidi overrides, zero-width characters, BOM, U+2028/U+2029: isInvisibleFormatting)
// are written as \uXXXX. A queued message's sender, HELO and replies are client text; the admin API's
// JSON and `tern queue ... --json` use this, as the JSON log format does for its strings.

import Foundation

/// `json` (valid UTF-8 JSON text) with DEL, C1 controls and invisible formatting written as \uXXXX
/// escapes. These code points are never part of JSON's syntax, so they only occur inside strings, where
/// the escape means the same character. Linear in the input.
public func terminalSafeJSON(_ json: [UInt8]) -> [UInt8] {
    let hidden = TernLogHandler.escapingHiddenCharacters(json: json)
    guard hidden.contains(0x7F) else { return hidden }
    var out: [UInt8] = []
    out.reserveCapacity(hidden.count + 16)
    for b in hidden {
        if b == 0x7F { out += Array("\\u007f".utf8) } else { out.append(b) }
    }
    return out
}

extension HTTPResponse {
    /// A JSON answer (keys sorted, terminal-safe) with its status's reason phrase: the admin endpoint's
    /// and the injection API's.
    static func json<T: Encodable>(_ value: T, status: Int = 200) -> HTTPResponse {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        // Client text (HELO, sender, replies) must not reach an operator's terminal raw.
        let body = (try? encoder.encode(value)).map { terminalSafeJSON(Array($0)) + [10] } ?? Array("{}\n".utf8)
        return HTTPResponse(status: status, reason: reasonPhrase(status),
                            headers: [HTTPHeader("Content-Type", "application/json")], body: body)
    }

    static func reasonPhrase(_ status: Int) -> String {
        switch status {
        case 200: return "OK"
        case 202: return "Accepted"
        case 400: return "Bad Request"
        case 401: return "Unauthorized"
        case 403: return "Forbidden"
        case 404: return "Not Found"
        case 405: return "Method Not Allowed"
        case 408: return "Request Timeout"
        case 409: return "Conflict"
        case 413: return "Content Too Large"
        case 431: return "Request Header Fields Too Large"
        case 501: return "Not Implemented"
        case 503: return "Service Unavailable"
        case 505: return "HTTP Version Not Supported"
        default: return status >= 500 ? "Internal Server Error" : "Error"
        }
    }
}
