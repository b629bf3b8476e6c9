// ServiceNotifier: systemd's readiness protocol without libsystemd (sd_notify(3), "Type=notify" in
// systemd.service(5)). The service manager puts the path of a unix datagram socket in $NOTIFY_SOCKET;
// the service sends it newline-separated assignments such as "READY=1" and "STOPPING=1". A path that
// starts with "@" names a socket in the abstract namespace (the "@" stands for a leading NUL byte).
// One small datagram, sent without waiting: a full receiver loses the notice, never stalls the loop.

// CLibUV for the socket constants (SOCK_DGRAM, SOCK_CLOEXEC): Swift's Glibc module does not export them.
import CLibUV
#if canImport(Glibc)
import Glibc
#endif

public struct ServiceNotifier {
    private var address = sockaddr_un()
    private let length: socklen_t
    /// $NOTIFY_SOCKET as given, for log lines.
    public let path: String

    /// nil when `socketPath` (default: $NOTIFY_SOCKET) is unset or empty: not run by a service manager
    /// that asks for notices. Throws for a value that is not a unix socket path Tern can use.
    public init?(socketPath: String? = getenv("NOTIFY_SOCKET").map { String(cString: $0) }) throws {
        guard let socketPath, !socketPath.isEmpty else { return nil }
        path = socketPath
        var bytes = Array(socketPath.utf8)
        if bytes.first == UInt8(ascii: "@") {
            bytes[0] = 0
        } else if bytes.first != UInt8(ascii: "/") {
            // systemd also knows "vsock:CID:PORT" (a service in a virtual machine); Tern does not.
            throw ServiceNotifierError("NOTIFY_SOCKET \(socketPath): not a unix socket path (\"/...\" or \"@...\")")
        }
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        // A path needs room for its NUL; an abstract name uses exactly its bytes.
        guard bytes.count < capacity || (bytes[0] == 0 && bytes.count <= capacity) else {
            throw ServiceNotifierError("NOTIFY_SOCKET \(socketPath): longer than a unix socket path may be")
        }
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
        }
        let pathOffset = MemoryLayout<sockaddr_un>.offset(of: \sockaddr_un.sun_path)!
        // Abstract names are compared by length, so no trailing NUL; a path takes its NUL.
        length = socklen_t(pathOffset + bytes.count + (bytes[0] == 0 ? 0 : 1))
    }

    /// Sends `state` ("READY=1", "STOPPING=1", ...) as one datagram. Returns nil, or what went wrong.
    @discardableResult
    public func notify(_ state: String) -> String? {
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return "socket: \(String(cString: strerror(errno)))" }
        defer { Glibc.close(fd) }
        var address = self.address
        let bytes = Array(state.utf8)
        let sent = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                bytes.withUnsafeBytes { sendto(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL | MSG_DONTWAIT), sa, length) }
            }
        }
        return sent == bytes.count ? nil : "sendto \(path): \(String(cString: strerror(errno)))"
    }
}

public struct ServiceNotifierError: Error, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}
