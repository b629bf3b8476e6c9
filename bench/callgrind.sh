#!/bin/bash
# callgrind.sh BIN [BASE_BIN]: user-space instructions per message through `tern serve` as a relay,
# counted by valgrind's callgrind (deterministic: a busy machine does not change the count, unlike
# CPU time). N messages of SIZE bytes over CONC sessions from smtp-source, delivered to smtp-sink, in
# a private network namespace on loopback. With BASE_BIN: both counts, and the functions whose
# instructions per message (inclusive of callees when INCLUSIVE=yes) changed most.
# Valgrind cannot read Swift's debug info, so each binary is copied with strip --strip-debug.
# TERN_SHAPING_RULES=N adds N [[shaping]] rules (see bench/peers/tern/start).
# WEBHOOK_FOR=new: the first binary's run (label "new") has a [[events.webhook]] receiving every event
# (bench/lib/hook_receiver.py): `bench/callgrind.sh BIN BIN` then shows what the events cost.
# Needs root (unshare), valgrind, smtp-source, smtp-sink. Every wait is bounded.
set -eu
[ "${1:-}" ] || { echo "usage: $0 BIN [BASE_BIN]" >&2; exit 2; }
: "${N:=2000}" "${SIZE:=4096}" "${CONC:=20}" "${INCLUSIVE:=no}"
if [ -z "${TERN_CALLGRIND_INNER:-}" ]; then
  exec env TERN_CALLGRIND_INNER="$(mktemp -d /tmp/tern-callgrind.XXXXXX)" unshare --net -- bash -c 'ip link set lo up && exec "$@"' bash "$0" "$@"
fi
OUT=$TERN_CALLGRIND_INNER
one() {  # LABEL BIN: writes $OUT/LABEL/cg.out, prints instructions per message
  local w="$OUT/$1"; mkdir -p "$w/spool"
  strip --strip-debug -o "$w/tern" "$2"
  cat > "$w/tern.toml" <<CONF
hostname = "relay.bench"
[server]
listen = ["127.0.0.1:2525"]
relay_networks = ["127.0.0.0/8"]
reverse_dns = false
[spool]
path = "$w/spool"
[delivery]
enabled = true
[routes]
"*" = "[127.0.0.1]:2526"
CONF
  # TERN_SHAPING_RULES=N: as bench/peers/tern/start, N rules no mail reaches a limit of.
  local i=1
  while [ "$i" -lt "${TERN_SHAPING_RULES:-0}" ]; do
    printf '[[shaping]]\nname = "r%d"\ndomains = ["d%d.example", ".s%d.example"]\nmx = [".mx%d.example"]\nmax_connections = 1000\nmax_message_rate = "100000/s"\n' \
      "$i" "$i" "$i" "$i" >> "$w/tern.toml"
    i=$((i + 1))
  done
  [ "${TERN_SHAPING_RULES:-0}" -gt 0 ] && printf '[[shaping]]\nname = "bench"\ndomains = ["example.net"]\nmax_connections = 20\nmax_message_rate = "100000/s"\n' >> "$w/tern.toml"
  if [ "${WEBHOOK_FOR:-}" = "$1" ]; then
    printf '[[events.webhook]]\nurl = "http://127.0.0.1:9099/hook"\nbatch_size = 100\n' >> "$w/tern.toml"
    timeout 600 python3 "$(dirname "$(readlink -f "$0")")/lib/hook_receiver.py" 127.0.0.1 9099 "$w/hook.count" > /dev/null 2>&1 &
  fi
  timeout 600 smtp-sink -c -u nobody 127.0.0.1:2526 256 > "$w/sink.out" 2>&1 & local sink=$!
  timeout 600 valgrind --tool=callgrind --callgrind-out-file="$w/cg.out" "$w/tern" serve --config "$w/tern.toml" \
    > "$w/tern.log" 2> "$w/valgrind.log" & local relay=$!
  for _ in $(seq 120); do (exec 3<>/dev/tcp/127.0.0.1/2525) 2>/dev/null && break; sleep 0.5; done
  timeout 300 smtp-source -c -s "$CONC" -m "$N" -l "$SIZE" -f from@example.com -t to@example.net 127.0.0.1:2525 > /dev/null
  for _ in $(seq 240); do
    [ "$(grep -o 'mesg=[0-9]*' "$w/sink.out" | tail -1 | cut -d= -f2)" = "$N" ] && break; sleep 0.5
  done
  kill -TERM "$relay"; wait "$relay" || true; kill "$sink"; wait "$sink" 2>/dev/null || true
  local refs; refs=$(sed -n 's/.*I *refs: *//p' "$w/valgrind.log" | tr -d ,)
  echo "$1: $((refs / N)) instructions per message (${refs} in all, startup included; delivered $(grep -o 'mesg=[0-9]*' "$w/sink.out" | tail -1))"
}
one new "$1"
[ -n "${2:-}" ] || exit 0
one base "$2"
for l in new base; do
  callgrind_annotate --inclusive="$INCLUSIVE" --threshold=100 "$OUT/$l/cg.out" 2>/dev/null \
    | grep -E '^ *[0-9,]+ \(' | sed 's/ ([ 0-9.]*%)//; s/ \[[^]]*\]$//' > "$OUT/$l.flat"
done
python3 - "$OUT/base.flat" "$OUT/new.flat" "$N" <<'PY' | swift demangle --simplified | cut -c1-160
import collections, sys
def load(f):
    d = collections.Counter()
    for line in open(f):
        n, name = line.strip().split(' ', 1)
        d[name.split('???:', 1)[-1].strip()] += int(n.replace(',', ''))
    return d
b, n, count = load(sys.argv[1]), load(sys.argv[2]), int(sys.argv[3])
rows = sorted(set(b) | set(n), key=lambda k: b[k] - n[k])
print('   base     new   change  function (instructions per message)')
for k in rows[:30] + rows[-10:]:
    print(f"{b[k] // count:7d} {n[k] // count:7d} {(n[k] - b[k]) // count:+8d}  {k}")
PY
echo "callgrind files: $OUT"
