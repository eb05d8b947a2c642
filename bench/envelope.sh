#!/usr/bin/env bash
# What proving and checking a bus message costs (nubo-envelope): a health statistic sealed with a
# member's key and with the platform's, opened by a platform component (deriving the member's
# key each time), then decoded and checked against what its sender may send.
#   bench/envelope.sh [MESSAGES]   (default 200000)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/nubo-target}"
cargo build --release --locked -q -p nubo-envelope --example seal-open
"$CARGO_TARGET_DIR/release/examples/seal-open" "$@"
