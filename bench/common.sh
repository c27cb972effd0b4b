# Shared by the bench scripts: start a release roomcast on free ports with one
# stream, and publish a pre-encoded H.264+AAC file to it with ffmpeg -c copy (so
# no encoder competes with the server for the CPU being measured).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="$(mktemp -d /tmp/roomcast-bench.XXXXXX)"
KEY="bench-key-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
STREAM=bench
cleanup() {
  [[ -n "${FFMPEG_PID:-}" ]] && kill "$FFMPEG_PID" 2>/dev/null || true
  for p in ${PUBLISHER_PIDS:-} ${BACKGROUND_PIDS:-}; do kill "$p" 2>/dev/null || true; done
  [[ -n "${SERVER_PID:-}" ]] && kill "$SERVER_PID" 2>/dev/null || true
  wait 2>/dev/null || true
  for d in ${CGROUP_DIRS:-}; do rmdir "$d" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

# One line per server thread: tid, name, CPU ns so far, context switches
# (voluntary + involuntary: each is a wake-up), sorted by tid for `join`.
server_threads() {
  for t in /proc/"$SERVER_PID"/task/*; do
    printf '%s %s %s %s\n' "${t##*/}" "$(tr ' ' _ <"$t/comm")" "$(awk '{print $1}' "$t/schedstat")" \
      "$(awk '/ctxt_switches/ {s += $2} END {print s}' "$t/status")"
  done | sort -k1,1
}

build_release() {
  (cd "$ROOT" && cargo build --release --quiet)
}

# start_server [extra toml]
start_server() {
  # Waits below for "roomcast ready" in this log: never the last server's (a
  # second start could read it before the new server's redirect emptied it).
  rm -f "$WORK/server.log" "$WORK/stdout.log"
  cat > "$WORK/config.toml" <<TOML
[http]
listen = "127.0.0.1:0"
[rtmp]
listen = "127.0.0.1:0"
[webrtc]
udp = "127.0.0.1:0"
tcp = "127.0.0.1:0"
${1:-}
[ome]
listen = "127.0.0.1:0"
[limits]
# Every simulated viewer comes from 127.0.0.1: lift the per-address limits.
offers_per_minute = 0
hls_max_blocking_per_address = 0
[connections]
# ICE-TCP viewers (bench/fanout.sh TRANSPORT=tcp) are one connection each.
max_per_address = 4096
[storage]
database_url = "sqlite://$WORK/roomcast.db"
[[streams]]
name = "$STREAM"
key = "$KEY"
${STREAM_EXTRA:-}
TOML
  for i in $(seq 1 "${EXTRA_STREAMS:-0}"); do
    printf '[[streams]]\nname = "%s%d"\nkey = "%s-%d"\n' "$STREAM" "$i" "$KEY" "$i" >> "$WORK/config.toml"
  done
  # The server reads ROOMCAST_* variables as config overrides: not the test tools' ones.
  env $(compgen -e | grep '^ROOMCAST_' | sed 's/^/-u /') \
    "${BENCH_SERVER_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/roomcast}" serve --config "$WORK/config.toml" >"$WORK/stdout.log" 2>"$WORK/server.log" &
  SERVER_PID=$!
  for _ in $(seq 1 100); do
    grep -q "roomcast ready" "$WORK/server.log" 2>/dev/null && break
    sleep 0.1
  done
  grep -q "roomcast ready" "$WORK/server.log" || { cat "$WORK/server.log"; echo "server did not start" >&2; exit 1; }
  HTTP=$(grep -oP 'service="http" addr=\K\S+' "$WORK/server.log")
  RTMP=$(grep -oP 'service="rtmp" addr=\K\S+' "$WORK/server.log")
}

# encode VIDEO_KBPS AUDIO_KBPS: 20 s of 720p30 (keyframe every second, no
# B-frames) plus AAC, encoded once into $WORK/source.flv.
encode() {
  ffmpeg -hide_banner -loglevel error -y -f lavfi -i testsrc2=size=1280x720:rate=30 \
    -f lavfi -i sine=frequency=440:sample_rate=48000 -t 20 \
    -c:v libx264 -preset veryfast -tune zerolatency -bf 0 -g 30 -b:v "${1}k" \
    -maxrate "${1}k" -bufsize "${1}k" -pix_fmt yuv420p -c:a aac -b:a "${2}k" -ac 2 \
    -f flv "$WORK/source.flv"
}

# loop_publish STREAM KEY: loops source.flv in real time with -c copy; sets LAST_PID.
loop_publish() {
  ffmpeg -hide_banner -loglevel error -re -stream_loop -1 -i "$WORK/source.flv" -c copy \
    -f flv "rtmp://$RTMP/live/$2" >>"$WORK/ffmpeg.log" 2>&1 &
  LAST_PID=$!
  for _ in $(seq 1 100); do
    curl -fs "http://$HTTP/api/v1/streams/$1" | grep -q '"fps":' && return 0
    sleep 0.1
  done
  echo "stream $1 did not go live" >&2; cat "$WORK/ffmpeg.log" >&2; exit 1
}

# publish VIDEO_KBPS: the bench stream at that bitrate plus 128 kbps audio.
publish() {
  encode "${1:-2500}" 128
  loop_publish "$STREAM" "$KEY"
  FFMPEG_PID=$LAST_PID
}

# measure_window SECS: sleeps SECS while the server runs; sets WINDOW_PCT (the
# server's CPU over it, % of one core) and METRICS0/METRICS1 (/metrics before
# and after). metric_delta NAME: how much a /metrics series rose over it.
measure_window() {
  local tick u0 s0 u1 s1
  tick=$(getconf CLK_TCK)
  read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$SERVER_PID/stat")
  METRICS0=$(curl -fs "http://$HTTP/metrics")
  sleep "$1"
  read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$SERVER_PID/stat")
  METRICS1=$(curl -fs "http://$HTTP/metrics")
  WINDOW_PCT=$(awk -v t="$tick" -v d=$(( (u1 + s1) - (u0 + s0) )) -v s="$1" 'BEGIN{printf "%.2f", 100*d/t/s}')
}
metric_delta() {
  awk -v a="$(grep -oP "^$1 \K\S+" <<<"$METRICS0" || echo 0)" \
      -v b="$(grep -oP "^$1 \K\S+" <<<"$METRICS1" || echo 0)" 'BEGIN{print b-a}'
}
