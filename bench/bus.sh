#!/usr/bin/env bash
# Bus throughput and latency: events per second and publish → receive latency (p50, p99, max)
# through the in-process bus, the embedded broker (rumqttd), Mosquitto and nats-server, in one run
# of `crates/nubo-bus/examples/bus-bench.rs` (one publisher and one subscriber connection per bus;
# see that file for the method). Mosquitto and nats-server are installed if missing, started here on
# loopback ports chosen at random, and stopped (with their temporary directory) on exit.
#
#   bench/bus.sh [bus-bench options: --messages N --window N --rate N --seconds S --size B]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/nubo-target}"
for tool in mosquitto nats-server; do
  command -v "$tool" >/dev/null || { apt-get update -qq >/dev/null; apt-get install -y -qq mosquitto nats-server >/dev/null; break; }
done
cargo build --release --locked -p nubo-bus --example bus-bench >&2
BENCH="$CARGO_TARGET_DIR/release/examples/bus-bench"
WORK=$(mktemp -d /tmp/nubo-bench-bus.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }

MQTT=$(port)
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 0\nmax_inflight_messages 1000\n' "$MQTT" > "$WORK/mosquitto.conf"
mosquitto -c "$WORK/mosquitto.conf" >"$WORK/mosquitto.log" 2>&1 &
PIDS+=($!)
NATS=$(port)
nats-server -a 127.0.0.1 -p "$NATS" >"$WORK/nats.log" 2>&1 &
PIDS+=($!)
wait_port "$MQTT"
wait_port "$NATS"

echo "mosquitto $(mosquitto -h 2>/dev/null | head -1 | awk '{print $3}'), $(nats-server --version)" >&2
"$BENCH" --mqtt "mqtt://127.0.0.1:$MQTT" --nats "nats://127.0.0.1:$NATS" "$@"
