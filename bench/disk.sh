#!/usr/bin/env bash
# What the disk tier costs a resumed handshake: one server with memory only, against one with
# --cache-dir (every TLS 1.3 ticket is taken through the file; TLS 1.2 lookups hit memory).
# Rounds alternate between the two servers. Everything runs on this machine.
# Usage: bench/disk.sh [seconds per run, default 5] [rounds, default 3]
# DISK_BIN=path runs the --cache-dir server from another build (an A/B of the disk tier).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
rounds=${2:-3}
cargo build --release -q -p reprise-cli
bin=target/release/reprise
disk_bin=${DISK_BIN:-$bin}
source bench/lib.sh

make_cert

serve() { # binary, port, extra flags...
  local server=$1 port=$2; shift 2
  RUST_LOG=warn "$server" serve --listen 127.0.0.1:"$port" --cert "$work/cert.pem" --key "$work/key.pem" --workers 1 --max-connections-per-address 10000 "$@" 2>>"$work/serve.log" &
  pids+=($!)
  wait_port "$port"
}
mem_port=$(free_port); disk_port=$(free_port); metrics_port=$(free_port)
serve "$bin" "$mem_port"
serve "$disk_bin" "$disk_port" --cache-dir "$work/cache" --metrics-listen 127.0.0.1:"$metrics_port"

run() { # tls, port
  "$bin" bench --connect 127.0.0.1:"$2" --server-name localhost --insecure --tls "$1" \
    --mode resume --concurrency 8 --duration "$secs" --json --workers 1
}
field() { python3 -c 'import json,sys; r=json.load(sys.stdin); print(eval(sys.argv[1]))' "$1"; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

printf '%-6s %-22s %12s %9s %9s %9s\n' TLS setup "handshakes/s" resumed "p50 ms" "p99 ms"
for tls in 1.3 1.2; do
  for setup in mem disk; do : > "$work/$setup.rate"; : > "$work/$setup.res"; : > "$work/$setup.p50"; : > "$work/$setup.p99"; done
  for _ in $(seq "$rounds"); do
    for setup in mem disk; do
      port=$([ "$setup" = mem ] && echo "$mem_port" || echo "$disk_port")
      out=$(run "$tls" "$port")
      echo "$out" | field 'r["handshakes_per_sec"]' >> "$work/$setup.rate"
      echo "$out" | field 'round(100*r["resumed_share"],1)' >> "$work/$setup.res"
      echo "$out" | field 'r["latency_ms"]["p50"]' >> "$work/$setup.p50"
      echo "$out" | field 'r["latency_ms"]["p99"]' >> "$work/$setup.p99"
    done
  done
  for setup in mem disk; do
    name=$([ "$setup" = mem ] && echo "memory only" || echo "memory + --cache-dir")
    printf '%-6s %-22s %12.0f %8s%% %9s %9s\n' "$tls" "$name" "$(median < "$work/$setup.rate")" \
      "$(median < "$work/$setup.res")" "$(median < "$work/$setup.p50")" "$(median < "$work/$setup.p99")"
  done
  mem=$(median < "$work/mem.rate"); disk=$(median < "$work/disk.rate")
  python3 -c "print(f'{\"$tls\":6} disk/memory throughput ratio: {$disk/$mem:.2f}')"
done
echo
echo "Disk tier, after the runs:"
curl -s http://127.0.0.1:"$metrics_port"/metrics | grep -E '^reprise_disk_(stores_skipped|read_hits|read_misses|reads_skipped|writes_dropped_full|stores_written|deletes_written|in_flight|file_bytes)'
