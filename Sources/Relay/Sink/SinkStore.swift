// Keep mode: each accepted message is written as the exact bytes the client sent (after
// dot-unstuffing, no header added, Bcc kept), either as <dir>/<ID>.eml or into a maildir
// (<dir>/tmp/<name>, then renamed to <dir>/new/<name>, as maildir readers expect).
//
// The write runs on libuv's thread pool and the 250 is sent when the file is in place. There is no
// fsync: a sink is a test target, and its files need only be complete, not crash-proof. A message
// is held in memory until the end of DATA (max_message_size bounds it).

#if canImport(Glibc)
import Glibc
#endif
import UVRuntime

final class SinkStore {
    let loop: EventLoop
    let directory: String
    let format: SinkConfig.KeepFormat
    let hostname: String
    private var sequence = 0

    init(loop: EventLoop, directory: String, format: SinkConfig.KeepFormat, hostname: String) throws {
        self.loop = loop
        self.directory = directory
        self.format = format
        self.hostname = hostname
        try Self.makeDirectory(directory)
        if format == .maildir {
            for sub in ["tmp", "new", "cur"] { try Self.makeDirectory(directory + "/" + sub) }
        }
    }

    static func makeDirectory(_ path: String) throws {
        if mkdir(path, 0o755) != 0 && errno != EEXIST {
            throw ServerStartError(message: "keep_path \(path): \(String(cString: strerror(errno)))")
        }
    }

    /// Writes the message; `done` runs on the loop with nil, or what went wrong.
    func save(id: String, chunks: [[UInt8]], done: @escaping (String?) -> Void) {
        sequence += 1
        let temporary: String, final: String
        switch format {
        case .eml:
            temporary = "\(directory)/.\(id).tmp"
            final = "\(directory)/\(id).eml"
        case .maildir:
            // time.M<µs>P<pid>Q<seq>.host, after the maildir(5) convention; unique within this sink.
            let t = loop.clock.wall()
            let name = "\(t.seconds).M\(t.nanoseconds / 1000)P\(getpid())Q\(sequence).\(hostname)"
            temporary = "\(directory)/tmp/\(name)"
            final = "\(directory)/new/\(name)"
        }
        var failure: String?
        loop.queueWork({
            failure = Self.write(chunks, to: temporary, then: final)
        }, done: {
            done(failure)
        })
    }

    /// On a pool thread.
    private static func write(_ chunks: [[UInt8]], to temporary: String, then final: String) -> String? {
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { return "\(temporary): \(String(cString: strerror(errno)))" }
        for chunk in chunks {
            var offset = 0
            while offset < chunk.count {
                let n = chunk.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + offset, chunk.count - offset) }
                if n < 0 {
                    if errno == EINTR { continue }
                    let why = String(cString: strerror(errno))
                    close(fd)
                    unlink(temporary)
                    return "\(temporary): \(why)"
                }
                offset += n
            }
        }
        close(fd)
        if rename(temporary, final) != 0 {
            let why = String(cString: strerror(errno))
            unlink(temporary)
            return "\(final): \(why)"
        }
        return nil
    }
}
