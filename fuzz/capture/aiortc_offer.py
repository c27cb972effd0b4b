"""Prints aiortc's WHIP offer (sendonly H.264 + Opus, with candidates) as
tests/py/whip_publisher.py makes it. Run with the test venv's python."""
import asyncio

from aiortc import RTCPeerConnection
from aiortc.contrib.media import MediaPlayer


async def main():
    pc = RTCPeerConnection()
    player = MediaPlayer("testsrc=size=640x360:rate=30", format="lavfi")
    tone = MediaPlayer("sine=frequency=440", format="lavfi")
    pc.addTransceiver(player.video, direction="sendonly")
    pc.addTransceiver(tone.audio, direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    print(pc.localDescription.sdp, end="")
    await pc.close()


asyncio.run(main())
