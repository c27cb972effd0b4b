"""Seeds for the dtls_handshake target (see fuzz_targets/dtls_handshake.rs
for the framing).

1. A real client's flights, as raw datagrams: `openssl s_client -dtls1_2`
   (with a client certificate and use_srtp, as a WebRTC peer) completes a
   handshake with `openssl s_server` through a UDP recorder on loopback,
   which keeps what the client sent: ClientHello (the first: roomcast asks
   for no cookie), flight 5 (Certificate, ClientKeyExchange, CertificateVerify,
   ChangeCipherSpec, Finished in epoch 1), application data, close_notify.
   Captured once with the default MTU and once with `-mtu 300`, where
   flight 5 spans several datagrams. Seeds: the flights in order; flight 5
   last datagram first; flight 5 with ChangeCipherSpec and Finished packed
   in one datagram ahead of the rest (as browsers send them). The target's
   server has other keys, so these get as far as the records it can read
   without them (flight 5's Finished is early, and held).
2. Operations on the target's in-process client (str0m's DTLS): a
   handshake in order; flight 5 delivered last datagram first at a small
   MTU, and split into records, last first; flight 4 lost and resent after
   the server's 250 ms timer; flight 5's last datagram lost and resent by
   the client's timer; corrupted copies of the Finished flooding the held
   datagrams before the real flight; a client that never answers (the
   server gives up); a client offering DTLS 1.3 too.

    python3 fuzz/capture/dtls_seeds.py OUT_DIR
"""
import os
import select
import socket
import struct
import subprocess
import sys
import tempfile
import time


def records(d):
    out = []
    while len(d) >= 13:
        n = 13 + struct.unpack("!H", d[11:13])[0]
        out.append(d[:n])
        d = d[n:]
    if d:
        out.append(d)
    return out


def make_cert(dir, name):
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", f"/CN={name}",
         "-keyout", os.path.join(dir, name + ".key"), "-out", os.path.join(dir, name + ".crt")],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def free_udp_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def capture_openssl(mtu=None):
    """The datagrams openssl s_client sends in one handshake, in order."""
    with tempfile.TemporaryDirectory() as dir:
        make_cert(dir, "server")
        make_cert(dir, "client")
        port = free_udp_port()
        server = subprocess.Popen(
            ["openssl", "s_server", "-dtls1_2", "-accept", f"127.0.0.1:{port}",
             "-cert", os.path.join(dir, "server.crt"), "-key", os.path.join(dir, "server.key"),
             "-Verify", "1", "-use_srtp", "SRTP_AES128_CM_SHA1_80", "-naccept", "1"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        proxy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        proxy.bind(("127.0.0.1", 0))
        # s_server prints ACCEPT once it listens.
        deadline = time.time() + 10
        while time.time() < deadline and b"ACCEPT" not in server.stdout.readline():
            pass
        args = ["openssl", "s_client", "-dtls1_2", "-connect", f"127.0.0.1:{proxy.getsockname()[1]}",
                "-cert", os.path.join(dir, "client.crt"), "-key", os.path.join(dir, "client.key"),
                "-use_srtp", "SRTP_AES128_CM_SHA1_80"]
        if mtu:
            args += ["-mtu", str(mtu)]
        client = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT)
        sent, client_addr, said_hello, output = [], None, False, b""
        deadline = time.time() + 15
        while time.time() < deadline:
            ready, _, _ = select.select([proxy, client.stdout], [], [], 0.2)
            if client.stdout in ready:
                chunk = os.read(client.stdout.fileno(), 65536)
                if not chunk:
                    break
                output += chunk
                # Handshake done: some application data, then close (EOF).
                if b"Verify return code" in output and not said_hello:
                    said_hello = True
                    client.stdin.write(b"hello roomcast\n")
                    client.stdin.flush()
                    client.stdin.close()
            if proxy in ready:
                d, addr = proxy.recvfrom(65536)
                if addr[1] == port:
                    if client_addr:
                        proxy.sendto(d, client_addr)
                else:
                    client_addr = addr
                    sent.append(d)
                    proxy.sendto(d, ("127.0.0.1", port))
        client.kill()
        server.kill()
        client.wait()
        server.wait()
        assert said_hello, "openssl did not complete the handshake"
        return sent


def raw(d):
    return bytes([4]) + struct.pack("!H", len(d)) + d


def is_hello(d):
    return d[0] == 22 and d[3:5] == b"\0\0" and d[13] == 1


def flights(sent):
    """(the first ClientHello, flight 5's datagrams, the rest). s_server asks
    for a cookie and the client says hello again (message_seq 1); roomcast
    asks for none, so the first hello is what it would get."""
    hellos = [i for i, d in enumerate(sent) if is_hello(d)]
    hello = sent[hellos[0]]
    rest = sent[hellos[-1] + 1:]
    # Flight 5 ends with the first datagram holding an epoch-1 record.
    end = next(i for i, d in enumerate(rest) if any(r[3:5] != b"\0\0" for r in records(d)))
    return hello, rest[:end + 1], rest[end + 1:]


DEFAULT_MTU = (1150 - 200) // 8  # header byte: the client's MTU 1144
SMALL_MTU = (300 - 200) // 8  # 296


def ops(header, *parts):
    return bytes([header]) + b"".join(bytes(p) for p in parts)


def main(out):
    os.makedirs(out, exist_ok=True)
    seeds = {}
    for name, mtu in (("openssl", None), ("openssl_mtu300", 300)):
        hello, f5, after = flights(capture_openssl(mtu))
        seeds[f"{name}_in_order"] = ops(DEFAULT_MTU, raw(hello), *map(raw, f5), *map(raw, after))
        seeds[f"{name}_flight5_last_first"] = ops(DEFAULT_MTU, raw(hello), *map(raw, reversed(f5)))
        recs = [r for d in f5 for r in records(d)]
        ccs = next(i for i, r in enumerate(recs) if r[0] == 20)
        packed = [b"".join(recs[ccs:])] + recs[:ccs]
        seeds[f"{name}_ccs_finished_first"] = ops(DEFAULT_MTU, raw(hello), *map(raw, packed))

    deliver_all = [0, 0] * 8
    seeds["client_in_order"] = ops(
        DEFAULT_MTU, [0, 0], [6, 255], deliver_all, [6, 255], [7, 5], b"hello", deliver_all)
    seeds["client_flight5_last_first_mtu296"] = ops(
        SMALL_MTU, [0, 0], [6, 255], [0, 0x80] * 12, [6, 255], [7, 5], b"hello", deliver_all)
    seeds["client_flight5_records_last_first"] = ops(
        SMALL_MTU, [0, 0], [6, 255], [2, 0x80] * 12, [6, 255])
    seeds["client_flight4_lost"] = ops(
        DEFAULT_MTU, [0, 0], [5, 16], [5, 23], [6, 255], deliver_all, [6, 255])
    seeds["client_finished_lost"] = ops(
        SMALL_MTU, [0, 0], [6, 255], [1, 0x80], deliver_all, [5, 32], [5, 20], deliver_all,
        [6, 255])
    seeds["client_held_flood"] = ops(
        SMALL_MTU, [0, 0], [6, 255], *[[3, 0x80, 20 + i, 1 + i] for i in range(8)],
        deliver_all, [6, 255])
    seeds["client_silent_server_gives_up"] = ops(DEFAULT_MTU, [0, 0], *[[5, 100]] * 8)
    seeds["client_offers_dtls13"] = ops(
        0x80 | DEFAULT_MTU, [0, 0], [6, 255], deliver_all, [6, 255], deliver_all)

    for name, data in seeds.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
        print(name, len(data))


if __name__ == "__main__":
    main(sys.argv[1])
