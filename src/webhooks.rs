//! Outbound event webhooks: "stream started" and "stream ended", as roomcast's
//! JSON or as a Discord channel message. A hub event (fired once a publish was
//! admitted) is queued per webhook and delivered on that webhook's own task,
//! retried with backoff, so a slow or failing endpoint never delays a publish
//! nor another webhook. Webhook URLs carry tokens: logs name `webhooks[i]`.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};
use tracing::{debug, info, warn};

use crate::config::{WebhookConfig, WebhookFormat};
use crate::hub::{Hub, HubEvent};

/// Events queued per webhook before new ones are dropped (an endpoint down for long).
const QUEUE: usize = 256;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Backoff doubles from this, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Started,
    Ended,
}

impl Event {
    fn name(self) -> &'static str {
        match self {
            Event::Started => "started",
            Event::Ended => "ended",
        }
    }
}

/// The request body for one event.
pub fn body(
    format: WebhookFormat,
    event: Event,
    stream: &str,
    title: &str,
    watch_url: &str,
    time: &str,
) -> Value {
    match format {
        WebhookFormat::Json => json!({
            "event": format!("stream.{}", event.name()),
            "stream": stream,
            "title": title,
            "url": watch_url,
            "time": time,
        }),
        WebhookFormat::Discord => {
            let content = match event {
                Event::Started => format!("🔴 **{title}** is live: {watch_url}"),
                Event::Ended => format!("⚫ **{title}** has ended."),
            };
            json!({"content": content, "allowed_mentions": {"parse": []}})
        }
    }
}

/// The backoff before attempt `n` (1-based; attempt 1 has none).
pub fn backoff(attempt: u32) -> Duration {
    let doublings = attempt.saturating_sub(2).min(16);
    (FIRST_BACKOFF * 2u32.pow(doublings)).min(MAX_BACKOFF)
}

/// Starts the dispatcher and one delivery task per webhook.
pub fn spawn(hub: &Arc<Hub>, hooks: &[WebhookConfig], public_base: &str) {
    if hooks.is_empty() {
        return;
    }
    let http = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .unwrap_or_default();
    let mut queues = Vec::new();
    for (i, hook) in hooks.iter().enumerate() {
        let (tx, rx) = mpsc::channel::<(Event, Value)>(QUEUE);
        tokio::spawn(deliver(i, hook.clone(), http.clone(), rx));
        queues.push((i, hook.clone(), tx));
    }
    let mut events = hub.subscribe_events();
    let hub = hub.clone();
    let base = public_base.to_string();
    tokio::spawn(async move {
        loop {
            let ev = match events.recv().await {
                Ok(ev) => ev,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    warn!(
                        missed = n,
                        "webhook dispatcher fell behind the hub's events"
                    );
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            let (event, stream) = match &ev {
                HubEvent::Live { stream } => (Event::Started, stream),
                HubEvent::Offline { stream } => (Event::Ended, stream),
                _ => continue,
            };
            // Webhooks post to public places (a Discord channel): a
            // private room's stream is not announced there.
            if hub
                .get(stream)
                .is_some_and(|s| s.access() != crate::hub::Access::Public)
            {
                continue;
            }
            // A cluster relay: the origin node announces the stream.
            if hub.get(stream).is_some_and(|s| s.is_relayed()) {
                continue;
            }
            let title = hub
                .get(stream)
                .map_or_else(|| stream.clone(), |s| s.title());
            let url = format!("{base}/watch/{stream}");
            let now = time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default();
            for (i, hook, tx) in &queues {
                if !hook.events.iter().any(|e| e == event.name()) {
                    continue;
                }
                let b = body(hook.format, event, stream, &title, &url, &now);
                if tx.try_send((event, b)).is_err() {
                    warn!(
                        webhook = format!("webhooks[{i}]"),
                        "webhook queue full, event dropped"
                    );
                }
            }
        }
    });
}

async fn deliver(
    i: usize,
    hook: WebhookConfig,
    http: reqwest::Client,
    mut rx: mpsc::Receiver<(Event, Value)>,
) {
    let name = format!("webhooks[{i}]");
    while let Some((event, body)) = rx.recv().await {
        let event = event.name();
        let mut attempt = 1;
        loop {
            let result = http.post(&hook.url).json(&body).send().await;
            let (ok, retry_after, why) = match result {
                Ok(r) if r.status().is_success() => (true, None, String::new()),
                Ok(r) => {
                    let ra = r
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<f64>().ok())
                        .map(|s| Duration::from_secs_f64(s.clamp(0.0, 60.0)));
                    (false, ra, format!("HTTP {}", r.status().as_u16()))
                }
                Err(e) => (false, None, without_url(&e)),
            };
            if ok {
                if attempt > 1 {
                    info!(webhook = %name, %event, attempt, "webhook delivered after retrying");
                } else {
                    debug!(webhook = %name, %event, "webhook delivered");
                }
                break;
            }
            if attempt >= hook.max_attempts {
                warn!(webhook = %name, %event, attempts = attempt, error = %why, "webhook delivery failed, giving up");
                break;
            }
            attempt += 1;
            let wait = retry_after.unwrap_or_else(|| backoff(attempt));
            info!(webhook = %name, %event, error = %why, retry_in_ms = wait.as_millis() as u64, "webhook delivery failed, retrying");
            tokio::time::sleep(wait).await;
        }
    }
}

fn without_url(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    if let Some(url) = e.url() {
        s = s.replace(url.as_str(), "<webhook>");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies() {
        let j = body(
            WebhookFormat::Json,
            Event::Started,
            "t1",
            "Show",
            "http://h/watch/t1",
            "2026-01-01T00:00:00Z",
        );
        assert_eq!(j["event"], "stream.started");
        assert_eq!(j["stream"], "t1");
        assert_eq!(j["url"], "http://h/watch/t1");
        let d = body(
            WebhookFormat::Discord,
            Event::Started,
            "t1",
            "Show",
            "http://h/watch/t1",
            "",
        );
        let c = d["content"].as_str().unwrap();
        assert!(c.contains("Show") && c.contains("http://h/watch/t1"), "{c}");
        let d = body(WebhookFormat::Discord, Event::Ended, "t1", "Show", "u", "");
        assert!(d["content"].as_str().unwrap().contains("ended"));
    }

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(2), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(2));
        assert_eq!(backoff(4), Duration::from_secs(4));
        assert_eq!(backoff(30), MAX_BACKOFF);
    }
}
