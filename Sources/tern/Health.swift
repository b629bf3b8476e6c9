// `tern health`: asks the running relay's admin endpoint whether it is alive (GET /health: the loop
// answers) or, with --ready, ready for mail (GET /ready: listening, spool writable, queue loaded). For
// container health checks (docker/Dockerfile's HEALTHCHECK) where the image has no curl.
//
// Exit status as Docker's HEALTHCHECK reads it: 0 healthy, 1 anything else (unreachable, an error
// answer, a bad config); 2 is reserved there, so never used.

import ArgumentParser
import Foundation
import Relay
import SMTPProtocol

struct Health: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Ask the running relay whether it is alive (/health) or ready (/ready); exit 0 if so, else 1.")

    @OptionGroup var endpoint: AdminOptions

    @Flag(help: "Ask /ready instead: listening, spool writable, queue loaded from the spool.")
    var ready = false

    @Option(help: "Seconds to wait for the answer.")
    var timeout: Int = 5

    func validate() throws {
        guard timeout > 0 else { throw ValidationError("--timeout must be at least 1 second") }
    }

    func run() throws {
        let path = ready ? "/ready" : "/health"
        do {
            var client = try endpoint.resolvedClient()
            client.timeoutSeconds = timeout
            let response = try client.request("GET", path)
            guard response.status == 200 else {
                unhealthy("\(path): \(response.status) \(AdminOptions.errorMessage(response))")
            }
            print(terminalSafe(response.text.trimmingCharacters(in: .whitespacesAndNewlines)))
        } catch let error as AdminClientError {
            unhealthy(error.message)
        } catch {
            unhealthy("\(error)")
        }
    }

    func unhealthy(_ message: String) -> Never {
        FileHandle.standardError.write(Data("tern health: \(terminalSafe(message))\n".utf8))
        Foundation.exit(1)
    }
}
