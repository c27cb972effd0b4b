#!/usr/bin/env bash
# LL-HLS costs.
#  1. The segmenter alone (`cargo bench --bench hls`): CPU per stream for
#     muxing a 2.5 Mbit/s 720p30 H.264 + Opus stream into parts and segments.
#  2. The whole server with that stream (pre-encoded, ffmpeg -c copy; AAC is
#     transcoded as usual), server pinned to CPU 0, ffmpeg and the clients to
#     CPU 1: server CPU with no HLS client (baseline), then N concurrent clients
#     doing what hls.js does at the live edge (examples/hls_load.rs: blocking
#     reload for the next part, then the part), µs of server CPU per request
#     above the baseline, and how long a blocking reload waits.
# Usage: bench/hls.sh [seconds per step] [clients, e.g. 1,10,100,300]
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
SECS=${1:-20}
CLIENTS=${2:-1,10,100,300}
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
(cd "$ROOT" && cargo bench --quiet --bench hls 2>/dev/null | grep '^{')
build_release
(cd "$ROOT" && cargo build --release --quiet --example hls_load)
start_server
taskset -a -p -c 0 "$SERVER_PID" >/dev/null
publish 2500
taskset -a -p -c 1 "$FFMPEG_PID" >/dev/null
ticks() { cat /proc/"$SERVER_PID"/task/*/schedstat | awk '{s += $1} END {printf "%.0f", s}'; }
sleep 2
t0=$(ticks); s0=$(date +%s.%N); sleep "$SECS"; t1=$(ticks); s1=$(date +%s.%N)
BASE=$(awk -v t="$((t1 - t0))" -v s0="$s0" -v s1="$s1" 'BEGIN { printf "%.4f", t / 1e9 / (s1 - s0) }')
echo "{\"bench\":\"server_without_hls_clients\",\"server_cpu_cores\":$BASE}"
taskset -c 1 "$TARGET/release/examples/hls_load" --url "http://$HTTP/hls/$STREAM/index.m3u8" \
  --clients "$CLIENTS" --step-secs "$SECS" --server-pid "$SERVER_PID" --baseline-cores "$BASE"
curl -fs "http://$HTTP/metrics" | grep '^roomcast_hls' || true
