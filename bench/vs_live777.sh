#!/usr/bin/env bash
# roomcast against live777 on the same machine and load: server CPU per RTP
# packet delivered to N WHEP viewers of one stream.
#
# Usage: BENCH_SERVER_BIN=…/release/roomcast \
#          bench/vs_live777.sh DIR [viewers=50] [seconds=20] [rounds=1]
# DIR holds release builds of live777's `live777`, `whipinto` and `livewrk`
# (https://github.com/binbat/live777: `cargo build --release --bin live777
# --bin whipinto --bin livewrk` in its checkout, kept outside this project).
#
# Both servers get the same load, one after the other (the order alternates
# each round):
# - source: 20 s of 720p30 H.264 at 2.5 Mbit/s (keyframe every second, no
#   B-frames) plus 96 kbit/s Opus, encoded once, looped by ffmpeg with
#   `-c copy` as RTP (payloads ≤ 1200 bytes) into whipinto, which publishes
#   it over WHIP: roomcast takes whipinto's WHIP (Bearer = the stream key),
#   so both servers ingest exactly the same packets the same way;
# - viewers: livewrk whep --sessions N --duration S (webrtc-rs viewers that
#   count every RTP packet they receive, video and audio, and send no
#   NACK/PLI/TWCC);
# - the server runs on CPU 0 (all its threads); ffmpeg, whipinto and livewrk
#   on CPU 1; roomcast with one WebRTC worker, live777 with its defaults
#   (ICE-lite, one tokio worker per available core, i.e. one).
# Figures, per server:
# - µs/pkt = server CPU (utime+stime from /proc, from just before livewrk
#   starts to just after it exits: session set-up and teardown included)
#   ÷ RTP packets livewrk received;
# - net µs/pkt = the same less the publisher-only CPU rate (measured for 3 s
#   before the viewers join) × the run's wall time;
# - delivered = RTP packets per second per connected viewer (livewrk's count
#   ÷ its average connected time) ÷ the source's RTP packets per second
#   (counted once from the file through the same RTP muxer). The servers'
#   own counts of packets sent to viewers do not count the same thing
#   (roomcast's leaves out the GOP replayed at join; live777's stream totals
#   are sampled every 2 s), so they are not used. roomcast repacketizes
#   H.264 (payloads ≤ 1200 bytes, like the source's). livewrk's connected
#   time starts at the WHEP answer, before ICE and DTLS, so with many
#   viewers on a busy CPU this reads low for both servers (README);
# - rcvbuf drops = the rise of the host's Udp RcvbufErrors over the run
#   (livewrk's sockets, or anything else running on the host).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

EXT=${1:?usage: bench/vs_live777.sh DIR-with-live777,whipinto,livewrk [viewers] [seconds] [rounds]}
EXT=$(cd "$EXT" && pwd)
VIEWERS=${2:-50}
SECS=${3:-20}
ROUNDS=${4:-1}
for b in live777 whipinto livewrk; do
  [[ -x "$EXT/$b" ]] || { echo "$EXT/$b: not found or not executable" >&2; exit 1; }
done
[[ -n "${BENCH_SERVER_BIN:-}" ]] || build_release
TICK=$(getconf CLK_TCK)
# webrtc-rs (whipinto, livewrk) gathers host candidates on loopback only, and
# no STUN server (--ice-server '').
export LIVE777_WEBRTC_ICE_UDP_ADDRS=127.0.0.1:0

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
# Even UDP port P with P+1 (RTCP) free too.
free_rtp_port() {
  python3 - <<'PY'
import random, socket
while True:
    p = random.randrange(20000, 60000, 2)
    try:
        a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); a.bind(("127.0.0.1", p))
        b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); b.bind(("127.0.0.1", p + 1))
        print(p); break
    except OSError:
        pass
PY
}
cpu_ticks() { awk '{ s = $0; sub(/^.*\) /, "", s); split(s, f, " "); print f[12] + f[13] }' "/proc/$1/stat"; }
rss_kib() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status"; }
now() { date +%s.%N; }
# Datagrams the kernel dropped on full receive buffers, host-wide (livewrk's
# sockets, or anything else running on the host).
udp_rcvbuf_errors() { awk '/^Udp:/ { if (h) { print $6; exit } h = 1 }' /proc/net/snmp; }

encode_source() {
  ffmpeg -hide_banner -loglevel error -y -f lavfi -i testsrc2=size=1280x720:rate=30 \
    -f lavfi -i sine=frequency=440:sample_rate=48000 -t 20 \
    -c:v libx264 -preset veryfast -tune zerolatency -bf 0 -g 30 -b:v 2500k \
    -maxrate 2500k -bufsize 2500k -pix_fmt yuv420p -c:a libopus -b:a 96k -ac 2 \
    -f mpegts "$WORK/source.ts"
}

# The source's RTP packet rate: one pass of the file through the same RTP
# muxer settings (at 5× real time) into two counting sockets.
source_pps() {
  local v n secs
  v=$(free_rtp_port)
  python3 - "$v" >"$WORK/count" <<'PY' &
import select, socket, sys
socks = []
for p in (int(sys.argv[1]), int(sys.argv[1]) + 2):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    s.bind(("127.0.0.1", p))
    socks.append(s)
n, started = 0, False
while True:
    ready, _, _ = select.select(socks, [], [], 2.0 if started else 15.0)
    if not ready:
        break
    for s in ready:
        s.recv(2048)
        n, started = n + 1, True
print(n)
PY
  local counter=$!
  sleep 0.5
  ffmpeg -hide_banner -loglevel error -readrate 5 -i "$WORK/source.ts" \
    -map 0:v -c:v copy -f rtp -pkt_size 1212 "rtp://127.0.0.1:$v" \
    -map 0:a -c:a copy -f rtp "rtp://127.0.0.1:$((v + 2))" >/dev/null
  wait "$counter"
  n=$(cat "$WORK/count")
  secs=$(ffprobe -v error -show_entries format=duration -of csv=p=0 "$WORK/source.ts")
  echo "$n / $secs" | bc -l
}

# publish_rtp WHIP_URL TOKEN: ffmpeg loops the source as RTP into whipinto.
publish_rtp() {
  local v a
  v=$(free_rtp_port)
  a=$((v + 2))
  rm -f "$WORK/rtp.sdp"
  taskset -c 1 ffmpeg -hide_banner -loglevel error -re -stream_loop -1 -i "$WORK/source.ts" \
    -map 0:v -c:v copy -f rtp -pkt_size 1212 "rtp://127.0.0.1:$v" \
    -map 0:a -c:a copy -f rtp "rtp://127.0.0.1:$a" -sdp_file "$WORK/rtp.sdp" \
    >>"$WORK/ffmpeg.log" 2>&1 &
  FFMPEG_PID=$!
  for _ in $(seq 1 100); do
    grep -q '^m=audio' "$WORK/rtp.sdp" 2>/dev/null && break
    sleep 0.1
  done
  taskset -c 1 "$EXT/whipinto" -v -i "$WORK/rtp.sdp" -w "$1" -t "$2" --ice-server '' \
    >>"$WORK/whipinto.log" 2>&1 &
  WHIPINTO_PID=$!
  PUBLISHER_PIDS="$WHIPINTO_PID"
}

stop_run() {
  for p in ${WHIPINTO_PID:-} ${FFMPEG_PID:-} ${SERVER_PID:-}; do
    kill "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  WHIPINTO_PID= FFMPEG_PID= SERVER_PID= PUBLISHER_PIDS=
}

live777_stats() {
  { curl -fs "http://$L7_HTTP/api/streams/" || echo '[]'; } | jq -r --arg s "$STREAM" \
    '.[] | select(.id == $s) | "\(.stats.publish.packets // 0) \(.stats.subscribe.packets // 0) \(.publish.sessions | length)"'
}

start_roomcast() {
  rm -f "$WORK"/roomcast.db*
  start_server $'workers = 1'
  taskset -pc 0 "$SERVER_PID" >/dev/null
  for tid in /proc/"$SERVER_PID"/task/*; do taskset -pc 0 "${tid##*/}" >/dev/null; done
  publish_rtp "http://$HTTP/whip/$STREAM" "$KEY"
  for _ in $(seq 1 300); do # 30 s: whipinto's ICE and DTLS on a busy CPU
    curl -fs "http://$HTTP/api/v1/streams/$STREAM" | grep -q '"fps":' && return 0
    sleep 0.1
  done
  echo "roomcast: stream did not go live" >&2; tail -n 30 "$WORK/whipinto.log" "$WORK/server.log" "$WORK/ffmpeg.log" >&2; exit 1
}

start_live777() {
  L7_HTTP=127.0.0.1:$(free_port)
  cat >"$WORK/live777.toml" <<TOML
ice_servers = []
[http]
listen = "$L7_HTTP"
[webrtc]
ice_udp_addrs = ["127.0.0.1:0"]
[log]
level = "warn"
TOML
  taskset -c 0 "$EXT/live777" --config "$WORK/live777.toml" >>"$WORK/live777.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 100); do
    curl -fs "http://$L7_HTTP/api/streams/" >/dev/null && break
    sleep 0.1
  done
  publish_rtp "http://$L7_HTTP/whip/$STREAM" "$KEY"
  for _ in $(seq 1 300); do # 30 s: whipinto's ICE and DTLS on a busy CPU
    read -r pub _ n <<<"$(live777_stats) x x x"
    [[ "$n" =~ ^[1-9] && "$pub" =~ ^[0-9]+$ && "$pub" -gt 100 ]] && return 0
    sleep 0.1
  done
  echo "live777: stream did not go live" >&2; tail -n 30 "$WORK/whipinto.log" "$WORK/live777.log" "$WORK/ffmpeg.log" >&2; exit 1
}

# measure NAME: the server is up and the stream live; runs livewrk and keeps
# the figures in ROW_<NAME> for print_row.
measure() {
  local name=$1 whep base0 base1 t0 t1 c0 c1 d0 d1 out
  case $name in
    roomcast) whep="http://$HTTP/whep/$STREAM" ;;
    live777) whep="http://$L7_HTTP/whep/$STREAM" ;;
  esac
  # Publisher only: the ingest's share, subtracted for the net figure.
  base0=$(cpu_ticks "$SERVER_PID"); t0=$(now)
  sleep 3
  base1=$(cpu_ticks "$SERVER_PID"); t1=$(now)
  local base_rate
  base_rate=$(echo "($base1 - $base0) / $TICK / ($t1 - $t0)" | bc -l)
  d0=$(udp_rcvbuf_errors)
  c0=$(cpu_ticks "$SERVER_PID"); t0=$(now)
  out=$(taskset -c 1 "$EXT/livewrk" whep --whep "$whep" --sessions "$VIEWERS" \
    --duration "$SECS" --ice-server '' 2>>"$WORK/livewrk.log") || true
  c1=$(cpu_ticks "$SERVER_PID"); t1=$(now)
  d1=$(udp_rcvbuf_errors)
  echo "$out" >>"$WORK/livewrk.log"
  local connected packets bytes dur
  connected=$(grep -oP 'Sessions: \d+ total, \K\d+(?= connected)' <<<"$out" || echo 0)
  packets=$(grep -oP 'Packets: \K\d+' <<<"$out" || echo 0)
  bytes=$(grep -oP 'Packets: \d+, bytes: \K\d+' <<<"$out" || echo 0)
  dur=$(grep -oP 'Avg connected duration: \K[0-9.]+(ms|s)' <<<"$out" || echo 0s)
  if [[ $dur == *ms ]]; then dur=$(echo "${dur%ms} / 1000" | bc -l); else dur=${dur%s}; fi
  if ((packets == 0)); then
    printf -v "ROW_$name" 'none %s "%s"' "$connected" "$(tr '\n' ' ' <<<"$out")"
    return
  fi
  printf -v "ROW_$name" '%s ' $((c1 - c0)) "$(echo "$t1 - $t0" | bc -l)" "$base_rate" \
    "$packets" "$bytes" "$connected" "$dur" "$(rss_kib "$SERVER_PID")" $((d1 - d0))
}

# print_row NAME: one line of the table from ROW_<NAME> and SRC_PPS.
print_row() {
  local row="ROW_$1"
  row=${!row}
  if [[ $row == none* ]]; then
    echo "$1: no packets delivered; livewrk said: ${row#none }"
    return
  fi
  awk -v n="$1" -v tick="$TICK" -v v="$VIEWERS" -v src="${SRC_PPS:-0}" -v row="$row" 'BEGIN {
    split(row, f, " ")
    cpu = f[1] / tick; wall = f[2]; base = f[3]; p = f[4]; b = f[5]; conn = f[6]; dur = f[7]
    per_viewer = p / (conn * dur)
    delivered = 0
    if (src > 0) delivered = per_viewer / src * 100
    printf "%-9s %7.2f %9.2f %7.3f %9.3f %6d/%-4d %9.0f %8.0f %9d %9.1f%% %9d %7.1f\n", n,
      cpu / p * 1e6, (cpu - base * wall) / p * 1e6, cpu / wall, base,
      conn, v, per_viewer, b * 8 / (conn * dur) / 1000, p, delivered, f[9], f[8] / 1024
  }'
}

run_one() {
  case $1 in
    roomcast) start_roomcast ;;
    live777) start_live777 ;;
  esac
  measure "$1"
  stop_run
}

encode_source
SRC_PPS=$(source_pps)
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r)"
echo "live777: $("$EXT/live777" --version 2>/dev/null | tr '\n' ' '); roomcast: ${BENCH_SERVER_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/roomcast}"
printf 'source: %.0f RTP packets/s (H.264 and Opus)\n' "$SRC_PPS"
echo "$VIEWERS viewers (livewrk) for ${SECS} s per server; uptime before: $(uptime | sed 's/.*load/load/')"
for r in $(seq 1 "$ROUNDS"); do
  echo
  echo "round $r"
  if ((r % 2)); then order="live777 roomcast"; else order="roomcast live777"; fi
  for s in $order; do run_one "$s"; done
  printf '%-9s %7s %9s %7s %9s %11s %9s %8s %9s %10s %9s %7s\n' server "µs/pkt" "net µs" cores "pub-only" connected "pkt/s/v" "kbit/s/v" packets delivered "rcvbuf drops" "RSS MB"
  for s in live777 roomcast; do print_row "$s"; done
done
echo
echo "uptime after: $(uptime | sed 's/.*load/load/')"
