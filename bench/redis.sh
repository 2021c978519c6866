#!/usr/bin/env bash
# Resumed-handshake rate and latency: local hits on one instance, against fleets of two and three
# instances sharing their sessions through Redis on loopback. `reprise bench --connect A
# --connect B [--connect C]` sends each worker's connections round-robin over the instances, so
# a session made on one instance is offered next on another: in TLS 1.3 every resumption then
# takes, from Redis, a ticket the previous instance issued (a cross-instance hit each time); in
# TLS 1.2 an instance that already holds the session (it made it) resumes it locally, so only
# part of the resumptions cross (with the default `--tickets auto`, a TLS 1.2 client that asks
# for a ticket resumes through a stateless ticket, opened with the fleet's key file, and Redis
# is not needed). The "via Redis" column says which share did: Redis's keyspace hits over the
# run, per resumption; "misses/hs", Redis's keyspace misses per handshake (reads that found
# nothing: an id the client offered that Redis never held, or a write not landed yet). The "added" columns are the fleet's latency
# percentiles minus the one instance's, in microseconds: what a cross-instance hit costs over a
# local one (at concurrency 1 the latency of one handshake alone; at 8 it includes queueing on
# the machine's cores, which the load generator shares). Every server and the load generator
# run on this machine; each server has one worker.
#
# Usage: bench/redis.sh [seconds per run, default 5] [rounds, default 3]
# REDIS_CONCURRENCY (environment, default "1 8"): the load generator's concurrencies to run.
# BIN=path/to/reprise uses that binary instead of building this tree's.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
rounds=${2:-3}
concurrencies=${REDIS_CONCURRENCY:-1 8}
for n in "$secs" "$rounds" $concurrencies; do
  [[ $n =~ ^[1-9][0-9]*$ ]] || { echo "redis.sh: '$n' is not a positive integer" >&2; exit 2; }
done
if [ -z "${BIN:-}" ]; then
  cargo build --release -q -p reprise-cli
  BIN=target/release/reprise
fi
bin=$BIN
source bench/lib.sh

start_redis
"$bin" keygen --name bench > "$work/keys"
make_cert

serve() { # port, extra flags...
  local port=$1; shift
  RUST_LOG=warn "$bin" serve --listen 127.0.0.1:"$port" --cert "$work/cert.pem" --key "$work/key.pem" --workers 1 --max-connections-per-address 10000 "$@" 2>>"$work/serve.log" &
  pids+=($!)
  wait_port "$port"
}
local_port=$(free_port); a_port=$(free_port); b_port=$(free_port); c_port=$(free_port)
serve "$local_port"
# All the load comes from one address: lift the per-address budget of Redis misses (a few
# resumptions miss when a client comes back before its session's write has landed).
per_address=()
if "$bin" serve --help | grep -q -- --redis-misses-per-address; then
  per_address+=(--redis-misses-per-address 0)
fi
for port in "$a_port" "$b_port" "$c_port"; do
  serve "$port" --redis redis://127.0.0.1:"$rport" --redis-key-file "$work/keys" "${per_address[@]}"
done

run() { # tls, concurrency, then --connect flags
  local tls=$1 conc=$2; shift 2
  "$bin" bench "$@" --server-name localhost --insecure --tls "$tls" --mode resume \
    --concurrency "$conc" --duration "$secs" --json --workers 1
}
field() { python3 -c 'import json,sys; r=json.load(sys.stdin); print(eval(sys.argv[1]))' "$1"; }
redis_reads() { # hits misses
  redis-cli -p "$rport" info stats | tr -d '\r' | awk -F: '/^keyspace_hits:/ { h = $2 } /^keyspace_misses:/ { m = $2 } END { print h + 0, m + 0 }'
}

: > "$work/runs"
for conc in $concurrencies; do
  for tls in 1.3 1.2; do
    for r in $(seq "$rounds"); do
      # The setups alternate within a round, so that the machine's drift hits them alike.
      for setup in local fleet2 fleet3; do
        case $setup in
          local) targets=(--connect 127.0.0.1:"$local_port") ;;
          fleet2) targets=(--connect 127.0.0.1:"$a_port" --connect 127.0.0.1:"$b_port") ;;
          fleet3) targets=(--connect 127.0.0.1:"$a_port" --connect 127.0.0.1:"$b_port" --connect 127.0.0.1:"$c_port") ;;
        esac
        read -r h0 m0 < <(redis_reads)
        out=$(run "$tls" "$conc" "${targets[@]}")
        read -r h1 m1 < <(redis_reads)
        echo "$conc $tls $setup $r $(echo "$out" | field 'r["handshakes_per_sec"]') $(echo "$out" | field 'r["resumed"]') \
$(echo "$out" | field 'r["handshakes"]') $(echo "$out" | field 'r["latency_ms"]["p50"]') \
$(echo "$out" | field 'r["latency_ms"]["p99"]') $((h1 - h0)) $((m1 - m0))" >> "$work/runs"
      done
    done
  done
done

python3 - "$work/runs" <<'PY'
import statistics as st, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
names = {"local": "one instance, local cache", "fleet2": "two instances, via Redis",
         "fleet3": "three instances, via Redis"}
print(f"{'c':>2} {'TLS':4} {'setup':28} {'hs/s':>8} {'resumed':>8} {'via Redis':>9} {'misses/hs':>9} "
      f"{'p50 us':>8} {'p99 us':>8} {'added p50':>10} {'added p99':>10}")
verdicts = []
for conc in dict.fromkeys(r[0] for r in rows):
    for tls in ("1.3", "1.2"):
        base = None
        for setup in ("local", "fleet2", "fleet3"):
            g = [r for r in rows if r[0] == conc and r[1] == tls and r[2] == setup]
            if not g:
                continue
            med = lambda i: st.median(float(r[i]) for r in g)
            resumed = sum(int(r[5]) for r in g)
            share = 100 * resumed / max(1, sum(int(r[6]) for r in g))
            via = 100 * sum(int(r[9]) for r in g) / max(1, resumed)
            misses = sum(int(r[10]) for r in g) / max(1, sum(int(r[6]) for r in g))
            p50, p99 = 1000 * med(7), 1000 * med(8)
            if setup == "local":
                base = (p50, p99)
                added = f"{'-':>10} {'-':>10}"
            else:
                added = f"{p50 - base[0]:>10.0f} {p99 - base[1]:>10.0f}"
                if tls == "1.3":
                    verdicts.append((conc, setup, p99 - base[1]))
            print(f"{conc:>2} {tls:4} {names[setup]:28} {med(4):>8.0f} {share:>7.1f}% {min(via, 999):>8.0f}% {misses:>9.2f} "
                  f"{p50:>8.0f} {p99:>8.0f} {added}")
print("\nmedians over the rounds; resumed: of all handshakes (each worker's first is full);"
      "\nvia Redis: Redis keyspace hits per resumption (TLS 1.3: every resumption crosses instances)")
print("target: a cross-instance hit adds <= 300 us at p99 on loopback (TLS 1.3 rows, where every hit crosses):")
for conc, setup, added in verdicts:
    print(f"  {'holds ' if added <= 300 else 'MISSES'} c={conc} {names[setup]:28} adds {added:.0f} us at p99")
PY
echo
echo "Redis, after the runs:"
redis-cli -p "$rport" info stats | grep -E '^(keyspace_hits|keyspace_misses|total_commands_processed)'
