// Writing several byte arrays as one: commands, a message and its terminator go to the kernel in
// one writev (write(gathering:)) instead of being joined into a new array first. Only what the
// socket does not take at once is copied.

extension TCPConnection {
    /// Writes the arrays in order, with one system call if the socket takes them all.
    public func write(pieces: [[UInt8]]) {
        switch pieces.count {
        case 0: return
        case 1: write(pieces[0])
        default:
            withUnsafeTemporaryAllocation(of: UnsafeRawBufferPointer.self, capacity: pieces.count) { parts in
                // Each array's bytes are pinned only inside its closure: nest one closure per piece.
                func pin(_ k: Int) {
                    guard k < pieces.count else { return write(gathering: parts) }
                    pieces[k].withUnsafeBytes { bytes in
                        parts.initializeElement(at: k, to: bytes)
                        pin(k + 1)
                    }
                }
                pin(0)
            }
        }
    }
}
