"""Seeds for the rtp_publish target from ffmpeg's own RTP packetizers:
ffmpeg sends 1 s of 64x36 video (H.264, VP8 or VP9) and Opus audio as RTP to
two loopback UDP sockets; the packets are written, in arrival order, in the
target's input format (see fuzz_targets/rtp_publish.rs).

    python3 fuzz/capture/rtp_seeds.py OUT_DIR
"""
import os
import socket
import struct
import subprocess
import sys

CODECS = {
    # name: (target codec index, ffmpeg video encoder options)
    "h264": (0, ["-c:v", "libx264", "-bf", "0", "-g", "5", "-profile:v", "baseline", "-pix_fmt", "yuv420p"]),
    "vp8": (1, ["-c:v", "libvpx", "-g", "5", "-deadline", "realtime", "-pix_fmt", "yuv420p"]),
    "vp9": (2, ["-c:v", "libvpx-vp9", "-g", "5", "-deadline", "realtime", "-strict", "experimental", "-pix_fmt", "yuv420p"]),
}


def rtp(pkt):
    """(marker, seq, timestamp, payload) of an RTP packet."""
    b0, b1, seq, ts = struct.unpack("!BBHI", pkt[:8])
    off = 12 + 4 * (b0 & 0x0F)
    if b0 & 0x10:
        ext_len = struct.unpack("!H", pkt[off + 2 : off + 4])[0]
        off += 4 + 4 * ext_len
    end = len(pkt) - (pkt[-1] if b0 & 0x20 else 0)
    return bool(b1 & 0x80), seq, ts, pkt[off:end]


def capture(name, index, venc, out_dir):
    socks = []
    for _ in range(2):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        s.settimeout(3)
        socks.append(s)
    vport, aport = (s.getsockname()[1] for s in socks)
    cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-re",
           "-f", "lavfi", "-i", "testsrc=size=64x36:rate=10",
           "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
           "-t", "0.6", "-map", "0:v", *venc, "-payload_type", "96", "-f", "rtp", f"rtp://127.0.0.1:{vport}",
           "-t", "0.6", "-map", "1:a", "-c:a", "libopus", "-b:a", "32k", "-payload_type", "111",
           "-f", "rtp", f"rtp://127.0.0.1:{aport}", "-sdp_file", os.devnull]
    proc = subprocess.Popen(cmd)
    packets = []  # (track, marker, seq, ts, payload) in arrival order
    import select
    while True:
        ready, _, _ = select.select(socks, [], [], 2)
        if not ready:
            break
        for s in ready:
            data = s.recv(2048)
            if len(data) >= 12 and data[0] >> 6 == 2:
                packets.append((socks.index(s),) + rtp(data))
    proc.wait()
    last = [None, None]
    out = bytearray([index | 0x80])
    for track, marker, seq, ts, payload in packets:
        prev = last[track]
        seq_step = 1 if prev is None else ((seq - prev[0] + 0x8000) % 0x10000) - 0x8000
        ts_step = 0 if prev is None else (ts - prev[1]) % 0x10000
        last[track] = (seq, ts)
        flags = (1 if marker else 0) | (2 if track else 0)
        out += struct.pack("!BbHH", flags, max(-128, min(127, seq_step)), ts_step, len(payload)) + payload
    path = os.path.join(out_dir, f"ffmpeg_{name}_opus.bin")
    with open(path, "wb") as f:
        f.write(out)
    print(f"{path}: {len(packets)} packets, {len(out)} bytes")


if __name__ == "__main__":
    os.makedirs(sys.argv[1], exist_ok=True)
    for name, (index, venc) in CODECS.items():
        capture(name, index, venc, sys.argv[1])
