//! The OvenMediaEngine-compatible listener (port 3333 by default): OvenPlayer's
//! WebSocket signalling at `ws://HOST:3333/{app}/{stream}` and WHIP at
//! `POST /{app}/{stream}?direction=whip`, so OME's player pages and OBS
//! settings keep working after changing the host name.
//!
//! URL mapping: any application name is accepted and ignored; the stream is the
//! segment after it (`/{app}/{stream}[/{playlist}]`). `?transport=tcp` offers
//! ICE-TCP candidates only, `udp` UDP only (`relay` is treated as `tcp`: roomcast
//! has no TURN server, and its ICE-TCP port serves the same networks).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tracing::{debug, info};

use crate::admission::{Purpose, ViewerFacts, ViewerPass};
use crate::egress::ome::protocol;
use crate::http::App;
use crate::http::extract::token_from;
use crate::http::extract::{HttpRequest, Tls};
use crate::http::webrtc::{self, whip};
use crate::http::{ApiError, PeerAddr};
use crate::rtc::{SessionOpts, Transport, ViewerError};
use protocol::{Action, ProtocolError, Signalling};

/// No `request_offer` (or no answer to the offer) within this time: closed.
const SIGNALLING_TIMEOUT: Duration = Duration::from_secs(30);
/// Frames above this are a protocol error (the socket closes without a word);
/// between `http.max_body_bytes` and this, the client gets a 413 message.
const MAX_WS_MESSAGE: usize = 1 << 20;
/// A playing viewer's socket is otherwise quiet: ping it well within the
/// listeners' idle timeout (at least 30 s).
const WS_PING_INTERVAL: Duration = Duration::from_secs(20);

pub fn router(app: Arc<App>, tls: bool) -> Router {
    Router::new()
        .merge(whip::routes())
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/{app}/{stream}",
            get(signalling).post(whip_post).options(webrtc::options),
        )
        .route("/{app}/{stream}/{file}", get(signalling))
        .fallback(|| async { ApiError::not_found("no such endpoint (OME-compatible listener)") })
        .layer(crate::http::cors())
        .layer(axum::Extension(Tls(tls)))
        .with_state(app)
}

fn transport_of(uri: &Uri) -> Transport {
    let q = uri.query().unwrap_or("");
    let v = q
        .split('&')
        .find_map(|kv| kv.strip_prefix("transport="))
        .unwrap_or("")
        .to_ascii_lowercase();
    match v.as_str() {
        "tcp" | "relay" => Transport::Tcp,
        "udp" => Transport::Udp,
        _ => Transport::All,
    }
}

fn query_param<'a>(uri: &'a Uri, name: &str) -> Option<&'a str> {
    uri.query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

#[allow(clippy::too_many_arguments)]
async fn whip_post(
    State(app): State<Arc<App>>,
    Path((_app_name, stream)): Path<(String, String)>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    tls: Option<axum::Extension<Tls>>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    if query_param(&uri, "direction") != Some("whip") {
        return Err(ApiError::bad_request(
            "unsupported_direction",
            "POST here is WHIP: add ?direction=whip to the URL",
        ));
    }
    let req = HttpRequest::new(&app, &uri, &headers, peer, tls.is_some_and(|t| t.0.0));
    whip::publish(&app, &stream, &req, body).await
}

/// The stream of `/{app}/{stream}[/{file}]` (the other segments are ignored).
#[derive(serde::Deserialize)]
struct StreamPath {
    stream: String,
}

async fn signalling(
    State(app): State<Arc<App>>,
    Path(StreamPath { stream }): Path<StreamPath>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    tls: Option<axum::Extension<Tls>>,
    uri: Uri,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let Ok(ws) = ws else {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "websocket_required",
            format!(
                "this is OvenPlayer's WebRTC signalling: open ws://HOST/{{app}}/{stream} as a WebSocket"
            ),
        )
        .into_response();
    };
    let ctx = Ctx {
        app,
        stream,
        peer,
        tls: tls.is_some_and(|t| t.0.0),
        uri,
        headers,
    };
    ws.max_message_size(MAX_WS_MESSAGE)
        .max_frame_size(MAX_WS_MESSAGE)
        .on_upgrade(move |socket| async move { ctx.run(socket).await })
}

struct Ctx {
    app: Arc<App>,
    stream: String,
    peer: SocketAddr,
    tls: bool,
    uri: Uri,
    headers: HeaderMap,
}

/// The viewer session a socket started.
struct Session {
    /// The engine's session id (never sent).
    id: u64,
    /// The id the player sees: random, so it says nothing about other sessions.
    wire: i64,
    stream: String,
    answered: bool,
    /// Until the answer: holds the viewer's place under the caps; then
    /// tracked, so the session ends when its grounds go away.
    pass: Option<ViewerPass>,
}

impl Ctx {
    async fn run(self, mut socket: WebSocket) {
        let mut sig = Signalling::new(self.app.config.http.max_body_bytes);
        let mut session: Option<Session> = None;
        let mut deadline = tokio::time::Instant::now() + SIGNALLING_TIMEOUT;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut last_ping = tokio::time::Instant::now();
        debug!(peer = %self.peer, stream = %self.stream, "ome signalling connected");
        let reason = loop {
            tokio::select! {
                msg = socket.recv() => {
                    let text = match msg {
                        Some(Ok(Message::Text(t))) => t,
                        Some(Ok(Message::Binary(_))) => {
                            let e = ProtocolError::new(400, "binary messages are not part of the signalling; send JSON text");
                            break self.fail(&mut socket, e).await;
                        }
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                        Some(Ok(Message::Close(_))) | None => break "the client closed the socket".to_string(),
                        Some(Err(e)) => break format!("websocket error: {e}"),
                    };
                    match sig.on_text(text.as_str()) {
                        Action::MakeOffer => {
                            if let Some(old) = session.take() {
                                self.end(&old);
                                sig.reset();
                            }
                            match self.make_offer().await {
                                Ok((s, msg)) => {
                                    sig.offered(s.wire);
                                    session = Some(s);
                                    deadline = tokio::time::Instant::now() + SIGNALLING_TIMEOUT;
                                    if socket.send(Message::Text(msg.into())).await.is_err() {
                                        break "send failed".into();
                                    }
                                }
                                Err(e) => break self.fail(&mut socket, e).await,
                            }
                        }
                        // The protocol checked that `id` is this socket's offer.
                        Action::ApplyAnswer { id: _, sdp } => {
                            let Some(engine_id) = session.as_ref().map(|s| s.id) else {
                                continue;
                            };
                            match self.app.engine.answer_viewer(engine_id, &sdp) {
                                Ok(()) => {
                                    sig.playing();
                                    if let Some(s) = session.as_mut() {
                                        s.answered = true;
                                        if let Some(pass) = s.pass.take() {
                                            self.app.admission.track(s.id, &pass);
                                        }
                                        info!(peer = %self.peer, stream = %s.stream, viewer = s.id, "ome viewer negotiated");
                                    }
                                }
                                Err(e) => {
                                    session = None;
                                    let e = ProtocolError::new(400, e.to_string());
                                    break self.fail(&mut socket, e).await;
                                }
                            }
                        }
                        Action::Send(reply) => {
                            if socket.send(Message::Text(reply.into())).await.is_err() {
                                break "send failed".into();
                            }
                        }
                        Action::Stop => break "the player sent stop".into(),
                        Action::Ignore => {}
                        Action::Fail(e) => break self.fail(&mut socket, e).await,
                    }
                }
                _ = self.app.shutdown.wait() => break "the server is shutting down".into(),
                _ = tick.tick() => {
                    if last_ping.elapsed() >= WS_PING_INTERVAL {
                        last_ping = tokio::time::Instant::now();
                        if socket.send(Message::Ping(Default::default())).await.is_err() {
                            break "send failed".into();
                        }
                    }
                    match &session {
                        Some(s) if s.answered && !self.app.engine.has_viewer(&s.stream, s.id) => {
                            session = None;
                            break "the WebRTC session ended".into();
                        }
                        Some(s) if s.answered => {}
                        _ if tokio::time::Instant::now() >= deadline => {
                            let e = ProtocolError::new(408, "no request_offer or answer within 30 s");
                            break self.fail(&mut socket, e).await;
                        }
                        _ => {}
                    }
                }
            }
        };
        if let Some(s) = session {
            self.end(&s);
        }
        let _ = socket.send(Message::Close(None)).await;
        debug!(peer = %self.peer, stream = %self.stream, %reason, "ome signalling closed");
    }

    fn end(&self, s: &Session) {
        if s.answered {
            self.app.engine.remove_viewer(&s.stream, s.id);
        } else {
            self.app.engine.cancel_offer(s.id);
        }
    }

    async fn fail(&self, socket: &mut WebSocket, e: ProtocolError) -> String {
        info!(peer = %self.peer, stream = %self.stream, code = e.code, error = %e.message, "ome signalling error");
        let _ = socket.send(Message::Text(e.to_json().into())).await;
        e.message
    }

    /// Authorizes the viewer and makes the offer message.
    async fn make_offer(&self) -> Result<(Session, String), ProtocolError> {
        if query_param(&self.uri, "direction") == Some("send") {
            return Err(ProtocolError::new(
                400,
                "publishing over WebSocket signalling is not supported; publish with WHIP: POST to this URL with ?direction=whip",
            ));
        }
        // At a cluster node without the publisher: pull the stream first.
        if let Some(cluster) = &self.app.cluster {
            // A viewer without access makes no pull.
            let token = token_from(&self.headers, self.uri.query());
            self.app
                .admission
                .check_access(&self.stream, token.as_deref())
                .map_err(|r| {
                    let e = ApiError::from(r);
                    ProtocolError::new(e.status.as_u16(), e.message)
                })?;
            cluster.prepare_viewer(&self.stream).await;
        }
        let req = HttpRequest::new(&self.app, &self.uri, &self.headers, self.peer, self.tls);
        let facts = ViewerFacts {
            stream: self.stream.clone(),
            client: req.client(),
            token: token_from(&self.headers, self.uri.query()),
            attempt: Some(req.attempt(&self.stream, false, ["ws", "wss"])),
            relay: false,
        };
        let mut pass = self
            .app
            .admission
            .admit_viewer(facts, Purpose::WebRtc)
            .await
            .map_err(|r| {
                let e = ApiError::from(r);
                ProtocolError::new(e.status.as_u16(), e.message)
            })?;
        let stream = pass.stream.clone();
        let opts = SessionOpts {
            transport: transport_of(&self.uri),
            expires_at: pass.expires_at,
            guard: pass.ticket.take().map(|t| Box::new(t) as Box<dyn Send>),
        };
        let offer = self
            .app
            .engine
            .offer_viewer(&stream, opts)
            .map_err(|e: ViewerError| ProtocolError::new(422, e.to_string()))?;
        // The engine counts the pending offer from here on.
        pass.reservation = None;
        let wire = i64::from(rand::random::<u32>() >> 1) + 1;
        let msg = protocol::offer_message(wire, &offer.sdp, &offer.candidates, &offer.mid);
        Ok((
            Session {
                id: offer.id,
                wire,
                stream: stream.name.clone(),
                answered: false,
                pass: Some(pass),
            },
            msg,
        ))
    }
}
