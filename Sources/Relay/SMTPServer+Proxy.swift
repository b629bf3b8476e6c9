// SMTPServer+Proxy.swift: connections from a load balancer in [server] proxy_protocol_from start with
// a PROXY header (ProxyHeader.swift) naming the client; the session is made for that client. Such a
// peer must send one (within `proxyHeaderTimeout`, as Postfix's smtpd_upstream_proxy_timeout), and no
// one else may: a header from elsewhere, or a malformed one, closes the connection with a log line.

import Logging
import UVRuntime

extension SMTPServer {
    /// Milliseconds a proxy has for its header (Postfix's default, 5 s).
    static let proxyHeaderTimeout: UInt64 = 5000

    /// Reads the PROXY header of a connection from `proxy`, then admits the session for the client it
    /// names (the proxy itself for a health check). What follows the header in the same reads is the
    /// client's: handed to the session.
    func readProxyHeader(_ connection: TCPConnection, proxy: String, role: ListenerRole) {
        // The proxy's own address is not counted per IP: every client behind it shares it.
        if refusedAtConnect(connection, ip: proxy, perIP: false) { return }
        let key = ObjectIdentifier(connection)
        proxyHeadersPending[key] = connection
        var buffer: [UInt8] = []
        let timer = Timer(loop: loop)
        let finish = { [unowned self] in
            timer.close()
            proxyHeadersPending[key] = nil
            connection.onRead = nil
            connection.onClose = nil
        }
        timer.start(afterMilliseconds: Self.proxyHeaderTimeout) { [unowned self] in
            finish()
            logProxyRefused(proxy, "no complete PROXY header within \(Self.proxyHeaderTimeout / 1000) s")
            connection.close()
        }
        connection.onClose = finish
        connection.onRead = { [unowned self] bytes in
            // At most ProxyHeader.maxLength bytes plus one read are held: past its bound the parse
            // says invalid.
            buffer.append(contentsOf: bytes)
            switch ProxyHeader.parse(buffer) {
            case .incomplete:
                return
            case .invalid(let why):
                finish()
                logProxyRefused(proxy, why)
                connection.close()
            case .header(let client, let length):
                finish()
                connection.stopReading()
                admit(connection, ip: client?.ip ?? proxy, role: role, proxy: proxy, early: Array(buffer[length...]))
            }
        }
        connection.startReading()
    }

    /// "PROXY header from 10.0.0.5 refused: v1 header has an unknown protocol". The reasons are ours;
    /// the client's bytes are never logged.
    func logProxyRefused(_ peer: String, _ why: String) {
        metrics.connectionsRefused += 1
        log.fields("proxy_refused", level: .warning, ["client": .string("unknown[\(peer)]"), "reason": .string(why)],
                   text: "PROXY header from unknown[\(peer)] refused: \(why)")
    }
}
