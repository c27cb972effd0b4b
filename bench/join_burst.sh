#!/usr/bin/env bash
# Join burst: what a viewer loses in its first second while the cached GOP is
# replayed to it, and its time to first frame. JOINS joins in headless Chromium,
# then JOINS in aiortc, against a release build with a live 720p30 H.264
# publisher (x264 at 3 Mbit/s, a keyframe every 2 s, so the GOP a viewer joins
# into is up to ~750 KB).
# Usage: bench/join_burst.sh [joins] ['[webrtc] line, e.g. replay_pace_mbps = 0']
# BENCH_SERVER_BIN=path runs that binary instead of building (e.g. an older build).
# Chromium asks for a 1 MB receive buffer on its WebRTC sockets, which the
# kernel grants only up to net.core.rmem_max (212992 on a stock host, often
# raised on CI machines and servers). To measure what a stock host's Chromium
# gets on any host, its SO_RCVBUF requests are capped (bench/rcvbuf_cap.c,
# LD_PRELOAD) at RCVBUF_CAP bytes, default 212992; RCVBUF_CAP=0 leaves them be.
# aiortc keeps the default buffer (net.core.rmem_default).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
JOINS=${1:-30}
PY=${ROOMCAST_TEST_PYTHON:-$ROOT/.venv/bin/python}
[[ -n "${BENCH_SERVER_BIN:-}" ]] || build_release
start_server "${2:-}"
ffmpeg -hide_banner -loglevel error -y -f lavfi -i testsrc2=size=1280x720:rate=30 \
  -f lavfi -i sine=frequency=440:sample_rate=48000 -t 20 \
  -c:v libx264 -preset veryfast -bf 0 -g 60 -b:v 3000k -maxrate 3000k -bufsize 6000k \
  -pix_fmt yuv420p -c:a aac -b:a 128k -ac 2 -f flv "$WORK/source.flv"
loop_publish "$STREAM" "$KEY"
FFMPEG_PID=$LAST_PID
cd "$ROOT"
echo "rmem_default $(cat /proc/sys/net/core/rmem_default); server: $(grep -o 'replay_pace_mbps.*' "$WORK/config.toml" || echo 'replay_pace_mbps default')"
CAP=${RCVBUF_CAP:-212992}
PRELOAD=
if [[ "$CAP" != 0 ]]; then
  cc -shared -fPIC -O2 -o "$WORK/rcvbuf_cap.so" bench/rcvbuf_cap.c -ldl
  PRELOAD="$WORK/rcvbuf_cap.so"
fi
echo "chromium SO_RCVBUF cap: ${CAP} (0 = none)"
RCVBUF_CAP=$CAP LD_PRELOAD=$PRELOAD node bench/join_burst.mjs --base "http://$HTTP" --stream "$STREAM" --joins "$JOINS"
"$PY" bench/join_burst.py --url "http://$HTTP/whep/$STREAM" --joins "$JOINS"
