// JSON that is safe to `cat` on a terminal: besides what RFC 8259 requires (JSONEncoder escapes
// C0 controls, '"' and '\'), DEL, the C1 controls U+0080-U+009F (0x9B is CSI on many terminals) and
// invisible formatting (bidi overrides, zero-width characters, BOM, U+2028/U+2029: isInvisibleFormatting)
// are written as \uXXXX. A queued message's sender, HELO and replies are client text; the admin API's
// JSON and `tern queue ... --json` use this, as the JSON log format does for its strings.

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
