#!/usr/bin/env bash
# The guide's screen-share call as a roomcast party (issue 16): USERS
# participants join a standalone party (`[[parties]]`) through its API, each
# gets a share grant and publishes over WHIP (ffmpeg 9's WHIP muxer sending a
# pre-encoded 720p30 H.264 + Opus file with -c copy, so no encoder competes
# with the server for the CPU), and each share is watched by the other
# USERS-1 participants over WHEP (examples/loadgen.rs --call: 56 viewer
# sessions for 8). Prints loadgen's line (server CPU in cores over the
# window) and the server's egress from /metrics over the same window.
#
# Usage: bench/party_cpu.sh [users] [seconds] [video kbps]
#   BENCH_SERVER_BIN=path/to/release/roomcast   (default: cargo build --release)
#   LOADGEN_BIN=path/to/loadgen                 (default: cargo build --release --example loadgen)
#   FFMPEG_WHIP=path/to/ffmpeg (7.1 or later, with the WHIP muxer; default:
#     PyPI imageio-ffmpeg's, `pip install imageio-ffmpeg==0.8.1`)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
USERS=${1:-8}
SECS=${2:-60}
VIDEO_KBPS=${3:-2000}
PARTY=benchparty
PARTY_KEY="bench-party-key-$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')"

if [[ -z "${BENCH_SERVER_BIN:-}" ]]; then build_release; fi
if [[ -z "${LOADGEN_BIN:-}" ]]; then
  (cd "$ROOT" && cargo build --release --quiet --example loadgen)
  LOADGEN_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/loadgen"
fi
FFMPEG_WHIP=${FFMPEG_WHIP:-$(python3 -c 'import imageio_ffmpeg; print(imageio_ffmpeg.get_ffmpeg_exe())' 2>/dev/null || true)}
if [[ -z "$FFMPEG_WHIP" ]] || ! "$FFMPEG_WHIP" -hide_banner -h muxer=whip 2>/dev/null | grep -q authorization; then
  echo "an ffmpeg with the WHIP muxer is needed: set FFMPEG_WHIP, or pip install imageio-ffmpeg==0.8.1" >&2
  exit 2
fi

STREAM_EXTRA=$(printf '[[parties]]\nname = "%s"\nkey = "%s"\nmax_kbps = %d\nmax_participants = %d\n' \
  "$PARTY" "$PARTY_KEY" "$VIDEO_KBPS" "$USERS")
export STREAM_EXTRA
start_server $'workers = 1'

# 20 s of 720p30 H.264 (constrained baseline, a keyframe every second, no
# B-frames: what a browser's screen share sends) and 64 kbit/s Opus, looped.
ffmpeg -hide_banner -loglevel error -y -f lavfi -i testsrc2=size=1280x720:rate=30 \
  -f lavfi -i sine=frequency=440:sample_rate=48000 -t 20 \
  -c:v libx264 -profile:v baseline -preset veryfast -tune zerolatency -bf 0 -g 30 \
  -b:v "${VIDEO_KBPS}k" -maxrate "${VIDEO_KBPS}k" -bufsize "${VIDEO_KBPS}k" -pix_fmt yuv420p \
  -c:a libopus -b:a 64k -ac 2 -f matroska "$WORK/share.mkv"

api() { curl -fsS -H 'Content-Type: application/json' "$@"; }
URLS=""
for i in $(seq 1 "$USERS"); do
  token=$(api -d "{\"key\":\"$PARTY_KEY\",\"display_name\":\"user $i\"}" \
    "http://$HTTP/api/v1/parties/$PARTY/join" | jq -r .party_token)
  grant=$(api -X POST -H "Authorization: Bearer $token" "http://$HTTP/api/v1/parties/$PARTY/share")
  stream=$(jq -r .stream <<<"$grant")
  "$FFMPEG_WHIP" -hide_banner -loglevel error -re -stream_loop -1 -i "$WORK/share.mkv" -c copy \
    -f whip -authorization "$(jq -r .publish_token <<<"$grant")" \
    "http://$HTTP$(jq -r .whip_url <<<"$grant")" >>"$WORK/ffmpeg.log" 2>&1 &
  PUBLISHER_PIDS="${PUBLISHER_PIDS:-} $!"
  for _ in $(seq 1 150); do
    curl -fs "http://$HTTP/api/v1/streams/$stream" | grep -q '"fps":' && break
    sleep 0.1
  done
  curl -fs "http://$HTTP/api/v1/streams/$stream" | grep -q '"fps":' \
    || { echo "share $i ($stream) did not go live" >&2; cat "$WORK/ffmpeg.log" >&2; exit 1; }
  URLS="${URLS:+$URLS,}http://$HTTP/whep/$stream"
done

sent() { curl -fs "http://$HTTP/metrics" | awk '/^roomcast_rtp_payload_bytes_sent_total/ {s += $2} END {printf "%.0f\n", s}'; }
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $USERS WHIP shares at $VIDEO_KBPS + 64 kbps; server $("${BENCH_SERVER_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/roomcast}" --version 2>/dev/null || echo '?')" >&2
b0=$(sent); t0=$(date +%s.%N)
"$LOADGEN_BIN" --call "$URLS" --step-secs "$SECS" --server-pid "$SERVER_PID" --metrics "http://$HTTP/metrics" | tee "$WORK/loadgen.out"
b1=$(sent); t1=$(date +%s.%N)
# (The egress window includes loadgen's joins and teardown: a little under the steady rate.)
awk -v b0="$b0" -v b1="$b1" -v t0="$t0" -v t1="$t1" -v users="$USERS" -v kbps="$VIDEO_KBPS" \
  'BEGIN { printf "{\"egress_payload_mbps\": %.1f, \"model_mbps_out\": %.1f, \"shares\": %d}\n", (b1 - b0) * 8 / (t1 - t0) / 1e6, users * (users - 1) * (kbps + 64) / 1000, users }'
