#!/usr/bin/env bash
# Publisher flap soak: tests/soak_flap.rs with CYCLES disconnect/reconnect
# cycles (RTMP via ffmpeg and WHIP via aiortc alternating) and VIEWERS str0m
# WHEP viewers, against the release binary. Passes when no viewer's
# PeerConnection ended, every viewer got each publisher's keyframe and video,
# and RSS and fds came back within 10 % of the baseline taken after the first
# two cycles. Output (per-cycle lines and the summary) goes to
# bench/soak/results/flap-<CYCLES>x<VIEWERS>.txt.
# Usage: bench/soak/flap.sh [cycles=100] [viewers=50]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CYCLES=${1:-100}
VIEWERS=${2:-50}
OUT="$ROOT/bench/soak/results/flap-${CYCLES}x${VIEWERS}.txt"
mkdir -p "$(dirname "$OUT")"
cd "$ROOT"
cargo build --release --quiet
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/roomcast"
# The test harness is built in the debug profile (its own target dir when
# TEST_TARGET_DIR is set, so a release target dir gets no debug build).
CARGO_TARGET_DIR="${TEST_TARGET_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}}" \
  ROOMCAST_TEST_BIN="$BIN" SOAK_FLAP_CYCLES="$CYCLES" SOAK_FLAP_VIEWERS="$VIEWERS" \
  cargo test --test soak_flap -- --nocapture 2>&1 | tee "$OUT"
