#!/usr/bin/env bash
# Redis read amplification under a flood of hostile ClientHellos (issue 13, attack 4).
#
# A two-instance fleet on one redis-server. A flood of ClientHellos at a fixed rate from
# 127.0.0.1, offering made-up ids (TLS 1.3: four random PSK identities; TLS 1.2: a random session
# id), or the same hello again and again; legitimate clients that resume (TLS 1.3 and TLS 1.2,
# each connection on the other instance, so every resumption goes through Redis) from 127.0.0.2.
#
# Reports, per flood: the Redis reads (key lookups) per hostile hello, measured
# with the flood alone; then, flood and legitimate clients together, the share of legitimate
# resumptions that succeeded and the circuit breaker's openings on both instances.
#
# Usage: bench/flood.sh [seconds per run, default 5] [hellos per second, default 2000]
# BIN=path/to/reprise uses that binary instead of building this tree's.
# SERVE_FLAGS="..." adds flags to both instances (say --redis-misses-per-address 0, to measure
# the negative cache alone).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
rate=${2:-2000}
if [ -z "${BIN:-}" ]; then
  cargo build --release -q -p reprise-cli
  BIN=target/release/reprise
fi
bin=$BIN
client="python3 bench/flood.py"
source bench/lib.sh

start_redis
"$bin" keygen --name bench > "$work/keys"
make_cert

# All the flood comes from one address: raise a per-address connection limit if there is one.
extra=()
if "$bin" serve --help | grep -q -- --max-connections-per-address; then
  extra+=(--max-connections-per-address 10000)
fi
a_port=$(free_port); b_port=$(free_port); a_m=$(free_port); b_m=$(free_port)
serve() { # port, metrics port
  RUST_LOG=error "$bin" serve --listen 127.0.0.1:"$1" --metrics-listen 127.0.0.1:"$2" \
    --cert "$work/cert.pem" --key "$work/key.pem" --tls-versions 1.2,1.3 \
    --redis redis://127.0.0.1:"$rport" --redis-key-file "$work/keys" "${extra[@]}" ${SERVE_FLAGS:-} \
    2>>"$work/serve.log" &
  pids+=($!)
  wait_port "$1"; wait_port "$2"
}
serve "$a_port" "$a_m"
serve "$b_port" "$b_m"
fleet="127.0.0.1:$a_port,127.0.0.1:$b_port"

# Redis reads: key lookups (one per GET, GETDEL or take script, hit or miss).
reads() { redis-cli -p "$rport" info stats | tr -d '\r' \
  | awk -F: '/^keyspace_(hits|misses):/ {n+=$2} END {print n+0}'; }
metric() { # name: the sum over both instances
  local n=0 v
  for m in "$a_m" "$b_m"; do
    v=$(curl -s "http://127.0.0.1:$m/metrics" | awk -v k="$1" '$1==k {print $2}')
    n=$((n + ${v:-0}))
  done
  echo "$n"
}
share() { python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print("%.1f%%/%d" % (100*r["resumed_share"], r["attempts"]))' "$1"; }
field() { python3 -c 'import json,sys; r=json.loads(sys.stdin.readline()); print(r[sys.argv[1]])' "$1"; }

printf '%-16s %8s %9s %12s %14s %14s %8s\n' flood hellos hello/s reads/hello "TLS1.3 res" "TLS1.2 res" breaker
run() { # label, flood flags...
  local label=$1; shift
  # The flood alone: Redis reads per hostile hello.
  local r0 r1 out sent
  r0=$(reads)
  out=$($client flood --connect "$fleet" --rate "$rate" --duration "$secs" --bind 127.0.0.1 "$@")
  r1=$(reads)
  sent=$(echo "$out" | field sent)
  local hrate per
  hrate=$(echo "$out" | field rate)
  per=$(python3 -c "print(f'{($r1-$r0)/max($sent,1):.3f}')")
  sleep 1
  # The flood with legitimate clients beside it.
  local b0 b1
  b0=$(metric reprise_redis_breaker_opens_total)
  $client legit --connect "$fleet" --tls 1.3 --duration "$secs" --bind 127.0.0.2 > "$work/l13" &
  local l13=$!
  $client legit --connect "$fleet" --tls 1.2 --duration "$secs" --bind 127.0.0.2 > "$work/l12" &
  local l12=$!
  if [ "$label" != none ]; then
    $client flood --connect "$fleet" --rate "$rate" --duration "$secs" --bind 127.0.0.1 "$@" > /dev/null
  fi
  wait "$l13" "$l12"
  b1=$(metric reprise_redis_breaker_opens_total)
  local s13 s12
  s13=$(share "$work/l13"); s12=$(share "$work/l12")
  if [ "$label" = none ]; then sent=0; hrate=0; per=-; fi
  printf '%-16s %8s %9s %12s %14s %14s %8s\n' "$label" "$sent" "$hrate" "$per" "$s13" "$s12" "$((b1 - b0))"
  sleep 1
}
run none --rate 1 --duration 0
run tls13-random --kind tls13
run tls13-repeated --kind tls13 --repeat
run tls12-random --kind tls12
run tls12-repeated --kind tls12 --repeat
echo
echo "Both instances, after the runs:"
for name in reprise_redis_breaker_opens_total reprise_redis_read_timeouts_total \
  reprise_redis_read_timeouts_local_total reprise_redis_negative_hits_total \
  reprise_redis_reads_limited_total; do
  echo "  $name $(metric "$name")"
done
