#!/usr/bin/env bash
# The fault scenarios, ROUNDS times each against the release binary: disk full
# (tests/faults_disk.rs), wall clock stepped (tests/faults_clock.rs), Synapse
# killed and PostgreSQL restarted mid-stream (tests/faults_matrix.rs). Each
# round's key lines and verdict go to bench/soak/results/faults.txt.
# Usage: bench/soak/faults.sh [rounds=3]
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
ROUNDS=${1:-3}
OUT="$ROOT/bench/soak/results/faults.txt"
mkdir -p "$(dirname "$OUT")"
cd "$ROOT"
cargo build --release --quiet || exit 1
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/roomcast"
: >"$OUT"
for i in $(seq "$ROUNDS"); do
  for t in faults_disk faults_clock faults_matrix; do
    echo "--- $t, round $i" | tee -a "$OUT"
    start=$(date +%s)
    CARGO_TARGET_DIR="${TEST_TARGET_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}}" ROOMCAST_TEST_BIN="$BIN" \
      cargo test --test "$t" -- --nocapture 2>&1 |
      grep -E '^(log:|/healthz|integrity|before any|after a step|with |transactions whose|test |thread .* panicked)' |
      cut -c1-300 | tee -a "$OUT"
    echo "($(($(date +%s) - start)) s)" | tee -a "$OUT"
  done
done
