#!/usr/bin/env bash
# Server CPU spent on AAC→Opus for one stream: publish audio only (AAC-LC
# stereo; 44.1 kHz by default, the case that also resamples; OBS sends 48 kHz
# unless told otherwise) and read the server's CPU time from /proc over a
# measurement window. Everything the server does for that stream is counted
# (RTMP, FLV, decode, resample, encode), so this is an upper bound.
# Usage: bench/audio_cpu.sh [seconds] [sample_rate]
# AUDIO_CPU_BUSY=1 keeps every CPU busy with a SCHED_IDLE spinner (it runs
# only when nothing else wants the CPU, and its time is not counted): on an
# idle VM every frame's wake-up finds a halted vCPU and cold caches, and the
# same transcoder costs about 1.7x as much per frame as on a busy machine
# (`transcode_cpu_cost`, README -> Measurements).
# AUDIO_CPU_CODEC=libmp3lame publishes MP3 instead, which the server parses
# and drops: what the RTMP ingest alone costs at about the same message rate.
# AUDIO_CPU_STREAMS=N publishes the same audio to N streams at once and also
# reports the cost per stream (the whole server's CPU / N): what a stream
# costs on a server that carries several, where fewer frames find a halted
# vCPU. The single-stream figure stays the default.
# The JSON also carries this machine's cost of a wake from idle and of a cold
# 256 KiB working set (bench/wake_cost.c, when a C compiler is present): the
# figure above scales with them, so compare runs on different hosts with them.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
SECS=${1:-30}
RATE=${2:-44100}
[[ -n "${BENCH_SERVER_BIN:-}" ]] || build_release
# Measured before the server starts, on an otherwise quiet machine.
MACHINE='null'
if command -v cc >/dev/null && cc -O2 -o "$WORK/wake_cost" "$ROOT/bench/wake_cost.c"; then
  MACHINE=$("$WORK/wake_cost")
fi
STREAMS=${AUDIO_CPU_STREAMS:-1}
[[ "$STREAMS" =~ ^[1-9][0-9]*$ ]] || { echo "AUDIO_CPU_STREAMS must be a positive number" >&2; exit 1; }
EXTRA_STREAMS=$((STREAMS - 1)) start_server
BUSY=false
if [[ -n "${AUDIO_CPU_BUSY:-}" ]]; then
  BUSY=true
  for cpu in $(seq 0 $(($(nproc) - 1))); do
    taskset -c "$cpu" chrt -i 0 bash -c 'while :; do :; done' &
    BACKGROUND_PIDS="${BACKGROUND_PIDS:-} $!"
  done
fi
# CPU time of every thread of the server in ns (schedstat: finer than ticks).
ticks() { cat /proc/"$SERVER_PID"/task/*/schedstat | awk '{s += $1} END {printf "%.0f", s}'; }
HZ=1000000000
# Context switches (voluntary + involuntary) of every thread: each is a wake-up.
switches() { cat /proc/"$SERVER_PID"/task/*/status | awk '/ctxt_switches/ {s += $2} END {print s}'; }
# Baseline: the idle server over the same window, subtracted below.
sleep 2
i0=$(ticks); sleep "$SECS"; i1=$(ticks)
ffmpeg -hide_banner -loglevel error -y -f lavfi -i "sine=frequency=440:sample_rate=$RATE" \
  -f lavfi -i "sine=frequency=660:sample_rate=$RATE" -filter_complex amerge=inputs=2 -t 20 \
  -c:a "${AUDIO_CPU_CODEC:-aac}" -b:a 128k -ar "$RATE" -ac 2 -f flv "$WORK/audio.flv"
# Stream 0 is "$STREAM" with "$KEY"; stream i > 0 is "$STREAM$i" with "$KEY-$i".
names=("$STREAM"); keys=("$KEY")
for i in $(seq 1 $((STREAMS - 1))); do names+=("$STREAM$i"); keys+=("$KEY-$i"); done
for key in "${keys[@]}"; do
  ffmpeg -hide_banner -loglevel error -re -stream_loop -1 -i "$WORK/audio.flv" -c copy \
    -f flv "rtmp://$RTMP/live/$key" >>"$WORK/ffmpeg.log" 2>&1 &
  PUBLISHER_PIDS="${PUBLISHER_PIDS:-} $!"
done
ready='"live":true'
[[ "${AUDIO_CPU_CODEC:-aac}" != aac ]] || ready='"transcoded":true'
for name in "${names[@]}"; do
  for _ in $(seq 1 100); do
    curl -fs "http://$HTTP/api/v1/streams/$name" | grep -q "$ready" && break
    sleep 0.1
  done
  curl -fs "http://$HTTP/api/v1/streams/$name" | grep -q "$ready" ||
    { cat "$WORK/ffmpeg.log" >&2; echo "stream $name did not become ready" >&2; exit 1; }
done
sleep 2 # let start-up work finish before the window opens
[[ -n "${AUDIO_CPU_THREADS:-}" ]] && server_threads >"$WORK/threads0"
t0=$(ticks); w0=$(switches); s0=$(date +%s.%N)
sleep "$SECS"
t1=$(ticks); w1=$(switches); s1=$(date +%s.%N)
if [[ -n "${AUDIO_CPU_THREADS:-}" ]]; then
  server_threads >"$WORK/threads1"
  # thread name, CPU ms and switches over the window (threads alive throughout)
  join "$WORK/threads0" "$WORK/threads1" |
    awk '{printf "%-8s %-22s %8.1f ms %6d switches\n", $1, $2, ($6 - $3) / 1e6, $7 - $4}' >&2
fi
curl -fs "http://$HTTP/api/v1/streams/$STREAM"; echo
awk -v streams="$STREAMS" -v machine="$MACHINE" -v t="$((t1 - t0))" -v sw="$((w1 - w0))" -v idle="$((i1 - i0))" -v hz="$HZ" -v s0="$s0" -v s1="$s1" 'BEGIN {
  cpu = t / hz; wall = s1 - s0; base = idle / hz;
  printf "{\"bench\":\"aac_to_opus\",\"codec\":\"'"${AUDIO_CPU_CODEC:-aac}"'\",\"sample_rate\":'"$RATE"',\"busy\":'"$BUSY"',\"window_s\":%.1f,\"server_cpu_s\":%.3f,\"idle_cpu_s\":%.3f,\"percent_of_one_core\":%.2f,\"percent_above_idle\":%.2f,\"switches_per_s\":%.0f,\"streams\":%d,\"percent_per_stream\":%.2f,\"machine\":%s}\n", wall, cpu, base, 100 * cpu / wall, 100 * (cpu - base) / wall, sw / wall, streams, 100 * cpu / wall / streams, machine }'
