#!/usr/bin/env bash
# Time to first byte of a resumed TLS 1.3 GET, with and without 0-RTT, through a relay that adds
# 10 ms each way (20 ms of round trip; this kernel has no netem): `reprise serve --early-data`
# alone, a two-instance Redis fleet (each connection resumes on the other instance, its ticket
# taken from Redis), and nginx with `ssl_early_data on`. The load generator is
# `reprise bench --early-data N` (the GET padded to N bytes, sent as early data when the ticket
# allows) against `--early-data 0` (the same kind of GET, after the handshake). One connection
# at a time: with 20 ms of delay the figures measure round trips, not CPU, and hold on a busy
# machine.
# Usage: bench/early.sh [connections per run, default 100] [rounds, default 3] [bytes, default 200]
set -euo pipefail
cd "$(dirname "$0")/.."
conns=${1:-100}
rounds=${2:-3}
bytes=${3:-200}
delay_ms=10
# BIN=path/to/reprise uses that binary instead of building this tree's.
if [ -z "${BIN:-}" ]; then
  cargo build --release -q -p reprise-cli
  BIN=target/release/reprise
fi
bin=$BIN
source bench/lib.sh
die() { echo "early.sh: $*" >&2; exit 1; }

if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
  [ "$(id -u)" = 0 ] || die "nginx is missing; install it with: apt-get install -y nginx"
  echo "installing nginx (apt-get install -y nginx)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q nginx >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q nginx >/dev/null; } \
    || die "apt-get install -y nginx failed"
fi
nginx=$(command -v nginx || echo /usr/sbin/nginx)

start_redis
"$bin" keygen --name bench > "$work/keys"
make_cert

serve() { # port, extra flags...
  local port=$1; shift
  RUST_LOG=warn "$bin" serve --listen 127.0.0.1:"$port" --cert "$work/cert.pem" --key "$work/key.pem" \
    --workers 1 --max-connections-per-address 10000 --early-data 16384 "$@" 2>>"$work/serve.log" &
  pids+=($!)
  wait_port "$port"
}
relay() { # listen port, target port
  python3 bench/delay-relay.py "$1" 127.0.0.1:"$2" "$delay_ms" &
  pids+=($!)
  wait_port "$1"
}

local_port=$(free_port); a_port=$(free_port); b_port=$(free_port); n_port=$(free_port)
serve "$local_port"
serve "$a_port" --redis redis://127.0.0.1:"$rport" --key-file "$work/keys" --redis-misses-per-address 0
serve "$b_port" --redis redis://127.0.0.1:"$rport" --key-file "$work/keys" --redis-misses-per-address 0

# nginx: one worker, TLS 1.3 tickets under a key file, early data on.
openssl rand 80 >"$work/tickets.nginx"
mkdir -p "$work/nginx"
cat >"$work/nginx.conf" <<CONF
daemon off;
master_process on;
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $work/nginx/client_body;
    proxy_temp_path $work/nginx/proxy;
    fastcgi_temp_path $work/nginx/fastcgi;
    uwsgi_temp_path $work/nginx/uwsgi;
    scgi_temp_path $work/nginx/scgi;
    server {
        listen 127.0.0.1:$n_port ssl;
        ssl_certificate $work/cert.pem;
        ssl_certificate_key $work/key.pem;
        ssl_protocols TLSv1.3;
        ssl_session_tickets on;
        ssl_session_ticket_key $work/tickets.nginx;
        ssl_early_data on;
        location / { return 200 "ok early=\$ssl_early_data\n"; }
    }
}
CONF
"$nginx" -e "$work/nginx.log" -c "$work/nginx.conf" -p "$work/nginx" 2>>"$work/nginx.log" &
pids+=($!)
wait_port "$n_port"

rl=$(free_port); ra=$(free_port); rb=$(free_port); rn=$(free_port)
relay "$rl" "$local_port"; relay "$ra" "$a_port"; relay "$rb" "$b_port"; relay "$rn" "$n_port"

run() { # early-data bytes, then --connect flags
  local n=$1; shift
  "$bin" bench "$@" --server-name localhost --insecure --tls 1.3 --mode resume \
    --concurrency 1 --connections "$conns" --early-data "$n" --json --workers 1
}
field() { python3 -c 'import json,sys; r=json.load(sys.stdin); print(eval(sys.argv[1]))' "$1"; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

declare -A targets=(
  [reprise]="--connect 127.0.0.1:$rl"
  [fleet]="--connect 127.0.0.1:$ra --connect 127.0.0.1:$rb"
  [nginx]="--connect 127.0.0.1:$rn"
)
order=(reprise fleet nginx)
declare -A got
for round in $(seq "$rounds"); do
  for t in "${order[@]}"; do
    for n in 0 "$bytes"; do
      # shellcheck disable=SC2086
      out=$(run "$n" ${targets[$t]})
      got[$t,$n,hs]+="$(field 'r["latency_ms"]["p50"]' <<<"$out") "
      got[$t,$n,p50]+="$(field 'r["ttfb_ms"]["p50"]' <<<"$out") "
      got[$t,$n,p90]+="$(field 'r["ttfb_ms"]["p90"]' <<<"$out") "
      got[$t,$n,acc]+="$(field 'str(r["early_data_accepted"]) + "/" + str(r["resumed"])' <<<"$out") "
      got[$t,$n,fail]+="$(field 'r["failures"]' <<<"$out") "
    done
  done
done

med() { tr ' ' '\n' <<<"$1" | grep -v '^$' | median; }
printf '%s connections per run, %s rounds, %s ms each way, GET of %s bytes; medians of the rounds\n' \
  "$conns" "$rounds" "$delay_ms" "$bytes"
printf '%-8s | %-26s | %-26s | %-14s | %s\n' target "without 0-RTT: hs / ttfb p50 / p90" "with 0-RTT: hs / ttfb p50 / p90" "accepted/resumed" "saved (p50)"
for t in "${order[@]}"; do
  w50=$(med "${got[$t,0,p50]}"); e50=$(med "${got[$t,$bytes,p50]}")
  printf '%-8s | %6.1f / %6.1f / %6.1f ms | %6.1f / %6.1f / %6.1f ms | %-14s | %5.1f ms\n' "$t" \
    "$(med "${got[$t,0,hs]}")" "$w50" "$(med "${got[$t,0,p90]}")" \
    "$(med "${got[$t,$bytes,hs]}")" "$e50" "$(med "${got[$t,$bytes,p90]}")" \
    "$(awk '{print $NF}' <<<"${got[$t,$bytes,acc]}")" \
    "$(python3 -c "print($w50 - $e50)")"
  fails=$(awk '{s=0; for (i=1; i<=NF; i++) s+=$i; print s}' <<<"${got[$t,0,fail]} ${got[$t,$bytes,fail]}")
  [ "$fails" = 0 ] || echo "  $t: $fails failed connections" >&2
done
