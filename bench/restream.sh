#!/usr/bin/env bash
# Server CPU per restream push (H.264 passthrough + the publisher's AAC): the
# same 2.5 Mbit/s 720p30 H.264 + AAC stream is published twice, first with no
# destination, then with N destinations on a local nginx-rtmp (Debian's
# libnginx-mod-rtmp, `live on`, nothing recorded); the difference in the
# server's CPU time over the window, divided by N, is one push's cost.
# With `whip`, the publisher is aiortc over WHIP (H.264 + Opus, 640x360):
# the difference then holds the stream's one Opus→AAC transcoder too.
# Usage: bench/restream.sh [seconds] [pushes] [rtmp|whip]
# BENCH_SERVER_BIN picks the binary (e.g. a debug build: say so with the figure).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
SECS=${1:-20}
N=${2:-4}
MODE=${3:-rtmp}
PY=${ROOMCAST_TEST_PYTHON:-$ROOT/.venv/bin/python}
[[ -n "${BENCH_SERVER_BIN:-}" ]] || build_release
ticks() { cat /proc/"$SERVER_PID"/task/*/schedstat | awk '{s += $1} END {printf "%d", s}'; }
NGINX_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$WORK/nginx"
cat > "$WORK/nginx/nginx.conf" <<CONF
load_module /usr/lib/nginx/modules/ngx_rtmp_module.so;
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 64; }
rtmp { server { listen 127.0.0.1:$NGINX_PORT; application live { live on; } } }
CONF
/usr/sbin/nginx -p "$WORK/nginx" -e "$WORK/nginx/error.log" -c "$WORK/nginx/nginx.conf" -g 'daemon off;' &
NGINX_PID=$!
trap 'kill $NGINX_PID 2>/dev/null || true; cleanup' EXIT
encode 2500 128

# measure LABEL: publish, wait for the pushes, then one window of CPU time.
measure() {
  start_server
  if [[ $MODE == whip ]]; then
    "$PY" "$ROOT/tests/py/whip_publisher.py" "http://$HTTP/whip/$STREAM" --key "$KEY" \
      --video-codec H264 >"$WORK/whip.log" 2>&1 &
    FFMPEG_PID=$!
    for _ in $(seq 1 200); do
      curl -fs "http://$HTTP/api/v1/streams/$STREAM" | grep -q '"fps":' && break
      sleep 0.1
    done
  else
    loop_publish "$STREAM" "$KEY"
    FFMPEG_PID=$LAST_PID
  fi
  if [[ -n "${STREAM_EXTRA:-}" ]]; then
    for _ in $(seq 1 100); do
      [[ $(curl -fs "http://$HTTP/api/v1/streams/$STREAM/restream" | grep -o '"state":"live"' | wc -l) -ge $N ]] && break
      sleep 0.2
    done
  fi
  sleep 3
  t0=$(ticks); s0=$(date +%s.%N); sleep "$SECS"; t1=$(ticks); s1=$(date +%s.%N)
  [[ -n "${STREAM_EXTRA:-}" ]] && curl -fs "http://$HTTP/api/v1/streams/$STREAM/restream" && echo
  awk -v t="$((t1 - t0))" -v s0="$s0" -v s1="$s1" 'BEGIN { printf "%.4f\n", t / 1e9 / (s1 - s0) }' > "$WORK/$1"
  kill "$FFMPEG_PID" "$SERVER_PID"; wait "$FFMPEG_PID" "$SERVER_PID" 2>/dev/null || true
  FFMPEG_PID=; SERVER_PID=
}
STREAM_EXTRA= measure base
STREAM_EXTRA=$(for i in $(seq 1 "$N"); do
  printf '[[streams.restream]]\nlabel = "d%d"\nurl = "rtmp://127.0.0.1:%d/live"\nkey = "bench-dest-%d"\n' "$i" "$NGINX_PORT" "$i"
done)
measure pushed
awk -v b="$(cat "$WORK/base")" -v p="$(cat "$WORK/pushed")" -v n="$N" 'BEGIN {
  printf "{\"bench\":\"restream_'"$MODE"'\",\"pushes\":%d,\"window_s\":'"$SECS"',\"cores_without_pushes\":%.4f,\"cores_with_pushes\":%.4f,\"percent_of_one_core_per_push\":%.2f}\n", n, b, p, 100 * (p - b) / n }'
