#!/usr/bin/env python3
"""Join burst with aiortc: N WHEP joins one after another, each a fresh
RTCPeerConnection. Per join: time to the first decoded video frame (WHEP POST
-> track.recv() returns), and one second after the POST the video receiver's
packetsLost / packetsReceived (aiortc getStats), plus what the kernel dropped:
this process's UDP sockets' drop counters (/proc/net/udp) and the host-wide
Udp RcvbufErrors (/proc/net/snmp; other programs on the host count there too).

Usage: python bench/join_burst.py --url http://127.0.0.1:8080/whep/demo [--joins 30]
Prints one JSON line per join and a summary line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
import urllib.parse

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "py"))
import whep_viewer  # noqa: E402  (aiortc import check, loopback ICE, HTTP helper)
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription  # noqa: E402


def rcvbuf_errors() -> int:
    with open("/proc/net/snmp") as f:
        names, values = [line.split() for line in f if line.startswith("Udp:")][:2]
    return int(values[names.index("RcvbufErrors")])


def socket_drops() -> dict[str, int]:
    """inode -> drops for this process's UDP sockets."""
    mine = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            mine.add(link[8:-1])
    out = {}
    for path in ("/proc/net/udp", "/proc/net/udp6"):
        with open(path) as f:
            for line in list(f)[1:]:
                c = line.split()
                if len(c) > 12 and c[9] in mine:
                    out[c[9]] = int(c[-1])
    return out


async def one_join(url: str) -> dict:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    first: dict = {}
    tasks = []

    @pc.on("track")
    def on_track(track) -> None:  # type: ignore[no-untyped-def]
        async def consume() -> None:
            while True:
                try:
                    await track.recv()
                except Exception:
                    return
                if track.kind == "video" and "t" not in first:
                    first["t"] = time.monotonic()

        tasks.append(asyncio.ensure_future(consume()))

    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    drops0, rcvbuf0 = socket_drops(), rcvbuf_errors()
    t0 = time.monotonic()
    status, headers, body = await asyncio.to_thread(
        whep_viewer.http, "POST", url, pc.localDescription.sdp.encode(), 10.0
    )
    if status != 201:
        await pc.close()
        return {"error": f"WHEP {status}: {body[:200]}"}
    location = urllib.parse.urljoin(url, whep_viewer.header(headers, "location") or "")
    await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
    await asyncio.sleep(max(0.0, t0 + 1.0 - time.monotonic()))
    lost = received = None
    for s in (await pc.getStats()).values():
        if s.type == "inbound-rtp" and s.kind == "video":
            lost, received = s.packetsLost, s.packetsReceived
    drops1, rcvbuf1 = socket_drops(), rcvbuf_errors()
    await pc.close()
    for t in tasks:
        t.cancel()
    await asyncio.to_thread(whep_viewer.http, "DELETE", location, None, 5.0)
    ttff = round((first["t"] - t0) * 1000) if "t" in first else None
    return {
        "ttff_ms": ttff,
        "packets_lost": lost,
        "packets": received,
        "socket_drops": sum(d - drops0.get(i, 0) for i, d in drops1.items()),
        "rcvbuf_errors": rcvbuf1 - rcvbuf0,
    }


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--joins", type=int, default=30)
    args = ap.parse_args()
    whep_viewer.restrict_ice_hosts(["127.0.0.1"])
    rows = []
    for i in range(args.joins):
        row = {"join": i, **(await one_join(args.url))}
        print(json.dumps(row), flush=True)
        rows.append(row)
        # Join at a random point of the GOP, as real viewers do.
        await asyncio.sleep(0.2 + random.random() * 0.8)
    ok = [r for r in rows if "error" not in r and r["ttff_ms"] is not None]
    t = sorted(r["ttff_ms"] for r in ok)

    def q(p: float):  # type: ignore[no-untyped-def]
        return t[min(len(t) - 1, max(0, -(-int(p * 100) * len(t) // 100) - 1))] if t else None

    print(
        json.dumps(
            {
                "summary": "join_burst",
                "client": "aiortc",
                "joins": len(rows),
                "played": len(ok),
                "joins_with_loss": sum(1 for r in ok if r["socket_drops"] > 0 or (r["packets_lost"] or 0) > 0),
                "socket_drops": sum(r["socket_drops"] for r in ok),
                "max_socket_drops": max([0] + [r["socket_drops"] for r in ok]),
                "rcvbuf_errors": sum(r["rcvbuf_errors"] for r in ok),
                "packets_lost": sum(r["packets_lost"] or 0 for r in ok),
                "ttff_p50_ms": q(0.5),
                "ttff_p95_ms": q(0.95),
                "ttff_max_ms": t[-1] if t else None,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    asyncio.run(main())
