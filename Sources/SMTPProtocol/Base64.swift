// Base64 (RFC 4648 §4) for SASL exchanges (RFC 4954): strict decoding, since a lenient one would
// accept credentials that another server reads differently.

public enum Base64 {
    static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
    static let values: [UInt8] = {
        var t = [UInt8](repeating: 0xFF, count: 256)
        for (i, c) in alphabet.enumerated() { t[Int(c)] = UInt8(i) }
        return t
    }()

    public static func encode(_ bytes: [UInt8]) -> String {
        var out: [UInt8] = []
        out.reserveCapacity((bytes.count + 2) / 3 * 4)
        var i = 0
        while i < bytes.count {
            let b0 = bytes[i]
            let b1 = i + 1 < bytes.count ? bytes[i + 1] : 0
            let b2 = i + 2 < bytes.count ? bytes[i + 2] : 0
            out.append(alphabet[Int(b0 >> 2)])
            out.append(alphabet[Int((b0 & 3) << 4 | b1 >> 4)])
            out.append(i + 1 < bytes.count ? alphabet[Int((b1 & 15) << 2 | b2 >> 6)] : UInt8(ascii: "="))
            out.append(i + 2 < bytes.count ? alphabet[Int(b2 & 63)] : UInt8(ascii: "="))
            i += 3
        }
        return String(decoding: out, as: UTF8.self)
    }

    public static func encode(_ text: String) -> String { encode(Array(text.utf8)) }

    /// nil unless `text` is canonical base64 with padding (length a multiple of 4).
    public static func decode<S: Collection>(_ text: S) -> [UInt8]? where S.Element == UInt8 {
        let chars = Array(text)
        guard chars.count % 4 == 0 else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(chars.count / 4 * 3)
        var i = 0
        while i < chars.count {
            let last = i + 4 == chars.count
            let pad = chars[i + 3] == UInt8(ascii: "=") ? (chars[i + 2] == UInt8(ascii: "=") ? 2 : 1) : 0
            guard pad == 0 || last else { return nil }
            var v: [UInt8] = [0, 0, 0, 0]
            for k in 0..<(4 - pad) {
                let x = values[Int(chars[i + k])]
                guard x != 0xFF else { return nil }
                v[k] = x
            }
            out.append(v[0] << 2 | v[1] >> 4)
            if pad < 2 { out.append(v[1] << 4 | v[2] >> 2) }
            if pad < 1 { out.append(v[2] << 6 | v[3]) }
            // Non-canonical: bits that padding drops must be zero.
            if pad == 1 && v[2] & 3 != 0 { return nil }
            if pad == 2 && v[1] & 15 != 0 { return nil }
            i += 4
        }
        return out
    }
}
