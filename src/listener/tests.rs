//! The listener core over loopback: caps, timeouts, back-off, panics, shutdown.

use std::sync::atomic::AtomicUsize;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio::task::JoinHandle;

use super::*;

fn limits() -> Limits {
    Limits {
        max_connections: 100,
        max_per_address: 100,
        first_bytes_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(10),
        grace: Duration::from_millis(300),
        exempt: &[],
    }
}

/// Echoes what it reads until EOF (or until the listener closes the stream).
async fn echo(mut c: Conn) {
    let mut buf = [0u8; 64];
    while let Ok(n) = c.stream.read(&mut buf).await {
        if n == 0 || c.stream.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

struct Running {
    addr: SocketAddr,
    shutdown: Shutdown,
    task: JoinHandle<()>,
}

async fn start<H, F>(limits: Limits, handler: H) -> Running
where
    H: Fn(Conn) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = Shutdown::default();
    let task = tokio::spawn(serve(listener, "test", limits, shutdown.clone(), handler));
    Running {
        addr,
        shutdown,
        task,
    }
}

async fn connect_from(ip: [u8; 4], to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::from((ip, 0))).unwrap();
    s.connect(to).await.unwrap()
}

/// A round trip through the echo handler works: the connection is served.
async fn served(s: &mut TcpStream) -> bool {
    if s.write_all(b"x").await.is_err() {
        return false;
    }
    let mut b = [0u8; 1];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await,
        Ok(Ok(1))
    )
}

/// Whether the server closes `s` within `d` (EOF or reset), ignoring data.
async fn closed_within(s: &mut TcpStream, d: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + d;
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn global_cap_closes_the_connection_over_it() {
    let r = start(
        Limits {
            max_connections: 2,
            ..limits()
        },
        echo,
    )
    .await;
    let mut a = TcpStream::connect(r.addr).await.unwrap();
    let mut b = TcpStream::connect(r.addr).await.unwrap();
    assert!(served(&mut a).await && served(&mut b).await);
    let mut c = TcpStream::connect(r.addr).await.unwrap();
    assert!(
        closed_within(&mut c, Duration::from_secs(2)).await,
        "over the cap: closed at once"
    );
    assert!(served(&mut a).await, "the others are untouched");
    // A slot frees when a connection ends.
    drop(a);
    let mut d = None;
    for _ in 0..100 {
        let mut s = TcpStream::connect(r.addr).await.unwrap();
        if served(&mut s).await {
            d = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(d.is_some(), "a freed slot is used again");
}

#[tokio::test]
async fn per_address_cap_counts_each_address() {
    let r = start(
        Limits {
            max_per_address: 2,
            ..limits()
        },
        echo,
    )
    .await;
    let mut a = connect_from([127, 0, 0, 1], r.addr).await;
    let mut b = connect_from([127, 0, 0, 1], r.addr).await;
    assert!(served(&mut a).await && served(&mut b).await);
    let mut c = connect_from([127, 0, 0, 1], r.addr).await;
    assert!(closed_within(&mut c, Duration::from_secs(2)).await);
    // Another address has its own count.
    let mut other = connect_from([127, 0, 0, 2], r.addr).await;
    assert!(served(&mut other).await);

    // A trusted proxy is not capped per address.
    let proxies: &'static [Cidr] = Box::leak(Box::new([Cidr::parse("127.0.0.3").unwrap()]));
    let r = start(
        Limits {
            max_per_address: 1,
            ..limits()
        }
        .with_exempt(proxies),
        echo,
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = connect_from([127, 0, 0, 3], r.addr).await;
        assert!(served(&mut s).await);
        held.push(s);
    }
}

#[test]
fn ipv6_addresses_count_per_64() {
    let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
    let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
    let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
    assert_eq!(address_key(a), address_key(b));
    assert_ne!(address_key(a), address_key(c));
    let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
    assert_eq!(address_key(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    let counts = Arc::new(AddressCounts::default());
    let s1 = counts.try_take(a, 1).unwrap();
    assert!(counts.try_take(b, 1).is_none(), "same /64");
    assert!(counts.try_take(c, 1).is_some());
    drop(s1);
    assert!(counts.try_take(b, 1).is_some(), "released on drop");
}

#[tokio::test]
async fn silent_connection_is_closed_after_the_first_bytes_timeout() {
    let r = start(
        Limits {
            first_bytes_timeout: Duration::from_millis(300),
            ..limits()
        },
        echo,
    )
    .await;
    let started = Instant::now();
    let mut silent = TcpStream::connect(r.addr).await.unwrap();
    let mut talking = TcpStream::connect(r.addr).await.unwrap();
    assert!(served(&mut talking).await);
    assert!(closed_within(&mut silent, Duration::from_secs(3)).await);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(served(&mut talking).await, "a client that spoke is not cut");
}

#[tokio::test]
async fn idle_timeout_counts_bytes_in_either_direction() {
    let idle = Duration::from_millis(400);
    // The handler sends a byte every 100 ms after the first one it reads.
    let r = start(
        Limits {
            idle_timeout: idle,
            ..limits()
        },
        |mut c: Conn| async move {
            let mut b = [0u8; 1];
            if c.stream.read(&mut b).await.is_err() {
                return;
            }
            loop {
                tokio::select! {
                    r = c.stream.read(&mut b) => if !matches!(r, Ok(1)) { return },
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {
                        if c.stream.write_all(b"k").await.is_err() { return }
                    }
                }
            }
        },
    )
    .await;
    let mut chatty = TcpStream::connect(r.addr).await.unwrap();
    chatty.write_all(b"x").await.unwrap();
    // Only the server talks: alive well past the idle timeout.
    assert!(!closed_within(&mut chatty, idle * 3).await);

    // Echo handler: a client that stops talking is cut after the idle timeout.
    let r = start(
        Limits {
            idle_timeout: idle,
            ..limits()
        },
        echo,
    )
    .await;
    let mut s = TcpStream::connect(r.addr).await.unwrap();
    let mut quiet_from = Instant::now();
    for _ in 0..6 {
        assert!(served(&mut s).await, "active: kept open");
        quiet_from = Instant::now();
        tokio::time::sleep(idle / 4).await;
    }
    assert!(closed_within(&mut s, Duration::from_secs(3)).await);
    assert!(quiet_from.elapsed() >= idle - Duration::from_millis(50));
}

#[tokio::test]
async fn a_stream_handed_to_another_task_stays_counted_and_watched() {
    // Like a WebSocket upgrade: the handler returns, the stream lives on.
    let r = start(
        Limits {
            max_connections: 1,
            idle_timeout: Duration::from_millis(400),
            ..limits()
        },
        |c: Conn| async move {
            tokio::spawn(echo(c));
        },
    )
    .await;
    let mut a = TcpStream::connect(r.addr).await.unwrap();
    assert!(served(&mut a).await);
    let mut b = TcpStream::connect(r.addr).await.unwrap();
    assert!(
        closed_within(&mut b, Duration::from_secs(2)).await,
        "still counted"
    );
    assert!(
        closed_within(&mut a, Duration::from_secs(3)).await,
        "idle timeout applies"
    );
}

#[tokio::test]
async fn a_panicking_handler_closes_only_its_connection() {
    let calls = Arc::new(AtomicUsize::new(0));
    let n = calls.clone();
    let r = start(limits(), move |c: Conn| {
        let first = n.fetch_add(1, Ordering::SeqCst) == 0;
        async move {
            if first {
                panic!("handler bug");
            }
            echo(c).await
        }
    })
    .await;
    let mut a = TcpStream::connect(r.addr).await.unwrap();
    a.write_all(b"x").await.unwrap();
    assert!(closed_within(&mut a, Duration::from_secs(2)).await);
    let mut b = TcpStream::connect(r.addr).await.unwrap();
    assert!(served(&mut b).await, "the listener goes on");
    let stats = stats()
        .into_iter()
        .filter(|(n, s)| *n == "test" && s.panicked.load(Ordering::Relaxed) == 1)
        .count();
    assert!(stats >= 1);
}

/// Fails with EMFILE `errors` times, then hands out real connections.
struct Flaky {
    inner: TcpListener,
    errors: usize,
    calls: Arc<Mutex<Vec<Instant>>>,
}

impl Accept for Flaky {
    async fn accept(&mut self) -> io::Result<(TcpStream, SocketAddr)> {
        self.calls.lock().push(Instant::now());
        if self.errors > 0 {
            self.errors -= 1;
            return Err(io::Error::from_raw_os_error(24)); // EMFILE
        }
        self.inner.accept().await
    }
}

#[tokio::test]
async fn accept_errors_back_off_instead_of_spinning() {
    let inner = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = inner.local_addr().unwrap();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let flaky = Flaky {
        inner,
        errors: 7,
        calls: calls.clone(),
    };
    let shutdown = Shutdown::default();
    tokio::spawn(serve(flaky, "flaky", limits(), shutdown.clone(), echo));
    let started = Instant::now();
    // Served once the errors are over: 10+20+40+80+160+320+640 ms of waiting.
    let mut s = TcpStream::connect(addr).await.unwrap();
    assert!(served(&mut s).await);
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(1200), "waited {elapsed:?}");
    let calls = calls.lock().clone();
    // 7 failures, the success, perhaps the next accept already waiting.
    assert!(
        (8..=9).contains(&calls.len()),
        "no spinning: one try per back-off step, got {}",
        calls.len()
    );
    let gaps: Vec<Duration> = calls[..8].windows(2).map(|w| w[1] - w[0]).collect();
    // Each wait at least the doubled back-off (sleeps never end early).
    for (i, g) in gaps.iter().enumerate() {
        assert!(*g >= BACKOFF_MIN * (1 << i), "growing: {gaps:?}");
    }
    shutdown.trigger();
}

#[tokio::test]
async fn shutdown_stops_accepting_and_ends_connections_within_the_grace() {
    let grace = Duration::from_millis(300);
    // One handler finishes on the signal, the other ignores it.
    let r = start(Limits { grace, ..limits() }, |c: Conn| async move {
        let stop = c.shutdown.clone();
        let polite = c.peer.ip() == IpAddr::from([127, 0, 0, 2]);
        if polite {
            tokio::select! {
                _ = echo(c) => {}
                _ = stop.wait() => {}
            }
        } else {
            echo(c).await
        }
    })
    .await;
    let mut polite = connect_from([127, 0, 0, 2], r.addr).await;
    let mut stubborn = connect_from([127, 0, 0, 1], r.addr).await;
    assert!(served(&mut polite).await && served(&mut stubborn).await);
    let t = Instant::now();
    r.shutdown.trigger();
    assert!(closed_within(&mut polite, Duration::from_millis(200)).await);
    assert!(closed_within(&mut stubborn, grace + Duration::from_secs(1)).await);
    assert!(
        t.elapsed() >= grace - Duration::from_millis(50),
        "the grace was given"
    );
    tokio::time::timeout(grace + Duration::from_secs(1), r.task)
        .await
        .expect("serve returns after the grace")
        .unwrap();
    assert!(
        TcpStream::connect(r.addr).await.is_err(),
        "no longer accepting"
    );
}

/// An idle connection's task holds no handler state: its size does not
/// grow with the handler's (a flood of idle sockets stays cheap).
#[tokio::test]
async fn an_idle_connection_task_is_small_whatever_the_handler() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    let _c = TcpStream::connect(a).await.unwrap();
    let (sock, peer) = l.accept().await.unwrap();
    let permits = Arc::new(Semaphore::new(1));
    let counts = Arc::new(AddressCounts::default());
    let stats = Arc::new(ListenerStats::default());
    let slot = Slot {
        _permit: permits.try_acquire_owned().unwrap(),
        _address: counts.try_take(peer.ip(), 5).unwrap(),
        stats: stats.clone(),
        gone: Arc::new(Notify::new()),
    };
    let (conn, state, gone) = Conn::new(sock, slot, peer, a, Shutdown::default());
    let logs = Arc::new(ConnLogs::new());
    let big = |c: Conn| async move {
        let buf = [0u8; 20000];
        tokio::task::yield_now().await;
        drop(c);
        std::hint::black_box(buf);
    };
    let f = run_connection(
        conn,
        Arc::new(big),
        state,
        gone,
        limits(),
        Shutdown::default(),
        stats,
        logs,
        "x",
        peer,
    );
    let size = std::mem::size_of_val(&f);
    assert!(size < 4096, "run_connection future: {size} bytes");
}
