#!/usr/bin/env bash
# Topology propagation: the time for a topology change (a member becoming Active, then removed)
# published on the bus to be routed by every one of 1, 4 and 16 load balancers, through the
# embedded broker (rumqttd), Mosquitto and nats-server, in one run of
# `crates/nubo-lb/examples/propagation.rs` (the load balancers in one process, each with its own bus
# connection; see that file for the method). Mosquitto and nats-server are started here, each in its
# own process group, on loopback ports the OS picks, and stopped (with the temporary directory) on
# exit, whatever the exit; a broker whose binary is missing is skipped with a message.
#
#   bench/propagation.sh [propagation options: --lbs 1,4,16 --rounds 2 --reps 50 --clusters C --members M]
set -euo pipefail
set -m # every background job gets a process group of its own (its pid), killed as a whole
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/nubo-target}"
cargo build --release --locked -p nubo-lb --example propagation >&2
BENCH="$CARGO_TARGET_DIR/release/examples/propagation"

WORK=$(mktemp -d /tmp/nubo-bench-propagation.XXXXXX)
GROUPS_STARTED=() # process group ids (= pids) of the brokers
BENCH_PID=
cleanup() {
  [ -n "$BENCH_PID" ] && kill "$BENCH_PID" 2>/dev/null || true
  for g in "${GROUPS_STARTED[@]}"; do kill -TERM -- "-$g" 2>/dev/null || kill -TERM "$g" 2>/dev/null || true; done
  for g in "${GROUPS_STARTED[@]}"; do
    for _ in $(seq 50); do kill -0 "$g" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$g" 2>/dev/null || true
    wait "$g" 2>/dev/null || true
  done
  [ -n "$BENCH_PID" ] && wait "$BENCH_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# launch NAME COMMAND...: starts a broker in a process group of its own, listening on $PORT;
# returns 1 if it exits before the port opens (e.g. the port was taken meanwhile).
launch() {
  local name=$1
  shift
  "$@" >"$WORK/$name.log" 2>&1 </dev/null &
  local pid=$!
  GROUPS_STARTED+=("$pid")
  for _ in $(seq 200); do
    kill -0 "$pid" 2>/dev/null || break
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "$name did not start on port $PORT:" >&2
  tail -5 "$WORK/$name.log" >&2 || true
  kill -KILL -- "-$pid" 2>/dev/null || true
  return 1
}

ARGS=()
if command -v mosquitto >/dev/null; then
  for _ in 1 2 3; do
    PORT=$(port)
    printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 0\nmax_inflight_messages 1000\n' "$PORT" >"$WORK/mosquitto.conf"
    if launch mosquitto mosquitto -c "$WORK/mosquitto.conf"; then
      ARGS+=(--mqtt "mqtt://127.0.0.1:$PORT")
      break
    fi
  done
  [ ${#ARGS[@]} -gt 0 ] || { echo "Mosquitto could not be started" >&2; exit 1; }
  echo "$(mosquitto -h 2>/dev/null | head -1) on port $PORT" >&2
else
  echo "mosquitto not found: Mosquitto skipped (apt-get install mosquitto)" >&2
fi
if command -v nats-server >/dev/null; then
  started=
  for _ in 1 2 3; do
    PORT=$(port)
    if launch nats-server nats-server -a 127.0.0.1 -p "$PORT"; then
      ARGS+=(--nats "nats://127.0.0.1:$PORT")
      started=1
      break
    fi
  done
  [ -n "$started" ] || { echo "nats-server could not be started" >&2; exit 1; }
  echo "$(nats-server --version) on port $PORT" >&2
else
  echo "nats-server not found: NATS skipped (apt-get install nats-server)" >&2
fi

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) cores)" >&2
"$BENCH" "${ARGS[@]}" "$@" &
BENCH_PID=$!
wait "$BENCH_PID"
BENCH_PID=
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
