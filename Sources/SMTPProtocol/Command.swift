// SMTP commands (RFC 5321 §4.1.1) parsed from one command line without its CRLF.
// Verbs and the "FROM:"/"TO:" keywords are case-insensitive (§2.4).

public struct ESMTPParameter: Equatable, Sendable {
    /// Upper-cased keyword, e.g. "SIZE".
    public var keyword: String
    public var value: String?
    public init(_ keyword: String, _ value: String?) {
        self.keyword = keyword
        self.value = value
    }
}

public enum Command: Equatable, Sendable {
    case helo(String)
    case ehlo(String)
    case mail(MailPath, [ESMTPParameter])
    case rcpt(MailPath, [ESMTPParameter])
    case data
    case rset
    case noop
    case quit
    case help(String)
    case vrfy(String)
    case expn(String)
    /// RFC 3207.
    case startTLS
    /// RFC 4954: mechanism (upper case) and the optional initial response, still base64.
    case auth(String, String?)
    /// RFC 3030: `size` octets of message follow the command line; `last` ends the message.
    case bdat(size: Int, last: Bool)
}

public enum CommandError: Error, Equatable, Sendable {
    case unknown(String)
    case syntax(String)
    case address(AddressError)
}

public enum CommandParser {
    public static func parse(_ line: ArraySlice<UInt8>) throws(CommandError) -> Command {
        var verbEnd = line.startIndex
        while verbEnd < line.endIndex, line[verbEnd] != UInt8(ascii: " ") { verbEnd += 1 }
        let verb = asciiUppercased(line[line.startIndex..<verbEnd])
        var argStart = verbEnd
        if argStart < line.endIndex { argStart += 1 }
        let arg = line[argStart...]

        switch verb {
        case "HELO", "EHLO":
            let domain = trimmed(arg)
            guard !domain.isEmpty, !domain.contains(where: { $0 == UInt8(ascii: " ") }) else {
                throw .syntax("\(verb) needs one domain or address literal")
            }
            let text = String(decoding: domain, as: UTF8.self)
            return verb == "HELO" ? .helo(text) : .ehlo(text)
        case "MAIL":
            let (path, params) = try parsePathCommand(arg, keyword: "FROM:", allowNull: true, allowPostmaster: false)
            return .mail(path, params)
        case "RCPT":
            let (path, params) = try parsePathCommand(arg, keyword: "TO:", allowNull: false, allowPostmaster: true)
            return .rcpt(path, params)
        case "DATA", "RSET", "QUIT":
            guard trimmed(arg).isEmpty else { throw .syntax("\(verb) takes no argument") }
            return verb == "DATA" ? .data : verb == "RSET" ? .rset : .quit
        case "STARTTLS":
            guard trimmed(arg).isEmpty else { throw .syntax("STARTTLS takes no argument") }
            return .startTLS
        case "AUTH":
            let words = trimmed(arg).split(separator: UInt8(ascii: " "), omittingEmptySubsequences: true)
            guard (1...2).contains(words.count) else { throw .syntax("AUTH needs a mechanism and at most one initial response") }
            return .auth(asciiUppercased(words[0]), words.count == 2 ? String(decoding: words[1], as: UTF8.self) : nil)
        case "BDAT":
            // bdat-cmd = "BDAT" SP chunk-size [ SP end-marker ]; at most 18 digits fit an Int.
            let words = trimmed(arg).split(separator: UInt8(ascii: " "), omittingEmptySubsequences: true)
            guard (1...2).contains(words.count), words[0].count <= 18,
                  words[0].allSatisfy({ $0 >= 48 && $0 <= 57 }),
                  words.count == 1 || asciiUppercased(words[1]) == "LAST",
                  let size = Int(String(decoding: words[0], as: UTF8.self))
            else { throw .syntax("BDAT needs a chunk size and at most LAST") }
            return .bdat(size: size, last: words.count == 2)
        case "NOOP":
            return .noop  // NOOP may carry a string, which is ignored (§4.1.1.9)
        case "HELP":
            return .help(String(decoding: trimmed(arg), as: UTF8.self))
        case "VRFY", "EXPN":
            let text = String(decoding: trimmed(arg), as: UTF8.self)
            guard !text.isEmpty else { throw .syntax("\(verb) needs an argument") }
            return verb == "VRFY" ? .vrfy(text) : .expn(text)
        default:
            throw .unknown(String(decoding: line[line.startIndex..<verbEnd].prefix(20), as: UTF8.self))
        }
    }

    /// "FROM:<path> params" / "TO:<path> params". A space after the colon is tolerated, as most servers do.
    static func parsePathCommand(_ arg: ArraySlice<UInt8>, keyword: String, allowNull: Bool, allowPostmaster: Bool)
        throws(CommandError) -> (MailPath, [ESMTPParameter])
    {
        let kw = Array(keyword.utf8)
        guard arg.count >= kw.count, asciiUppercased(arg.prefix(kw.count)) == keyword else {
            throw .syntax("expected \(keyword)<address>")
        }
        var i = arg.startIndex + kw.count
        while i < arg.endIndex, arg[i] == UInt8(ascii: " ") { i += 1 }
        let path: MailPath
        do {
            (path, i) = try parsePath(arg[i...], allowNull: allowNull, allowPostmaster: allowPostmaster, utf8: true)
        } catch {
            throw .address(error)
        }
        var params: [ESMTPParameter] = []
        while i < arg.endIndex {
            guard arg[i] == UInt8(ascii: " ") else { throw .syntax("expected a space before parameters") }
            while i < arg.endIndex, arg[i] == UInt8(ascii: " ") { i += 1 }
            if i == arg.endIndex { break }
            let start = i
            while i < arg.endIndex, arg[i] != UInt8(ascii: " ") { i += 1 }
            let token = arg[start..<i]
            let param: ESMTPParameter
            if let eq = token.firstIndex(of: UInt8(ascii: "=")) {
                let key = token[token.startIndex..<eq]
                let value = token[(eq + 1)...]
                guard !key.isEmpty, !value.isEmpty else { throw .syntax("bad parameter") }
                param = ESMTPParameter(asciiUppercased(key), String(decoding: value, as: UTF8.self))
            } else {
                param = ESMTPParameter(asciiUppercased(token), nil)
            }
            // esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
            guard let first = param.keyword.utf8.first, isLetDig(first),
                param.keyword.utf8.allSatisfy({ isLetDig($0) || $0 == UInt8(ascii: "-") })
            else { throw .syntax("bad parameter keyword") }
            params.append(param)
        }
        return (path, params)
    }
}

func asciiUppercased(_ bytes: ArraySlice<UInt8>) -> String {
    String(decoding: bytes.map { ($0 >= 97 && $0 <= 122) ? $0 - 32 : $0 }, as: UTF8.self)
}

func trimmed(_ bytes: ArraySlice<UInt8>) -> ArraySlice<UInt8> {
    var s = bytes.startIndex
    var e = bytes.endIndex
    while s < e, bytes[s] == UInt8(ascii: " ") || bytes[s] == 9 { s += 1 }
    while e > s, bytes[e - 1] == UInt8(ascii: " ") || bytes[e - 1] == 9 { e -= 1 }
    return bytes[s..<e]
}
