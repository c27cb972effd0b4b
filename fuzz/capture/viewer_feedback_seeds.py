#!/usr/bin/env python3
"""Writes the `viewer_feedback` target's seeds (fuzz/corpus/viewer_feedback/).

The target's input is a list of operations (fuzz_targets/viewer_feedback.rs):
  0 n s      a live video frame of n % 40 + 1 packets
  1 s        a live audio frame
  2 len …    an RTCP packet of len bytes (the viewer's feedback, after SRTCP)
  3 t        the clock moves t * 4 ms (sender reports)
  4 p f      a replay begins
  5          the next live keyframe went out
The RTCP is laid out as Chromium sends it: generic NACKs (RFC 4585 §6.2.1,
one FCI entry per lost packet and a bitmask of the 16 after it), receiver
reports (RFC 3550 §6.4.2) and PLI (RFC 4585 §6.3.1).

    python3 fuzz/capture/viewer_feedback_seeds.py fuzz/corpus/viewer_feedback
"""
import os
import struct
import sys

VIDEO, AUDIO = 0x1111, 0x3333  # the target's SSRCs
SENDER = 0xABCD  # the viewer's own SSRC
FIRST_SEQ = 1000  # the target's first video sequence number


def video(n, size):
    return bytes([0, n, size])


def audio(size):
    return bytes([1, size])


def rtcp(packet):
    return bytes([2, len(packet)]) + packet


def tick(t):
    return bytes([3, t])


def replay(packets, frames):
    return bytes([4, packets, frames])


def live():
    return bytes([5])


def nack(entries, ssrc=VIDEO):
    fci = b"".join(struct.pack("!HH", pid, blp) for pid, blp in entries)
    words = (8 + len(fci)) // 4
    return struct.pack("!BBHII", 0x81, 205, words, SENDER, ssrc) + fci


def receiver_report(ssrcs):
    blocks = b"".join(struct.pack("!IIIIII", s, 0, 1000, 0, 0, 0) for s in ssrcs)
    return struct.pack("!BBHI", 0x80 | len(ssrcs), 201, (4 + len(blocks)) // 4, SENDER) + blocks


def pli(ssrc=VIDEO):
    return struct.pack("!BBHII", 0x81, 206, 2, SENDER, ssrc)


SEEDS = {
    # A keyframe and delta frames; a NACK for two packets of the keyframe.
    "nack_keyframe": video(29, 250) + tick(8) + video(8, 250) + audio(120) + tick(8)
    + rtcp(nack([(FIRST_SEQ + 3, 0b101)])) + video(8, 250),
    # Both SSRCs reported: the mid extension ends; a second on, sender reports.
    "rr_then_reports": video(29, 250) + audio(120) + rtcp(receiver_report([VIDEO, AUDIO]))
    + video(8, 250) + audio(120) + tick(255) + video(8, 250) + tick(10),
    # A replayed GOP stays NACKable until the next live keyframe.
    "replay_then_live": replay(60, 40) + b"".join(video(39, 200) for _ in range(30))
    + rtcp(nack([(FIRST_SEQ + 1, 0xFFFF)])) + live() + video(29, 250)
    + rtcp(nack([(FIRST_SEQ + 1, 0xFFFF)])),
    # A NACK flood: the last frames asked for again and again.
    "nack_flood": b"".join(video(39, 250) for _ in range(5))
    + b"".join(rtcp(nack([(FIRST_SEQ + 17 * i, 0xFFFF) for i in range(12)])) for _ in range(6))
    + tick(250) + tick(10) + rtcp(nack([(FIRST_SEQ + 100, 0xFFFF)])),
    # Feedback not for us, a PLI, sequence numbers across the wrap.
    "foreign_feedback": video(10, 100) + rtcp(nack([(FIRST_SEQ + 5, 1)], ssrc=0x9999))
    + rtcp(pli()) + rtcp(nack([(65535, 0xFFFF), (0, 0)])) + rtcp(receiver_report([0x4444])),
}

if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "fuzz/corpus/viewer_feedback"
    os.makedirs(out, exist_ok=True)
    for name, data in SEEDS.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
        print(name, len(data))
