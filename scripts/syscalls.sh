#!/usr/bin/env bash
# System calls per clean bidirectional shutdown on the closing side (BENCHMARKS.md
# section 2), for closenotify's Closer, a plain rust-openssl loop, tokio-openssl, and
# closenotify::tokio (the benchmark is built with the `tokio` feature).
#
#   scripts/syscalls.sh [N]        # N connections per implementation (default 1000)
#
# The benchmark binary establishes N connections (handshakes are not counted),
# prints the id of the thread that will close them, and waits; `strace -c -p TID`
# attaches to that one thread (the peers run in another process); the shutdowns
# run; strace's summary is divided by N. close() is reported separately.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000}
command -v strace >/dev/null || { echo "strace is required (apt-get install strace)" >&2; exit 1; }

bin=$(cargo bench --features tokio --bench shutdown --no-run --message-format=json 2>/dev/null |
      python3 -c 'import json,sys
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m.get("executable") and m["target"]["name"]=="shutdown":
        print(m["executable"])')

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
printf '%-16s %10s %10s %12s  %s\n' implementation "calls/conn" "close/conn" "w/o close" "top calls (per connection)"
for impl in closenotify c-step c-closer rust-openssl tokio-openssl closenotify-tokio; do
    mkfifo "$tmp/in"
    "$bin" --syscalls "$impl" "$n" < "$tmp/in" > "$tmp/out" 2>"$tmp/err" &
    pid=$!
    exec 3>"$tmp/in"
    # Wait for READ TID.
    for _ in $(seq 200); do grep -q READY "$tmp/out" 2>/dev/null && break; sleep 0.1; done
    tid=$(awk '/READY/ {print $2}' "$tmp/out")
    strace -c -p "$tid" -o "$tmp/strace.$impl" 2>"$tmp/strace.err" &
    spid=$!
    for _ in $(seq 100); do grep -q attached "$tmp/strace.err" 2>/dev/null && break; sleep 0.05; done
    echo go >&3
    for _ in $(seq 600); do grep -q DONE "$tmp/out" && break; sleep 0.1; done
    kill -INT "$spid"; wait "$spid" || true
    echo bye >&3; exec 3>&-
    wait "$pid" || true
    rm -f "$tmp/in"
    python3 - "$tmp/strace.$impl" "$n" "$impl" <<'PY'
import sys
path, n, impl = sys.argv[1], int(sys.argv[2]), sys.argv[3]
calls = {}
for line in open(path):
    f = line.split()
    if len(f) >= 5 and f[0][0].isdigit() and f[-1] not in ("total",):
        # % time, seconds, usecs/call, calls, [errors], syscall
        try:
            calls[f[-1]] = int(f[3])
        except ValueError:
            pass
total = sum(calls.values())
close = calls.get("close", 0)
top = sorted(((c, s) for s, c in calls.items() if s != "close"), reverse=True)[:6]
print(f"{impl:<16} {total/n:>10.2f} {close/n:>10.2f} {(total-close)/n:>12.2f}  " +
      ", ".join(f"{s} {c/n:.2f}" for c, s in top))
PY
done
