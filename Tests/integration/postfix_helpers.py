"""A private Postfix instance for the integration tests: its own config_directory and queue_directory
under the test's directory, smtpd on host:port, and everything it accepts relayed to one next hop
(relayhost) without DNS. Postfix's smtpd is the independent peer for what Tern sends (BDAT since 3.4,
DSN since 2.3); its log (maillog_file, through postlogd) counts each session's commands at disconnect
("disconnect from ... ehlo=1 mail=1 rcpt=1 bdat=1 quit=1 commands=5").

Needs Debian's postfix package and root (the instance runs as the postfix user, as installed)."""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

MAIN_CF = """\
compatibility_level = 3.6
config_directory = {d}/etc
queue_directory = {d}/spool
data_directory = {d}/data
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
meta_directory = /etc/postfix
shlib_directory = /usr/lib/postfix
mail_owner = postfix
setgid_group = postdrop
syslog_name = postfix-test
myhostname = postfix-hop.test
mydomain = test
myorigin = $myhostname
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
# master.cf binds the one address; "all" because a fresh network namespace lists 127.0.0.1 only,
# and Postfix wants an inet_interfaces address that an interface has exactly.
inet_interfaces = all
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
relayhost = [{relay_host}]:{relay_port}
smtp_dns_support_level = disabled
smtp_host_lookup = native
biff = no
maillog_file = {d}/log/maillog
maillog_file_prefixes = {d}
smtpd_client_event_limit_exceptions = $mynetworks
"""

MASTER_CF = """\
{host}:{port} inet n - n - 100 smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class PostfixHop:
    def __init__(self, workdir: Path, host: str, port: int, relay_host: str, relay_port: int,
                 extra: str = ""):
        if shutil.which("postfix") is None and not Path("/usr/sbin/postfix").exists():
            pytest.skip("postfix (Debian package postfix) is not installed")
        self.dir = workdir
        self.host, self.port = host, port
        for sub in ("etc", "spool", "data", "log"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        (self.dir / "etc" / "main.cf").write_text(
            MAIN_CF.format(d=self.dir, host=host, relay_host=relay_host, relay_port=relay_port) + extra)
        (self.dir / "etc" / "master.cf").write_text(MASTER_CF.format(host=host, port=port))
        shutil.chown(self.dir / "data", user="postfix")
        self.log_path = self.dir / "log" / "maillog"

    def postfix(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["/usr/sbin/postfix", "-c", str(self.dir / "etc"), *args],
                              capture_output=True, text=True, timeout=60)

    def start(self) -> "PostfixHop":
        self.postfix("post-install", "create-missing")
        r = self.postfix("start")
        assert r.returncode == 0, f"postfix start failed: {r.stdout}{r.stderr}"
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection((self.host, self.port), timeout=1) as s:
                    if s.recv(512).startswith(b"220"):
                        s.sendall(b"QUIT\r\n")
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"postfix did not greet on {self.host}:{self.port}:\n{self.log()}"
            time.sleep(0.1)
        return self

    def stop(self) -> None:
        self.postfix("stop")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def disconnects(self) -> list[str]:
        """The command counts of every smtpd session but the start-up probes ("ehlo=1 mail=1 ... commands=N")."""
        out = []
        for line in self.log().splitlines():
            m = re.search(r"disconnect from \S+ (.*)$", line)
            if m and "mail=" in m.group(1):
                out.append(m.group(1))
        return out

    def wait_disconnects(self, n: int, timeout: float = 30.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while len(self.disconnects()) < n:
            assert time.monotonic() < deadline, f"{len(self.disconnects())} of {n} sessions logged:\n{self.log()[-4000:]}"
            time.sleep(0.1)
        return self.disconnects()


@contextlib.contextmanager
def postfix_relaying_to_hop(postfix_host: str, hop_host: str):
    """(PostfixHop, NextHop): a Postfix smtpd on postfix_host relaying everything to an aiosmtpd NextHop
    on hop_host; both stopped, and Postfix's directory removed, on the way out."""
    from conftest import free_port
    from delivery_helpers import NextHop
    hop = NextHop(hop_host, free_port(hop_host)).start()
    # Not under pytest's tmp_path: its directories are 0700, and Postfix's daemons run as postfix.
    workdir = Path(tempfile.mkdtemp(prefix="tern-postfix-"))
    workdir.chmod(0o755)
    pf = PostfixHop(workdir, postfix_host, free_port(postfix_host), hop.host, hop.port)
    try:
        yield pf.start(), hop
    finally:
        pf.stop()
        hop.stop()
        shutil.rmtree(workdir, ignore_errors=True)

