// JSON that is safe to `cat` on a terminal: besides what RFC 8259 requires (JSONEncoder escapes
// C0 controls, '"' and '\'), DEL, the C1 controls U+0080-U+009F (0x9B is CSI on many terminals) and
// U+2028/U+2029 (line breaks to JavaScript and some viewers) are written as \uXXXX. A queued message's
// sender, HELO and replies are client text; the admin API's JSON and `tern queue ... --json` use this.

/// `json` (valid UTF-8 JSON text) with DEL, C1 controls, U+2028 and U+2029 written as \uXXXX escapes.
/// These code points are never part of JSON's syntax, so they only occur inside strings, where the
/// escape means the same character. Linear in the input.
public func terminalSafeJSON(_ json: [UInt8]) -> [UInt8] {
    func escape(_ value: Int, into out: inout [UInt8]) {
        let hex = Array("0123456789abcdef".utf8)
        out += Array("\\u".utf8)
        for shift in stride(from: 12, through: 0, by: -4) { out.append(hex[(value >> shift) & 0xF]) }
    }
    var out: [UInt8] = []
    out.reserveCapacity(json.count)
    var i = 0
    while i < json.count {
        let b = json[i]
        if b == 0x7F {
            escape(0x7F, into: &out)
            i += 1
        } else if b == 0xC2, i + 1 < json.count, (0x80...0x9F).contains(json[i + 1]) {
            escape(Int(json[i + 1]), into: &out)  // U+0080-U+009F is C2 80-C2 9F
            i += 2
        } else if b == 0xE2, i + 2 < json.count, json[i + 1] == 0x80, json[i + 2] == 0xA8 || json[i + 2] == 0xA9 {
            escape(0x2000 | Int(json[i + 2] - 0x80), into: &out)  // E2 80 A8/A9 is U+2028/U+2029
            i += 3
        } else {
            out.append(b)
            i += 1
        }
    }
    return out
}
