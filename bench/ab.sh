#!/usr/bin/env bash
# A/B of the handshake path between two builds of reprise: bench/redis.sh's four setups (TLS 1.3
# and 1.2; one instance with its local cache, two instances through Redis), each build with its
# own servers (and Redis prefix) on one redis-server, runs interleaved A,B,A,B so that the
# machine's drift hits both alike. The load generator is always BIN_A's. Prints one line per run
# (round, TLS, setup, side, handshakes/s, resumed %, p50 ms), the medians, and each Redis
# instance's read counters. REDIS_FLAGS adds serve flags (say "--redis-timeout-ms 100").
# Usage: bench/ab.sh BIN_A BIN_B [seconds per run, default 5] [rounds, default 5]
set -euo pipefail
A=$1; B=$2; secs=${3:-5}; rounds=${4:-5}
source "$(dirname "$0")/lib.sh"
start_redis
"$A" keygen --name bench > "$work/keys"
make_cert
serve() { local bin=$1 port=$2; shift 2
  RUST_LOG=warn "$bin" serve --listen 127.0.0.1:"$port" --cert "$work/cert.pem" --key "$work/key.pem" --workers 1 "$@" 2>>"$work/serve.log" &
  pids+=($!); wait_port "$port"; }
declare -A P
for side in A B; do
  bin=${!side}
  P[$side.local]=$(free_port); P[$side.a]=$(free_port); P[$side.b]=$(free_port)
  serve "$bin" "${P[$side.local]}"
  # Each side its own prefix: the two fleets never see each other's sessions.
  P[$side.am]=$(free_port); P[$side.bm]=$(free_port)
  serve "$bin" "${P[$side.a]}" --redis redis://127.0.0.1:"$rport" --redis-key-file "$work/keys" --redis-prefix "$side:" --metrics-listen 127.0.0.1:"${P[$side.am]}" ${REDIS_FLAGS:-}
  serve "$bin" "${P[$side.b]}" --redis redis://127.0.0.1:"$rport" --redis-key-file "$work/keys" --redis-prefix "$side:" --metrics-listen 127.0.0.1:"${P[$side.bm]}" ${REDIS_FLAGS:-}
done
run() { local bin=$1 tls=$2; shift 2
  "$bin" bench "$@" --server-name localhost --insecure --tls "$tls" --mode resume \
    --concurrency 8 --duration "$secs" --json --workers 1; }
field() { python3 -c 'import json,sys; r=json.load(sys.stdin); print(eval(sys.argv[1]))' "$1"; }
for r in $(seq "$rounds"); do
  for tls in 1.3 1.2; do
    for setup in local redis; do
      for side in A B; do
        bin=${!side}
        if [ "$setup" = local ]; then out=$(run "$A" "$tls" --connect 127.0.0.1:"${P[$side.local]}")
        else out=$(run "$A" "$tls" --connect 127.0.0.1:"${P[$side.a]}" --connect 127.0.0.1:"${P[$side.b]}"); fi
        echo "$r $tls $setup $side $(echo "$out" | field 'r["handshakes_per_sec"]') $(echo "$out" | field 'round(100*r["resumed_share"],1)') $(echo "$out" | field 'r["latency_ms"]["p50"]')" | tee -a "$work/runs"
      done
    done
  done
done
echo
python3 - "$work/runs" <<'PY'
import statistics as st, sys
rows = [l.split() for l in open(sys.argv[1])]
print(f"{'TLS':4} {'setup':6} {'A hs/s':>8} {'B hs/s':>8} {'B/A':>5} {'resumed% A/B':>13} {'p50 ms A/B':>12}")
for tls in ["1.3", "1.2"]:
    for setup in ["local", "redis"]:
        g = {s: [r for r in rows if r[1] == tls and r[2] == setup and r[3] == s] for s in "AB"}
        m = lambda s, i: st.median(float(r[i]) for r in g[s])
        print(f"{tls:4} {setup:6} {m('A',4):8.0f} {m('B',4):8.0f} {m('B',4)/m('A',4):5.2f} "
              f"{m('A',5):6.1f}/{m('B',5):5.1f} {m('A',6):6.3f}/{m('B',6):5.3f}")
PY
echo
for side in A B; do
  for m in am bm; do
    echo "$side $m: $(curl -s http://127.0.0.1:${P[$side.$m]}/metrics | grep -E '^reprise_redis_(read_timeouts|reads_skipped|breaker_opens|prefetched|unconfirmed_takes|read_hits|read_misses)_total' | tr '\n' ' ')"
  done
done
