#!/usr/bin/env python3
"""WHEP viewer built on aiortc: an independent WebRTC stack for roomcast's tests.

It POSTs a recvonly video+audio offer to a WHEP URL, sets the answer, receives the
tracks and *decodes* them (aiortc's ``track.recv()`` returns decoded frames), then
prints one JSON line and exits.

Two modes:

* count mode (default): stop as soon as ``--frames`` video frames and
  ``--audio-frames`` audio frames were decoded, or fail at ``--timeout``.
* ``--duration S``: watch for S seconds whatever happens (the caller does
  something meanwhile), print a progress line every second and report the
  number of decoded frames per one-second bucket.

Every line on stdout is a JSON object with a ``type``: ``progress`` (with
``--progress`` or ``--duration``), ``event`` (connection state changes, with
progress on) and, last, ``result``. The result carries:

    video_frames, audio_frames, video_codec, audio_codec, width, height,
    first_frame_ms (WHEP POST -> first decoded video frame), first_audio_ms,
    audio_rms (0..1, full scale = 1), audio_freq_hz (zero-crossing estimate on
    about one second of decoded audio), decode_errors, connection_states,
    video_buckets / audio_buckets (frames decoded in each second since the POST),
    whep_status, location, delete_status, ok, error.

With ``--stdin-control`` a line ``stop`` on stdin (or stdin closing) ends the
run early; the result is printed as in duration mode.

Exit status: 0 when the goal was met (count mode) or the session connected and
decoded at least one video frame (duration mode); 1 otherwise; 2 on bad usage.

Only loopback is used when the WHEP URL points at loopback: aioice would
otherwise skip 127.0.0.1 when gathering host candidates, and no STUN/TURN
server is ever configured (aiortc's default is a public STUN server).
"""

from __future__ import annotations

import argparse
import array
import asyncio
import ipaddress
import json
import logging
import math
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

try:
    import aioice.ice
    from aiortc import (
        RTCConfiguration,
        RTCPeerConnection,
        RTCSessionDescription,
    )
    from aiortc.mediastreams import MediaStreamError
    import aiortc.rtcrtpreceiver as rtcrtpreceiver
except ImportError as exc:  # pragma: no cover - depends on the environment
    print(
        json.dumps(
            {
                "type": "result",
                "ok": False,
                "error": f"aiortc is not importable ({exc}); run ./scripts/test.sh "
                "to create the .venv with aiortc",
            }
        ),
        flush=True,
    )
    sys.exit(1)


def emit(obj: dict) -> None:
    print(json.dumps(obj, sort_keys=True), flush=True)


class DecodeErrorCounter(logging.Handler):
    """Counts aiortc's 'failed to decode' warnings (one per undecodable frame)."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.count = 0
        self.samples: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if "failed to decode" in msg:
            self.count += 1
            if len(self.samples) < 5:
                self.samples.append(msg)


class Stats:
    def __init__(self) -> None:
        self.t_post: float | None = None
        self.video_frames = 0
        self.audio_frames = 0
        self.width: int | None = None
        self.height: int | None = None
        self.first_frame_ms: float | None = None
        self.first_audio_ms: float | None = None
        self.video_buckets: list[int] = []
        self.audio_buckets: list[int] = []
        self.audio_window: list[int] = []
        self.audio_window_rate: int | None = None
        self.audio_rms: float | None = None
        self.audio_freq_hz: float | None = None
        self.decoder_codecs: dict[str, str] = {}
        self.connection_states: list[str] = []
        self.track_kinds: list[str] = []

    def elapsed(self) -> float:
        return time.monotonic() - (self.t_post or time.monotonic())

    def bump(self, buckets: list[int]) -> None:
        idx = int(self.elapsed())
        while len(buckets) <= idx:
            buckets.append(0)
        buckets[idx] += 1


STATS = Stats()

# Audio analysis: skip the first 0.5 s (start-up transients), then analyse ~1 s.
AUDIO_SKIP_FRAMES = 25
AUDIO_WINDOW_SECONDS = 1.0


def record_decoders() -> None:
    """Wrap aiortc's decoder factory to learn which codecs were really decoded."""
    original = rtcrtpreceiver.get_decoder

    def get_decoder(codec):  # type: ignore[no-untyped-def]
        kind, _, name = codec.mimeType.partition("/")
        STATS.decoder_codecs[kind.lower()] = name
        return original(codec)

    rtcrtpreceiver.get_decoder = get_decoder


def restrict_ice_hosts(hosts: list[str]) -> None:
    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        out = []
        for h in hosts:
            ip = ipaddress.ip_address(h)
            if (ip.version == 4 and use_ipv4) or (ip.version == 6 and use_ipv6):
                out.append(h)
        return out

    aioice.ice.get_host_addresses = get_host_addresses


def analyse_audio(samples: list[int], rate: int) -> tuple[float, float]:
    """RMS (full scale 1.0) and a zero-crossing frequency estimate with hysteresis."""
    if not samples:
        return 0.0, 0.0
    acc = 0.0
    for s in samples:
        acc += float(s) * float(s)
    rms = math.sqrt(acc / len(samples)) / 32768.0
    threshold = max(64, int(rms * 32768.0 * 0.25))
    state = 0
    crossings = 0
    for s in samples:
        if s > threshold and state <= 0:
            if state < 0:
                crossings += 1
            state = 1
        elif s < -threshold and state >= 0:
            if state > 0:
                crossings += 1
            state = -1
    freq = crossings / 2.0 / (len(samples) / float(rate))
    return rms, freq


def audio_channel0(frame) -> tuple[list[int], int]:  # type: ignore[no-untyped-def]
    """First channel of a decoded audio frame as int16 samples."""
    fmt = frame.format.name
    channels = len(frame.layout.channels)
    if fmt == "s16":  # packed, interleaved
        data = array.array("h", bytes(frame.planes[0]))
        return list(data[0 : frame.samples * channels : channels]), frame.sample_rate
    if fmt == "s16p":
        data = array.array("h", bytes(frame.planes[0]))
        return list(data[: frame.samples]), frame.sample_rate
    if fmt in ("flt", "fltp"):
        data = array.array("f", bytes(frame.planes[0]))
        step = channels if fmt == "flt" else 1
        return [
            int(max(-1.0, min(1.0, v)) * 32767) for v in data[0 : frame.samples * step : step]
        ], frame.sample_rate
    return [], frame.sample_rate


async def consume(track, done: asyncio.Event, args) -> None:  # type: ignore[no-untyped-def]
    kind = track.kind
    STATS.track_kinds.append(kind)
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        now_ms = STATS.elapsed() * 1000.0
        if kind == "video":
            STATS.video_frames += 1
            STATS.bump(STATS.video_buckets)
            if STATS.first_frame_ms is None:
                STATS.first_frame_ms = round(now_ms, 1)
            STATS.width, STATS.height = frame.width, frame.height
        else:
            STATS.audio_frames += 1
            STATS.bump(STATS.audio_buckets)
            if STATS.first_audio_ms is None:
                STATS.first_audio_ms = round(now_ms, 1)
            if STATS.audio_frames > AUDIO_SKIP_FRAMES and STATS.audio_rms is None:
                samples, rate = audio_channel0(frame)
                STATS.audio_window_rate = rate
                STATS.audio_window.extend(samples)
                if len(STATS.audio_window) >= int(rate * AUDIO_WINDOW_SECONDS):
                    rms, freq = analyse_audio(STATS.audio_window, rate)
                    STATS.audio_rms = round(rms, 4)
                    STATS.audio_freq_hz = round(freq, 1)
                    STATS.audio_window = []
        if args.duration is None and goal_met(args):
            done.set()


def goal_met(args) -> bool:  # type: ignore[no-untyped-def]
    return STATS.video_frames >= args.frames and STATS.audio_frames >= args.audio_frames


def http(method: str, url: str, body: bytes | None, timeout: float) -> tuple[int, dict, str]:
    req = urllib.request.Request(url, data=body, method=method)
    if body is not None:
        req.add_header("Content-Type", "application/sdp")
        req.add_header("Accept", "application/sdp")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers.items()), resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as err:
        text = err.read().decode("utf-8", "replace")
        return err.code, dict(err.headers.items()), text


def header(headers: dict, name: str) -> str | None:
    for k, v in headers.items():
        if k.lower() == name.lower():
            return v
    return None


def sdp_codec(sdp: str, kind: str) -> str | None:
    """First payload type's codec name of the first m=<kind> section."""
    lines = sdp.replace("\r\n", "\n").split("\n")
    pts: list[str] = []
    in_section = False
    rtpmap: dict[str, str] = {}
    for line in lines:
        if line.startswith("m="):
            if in_section:
                break
            parts = line[2:].split()
            in_section = bool(parts) and parts[0] == kind and parts[1] != "0"
            pts = parts[3:] if in_section else []
        elif in_section and line.startswith("a=rtpmap:"):
            pt, _, rest = line[len("a=rtpmap:") :].partition(" ")
            rtpmap[pt] = rest.split("/")[0]
    for pt in pts:
        if pt in rtpmap and rtpmap[pt].lower() not in ("rtx", "red", "ulpfec", "flexfec-03"):
            return rtpmap[pt]
    return None


async def run(args) -> int:  # type: ignore[no-untyped-def]
    result: dict = {"type": "result", "ok": False, "url": args.url}
    deadline = time.monotonic() + (args.duration if args.duration is not None else args.timeout)
    done = asyncio.Event()
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    tasks: list[asyncio.Task] = []
    location: str | None = None

    @pc.on("connectionstatechange")
    async def on_state() -> None:
        STATS.connection_states.append(pc.connectionState)
        if args.progress:
            emit(
                {
                    "type": "event",
                    "name": "connectionstatechange",
                    "state": pc.connectionState,
                    "t_ms": round(STATS.elapsed() * 1000.0, 1),
                }
            )
        if pc.connectionState in ("failed", "closed"):
            done.set()

    @pc.on("track")
    def on_track(track) -> None:  # type: ignore[no-untyped-def]
        tasks.append(asyncio.ensure_future(consume(track, done, args)))

    stop_requested = False
    if args.stdin_control:
        loop = asyncio.get_running_loop()

        def read_stdin() -> None:
            nonlocal stop_requested
            for line in sys.stdin:
                if line.strip() == "stop":
                    break
            stop_requested = True
            loop.call_soon_threadsafe(done.set)

        threading.Thread(target=read_stdin, daemon=True).start()

    try:
        pc.addTransceiver("video", direction="recvonly")
        pc.addTransceiver("audio", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())  # gathers candidates

        STATS.t_post = time.monotonic()
        try:
            status, headers, body = await asyncio.to_thread(
                http, "POST", args.url, pc.localDescription.sdp.encode(), args.http_timeout
            )
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            result["error"] = f"WHEP POST {args.url} failed: {reason}"
            return 1
        result["whep_status"] = status
        if status != 201:
            result["error"] = f"WHEP POST answered {status}, expected 201: {body[:500]}"
            result["whep_body"] = body[:2000]
            return 1
        loc = header(headers, "Location")
        if loc:
            location = urllib.parse.urljoin(args.url, loc)
        result["location"] = loc
        result["etag"] = header(headers, "ETag")
        result["answer_content_type"] = header(headers, "Content-Type")
        result["answer_candidates"] = [
            line.strip()[2:]
            for line in body.splitlines()
            if line.startswith("a=candidate:")
        ]
        result["answer_ice_lite"] = "a=ice-lite" in body
        result["sdp_video_codec"] = sdp_codec(body, "video")
        result["sdp_audio_codec"] = sdp_codec(body, "audio")
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
        except Exception as exc:  # noqa: BLE001 - report whatever aiortc says
            result["error"] = f"aiortc rejected the answer SDP: {exc!r}"
            result["answer_sdp"] = body[:4000]
            return 1

        next_tick = time.monotonic() + 1.0
        while True:
            now = time.monotonic()
            if now >= deadline or done.is_set():
                break
            try:
                await asyncio.wait_for(done.wait(), timeout=min(next_tick, deadline) - now)
            except asyncio.TimeoutError:
                pass
            if args.progress and time.monotonic() >= next_tick:
                next_tick += 1.0
                emit(
                    {
                        "type": "progress",
                        "t_ms": round(STATS.elapsed() * 1000.0, 1),
                        "video_frames": STATS.video_frames,
                        "audio_frames": STATS.audio_frames,
                        "connection_state": pc.connectionState,
                        "decode_errors": DECODE_ERRORS.count,
                    }
                )

        result["stopped_early"] = stop_requested
        if args.duration is not None or (stop_requested and not goal_met(args)):
            result["ok"] = STATS.video_frames > 0 and "failed" not in STATS.connection_states
            if not result["ok"]:
                result["error"] = "no video frame decoded" if STATS.video_frames == 0 else (
                    "connection failed"
                )
        elif goal_met(args):
            result["ok"] = True
        else:
            result["error"] = (
                f"gave up: decoded {STATS.video_frames}/{args.frames} video and "
                f"{STATS.audio_frames}/{args.audio_frames} audio frames "
                f"(connection {pc.connectionState}, states {STATS.connection_states})"
            )
        return 0 if result["ok"] else 1
    finally:
        result.update(
            {
                "video_frames": STATS.video_frames,
                "audio_frames": STATS.audio_frames,
                "video_codec": STATS.decoder_codecs.get("video") or result.get("sdp_video_codec"),
                "audio_codec": STATS.decoder_codecs.get("audio") or result.get("sdp_audio_codec"),
                "decoded_codecs": STATS.decoder_codecs,
                "width": STATS.width,
                "height": STATS.height,
                "first_frame_ms": STATS.first_frame_ms,
                "first_audio_ms": STATS.first_audio_ms,
                "audio_rms": STATS.audio_rms,
                "audio_freq_hz": STATS.audio_freq_hz,
                "audio_sample_rate": STATS.audio_window_rate,
                "decode_errors": DECODE_ERRORS.count,
                "decode_error_samples": DECODE_ERRORS.samples,
                "connection_states": STATS.connection_states,
                "tracks": STATS.track_kinds,
                "video_buckets": STATS.video_buckets,
                "audio_buckets": STATS.audio_buckets,
            }
        )
        if location and not args.no_delete:
            try:
                status, _, _ = await asyncio.to_thread(http, "DELETE", location, None, 5.0)
                result["delete_status"] = status
            except (urllib.error.URLError, OSError) as exc:
                result["delete_status"] = None
                result["delete_error"] = str(getattr(exc, "reason", exc))
        for t in tasks:
            t.cancel()
        try:
            await asyncio.wait_for(pc.close(), timeout=5.0)
        except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - best effort
            pass
        emit(result)


DECODE_ERRORS = DecodeErrorCounter()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("url", help="WHEP endpoint, e.g. http://127.0.0.1:8080/whep/demo")
    p.add_argument("--frames", type=int, default=150, help="video frames to decode (count mode)")
    p.add_argument("--audio-frames", type=int, default=50, help="audio frames to decode (count mode)")
    p.add_argument("--timeout", type=float, default=60.0, help="give up after this many seconds")
    p.add_argument(
        "--duration",
        type=float,
        default=None,
        help="watch for this many seconds and report per-second buckets (implies --progress)",
    )
    p.add_argument("--progress", action="store_true", help="print a progress line every second")
    p.add_argument(
        "--ice-host",
        action="append",
        default=None,
        help="local address(es) for ICE host candidates (default: 127.0.0.1 for a loopback URL)",
    )
    p.add_argument("--http-timeout", type=float, default=15.0)
    p.add_argument("--no-delete", action="store_true", help="do not DELETE the WHEP session at the end")
    p.add_argument(
        "--stdin-control",
        action="store_true",
        help='a line "stop" on stdin, or stdin closing, ends the run early (result still printed)',
    )
    p.add_argument("--verbose", action="store_true", help="aiortc/aioice debug logs on stderr")
    args = p.parse_args()
    if args.duration is not None:
        args.progress = True

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    logging.getLogger("aiortc.rtcrtpreceiver").addHandler(DECODE_ERRORS)

    host = urllib.parse.urlsplit(args.url).hostname or ""
    hosts = args.ice_host
    if hosts is None:
        try:
            if ipaddress.ip_address(host).is_loopback:
                hosts = [host]
        except ValueError:
            if host == "localhost":
                hosts = ["127.0.0.1"]
    if hosts:
        restrict_ice_hosts(hosts)
    record_decoders()
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
