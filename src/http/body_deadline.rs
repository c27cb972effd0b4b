//! A deadline for a whole request body. The listener's idle timeout resets
//! on every byte, so a body trickled a byte at a time would otherwise hold
//! its connection (and the handler waiting on it) for as long as the client
//! likes. Every body that is not empty gets `connections.http_body_timeout_secs`
//! from the moment its head was read; past it the read fails and the
//! request is answered `408 body_timeout` (`error::read_body`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use bytes::Bytes;
use http_body::{Frame, SizeHint};

/// The error a body past its deadline ends with.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
pub struct BodyTimedOut(pub Duration);

struct DeadlineBody {
    inner: Body,
    limit: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        // Both fields are Unpin (the body is boxed, the sleep too).
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        match this.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(axum::Error::new(BodyTimedOut(this.limit))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Middleware (`axum::middleware::map_request_with_state`): gives the
/// request's body, if it has one, its deadline. Bodiless requests (GETs,
/// most of the traffic) are left as they are: no timer.
pub async fn with_body_deadline(State(limit): State<Duration>, req: Request) -> Request {
    use http_body::Body as _;
    if req.body().is_end_stream() {
        return req;
    }
    req.map(|inner| {
        Body::new(DeadlineBody {
            inner,
            limit,
            deadline: Box::pin(tokio::time::sleep(limit)),
        })
    })
}

/// Whether a body read failed because of its deadline.
pub fn timed_out(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<BodyTimedOut>() {
            return true;
        }
        source = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_trickled_body_fails_at_its_deadline_and_a_prompt_one_is_read_whole() {
        let limit = Duration::from_millis(300);
        // A body that yields a byte every 20 ms and never ends: no gap
        // between bytes comes near the limit.
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
        let trickle = Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
            let bytes = rx.recv().await?;
            Some((Ok::<_, std::io::Error>(bytes), rx))
        }));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            loop {
                tick.tick().await;
                if tx.send(Bytes::from_static(b"x")).await.is_err() {
                    return;
                }
            }
        });
        let req = with_body_deadline(State(limit), Request::new(trickle)).await;
        let started = std::time::Instant::now();
        let err = axum::body::to_bytes(req.into_body(), 1 << 20)
            .await
            .expect_err("past the deadline");
        assert!(timed_out(&err), "{err}");
        assert!(started.elapsed() >= limit);

        let req = with_body_deadline(State(limit), Request::new(Body::from("{}"))).await;
        assert_eq!(
            &axum::body::to_bytes(req.into_body(), 1024).await.unwrap()[..],
            b"{}"
        );
        let get = with_body_deadline(State(limit), Request::new(Body::empty())).await;
        assert!(
            axum::body::to_bytes(get.into_body(), 1024)
                .await
                .unwrap()
                .is_empty()
        );
    }
}
