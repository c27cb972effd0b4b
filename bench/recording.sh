#!/usr/bin/env bash
# Recording costs: server CPU with N streams of 2.5 Mbit/s 720p30 H.264 +
# 128 kbit/s audio (pre-encoded, ffmpeg -c copy; AAC transcoded to Opus as
# usual), first with [recording] off, then on; the difference divided by N is
# the recorder's CPU per stream (segmenting, fsynced writes, the index).
# Bytes written per minute per stream come from /metrics
# (roomcast_recording_bytes_written_total). Server pinned to CPU 0, ffmpeg to
# CPU 1. Without BENCH_SERVER_BIN it measures the debug build in
# $CARGO_TARGET_DIR (say so when quoting: a release build costs less).
# Usage: bench/recording.sh [seconds per run] [streams]
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
SECS=${1:-30}
N=${2:-2}
export EXTRA_STREAMS=$((N - 1))
BENCH_SERVER_BIN=${BENCH_SERVER_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/debug/roomcast}
[[ -x "$BENCH_SERVER_BIN" ]] || { echo "no $BENCH_SERVER_BIN: cargo build --bin roomcast first (or set BENCH_SERVER_BIN)" >&2; exit 1; }
encode 2500 128
# Process CPU time in ns (utime + stime, threads that exited included: the
# recorder's writes run on blocking threads that come and go).
ticks() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.0f", ($14 + $15) * 1e9 / hz}' /proc/"$SERVER_PID"/stat; }
written() { curl -fs "http://$HTTP/metrics" | awk '/^roomcast_recording_bytes_written_total /{print $2}'; }

# run LABEL EXTRA_TOML: prints server cores used and bytes written.
run() {
  start_server "$2"
  taskset -a -p -c 0 "$SERVER_PID" >/dev/null
  PUBLISHER_PIDS=""
  loop_publish "$STREAM" "$KEY"
  PUBLISHER_PIDS="$LAST_PID"
  for i in $(seq 1 "$EXTRA_STREAMS"); do
    loop_publish "$STREAM$i" "$KEY-$i"
    PUBLISHER_PIDS="$PUBLISHER_PIDS $LAST_PID"
  done
  for p in $PUBLISHER_PIDS; do taskset -a -p -c 1 "$p" >/dev/null; done
  sleep 5 # past the first segments
  local b0 t0 s0 b1 t1 s1
  b0=$(written); t0=$(ticks); s0=$(date +%s.%N)
  sleep "$SECS"
  b1=$(written); t1=$(ticks); s1=$(date +%s.%N)
  CORES=$(awk -v t="$((t1 - t0))" -v s0="$s0" -v s1="$s1" 'BEGIN { printf "%.4f", t / 1e9 / (s1 - s0) }')
  BYTES_PER_MIN=$(awk -v b0="$b0" -v b1="$b1" -v s0="$s0" -v s1="$s1" -v n="$N" \
    'BEGIN { printf "%.0f", (b1 - b0) * 60 / (s1 - s0) / n }')
  echo "{\"bench\":\"recording_$1\",\"streams\":$N,\"server_cpu_cores\":$CORES,\"bytes_per_min_per_stream\":$BYTES_PER_MIN}"
  for p in $PUBLISHER_PIDS; do kill "$p" 2>/dev/null || true; done
  kill "$SERVER_PID" 2>/dev/null || true
  wait 2>/dev/null || true
  PUBLISHER_PIDS=""; SERVER_PID=""
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); server: $BENCH_SERVER_BIN" >&2
run off ""
OFF=$CORES
run on "$(printf '[recording]\nenabled = true\ndir = "%s/recordings"\nmin_free_gb = 0' "$WORK")"
ON=$CORES
echo "{\"bench\":\"recorder_per_stream\",\"cpu_cores\":$(awk -v a="$ON" -v b="$OFF" -v n="$N" 'BEGIN { printf "%.4f", (a - b) / n }'),\"bytes_per_min\":$BYTES_PER_MIN,\"mb_per_hour\":$(awk -v b="$BYTES_PER_MIN" 'BEGIN { printf "%.0f", b * 60 / 1e6 }')}"
du -sh "$WORK/recordings" >&2
