"""Seeds for the rtmp_session target: what an RTMP client sends, recorded by
a TCP proxy in front of a real roomcast. Starts `ROOMCAST_BIN serve` with one
stream, runs CLIENT (gstreamer, ffmpeg or obs) through the proxy, and writes
the client-to-server bytes (handshake included) with the target's read-size
byte (0) in front.

    python3 fuzz/capture/rtmp_proxy.py ROOMCAST_BIN gstreamer OUT_FILE

`obs` runs OBS Studio headless (`xvfb-run -a`, software GL) from a
throw-away HOME holding a profile (custom RTMP server: the proxy; 64x36 at
10 fps, x264 at 50 kbit/s, AAC) and a scene collection with one color
source; it starts streaming on its own (`--startstreaming`) and is stopped
with SIGTERM once it has sent about 2 s of media after its publish.
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

from capture_server import write_config

KEY = "capture-key-0123456789abcdef"


def obs_home(url):
    """A HOME whose OBS starts streaming to `url` at once, no wizard."""
    home = tempfile.mkdtemp(prefix="roomcast-obs-home-")
    base = f"{home}/.config/obs-studio"
    prof = f"{base}/basic/profiles/Capture"
    os.makedirs(prof)
    os.makedirs(f"{base}/basic/scenes")
    with open(f"{base}/global.ini", "w") as f:
        f.write("[General]\nFirstRun=true\nLastVersion=486539266\nEnableAutoUpdates=false\n"
                "[Basic]\nProfile=Capture\nProfileDir=Capture\nSceneCollection=Capture\n"
                "SceneCollectionFile=Capture\nConfigOnNewProfile=false\n")
    with open(f"{prof}/basic.ini", "w") as f:
        f.write("[General]\nName=Capture\n[Video]\nBaseCX=64\nBaseCY=36\nOutputCX=64\nOutputCY=36\n"
                "FPSType=1\nFPSInt=10\n[Output]\nMode=Simple\n[SimpleOutput]\nVBitrate=50\n"
                "ABitrate=64\nStreamEncoder=x264\nPreset=ultrafast\n[Audio]\nSampleRate=48000\n"
                "ChannelSetup=Mono\n")
    server, key = url.rsplit("/", 1)
    with open(f"{prof}/service.json", "w") as f:
        json.dump({"type": "rtmp_custom", "settings": {"server": server, "key": key,
                                                       "use_auth": False}}, f)
    color = {"id": "color_source", "versioned_id": "color_source_v3", "name": "Color",
             "uuid": "6a1f6c2e-0000-4000-8000-000000000001",
             "settings": {"color": 4278255360, "width": 64, "height": 36}}
    scene = {"id": "scene", "versioned_id": "scene", "name": "Scene",
             "uuid": "6a1f6c2e-0000-4000-8000-000000000002",
             "settings": {"items": [{"name": "Color", "source_uuid": color["uuid"], "visible": True,
                                     "id": 1, "pos": {"x": 0, "y": 0}, "scale": {"x": 1, "y": 1},
                                     "bounds": {"x": 0, "y": 0}, "bounds_type": 0, "align": 5,
                                     "bounds_align": 0, "rot": 0.0}], "id_counter": 1}}
    with open(f"{base}/basic/scenes/Capture.json", "w") as f:
        json.dump({"name": "Capture", "current_scene": "Scene", "current_program_scene": "Scene",
                   "scene_order": [{"name": "Scene"}], "sources": [color, scene]}, f)
    return home


def run_obs(url, log, recorded):
    home = obs_home(url)
    # Xvfb started here rather than by xvfb-run, so that OBS alone gets the
    # SIGTERM that makes it end its stream.
    rfd, wfd = os.pipe()
    xvfb = subprocess.Popen(["Xvfb", "-displayfd", str(wfd), "-screen", "0", "640x480x24", "-nolisten", "tcp"],
                            pass_fds=[wfd], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(wfd)
    display = os.read(rfd, 16).decode().strip()
    os.close(rfd)
    env = dict(os.environ, HOME=home, LIBGL_ALWAYS_SOFTWARE="1", XDG_CONFIG_HOME=f"{home}/.config",
               DISPLAY=f":{display}")
    obs = subprocess.Popen(["obs", "--startstreaming", "--minimize-to-tray",
                            "--profile", "Capture", "--collection", "Capture", "--scene", "Scene",
                            "--disable-shutdown-check", "--multi"],
                           env=env, stdout=subprocess.DEVNULL, stderr=open(f"{home}/obs.log", "w"))
    try:
        # Published (the server logs it), then ~2 s of media.
        deadline = time.time() + 90
        while time.time() < deadline:
            log.seek(0)
            if "rtmp publish started" in log.read():
                break
            if obs.poll() is not None:
                raise SystemExit(f"obs exited with {obs.returncode}; its log: {home}/obs.log")
            time.sleep(0.2)
        else:
            raise SystemExit(f"obs did not publish within 90 s; its log: {home}/obs.log")
        time.sleep(2)
    finally:
        # OBS stops its stream (FCUnpublish, deleteStream) on SIGTERM.
        obs.send_signal(signal.SIGTERM)
        try:
            obs.wait(20)
        except subprocess.TimeoutExpired:
            obs.kill()
            obs.wait()
        xvfb.terminate()
        xvfb.wait()


def main(binary, client, out):
    d = tempfile.mkdtemp(prefix="roomcast-rtmp-capture-")
    config = write_config(d, KEY)
    log = open(f"{d}/server.log", "w+")
    server = subprocess.Popen([binary, "serve", "--config", config],
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
        if client == "obs":
            run_obs(url, log, recorded)
            cmd = None
        elif client == "gstreamer":
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
        if cmd:
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
