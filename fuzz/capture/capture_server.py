"""The throwaway roomcast config the capture scripts start the server with."""


def write_config(d, key):
    """Writes `d`/config.toml (loopback, port 0, SQLite in `d`, one stream
    "capture" with `key`) and returns its path."""
    path = f"{d}/config.toml"
    with open(path, "w") as f:
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
key = "{key}"
""")
    return path
