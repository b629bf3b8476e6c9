#!/usr/bin/env python3
"""dkimpy (Debian's python3-dkim) as the independent reference for Tern's DKIM tests.

  dkimpy_check.py canon IN OUT   each line of IN: "H|B simple|relaxed HEX"; OUT gets, per line, the hex
                                 of dkimpy's canonical form of that header block (H) or body (B)
  dkimpy_check.py verify IN OUT  each line of IN: "HEX-MESSAGE NAME=HEX-TXT ..."; dkimpy verifies every
                                 signature of the message, its dnsfunc answering each NAME (and no other)
                                 with its TXT record; OUT gets "pass" or "fail: reason" per line
"""
import sys

import dkim
from dkim.canonicalization import Relaxed, Simple


def canon(kind, mode, data):
    algo = Relaxed if mode == "relaxed" else Simple
    if kind == "B":
        return algo.canonicalize_body(data)
    headers, _ = dkim.rfc822_parse(data + b"\r\n")
    return b"".join(name + b":" + value for name, value in algo.canonicalize_headers(headers))


def verify(message, records):
    def dnsfunc(qname, timeout=5):
        return records.get(qname)

    d = dkim.DKIM(message)
    count = len([h for h in d.headers if h[0].lower() == b"dkim-signature"])
    if count == 0:
        return "fail: no DKIM-Signature"
    for idx in range(count):
        try:
            if not d.verify(idx=idx, dnsfunc=dnsfunc):
                return "fail: signature %d does not verify" % idx
        except dkim.DKIMException as e:
            return "fail: signature %d: %s" % (idx, e)
    return "pass"


def main():
    mode, src, dst = sys.argv[1:4]
    out = []
    with open(src) as f:
        for line in f:
            parts = line.split()
            if mode == "canon":
                out.append(canon(parts[0], parts[1], bytes.fromhex(parts[2]) if len(parts) > 2 else b"").hex())
            else:
                records = dict((n.encode(), bytes.fromhex(v)) for n, v in (p.split("=") for p in parts[1:]))
                out.append(verify(bytes.fromhex(parts[0]), records))
    with open(dst, "w") as f:
        f.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
