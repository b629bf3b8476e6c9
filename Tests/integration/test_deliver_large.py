"""Large messages to a next hop, in the clear and over STARTTLS: the bytes the next hop receives are
the bytes tern accepted plus its Received header, whether a message goes out as it is (CRLF lines,
no line starting with ".": sent without a copy, next to the commands in one gathering write) or
needs dot-stuffing on the way out. The messages are larger than a socket takes at once, so the
part the kernel does not take is queued behind the commands and before the final ".".
"""

from __future__ import annotations

from conftest import check_received, make_message, split_received
from test_delivery import (DNS_RECORDS, HOP_ADDRESSES, SENDER, diagnostics, dns, hop_port, hops, relay,  # noqa: F401
                           send_many, wait_gone)
from test_outbound_tls import TLSNextHop, certs  # noqa: F401


def body_lines(count: int, first: int = 0) -> bytes:
    return b"".join(b"%06d " % n + b"abcdefghijklmnopqrstuvwxyz0123456789" * 2 + b"\r\n"
                    for n in range(first, first + count))


def messages(domain: str) -> list[tuple[str, bytes]]:
    clean = body_lines(4000)                                   # about 320 KB, nothing to encode
    dotted = body_lines(2000) + b".a line with a dot\r\n..two\r\n.\r\n" + body_lines(2000, 2000)
    dot_last = body_lines(3000) + b".the last line starts with a dot\r\n"
    out = []
    for i, body in enumerate([clean, dotted, b"one line\r\n", dot_last, b"", clean]):
        rcpt = f"big{i}@{domain}"
        out.append((rcpt, make_message(subject=f"big {i}", body=body, to=rcpt)))
    return out


def deliver_and_compare(tern, hop, domain: str) -> list:
    items = messages(domain)
    ids = send_many(tern, [(SENDER, [rcpt], msg, "") for rcpt, msg in items])
    got = hop.wait_for(len(items), timeout=60, on_timeout=lambda: diagnostics(tern, hop))
    by_rcpt = {t.rcpts[0]: t for t in got}
    assert sorted(by_rcpt) == sorted(r for r, _ in items), f"delivered to {sorted(by_rcpt)}"
    for (rcpt, msg), qid in zip(items, ids):
        t = by_rcpt[rcpt]
        header, rest = split_received(t.content)
        check_received(header, queue_id=qid, rcpt=rcpt)
        assert len(rest) == len(msg) and rest == msg, (
            f"{rcpt}: {len(msg)} bytes accepted, {len(rest)} delivered after the Received header;"
            f" first difference at {next((k for k, (a, b) in enumerate(zip(rest, msg)) if a != b), None)}")
    wait_gone(tern, ids, hop)
    return got


def test_large_messages_in_the_clear_arrive_byte_for_byte(relay, hops):
    hop = hops("127.0.0.12")  # bulk.test, plain aiosmtpd
    tern = relay()
    deliver_and_compare(tern, hop, "bulk.test")


def test_large_messages_over_starttls_arrive_byte_for_byte(relay, hops, certs):
    hop = hops("127.0.0.9", cls=TLSNextHop, cert=certs["selfsigned"])  # mx1.mx.test, opportunistic TLS
    tern = relay()
    deliver_and_compare(tern, hop, "mx.test")
    assert hop.tls_flags and all(hop.tls_flags), f"not every transaction was encrypted: {hop.tls_flags}"
