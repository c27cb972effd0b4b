#!/usr/bin/env bash
# The screen-share call of the guide: 8 publishers (2000 + 256 kbps each, ffmpeg
# over RTMP with AAC transcoded to Opus), each watched by the other 7 (8 in, 56
# out; the guide counts 64 with each user's own stream). Prints the server CPU
# for the whole call. Usage: bench/call.sh [users] [seconds]
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
USERS=${1:-8}
SECS=${2:-20}
build_release
(cd "$ROOT" && cargo build --release --quiet --example loadgen)
EXTRA_STREAMS=$((USERS - 1)) start_server $'workers = 1'
encode 2000 256
URLS="http://$HTTP/whep/$STREAM"
loop_publish "$STREAM" "$KEY"; PUBLISHER_PIDS="$LAST_PID"
for i in $(seq 1 $((USERS - 1))); do
  loop_publish "$STREAM$i" "$KEY-$i"; PUBLISHER_PIDS="$PUBLISHER_PIDS $LAST_PID"
  URLS="$URLS,http://$HTTP/whep/$STREAM$i"
done
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $USERS publishers" >&2
"$ROOT/target/release/examples/loadgen" --call "$URLS" --step-secs "$SECS" \
  --server-pid "$SERVER_PID" --metrics "http://$HTTP/metrics"
