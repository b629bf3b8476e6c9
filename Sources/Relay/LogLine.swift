// LogLine.swift: a log line rendered straight into bytes, the way LogOutput.swift describes it.
//
// A relayed message costs about nine lines, so the renderer avoids what made it show in profiles:
// no String built per piece, no merged and sorted metadata dictionary for the usual zero, one or two
// fields, and the timestamp's date and time of day formatted once per second (LogClock), not per line.
// The output is byte for byte what the String-building renderer wrote (RelayTests compares the two).

import Logging
import SMTPProtocol  // isInvisibleFormatting

#if canImport(Glibc)
import Glibc
#endif

/// The "2026-11-26T16:46:14." part of the last second a line was stamped with. Not shared: each
/// holder (LogBuffer, under its mutex, or one line's renderer) keeps its own.
struct LogClock {
    private var second = Int.min
    private var prefix: [UInt8] = []

    init() {}

    /// RFC 3339 in UTC with milliseconds: "2026-11-26T16:46:14.123Z".
    mutating func append(_ time: (seconds: Int, millis: Int), to out: inout [UInt8]) {
        if time.seconds != second {
            second = time.seconds
            prefix = Self.datePrefix(time.seconds)
        }
        out.append(contentsOf: prefix)
        let ms = time.millis
        if ms >= 0 && ms < 1000 {
            out.append(0x30 &+ UInt8(truncatingIfNeeded: ms / 100))
            out.append(0x30 &+ UInt8(truncatingIfNeeded: ms / 10 % 10))
            out.append(0x30 &+ UInt8(truncatingIfNeeded: ms % 10))
        } else {
            Self.appendPadded(ms, width: 3, to: &out)
        }
        out.append(UInt8(ascii: "Z"))
    }

    /// "YYYY-MM-DDTHH:MM:SS." with each field zero-padded to its width (a wider year stays whole).
    static func datePrefix(_ seconds: Int) -> [UInt8] {
        var t = time_t(seconds)
        var parts = tm()
        gmtime_r(&t, &parts)
        var out: [UInt8] = []
        out.reserveCapacity(24)
        appendPadded(Int(parts.tm_year) + 1900, width: 4, to: &out)
        out.append(UInt8(ascii: "-"))
        appendPadded(Int(parts.tm_mon) + 1, width: 2, to: &out)
        out.append(UInt8(ascii: "-"))
        appendPadded(Int(parts.tm_mday), width: 2, to: &out)
        out.append(UInt8(ascii: "T"))
        appendPadded(Int(parts.tm_hour), width: 2, to: &out)
        out.append(UInt8(ascii: ":"))
        appendPadded(Int(parts.tm_min), width: 2, to: &out)
        out.append(UInt8(ascii: ":"))
        appendPadded(Int(parts.tm_sec), width: 2, to: &out)
        out.append(UInt8(ascii: "."))
        return out
    }

    /// The decimal digits (and sign) of `value`, with zeros in front up to `width` characters.
    static func appendPadded(_ value: Int, width: Int, to out: inout [UInt8]) {
        let digits = String(value).utf8
        if digits.count < width { out.append(contentsOf: repeatElement(UInt8(ascii: "0"), count: width - digits.count)) }
        out.append(contentsOf: digits)
    }
}

extension TernLogHandler {
    /// Appends one line, newline included. `metadata` is the handler's, `extra` the event's (which wins
    /// for a key in both).
    static func appendLine(to out: inout [UInt8], clock: inout LogClock, format: LogFormat,
                           time: (seconds: Int, millis: Int), level: Logger.Level, message: String,
                           metadata: Logger.Metadata, extra: Logger.Metadata?) {
        var fields = FewFields()
        if let extra, !extra.isEmpty {
            if extra.count == 1, let only = extra.first {
                // A key in both keeps the handler's spelling (an equal String may differ in bytes,
                // "é" and "e\u{301}"), with the event's value: what Dictionary.merge does.
                var replaced = false
                for (k, v) in metadata where !fields.overflow {
                    if k == only.key { fields.add(k, only.value); replaced = true } else { fields.add(k, v) }
                }
                if !replaced { fields.add(only.key, only.value) }
            } else if metadata.isEmpty {
                for (k, v) in extra where !fields.overflow { fields.add(k, v) }
            } else {
                fields.overflow = true
            }
        } else {
            for (k, v) in metadata where !fields.overflow { fields.add(k, v) }
        }

        var message = message
        message.withUTF8 { text in
            if fields.overflow {
                // More than two fields besides qid, or several keys on both sides: the merged
                // dictionary, its keys sorted, as every line used to be.
                var merged = metadata
                if let extra { merged.merge(extra) { _, new in new } }
                let qid = merged.removeValue(forKey: "qid")
                let line = LineWriter(format: format, text: text, qid: qid)
                line.start(to: &out, clock: &clock, time: time, level: level)
                for key in merged.keys.sorted() { line.field(key, merged[key]!, to: &out) }
                line.finish(to: &out)
            } else {
                let line = LineWriter(format: format, text: text, qid: fields.qid)
                line.start(to: &out, clock: &clock, time: time, level: level)
                if let first = fields.first {
                    if let second = fields.second {
                        if second.key < first.key {
                            line.field(second.key, second.value, to: &out)
                            line.field(first.key, first.value, to: &out)
                        } else {
                            line.field(first.key, first.value, to: &out)
                            line.field(second.key, second.value, to: &out)
                        }
                    } else {
                        line.field(first.key, first.value, to: &out)
                    }
                }
                line.finish(to: &out)
            }
        }
    }

    /// The qid and up to two other fields, in no order yet; `overflow` once there are more.
    private struct FewFields {
        var qid: Logger.MetadataValue?
        var first: (key: String, value: Logger.MetadataValue)?
        var second: (key: String, value: Logger.MetadataValue)?
        var overflow = false

        mutating func add(_ key: String, _ value: Logger.MetadataValue) {
            if key == "qid" { qid = value }
            else if first == nil { first = (key, value) }
            else if second == nil { second = (key, value) }
            else { overflow = true }
        }
    }

    /// One line's head (time, level, queue id, message), its fields in the order given, its end.
    private struct LineWriter {
        let format: LogFormat
        let text: UnsafeBufferPointer<UInt8>
        /// The queue id: metadata "qid", else the message's "ID: " prefix.
        var qid: String?
        /// The message starts with "<qid>: ".
        var prefixedByQID = false
        /// ... and those are the qid's own bytes.
        var prefixBytesAreQID = false

        init(format: LogFormat, text: UnsafeBufferPointer<UInt8>, qid value: Logger.MetadataValue?) {
            self.format = format
            self.text = text
            let prefixed = TernLogHandler.hasLeadingQueueID(text)
            // Only a string qid counts; any other kind is dropped (as the String renderer always did).
            if case .string(let id)? = value { qid = id } else { qid = nil }
            if let id = qid {
                if prefixed {
                    var id = id
                    let sameBytes = id.withUTF8 { $0.count == 14 && $0.elementsEqual(UnsafeBufferPointer(rebasing: text[0..<14])) }
                    // Different bytes can still be the same String (canonical equivalence): ask String.
                    prefixBytesAreQID = sameBytes
                    prefixedByQID = sameBytes
                        || String(decoding: UnsafeBufferPointer(rebasing: text[0..<14]), as: UTF8.self) == id
                }
            } else if prefixed {
                qid = String(decoding: UnsafeBufferPointer(rebasing: text[0..<14]), as: UTF8.self)
                prefixedByQID = true
                prefixBytesAreQID = true
            }
        }

        func start(to out: inout [UInt8], clock: inout LogClock, time: (seconds: Int, millis: Int), level: Logger.Level) {
            switch format {
            case .plain:
                clock.append(time, to: &out)
                out.append(UInt8(ascii: " "))
                out.append(contentsOf: level.rawValue.utf8)
                out.append(UInt8(ascii: " "))
                if let qid, !prefixedByQID {
                    out.append(contentsOf: qid.utf8)
                    out.append(contentsOf: ": ".utf8)
                }
                TernLogHandler.appendOneLine(text, to: &out)
            case .json:
                out.append(contentsOf: "{\"ts\":\"".utf8)
                clock.append(time, to: &out)
                out.append(contentsOf: "\",\"level\":\"".utf8)
                out.append(contentsOf: level.rawValue.utf8)
                out.append(UInt8(ascii: "\""))
                if let qid {
                    out.append(contentsOf: ",\"qid\":".utf8)
                    TernLogHandler.appendJSONString(qid, to: &out)
                }
                out.append(contentsOf: ",\"msg\":".utf8)
                if let qid, prefixedByQID {
                    let rest = TernLogHandler.afterQueueID(text, qid: qid, sameBytes: prefixBytesAreQID)
                    TernLogHandler.appendJSONString(rest, to: &out)
                } else {
                    TernLogHandler.appendJSONString(text, to: &out)
                }
            }
        }

        func field(_ key: String, _ value: Logger.MetadataValue, to out: inout [UInt8]) {
            switch format {
            case .plain:
                out.append(UInt8(ascii: " "))
                out.append(contentsOf: key.utf8)
                out.append(UInt8(ascii: "="))
                if case .string(var s) = value {
                    s.withUTF8 { TernLogHandler.appendOneLine($0, to: &out) }
                } else {
                    var s = value.description
                    s.withUTF8 { TernLogHandler.appendOneLine($0, to: &out) }
                }
            case .json:
                // These four are the line's own members.
                guard key != "ts", key != "level", key != "qid", key != "msg" else { return }
                out.append(UInt8(ascii: ","))
                TernLogHandler.appendJSONString(key, to: &out)
                out.append(UInt8(ascii: ":"))
                TernLogHandler.appendJSONValue(value, to: &out)
            }
        }

        func finish(to out: inout [UInt8]) {
            if format == .json { out.append(UInt8(ascii: "}")) }
            out.append(UInt8(ascii: "\n"))
        }
    }

    /// The message starts with 14 uppercase hex digits and ": " (see leadingQueueID).
    static func hasLeadingQueueID(_ text: UnsafeBufferPointer<UInt8>) -> Bool {
        guard text.count >= 16 else { return false }
        for i in 0..<14 {
            let b = text[i]
            guard (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x46) else { return false }
        }
        return text[14] == UInt8(ascii: ":") && text[15] == UInt8(ascii: " ")
    }

    /// The message starts with "<id>: " and the handler will take `id` from there (false is always safe:
    /// the caller passes "qid" metadata then). Bytes only, no String made.
    static func startsWithQueueID(_ message: String, _ id: String) -> Bool {
        guard id.utf8.count == 14 else { return false }
        var message = message, id = id
        return message.withUTF8 { text in
            hasLeadingQueueID(text) && id.withUTF8 { $0.elementsEqual(UnsafeBufferPointer(rebasing: text[0..<14])) }
        }
    }

    /// The message without its "<qid>: " prefix, cut after that many Characters: at byte 16 unless
    /// what follows joins the space into one grapheme (a combining mark), which the cut takes along.
    static func afterQueueID(_ text: UnsafeBufferPointer<UInt8>, qid: String, sameBytes: Bool) -> UnsafeBufferPointer<UInt8> {
        if sameBytes && (text.count == 16 || text[16] < 0x80) { return UnsafeBufferPointer(rebasing: text[16...]) }
        let message = String(decoding: text, as: UTF8.self)
        let rest = message.dropFirst(qid.count + 2)
        let offset = message.utf8.distance(from: message.utf8.startIndex, to: rest.startIndex)
        return UnsafeBufferPointer(rebasing: text[offset...])
    }

    /// The C1 control or invisible formatting character (isInvisibleFormatting) whose UTF-8 starts with
    /// the lead byte (0xC2 or above) at `i`, and its length; nil for any other scalar. The text is a
    /// String's, valid UTF-8.
    static func hiddenScalar(at i: Int, in text: UnsafeBufferPointer<UInt8>) -> (scalar: Unicode.Scalar, length: Int)? {
        let b = text[i]
        let n = b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4
        guard i + n <= text.count else { return nil }
        var v = UInt32(b & (n == 2 ? 0x1F : n == 3 ? 0x0F : 0x07))
        for k in 1..<n { v = v << 6 | UInt32(text[i + k] & 0x3F) }
        guard let scalar = Unicode.Scalar(v), v <= 0x9F || isInvisibleFormatting(scalar) else { return nil }
        return (scalar, n)
    }

    /// Control characters (C0, DEL, C1) and invisible formatting (U+2028, bidi overrides, zero-width
    /// characters, BOM: isInvisibleFormatting) as "?", so that one event stays one line and reads as
    /// it is. Bytes below 0x80 are whole scalars in UTF-8, so replacing bytes is replacing scalars; a
    /// lead byte from 0xC2 up starts a scalar of 2-4 bytes (the text is a String's, valid UTF-8).
    static func appendOneLine(_ text: UnsafeBufferPointer<UInt8>, to out: inout [UInt8]) {
        var run = 0
        for i in 0..<text.count {
            let b = text[i]
            var length = 0
            if b < 0x20 || b == 0x7F {
                length = 1
            } else if b >= 0xC2, let hidden = hiddenScalar(at: i, in: text) {
                length = hidden.length
            }
            if length > 0 {
                if run < i { out.append(contentsOf: UnsafeBufferPointer(rebasing: text[run..<i])) }
                out.append(UInt8(ascii: "?"))
                run = i + length
            }
        }
        if run < text.count { out.append(contentsOf: UnsafeBufferPointer(rebasing: text[run...])) }
    }

    static func appendJSONString(_ s: String, to out: inout [UInt8]) {
        var s = s
        s.withUTF8 { appendJSONString($0, to: &out) }
    }

    /// A JSON string (RFC 8259 §7) with the escapes TOMLWriter.quoted uses: \" \\ \n \t \r, other
    /// control characters and DEL as \u00XX; and, unlike TOML, C1 controls and invisible formatting
    /// (isInvisibleFormatting) as \u0085, \u202E (a pair of surrogates past U+FFFF), so that a line read
    /// on a terminal shows them as what they are, and a parser gets the same text back.
    static func appendJSONString(_ text: UnsafeBufferPointer<UInt8>, to out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        var run = 0
        for i in 0..<text.count {
            let b = text[i]
            if b >= 0xC2 {
                guard let hidden = hiddenScalar(at: i, in: text) else { continue }
                if run < i { out.append(contentsOf: UnsafeBufferPointer(rebasing: text[run..<i])) }
                run = i + hidden.length
                appendUnicodeEscape(hidden.scalar, to: &out)
                continue
            }
            guard b < 0x20 || b == 0x7F || b == UInt8(ascii: "\"") || b == UInt8(ascii: "\\") else { continue }
            if run < i { out.append(contentsOf: UnsafeBufferPointer(rebasing: text[run..<i])) }
            run = i + 1
            switch b {
            case UInt8(ascii: "\""), UInt8(ascii: "\\"): out.append(UInt8(ascii: "\\")); out.append(b)
            case UInt8(ascii: "\n"): out.append(contentsOf: "\\n".utf8)
            case UInt8(ascii: "\t"): out.append(contentsOf: "\\t".utf8)
            case UInt8(ascii: "\r"): out.append(contentsOf: "\\r".utf8)
            default: appendUnicodeEscape(Unicode.Scalar(b), to: &out)
            }
        }
        if run < text.count { out.append(contentsOf: UnsafeBufferPointer(rebasing: text[run...])) }
        out.append(UInt8(ascii: "\""))
    }

    /// JSON's \u001B, \u202E; past U+FFFF a pair of surrogates (\uDB40\uDC41).
    static func appendUnicodeEscape(_ scalar: Unicode.Scalar, to out: inout [UInt8]) {
        let hex: StaticString = "0123456789ABCDEF"
        for unit in UTF16.encode(scalar)! {
            out.append(contentsOf: "\\u".utf8)
            out.append(hex.utf8Start[Int(unit >> 12)])
            out.append(hex.utf8Start[Int((unit >> 8) & 0xF)])
            out.append(hex.utf8Start[Int((unit >> 4) & 0xF)])
            out.append(hex.utf8Start[Int(unit & 0xF)])
        }
    }

    /// JSON as JSONEncoder wrote it (valid UTF-8), with C1 controls and invisible formatting, which
    /// can stand only inside its strings, written as \u009B, \u202E: the same JSON to a parser, and
    /// nothing acted on or hidden when it is read on a terminal (`curl`, `tern queue show --json`).
    static func escapingHiddenCharacters(json: [UInt8]) -> [UInt8] {
        guard json.contains(where: { $0 >= 0xC2 }) else { return json }
        var out: [UInt8] = []
        out.reserveCapacity(json.count + 64)
        json.withUnsafeBufferPointer { text in
            var run = 0
            for i in 0..<text.count where text[i] >= 0xC2 {
                guard let hidden = hiddenScalar(at: i, in: text) else { continue }
                if run < i { out.append(contentsOf: UnsafeBufferPointer(rebasing: text[run..<i])) }
                run = i + hidden.length
                appendUnicodeEscape(hidden.scalar, to: &out)
            }
            if run < text.count { out.append(contentsOf: UnsafeBufferPointer(rebasing: text[run...])) }
        }
        return out
    }

    static func appendJSONValue(_ value: Logger.MetadataValue, to out: inout [UInt8]) {
        switch value {
        case .string(let s): appendJSONString(s, to: &out)
        case .stringConvertible(let c): appendJSONString(c.description, to: &out)
        case .array(let items):
            out.append(UInt8(ascii: "["))
            for (n, item) in items.enumerated() {
                if n > 0 { out.append(UInt8(ascii: ",")) }
                appendJSONValue(item, to: &out)
            }
            out.append(UInt8(ascii: "]"))
        case .dictionary(let d):
            out.append(UInt8(ascii: "{"))
            for (n, key) in d.keys.sorted().enumerated() {
                if n > 0 { out.append(UInt8(ascii: ",")) }
                appendJSONString(key, to: &out)
                out.append(UInt8(ascii: ":"))
                appendJSONValue(d[key]!, to: &out)
            }
            out.append(UInt8(ascii: "}"))
        }
    }
}

/// Client text in a plain log line, between "<" and ">": "<", ">" and "\" written as \x3C, \x3E and
/// \x5C, control characters (C0, DEL, C1) as \x1B or \x9B, invisible formatting (bidi overrides,
/// zero-width characters, BOM, U+2028: isInvisibleFormatting) as \u{202E}, so that a user name or an
/// address can neither end its field early, nor imitate another ("user=<root> from [203.0.113.9]"
/// stays one user name), nor show other than it is.
func angleQuoted(_ text: String) -> String {
    var out = "<"
    for scalar in text.unicodeScalars {
        let v = scalar.value
        switch v {
        case 0x3C, 0x3E, 0x5C, 0..<0x20, 0x7F...0x9F:
            out += "\\x" + (v < 0x10 ? "0" : "") + String(v, radix: 16, uppercase: true)
        default:
            if isInvisibleFormatting(scalar) {
                out += "\\u{" + String(v, radix: 16, uppercase: true) + "}"
            } else {
                out.unicodeScalars.append(scalar)
            }
        }
    }
    return out + ">"
}
