#!/usr/bin/env bash
# TLS benchmark (issue 4): STARTTLS handshakes per second, and messages relayed end to end with
# STARTTLS on both hops, Tern beside Postfix, same machine, same run. Reports figures; never
# passes or fails. As root, from the repository:
#
#   bench/tls/run.sh                    # RUNS=3, N_HS=5000 handshakes, N_MSG=4000 messages
#   RUNS=1 N_HS=500 N_MSG=1000 bench/tls/run.sh
#
# Everything runs in a private network namespace (loopback only). Client, through bench/tls/load.py
# (which measures the peer's and the client's CPU): `tern blast --handshakes N_HS` for the
# handshakes (greeting, EHLO, STARTTLS, TLS, EHLO, QUIT), HS_BLAST_PROCS processes sharing HS_CONC
# connections (HS_CLIENT=python for the old Python ssl client); `tern blast --starttls` for the
# relay phase. Next hop (sink) for both
# peers: a second `tern serve` with TLS and delivery off, its spool on a private tmpfs. Both peers
# use opportunistic TLS outbound. The certificate is an ECDSA P-256 one made by openssl for the run.
# The client shares the 2 cores with the peer: the summary shows how much CPU it took, and the
# peer's CPU per handshake or message (its process tree) beside the rates.
# Results: bench/results/tls-<date>/results.jsonl and summary.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD

RUNS=${RUNS:-3}
N_HS=${N_HS:-5000}
N_MSG=${N_MSG:-4000}
PROCS=${PROCS:-8}
PER_CONN=${PER_CONN:-10}
SIZE=${SIZE:-4096}
PEERS=${PEERS:-"tern postfix"}
RELAY_CLIENT=${RELAY_CLIENT:-blast}   # relay load: blast (tern blast --starttls, 4x PROCS connections) or python
HS_CLIENT=${HS_CLIENT:-blast}         # handshake load: blast (tern blast --handshakes) or python (PROCS processes)
HS_CONC=${HS_CONC:-32}                # connections in the handshake phase (tern blast), shared by
HS_BLAST_PROCS=${HS_BLAST_PROCS:-2}   # this many tern blast processes (each is one thread)
TERN_BIN=${TERN_BIN:-$REPO/.build-bench/release/tern}
OUT=${OUT:-${RESULTS_DIR:-$REPO/bench/results/tls-$(date -u +%Y%m%d-%H%M%S)}}
SHARED=${BENCH_DIR:-$REPO/../shared/bench}

if [ -z "${TLS_BENCH_INNER:-}" ]; then
    [ "$(id -u)" -eq 0 ] || { echo "run as root (unshare, postfix)" >&2; exit 1; }
    if [ -z "${SKIP_BUILD:-}" ]; then
        swift build -c release --scratch-path .build-bench --product tern
    fi
    mkdir -p "$OUT"
    export TLS_BENCH_INNER=1 TERN_BIN OUT
    exec unshare --net --mount -- bash -c 'ip link set lo up && exec "$0"' "$0"
fi

mkdir -p "$OUT"
W=$(mktemp -d /tmp/tern-tls-bench.XXXXXX)
chmod 755 "$W"  # Postfix daemons run as postfix and must reach their queue below it
trap 'for f in "$W"/*.stop; do [ -f "$f" ] && sh "$f"; done; mountpoint -q "$W/sink-spool" && umount "$W/sink-spool"; rm -rf "$W"' EXIT
# Postfix insists that inet_interfaces is an address of an interface: 127.0.0.1 for both, two ports.
RELAY_ADDR=127.0.0.1 RELAY_PORT=2525 SINK_ADDR=127.0.0.1 SINK_PORT=2526
SINK_ADMIN_PORT=8126  # the sink's /metrics: its received-messages counter is the end-to-end count

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=relay.test \
    -addext subjectAltName=DNS:relay.test -keyout "$W/key.pem" -out "$W/cert.pem" 2>/dev/null

wait_port() {  # host port
    for _ in $(seq 1 200); do
        if python3 -c "import socket,sys; socket.create_connection(('$1', $2), timeout=1).close()" 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "nothing listens on $1:$2" >&2; return 1
}

start_sink() {
    mkdir -p "$W/sink-spool"
    mount -t tmpfs -o size=2g tmpfs "$W/sink-spool"
    cat > "$W/sink.toml" <<TOML
hostname = "sink.test"
[server]
listen = ["$SINK_ADDR:$SINK_PORT"]
relay_networks = ["127.0.0.0/8"]
reverse_dns = false
[spool]
path = "$W/sink-spool"
[delivery]
enabled = false
[admin]
listen = "$SINK_ADDR:$SINK_ADMIN_PORT"
[tls]
certificate = "$W/cert.pem"
key = "$W/key.pem"
TOML
    "$TERN_BIN" serve --config "$W/sink.toml" 2>"$W/sink.log" &
    echo "kill $! 2>/dev/null; sleep 0.5" > "$W/sink.stop"
    wait_port "$SINK_ADDR" "$SINK_PORT" || { tail -20 "$W/sink.log" >&2; return 1; }
}

stop_sink() {
    sh "$W/sink.stop"; rm -f "$W/sink.stop"
    umount "$W/sink-spool"
}

start_tern() {
    mkdir -p "$W/tern"
    cat > "$W/tern/tern.toml" <<TOML
hostname = "relay.test"
[server]
listen = ["$RELAY_ADDR:$RELAY_PORT"]
relay_networks = ["127.0.0.0/8"]
reverse_dns = false
max_connections_per_ip = 1000
[spool]
path = "$W/tern/spool"
[delivery]
tls = "opportunistic"
[routes]
"*" = "[$SINK_ADDR]:$SINK_PORT"
[admin]
listen = "127.0.0.1:8125"
[tls]
certificate = "$W/cert.pem"
key = "$W/key.pem"
TOML
    "$TERN_BIN" serve --config "$W/tern/tern.toml" 2>"$W/tern/log" &
    PEER_PID=$!
    echo "kill $PEER_PID 2>/dev/null; sleep 1" > "$W/peer.stop"
    wait_port "$RELAY_ADDR" "$RELAY_PORT"
}

start_postfix() {
    local P="$W/postfix" PF="$SHARED/peers/postfix"
    mkdir -p "$P/files"
    { cat "$PF/main.cf.in"; cat <<CF

# TLS on both hops (bench/tls)
smtpd_tls_cert_file = $W/cert.pem
smtpd_tls_key_file = $W/key.pem
smtpd_tls_security_level = may
smtp_tls_security_level = may
smtpd_tls_loglevel = 0
smtp_tls_loglevel = 0
CF
    } > "$P/files/main.cf.in"
    { cat "$PF/master.cf.in"; echo "tlsmgr    unix  -       -       n       1000?   1       tlsmgr"; } > "$P/files/master.cf.in"
    cp "$PF/start" "$P/files/start"
    BENCH_WORKDIR="$P/w" RELAY_ADDR=$RELAY_ADDR RELAY_PORT=$RELAY_PORT SINK_ADDR=$SINK_ADDR SINK_PORT=$SINK_PORT \
        sh "$P/files/start" > "$P/pid"
    PEER_PID=$(head -1 "$P/pid")
    echo "postfix -c '$P/w/etc' stop >/dev/null 2>&1; sleep 1" > "$W/peer.stop"
    wait_port "$RELAY_ADDR" "$RELAY_PORT"
}

{
    echo "date: $(date -u)"; echo "commit: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null)"
    echo "cores: $(nproc)"; echo "load: $(cat /proc/loadavg)"; echo "postfix: $(postconf -d mail_version 2>/dev/null)"
    echo "openssl: $(openssl version)"; echo "N_HS=$N_HS N_MSG=$N_MSG PROCS=$PROCS PER_CONN=$PER_CONN SIZE=$SIZE RELAY_CLIENT=$RELAY_CLIENT HS_CLIENT=$HS_CLIENT HS_CONC=$HS_CONC HS_BLAST_PROCS=$HS_BLAST_PROCS"
} > "$OUT/env.txt"

for rep in $(seq 1 "$RUNS"); do
    for peer in $PEERS; do
        start_sink
        "start_$peer"
        if [ "$HS_CLIENT" = blast ]; then hs_procs=$HS_CONC; else hs_procs=$PROCS; fi
        python3 "$REPO/bench/tls/load.py" handshake --host $RELAY_ADDR --port $RELAY_PORT --n 200 --procs "$hs_procs" \
            --pid "$PEER_PID" --client "$HS_CLIENT" --tern "$TERN_BIN" --blast-procs "$HS_BLAST_PROCS" >/dev/null  # warm-up (Postfix forks its smtpd processes)
        hs=$(python3 "$REPO/bench/tls/load.py" handshake --host $RELAY_ADDR --port $RELAY_PORT --n "$N_HS" --procs "$hs_procs" \
             --pid "$PEER_PID" --client "$HS_CLIENT" --tern "$TERN_BIN" --blast-procs "$HS_BLAST_PROCS" | tail -1)
        if [ "$RELAY_CLIENT" = blast ]; then relay_procs=$((PROCS * 4)); else relay_procs=$PROCS; fi
        rl=$(python3 "$REPO/bench/tls/load.py" relay --host $RELAY_ADDR --port $RELAY_PORT --n "$N_MSG" --procs "$relay_procs" --per-conn "$PER_CONN" \
             --size "$SIZE" --pid "$PEER_PID" --sink-metrics "http://$SINK_ADDR:$SINK_ADMIN_PORT/metrics" --max-seconds 120 \
             --client "$RELAY_CLIENT" --tern "$TERN_BIN" | tail -1)
        echo "{\"rep\": $rep, \"peer\": \"$peer\", \"handshake\": $hs, \"relay\": $rl}" | tee -a "$OUT/results.jsonl"
        sh "$W/peer.stop"; rm -f "$W/peer.stop"
        [ -f "$W/postfix/w/log/maillog" ] && tail -200 "$W/postfix/w/log/maillog" > "$OUT/postfix-rep$rep.maillog"
        tail -200 "$W/sink.log" > "$OUT/sink-$peer-rep$rep.log"
        stop_sink
        rm -rf "$W/tern" "$W/postfix"
    done
done

python3 - "$OUT" <<'PY' | tee "$OUT/summary.md"
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1] + "/results.jsonl")]
peers = sorted({r["peer"] for r in rows}, key=lambda p: p != "tern")
def med(peer, kind, key):
    vals = [r[kind][key] for r in rows if r["peer"] == peer]
    return statistics.median(vals) if vals else float("nan")
def cores(peer, kind):
    vals = [r[kind]["peer_cpu_s"] / r[kind]["seconds"] for r in rows if r["peer"] == peer]
    return statistics.median(vals) if vals else float("nan")
print("| peer | handshakes/s | peer CPU ms/handshake | peer cores | client cores | client CPU ms/handshake "
      "| machine busy | relay msg/s (end to end) | peer CPU ms/msg |")
print("|---|---|---|---|---|---|---|---|---|")
for p in peers:
    print(f"| {p} | {med(p,'handshake','rate'):.0f} | {med(p,'handshake','peer_cpu_ms_per_item'):.3f} "
          f"| {cores(p,'handshake'):.2f} | {med(p,'handshake','client_cores'):.2f} "
          f"| {med(p,'handshake','client_cpu_ms_per_item'):.3f} | {med(p,'handshake','machine_busy'):.2f} "
          f"| {med(p,'relay','rate'):.0f} | {med(p,'relay','peer_cpu_ms_per_item'):.3f} |")
if "tern" in peers and "postfix" in peers:
    r = lambda k, key: med("tern", k, key) / med("postfix", k, key)
    print(f"\nTern/Postfix: handshakes/s x{r('handshake','rate'):.2f}, relay msg/s x{r('relay','rate'):.2f}; "
          f"CPU per handshake x{r('handshake','peer_cpu_ms_per_item'):.2f}, per message x{r('relay','peer_cpu_ms_per_item'):.2f}")
PY
