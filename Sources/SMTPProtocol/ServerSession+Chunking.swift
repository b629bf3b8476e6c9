// CHUNKING (RFC 3030): the message in BDAT chunks instead of DATA.
//
//   BDAT <size> [LAST]   then exactly <size> octets of message, answered once they are read.
//
// The octets are the message as it is: nothing is dot-stuffed and no line ends the data, so there is
// nothing for a smuggled "\n.\n" to end. They still go through the DATA reader's checks (bare CR or
// LF, NUL, line length, size, Received count, Bcc) in its `chunked` mode, so a message is the same
// in the spool however it came. A chunk is answered 250 when read, the LAST one once the message is
// durable. Every BDAT whose size could be read has its octets read, also when it is refused, so that
// they are never taken for commands; one whose size cannot be read ends the session, as nothing tells
// where its chunk ends.
//
// BODY=BINARYMIME (RFC 3030 §3) needs BDAT (DATA is 503): its body is octets, not lines, so after
// the header section only the size is checked and nothing is repaired (DataDecoder's `binary`).
//
//   503 5.5.1 BDAT without MAIL or RCPT, DATA or RCPT after BDAT, BDAT after a refused chunk
//   552 5.3.4 the message passed max_message_size (answered at the end of that chunk)
//   554 5.6.0 bare CR/LF, NUL or a long line in the chunk (answered at its end)
//   501 5.5.4 a BDAT line that is not "BDAT size [LAST]": the connection is closed

/// The BDAT chunk being read.
struct ChunkRead {
    /// The chunk's size, as BDAT announced it.
    var size: Int
    /// Octets of the chunk still to come.
    var remaining: Int
    /// BDAT … LAST: the message ends with this chunk.
    var last: Bool
    /// A hook asked to drop the connection once message data arrives (`tern sink`).
    var dropInData: Bool
}

extension ServerSession {
    mutating func bdat(size: Int, last: Bool) {
        guard config.extensions.contains(.chunking) else {
            fail(Reply(502, "5.5.1", "Error: BDAT not offered"))
            return discardChunk(size)
        }
        switch state {
        case .betweenChunks(let t, let decoder):
            readChunk(t, decoder, ChunkRead(size: size, remaining: size, last: last, dropInData: false))
        case .mail(let t):
            if let (r, reason) = missingRecipients(t) {
                fail(r, reason, logged: reason == .noValidRecipients)
                return discardChunk(size)
            }
            var drop = false
            if hooks != nil {
                let verdict = consult(.data, recipients: t.recipients)
                if let refusal = verdict.reply {
                    answerFault(refusal)
                    return discardChunk(size)
                }
                drop = verdict.dropInData
            }
            let start = openMessage(t)
            emit(.beginMessage(start))
            readChunk(t, messageDecoder(chunked: true, binary: t.isBinary), ChunkRead(size: size, remaining: size, last: last, dropInData: drop))
        default:
            if chunkRefused {
                // Pipelined behind a refused chunk: expected, and not the client's error (RFC 3030 §2).
                reply(Reply(503, "5.5.1", "Error: the message was refused; send RSET"))
            } else {
                fail(Reply(503, "5.5.1", "Error: need MAIL command"))
            }
            discardChunk(size)
        }
    }

    /// Starts reading a chunk; a chunk of no octets ends at once.
    mutating func readChunk(_ t: Transaction, _ decoder: DataDecoder, _ chunk: ChunkRead) {
        state = .chunk(t, decoder, chunk)
        if chunk.remaining == 0 { endOfChunk() }
    }

    /// The octets of a refused BDAT are read and dropped (unless the refusal closed the session).
    mutating func discardChunk(_ size: Int) {
        guard size > 0, phase != .closed else { return }
        state = .discarding(remaining: size, after: state)
    }

    /// A chunk's last octet was read: a problem in it refuses the message now; LAST ends the message;
    /// otherwise the chunk is acknowledged and the next BDAT awaited.
    mutating func endOfChunk() {
        guard case .chunk(let t, var d, let chunk) = state else { return }
        if chunk.last {
            state = .modifying
            d.finishChunks(into: &dataOut)
            state = .chunk(t, d, chunk)
            chunkRefused = d.problem != nil
            return finishMessage(t, d)
        }
        if let problem = d.problem {
            chunkRefused = true
            return refuseMessage(refusalReply(problem), problem == .tooBig ? .messageTooBig : .badMessageData,
                                 command: "BDAT")
        }
        state = .betweenChunks(t, d)
        reply(Reply(250, "2.0.0", "Ok: \(chunk.size) octets received"))
    }

    /// A BDAT line whose chunk size cannot be read: its octets would be taken for commands.
    mutating func badChunkSize(_ why: String) {
        fail(Reply(501, "5.5.4", "Syntax error: \(why); closing the connection"), .syntaxError, logged: true)
        if phase != .closed { close() }
    }

    /// A new transaction or session state begins (RSET, HELO/EHLO): a message open between BDAT
    /// chunks is dropped.
    mutating func abandonMessage() {
        guard case .betweenChunks = state else { return }
        dataOut = []
        emit(.abortMessage)
        state = .ready
    }
}
