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
        tlsClientContextLoading = true
        // @unchecked: written on a pool thread, read in the done callback, which libuv runs after it.
        final class Box: @unchecked Sendable { var result: Result<TLSContext, Error>? }
        let box = Box()
        loop.queueWork({ box.result = Result { try TLSContext.client() } }, done: { [weak self] in
            guard let self, generation == self.tlsClientContextGeneration else { return }
            self.tlsClientContextLoading = false
            switch box.result! {
            case .success(let context): self.tlsClientContext = context
            case .failure(let error): self.log.error("delivery TLS: cannot make a client context: \(error)")
            }
            self.pump()  // held back while there was no context yet
        })
    }

    /// SIGHUP: the CA store is read again if delivery may use it.
    func reloadClientTLSContext() {
        if mayUseTLS || tlsClientContext != nil { loadClientTLSContext() }
    }

    /// No delivery starts while the first read of the CA store is under way (`pump` waits for it), so
    /// a handshake never has to read the store on the loop.
    var waitingForClientTLSContext: Bool { tlsClientContext == nil && tlsClientContextLoading }

    /// The context for a new outbound handshake. Nil only if the CA store could not be read (logged
    /// then): the handshake fails, which opportunistic TLS answers by trying in the clear.
    func clientTLSContext() throws -> TLSContext {
        guard let context = tlsClientContext else {
            throw TLSError("no client TLS context: the CA store could not be read (see the log at start-up or SIGHUP)")
        }
        return context
    }
}
