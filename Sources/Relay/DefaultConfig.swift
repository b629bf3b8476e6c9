// DefaultConfig.swift: the built-in configuration, byte for byte the text of etc/tern.toml.
//
// ConfigTests checks that the two are identical. After editing etc/tern.toml, paste its text
// between the delimiters below (it is a raw string: backslashes are literal).

enum DefaultConfig {
    static let text = #"""
# tern.toml: configuration of Tern, an SMTP relay.
#
# Every key is shown with its default, and this file is the built-in default:
# `tern serve` without --config, an empty config file and this file all run the
# same thing. A key left out takes its default; an unknown key, or a value of
# the wrong type, is an error that names the key. As written, Tern runs
# unprivileged: it listens on 127.0.0.1:2525 only, and keeps its queue in
# var/spool. A production relay sets server.listen (e.g. ["0.0.0.0:25", "[::]:25"])
# and spool.path.
#
# Relative paths (spool.path, tls.certificate, tls.key, auth.users_file, a
# route's auth_password_file) are from the directory of the config file, also
# on SIGHUP; without --config, from the working directory.
#
# Durations are strings like "30s", "5m", "2h", "1d", "1500ms", or an integer
# number of seconds.

# Name in the greeting, in EHLO (also to next hops) and in Received headers.
# Default: the machine's host name, fully qualified when the resolver knows it
# (as Postfix's myhostname). A relay sets it, to the name its address resolves
# to: without it, a host name with no dot is looked up in the resolver at
# start-up, which waits for the resolver's timeout when DNS is unreachable.
# hostname = "mail.example.com"

[server]
# Addresses to accept SMTP on, "ip:port" or "[ipv6]:port". For port 25 on
# every address: ["0.0.0.0:25", "[::]:25"].
listen = ["127.0.0.1:2525"]
# Clients in these networks may relay to any domain (CIDR blocks or plain IPs).
relay_networks = ["127.0.0.0/8", "::1/128"]
# Load balancers (HAProxy's send-proxy or send-proxy-v2) whose connections
# start with a PROXY header, v1 or v2, naming the real client: that address is
# then the client for relay_networks, the limits, the Received field and the
# logs. These peers must send one within 5 s; a PROXY header from anyone else,
# or a malformed one, closes the connection with a log line.
proxy_protocol_from = []
# Recipient domains accepted from any client; others only from relay_networks.
accept_domains = []
# Largest message accepted, in bytes (advertised with SIZE, RFC 1870).
max_message_size = 52428800
# Bytes of message data all sessions together may hold in memory (256 MiB);
# past it, sessions stop reading until the disk catches up (minimum 1048576).
max_buffered_data = 268435456
# Most recipients accepted in one transaction.
max_recipients = 1000
# RCPTs past max_recipients answered 452 4.5.3 without counting towards max_errors (the client sends
# them in another transaction, RFC 5321 4.5.3.1.8); past this many more, each counts as an error.
recipient_overshoot_limit = 1000
# Most client connections open at once.
max_connections = 20000
# Most connections open at once from one client IP.
max_connections_per_ip = 100
# Allow VRFY to confirm addresses.
vrfy = false
# Allow EXPN to show alias expansions.
expn = false
# Errors in one session before Tern replies 421 and closes it.
max_errors = 20
# Longest DATA text line in bytes, CRLF included (RFC 5321 4.5.3.1.6; minimum 1000).
max_line_length = 1000
# Received headers allowed before a message is refused as a loop (554 5.4.6).
max_hops = 50
# Keep Bcc headers instead of removing them.
keep_bcc = false
# How long to wait for the client's next command (RFC 5321 4.5.3.2.7); a line's deadline counts
# from its first byte, so dripping bytes does not extend it.
command_timeout = "5m"
# How long to wait for the next chunk of message data after DATA.
data_timeout = "5m"
# Look up the client's PTR name for the Received header.
reverse_dns = true
# Submission listeners (RFC 6409, e.g. "0.0.0.0:587"): STARTTLS is offered and
# AUTH is required before MAIL (530 5.7.0); an authenticated user may relay to
# any domain. Needs auth.users_file.
submission = []
# Implicit-TLS submission listeners (RFC 8314, e.g. "0.0.0.0:465"): TLS from the
# first byte, AUTH required before MAIL. Needs tls.certificate and auth.users_file.
submissions = []

[spool]
# Directory of the queue; relative: from the config file's directory (the
# working directory without --config). Tern creates it, and missing directories
# below the config's directory, but never a missing parent elsewhere.
path = "var/spool"

[dns]
# Name servers as "ip:port" (for the client's PTR name now, MX routing later);
# empty means those of /etc/resolv.conf.
servers = []

[delivery]
# Deliver queued mail; false keeps every message queued (maintenance, tests).
enabled = true
# Port of the remote MX hosts mail is delivered to.
port = 25
# Most outbound connections open at once, in total.
max_connections = 1000
# Most outbound connections open at once to one destination.
max_connections_per_destination = 20
# Waits between delivery attempts of a deferred message; the last one repeats.
retry_schedule = ["1m", "5m", "15m", "30m", "1h", "2h", "4h"]
# A message still undelivered after this long is bounced to its sender.
max_queue_lifetime = "5d"
# Warn the sender once a message has waited this long; "0s" turns warnings off.
delay_warning_time = "0s"
# How long to wait for a TCP connection to a next hop.
connect_timeout = "30s"
# How long to wait for the next hop's 220 greeting (RFC 5321 4.5.3.2.1).
greeting_timeout = "5m"
# How long to wait for the reply to a command (RFC 5321 4.5.3.2.2-4).
command_timeout = "5m"
# How long to wait to send each data block and for the reply to the final dot.
data_timeout = "10m"
# How long an idle connection waits for the next message to its next hop before QUIT; "0" closes at once.
connection_cache_time = "2s"
# Send with BDAT (RFC 3030: no dot-stuffing) when the next hop offers CHUNKING;
# false always uses DATA.
chunking = true
# TLS with next hops unless a route says otherwise: "none" (never STARTTLS),
# "opportunistic" (STARTTLS when offered, any certificate), "require" (STARTTLS
# or try later, any certificate), "verify" (STARTTLS with a certificate that
# chains to the system CA store and names the host, or try later). A failed
# "require"/"verify" host is a temporary failure: the next MX is tried. After a
# failed "opportunistic" handshake the same host is tried once in the clear.
tls = "opportunistic"
# A message with the header field "TLS-Required: No" (RFC 8689 section 5) and no
# REQUIRETLS asks that TLS policies not stop its delivery: true honours it, so a
# "require" or "verify" policy (of a route without credentials, a shaping rule
# or the line above) becomes "opportunistic" for that message, on a connection
# of its own. false (the default) delivers it like any other message.
honor_tls_required_no = false
# A destination that does not answer (connection refused or timed out, no
# greeting) this many times in a row is suspended: its queued mail waits without
# a connection attempt ("delivery temporarily suspended"), one probe connection
# at a time tests it, and a success resumes it at once (Postfix's "dead host").
dead_destination_failures = 5
# How long the first suspension lasts; it doubles after each failed probe, up to
# dead_destination_maximum.
dead_destination_initial = "1m"
dead_destination_maximum = "1h"

[routes]
# Next hops that replace a recipient domain's MX: the exact domain first, then
# "*" for every other domain. Quote keys. Default: none, MX lookups for all.
# "[host]:port" (brackets) delivers to that host's addresses without an MX
# lookup, like Postfix's relayhost; "host:port" delivers to host's MX hosts.
# The port is optional and defaults to delivery.port.
# "corp.example" = "[10.0.0.5]:25"
# "*" = "[smtp.upstream.example]:587"
# A route may also be a table: next_hop as above, tls (as delivery.tls), and
# credentials for a smart host that wants AUTH: auth_user with exactly one of
# auth_password, auth_password_file (its first line) or auth_password_env (an
# environment variable). Credentials are sent only over TLS (AUTH PLAIN, else
# LOGIN); refused credentials defer the mail. A table may also name the egress
# pool of the route's mail (pool = "bulk", see egress below).
# "*" = { next_hop = "[smtp.upstream.example]:587", tls = "verify", auth_user = "relay", auth_password_file = "/etc/tern/upstream.pw" }

# Traffic shaping: limits per destination, backoff when a destination says
# "slow down", and the local addresses mail leaves from. None by default: every
# destination gets delivery.max_connections_per_destination and
# delivery.connection_cache_time, and the kernel picks the source address. The
# examples below stay commented out: adapt them before use.
#
# Shaping rules, one [[shaping]] table each, match a destination by recipient
# domain ("example.com"), by suffix (".example.com": every domain below it), or
# by the MX host names its domain resolves to (mx, "MX rollup": every domain
# hosted at one provider shares one set of limits). The most specific match
# wins; a domain or MX name belongs to one rule only. Limits count per source
# address and destination. A key left out means [delivery]'s value, or no limit.
#   name: required; it names the rule in logs and metrics ("default" is taken).
#   max_connections, max_messages_per_connection: integers.
#   max_message_rate, max_connection_rate: "20/s", "300/min", "5000/h" or
#   "100000/d", spread evenly (no burst at the top of each minute; at most
#   1 ms ahead of the even spacing, so high rates are not cut by timer ticks).
#   connection_cache_time as delivery's, tls as a route's, pool as egress's.
# [[shaping]]
# name = "bigmail"
# mx = [".mx.bigmail.example"]
# max_connections = 10
# max_messages_per_connection = 100
# max_message_rate = "300/min"
# max_connection_rate = "5/s"
# connection_cache_time = "5s"
# tls = "opportunistic"
# pool = "bulk"
#
# Backoff rules, one [[backoff]] table each: a regular expression over a reply
# as "code enhanced-code text" ("421 4.7.0 Try again later"), matched without
# regard to case; when threshold replies match within its window, the action
# applies to that destination for duration, then its configured limits return.
# action "suspend" sends it nothing; "throttle" lowers its rate (rate) and/or
# its connections (connections). rules: only destinations of these [[shaping]]
# rules (default: every destination); name: for logs (default: backoff[N]).
# Providers word these replies in their own ways: the patterns below look for
# common phrases, not any provider's exact text. Check your logs and adapt them.
# Literal strings ('...') keep backslashes as they are.
# [[backoff]]
# name = "too-many-connections"
# reply = '^4\d\d .*too many (concurrent |simultaneous )?connections'
# threshold = "1 in 1m"
# action = "throttle"
# connections = 2
# duration = "15m"
# [[backoff]]
# name = "rate-limited"
# reply = '^4\d\d .*rate[ -]?limit(ed| exceeded)?'
# threshold = "3 in 5m"
# action = "throttle"
# rate = "1/s"
# duration = "30m"
# [[backoff]]
# name = "try-again-later"
# reply = '^4\d\d .*(try again later|temporarily deferred)'
# threshold = "10 in 5m"
# action = "suspend"
# duration = "10m"
# rules = ["bigmail"]
#
# Egress sources: an address of this machine to send from (checked at start-up
# and on SIGHUP) and the name to say in EHLO from it (default: hostname); log
# lines name it as source=NAME[ip]. A pool takes its sources in turn, each in
# proportion to its weight. A message uses the pool of its authenticated user
# (users), else of its sender's domain (sender_domains), else of its
# destination's shaping rule or route (pool), else default; with none, the
# kernel picks the address.
# [egress.sources.a]
# address = "192.0.2.10"
# ehlo = "mta-a.example.net"
# [egress.sources.b]
# address = "2001:db8::10"
# ehlo = "mta-b.example.net"
# [egress.pools.bulk]
# sources = { a = 2, b = 1 }
# [egress.select]
# users = { "alice" = "bulk" }
# sender_domains = { "news.example.org" = "bulk" }
# default = "bulk"

[tls]
# PEM certificate chain and private key for STARTTLS (RFC 3207) and the
# submissions listeners; TLS 1.2 and 1.3 only. Empty: TLS is not offered.
# SIGHUP reloads both. Example: "/etc/tern/tls/cert.pem", "/etc/tern/tls/key.pem".
certificate = ""
key = ""
# TLS 1.2 ciphers of port 25's STARTTLS (server.listen): "medium" (forward
# secret only: ECDHE with AES-GCM or ChaCha20 first, then ECDHE with AES-CBC for
# old peers; no RSA key exchange, RC4, 3DES, NULL or export), "high" (ECDHE
# with AEAD only), or an OpenSSL cipher list. TLS 1.3 suites are all AEAD.
ciphers = "medium"
# TLS 1.2 ciphers of server.submission and server.submissions, as above.
submission_ciphers = "high"

[auth]
# File of users and scrypt password hashes, one "user:$scrypt$..." line each,
# written by `tern passwd --file FILE USER`. Empty: AUTH is not offered.
# AUTH PLAIN and LOGIN (RFC 4954) are offered only under TLS.
users_file = ""
# Failed AUTH attempts from one client before it is locked out (454 4.7.0); a
# client is an IPv4 address or an IPv6 /64 (IPv4-mapped IPv6 counts as IPv4).
# Each failure is answered 535 5.7.8 after a delay that doubles (0.5s, 1s, 2s...).
max_failures = 5
# How long a locked-out client (IPv4 address or IPv6 /64) stays locked out.
lockout_time = "15m"
# Offer AUTH without TLS to clients on 127.0.0.0/8 and ::1 (webmail on this host).
cleartext_from_loopback = false
# Per user, the only MAIL FROM addresses ("user@domain" or "@domain") the user
# may send as (553 5.7.1 otherwise); users not listed may use any sender.
# Example: senders = { alice = ["alice@example.com", "@alice.example"] }
senders = {}

# [[dkim.sign]]
# DKIM signatures (RFC 6376; Ed25519: RFC 8463), one table per signature: two
# tables for a domain sign its mail twice (RSA and Ed25519). Signed: mail from
# relay_networks or authenticated clients whose From: domain is `domain`, or a
# subdomain of it with no keys of its own (the closest configured parent signs),
# never mail relayed inbound for accept_domains. The signature is made before
# the 250 and spooled with the message; a message that cannot be signed gets
# 451 4.3.0. Make a key and its TXT record with
# `tern dkim keygen --domain D --selector S [--algorithm ed25519|rsa-2048]`.
# Keys are read at start-up and by SIGHUP; a bad key refuses the config.
# domain = "example.com"                  # d=
# selector = "s2026r"                     # s=: s2026r._domainkey.example.com
# key = "/etc/tern/dkim/example.com.rsa.pem"
# algorithm = "rsa-sha256"                # or "ed25519-sha256"
# canonicalization = "relaxed/relaxed"    # or "simple/simple", "relaxed/simple"...
# headers = ["from", "to", "subject"]     # default: From, To, Cc, Subject, Date,
#                                         # Message-ID, Reply-To, MIME, List-Unsubscribe...
# expire = "7d"                           # x=; default: none
#
# [dkim]
# A fixed signing domain (one with [[dkim.sign]] tables) instead of the From:
# domain's: for an authenticated user's mail, or for the mail a [routes] entry
# carries ("*" for every domain without a route of its own).
# users = { newsletter = "esp.example" }
# routes = { "partner.example" = "esp.example" }

[bounce]
# Bounce classes: each failure reply gets a class (KumoMTA's names:
# InvalidRecipient, BadDomain, QuotaIssues, SpamBlock, AuthenticationFailed...),
# shown as bounce_class= in the log line, in the bounce's X-Tern-Bounce-Class
# header and in tern_bounce_class_total. The built-in rules are
# etc/bounce-classes.toml; rules of your own, [[bounce.rule]] tables, are tried
# before them (first match wins). false: only your own rules.
builtin_rules = true
# [[bounce.rule]]
# class = "SpamBlock"                     # 1-64 letters, digits or '_'
# reply = ["blocked by rbl\\.example"]    # regular expressions over
#                                         # "code enhanced text", no case

[suppression]
# The suppression list: recipients (an address, or "@domain" for all of it)
# that Tern will not send to, for every sender or for one sender domain. A
# RCPT for one is refused with 550 5.1.1. Kept in the spool directory
# (suppression.list). A recipient whose delivery bounces permanently with one
# of these bounce classes is added for every sender; [] adds none.
auto_classes = ["InvalidRecipient", "BadDomain"]

[events]
# Message events as JSON Lines, one object a line: reception, delivery,
# transient_failure, bounce, expiration, rejection, suppression, admin (with
# queue_id, sender, recipient, destination, next_hop, source, tls, reply, dsn,
# bounce_class, attempt, size, client). "" writes none. SIGUSR1 reopens the
# file (for logrotate). A relative path is from this file's directory.
file = ""

[http]
# The injection API: POST /api/inject with "Authorization: Bearer TOKEN" and a
# JSON body in the shape of KumoMTA's /api/inject/v1 (envelope_sender,
# recipients, content as a raw message or an object to build one from). The
# answer ({"queue_ids": [...], "rejected": [...]}) comes once the messages are
# on disk. "" (the default): off. Not the admin endpoint's listener.
listen = ""
# Bearer tokens, NAME:sha256$HEX lines: `tern token --file F NAME` adds one and
# prints it once. Required with listen; read again on SIGHUP.
tokens_file = ""
# The largest request body, in bytes (more: 413).
max_body_size = 10485760
# Connections open at once, each holding at most max_body_size.
max_connections = 16
# How long a request may take to arrive, from its first byte (then 408).
request_timeout = "30s"

[cluster]
# Several Tern nodes (behind HAProxy, say) sharing through one Redis what a
# mailbox provider must see as one sender's: the suppression list, suspensions
# and throttles; each node keeps its own spool. Redis down: every node goes on
# alone (logged once, counted) and rejoins by itself. The Redis server:
# "host:port", "[v6]:port" or a unix socket's path. "" (the default): off.
redis = ""
# This node's name, unique in the cluster (letters, digits, '-', '.', '_').
# "" (the default): the machine's host name.
node = ""
# A Redis command not answered within this counts Redis as down (10ms to 60s).
timeout = "500ms"

[priority]
# RFC 6710 priority levels, -9 (lowest) to 9 (highest), by envelope sender
# domain; a message with none listed has priority 0.
sender_domains = {}
# Priority levels by recipient domain.
recipient_domains = {}
# Example: sender_domains = { "alerts.example.com" = 5 }

[aliases]
# Rewrites a recipient to one address (a string) or several (an array).
# A key is a full address (quoted) or a bare local part like postmaster.
# Default: none (Tern has no local delivery: point postmaster at a mailbox).
# postmaster = "hostmaster@example.com"
# "abuse@example.com" = "postmaster@example.com"

[log]
# How log lines on stderr look: "plain" (text) or "json" (one JSON object per
# line, with qid, session, client, from, to, relay, delay, dsn, status, reply,
# tls as members). `tern serve --log-format` overrides it.
format = "plain"

[admin]
# The admin endpoint: GET /metrics (Prometheus) and the /queue API that
# `tern queue` talks to. "ip:port"; keep it on loopback unless a firewall
# guards it (the queue API can delete mail). An absolute path listens on a
# unix socket instead ("/run/tern/admin.sock"). "" switches it off.
listen = "127.0.0.1:8025"
# A request (head and body) must arrive whole within this time from its
# first byte, else 408 and the connection closes.
request_timeout = "10s"

"""#
}
