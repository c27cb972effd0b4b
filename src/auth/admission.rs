//! OvenMediaEngine's AdmissionWebhooks: before a session opens, a control
//! server is asked (`POST`, OME's JSON, `X-OME-Signature`) and answers
//! `{"allowed", "new_url", "lifetime", "reason"}`; when the session closes it
//! is told. The JSON and the signature are built and read here without I/O;
//! [`Admission`] sends them with a timeout on its own task, so a slow control
//! server delays only the session it is asked about.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use super::signed_policy::signature;
use crate::config::AdmissionConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// A publisher (OME: a provider).
    Incoming,
    /// A viewer (OME: a publisher).
    Outgoing,
}

/// Who is asking and for what, as OME describes it.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub direction: Direction,
    /// "webrtc", "rtmp" (OME has no "rtmps"; roomcast says "rtmp" for both).
    pub protocol: &'static str,
    /// The requested URL, `scheme://host:port/app/stream?query`. Never holds a
    /// stream key: callers put the stream's name where the key was.
    pub url: String,
    pub client: SocketAddr,
    pub real_ip: Option<std::net::IpAddr>,
    pub user_agent: Option<String>,
}

#[derive(Serialize)]
struct Body<'a> {
    client: ClientJson<'a>,
    request: RequestJson<'a>,
}

#[derive(Serialize)]
struct ClientJson<'a> {
    address: String,
    port: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    real_ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_agent: Option<&'a str>,
}

#[derive(Serialize)]
struct RequestJson<'a> {
    direction: Direction,
    protocol: &'a str,
    status: &'a str,
    url: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    new_url: Option<&'a str>,
    time: String,
}

/// The request body for `status` ("opening" or "closing").
pub fn request_body(
    info: &SessionInfo,
    status: &str,
    new_url: Option<&str>,
    now: time::OffsetDateTime,
) -> String {
    let t = now.to_offset(time::UtcOffset::UTC);
    let stamp = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    );
    let body = Body {
        client: ClientJson {
            address: info.client.ip().to_canonical().to_string(),
            port: info.client.port(),
            real_ip: info.real_ip.map(|ip| ip.to_string()),
            user_agent: info.user_agent.as_deref(),
        },
        request: RequestJson {
            direction: info.direction,
            protocol: info.protocol,
            status,
            url: &info.url,
            new_url,
            time: stamp,
        },
    };
    serde_json::to_string(&body).unwrap_or_default()
}

/// `X-OME-Signature`: Base64URL-no-pad(HMAC-SHA1(secret, body)).
pub fn body_signature(secret: &str, body: &str) -> String {
    signature(secret.as_bytes(), body)
}

/// The control server's answer to "opening".
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Verdict {
    pub allowed: bool,
    #[serde(default)]
    pub new_url: Option<String>,
    /// Milliseconds the session may last; 0 or absent: no limit.
    #[serde(default)]
    pub lifetime: Option<u64>,
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AdmissionError {
    #[error("the admission webhook refused the session{}", .0.as_deref().map(|r| format!(": {r}")).unwrap_or_default())]
    Denied(Option<String>),
    #[error("the admission webhook did not answer in time ({0} ms)")]
    Timeout(u64),
    #[error("the admission webhook failed: {0}")]
    Failed(String),
}

/// Reads the answer to "opening" (HTTP 200 with JSON; `allowed` is required).
pub fn parse_verdict(status: u16, body: &[u8]) -> Result<Verdict, AdmissionError> {
    if status != 200 {
        return Err(AdmissionError::Failed(format!(
            "the control server answered HTTP {status}"
        )));
    }
    serde_json::from_slice::<Verdict>(body).map_err(|e| {
        AdmissionError::Failed(format!(
            "the control server's answer is not {{\"allowed\": true|false, ...}} ({e})"
        ))
    })
}

/// The stream name in a `new_url` (its path's second segment, as for OME's
/// `/app/stream`, else the last one).
pub fn stream_of_url(url: &str) -> Option<String> {
    let after_scheme = url.split_once("://").map_or(url, |(_, r)| r);
    let path = after_scheme
        .split_once('/')
        .map(|(_, p)| p)
        .unwrap_or("")
        .split(['?', '#'])
        .next()
        .unwrap_or("");
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let s = match segs.as_slice() {
        [_, stream, ..] => stream,
        [only] => only,
        [] => return None,
    };
    Some((*s).to_string())
}

/// An admitted session; dropping it tells the control server it closed.
pub struct Ticket {
    admission: Arc<Admission>,
    info: SessionInfo,
    new_url: Option<String>,
    runtime: tokio::runtime::Handle,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let admission = self.admission.clone();
        let info = self.info.clone();
        let new_url = self.new_url.take();
        // Sessions may end on a WebRTC worker thread: post from the runtime.
        self.runtime.spawn(async move {
            admission.closing(&info, new_url.as_deref()).await;
        });
    }
}

/// The admission webhook client.
pub struct Admission {
    pub config: AdmissionConfig,
    http: reqwest::Client,
}

/// What an allowed session gets.
pub struct Admitted {
    /// Another stream the control server sent the session to.
    pub new_stream: Option<String>,
    pub lifetime: Option<Duration>,
    pub ticket: Ticket,
}

impl Admission {
    pub fn new(config: AdmissionConfig) -> Arc<Admission> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.timeout_ms))
            .build()
            .unwrap_or_default();
        Arc::new(Admission { config, http })
    }

    pub fn applies_to(&self, direction: Direction) -> bool {
        match direction {
            Direction::Incoming => self.config.publish,
            Direction::Outgoing => self.config.playback,
        }
    }

    async fn post(&self, body: String) -> Result<(u16, Vec<u8>), AdmissionError> {
        let mut req = self
            .http
            .post(&self.config.control_server_url)
            .header("Content-Type", "application/json")
            .header("Accept", "application/json");
        if !self.config.secret_key.is_empty() {
            req = req.header(
                "X-OME-Signature",
                body_signature(&self.config.secret_key, &body),
            );
        }
        let timeout = Duration::from_millis(self.config.timeout_ms);
        let send = async {
            let resp = req.body(body).send().await?;
            let status = resp.status().as_u16();
            let bytes = resp.bytes().await?;
            Ok::<_, reqwest::Error>((status, bytes.to_vec()))
        };
        match tokio::time::timeout(timeout, send).await {
            Err(_) => Err(AdmissionError::Timeout(self.config.timeout_ms)),
            Ok(Err(e)) if e.is_timeout() => Err(AdmissionError::Timeout(self.config.timeout_ms)),
            Ok(Err(e)) => Err(AdmissionError::Failed(format!(
                "cannot reach the control server ({})",
                without_url(&e)
            ))),
            Ok(Ok(r)) => Ok(r),
        }
    }

    /// Asks whether a session may open.
    pub async fn opening(self: &Arc<Self>, info: SessionInfo) -> Result<Admitted, AdmissionError> {
        let body = request_body(&info, "opening", None, time::OffsetDateTime::now_utc());
        let started = std::time::Instant::now();
        let result = self
            .post(body)
            .await
            .and_then(|(status, bytes)| parse_verdict(status, &bytes));
        let elapsed_ms = started.elapsed().as_millis() as u64;
        let verdict = match result {
            Ok(v) => v,
            Err(e) => {
                warn!(direction = ?info.direction, protocol = info.protocol, elapsed_ms, error = %e, "admission webhook failed, session refused");
                return Err(e);
            }
        };
        if !verdict.allowed {
            info!(direction = ?info.direction, protocol = info.protocol, elapsed_ms, reason = ?verdict.reason, "admission webhook denied the session");
            return Err(AdmissionError::Denied(verdict.reason));
        }
        debug!(direction = ?info.direction, protocol = info.protocol, elapsed_ms, "admission webhook allowed the session");
        let new_stream = verdict.new_url.as_deref().and_then(stream_of_url);
        Ok(Admitted {
            new_stream,
            lifetime: verdict
                .lifetime
                .filter(|ms| *ms > 0)
                .map(Duration::from_millis),
            ticket: Ticket {
                admission: self.clone(),
                info,
                new_url: verdict.new_url,
                runtime: tokio::runtime::Handle::current(),
            },
        })
    }

    async fn closing(&self, info: &SessionInfo, new_url: Option<&str>) {
        let body = request_body(info, "closing", new_url, time::OffsetDateTime::now_utc());
        if let Err(e) = self.post(body).await {
            debug!(error = %e, "admission webhook closing notice failed");
        }
    }
}

/// reqwest errors name the URL; the control server's URL may hold a token.
fn without_url(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    if let Some(url) = e.url() {
        s = s.replace(url.as_str(), "<control server>");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> SessionInfo {
        SessionInfo {
            direction: Direction::Incoming,
            protocol: "webrtc",
            url: "http://live.example.org:3333/app/stream?direction=whip".into(),
            client: "211.233.58.86:29291".parse().unwrap(),
            real_ip: None,
            user_agent: Some("OBS".into()),
        }
    }

    #[test]
    fn body_is_omes_json_and_signed() {
        let now =
            time::OffsetDateTime::from_unix_timestamp_nanos(1_620_827_100_123_000_000).unwrap();
        let body = request_body(&info(), "opening", None, now);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["client"]["address"], "211.233.58.86");
        assert_eq!(v["client"]["port"], 29291);
        assert_eq!(v["client"]["user_agent"], "OBS");
        assert_eq!(v["request"]["direction"], "incoming");
        assert_eq!(v["request"]["protocol"], "webrtc");
        assert_eq!(v["request"]["status"], "opening");
        assert_eq!(v["request"]["time"], "2021-05-12T13:45:00.123Z");
        assert!(v["request"].get("new_url").is_none());
        let sig = body_signature("1234", &body);
        assert_eq!(sig, signature(b"1234", &body));
        assert!(!sig.contains('=') && !sig.contains('+') && !sig.contains('/'));
    }

    #[test]
    fn verdicts() {
        let v = parse_verdict(
            200,
            br#"{"allowed":true,"lifetime":60000,"new_url":"rtmp://h:1935/app/other"}"#,
        )
        .unwrap();
        assert!(v.allowed);
        assert_eq!(v.lifetime, Some(60000));
        assert_eq!(
            stream_of_url(v.new_url.as_deref().unwrap()).as_deref(),
            Some("other")
        );
        let v = parse_verdict(200, br#"{"allowed":false,"reason":"no"}"#).unwrap();
        assert!(!v.allowed);
        assert!(parse_verdict(200, b"{}").is_err(), "allowed is required");
        assert!(parse_verdict(500, br#"{"allowed":true}"#).is_err());
        assert!(parse_verdict(200, b"not json").is_err());
        assert_eq!(
            AdmissionError::Denied(Some("banned".into())).to_string(),
            "the admission webhook refused the session: banned"
        );
        assert_eq!(
            stream_of_url("ws://h:3333/app/s/playlist?x=1").as_deref(),
            Some("s")
        );
        assert_eq!(stream_of_url("/whip/s").as_deref(), Some("s"));
        assert_eq!(stream_of_url("http://h"), None);
    }
}
