#!/usr/bin/env bash
# Viewers behind an impaired network: tests/faults_network.rs (10 joins to
# their first frame, then 5 more and a 25 s watch), ROUNDS times against the
# release binary. LOSS (percent) and JITTER (ms) change the impairment (default
# 5 % each way, 10 ms + 0-50 ms delay, which reorders). Output goes to
# bench/soak/results/impaired-<LOSS>pct-<JITTER>ms.txt. PROFILE=debug uses the
# test build instead of the release binary (no release build on a shared machine).
# Usage: bench/soak/impaired.sh [rounds=3] [loss=5] [jitter=50]
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
ROUNDS=${1:-3}
LOSS=${2:-5}
JITTER=${3:-50}
OUT="$ROOT/bench/soak/results/impaired-${LOSS}pct-${JITTER}ms.txt"
mkdir -p "$(dirname "$OUT")"
cd "$ROOT"
PROFILE=${PROFILE:-release}
if [ "$PROFILE" = release ]; then
  cargo build --release --quiet || exit 1
else
  cargo build --quiet || exit 1
fi
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/$PROFILE/roomcast"
: >"$OUT"
for i in $(seq "$ROUNDS"); do
  echo "--- round $i" | tee -a "$OUT"
  CARGO_TARGET_DIR="${TEST_TARGET_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}}" \
    ROOMCAST_TEST_BIN="$BIN" SOAK_IMPAIR_LOSS_PERCENT="$LOSS" SOAK_IMPAIR_JITTER_MS="$JITTER" \
    cargo test --test faults_network -- --nocapture --test-threads 1 2>&1 |
    grep -E '^(fps|joins through|join [0-9]|impaired watch|relay:|test |thread .* panicked|a join|the median join)' | tee -a "$OUT"
done
