import Logging
import Testing
@testable import Relay
#if canImport(Glibc)
import Glibc
#endif

@Suite(.serialized) struct LogBufferTests {
    /// Everything readable from a non-blocking pipe now.
    private func drain(_ fd: Int32) -> String {
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n <= 0 { break }
            out += chunk[..<n]
        }
        return String(decoding: out, as: UTF8.self)
    }

    @Test func linesWaitForTheFlushThenGoOutWholeAndInOrder() throws {
        var fds: [Int32] = [0, 0]
        try #require(pipe(&fds) == 0)
        defer { close(fds[0]); close(fds[1]) }
        _ = fcntl(fds[0], F_SETFL, O_NONBLOCK)
        let handler = TernLogHandler(format: .plain, level: .info, fd: fds[1])
        let logger = Logger(label: "t") { _ in handler }
        LogBuffer.shared.start(fd: fds[1])
        logger.info("first")
        logger.info("second")
        #expect(drain(fds[0]) == "", "gathered, not written yet")
        LogBuffer.shared.flush()
        let written = drain(fds[0]).split(separator: "\n")
        #expect(written.count == 2)
        #expect(written.first?.hasSuffix("info first") == true)
        #expect(written.last?.hasSuffix("info second") == true)
        // After stop, a line is written at once.
        LogBuffer.shared.stop()
        logger.info("third")
        #expect(drain(fds[0]).hasSuffix("info third\n"))
    }

    @Test func aFullBufferIsWrittenWithoutWaiting() throws {
        var fds: [Int32] = [0, 0]
        try #require(pipe(&fds) == 0)
        defer { close(fds[0]); close(fds[1]) }
        _ = fcntl(fds[0], F_SETFL, O_NONBLOCK)
        _ = fcntl(fds[1], 1031 /* F_SETPIPE_SZ */, Int32(1 << 20))  // room for more than one flush
        let handler = TernLogHandler(format: .plain, level: .info, fd: fds[1])
        let logger = Logger(label: "t") { _ in handler }
        LogBuffer.shared.start(fd: fds[1])
        defer { LogBuffer.shared.stop() }
        let line = String(repeating: "x", count: 1000)
        for _ in 0..<(LogBuffer.limit / 1000 + 1) {
            logger.info("\(line)")
        }
        let written = drain(fds[0])
        #expect(written.count >= LogBuffer.limit)
        #expect(written.hasSuffix("\n"))
    }
}
