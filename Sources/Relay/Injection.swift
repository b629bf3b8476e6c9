// Injection.swift: the body of POST /api/inject (issue 19), read and turned into messages. Pure: JSON
// in, envelopes' recipients and message bytes out; InjectionEndpoint.swift does the HTTP and the spool.
//
// The shape is KumoMTA's /api/inject/v1, so that a client written for it works here:
//
//   {"envelope_sender": "news@example.com",
//    "recipients": [{"email": "ann@example.net", "name": "Ann", "substitutions": {"code": "42"}}],
//    "substitutions": {"product": "Tern"},                      // for every recipient
//    "content": "Subject: hi\r\n\r\nHello {{ product }}"}      // a raw RFC 5322 message, or:
//    "content": {"from": {"email": "news@example.com", "name": "News"}, "subject": "Hi {{ code }}",
//                "reply_to": "help@example.com", "text_body": "…", "html_body": "<p>…</p>",
//                "headers": {"X-Campaign": "7"},
//                "attachments": [{"file_name": "a.pdf", "content_type": "application/pdf",
//                                 "data": "JVBERi0…", "base64": true}]}
//
// Substitutions: "{{ name }}" in the raw message, the subject, the bodies and header values becomes the
// recipient's value of that name, else the request's, else nothing (as KumoMTA's templates render an
// undefined name). Values are strings or numbers, inserted as they are.
//
// One message per recipient when the content is built (its To: names the recipient) or when there are
// substitutions; otherwise (raw content, no substitutions) one message for all the recipients, as one
// SMTP transaction would be. Raw content gets CRLF line ends, and Date and Message-ID when it has none.
//
// Every error names the field: "recipients[2].email: not a valid address".

import Foundation
import SMTPProtocol

struct InjectionError: Error, Equatable, CustomStringConvertible {
    /// "recipients[2].email"; "" for the body as a whole.
    var field: String
    var message: String
    var description: String { field.isEmpty ? message : "\(field): \(message)" }
}

struct InjectionRequest: Equatable {
    struct Recipient: Equatable {
        var email: String
        var name: String?
        var substitutions: [String: String]
    }

    enum Content: Equatable {
        case raw(String)
        case built(MessageParts)
    }

    var envelopeSender: String
    var recipients: [Recipient]
    var substitutions: [String: String]
    var content: Content

    /// At most this many recipients in one request (KumoMTA has no such limit; one is needed for a
    /// bounded answer and bounded work per request).
    static let maxRecipients = 10_000

    /// Reads the JSON body; the first error found names its field.
    static func parse(_ body: [UInt8]) throws -> InjectionRequest {
        let object: Any
        do {
            object = try JSONSerialization.jsonObject(with: Data(body), options: [])
        } catch {
            throw InjectionError(field: "", message: "the body is not valid JSON")
        }
        guard let top = object as? [String: Any] else {
            throw InjectionError(field: "", message: "the body must be a JSON object")
        }
        let sender = try string(top["envelope_sender"], "envelope_sender", required: true)!
        try checkAddress(sender, field: "envelope_sender")

        guard let list = top["recipients"] else {
            throw InjectionError(field: "recipients", message: "is required: a list of {\"email\": …}")
        }
        guard let items = list as? [Any], !items.isEmpty else {
            throw InjectionError(field: "recipients", message: "must be a non-empty list of {\"email\": …}")
        }
        guard items.count <= maxRecipients else {
            throw InjectionError(field: "recipients", message: "at most \(maxRecipients) recipients in one request")
        }
        var recipients: [Recipient] = []
        recipients.reserveCapacity(items.count)
        for (i, item) in items.enumerated() {
            let field = "recipients[\(i)]"
            guard let r = item as? [String: Any] else {
                throw InjectionError(field: field, message: "must be an object with \"email\"")
            }
            let email = try string(r["email"], field + ".email", required: true)!
            try checkAddress(email, field: field + ".email")
            let name = try string(r["name"], field + ".name")
            let subs = try substitutions(r["substitutions"], field + ".substitutions")
            recipients.append(Recipient(email: email, name: name, substitutions: subs))
        }
        let global = try substitutions(top["substitutions"], "substitutions")

        let content: Content
        switch top["content"] {
        case nil, is NSNull:
            throw InjectionError(field: "content", message: "is required: the message as a string, or an object to build it from")
        case let text as String:
            guard !text.isEmpty else { throw InjectionError(field: "content", message: "must not be empty") }
            content = .raw(text)
        case let object as [String: Any]:
            content = .built(try parts(object))
        default:
            throw InjectionError(field: "content", message: "must be a string (the message) or an object")
        }
        return InjectionRequest(envelopeSender: sender, recipients: recipients, substitutions: global, content: content)
    }

    // MARK: The messages

    struct Message: Equatable {
        /// Indexes into `recipients`.
        var recipients: [Int]
        var bytes: [UInt8]
        var messageID: String?
    }

    /// The messages to queue. `date` is an RFC 5322 date, `newMessageID` makes a "<…@…>".
    func messages(date: String, newMessageID: () -> String, boundarySeed: UInt64) -> [Message] {
        let personal = recipients.contains { !$0.substitutions.isEmpty } || !substitutions.isEmpty
        switch content {
        case .raw(let text):
            if !personal {
                let (bytes, id) = Self.completed(text, date: date, newMessageID: newMessageID)
                return [Message(recipients: Array(recipients.indices), bytes: bytes, messageID: id)]
            }
            return recipients.indices.map { i in
                let (bytes, id) = Self.completed(render(text, for: i), date: date, newMessageID: newMessageID)
                return Message(recipients: [i], bytes: bytes, messageID: id)
            }
        case .built(let template):
            return recipients.indices.map { i in
                var parts = template
                let r = recipients[i]
                parts.to = [r.name.map { "\($0) <\(r.email)>" } ?? r.email]
                parts.subject = render(parts.subject, for: i)
                parts.textBody = parts.textBody.map { render($0, for: i) }
                parts.htmlBody = parts.htmlBody.map { render($0, for: i) }
                parts.headers = parts.headers.map { ($0.name, render($0.value, for: i)) }
                let id = newMessageID()
                let bytes = assembleMessage(parts, date: date, messageID: id, boundarySeed: boundarySeed &+ UInt64(i))
                return Message(recipients: [i], bytes: bytes, messageID: id)
            }
        }
    }

    /// About how many bytes of mail `messages` makes (base64 and substitutions counted generously):
    /// checked before any is made, so a small request cannot make gigabytes.
    var estimatedBytes: Int {
        let personal = recipients.contains { !$0.substitutions.isEmpty } || !substitutions.isEmpty
        let longestValue = (recipients.flatMap { $0.substitutions.values } + substitutions.values).map(\.utf8.count).max() ?? 0
        /// Bytes of `texts` once each "{{" in them holds the longest value.
        func rendered(_ texts: [String]) -> Int {
            texts.reduce(0) { total, text in
                let holes = personal ? text.utf8.count - text.replacingOccurrences(of: "{{", with: "{").utf8.count : 0
                return total + text.utf8.count + holes * longestValue
            }
        }
        let one: Int
        switch content {
        case .raw(let text):
            one = rendered([text]) * 2 + 1024  // line breaks may become CRLF
            if !personal { return one }
        case .built(let p):
            // Quoted-printable or base64: at most 3 bytes a byte of text, 4/3 of an attachment.
            one = rendered([p.subject, p.textBody ?? "", p.htmlBody ?? ""] + p.headers.map(\.value)) * 3
                + p.attachments.reduce(0) { $0 + $1.data.count * 4 / 3 + 512 } + 2048
        }
        return one.multipliedReportingOverflow(by: recipients.count).overflow ? Int.max : one * recipients.count
    }

    /// "{{ name }}" replaced: the recipient's value, else the request's, else "". One pass, linear.
    func render(_ text: String, for index: Int) -> String {
        guard text.contains("{{") else { return text }
        let own = recipients[index].substitutions
        var out = ""
        var rest = text[...]
        while let open = rest.range(of: "{{") {
            out += rest[..<open.lowerBound]
            guard let close = rest[open.upperBound...].range(of: "}}") else {
                out += rest[open.lowerBound...]
                return out
            }
            let name = rest[open.upperBound..<close.lowerBound].trimmingCharacters(in: .whitespaces)
            out += own[name] ?? substitutions[name] ?? ""
            rest = rest[close.upperBound...]
        }
        out += rest
        return out
    }

    /// A raw message with CRLF line ends (a lone LF or CR becomes CRLF), ending in CRLF, with Date and
    /// Message-ID fields added in front when its header section has none; and its Message-ID.
    static func completed(_ text: String, date: String, newMessageID: () -> String) -> ([UInt8], String?) {
        var body: [UInt8] = []
        let bytes = Array(text.utf8)
        body.reserveCapacity(bytes.count + 64)
        var i = 0
        while i < bytes.count {
            let b = bytes[i]
            if b == 13 {
                body += [13, 10]
                if i + 1 < bytes.count && bytes[i + 1] == 10 { i += 1 }
            } else if b == 10 {
                body += [13, 10]
            } else {
                body.append(b)
            }
            i += 1
        }
        if body.count < 2 || body[body.count - 2] != 13 || body[body.count - 1] != 10 { body += [13, 10] }
        var hasDate = false
        var messageID: String?
        for line in headerLines(body) {
            guard let colon = line.firstIndex(of: UInt8(ascii: ":")) else { continue }
            let name = String(decoding: line[..<colon], as: UTF8.self).lowercased()
            if name == "date" { hasDate = true }
            if name == "message-id", messageID == nil {
                messageID = String(decoding: line[(colon + 1)...], as: UTF8.self).trimmingCharacters(in: .whitespaces)
            }
        }
        var front = ""
        if !hasDate { front += "Date: \(date)\r\n" }
        if messageID == nil {
            let id = newMessageID()
            messageID = id
            front += "Message-ID: \(id)\r\n"
        }
        return (Array(front.utf8) + body, messageID)
    }

    /// The lines of the header section (up to the first empty line), without their CRLF; continuation
    /// lines are separate lines here (they start with a space and have no field name of their own).
    static func headerLines(_ message: [UInt8]) -> [ArraySlice<UInt8>] {
        var lines: [ArraySlice<UInt8>] = []
        var start = 0
        var i = 0
        while i + 1 < message.count {
            if message[i] == 13 && message[i + 1] == 10 {
                if i == start { break }
                let line = message[start..<i]
                if line.first != 32 && line.first != 9 { lines.append(line) }
                start = i + 2
                i += 2
            } else {
                i += 1
            }
        }
        return lines
    }

    // MARK: Reading fields

    /// JSONSerialization gives true and false as NSNumbers too, of type "c" (no JSON number is one).
    private static func isJSONBool(_ n: NSNumber) -> Bool { String(cString: n.objCType) == "c" }

    private static func string(_ value: Any?, _ field: String, required: Bool = false) throws -> String? {
        switch value {
        case nil, is NSNull:
            if required { throw InjectionError(field: field, message: "is required") }
            return nil
        case let s as String:
            return s
        default:
            throw InjectionError(field: field, message: "must be a string")
        }
    }

    private static func checkAddress(_ text: String, field: String) throws {
        guard !text.isEmpty, text.utf8.count <= 254, !text.contains("<"), !text.contains(">"),
              let path = try? parsePath("<" + text + ">", allowNull: false, allowPostmaster: false), !path.domain.isEmpty
        else {
            throw InjectionError(field: field, message: "not a valid address (local@domain)")
        }
    }

    private static func substitutions(_ value: Any?, _ field: String) throws -> [String: String] {
        switch value {
        case nil, is NSNull:
            return [:]
        case let map as [String: Any]:
            var out: [String: String] = [:]
            for (key, v) in map {
                switch v {
                case let s as String: out[key] = s
                case let n as NSNumber:
                    if isJSONBool(n) { out[key] = n.boolValue ? "true" : "false" } else { out[key] = n.stringValue }
                default:
                    throw InjectionError(field: "\(field).\(key)", message: "must be a string or a number")
                }
            }
            return out
        default:
            throw InjectionError(field: field, message: "must be an object of names and values")
        }
    }

    /// "Name <address>" from a string, or from {"email": …, "name": …}.
    private static func mailbox(_ value: Any?, _ field: String, required: Bool) throws -> String? {
        switch value {
        case nil, is NSNull:
            if required { throw InjectionError(field: field, message: "is required") }
            return nil
        case let s as String:
            let address = s.lastIndex(of: "<").map { String(s[s.index(after: $0)...].dropLast()) } ?? s
            try checkAddress(address.trimmingCharacters(in: .whitespaces), field: field)
            return s
        case let m as [String: Any]:
            let email = try string(m["email"], field + ".email", required: true)!
            try checkAddress(email, field: field + ".email")
            let name = try string(m["name"], field + ".name")
            return name.map { "\($0) <\(email)>" } ?? email
        default:
            throw InjectionError(field: field, message: "must be an address, or {\"email\": …, \"name\": …}")
        }
    }

    private static func parts(_ c: [String: Any]) throws -> MessageParts {
        let known: Set<String> = ["from", "subject", "reply_to", "text_body", "html_body", "headers", "attachments"]
        if let unknown = c.keys.filter({ !known.contains($0) }).sorted().first {
            throw InjectionError(field: "content.\(unknown)", message: "unknown field")
        }
        let from = try mailbox(c["from"], "content.from", required: true)!
        let replyTo = try mailbox(c["reply_to"], "content.reply_to", required: false)
        let subject = try string(c["subject"], "content.subject") ?? ""
        let text = try string(c["text_body"], "content.text_body")
        let html = try string(c["html_body"], "content.html_body")
        var headers: [(name: String, value: String)] = []
        switch c["headers"] {
        case nil, is NSNull: break
        case let map as [String: Any]:
            // JSON objects have no order: the fields go in the order of their names.
            for name in map.keys.sorted() {
                let field = "content.headers.\(name)"
                guard !name.isEmpty, name.utf8.count <= 76,
                      name.utf8.allSatisfy({ $0 > 32 && $0 < 127 && $0 != UInt8(ascii: ":") }) else {
                    throw InjectionError(field: field, message: "not a header field name")
                }
                let reserved = ["from", "to", "subject", "reply-to", "date", "message-id", "mime-version", "content-type",
                                "content-transfer-encoding"]
                if reserved.contains(name.lowercased()) {
                    throw InjectionError(field: field, message: "is set by Tern (use the content field of that name)")
                }
                headers.append((name, try string(map[name], field, required: true)!))
            }
        default:
            throw InjectionError(field: "content.headers", message: "must be an object of field names and values")
        }
        var attachments: [MessageParts.Attachment] = []
        switch c["attachments"] {
        case nil, is NSNull: break
        case let list as [Any]:
            for (i, item) in list.enumerated() {
                let field = "content.attachments[\(i)]"
                guard let a = item as? [String: Any] else {
                    throw InjectionError(field: field, message: "must be an object with \"data\"")
                }
                let data = try string(a["data"], field + ".data", required: true)!
                let type = try string(a["content_type"], field + ".content_type") ?? "application/octet-stream"
                guard type.utf8.allSatisfy({ $0 > 32 && $0 < 127 }), type.contains("/") else {
                    throw InjectionError(field: field + ".content_type", message: "not a media type (type/subtype)")
                }
                let name = try string(a["file_name"], field + ".file_name") ?? "attachment"
                var isBase64 = false
                if let flag = a["base64"] {
                    guard let n = flag as? NSNumber, isJSONBool(n) else {
                        throw InjectionError(field: field + ".base64", message: "must be true or false")
                    }
                    isBase64 = n.boolValue
                }
                let bytes: [UInt8]
                if isBase64 {
                    let compact = data.utf8.filter { $0 != 13 && $0 != 10 && $0 != 32 && $0 != 9 }
                    guard let decoded = Base64.decode(compact) else {
                        throw InjectionError(field: field + ".data", message: "not valid base64")
                    }
                    bytes = decoded
                } else {
                    bytes = Array(data.utf8)
                }
                attachments.append(.init(filename: name, contentType: type, data: bytes))
            }
        default:
            throw InjectionError(field: "content.attachments", message: "must be a list")
        }
        return MessageParts(from: from, to: [], subject: subject, replyTo: replyTo, headers: headers,
                            textBody: text, htmlBody: html, attachments: attachments)
    }
}
