#!/usr/bin/env bash
# Fan-out benchmark: one 2.5 Mbps H.264 + 128 kbps audio stream (ffmpeg over
# RTMP, AAC transcoded to Opus), viewers ramped 50, 100, 200, 400, … until loss
# passes 1% or the server's core saturates. The server runs one WebRTC worker
# pinned to CPU 0; the load generator and ffmpeg are pinned to CPU 1, so the
# figures are per server core. Usage: bench/fanout.sh [steps] [seconds per step]
# TRANSPORT=tcp has every viewer connect over ICE-TCP (`?transport=tcp`, one
# TCP connection each, as a browser on a network that blocks UDP).
# DIRECT_SEND=false measures str0m's send path instead of roomcast's own SRTP
# (`[webrtc] direct_send`, default true), with the same binary.
# WORKERS=N runs N WebRTC workers; SERVER_CPUS and LOADGEN_CPUS (taskset lists,
# default 0 and 1) move the server and the load generator, e.g. WORKERS=2
# SERVER_CPUS=0,1 LOADGEN_CPUS=0,1 on a 2-core machine, where the two share
# both cores (then compare µs per packet, not viewers per core).
# WORKER_QUOTA=F (e.g. 0.4) caps each WebRTC worker thread at F of a CPU (a
# cgroup v1 `cpu` group of its own: F × 5 ms of every 5 ms) and pins worker i
# to CPU i: "cores" of F each, so on a 2-core machine two workers and one can
# be compared at the same budget per worker with CPU left for the load
# generator (LOADGEN_CPUS=0,1). A capped worker falls behind before it drops
# packets, so the ramp then runs to its last step unless loss passes 1 %: read
# saturation from the packets per second per viewer and the transit.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
[[ "${TRANSPORT:-udp}" =~ ^(udp|tcp)$ ]] || { echo "TRANSPORT must be udp or tcp" >&2; exit 1; }
STEPS=${1:-50,100,200,400,600,800,1000,1200,1400,1600}
SECS=${2:-10}
[[ -n "${BENCH_SERVER_BIN:-}" ]] || build_release
(cd "$ROOT" && cargo build --release --quiet --example loadgen)
SERVER_CPUS=${SERVER_CPUS:-0}
LOADGEN_CPUS=${LOADGEN_CPUS:-1}
# The ramp stops when the server uses this many cores (its workers' worth).
MAX_CORES=${WORKERS:-1}
((MAX_CORES > 0)) || MAX_CORES=$(nproc)
[[ -z "${WORKER_QUOTA:-}" ]] || MAX_CORES=$(nproc)
start_server "workers = ${WORKERS:-1}
direct_send = ${DIRECT_SEND:-true}"
taskset -pc "$SERVER_CPUS" "$SERVER_PID" >/dev/null
for tid in /proc/"$SERVER_PID"/task/*; do taskset -pc "$SERVER_CPUS" "${tid##*/}" >/dev/null; done
if [[ -n "${WORKER_QUOTA:-}" ]]; then
  CPU_CGROUP=/sys/fs/cgroup/cpu
  [[ -w "$CPU_CGROUP/cgroup.procs" ]] || {
    echo "WORKER_QUOTA needs a writable cgroup v1 cpu controller at $CPU_CGROUP" >&2
    exit 1
  }
  for tid in /proc/"$SERVER_PID"/task/*; do
    name=$(cat "$tid/comm")
    [[ "$name" =~ ^rtc-([0-9]+)$ ]] || continue
    group="$CPU_CGROUP/roomcast-bench-$$-${BASH_REMATCH[1]}"
    mkdir "$group"
    CGROUP_DIRS="${CGROUP_DIRS:-} $group"
    echo 5000 >"$group/cpu.cfs_period_us"
    awk -v q="$WORKER_QUOTA" 'BEGIN { printf "%d\n", q * 5000 }' >"$group/cpu.cfs_quota_us"
    echo "${tid##*/}" >"$group/tasks"
    taskset -pc "${BASH_REMATCH[1]}" "${tid##*/}" >/dev/null
    echo "$name capped at $WORKER_QUOTA of CPU ${BASH_REMATCH[1]}" >&2
  done
fi
publish 2500
taskset -pc "$LOADGEN_CPUS" "$FFMPEG_PID" >/dev/null
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r)" >&2
taskset -c "$LOADGEN_CPUS" "${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/loadgen" --whep "http://$HTTP/whep/$STREAM" \
  --steps "$STEPS" --step-secs "$SECS" --full 10 --server-pid "$SERVER_PID" \
  --metrics "http://$HTTP/metrics" --max-cores "$MAX_CORES" \
  $([[ "${TRANSPORT:-udp}" == tcp ]] && echo --tcp)
