#!/usr/bin/env bash
# Fan-out benchmark: one 2.5 Mbps H.264 + 128 kbps audio stream (ffmpeg over
# RTMP, AAC transcoded to Opus), viewers ramped 50, 100, 200, 400, … until loss
# passes 1% or the server's core saturates. The server runs one WebRTC worker
# pinned to CPU 0; the load generator and ffmpeg are pinned to CPU 1, so the
# figures are per server core. Usage: bench/fanout.sh [steps] [seconds per step]
# DIRECT_SEND=false measures str0m's send path instead of roomcast's own SRTP
# (`[webrtc] direct_send`, default true), with the same binary.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
STEPS=${1:-50,100,200,400,600,800,1000,1200,1400,1600}
SECS=${2:-10}
[[ -n "${BENCH_SERVER_BIN:-}" ]] || build_release
(cd "$ROOT" && cargo build --release --quiet --example loadgen)
start_server "workers = 1
direct_send = ${DIRECT_SEND:-true}"
taskset -pc 0 "$SERVER_PID" >/dev/null
for tid in /proc/"$SERVER_PID"/task/*; do taskset -pc 0 "${tid##*/}" >/dev/null; done
publish 2500
taskset -pc 1 "$FFMPEG_PID" >/dev/null
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r)" >&2
taskset -c 1 "${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/loadgen" --whep "http://$HTTP/whep/$STREAM" \
  --steps "$STEPS" --step-secs "$SECS" --full 10 --server-pid "$SERVER_PID" \
  --metrics "http://$HTTP/metrics" --max-cores 1
