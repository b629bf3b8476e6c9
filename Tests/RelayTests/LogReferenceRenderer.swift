// The String-building log renderer as it was before LogLine.swift, kept verbatim as the reference
// that the byte renderer must match byte for byte (LogLineTests).

import Logging
import SMTPProtocol
@testable import Relay
#if canImport(Glibc)
import Glibc
#endif

enum StringLogRenderer {
    /// One line, newline included; `metadata` is the handler's and the event's, merged.
    static func render(format: LogFormat, time: (seconds: Int, millis: Int), level: Logger.Level, message: String,
                       metadata: Logger.Metadata) -> String {
        var fields = metadata
        var text = message
        var qid: String?
        if case .string(let id)? = fields.removeValue(forKey: "qid") { qid = id }
        else if let id = fields.removeValue(forKey: "qid") { qid = id.description }
        let prefixed = leadingQueueID(message)
        if qid == nil { qid = prefixed }
        let ts = timestamp(time)
        switch format {
        case .plain:
            var line = "\(ts) \(level) "
            if let qid, prefixed != qid { line += "\(qid): " }
            line += oneLine(text)
            for key in fields.keys.sorted() { line += " \(key)=\(oneLine(fields[key]!.description))" }
            return line + "\n"
        case .json:
            if let qid, prefixed == qid { text = String(text.dropFirst(qid.count + 2)) }
            var line = "{\"ts\":\"\(ts)\",\"level\":\"\(level)\""
            if let qid { line += ",\"qid\":" + jsonString(qid) }
            line += ",\"msg\":" + jsonString(text)
            for key in fields.keys.sorted() where !["ts", "level", "qid", "msg"].contains(key) {
                line += "," + jsonString(key) + ":" + jsonValue(fields[key]!)
            }
            return line + "}\n"
        }
    }

    /// Changed since (issue 14): C1 controls and invisible formatting are "?" as well.
    static func oneLine(_ text: String) -> String {
        func hidden(_ s: Unicode.Scalar) -> Bool { s.value < 0x20 || (0x7F...0x9F).contains(s.value) || isInvisibleFormatting(s) }
        guard text.unicodeScalars.contains(where: hidden) else { return text }
        return String(String.UnicodeScalarView(text.unicodeScalars.map { hidden($0) ? "?" : $0 }))
    }

    static func leadingQueueID(_ message: String) -> String? {
        let bytes = message.utf8
        guard bytes.count >= 16 else { return nil }
        var i = bytes.startIndex
        for _ in 0..<14 {
            let b = bytes[i]
            guard (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x46) else { return nil }
            i = bytes.index(after: i)
        }
        guard bytes[i] == UInt8(ascii: ":"), bytes[bytes.index(after: i)] == UInt8(ascii: " ") else { return nil }
        return String(message.prefix(14))
    }

    static func timestamp(_ time: (seconds: Int, millis: Int)) -> String {
        var t = time_t(time.seconds)
        var parts = tm()
        gmtime_r(&t, &parts)
        func pad(_ v: Int32, _ width: Int) -> String {
            let s = String(v)
            return s.count >= width ? s : String(repeating: "0", count: width - s.count) + s
        }
        return "\(pad(parts.tm_year + 1900, 4))-\(pad(parts.tm_mon + 1, 2))-\(pad(parts.tm_mday, 2))T"
            + "\(pad(parts.tm_hour, 2)):\(pad(parts.tm_min, 2)):\(pad(parts.tm_sec, 2)).\(pad(Int32(time.millis), 3))Z"
    }

    static func jsonValue(_ value: Logger.Metadata.Value) -> String {
        switch value {
        case .string(let s): return jsonString(s)
        case .stringConvertible(let c): return jsonString(c.description)
        case .array(let items): return "[" + items.map(jsonValue).joined(separator: ",") + "]"
        case .dictionary(let d):
            return "{" + d.keys.sorted().map { jsonString($0) + ":" + jsonValue(d[$0]!) }.joined(separator: ",") + "}"
        }
    }

    /// TOMLWriter.quoted's escapes, and since issue 14 C1 controls and invisible formatting as \uXXXX
    /// (UTF-16: a surrogate pair past U+FFFF).
    static func jsonString(_ s: String) -> String {
        var out = ""
        for u in TOMLWriter.quoted(s).unicodeScalars {
            if (0x80...0x9F).contains(u.value) || isInvisibleFormatting(u) {
                for unit in String(u).utf16 {
                    let hex = String(unit, radix: 16, uppercase: true)
                    out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                }
            } else {
                out.unicodeScalars.append(u)
            }
        }
        return out
    }
}
