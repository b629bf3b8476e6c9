// Delivery's client TLS context: one for every outbound connection, trusting the system CA store
// (SSL_CERT_FILE and SSL_CERT_DIR override it, as for openssl). Making it reads and parses the whole
// CA bundle, tens of milliseconds of disk and CPU, so it is made on the thread pool: at start-up,
// and again on SIGHUP, so that a bundle updated in place (update-ca-certificates) is in force after
// a reload, like the server's certificate. Handshakes then never touch the disk for the bundle.

import Logging
import UVRuntime

extension DeliveryManager {
    /// Some route, or the default, may use STARTTLS: the CA store is worth reading at start-up.
    var mayUseTLS: Bool {
        config.delivery.tls != .none || config.routes.security.values.contains { ($0.tls ?? .none) != .none }
    }

    /// Reads the CA store into a new client context on the thread pool; it replaces the current one
    /// when done. Connections already in a handshake keep the context they began with.
    func loadClientTLSContext() {
        tlsClientContextGeneration += 1
        let generation = tlsClientContextGeneration
        final class Box: @unchecked Sendable { var result: Result<TLSContext, Error>? }
        let box = Box()
        loop.queueWork({ box.result = Result { try TLSContext.client() } }, done: { [weak self] in
            guard let self, generation == self.tlsClientContextGeneration else { return }
            switch box.result! {
            case .success(let context): self.tlsClientContext = context
            case .failure(let error): self.log.error("delivery TLS: cannot make a client context: \(error)")
            }
        })
    }

    /// SIGHUP: the CA store is read again if delivery may use it.
    func reloadClientTLSContext() {
        if mayUseTLS || tlsClientContext != nil { loadClientTLSContext() }
    }

    /// The context for a new outbound handshake. Should the first STARTTLS come before the start-up
    /// read is done, the store is read here, on the loop, once.
    func clientTLSContext() throws -> TLSContext {
        if let context = tlsClientContext { return context }
        let context = try TLSContext.client()
        tlsClientContext = context
        return context
    }
}
