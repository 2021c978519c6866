#!/usr/bin/env bash
# A/B of one `reprise serve` setting or build against another on resumed handshakes: side A is
# BIN_A with FLAGS_A, side B is BIN_B with FLAGS_B (extra serve flags, from the environment), each
# one server with one worker on its own port, the same certificate. The runs interleave A,B,A,B
# (the first side alternates every round) so that the machine's drift hits both alike; the load
# generator is BIN_A's `reprise bench --mode resume --concurrency 8 --workers 1`. Server CPU per
# handshake comes from /proc/PID/stat (utime + stime) before and after each run. Prints one line
# per run, then the medians and B/A for TLS 1.2 and 1.3.
#
# Usage: FLAGS_B="--access-log /tmp/a.log" bench/ab-serve.sh BIN_A BIN_B [seconds, default 5] [rounds, default 5]
# MODE=full measures full handshakes instead; TLS="1.3" runs one version only; BENCH_FLAGS adds
# load-generator flags, for example BENCH_FLAGS="--cipher-suite TLS13_AES_256_GCM_SHA384".
# In FLAGS_A and FLAGS_B, CERT and KEY stand for the generated certificate and key files (for
# localhost, the name the load generator asks for), CERT2 and KEY2 for a second pair (other.test).
set -euo pipefail
[ $# -ge 2 ] || { grep -m1 '^# Usage:' "$0" | sed 's/^# //' >&2; exit 2; }
A=$1; B=$2; secs=${3:-5}; rounds=${4:-5}
source "$(dirname "$0")/lib.sh"
make_cert
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$work/key2.pem" \
  -out "$work/cert2.pem" -days 1 -subj /CN=other.test -addext subjectAltName=DNS:other.test 2>/dev/null
hz=$(getconf CLK_TCK)
declare -A port pid
for side in A B; do
  bin=${!side}
  flags_var=FLAGS_$side
  flags=${!flags_var:-}
  flags=${flags//CERT2/$work/cert2.pem}
  flags=${flags//KEY2/$work/key2.pem}
  flags=${flags//CERT/$work/cert.pem}
  flags=${flags//KEY/$work/key.pem}
  port[$side]=$(free_port)
  # shellcheck disable=SC2086
  RUST_LOG=warn "$bin" serve --listen 127.0.0.1:"${port[$side]}" --cert "$work/cert.pem" --key "$work/key.pem" \
    --workers 1 --max-connections-per-address 10000 $flags 2>>"$work/serve-$side.log" &
  pid[$side]=$!
  pids+=($!)
  wait_port "${port[$side]}"
done
ticks() { local s; s=$(<"/proc/$1/stat"); s=${s##*) }; set -- $s; echo $((${12} + ${13})); }
field() { python3 -c 'import json,sys; r=json.load(sys.stdin); print(eval(sys.argv[1]))' "$1"; }
for r in $(seq "$rounds"); do
  if [ $((r % 2)) = 1 ]; then order="A B"; else order="B A"; fi
  for tls in ${TLS:-1.2 1.3}; do
    for side in $order; do
      c0=$(ticks "${pid[$side]}")
      # shellcheck disable=SC2086
      out=$("$A" bench --connect 127.0.0.1:"${port[$side]}" --server-name localhost --insecure --tls "$tls" \
        --mode "${MODE:-resume}" --concurrency 8 --duration "$secs" --json --workers 1 ${BENCH_FLAGS:-})
      c1=$(ticks "${pid[$side]}")
      hs=$(echo "$out" | field 'r["handshakes"]')
      echo "$r $tls $side $(echo "$out" | field 'r["handshakes_per_sec"]') $(echo "$out" | field 'round(100*r["resumed_share"],1)') $(python3 -c "print(round(1e6*($c1-$c0)/$hz/max(1,$hs),1))")" | tee -a "$work/runs"
    done
  done
done
echo
python3 - "$work/runs" <<'PY'
import statistics as st, sys
rows = [l.split() for l in open(sys.argv[1])]
print(f"{'TLS':4} {'A hs/s':>8} {'B hs/s':>8} {'B/A':>6} {'A CPU us/hs':>12} {'B CPU us/hs':>12} {'B/A':>6} {'resumed% A/B':>13}")
for tls in sorted({r[1] for r in rows}):
    g = {s: [r for r in rows if r[1] == tls and r[2] == s] for s in "AB"}
    m = lambda s, i: st.median(float(r[i]) for r in g[s])
    print(f"{tls:4} {m('A',3):8.0f} {m('B',3):8.0f} {m('B',3)/m('A',3):6.3f} {m('A',5):12.1f} {m('B',5):12.1f} "
          f"{m('B',5)/m('A',5):6.3f} {m('A',4):6.1f}/{m('B',4):5.1f}")
PY
