#!/usr/bin/env bash
# `reprise serve` against nginx on loopback: handshakes per second and server CPU time per
# handshake, full and resumed, TLS 1.2 and 1.3, with `openssl s_time` (one sequential client)
# and `reprise bench` (concurrent: 8 connections in flight). One s_time row runs `-reuse`
# without `-www`: the client closes each connection right after the handshake, without
# close_notify (TLS 1.2 only: without `-www` s_time never reads a TLS 1.3 ticket), as many
# real clients do. The `tickets-*` rows resume through stateless tickets instead of the session
# cache: a second reprise (`--tickets stateless --ticket-keys FILE`) against a second nginx
# server block (`ssl_session_tickets on; ssl_session_ticket_key FILE;`, no session cache), both
# with a ticket key file as a fleet would share it. The `-abrupt` row has half the load
# generator's connections end with a bare TCP close right after the handshake, without
# close_notify (`reprise bench --abrupt 0.5`). The `-idle` row holds COMPARE_IDLE (default 10,000)
# established idle TLS connections open on the server under test during its run (bench/idle.py:
# each completes a TLS 1.2 handshake, then sends nothing; both servers' timeouts for an idle
# connection are raised to 600 s so that none closes during the run, and the row reports how
# many were still open after it), so that both servers carry a realistic connection table. Both
# servers get the same ECDSA P-256 certificate and one worker (COMPARE_WORKERS=2: two); the runs
# alternate between them, round after round, and the table shows the medians over the rounds.
#
# Usage: bench/compare.sh [seconds per run, default 5] [rounds, default 3] [bench concurrency, default 8]
#
# COMPARE_TESTS (environment) runs a subset of the rows, by their test names: s_time-new
# s_time-reuse s_time-reuse-nonotify bench-1.2-full bench-1.2-resume bench-1.2-resume-abrupt
# bench-1.2-resume-idle bench-1.3-full bench-1.3-resume tickets-1.2-resume tickets-1.3-resume
# (the default is all of them; with COMPARE_WORKERS above 1, all but the s_time rows, whose one
# sequential client cannot load a second worker).
#
# COMPARE_WORKERS=N (environment, default 1) runs the table with N workers on both sides:
# `reprise serve --workers N` against nginx `worker_processes N`, and the load generator on N
# threads too (`reprise bench --workers N`). With the load generator on the same cores this
# mostly shows contention: read the CPU per handshake columns as much as the rates.
#
# The parts of a full run (about 15 minutes on two cores):
#   bash bench/compare.sh 5 3                     every row, one worker each (about 8 minutes)
#   COMPARE_WORKERS=2 bash bench/compare.sh 5 3   the bench rows, two workers each (about 5)
# A quick check of some rows: COMPARE_TESTS="bench-1.2-resume bench-1.2-resume-idle" bash bench/compare.sh 1 1
# Connection limits are raised for the idle row on every run: the file limit to the hard limit
# (`ulimit -n`), reprise `--max-connections` and `--max-connections-per-address` and nginx
# `worker_connections` to COMPARE_IDLE + 1,000, nginx `worker_rlimit_nofile` to the file limit.
#
# nginx is Debian's package (installed with apt-get when missing, as root), configured with
# `ssl_session_cache shared:SSL:10m; ssl_session_tickets off;` (reprise with `--tickets
# stateful`: both resume through their session cache). Server CPU time is read from
# /proc/PID/stat (utime + stime) before and after each run: for nginx the master and its worker,
# for reprise its one process. The client runs on the same machine and competes for the cores.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { grep -m1 '^# Usage:' "$0" | sed 's/^# //' >&2; exit 2; }
case "${1:-}" in -h | --help) usage ;; esac
secs=${1:-5}
rounds=${2:-3}
conc=${3:-8}
workers=${COMPARE_WORKERS:-1}
idle=${COMPARE_IDLE:-10000}
for n in "$secs" "$rounds" "$conc" "$workers" "$idle"; do
  [[ $n =~ ^[1-9][0-9]*$ ]] || { echo "compare.sh: '$n' is not a positive integer" >&2; usage; }
done

die() { echo "compare.sh: $*" >&2; exit 1; }

# --- Tools -------------------------------------------------------------------------------------
if ! command -v nginx >/dev/null; then
  [ "$(id -u)" = 0 ] || die "nginx is missing; install it with: apt-get install -y nginx"
  echo "installing nginx (apt-get install -y nginx)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q nginx >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q nginx >/dev/null; } \
    || die "apt-get install -y nginx failed"
fi
nginx=$(command -v nginx || true)
[ -x "$nginx" ] || nginx=/usr/sbin/nginx
[ -x "$nginx" ] || die "nginx is not on PATH after installation"
for tool in openssl python3 pgrep timeout; do
  command -v "$tool" >/dev/null || die "$tool is missing (apt-get install -y openssl python3 procps coreutils)"
done

echo "building reprise (cargo build --release -p reprise-cli)" >&2
cargo build --release -q -p reprise-cli || die "cargo build failed"
bin=target/release/reprise
hz=$(getconf CLK_TCK)

# Room for the idle connections: the servers and bench/idle.py inherit this shell's file limit.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
nofile=$(ulimit -n)
[ "$nofile" = unlimited ] && nofile=1048576
max_conns=$((idle + 1000))
[ "$nofile" -gt $((max_conns + 100)) ] || die "the file limit (ulimit -Hn: $nofile) leaves no room for $idle idle connections; lower COMPARE_IDLE"

# --- Processes, cleaned up on every exit ----------------------------------------------------------
work=$(mktemp -d /tmp/reprise-compare.XXXXXX)
rpid=""
rtpid=""
npid=""
idle_pid=""
cleanup() {
  local p
  [ -z "$idle_pid" ] || kill -TERM "$idle_pid" 2>/dev/null || true
  for p in $rpid $rtpid $npid; do kill -TERM "$p" 2>/dev/null || true; done
  for _ in $(seq 50); do # up to 5 s for both to exit
    local alive=0
    for p in $rpid $rtpid $npid; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for p in $rpid $rtpid $npid $(cat "$work/nginx.workers" 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { # port, pid, name
  for _ in $(seq 200); do # up to 10 s
    kill -0 "$2" 2>/dev/null || die "$3 exited before listening on port $1; its log: $work/$3.log
$(tail -n 20 "$work/$3.log" 2>/dev/null)"
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  die "$3 never opened port $1"
}

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$work/key.pem" \
  -out "$work/cert.pem" -days 2 -subj /CN=localhost -addext subjectAltName=DNS:localhost 2>/dev/null \
  || die "could not make the test certificate"

# Ticket keys, one file per server's format: reprise's `name:hex` lines, nginx's 80 random bytes.
printf 'bench:%s\n' "$(openssl rand -hex 32)" >"$work/tickets.keys"
openssl rand 80 >"$work/tickets.nginx"
chmod 600 "$work/tickets.keys" "$work/tickets.nginx"

# reprise: $workers runtime worker threads; the session cache for the cache rows, stateless
# tickets under a key file for the tickets rows. All the load comes from one address, so the
# per-address limit is the whole limit; idle connections may stay 600 s (the idle row).
limits=(--max-connections "$max_conns" --max-connections-per-address "$max_conns" --idle-timeout 600)
rport=$(free_port)
RUST_LOG=warn "$bin" serve --listen 127.0.0.1:"$rport" --cert "$work/cert.pem" --key "$work/key.pem" \
  --workers "$workers" "${limits[@]}" --tickets stateful 2>"$work/reprise.log" &
rpid=$!
wait_port "$rport" "$rpid" reprise
rtport=$(free_port)
RUST_LOG=warn "$bin" serve --listen 127.0.0.1:"$rtport" --cert "$work/cert.pem" --key "$work/key.pem" \
  --workers "$workers" "${limits[@]}" --tickets stateless --ticket-keys "$work/tickets.keys" \
  2>"$work/reprise-tickets.log" &
rtpid=$!
wait_port "$rtport" "$rtpid" reprise-tickets

# nginx: $workers worker processes; one server block with OpenSSL's shared session cache and no session
# tickets, one with tickets under a key file and no cache.
nport=$(free_port)
ntport=$(free_port)
mkdir -p "$work/nginx"
cat >"$work/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes $workers;
worker_rlimit_nofile $nofile;
pid $work/nginx.pid;
error_log $work/nginx.log warn;
events { worker_connections $max_conns; }
http {
    access_log off;
    # The idle row's connections wait for a request this long (the default is 60 s).
    client_header_timeout 600s;
    client_body_temp_path $work/nginx/client_body;
    proxy_temp_path $work/nginx/proxy;
    fastcgi_temp_path $work/nginx/fastcgi;
    uwsgi_temp_path $work/nginx/uwsgi;
    scgi_temp_path $work/nginx/scgi;
    server {
        listen 127.0.0.1:$nport ssl;
        ssl_certificate $work/cert.pem;
        ssl_certificate_key $work/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:SSL:10m;
        ssl_session_timeout 300s;
        ssl_session_tickets off;
        # The same suite preference as reprise serve: SHA-256 suites first, server's order.
        ssl_prefer_server_ciphers on;
        ssl_ciphers ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES256-GCM-SHA384;
        ssl_conf_command Ciphersuites TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_256_GCM_SHA384;
        location / { return 200 "ok\n"; }
    }
    server {
        listen 127.0.0.1:$ntport ssl;
        ssl_certificate $work/cert.pem;
        ssl_certificate_key $work/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache off;
        ssl_session_timeout 300s;
        ssl_session_tickets on;
        ssl_session_ticket_key $work/tickets.nginx;
        ssl_prefer_server_ciphers on;
        ssl_ciphers ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES256-GCM-SHA384;
        ssl_conf_command Ciphersuites TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_256_GCM_SHA384;
        location / { return 200 "ok\n"; }
    }
}
EOF
"$nginx" -t -q -e "$work/nginx.log" -c "$work/nginx.conf" -p "$work/nginx" 2>>"$work/nginx.log" \
  || die "nginx rejects its configuration: $(tail -n 5 "$work/nginx.log")"
"$nginx" -e "$work/nginx.log" -c "$work/nginx.conf" -p "$work/nginx" 2>>"$work/nginx.log" &
npid=$!
wait_port "$nport" "$npid" nginx
nginx_workers() { pgrep -P "$npid" | tr '\n' ' '; }
nginx_worker_count() { local w; w=$(nginx_workers); set -- $w; echo $#; }
for _ in $(seq 100); do # up to 5 s for the workers to appear
  [ "$(nginx_worker_count)" -ge "$workers" ] && break
  sleep 0.05
done
[ "$(nginx_worker_count)" -ge "$workers" ] || die "nginx started $(nginx_worker_count) worker processes, not $workers"
nginx_workers >"$work/nginx.workers"

# Both must answer an HTTP request over TLS before anything is measured.
check_answers() { # port, name
  local out
  out=$(printf 'GET / HTTP/1.0\r\nHost: localhost\r\n\r\n' \
    | timeout 10 openssl s_client -connect 127.0.0.1:"$1" -servername localhost -quiet 2>/dev/null || true)
  case "$out" in
    HTTP/1.?\ 200*) ;;
    *) die "$2 on port $1 does not answer GET / with 200 (got: $(printf '%s' "$out" | head -n 1))" ;;
  esac
}
check_answers "$rport" reprise
check_answers "$rtport" reprise-tickets
check_answers "$nport" nginx
check_answers "$ntport" nginx-tickets

# --- Measurement ---------------------------------------------------------------------------------
server_pids() { # name, test
  case "$1 $2" in
    "reprise tickets-"*) echo "$rtpid" ;;
    reprise*) echo "$rpid" ;;
    *) echo "$npid $(nginx_workers)" ;;
  esac
}
cpu_ticks() { # pids...: utime + stime, in clock ticks, summed (fields 14 and 15 of /proc/PID/stat)
  local total=0 p s
  for p in "$@"; do
    s=$(<"/proc/$p/stat") || die "process $p is gone"
    s=${s##*) } # fields from 3 on: the command name may hold spaces
    # shellcheck disable=SC2086
    set -- $s
    total=$((total + ${12} + ${13}))
  done
  echo "$total"
}
machine_ticks() { # busy ticks of all cores: user, nice, system, irq, softirq
  local _c u n s _i _w q sq _rest
  read -r _c u n s _i _w q sq _rest </proc/stat
  echo $((u + n + s + q + sq))
}
children_secs() { # CPU seconds of every child the main shell has waited for, from `times`
  awk 'NR == 2 { for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); t += a[1] * 60 + a[2] } print t }' "$work/times"
}
now_ns() { date +%s%N; }

# Holds $idle idle TLS connections to port $1 with bench/idle.py until stop_idle; sets idle_pid.
start_idle() {
  python3 bench/idle.py 127.0.0.1 "$1" "$idle" >"$work/idle.out" 2>"$work/idle.err" &
  idle_pid=$!
  local t0=$SECONDS
  until grep -q '^ready' "$work/idle.out"; do
    kill -0 "$idle_pid" 2>/dev/null || die "bench/idle.py failed: $(tail -n 3 "$work/idle.err")"
    [ $((SECONDS - t0)) -lt 150 ] || die "bench/idle.py did not set up its connections in 150 s"
    sleep 0.1
  done
}
# Ends bench/idle.py; sets idle_open to how many of its connections were still open.
stop_idle() {
  kill -USR1 "$idle_pid" 2>/dev/null || true
  wait "$idle_pid" || die "bench/idle.py failed: $(tail -n 3 "$work/idle.err")"
  idle_pid=""
  idle_open=$(awk '/^open/ { print $2 }' "$work/idle.out")
  [ -n "$idle_open" ] || die "bench/idle.py did not say how many connections were still open"
}

# One run: one client against one server. Appends a line to $work/results:
# test server round handshakes resumed wall_s server_cpu_s client_cpu_s other_cpu_s failures
# idle_still_open (- without idle connections)
run() { # test, server, round
  local test=$1 server=$2 round=$3 port pids c0 c1 m0 m1 k0 k1 t0 t1 hs res fails open=-
  case "$server $test" in
    "reprise tickets-"*) port=$rtport ;;
    "nginx tickets-"*) port=$ntport ;;
    reprise*) port=$rport ;;
    *) port=$nport ;;
  esac
  pids=$(server_pids "$server" "$test")
  # shellcheck disable=SC2086
  for p in $pids; do kill -0 "$p" 2>/dev/null || die "$server (pid $p) died; its log: $(tail -n 5 "$work/$server.log")"; done
  local -a cmd
  case "$test" in
    s_time-new) cmd=(openssl s_time -connect 127.0.0.1:"$port" -new -tls1_2 -time "$secs" -www /) ;;
    s_time-reuse) cmd=(openssl s_time -connect 127.0.0.1:"$port" -reuse -tls1_2 -time "$secs" -www /) ;;
    # No -www: s_time closes right after the handshake, without close_notify.
    s_time-reuse-nonotify) cmd=(openssl s_time -connect 127.0.0.1:"$port" -reuse -tls1_2 -time "$secs") ;;
    bench-* | tickets-*)
      local tls mode extra
      IFS=- read -r _ tls mode extra <<<"$test"
      cmd=("$bin" bench --connect 127.0.0.1:"$port" --server-name localhost --insecure --tls "$tls"
        --mode "$mode" --concurrency "$conc" --duration "$secs" --json --workers "$workers")
      case "$extra" in
        abrupt) cmd+=(--abrupt 0.5) ;;
        idle) start_idle "$port" ;;
      esac
      ;;
  esac
  # shellcheck disable=SC2086
  c0=$(cpu_ticks $pids)
  times >"$work/times" # in this shell: in a subshell, it would not see the client
  k0=$(children_secs)
  m0=$(machine_ticks)
  t0=$(now_ns)
  timeout $((secs + 30)) "${cmd[@]}" >"$work/out" 2>"$work/err" \
    || die "$test against $server failed (exit $?): $(tail -n 5 "$work/err")"
  t1=$(now_ns)
  m1=$(machine_ticks)
  times >"$work/times"
  k1=$(children_secs)
  # shellcheck disable=SC2086
  c1=$(cpu_ticks $pids)
  if [ -n "$idle_pid" ]; then
    stop_idle
    open=$idle_open
  fi
  case "$test" in
    s_time-*)
      hs=$(awk '/ connections in [0-9.]+s;/ { print $1; exit }' "$work/out")
      # s_time prints one character per connection: r when the session was reused.
      res=$(grep -E '^[rt3*]+$' "$work/out" | tr -cd 'r' | wc -c || true)
      fails=$(grep -ci error "$work/out" || true)
      ;;
    bench-* | tickets-*)
      read -r hs res fails < <(python3 -c 'import json,sys; r=json.load(sys.stdin); print(r["handshakes"], r["resumed"], r["failures"])' <"$work/out") \
        || die "cannot parse the output of reprise bench: $(head -c 300 "$work/out")"
      ;;
  esac
  [ -n "$hs" ] && [ "$hs" -gt 0 ] || die "$test against $server completed no handshake: $(tail -n 5 "$work/out" "$work/err")"
  python3 - "$test" "$server" "$round" "$hs" "$res" "$t0" "$t1" "$c0" "$c1" "$k0" "$k1" "$m0" "$m1" "$hz" "$fails" "$open" >>"$work/results" <<'EOF'
import sys
test, server, rnd, hs, res, t0, t1, c0, c1, k0, k1, m0, m1, hz, fails, still_open = sys.argv[1:]
hz = int(hz)
wall = (int(t1) - int(t0)) / 1e9
srv = (int(c1) - int(c0)) / hz
cli = float(k1) - float(k0)
other = max(0.0, (int(m1) - int(m0)) / hz - srv - cli)
print(test, server, rnd, hs, res, f"{wall:.3f}", f"{srv:.2f}", f"{cli:.2f}", f"{other:.2f}", fails, still_open)
EOF
  tail -n 1 "$work/results" | awk '{ printf "  round %s  %-16s %-7s %6.0f hs/s  server %6.1f us/hs, busy %3.0f %%  client %6.1f us/hs  others %3.0f %%  resumed %5.1f %%\n", $3, $1, $2, $4 / $6, 1e6 * $7 / $4, 100 * $7 / $6, 1e6 * $8 / $4, 100 * $9 / $6, 100 * $5 / $4 }' >&2
}

bench_tests="bench-1.2-full bench-1.2-resume bench-1.2-resume-abrupt bench-1.2-resume-idle bench-1.3-full bench-1.3-resume tickets-1.2-resume tickets-1.3-resume"
all_tests="s_time-new s_time-reuse s_time-reuse-nonotify $bench_tests"
if [ "$workers" -gt 1 ]; then default_tests=$bench_tests; else default_tests=$all_tests; fi
tests=${COMPARE_TESTS:-$default_tests}
for test in $tests; do
  [[ " $all_tests " == *" $test "* ]] || { echo "compare.sh: unknown test '$test' in COMPARE_TESTS" >&2; usage; }
done
# Is the machine quiet? One second with both servers idle.
m0=$(machine_ticks)
sleep 1
m1=$(machine_ticks)
idle_busy=$((100 * (m1 - m0) / hz))
load="$(cut -d' ' -f1-3 /proc/loadavg); ${idle_busy} % of one core busy before the runs"
echo "load average: $load" >&2
if [ "$idle_busy" -gt 10 ]; then
  echo "warning: other processes use the CPU; the figures will be noisy:" >&2
  ps -eo pid=,pcpu=,etime=,comm= --sort=-pcpu | head -n 5 >&2
fi

# Warm-up, not recorded: one second of full handshakes each.
for port in "$rport" "$rtport" "$nport" "$ntport"; do
  timeout 30 "$bin" bench --connect 127.0.0.1:"$port" --server-name localhost --insecure --tls 1.2 \
    --mode full --concurrency "$conc" --duration 1 --json --workers 1 >/dev/null || die "warm-up against port $port failed"
done

: >"$work/results"
for round in $(seq "$rounds"); do
  for test in $tests; do
    if [ $((round % 2)) = 1 ]; then order="reprise nginx"; else order="nginx reprise"; fi
    for server in $order; do run "$test" "$server" "$round"; done
  done
done

# --- Table ---------------------------------------------------------------------------------------
python3 - "$work/results" "$secs" "$rounds" "$conc" "$load" "$workers" "$idle" <<'EOF'
import statistics, sys
path, secs, rounds, conc, load, workers, idle = sys.argv[1:]
workers = int(workers)
rows = [l.split() for l in open(path) if l.strip()]
names = {
    "s_time-new": ("s_time -new", "1.2", "full"),
    "s_time-reuse": ("s_time -reuse", "1.2", "resumed"),
    "s_time-reuse-nonotify": ("s_time -reuse, no -www (no close_notify)", "1.2", "resumed"),
    "bench-1.2-full": (f"bench c={conc}", "1.2", "full"),
    "bench-1.2-resume": (f"bench c={conc}", "1.2", "resumed"),
    "bench-1.2-resume-abrupt": (f"bench c={conc}, half closing abruptly (no close_notify)", "1.2", "resumed"),
    "bench-1.2-resume-idle": (f"bench c={conc}, {int(idle):,} idle TLS connections held", "1.2", "resumed"),
    "bench-1.3-full": (f"bench c={conc}", "1.3", "full"),
    "bench-1.3-resume": (f"bench c={conc}", "1.3", "resumed"),
    "tickets-1.2-resume": (f"bench c={conc}, stateless tickets, key file", "1.2", "resumed"),
    "tickets-1.3-resume": (f"bench c={conc}, stateless tickets, key file", "1.3", "resumed"),
}
med = statistics.median
stats = {}
names = {t: v for t, v in names.items() if any(r[0] == t for r in rows)}
for test in names:
    for server in ("reprise", "nginx"):
        rs = [r for r in rows if r[0] == test and r[1] == server]
        hs = [int(r[3]) for r in rs]
        stats[test, server] = {
            "rate": med([int(r[3]) / float(r[5]) for r in rs]),
            "cpu": med([1e6 * float(r[6]) / int(r[3]) for r in rs]),
            "busy": med([100 * float(r[6]) / float(r[5]) for r in rs]),
            "client": med([1e6 * float(r[7]) / int(r[3]) for r in rs]),
            "resumed": 100 * sum(int(r[4]) for r in rs) / sum(hs),
            "fails": sum(int(r[9]) for r in rs),
            "open": min((int(r[10]) for r in rs if r[10] != "-"), default=None),
        }
ratio = lambda a, b: a / b if b else float("nan")

print(f"\nreprise serve vs nginx: medians of {rounds} rounds of {secs} s; server CPU = utime+stime of the server's processes")
print(f"workers: {workers} (reprise serve --workers {workers}, nginx worker_processes {workers}, "
      f"reprise bench --workers {workers} for the bench rows)")
head = ("client", "TLS", "handshake", "reprise hs/s", "nginx hs/s", "ratio",
        "reprise CPU us/hs", "nginx CPU us/hs", "ratio", "resumed r / n", "server busy r / n",
        "client CPU us/hs r / n")
print("| " + " | ".join(head) + " |")
print("|" + "|".join(["---"] * 3 + ["---:"] * (len(head) - 3)) + "|")
for test, (client, tls, kind) in names.items():
    r, n = stats[test, "reprise"], stats[test, "nginx"]
    print(f"| {client} | {tls} | {kind} | {r['rate']:.0f} | {n['rate']:.0f} | {ratio(r['rate'], n['rate']):.2f}x "
          f"| {r['cpu']:.1f} | {n['cpu']:.1f} | {ratio(r['cpu'], n['cpu']):.2f} "
          f"| {r['resumed']:.1f} % / {n['resumed']:.1f} % | {r['busy']:.0f} % / {n['busy']:.0f} % "
          f"| {r['client']:.0f} / {n['client']:.0f} |")

for test in names:
    held = [(s, stats[test, s]["open"]) for s in ("reprise", "nginx") if stats[test, s]["open"] is not None]
    if held:
        print(f"\n{test}: idle connections still open after each run, fewest over the rounds: "
              + ", ".join(f"{s} {n:,} of {int(idle):,}" for s, n in held))

fails = {k: v["fails"] for k, v in stats.items() if v["fails"]}
if fails:
    print("\nfailed connections: " + ", ".join(f"{t} {s}: {f}" for (t, s), f in fails.items()))
other = [float(r[8]) / float(r[5]) for r in rows]
print(f"\nload average before the runs: {load}.\nCPU used by other processes during the runs: "
      f"median {100 * med(other):.0f} %, max {100 * max(other):.0f} % of one core")
disturbed = [r for r in rows if float(r[8]) / float(r[5]) > 0.2]
for r in disturbed:
    print(f"warning: round {r[2]}, {r[0]} against {r[1]}: other processes used "
          f"{100 * float(r[8]) / float(r[5]):.0f} % of a core during the run; its figures are distorted")
if disturbed:
    print("warning: rerun on a quiet machine before trusting the rows above")

# Issue 18's targets for the bench rows; the s_time rows keep the earlier ones, for reference.
print("\ntargets (bench rows load the server, which is saturated only where its busy column is near 100 %;\n"
      "s_time rows are latency-bound, shown for reference):")
def check(label, test, key, op, bound):
    if test not in names:
        return
    r, n = stats[test, "reprise"][key], stats[test, "nginx"][key]
    v = ratio(r, n)
    ok = v >= bound if op == ">=" else v <= bound
    note = ""
    if test.endswith("resume") or test.startswith("s_time-reuse"):
        if min(stats[test, "reprise"]["resumed"], stats[test, "nginx"]["resumed"]) < 95:
            note = " (resumed shares differ: compare with care)"
    print(f"  {'holds ' if ok else 'MISSES'} {label:<54} {v:5.2f} (target {op} {bound:.2f}){note}")
check("resumed TLS 1.2 throughput, bench", "bench-1.2-resume", "rate", ">=", 1.3)
check("resumed TLS 1.2 server CPU/handshake, bench", "bench-1.2-resume", "cpu", "<=", 0.70)
check("resumed TLS 1.2 throughput, s_time", "s_time-reuse", "rate", ">=", 1.5)
check("resumed TLS 1.2 server CPU/handshake, s_time", "s_time-reuse", "cpu", "<=", 2 / 3)
check("resumed TLS 1.2 throughput, s_time, no close_notify", "s_time-reuse-nonotify", "rate", ">=", 1.0)
check("resumed TLS 1.2 server CPU/hs, s_time, no close_notify", "s_time-reuse-nonotify", "cpu", "<=", 1.0)
check("resumed TLS 1.2 throughput, bench, half abrupt", "bench-1.2-resume-abrupt", "rate", ">=", 1.3)
check(f"resumed TLS 1.2 throughput, bench, {int(idle):,} idle conns", "bench-1.2-resume-idle", "rate", ">=", 1.0)
check("full TLS 1.2 throughput, bench", "bench-1.2-full", "rate", ">=", 1.2)
check("full TLS 1.3 throughput, bench", "bench-1.3-full", "rate", ">=", 1.2)
check("full TLS 1.2 throughput, s_time", "s_time-new", "rate", ">=", 1.0)
check("resumed TLS 1.3 throughput, bench", "bench-1.3-resume", "rate", ">=", 1.4)
check("resumed TLS 1.2 throughput, stateless tickets", "tickets-1.2-resume", "rate", ">=", 1.0)
check("resumed TLS 1.2 server CPU/hs, stateless tickets", "tickets-1.2-resume", "cpu", "<=", 0.8)
check("resumed TLS 1.3 throughput, stateless tickets", "tickets-1.3-resume", "rate", ">=", 1.0)
check("resumed TLS 1.3 server CPU/hs, stateless tickets", "tickets-1.3-resume", "cpu", "<=", 0.8)
if workers > 1:
    for test in names:
        if test.startswith(("bench-", "tickets-")):
            check(f"{workers} workers ahead of nginx's: {test}", test, "rate", ">=", 1.0)
EOF
