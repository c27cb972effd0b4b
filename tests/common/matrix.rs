//! Matrix side of the tests: a roomcast + Synapse pair ([`MatrixEnv`]), a
//! small blocking client-server API client for test users ([`MxUser`]), and
//! an SSE reader for the pages' event feed ([`Sse`]).

use std::io::Write;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::cluster::ClusterSpec;
use super::synapse::{SERVER_NAME, Synapse, free_port};
use super::{
    Lines, Server, ServerOpts, TempDir, drain, http, random_hex, roomcast_bin, wait_until,
};

pub const MX_TIMEOUT: Duration = Duration::from_secs(60);

/// Percent-encodes a path segment (room ids, aliases, user ids, event ids).
pub fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// roomcast with a `[matrix]` section, and the Synapse it is registered with.
pub struct MatrixEnv {
    pub state: TempDir,
    pub http_port: u16,
    pub registration: PathBuf,
    pub synapse: Synapse,
    pub server: Option<Server>,
    /// Extra `[matrix]` lines.
    pub matrix_extra: String,
    /// roomcast's `public_url` is its real address (see [`MatrixEnv::start_browsable`]).
    pub browsable: bool,
    /// `storage.database_url` (default: SQLite in `state`).
    pub database_url: Option<String>,
    /// Extra environment for roomcast (test hooks), from the next start.
    pub server_env: Vec<(String, String)>,
    /// Sections after `[matrix]` (a `[cluster]`), from the next start.
    pub extra_toml: String,
}

impl MatrixEnv {
    /// Writes the registration with `roomcast registration`, starts Synapse
    /// with it, then roomcast, and waits until roomcast pinged Synapse.
    pub fn start(matrix_extra: &str) -> MatrixEnv {
        MatrixEnv::start_inner(matrix_extra, false, None, None)
    }

    /// Like [`MatrixEnv::start`], with roomcast's state in this database.
    pub fn start_with_database(matrix_extra: &str, database_url: Option<String>) -> MatrixEnv {
        MatrixEnv::start_inner(matrix_extra, false, database_url, None)
    }

    /// Like [`MatrixEnv::start`], roomcast being cluster node `node_id` of
    /// `spec` (its database, its secret).
    pub fn start_clustered(matrix_extra: &str, spec: &ClusterSpec, node_id: &str) -> MatrixEnv {
        MatrixEnv::start_inner(
            matrix_extra,
            false,
            Some(spec.database_url.clone()),
            Some((spec, node_id)),
        )
    }

    /// Like [`MatrixEnv::start`], with roomcast's `public_url` set to its real
    /// address, so the widget URL and links the bot writes into rooms open in a
    /// browser.
    pub fn start_browsable(matrix_extra: &str) -> MatrixEnv {
        MatrixEnv::start_inner(matrix_extra, true, None, None)
    }

    fn start_inner(
        matrix_extra: &str,
        browsable: bool,
        database_url: Option<String>,
        cluster: Option<(&ClusterSpec, &str)>,
    ) -> MatrixEnv {
        let state = TempDir::new("roomcast-mx");
        // From `free_port` (below the ephemeral range), not a released port-0
        // bind: the server's own port-0 listeners (WebRTC's ICE-TCP) could
        // draw that one before it binds http, and Synapse's comes from the
        // same allocator.
        let http_port = free_port();
        let registration = state.path().join("registration.yaml");
        let out = Command::new(roomcast_bin())
            .args(["registration", "--url"])
            .arg(format!("http://127.0.0.1:{http_port}"))
            .args(["--server-name", SERVER_NAME, "--output"])
            .arg(&registration)
            .output()
            .expect("run roomcast registration");
        assert!(
            out.status.success(),
            "roomcast registration failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let synapse = Synapse::start(&registration);
        let mut env = MatrixEnv {
            state,
            http_port,
            registration,
            synapse,
            server: None,
            matrix_extra: matrix_extra.to_string(),
            browsable,
            database_url,
            server_env: Vec::new(),
            extra_toml: cluster
                .map(|(spec, id)| spec.section(id, &format!("127.0.0.1:{http_port}")))
                .unwrap_or_default(),
        };
        env.start_roomcast();
        env
    }

    /// Starts roomcast (again) on the same port and state directory, and waits
    /// for its "connected to the homeserver" line.
    pub fn start_roomcast(&mut self) {
        assert!(self.server.is_none());
        let server = Server::start_with(ServerOpts {
            streams: vec![],
            http_listen: Some(format!("127.0.0.1:{}", self.http_port)),
            state_dir: Some(self.state.path().to_path_buf()),
            public_url: self
                .browsable
                .then(|| format!("http://127.0.0.1:{}", self.http_port)),
            database_url: self.database_url.clone(),
            env: self.server_env.clone(),
            extra_toml: self.matrix_section() + &self.extra_toml,
            ..ServerOpts::default()
        });
        server.wait_for_log("matrix: connected to the homeserver", MX_TIMEOUT);
        self.server = Some(server);
    }

    /// The `[matrix]` section every roomcast of this environment has.
    fn matrix_section(&self) -> String {
        format!(
            "[matrix]\nhomeserver_url = \"{}\"\nserver_name = \"{SERVER_NAME}\"\nregistration = \"{}\"\n{}\n",
            self.synapse.base_url(),
            self.registration.display(),
            self.matrix_extra
        )
    }

    /// Another roomcast on the same database and registration (a second
    /// node behind a load balancer), on `http_listen` if given, with
    /// `extra_toml` (a `[cluster]`) after its `[matrix]` section. Synapse's
    /// registration still points at this environment's roomcast.
    pub fn start_other_node(
        &self,
        http_listen: Option<String>,
        extra_toml: &str,
    ) -> (TempDir, Server) {
        let state = TempDir::new("roomcast-mx-node");
        let server = Server::start_with(ServerOpts {
            streams: vec![],
            http_listen,
            state_dir: Some(state.path().to_path_buf()),
            database_url: self.database_url.clone(),
            extra_toml: self.matrix_section() + extra_toml,
            ..ServerOpts::default()
        });
        server.wait_for_log("matrix: connected to the homeserver", MX_TIMEOUT);
        (state, server)
    }

    pub fn stop_roomcast(&mut self) {
        self.server = None;
    }

    pub fn server(&self) -> &Server {
        self.server.as_ref().expect("roomcast is running")
    }

    pub fn server_mut(&mut self) -> &mut Server {
        self.server.as_mut().expect("roomcast is running")
    }

    fn reg_value(&self, key: &str) -> String {
        let text = std::fs::read_to_string(&self.registration).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}: ")))
            .map(|v| v.trim().trim_matches('"').to_string())
            .unwrap_or_else(|| panic!("no {key} in registration.yaml"))
    }

    pub fn hs_token(&self) -> String {
        self.reg_value("hs_token")
    }

    pub fn bot_id(&self) -> String {
        format!("@{}:{SERVER_NAME}", self.reg_value("sender_localpart"))
    }

    /// Registers a user with a random suffix on Synapse.
    pub fn user(&self, name: &str) -> MxUser {
        MxUser::register(
            &self.synapse.base_url(),
            &format!("{name}{}", &random_hex()[..6]),
        )
    }

    /// Stream `name` made with `!live new` in a new DM of `user` with the
    /// bot, its room joined: (key, room id).
    pub fn new_stream_by_dm(&self, user: &MxUser, name: &str) -> (String, String) {
        let bot = self.bot_id();
        let dm = user.dm_bot(&bot);
        new_stream(user, &dm, &bot, name)
    }

    /// PUTs a transaction to roomcast as the homeserver would.
    pub fn put_transaction(&self, txn_id: &str, token: &str, body: &[u8]) -> http::HttpResponse {
        put_transaction_to(self.server(), txn_id, token, body)
    }
}

/// A test user on Synapse.
#[derive(Clone)]
pub struct MxUser {
    pub user_id: String,
    pub token: String,
    base: String,
}

impl MxUser {
    pub fn register(base: &str, username: &str) -> MxUser {
        let body = json!({
            "username": username,
            "password": "test-password-1",
            "auth": {"type": "m.login.dummy"},
            "inhibit_login": false,
        });
        let r = http::request(
            "POST",
            &format!("{base}/_matrix/client/v3/register"),
            &[("Content-Type", "application/json")],
            Some(body.to_string().as_bytes()),
        )
        .expect("register");
        assert_eq!(r.status, 200, "register {username}: {}", r.text());
        let v = r.json().unwrap();
        MxUser {
            user_id: v["user_id"].as_str().unwrap().to_string(),
            token: v["access_token"].as_str().unwrap().to_string(),
            base: base.to_string(),
        }
    }

    /// A request as this user: (status, JSON body).
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let auth = format!("Bearer {}", self.token);
        let b = body.map(|b| b.to_string());
        let mut headers = vec![("Authorization", auth.as_str())];
        if b.is_some() {
            headers.push(("Content-Type", "application/json"));
        }
        let r = http::request(
            method,
            &format!("{}{path}", self.base),
            &headers,
            b.as_deref().map(str::as_bytes),
        )
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        (r.status, r.json().unwrap_or(Value::Null))
    }

    fn ok(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let (status, v) = self.call(method, path, body);
        assert_eq!(status, 200, "{} {method} {path}: {v}", self.user_id);
        v
    }

    /// Sets the global display name (rooms joined afterwards show it).
    pub fn set_display_name(&self, name: &str) {
        self.ok(
            "PUT",
            &format!(
                "/_matrix/client/v3/profile/{}/displayname",
                enc(&self.user_id)
            ),
            Some(&json!({ "displayname": name })),
        );
    }

    pub fn create_room(&self, body: Value) -> String {
        self.ok("POST", "/_matrix/client/v3/createRoom", Some(&body))["room_id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub fn join(&self, room_or_alias: &str) -> String {
        self.ok(
            "POST",
            &format!("/_matrix/client/v3/join/{}", enc(room_or_alias)),
            Some(&json!({})),
        )["room_id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub fn resolve_alias(&self, alias: &str) -> Option<String> {
        let (s, v) = self.call(
            "GET",
            &format!("/_matrix/client/v3/directory/room/{}", enc(alias)),
            None,
        );
        (s == 200).then(|| v["room_id"].as_str().unwrap().to_string())
    }

    pub fn send_text(&self, room: &str, body: &str) -> String {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/send/m.room.message/{}",
            enc(room),
            random_hex()
        );
        self.ok(
            "PUT",
            &path,
            Some(&json!({"msgtype": "m.text", "body": body})),
        )["event_id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Edits one of this user's messages (`m.replace`, as Element sends it).
    pub fn edit_text(&self, room: &str, event_id: &str, body: &str) -> String {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/send/m.room.message/{}",
            enc(room),
            random_hex()
        );
        let content = json!({
            "msgtype": "m.text",
            "body": format!("* {body}"),
            "m.new_content": {"msgtype": "m.text", "body": body},
            "m.relates_to": {"rel_type": "m.replace", "event_id": event_id},
        });
        self.ok("PUT", &path, Some(&content))["event_id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub fn set_state(&self, room: &str, kind: &str, key: &str, content: Value) {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/state/{kind}/{}",
            enc(room),
            enc(key)
        );
        self.ok("PUT", &path, Some(&content));
    }

    pub fn state(&self, room: &str, kind: &str, key: &str) -> Option<Value> {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/state/{kind}/{}",
            enc(room),
            enc(key)
        );
        let (s, v) = self.call("GET", &path, None);
        (s == 200).then_some(v)
    }

    pub fn redact(&self, room: &str, event_id: &str) {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/redact/{}/{}",
            enc(room),
            enc(event_id),
            random_hex()
        );
        self.ok("PUT", &path, Some(&json!({"reason": "test"})));
    }

    pub fn ban(&self, room: &str, user: &str) {
        let path = format!("/_matrix/client/v3/rooms/{}/ban", enc(room));
        self.ok(
            "POST",
            &path,
            Some(&json!({"user_id": user, "reason": "test"})),
        );
    }

    pub fn invite(&self, room: &str, user: &str) {
        let path = format!("/_matrix/client/v3/rooms/{}/invite", enc(room));
        self.ok("POST", &path, Some(&json!({"user_id": user})));
    }

    /// The room's last `limit` events, oldest first.
    pub fn messages(&self, room: &str, limit: u32) -> Vec<Value> {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=b&limit={limit}",
            enc(room)
        );
        let v = self.ok("GET", &path, None);
        let mut chunk: Vec<Value> = v["chunk"].as_array().cloned().unwrap_or_default();
        chunk.reverse();
        chunk
    }

    /// Messages (`m.room.message`) sent by `sender`, oldest first.
    pub fn messages_from(&self, room: &str, sender: &str) -> Vec<Value> {
        self.messages(room, 100)
            .into_iter()
            .filter(|e| e["type"] == "m.room.message" && e["sender"] == sender)
            .collect()
    }

    /// Waits for a message from `sender` whose body contains `needle`.
    pub fn wait_message(&self, room: &str, sender: &str, needle: &str) -> Value {
        wait_until(
            &format!("a message from {sender} containing {needle:?} in {room}"),
            MX_TIMEOUT,
            || {
                self.messages_from(room, sender).into_iter().find(|e| {
                    e["content"]["body"]
                        .as_str()
                        .is_some_and(|b| b.contains(needle))
                })
            },
        )
    }

    /// Rooms this user is invited to (from a /sync).
    pub fn invites(&self) -> Vec<String> {
        let v = self.ok("GET", "/_matrix/client/v3/sync?timeout=0", None);
        v["rooms"]["invite"]
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Waits until `user` is joined to `room`.
    pub fn wait_joined(&self, room: &str, user: &str) {
        wait_until(&format!("{user} to join {room}"), MX_TIMEOUT, || {
            self.state(room, "m.room.member", user)
                .filter(|c| c["membership"] == "join")
        });
    }

    /// A DM room with the bot, once the bot has joined it.
    pub fn dm_bot(&self, bot: &str) -> String {
        let room = self.create_room(json!({
            "is_direct": true,
            "invite": [bot],
            "preset": "trusted_private_chat",
        }));
        self.wait_joined(&room, bot);
        room
    }

    /// `!live new NAME` sent in `dm`: the bot's settings message (with the
    /// stream key) once the command has finished. The bot sends the key's
    /// DM first and commits the key just after (src/matrix/keys.rs); its
    /// "Created …" reply, the command's last step, comes after that commit,
    /// so the key publishes at once.
    pub fn live_new(&self, dm: &str, bot: &str, name: &str) -> Value {
        self.send_text(dm, &format!("!live new {name}"));
        self.wait_message(dm, bot, &format!("for stream '{name}' and invited you"));
        self.wait_message(dm, bot, &format!("Stream '{name}' — publishing settings"))
    }

    /// The stream key the bot sends after `!live attach`: joins the bot's
    /// DM (its first pending invite) and reads the key from the settings
    /// message there: (the DM's room id, the key).
    pub fn key_from_bot_dm(&self, bot: &str) -> (String, String) {
        let dm = wait_until("the bot's DM invite", MX_TIMEOUT, || {
            self.invites().into_iter().next()
        });
        self.join(&dm);
        let key = key_from_settings(
            self.wait_message(&dm, bot, "Stream Key: ")["content"]["body"]
                .as_str()
                .unwrap(),
        );
        (dm, key)
    }

    /// A new room of this user (`preset`, e.g. `private_chat` for an
    /// invite-only one, named `title`) where the bot is a moderator, with
    /// `stream` attached: (room id, stream key).
    pub fn attach_stream(
        &self,
        bot: &str,
        preset: &str,
        title: &str,
        stream: &str,
    ) -> (String, String) {
        let room = self.create_room(json!({
            "preset": preset, "name": title, "invite": [bot],
            "power_level_content_override": {"users": {bot: 50}},
        }));
        self.wait_joined(&room, bot);
        self.send_text(&room, &format!("!live attach {stream}"));
        self.wait_message(&room, bot, &format!("Stream '{stream}' is attached"));
        let (_, key) = self.key_from_bot_dm(bot);
        (room, key)
    }

    /// An OpenID token as the widget gets it: (access_token, matrix_server_name).
    pub fn openid_token(&self) -> (String, String) {
        let v = self.ok(
            "POST",
            &format!(
                "/_matrix/client/v3/user/{}/openid/request_token",
                enc(&self.user_id)
            ),
            Some(&json!({})),
        );
        (
            v["access_token"].as_str().unwrap().to_string(),
            v["matrix_server_name"].as_str().unwrap().to_string(),
        )
    }
}

/// Extracts `Stream Key: <key>` from the bot's settings message.
pub fn key_from_settings(body: &str) -> String {
    body.lines()
        .find_map(|l| l.trim().strip_prefix("Stream Key: "))
        .map(|k| k.trim().to_string())
        .unwrap_or_else(|| panic!("no 'Stream Key:' line in {body:?}"))
}

/// A Server-Sent Events reader (`GET /api/v1/streams/{name}/events`) over
/// HTTP/1.0, so the body is plain lines until the server closes.
pub struct Sse {
    lines: Arc<Lines>,
    stream: TcpStream,
}

impl Sse {
    pub fn open(server: &Server, stream: &str) -> Sse {
        Sse::open_query(server, stream, "")
    }

    /// With a query string (e.g. `access=<token>`).
    pub fn open_query(server: &Server, stream: &str, query: &str) -> Sse {
        let q = if query.is_empty() {
            String::new()
        } else {
            format!("?{query}")
        };
        Sse::open_path(server, &format!("/api/v1/streams/{stream}/events{q}"))
    }

    /// Any SSE endpoint (e.g. `/api/v1/events?streams=a,b`).
    pub fn open_path(server: &Server, path: &str) -> Sse {
        let mut s = TcpStream::connect(server.http).expect("connect for SSE");
        write!(
            s,
            "GET {path} HTTP/1.0\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
            server.http
        )
        .unwrap();
        let lines = Arc::new(Lines::default());
        drain(s.try_clone().unwrap(), lines.clone());
        Sse { lines, stream: s }
    }

    /// True once the server ended the response.
    pub fn is_closed(&self) -> bool {
        self.lines.is_closed()
    }

    /// The response's HTTP status.
    pub fn status(&self) -> Option<u16> {
        self.lines
            .snapshot()
            .first()?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }

    /// All `(event, data)` pairs so far.
    pub fn events(&self) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        let mut name = None;
        for l in self.lines.snapshot() {
            if let Some(n) = l.strip_prefix("event:") {
                name = Some(n.trim().to_string());
            } else if let Some(d) = l.strip_prefix("data:")
                && let Some(n) = name.take()
            {
                out.push((n, serde_json::from_str(d.trim()).unwrap_or(Value::Null)));
            }
        }
        out
    }

    /// True once any line so far contains `needle` (cheap: no JSON parsing).
    pub fn saw(&self, needle: &str) -> bool {
        self.lines
            .snapshot()
            .iter()
            .rev()
            .any(|l| l.contains(needle))
    }

    /// Waits for an event named `name` whose data satisfies `pred`.
    pub fn wait(
        &self,
        name: &str,
        timeout: Duration,
        mut pred: impl FnMut(&Value) -> bool,
    ) -> Value {
        wait_until(&format!("SSE event {name}"), timeout, || {
            self.events()
                .into_iter()
                .find(|(n, d)| n == name && pred(d))
                .map(|(_, d)| d)
        })
    }
}

impl Drop for Sse {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

/// Rich chat content: raw events, media and avatars (tests/matrix_pages.rs).
impl MxUser {
    /// Sends any message-like event; its event id.
    pub fn send_event(&self, room: &str, kind: &str, content: Value) -> String {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/send/{kind}/{}",
            enc(room),
            random_hex()
        );
        self.ok("PUT", &path, Some(&content))["event_id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Uploads a file to the media repository; its `mxc://` URI.
    pub fn upload(&self, bytes: &[u8], content_type: &str) -> String {
        let auth = format!("Bearer {}", self.token);
        let r = http::request(
            "POST",
            &format!("{}/_matrix/media/v3/upload", self.base),
            &[("Authorization", &auth), ("Content-Type", content_type)],
            Some(bytes),
        )
        .expect("upload");
        assert_eq!(r.status, 200, "upload: {}", r.text());
        r.json().unwrap()["content_uri"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Sets the global avatar (rooms get a new member event).
    pub fn set_avatar(&self, mxc: &str) {
        self.ok(
            "PUT",
            &format!(
                "/_matrix/client/v3/profile/{}/avatar_url",
                enc(&self.user_id)
            ),
            Some(&json!({ "avatar_url": mxc })),
        );
    }
}

/// A PNG made by ffmpeg (a solid colour), to upload to Synapse's media repository.
pub fn png(width: u32, height: u32, colour: &str) -> Vec<u8> {
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i"])
        .arg(format!("color=c={colour}:s={width}x{height}"))
        .args([
            "-frames:v",
            "1",
            "-c:v",
            "png",
            "-f",
            "image2pipe",
            "pipe:1",
        ])
        .output()
        .expect("run ffmpeg");
    assert!(out.status.success() && out.stdout.starts_with(b"\x89PNG"));
    out.stdout
}

/// PUTs a transaction to `node` as the homeserver (or a load balancer
/// retrying on another node) would.
pub fn put_transaction_to(
    node: &Server,
    txn_id: &str,
    token: &str,
    body: &[u8],
) -> http::HttpResponse {
    http::request(
        "PUT",
        &node.url(&format!("/_matrix/app/v1/transactions/{}", enc(txn_id))),
        &[
            ("Authorization", &format!("Bearer {token}")),
            ("Content-Type", "application/json"),
        ],
        Some(body),
    )
    .expect("PUT transaction")
}

/// Stream `name` made with `!live new` from `dm` (the user's DM with the
/// bot), its room joined: (key, room id).
pub fn new_stream(user: &MxUser, dm: &str, bot: &str, name: &str) -> (String, String) {
    let settings = user.live_new(dm, bot, name);
    let key = key_from_settings(settings["content"]["body"].as_str().unwrap_or_default());
    let room = wait_until("the room alias", MX_TIMEOUT, || {
        user.resolve_alias(&format!("#live_{name}:{SERVER_NAME}"))
    });
    user.join(&room);
    (key, room)
}

/// What the bot posted in rooms, as a user reads it back from Synapse.
impl MxUser {
    /// The event as the homeserver has it, in a transaction body of its own
    /// (to push it again, as a retry or another node would get it).
    pub fn event_as_transaction(&self, room: &str, event_id: &str) -> Vec<u8> {
        let (status, mut ev) = self.call(
            "GET",
            &format!(
                "/_matrix/client/v3/rooms/{}/event/{}",
                enc(room),
                enc(event_id)
            ),
            None,
        );
        assert_eq!(status, 200, "{ev}");
        ev["room_id"] = json!(room);
        json!({ "events": [ev] }).to_string().into_bytes()
    }

    /// Messages of `sender` in `room` whose body contains `needle`.
    pub fn count_bodies_with(&self, room: &str, sender: &str, needle: &str) -> usize {
        self.messages_from(room, sender)
            .iter()
            .filter(|e| {
                e["content"]["body"]
                    .as_str()
                    .is_some_and(|b| b.contains(needle))
            })
            .count()
    }

    /// The go-live notices the bot posted in `room`.
    pub fn golive_notices(&self, room: &str, bot: &str) -> Vec<Value> {
        self.messages_from(room, bot)
            .into_iter()
            .filter(|e| e["content"]["io.roomcast.golive"].is_object())
            .collect()
    }

    /// The bot's "ended" edits of its go-live notices in `room`.
    pub fn ended_edits(&self, room: &str, bot: &str) -> Vec<Value> {
        self.messages_from(room, bot)
            .into_iter()
            .filter(|e| {
                e["content"]["m.relates_to"]["rel_type"] == "m.replace"
                    && e["content"]["m.new_content"]["body"]
                        .as_str()
                        .is_some_and(|b| b.contains("ended after"))
            })
            .collect()
    }
}
