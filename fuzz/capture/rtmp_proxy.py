"""Seeds for the rtmp_session target: what an RTMP client sends, recorded by
a TCP proxy in front of a real roomcast. Starts `ROOMCAST_BIN serve` with one
stream, runs CLIENT (gstreamer or ffmpeg) through the proxy, and writes the
client-to-server bytes (handshake included) with the target's read-size
byte (0) in front.

    python3 fuzz/capture/rtmp_proxy.py ROOMCAST_BIN gstreamer OUT_FILE
"""
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time

KEY = "capture-key-0123456789abcdef"


def main(binary, client, out):
    d = tempfile.mkdtemp(prefix="roomcast-rtmp-capture-")
    with open(f"{d}/config.toml", "w") as f:
        f.write(f"""[http]
listen = "127.0.0.1:0"
[rtmp]
listen = "127.0.0.1:0"
[webrtc]
udp = "127.0.0.1:0"
tcp = "127.0.0.1:0"
[ome]
enabled = false
[storage]
database_url = "sqlite://{d}/roomcast.db"
[[streams]]
name = "capture"
key = "{KEY}"
""")
    log = open(f"{d}/server.log", "w+")
    server = subprocess.Popen([binary, "serve", "--config", f"{d}/config.toml"],
                              stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.time() + 30
        addr = None
        while time.time() < deadline and not addr:
            time.sleep(0.2)
            log.seek(0)
            m = re.search(r'service="rtmp" addr=(\S+)', log.read())
            addr = m and m.group(1)
        host, port = addr.rsplit(":", 1)
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(1)
        recorded = bytearray()

        def proxy():
            c, _ = lsock.accept()
            s = socket.create_connection((host, int(port)))

            def pump(a, b, record):
                while True:
                    data = a.recv(65536)
                    if not data:
                        break
                    if record:
                        recorded.extend(data)
                    b.sendall(data)
                try:
                    b.shutdown(socket.SHUT_WR)
                except OSError:
                    pass

            t = threading.Thread(target=pump, args=(s, c, False), daemon=True)
            t.start()
            pump(c, s, True)
            t.join(5)

        pt = threading.Thread(target=proxy, daemon=True)
        pt.start()
        url = f"rtmp://127.0.0.1:{lsock.getsockname()[1]}/live/{KEY}"
        if client == "gstreamer":
            # 0.5 s of 64x36 H.264 at 10 fps and 16 kbit/s AAC, then EOS.
            cmd = ["gst-launch-1.0", "-q", "-e", "videotestsrc", "is-live=true", "num-buffers=5", "!",
                   "video/x-raw,width=64,height=36,framerate=10/1", "!", "x264enc", "tune=zerolatency",
                   "key-int-max=5", "!", "h264parse", "!", "flvmux", "name=m", "streamable=true", "!",
                   "rtmp2sink", f"location={url}", "audiotestsrc", "is-live=true", "num-buffers=22", "!",
                   "audioconvert", "!", "voaacenc", "bitrate=16000", "!", "aacparse", "!", "m."]
        else:
            cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-re", "-f", "lavfi", "-i",
                   "testsrc=size=64x36:rate=10", "-f", "lavfi", "-i", "sine=frequency=440", "-t", "1",
                   "-c:v", "libx264", "-bf", "0", "-g", "5", "-pix_fmt", "yuv420p", "-c:a", "aac",
                   "-f", "flv", url]
        subprocess.run(cmd, timeout=60, stdout=subprocess.DEVNULL)
        pt.join(10)
        with open(out, "wb") as f:
            f.write(b"\0" + bytes(recorded))
        print(out, len(recorded) + 1, "bytes")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main(*sys.argv[1:4])
