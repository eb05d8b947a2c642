#!/usr/bin/env bash
# Load balancer throughput and latency: nubo's load balancer side by side with nginx, in one run.
#
# Both proxies run with one worker thread pinned to CPU 0, keep-alive to the upstream, in front of the
# same backend (an nginx answering a small static body); the backend and wrk share CPU 1. Each proxy
# gets the same wrk run (threads, connections, duration); the table reports requests/s, latency
# percentiles and the ratio nubo/nginx. Everything binds loopback ports chosen at random, and every
# process started here is stopped on exit.
#
# The two proxies alternate over ROUNDS short rounds (the machine is a shared virtual one whose speed
# drifts, so single runs are noisy): the table shows, per proxy, the round with the median throughput,
# and the median of the per-round ratios nubo/nginx (each ratio compares two runs made back to back).
#
#   bench/lb.sh [DURATION_SECONDS] [CONNECTIONS] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-4}
CONNECTIONS=${2:-64}
ROUNDS=${3:-7}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/nubo-target}"
for tool in nginx wrk taskset; do
  command -v "$tool" >/dev/null || { apt-get update -qq >/dev/null; apt-get install -y -qq nginx wrk util-linux >/dev/null; break; }
done
cargo build --release -p nubo >&2
NUBO="$CARGO_TARGET_DIR/release/nubo"
WORK=$(mktemp -d /tmp/nubo-bench-lb.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }

nginx_conf() { # name, body (inside http {})
  mkdir -p "$WORK/$1/logs"
  cat > "$WORK/$1/nginx.conf" <<CONF
daemon off;
worker_processes 1;
error_log $WORK/$1/logs/error.log warn;
pid $WORK/$1/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/$1/body;
  proxy_temp_path $WORK/$1/proxy;
  fastcgi_temp_path $WORK/$1/fastcgi;
  uwsgi_temp_path $WORK/$1/uwsgi;
  scgi_temp_path $WORK/$1/scgi;
  $2
}
CONF
}

BACKEND=$(port); NGINX_PROXY=$(port); NUBO_PROXY=$(port)
nginx_conf backend "server { listen 127.0.0.1:$BACKEND; keepalive_requests 1000000; location / { return 200 'hello from the backend\n'; } }"
taskset -c 1 nginx -c "$WORK/backend/nginx.conf" -p "$WORK/backend/" &
PIDS+=($!)
nginx_conf proxy "upstream app { server 127.0.0.1:$BACKEND; keepalive 256; keepalive_requests 1000000; }
  server { listen 127.0.0.1:$NGINX_PROXY; keepalive_requests 1000000;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for; } }"
taskset -c 0 nginx -c "$WORK/proxy/nginx.conf" -p "$WORK/proxy/" &
PIDS+=($!)
NGINX_MASTER=$!
TOKIO_WORKER_THREADS=1 NUBO_LOG=warn taskset -c 0 "$NUBO" lb --route "bench.local:$NUBO_PROXY=127.0.0.1:$BACKEND" >/dev/null &
PIDS+=($!)
NUBO_PID=$!
wait_port "$BACKEND"; wait_port "$NGINX_PROXY"; wait_port "$NUBO_PROXY"
NGINX_WORKER=$(pgrep -P "$NGINX_MASTER" | head -1)
TICK=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

run() { # name, port, pid of the proxy's worker -> "rps p50 p90 p99 cpu-us-per-request errors"
  taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d2s -H 'Host: bench.local' --latency "http://127.0.0.1:$2/" >/dev/null # warm-up
  local before after
  before=$(cpu_ticks "$3")
  taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" -H 'Host: bench.local' --latency "http://127.0.0.1:$2/" > "$WORK/$1.wrk"
  after=$(cpu_ticks "$3")
  python3 - "$WORK/$1.wrk" "$((after - before))" "$TICK" "$DURATION" <<'PY'
import re, sys
t = open(sys.argv[1]).read()
def lat(p):
    m = re.search(r"^\s+%s%%\s+([\d.]+)(us|ms|s)" % p, t, re.M)
    v, u = float(m.group(1)), m.group(2)
    return v / 1000 if u == "us" else v * 1000 if u == "s" else v
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", t)
cpu_us = int(sys.argv[2]) / int(sys.argv[3]) * 1e6 / (rps * float(sys.argv[4]))
print(rps, lat(50), lat(90), lat(99), round(cpu_us, 2), "errors" if errors else "ok")
PY
}
: > "$WORK/nginx.rounds"; : > "$WORK/nubo.rounds"
for _ in $(seq "$ROUNDS"); do
  run nginx "$NGINX_PROXY" "$NGINX_WORKER" >> "$WORK/nginx.rounds"
  run nubo "$NUBO_PROXY" "$NUBO_PID" >> "$WORK/nubo.rounds"
done
median() { sort -n -k1 "$1" | awk -v n="$ROUNDS" 'NR == int((n + 1) / 2)'; }
read -r N_RPS N_P50 N_P90 N_P99 N_CPU N_ERR < <(median "$WORK/nginx.rounds")
read -r B_RPS B_P50 B_P90 B_P99 B_CPU B_ERR < <(median "$WORK/nubo.rounds")
RATIO=$(paste -d' ' "$WORK/nubo.rounds" "$WORK/nginx.rounds" | awk '{print $1 / $7}' | sort -n | awk -v n="$ROUNDS" 'NR == int((n + 1) / 2)')
P99_RATIO=$(paste -d' ' "$WORK/nubo.rounds" "$WORK/nginx.rounds" | awk '{print $4 / $10}' | sort -n | awk -v n="$ROUNDS" 'NR == int((n + 1) / 2)')
CPU_RATIO=$(paste -d' ' "$WORK/nubo.rounds" "$WORK/nginx.rounds" | awk '{print $5 / $11}' | sort -n | awk -v n="$ROUNDS" 'NR == int((n + 1) / 2)')
echo "rounds, requests/s: nginx: $(cut -d' ' -f1 "$WORK/nginx.rounds" | tr '\n' ' ')/ nubo: $(cut -d' ' -f1 "$WORK/nubo.rounds" | tr '\n' ' ')" >&2
python3 - "$N_RPS" "$N_P50" "$N_P90" "$N_P99" "$N_CPU" "$N_ERR" "$B_RPS" "$B_P50" "$B_P90" "$B_P99" "$B_CPU" "$B_ERR" "$DURATION" "$CONNECTIONS" "$RATIO" "$ROUNDS" "$P99_RATIO" "$CPU_RATIO" <<'PY'
import sys
n = list(map(float, sys.argv[1:6])); ne = sys.argv[6]
b = list(map(float, sys.argv[7:12])); be = sys.argv[12]
d, c, ratio, rounds = sys.argv[13], sys.argv[14], float(sys.argv[15]), sys.argv[16]
p99_ratio, cpu_ratio = float(sys.argv[17]), float(sys.argv[18])
print(f"wrk -t1 -c{c} -d{d}s x {rounds} alternating rounds, proxy pinned to CPU 0 with 1 worker, backend and wrk on CPU 1, upstream keep-alive; median round of each\n")
print("| proxy | requests/s | p50 ms | p90 ms | p99 ms | proxy CPU µs/request | errors |")
print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
print(f"| nginx | {n[0]:.0f} | {n[1]:.3f} | {n[2]:.3f} | {n[3]:.3f} | {n[4]:.2f} | {ne} |")
print(f"| nubo lb | {b[0]:.0f} | {b[1]:.3f} | {b[2]:.3f} | {b[3]:.3f} | {b[4]:.2f} | {be} |")
print(f"| nubo / nginx | {b[0]/n[0]:.2f} | {b[1]/n[1]:.2f} | {b[2]/n[2]:.2f} | {b[3]/n[3]:.2f} | {b[4]/n[4]:.2f} | |")
print(f"\nmedians of the per-round ratios nubo/nginx: throughput {ratio:.2f}, p99 {p99_ratio:.2f}, proxy CPU per request {cpu_ratio:.2f}")
PY
