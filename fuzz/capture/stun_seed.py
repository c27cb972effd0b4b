"""Seeds for the ice_net target: an ICE-TCP stream (RFC 4571 frames) that
starts with a STUN binding request laid out as Chromium sends one (USERNAME,
GOOG-NETWORK-INFO, ICE-CONTROLLING, USE-CANDIDATE, PRIORITY,
MESSAGE-INTEGRITY, FINGERPRINT), signed with the target's session password,
then a DTLS-looking and an RTP-looking frame, and one datagram longer than
the reader accepts.

    python3 fuzz/capture/stun_seed.py OUT_DIR
"""
import binascii
import hashlib
import hmac
import os
import struct
import sys

UFRAG, PWD = b"fuzzufrag", b"fuzzpasswordfuzzpassword"
COOKIE = 0x2112A442


def attr(t, v):
    return struct.pack("!HH", t, len(v)) + v + b"\0" * (-len(v) % 4)


def binding_request(use_candidate=True):
    txid = os.urandom(12)
    attrs = attr(0x0006, UFRAG + b":remoteufrag")
    attrs += attr(0xC057, struct.pack("!HH", 1, 10))
    attrs += attr(0x802A, os.urandom(8))
    if use_candidate:
        attrs += attr(0x0025, b"")
    attrs += attr(0x0024, struct.pack("!I", 0x6E7F1EFF))
    # MESSAGE-INTEGRITY over the message with the length covering it (RFC 5389 15.4).
    head = struct.pack("!HHI", 0x0001, len(attrs) + 24, COOKIE) + txid
    mac = hmac.new(PWD, head + attrs, hashlib.sha1).digest()
    attrs += attr(0x0008, mac)
    head = struct.pack("!HHI", 0x0001, len(attrs) + 8, COOKIE) + txid
    crc = (binascii.crc32(head + attrs) ^ 0x5354554E) & 0xFFFFFFFF
    attrs += attr(0x8028, struct.pack("!I", crc))
    return struct.pack("!HHI", 0x0001, len(attrs), COOKIE) + txid + attrs


def frame(data):
    return struct.pack("!H", len(data)) + data


if __name__ == "__main__":
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    dtls = bytes([22, 0xFE, 0xFD]) + b"\0" * 8 + struct.pack("!H", 20) + os.urandom(20)
    rtp = bytes([0x80, 96]) + struct.pack("!HII", 1, 3000, 0x1234) + os.urandom(40)
    seeds = {
        "chromium_like_check_then_media.bin": frame(binding_request()) + frame(dtls) + frame(rtp),
        "check_without_use_candidate.bin": frame(binding_request(False)),
        "oversized_frame.bin": frame(binding_request()) + struct.pack("!H", 3000) + b"\0" * 16,
    }
    for name, data in seeds.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
        print(name, len(data))
