#!/usr/bin/env bash
# Server CPU and wake-ups for one WHIP publisher and no viewers: what ingest
# over WebRTC costs, thread by thread. The publisher is aiortc
# (tests/py/whip_publisher.py: H.264 640x360 30 fps + Opus) on LOADGEN_CPUS
# (default 1), the server on SERVER_CPUS (default 0).
# Usage: bench/whip_ingest.sh [seconds]
# PYTHON names a Python with aiortc (default: the test venv, .venv/bin/python);
# BENCH_SERVER_BIN measures a given binary without building.
# WORKERS=N runs N WebRTC workers (default: the server's, one per core); with
# one, the worker reads the UDP socket itself and there is no receiver thread.
# Prints the window's threads (CPU ms, wake-ups per second) on stderr, then
# one JSON line: server CPU in % of a core, and wake-ups per second of the
# UDP receiver, the WebRTC worker(s) and the tokio runtime.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
SECS=${1:-20}
PY=${PYTHON:-$ROOT/.venv/bin/python}
"$PY" -c 'import aiortc' 2>/dev/null || {
  echo "whip_ingest.sh needs aiortc: run ./scripts/test.sh once (it makes .venv) or set PYTHON" >&2
  exit 1
}
[[ -n "${BENCH_SERVER_BIN:-}" ]] || build_release
start_server "${WORKERS:+workers = $WORKERS}"
SERVER_CPUS=${SERVER_CPUS:-0}
LOADGEN_CPUS=${LOADGEN_CPUS:-1}
for tid in /proc/"$SERVER_PID"/task/*; do taskset -pc "$SERVER_CPUS" "${tid##*/}" >/dev/null; done
taskset -c "$LOADGEN_CPUS" "$PY" "$ROOT/tests/py/whip_publisher.py" "http://$HTTP/whip/$STREAM" \
  --key "$KEY" --duration $((SECS + 30)) >"$WORK/publisher.log" 2>&1 &
PUBLISHER_PIDS=$!
for _ in $(seq 1 300); do
  curl -fs "http://$HTTP/api/v1/streams/$STREAM" | grep -q '"live":true' && break
  sleep 0.1
done
curl -fs "http://$HTTP/api/v1/streams/$STREAM" | grep -q '"live":true' || {
  cat "$WORK/publisher.log" >&2
  echo "the WHIP publisher did not go live" >&2
  exit 1
}
sleep 5 # past the publisher's start-up (its bitrate ramps up)
server_threads >"$WORK/threads0"
s0=$(date +%s.%N)
sleep "$SECS"
server_threads >"$WORK/threads1"
s1=$(date +%s.%N)
WALL=$(awk -v a="$s0" -v b="$s1" 'BEGIN { print b - a }')
# tid, name, CPU ms and wake-ups per second over the window (threads alive throughout)
join "$WORK/threads0" "$WORK/threads1" |
  awk -v wall="$WALL" '{printf "%s %s %.1f %.1f\n", $1, $2, ($6 - $3) / 1e6, ($7 - $4) / wall}' >"$WORK/window"
awk '{printf "%-8s %-18s %8.1f ms %7.1f wake-ups/s\n", $1, $2, $3, $4}' "$WORK/window" >&2
awk -v wall="$WALL" '
  { cpu += $3 }
  $2 == "rtc-udp-rx" { rx += $4 }
  $2 ~ /^rtc-[0-9]+$/ { workers += $4 }
  $2 == "tokio-rt-worker" { tokio += $4 }
  END { printf "{\"bench\":\"whip_ingest\",\"window_s\":%.1f,\"server_cpu_percent\":%.2f,\"udp_receiver_wakeups_per_s\":%.0f,\"worker_wakeups_per_s\":%.0f,\"tokio_wakeups_per_s\":%.0f}\n", wall, cpu / wall / 10, rx, workers, tokio }' "$WORK/window"
