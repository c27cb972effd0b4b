#!/usr/bin/env bash
# Thumbnail cost: N streams of 720p30 H.264 at 2.5 Mbit/s (ffmpeg -c copy over
# RTMP), thumbnails of every stream renewed every second whether asked for or
# not (the default: every 10 s while asked for), for S
# seconds. Prints the CPU time of one thumbnail (OpenH264 decode of a keyframe,
# scale, JPEG encode; thread CPU time, from /metrics) and the server's whole
# CPU use with thumbnails on and off. Usage: bench/thumbnail.sh [streams] [seconds]
# BENCH_SERVER_BIN=target/debug/roomcast runs a debug build (OpenH264's C is
# built with the same opt-level as the profile: say which in the figures).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
N=${1:-4}
SECS=${2:-20}
[[ -n "${BENCH_SERVER_BIN:-}" ]] || build_release
export EXTRA_STREAMS=$((N - 1))
encode 2500 128

run() { # run "enabled = true|false": sets RESULT="thumbnails ms_per_thumb server_cpu_pct"
  start_server "[thumbnails]
$1
interval_secs = 1"
  PUBLISHER_PIDS=""
  loop_publish "$STREAM" "$KEY"; PUBLISHER_PIDS="$LAST_PID"
  for i in $(seq 1 $((N - 1))); do
    loop_publish "$STREAM$i" "$KEY-$i"; PUBLISHER_PIDS="$PUBLISHER_PIDS $LAST_PID"
  done
  measure_window "$SECS"
  local made cpu server_pct=$WINDOW_PCT
  made=$(metric_delta roomcast_thumbnails_made_total)
  cpu=$(metric_delta roomcast_thumbnail_cpu_seconds_total)
  if (( made > 0 )); then
    RESULT="$made $(awk -v c="$cpu" -v n="$made" 'BEGIN{printf "%.2f", 1000*c/n}') $server_pct"
  else
    RESULT="0 - $server_pct"
  fi
  for p in $PUBLISHER_PIDS; do kill "$p" 2>/dev/null || true; done
  kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
  PUBLISHER_PIDS=""
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $N streams 720p30 2.5 Mbit/s, ${SECS} s" >&2
# wanted_for_secs = 0: every live stream's thumbnail renewed though nobody
# asks (thumbnails are otherwise made on demand: bench/thumbnail_demand.sh).
run "enabled = true
wanted_for_secs = 0"; read -r made ms on_pct <<<"$RESULT"
run "enabled = false"; read -r _ _ off_pct <<<"$RESULT"
echo "thumbnails made: $made in ${SECS} s ($N streams, interval 1 s, a keyframe every second)"
echo "CPU per thumbnail (1280x720 keyframe -> 320x180 JPEG): ${ms} ms"
echo "server CPU: ${on_pct}% with thumbnails every second, ${off_pct}% without"
