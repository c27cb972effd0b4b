"""AV1 seed for the rtp_publish target: headless Chromium publishes its fake
camera (AV1) and microphone (Opus) over WHIP to a real roomcast
(tests/browser/publish.mjs), and roomcast logs each RTP packet it receives
after SRTP (ROOMCAST_LOG=rtp_capture=trace, a trace line in
src/rtc/publish.rs). The first packets (the keyframe and a few frames, with
the audio between them) are written in the target's input format, like
rtp_seeds.py does for ffmpeg's packetizers, then the first later video
frame that spans several packets (Chromium starts small: its first frames fit
one packet each), after a gap.

    python3 fuzz/capture/whip_rtp_seed.py ROOMCAST_BIN NODE_DIR OUT_FILE [CODEC=AV1]

NODE_DIR holds publish.mjs and its node_modules (tests/browser).
"""
import os
import re
import struct
import subprocess
import sys
import tempfile
import time

from capture_server import write_config

KEY = "capture-key-0123456789abcdef"
INDEX = {"H264": 0, "VP8": 1, "VP9": 2, "AV1": 3}
AUDIO_PT = 111  # Chromium's Opus
MAX_VIDEO_FRAMES = 10
MAX_BYTES = 16 * 1024
LINE = re.compile(r"rtp_capture: pt=(\d+) seq=(\d+) time=(\d+) marker=(true|false) payload=([0-9a-f]*)")


def main(binary, node_dir, out, codec="AV1"):
    d = tempfile.mkdtemp(prefix="roomcast-whip-capture-")
    config = write_config(d, KEY)
    log = open(f"{d}/server.log", "w+")
    env = dict(os.environ, ROOMCAST_LOG="info,str0m=warn,rtp_capture=trace", NO_COLOR="1")
    server = subprocess.Popen([binary, "serve", "--config", config],
                              stdout=log, stderr=log, env=env)
    try:
        deadline = time.time() + 30
        addr = None
        while time.time() < deadline and not addr:
            time.sleep(0.2)
            log.seek(0)
            m = re.search(r'service="http" addr=(\S+)', log.read())
            addr = m and m.group(1)
        if not addr:
            raise SystemExit(f"roomcast did not start: {d}/server.log")
        subprocess.run(["node", os.path.join(node_dir, "publish.mjs"), "--base", f"http://{addr}",
                        "--stream", "capture", "--key", KEY, "--codec", codec, "--duration", "3"],
                       cwd=node_dir, timeout=90, stdout=subprocess.DEVNULL, check=True)
        log.seek(0)
        packets = [(int(pt), int(seq), int(ts), m == "true", bytes.fromhex(p))
                   for pt, seq, ts, m, p in LINE.findall(log.read())]
    finally:
        server.terminate()
        server.wait()
    video_pts = [p[0] for p in packets if p[0] != AUDIO_PT]
    video_pt = max(set(video_pts), key=video_pts.count)
    last = {}
    out_bytes = bytearray([INDEX[codec] | 0x80])
    frames = 0
    kept = 0
    packets = [p for p in packets if p[0] in (video_pt, AUDIO_PT)]  # not RTX, padding
    head = []
    for i, (pt, seq, ts, marker, payload) in enumerate(packets):
        if len(head) and sum(1 for p in head if p[0] == video_pt and p[3]) >= MAX_VIDEO_FRAMES:
            break
        head.append(packets[i])
    # The first later frame of several packets (video only).
    video = [p for p in packets[len(head):] if p[0] == video_pt]
    tail, frame = [], []
    for p in video:
        frame.append(p)
        if p[3]:
            if len(frame) > 1 and sum(len(q[4]) for q in frame) < MAX_BYTES:
                tail = frame
                break
            frame = []
    for pt, seq, ts, marker, payload in head + tail:
        track = 1 if pt == AUDIO_PT else 0
        prev = last.get(track)
        seq_step = 1 if prev is None else ((seq - prev[0] + 0x8000) % 0x10000) - 0x8000
        ts_step = 0 if prev is None else (ts - prev[1]) % 0x10000
        last[track] = (seq, ts)
        flags = (1 if marker else 0) | (2 if track else 0)
        out_bytes += struct.pack("!BbHH", flags, max(-128, min(127, seq_step)), ts_step,
                                 len(payload)) + payload
        kept += 1
        if track == 0 and marker:
            frames += 1
    with open(out, "wb") as f:
        f.write(out_bytes)
    print(f"{out}: {kept} of {len(packets)} packets (video pt {video_pt}, {frames} frames, "
          f"the last of {len(tail)} packets), {len(out_bytes)} bytes")


if __name__ == "__main__":
    main(*sys.argv[1:5])
