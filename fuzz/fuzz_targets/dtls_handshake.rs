//! The server side of a WebRTC session's DTLS handshake
//! (src/rtc/dtls.rs): `rtc::dtls::Dtls`, the instance str0m gets from
//! roomcast's crypto provider (dimpl with our retransmission timing, holding
//! datagrams of the peer's next epoch that arrive before their flight and
//! feeding them again), made as the provider makes it (DTLS 1.2, str0m's
//! MTU), passive, and driven as str0m drives it: datagrams in (only what
//! str0m's demux takes for DTLS: a first byte of 20..=63, at most the
//! 2 048 bytes roomcast receives), `poll_output` until a `Timeout` into a
//! 2 000-byte buffer, `handle_timeout` when that time comes.
//!
//! The peer is a real DTLS client in the same process (str0m's own
//! provider, `set_active(true)`, with its own certificate), whose datagrams
//! the input delivers in any order, drops, duplicates, splits into records
//! or corrupts; the input may also send datagrams of its own (a captured
//! client's, or anything) and move the clock.
//!
//! Checked on the way:
//! - `has_later_epoch` and `first_epoch` agree with a plain walk over the
//!   record headers, on every datagram either side sends or the input makes;
//! - a datagram is held exactly when it is early (before the handshake
//!   completes, a record past epoch 0), never more than `HELD_DATAGRAMS` of
//!   them, and none once connected;
//! - every datagram the server writes fits str0m's MTU, a poll comes to its
//!   `Timeout` within 64 outputs and one answer is at most 16 datagrams;
//!   without input the server retransmits at most `FLIGHT_RETRIES` times;
//! - `Connected` and the keying material come once, the SRTP key is
//!   exported with them, application data only after `Connected` and never
//!   more than the client sent.
//!
//! Input: a header byte (bit 7: the client offers DTLS 1.3 too, `Auto`;
//! bits 0-6: the client's MTU, `200 + 8 * b` bytes), then operations, each
//! an op byte and its arguments. An index `i` picks a queued datagram:
//! `i % n` from the front, or with bit 7 set `(i & 127) % n` from the back.
//! - `0 i`: the server receives the client's datagram `i` (dequeued);
//! - `1 i`: the client's datagram `i` is lost;
//! - `2 i`: the server receives the client's datagram `i` one record per
//!   datagram, last record first (dequeued);
//! - `3 i k x`: the server receives a copy of the client's datagram `i`
//!   with byte `k` flipped by `x` (the original stays queued);
//! - `4 hi lo bytes…`: the server receives a datagram of `hi * 256 + lo`
//!   bytes (fewer at the end) from the input;
//! - `5 t`: the clock moves `t * t` ms (up to 65 s) and both sides' due
//!   timers run;
//! - `6 i`: the client receives the server's datagram `i` (dequeued), or
//!   with `i = 255` all of them in order;
//! - `7 len bytes…`: the client sends `len` bytes of application data
//!   (once connected).
#![no_main]

use std::collections::VecDeque;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use roomcast::rtc::dtls::{self, Dtls, FLIGHT_RETRIES, HELD_DATAGRAMS};
use str0m::crypto::dtls::{DtlsCert, DtlsInstance, DtlsOutput, DtlsVersion};

/// What roomcast receives at most in one datagram (`rtc::net`).
const MAX_DATAGRAM: usize = 2048;
/// str0m's buffer for `poll_output`.
const POLL_BUFFER: usize = 2000;
/// Outputs of one poll before it must come to its `Timeout`.
const MAX_POLLS: usize = 64;
/// Datagrams in one answer (a flight and its fragments).
const MAX_ANSWER: usize = 16;
/// Datagrams in flight each way (the network's queue; older ones are lost).
const IN_FLIGHT: usize = 64;

struct Certs {
    server: DtlsCert,
    client: DtlsCert,
}

fn certs() -> &'static Certs {
    static CERTS: OnceLock<Certs> = OnceLock::new();
    CERTS.get_or_init(|| Certs {
        // As the engine makes its certificate.
        server: dtls::crypto_provider()
            .dtls_provider
            .generate_certificate()
            .expect("a server certificate"),
        client: str0m::crypto::from_feature_flags()
            .dtls_provider
            .generate_certificate()
            .expect("a client certificate"),
    })
}

/// The epoch of the first record, read plainly.
fn reference_first_epoch(d: &[u8]) -> Option<u16> {
    if d.len() < 5 {
        return None;
    }
    Some(u16::from(d[3]) << 8 | u16::from(d[4]))
}

/// Walks the record headers one by one: whether a record of a DTLS content
/// type (20..=25) with a whole header has an epoch past 0, before the walk
/// meets something that is not a record header.
fn reference_has_later_epoch(d: &[u8]) -> bool {
    let mut at = 0usize;
    while at + 13 <= d.len() {
        let header = &d[at..at + 13];
        if header[0] < 20 || header[0] > 25 {
            return false;
        }
        if header[3] != 0 || header[4] != 0 {
            return true;
        }
        at += 13 + usize::from(header[11]) * 256 + usize::from(header[12]);
    }
    false
}

fn check_walk(d: &[u8]) {
    assert_eq!(
        dtls::first_epoch(d),
        reference_first_epoch(d),
        "first_epoch of {d:02x?}"
    );
    assert_eq!(
        dtls::has_later_epoch(d),
        reference_has_later_epoch(d),
        "has_later_epoch of {d:02x?}"
    );
}

/// A datagram's records, each with its header; what follows the last whole
/// record (a truncated one, or bytes that are not a record) as it is.
fn records(d: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = d;
    while rest.len() >= 13 {
        let len = 13 + usize::from(rest[11]) * 256 + usize::from(rest[12]);
        if len > rest.len() {
            break;
        }
        let (r, tail) = rest.split_at(len);
        out.push(r);
        rest = tail;
    }
    if !rest.is_empty() {
        out.push(rest);
    }
    out
}

fn push_bounded(q: &mut VecDeque<Vec<u8>>, d: Vec<u8>) {
    if q.len() == IN_FLIGHT {
        q.pop_front();
    }
    q.push_back(d);
}

fn pick(q: &VecDeque<Vec<u8>>, i: u8) -> Option<usize> {
    let n = q.len();
    if n == 0 {
        None
    } else if i & 0x80 != 0 {
        Some(n - 1 - usize::from(i & 0x7f) % n)
    } else {
        Some(usize::from(i) % n)
    }
}

struct Server {
    dtls: Dtls,
    timeout: Option<Instant>,
    connected: bool,
    keyed: bool,
    /// The session ended (as str0m ends it: a failed timer, a close, an
    /// output it does not take).
    dead: bool,
    /// Answers the timer sent since the server last received a datagram.
    resends: usize,
    app_received: usize,
}

impl Server {
    /// A datagram from the network, as str0m hands it over.
    fn receive(&mut self, d: &[u8], to_client: &mut VecDeque<Vec<u8>>, client_sent: usize) {
        check_walk(d);
        // str0m's demux (RFC 7983): DTLS starts with 20..=63; roomcast's
        // sockets read at most MAX_DATAGRAM.
        if self.dead || d.is_empty() || !(20..64).contains(&d[0]) || d.len() > MAX_DATAGRAM {
            return;
        }
        let before = self.dtls.held();
        let early = !self.connected
            && (reference_first_epoch(d).is_some_and(|e| e > 0) || reference_has_later_epoch(d));
        // str0m logs a refused datagram and carries on.
        let _ = self.dtls.handle_packet(d);
        let after = self.dtls.held();
        assert!(
            after <= HELD_DATAGRAMS,
            "{after} datagrams held (at most {HELD_DATAGRAMS})"
        );
        if early {
            assert_eq!(
                after,
                (before + 1).min(HELD_DATAGRAMS),
                "an early datagram is held"
            );
        } else {
            assert_eq!(after, before, "only early datagrams are held");
        }
        self.resends = 0;
        self.poll(to_client, client_sent, false);
    }

    fn tick(&mut self, now: Instant, to_client: &mut VecDeque<Vec<u8>>, client_sent: usize) {
        if self.dead || self.timeout.is_none_or(|t| t > now) {
            return;
        }
        if self.dtls.handle_timeout(now).is_err() {
            // str0m disconnects: the handshake gave up.
            self.dead = true;
            return;
        }
        self.poll(to_client, client_sent, true);
    }

    fn poll(&mut self, to_client: &mut VecDeque<Vec<u8>>, client_sent: usize, timer: bool) {
        let mut buf = vec![0u8; POLL_BUFFER];
        let mut sent = 0usize;
        for _ in 0..MAX_POLLS {
            match self.dtls.poll_output(&mut buf) {
                DtlsOutput::Packet(p) => {
                    assert!(
                        p.len() <= str0m::DATAGRAM_MTU_TARGET,
                        "a datagram of {} bytes (MTU {})",
                        p.len(),
                        str0m::DATAGRAM_MTU_TARGET
                    );
                    check_walk(p);
                    sent += 1;
                    push_bounded(to_client, p.to_vec());
                }
                DtlsOutput::Timeout(t) => {
                    self.timeout = Some(t);
                    assert!(sent <= MAX_ANSWER, "{sent} datagrams in one answer");
                    if timer && sent > 0 {
                        self.resends += 1;
                        assert!(
                            self.resends <= FLIGHT_RETRIES,
                            "{} retransmissions without input (at most {FLIGHT_RETRIES})",
                            self.resends
                        );
                    }
                    return;
                }
                DtlsOutput::Connected => {
                    assert!(!self.connected, "connected twice");
                    self.connected = true;
                    assert_eq!(self.dtls.held(), 0, "datagrams held after the handshake");
                }
                DtlsOutput::KeyingMaterial(..) => {
                    assert!(!self.keyed, "keying material twice");
                    self.keyed = true;
                    assert!(
                        self.dtls.keys().exported(),
                        "keying material not exported to the session"
                    );
                }
                DtlsOutput::PeerCert(_) => {}
                DtlsOutput::ApplicationData(d) => {
                    assert!(self.connected, "application data before Connected");
                    self.app_received += d.len();
                    assert!(
                        self.app_received <= client_sent,
                        "{} bytes of application data received, {client_sent} sent",
                        self.app_received
                    );
                }
                // str0m closes the session on a close_notify, and fails it
                // on any other output (BufferTooSmall: a record over its
                // 2 000-byte buffer).
                _ => {
                    self.dead = true;
                    return;
                }
            }
        }
        panic!("poll_output gave {MAX_POLLS} outputs without a Timeout");
    }
}

struct Client {
    dtls: Box<dyn DtlsInstance>,
    timeout: Option<Instant>,
    connected: bool,
    dead: bool,
    app_sent: usize,
}

impl Client {
    fn poll(&mut self, to_server: &mut VecDeque<Vec<u8>>) {
        let mut buf = vec![0u8; 4096];
        for _ in 0..MAX_POLLS {
            match self.dtls.poll_output(&mut buf) {
                DtlsOutput::Packet(p) => push_bounded(to_server, p.to_vec()),
                DtlsOutput::Timeout(t) => {
                    self.timeout = Some(t);
                    return;
                }
                DtlsOutput::Connected => self.connected = true,
                DtlsOutput::PeerCert(_)
                | DtlsOutput::KeyingMaterial(..)
                | DtlsOutput::ApplicationData(_) => {}
                _ => {
                    self.dead = true;
                    return;
                }
            }
        }
        self.dead = true;
    }

    fn receive(&mut self, d: &[u8], to_server: &mut VecDeque<Vec<u8>>) {
        if !self.dead {
            let _ = self.dtls.handle_packet(d);
            self.poll(to_server);
        }
    }

    fn tick(&mut self, now: Instant, to_server: &mut VecDeque<Vec<u8>>) {
        if self.dead || self.timeout.is_none_or(|t| t > now) {
            return;
        }
        if self.dtls.handle_timeout(now).is_err() {
            self.dead = true;
            return;
        }
        self.poll(to_server);
    }
}

fn take(ops: &mut &[u8]) -> u8 {
    let (b, rest) = ops.split_first().map_or((0, &[][..]), |(b, r)| (*b, r));
    *ops = rest;
    b
}

fn take_n<'a>(ops: &mut &'a [u8], n: usize) -> &'a [u8] {
    let (d, rest) = ops.split_at(n.min(ops.len()));
    *ops = rest;
    d
}

fuzz_target!(|data: &[u8]| {
    let certs = certs();
    let mut ops = data;
    let header = take(&mut ops);
    let client_version = if header & 0x80 != 0 {
        DtlsVersion::Auto
    } else {
        DtlsVersion::Dtls12
    };
    let client_mtu = 200 + 8 * usize::from(header & 0x7f);
    let mut now = Instant::now();

    // As str0m's `Rtc` makes it and `init_dtls` starts it, answering an
    // offer with `a=setup:actpass`.
    let mut server = Server {
        dtls: Dtls::new(
            &certs.server,
            now,
            DtlsVersion::Dtls12,
            Some(str0m::DATAGRAM_MTU_TARGET),
        )
        .expect("the server's DTLS"),
        timeout: None,
        connected: false,
        keyed: false,
        dead: false,
        resends: 0,
        app_received: 0,
    };
    server.dtls.set_active(false);
    server.dtls.handle_timeout(now).expect("the server starts");
    let mut to_client = VecDeque::new();
    server.poll(&mut to_client, 0, false);
    assert!(to_client.is_empty(), "the server spoke first");

    let mut client = Client {
        dtls: str0m::crypto::from_feature_flags()
            .dtls_provider
            .new_dtls(&certs.client, now, client_version, Some(client_mtu))
            .expect("the client's DTLS"),
        timeout: None,
        connected: false,
        dead: false,
        app_sent: 0,
    };
    let mut to_server = VecDeque::new();
    client.dtls.set_active(true);
    client.dtls.handle_timeout(now).expect("the client starts");
    // str0m starts an active side with an empty datagram.
    let _ = client.dtls.handle_packet(&[]);
    client.poll(&mut to_server);

    while !ops.is_empty() {
        match take(&mut ops) % 8 {
            0 => {
                if let Some(i) = pick(&to_server, take(&mut ops)) {
                    let d = to_server.remove(i).expect("picked");
                    server.receive(&d, &mut to_client, client.app_sent);
                }
            }
            1 => {
                if let Some(i) = pick(&to_server, take(&mut ops)) {
                    to_server.remove(i);
                }
            }
            2 => {
                if let Some(i) = pick(&to_server, take(&mut ops)) {
                    let d = to_server.remove(i).expect("picked");
                    for r in records(&d).into_iter().rev() {
                        server.receive(r, &mut to_client, client.app_sent);
                    }
                }
            }
            3 => {
                let (i, k, x) = (take(&mut ops), take(&mut ops), take(&mut ops));
                if let Some(i) = pick(&to_server, i) {
                    let mut d = to_server[i].clone();
                    let k = usize::from(k) % d.len().max(1);
                    if let Some(b) = d.get_mut(k) {
                        *b ^= x.max(1);
                    }
                    server.receive(&d, &mut to_client, client.app_sent);
                }
            }
            4 => {
                let len = usize::from(take(&mut ops)) << 8 | usize::from(take(&mut ops));
                let d = take_n(&mut ops, len);
                server.receive(d, &mut to_client, client.app_sent);
            }
            5 => {
                let t = u64::from(take(&mut ops));
                now += Duration::from_millis(t * t);
                server.tick(now, &mut to_client, client.app_sent);
                client.tick(now, &mut to_server);
            }
            6 => {
                let i = take(&mut ops);
                if i == 255 {
                    while let Some(d) = to_client.pop_front() {
                        client.receive(&d, &mut to_server);
                    }
                } else if let Some(i) = pick(&to_client, i) {
                    let d = to_client.remove(i).expect("picked");
                    client.receive(&d, &mut to_server);
                }
            }
            _ => {
                let len = usize::from(take(&mut ops));
                let d = take_n(&mut ops, len);
                if client.connected && !client.dead {
                    if let Ok(n) = client.dtls.send_application_data(d) {
                        client.app_sent += n;
                    }
                    client.poll(&mut to_server);
                }
            }
        }
    }
});
