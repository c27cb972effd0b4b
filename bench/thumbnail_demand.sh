#!/usr/bin/env bash
# Thumbnails on demand: one 720p30 H.264 stream at 2.5 Mbit/s (ffmpeg -c copy
# over RTMP, a keyframe every second) with the default [thumbnails] settings
# (interval_secs = 10), for S seconds each: nobody asking for its thumbnail,
# a client GETting it every second, and thumbnails off. Prints per run the
# thumbnails made, their CPU (thread CPU time, from /metrics) and the server's
# whole CPU use (utime+stime from /proc, % of one core).
# Usage: bench/thumbnail_demand.sh [seconds]
# BENCH_SERVER_BIN=path/to/roomcast measures another build (e.g. one from
# before thumbnails were made on demand: it needs no new config key).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
SECS=${1:-120}
[[ -n "${BENCH_SERVER_BIN:-}" ]] || build_release
encode 2500 128

run() { # run LABEL "toml lines" ask(0|1)
  start_server "[thumbnails]
$2"
  loop_publish "$STREAM" "$KEY"; PUBLISHER_PIDS="$LAST_PID"
  local asker=""
  if [[ "$3" == 1 ]]; then
    (while :; do curl -fs -o /dev/null "http://$HTTP/api/v1/streams/$STREAM/thumbnail.jpg" || true; sleep 1; done) &
    asker=$!
  fi
  measure_window "$SECS"
  if [[ -n "$asker" ]]; then kill "$asker" 2>/dev/null || true; wait "$asker" 2>/dev/null || true; fi
  local made cpu_ms pct=$WINDOW_PCT
  made=$(metric_delta roomcast_thumbnails_made_total)
  cpu_ms=$(awk -v c="$(metric_delta roomcast_thumbnail_cpu_seconds_total)" 'BEGIN{printf "%.0f", 1000*c}')
  printf '%-28s thumbnails made %3s, thumbnail CPU %5s ms (%.3f %% of a core), server CPU %s %% of a core\n' \
    "$1" "$made" "$cpu_ms" "$(awk -v c="$cpu_ms" -v s="$SECS" 'BEGIN{print c/10/s}')" "$pct"
  for p in $PUBLISHER_PIDS; do kill "$p" 2>/dev/null || true; done
  kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
  PUBLISHER_PIDS=""
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); load $(cut -d' ' -f1-3 /proc/loadavg); 1 stream 720p30 2.5 Mbit/s, ${SECS} s per run, $(basename "${BENCH_SERVER_BIN:-release build}")"
run "nobody asking" "" 0
run "a GET every second" "" 1
run "thumbnails off" "enabled = false" 0
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
