#!/usr/bin/env bash
# Resumed-handshake rate and latency: local hits on one instance, against resumption across two
# instances through Redis on loopback. Every server and the load generator run on this machine.
# Usage: bench/redis.sh [seconds per run, default 5] [rounds, default 3]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
rounds=${2:-3}
# BIN=path/to/reprise uses that binary instead of building this tree's.
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
local_port=$(free_port); a_port=$(free_port); b_port=$(free_port)
serve "$local_port"
# All the load comes from one address: lift the per-address budget of Redis misses (a few
# resumptions miss when a client comes back before its session's write has landed).
per_address=()
if "$bin" serve --help | grep -q -- --redis-misses-per-address; then
  per_address+=(--redis-misses-per-address 0)
fi
serve "$a_port" --redis redis://127.0.0.1:"$rport" --redis-key-file "$work/keys" "${per_address[@]}"
serve "$b_port" --redis redis://127.0.0.1:"$rport" --redis-key-file "$work/keys" "${per_address[@]}"

run() { # tls, then --connect flags
  local tls=$1; shift
  "$bin" bench "$@" --server-name localhost --insecure --tls "$tls" --mode resume \
    --concurrency 8 --duration "$secs" --json --workers 1
}
field() { python3 -c 'import json,sys; r=json.load(sys.stdin); print(eval(sys.argv[1]))' "$1"; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

printf '%-6s %-28s %12s %9s %9s %9s\n' TLS setup "handshakes/s" resumed "p50 ms" "p99 ms"
for tls in 1.3 1.2; do
  for setup in local redis; do
    : > "$work/rate"; : > "$work/res"; : > "$work/p50"; : > "$work/p99"
    for _ in $(seq "$rounds"); do
      if [ "$setup" = local ]; then
        out=$(run "$tls" --connect 127.0.0.1:"$local_port")
      else
        out=$(run "$tls" --connect 127.0.0.1:"$a_port" --connect 127.0.0.1:"$b_port")
      fi
      echo "$out" | field 'r["handshakes_per_sec"]' >> "$work/rate"
      echo "$out" | field 'round(100*r["resumed_share"],1)' >> "$work/res"
      echo "$out" | field 'r["latency_ms"]["p50"]' >> "$work/p50"
      echo "$out" | field 'r["latency_ms"]["p99"]' >> "$work/p99"
    done
    name=$([ "$setup" = local ] && echo "one instance, local cache" || echo "two instances, via Redis")
    printf '%-6s %-28s %12.0f %8s%% %9s %9s\n' "$tls" "$name" "$(median < "$work/rate")" \
      "$(median < "$work/res")" "$(median < "$work/p50")" "$(median < "$work/p99")"
  done
done
echo
echo "Redis, after the runs:"
redis-cli -p "$rport" info stats | grep -E '^(keyspace_hits|keyspace_misses|total_commands_processed)'
