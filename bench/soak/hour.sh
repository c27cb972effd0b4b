#!/usr/bin/env bash
# One-hour soak: a release roomcast with one looping RTMP stream (ffmpeg -c copy,
# H.264 + AAC transcoded to Opus) and VIEWERS str0m WebRTC viewers
# (examples/loadgen.rs; 10 of them decrypt and answer NACK/PLI like a browser)
# for MINUTES. The server's RSS, open fds and threads are sampled every 5 s to
# samples.txt; loadgen prints one JSON line a minute (viewers connected, loss,
# server CPU). At the end bench/soak/trend.py prints the trend: least-squares
# slope per hour and the means of the first and last 10 minutes.
# Usage: bench/soak/hour.sh [viewers=200] [minutes=60] [video kbit/s=1000]
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
VIEWERS=${1:-200}
MINUTES=${2:-60}
KBPS=${3:-1000}
results_dir hour
build_release
(cd "$ROOT" && cargo build --release --quiet --example loadgen)
start_server
publish "$KBPS"
echo "server pid $SERVER_PID, http $HTTP, results in $OUT" >&2
sample_server "$SERVER_PID" "$OUT/samples.txt" 5
# One step per minute at the same viewer count: a JSON line each minute. Loss
# and CPU never end the run (a soak is not a ramp).
STEPS=$(for _ in $(seq "$MINUTES"); do printf "%s," "$VIEWERS"; done)
STEPS=${STEPS%,}
"$BIN_DIR/examples/loadgen" --whep "http://$HTTP/whep/$STREAM" --steps "$STEPS" \
  --step-secs 58 --full 10 --server-pid "$SERVER_PID" --metrics "http://$HTTP/metrics" \
  --max-cores 1000 --max-loss 100 | tee "$OUT/loadgen.jsonl"
cp "$WORK/server.log" "$OUT/server.log"
python3 "$ROOT/bench/soak/trend.py" "$OUT/samples.txt" | tee "$OUT/trend.txt"
