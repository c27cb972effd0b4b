"""Seeds for the matrix_txn target: real Synapse transactions. Starts the
test venv's Synapse (as tests/common/synapse.rs does) with an appservice
registration whose URL is a recorder here, then a user DMs the bot, the bot
joins (as_token), and the user sends `!live` commands, HTML, an edit, a
reaction, a topic, a rename and a redaction. Every transaction body Synapse
PUTs is written to OUT_DIR/synapse_txn_N.json.

    /work/main/.venv/bin/python fuzz/capture/synapse_txns.py OUT_DIR
"""
import base64
import http.server
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

SERVER = "localhost"
AS_TOKEN, HS_TOKEN = "as-token-" + "a" * 40, "hs-token-" + "b" * 40
received = []


class Recorder(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def reply(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_PUT(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if "/transactions/" in self.path:
            received.append(body)
            return self.reply(200, {})
        self.reply(404, {"errcode": "M_UNRECOGNIZED"})

    def do_GET(self):
        self.reply(404, {"errcode": "M_NOT_FOUND"})

    do_POST = do_GET


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def call(base, method, path, token, body=None):
    req = urllib.request.Request(base + path, method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json",
                                          **({"Authorization": "Bearer " + token} if token else {})})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read() or b"{}")


def main(out):
    os.makedirs(out, exist_ok=True)
    rec = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=rec.serve_forever, daemon=True).start()
    d = tempfile.mkdtemp(prefix="roomcast-synapse-capture-")
    port = free_port()
    with open(f"{d}/registration.yaml", "w") as f:
        f.write(f"""id: roomcast
url: "http://127.0.0.1:{rec.server_address[1]}"
as_token: "{AS_TOKEN}"
hs_token: "{HS_TOKEN}"
sender_localpart: roomcast
namespaces:
  users: [{{exclusive: true, regex: '@_roomcast_.*:localhost'}}]
  aliases: [{{exclusive: true, regex: '#live_.*:localhost'}}]
  rooms: []
rate_limited: false
""")
    seed = base64.b64encode(os.urandom(32)).decode().rstrip("=")
    with open(f"{d}/signing.key", "w") as f:
        f.write(f"ed25519 a_test {seed}\n")
    rc = "{per_second: 9999, burst_count: 9999}"
    with open(f"{d}/homeserver.yaml", "w") as f:
        f.write(f"""server_name: "{SERVER}"
pid_file: {d}/homeserver.pid
listeners:
  - {{port: {port}, bind_addresses: ['127.0.0.1'], type: http, tls: false, x_forwarded: false,
     resources: [{{names: [client], compress: false}}]}}
database: {{name: sqlite3, args: {{database: {d}/homeserver.db}}}}
media_store_path: {d}/media_store
signing_key_path: "{d}/signing.key"
macaroon_secret_key: "capture"
form_secret: "capture"
report_stats: false
trusted_key_servers: []
suppress_key_server_warning: true
enable_registration: true
enable_registration_without_verification: true
bcrypt_rounds: 4
app_service_config_files: ["{d}/registration.yaml"]
presence: {{enabled: false}}
rc_message: {rc}
rc_registration: {rc}
rc_joins: {{local: {rc}, remote: {rc}}}
""")
    proc = subprocess.Popen([sys.executable, "-m", "synapse.app.homeserver", "--config-path",
                             f"{d}/homeserver.yaml"], cwd=d, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/_matrix/client/v3"
    try:
        deadline = time.time() + 60
        while True:
            try:
                call(f"http://127.0.0.1:{port}", "GET", "/_matrix/client/versions", None)
                break
            except Exception:
                if time.time() > deadline:
                    raise
                time.sleep(0.2)
        alice = call(base, "POST", "/register", None, {
            "username": "alice", "password": "alice-password-1",
            "auth": {"type": "m.login.dummy"}})["access_token"]
        bot = f"@roomcast:{SERVER}"
        room = call(base, "POST", "/createRoom", alice, {
            "is_direct": True, "invite": [bot], "preset": "trusted_private_chat",
            "name": "Alice and roomcast"})["room_id"]
        q = urllib.parse.quote
        call(base, "POST", f"/join/{q(room)}?user_id={q(bot)}", AS_TOKEN, {})
        n = [0]

        def send(kind, content):
            n[0] += 1
            return call(base, "PUT", f"/rooms/{q(room)}/send/{kind}/t{n[0]}", alice, content)["event_id"]

        send("m.room.message", {"msgtype": "m.text", "body": "!live help"})
        first = send("m.room.message", {"msgtype": "m.text", "body": "!live new demo"})
        send("m.room.message", {"msgtype": "m.text", "body": "!live title demo Friday night ✨",
                                "format": "org.matrix.custom.html",
                                "formatted_body": "<b>!live</b> title demo Friday night ✨"})
        send("m.room.message", {"msgtype": "m.text", "body": " * !live new demo2",
                                "m.new_content": {"msgtype": "m.text", "body": "!live new demo2"},
                                "m.relates_to": {"rel_type": "m.replace", "event_id": first}})
        send("m.reaction", {"m.relates_to": {"rel_type": "m.annotation", "event_id": first, "key": "👍"}})
        send("m.room.message", {"msgtype": "m.notice", "body": "!live link demo 2h"})
        call(base, "PUT", f"/rooms/{q(room)}/state/m.room.topic/", alice, {"topic": "streams on Fridays"})
        call(base, "PUT", f"/rooms/{q(room)}/state/m.room.name/", alice, {"name": "Renamed"})
        call(base, "PUT", f"/rooms/{q(room)}/redact/{q(first)}/r1", alice, {"reason": "oops"})
        send("m.room.message", {"msgtype": "m.text", "body": "!live delete demo2 --yes"})
        deadline = time.time() + 15
        while time.time() < deadline and sum(len(json.loads(b)["events"]) for b in received) < 14:
            time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait()
    for i, body in enumerate(received):
        path = os.path.join(out, f"synapse_txn_{i}.json")
        with open(path, "wb") as f:
            f.write(body)
        print(path, len(body), "bytes,", len(json.loads(body)["events"]), "events")


if __name__ == "__main__":
    main(sys.argv[1])
