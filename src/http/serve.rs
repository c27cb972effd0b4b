//! Serving the HTTP router on a listener: each connection through the shared
//! listener core (caps, timeouts, shutdown), with hyper's HTTP/1.1 (a timer for
//! the header timeout, WebSocket upgrades) and TLS first where configured.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::listener::{Conn, Limits, Shutdown};

/// Serves `router` on `listener`
/// through the listener core, each connection with hyper's HTTP/1.1 (a timer
/// for the header timeout, WebSocket upgrades), TLS first when `tls` is given,
/// the peer address as `ConnectInfo<PeerAddr>` for the handlers, and every
/// request body a deadline (`body_deadline`).
pub fn serve_http(
    listener: tokio::net::TcpListener,
    name: &'static str,
    router: axum::Router,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    (header_timeout, body_timeout): (Duration, Duration),
    shutdown: Shutdown,
) -> JoinHandle<()> {
    use axum::extract::ConnectInfo;
    use tower_layer::Layer;
    let router = router.layer(axum::middleware::map_request_with_state(
        body_timeout,
        crate::http::body_deadline::with_body_deadline,
    ));
    let handshake_timeout = limits.first_bytes_timeout;
    let on_conn = move |c: Conn| {
        let svc = hyper_util::service::TowerToHyperService::new(
            axum::Extension(ConnectInfo(crate::http::PeerAddr(c.peer))).layer(router.clone()),
        );
        let tls = tls.clone();
        async move {
            let Conn {
                stream,
                peer,
                shutdown,
                ..
            } = c;
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout);
            let result = match tls {
                None => {
                    let conn = http
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .with_upgrades();
                    drive_http(conn, &shutdown).await
                }
                Some(acceptor) => {
                    let Some(stream) =
                        crate::tls::handshake(&acceptor, stream, peer, handshake_timeout).await
                    else {
                        return;
                    };
                    let conn = http
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .with_upgrades();
                    drive_http(conn, &shutdown).await
                }
            };
            if let Err(e) = result {
                tracing::debug!(listener = name, %peer, error = %e, "http connection ended");
            }
        }
    };
    tokio::spawn(crate::listener::serve(
        listener, name, limits, shutdown, on_conn,
    ))
}

/// Runs one HTTP connection; on shutdown lets the request in flight finish and
/// closes (the listener core cuts it after the grace).
async fn drive_http<C>(conn: C, shutdown: &Shutdown) -> Result<(), hyper::Error>
where
    C: std::future::Future<Output = Result<(), hyper::Error>> + GracefulConn,
{
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => r,
        _ = shutdown.wait() => {
            conn.as_mut().graceful();
            conn.await
        }
    }
}

/// hyper's `graceful_shutdown`, which each connection type has on its own.
trait GracefulConn {
    fn graceful(self: std::pin::Pin<&mut Self>);
}

impl<I, S> GracefulConn for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::ResBody: 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}
