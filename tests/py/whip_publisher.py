#!/usr/bin/env python3
"""WHIP publisher built on aiortc: an independent WebRTC stack for roomcast's tests.

It sends a synthetic video track (a moving gradient with a frame counter bar,
``--width``x``--height`` at ``--fps``) and a 440 Hz sine on an Opus track (with a hole in it, ``--audio-hole``), encoded
by aiortc with the codec chosen by ``--video-codec`` (H264, VP8; forced with
setCodecPreferences). It POSTs the sendonly offer to the WHIP URL with
``Authorization: Bearer KEY`` (``--key``), sets the answer, and publishes until
``--duration`` passes, a line ``stop`` arrives on stdin (``--stdin-control``) or
stdin closes (``pause`` and ``resume`` lines there stop and restart the media,
ICE and RTCP going on, as a stalled encoder; the timestamps jump over the
pause); then it DELETEs the session (unless ``--no-delete``).

Every stdout line is a JSON object with a ``type``: ``whip`` (status, location,
etag, answer candidates, body on error), ``event`` (connection state changes),
``progress`` (every second: frames sent, connection state, keyframe requests
received) and, last, ``result`` (ok, error, frames_sent, pli_received,
connection_states, delete_status).

Exit status: 0 when the session connected and published; 1 otherwise.
Only loopback is used when the URL points at loopback (see whep_viewer.py).
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import ipaddress
import json
import math
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

try:
    import aioice.ice
    import av
    from aiortc import (
        RTCConfiguration,
        RTCPeerConnection,
        RTCRtpSender,
        RTCSessionDescription,
    )
    from aiortc.mediastreams import MediaStreamTrack
except ImportError as exc:  # pragma: no cover - depends on the environment
    print(
        json.dumps(
            {
                "type": "result",
                "ok": False,
                "error": f"aiortc is not importable ({exc}); run ./scripts/test.sh",
            }
        ),
        flush=True,
    )
    sys.exit(1)


def emit(obj: dict) -> None:
    print(json.dumps(obj, sort_keys=True), flush=True)


class Counters:
    frames_sent = 0
    audio_sent = 0


# Set while the media is paused (stdin ``pause``/``resume``).
PAUSED = threading.Event()


async def unpaused(track) -> None:  # type: ignore[no-untyped-def]
    """Waits out a pause; afterwards the track's frame number catches up
    with the clock, so its timestamps jump over the pause."""
    if not PAUSED.is_set():
        return
    while PAUSED.is_set():
        await asyncio.sleep(0.02)
    track.n = max(track.n, math.ceil((time.monotonic() - track.t0) * track.frames_per_s))


class SyntheticVideo(MediaStreamTrack):
    kind = "video"

    def __init__(self, width: int, height: int, fps: int) -> None:
        super().__init__()
        self.width, self.height, self.fps = width, height, fps
        self.n = 0
        self.t0: float | None = None
        # A luma ramp, shifted every frame so the encoder has motion to code.
        self.ramp = bytes((x * 255 // max(1, width - 1)) for x in range(width))

    @property
    def frames_per_s(self) -> float:
        return self.fps

    async def recv(self):  # type: ignore[no-untyped-def]
        if self.t0 is None:
            self.t0 = time.monotonic()
        await unpaused(self)
        due = self.t0 + self.n / self.fps
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        frame = av.VideoFrame(self.width, self.height, "yuv420p")
        shift = (self.n * 4) % self.width
        row = self.ramp[shift:] + self.ramp[:shift]
        y = frame.planes[0]
        luma = bytearray(row.ljust(y.line_size, b"\x00") * self.height)
        # A bar whose length counts frames: every frame differs.
        bar = (self.n % 100) * self.width // 100
        for line in range(min(16, self.height)):
            start = line * y.line_size
            luma[start : start + bar] = b"\xff" * bar
        y.update(bytes(luma))
        for plane in frame.planes[1:]:
            plane.update(bytes([128]) * (plane.line_size * (self.height // 2)))
        frame.pts = self.n * (90000 // self.fps)
        frame.time_base = fractions.Fraction(1, 90000)
        self.n += 1
        Counters.frames_sent += 1
        return frame


class SineAudio(MediaStreamTrack):
    kind = "audio"
    RATE = 48000
    SAMPLES = 960  # 20 ms

    def __init__(self, freq: float = 440.0, hole: tuple[float, float] | None = None) -> None:
        super().__init__()
        self.freq = freq
        self.n = 0
        self.t0: float | None = None
        # (start, length) in seconds: no audio then, and the timestamps jump over it.
        self.hole = hole

    @property
    def frames_per_s(self) -> float:
        return self.RATE / self.SAMPLES

    async def recv(self):  # type: ignore[no-untyped-def]
        if self.t0 is None:
            self.t0 = time.monotonic()
        await unpaused(self)
        if self.hole and self.hole[0] <= self.n * self.SAMPLES / self.RATE < sum(self.hole):
            self.n = math.ceil(sum(self.hole) * self.RATE / self.SAMPLES)
            emit({"type": "audio_hole", "start_s": self.hole[0], "length_s": self.hole[1]})
        due = self.t0 + self.n * self.SAMPLES / self.RATE
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        start = self.n * self.SAMPLES
        pcm = bytearray()
        for i in range(self.SAMPLES):
            v = int(0.3 * 32767 * math.sin(2 * math.pi * self.freq * (start + i) / self.RATE))
            b = v.to_bytes(2, "little", signed=True)
            pcm += b + b  # stereo
        frame = av.AudioFrame(format="s16", layout="stereo", samples=self.SAMPLES)
        frame.planes[0].update(bytes(pcm))
        frame.sample_rate = self.RATE
        frame.pts = start
        frame.time_base = fractions.Fraction(1, self.RATE)
        self.n += 1
        Counters.audio_sent += 1
        return frame


def restrict_ice_hosts(hosts: list[str]) -> None:
    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        out = []
        for h in hosts:
            ip = ipaddress.ip_address(h)
            if (ip.version == 4 and use_ipv4) or (ip.version == 6 and use_ipv6):
                out.append(h)
        return out

    aioice.ice.get_host_addresses = get_host_addresses


def http(method: str, url: str, body: bytes | None, headers: dict, timeout: float):  # type: ignore[no-untyped-def]
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers.items()), resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers.items()), err.read().decode("utf-8", "replace")


def header(headers: dict, name: str) -> str | None:
    for k, v in headers.items():
        if k.lower() == name.lower():
            return v
    return None


def count_pli(sender) -> None:  # type: ignore[no-untyped-def]
    """Counts keyframe requests (PLI/FIR) the server sends to the video sender."""
    original = sender._handle_rtcp_packet

    async def handle(packet):  # type: ignore[no-untyped-def]
        name = type(packet).__name__
        if name in ("RtcpPsfbPacket",) and getattr(packet, "fmt", None) in (1, 4):
            STATE["pli_received"] += 1
        return await original(packet)

    sender._handle_rtcp_packet = handle


STATE = {"pli_received": 0}


async def run(args) -> int:  # type: ignore[no-untyped-def]
    result: dict = {"type": "result", "ok": False, "url": args.url}
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    states: list[str] = []
    done = asyncio.Event()
    location: str | None = None
    loop = asyncio.get_running_loop()
    t0 = time.monotonic()

    @pc.on("connectionstatechange")
    async def on_state() -> None:
        states.append(pc.connectionState)
        emit({"type": "event", "name": "connectionstatechange", "state": pc.connectionState,
              "t_ms": round((time.monotonic() - t0) * 1000, 1)})
        if pc.connectionState in ("failed", "closed"):
            done.set()

    if args.stdin_control:
        def read_stdin() -> None:
            for line in sys.stdin:
                cmd = line.strip()
                if cmd == "stop":
                    break
                if cmd in ("pause", "resume"):
                    (PAUSED.set if cmd == "pause" else PAUSED.clear)()
                    emit({"type": "paused" if cmd == "pause" else "resumed"})
            loop.call_soon_threadsafe(done.set)

        threading.Thread(target=read_stdin, daemon=True).start()

    try:
        video = pc.addTransceiver(SyntheticVideo(args.width, args.height, args.fps), direction="sendonly")
        caps = RTCRtpSender.getCapabilities("video").codecs
        wanted = [c for c in caps if c.mimeType.lower() == f"video/{args.video_codec.lower()}"]
        if not wanted:
            result["error"] = f"aiortc has no {args.video_codec} encoder"
            return 1
        rtx = [c for c in caps if c.mimeType.lower() == "video/rtx"]
        video.setCodecPreferences(wanted + rtx)
        count_pli(video.sender)
        if not args.no_audio:
            pc.addTransceiver(SineAudio(hole=args.audio_hole), direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        headers = {"Content-Type": "application/sdp"}
        if args.key:
            headers["Authorization"] = f"Bearer {args.key}"
        try:
            status, rh, body = await asyncio.to_thread(
                http, "POST", args.url, pc.localDescription.sdp.encode(), headers, 15.0
            )
        except (urllib.error.URLError, OSError) as exc:
            result["error"] = f"WHIP POST failed: {getattr(exc, 'reason', exc)}"
            return 1
        loc = header(rh, "Location")
        location = urllib.parse.urljoin(args.url, loc) if loc else None
        emit({
            "type": "whip", "status": status, "location": loc, "etag": header(rh, "ETag"),
            "content_type": header(rh, "Content-Type"),
            "answer_candidates": [l.strip()[2:] for l in body.splitlines() if l.startswith("a=candidate:")],
            "body": body[:2000] if status != 201 else None,
        })
        result["whip_status"] = status
        if status != 201:
            result["error"] = f"WHIP POST answered {status}: {body[:500]}"
            return 1
        await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))

        deadline = t0 + args.duration if args.duration else None
        next_tick = time.monotonic() + 1.0
        while not done.is_set():
            now = time.monotonic()
            if deadline and now >= deadline:
                break
            wait = next_tick - now
            if deadline:
                wait = min(wait, deadline - now)
            try:
                await asyncio.wait_for(done.wait(), timeout=max(0.01, wait))
            except asyncio.TimeoutError:
                pass
            if time.monotonic() >= next_tick:
                next_tick += 1.0
                emit({"type": "progress", "t_ms": round((time.monotonic() - t0) * 1000, 1),
                      "frames_sent": Counters.frames_sent, "audio_sent": Counters.audio_sent,
                      "connection_state": pc.connectionState, "pli_received": STATE["pli_received"]})
        result["ok"] = "connected" in states and Counters.frames_sent > 0
        if not result["ok"]:
            result["error"] = f"never connected (states {states})"
        return 0 if result["ok"] else 1
    finally:
        result.update({
            "frames_sent": Counters.frames_sent,
            "audio_sent": Counters.audio_sent,
            "pli_received": STATE["pli_received"],
            "connection_states": states,
        })
        if location and not args.no_delete:
            try:
                status, _, _ = await asyncio.to_thread(http, "DELETE", location, None, {}, 5.0)
                result["delete_status"] = status
            except (urllib.error.URLError, OSError) as exc:
                result["delete_error"] = str(getattr(exc, "reason", exc))
        try:
            await asyncio.wait_for(pc.close(), timeout=5.0)
        except Exception:  # noqa: BLE001 - best effort
            pass
        emit(result)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("url", help="WHIP endpoint, e.g. http://127.0.0.1:8080/whip/demo")
    p.add_argument("--key", help="stream key, sent as Authorization: Bearer")
    p.add_argument("--video-codec", default="H264", choices=["H264", "VP8"])
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=360)
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--no-audio", action="store_true")
    p.add_argument(
        "--audio-hole",
        type=lambda v: tuple(float(x) for x in v.split(":", 1)),
        default=None,
        metavar="START:LENGTH",
        help="send no audio from START for LENGTH seconds (the timestamps jump over it)",
    )
    p.add_argument("--duration", type=float, default=None, help="publish this long, then stop")
    p.add_argument("--stdin-control", action="store_true")
    p.add_argument("--no-delete", action="store_true", help="do not DELETE the session at the end")
    args = p.parse_args()
    host = urllib.parse.urlsplit(args.url).hostname or ""
    try:
        if ipaddress.ip_address(host).is_loopback:
            restrict_ice_hosts([host])
    except ValueError:
        if host == "localhost":
            restrict_ice_hosts(["127.0.0.1"])
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
