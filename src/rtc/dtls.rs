//! str0m's DTLS (dimpl, set up as str0m's AWS-LC provider does) with two
//! changes for lossy, reordering networks:
//!
//! - a datagram with a record of the peer's next epoch that arrives before
//!   the flight it depends on is held and fed again after the next datagram,
//!   instead of being lost;
//! - our flight is retransmitted after [`FLIGHT_START_RTO`] (doubling), not
//!   dimpl's 1 s, with as much patience in all ([`FLIGHT_RETRIES`]).
//!
//! dimpl drops such records and waits for the peer to retransmit its flight.
//! Chromium's flight 5 (Certificate, ClientKeyExchange, CertificateVerify,
//! ChangeCipherSpec, then Finished in epoch 1) spans datagrams; when the one
//! with Finished overtakes the others (reordering), the handshake waited for
//! Chromium's retransmission timer: ~1.1 s more to DTLS connected in 3-5 of
//! 10 joins through the impaired relay (tests/faults_network.rs).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use str0m::crypto::dtls::{
    DtlsCert, DtlsImplError, DtlsInstance, DtlsOutput, DtlsProvider, DtlsVersion, ProtocolVersion,
};
use str0m::crypto::{CryptoError, CryptoProvider};
use str0m::{Rtc, RtcConfig};

use super::srtp::{MasterKey, Profile};

/// Early datagrams held per session (a flight has a handful).
pub const HELD_DATAGRAMS: usize = 4;
/// A lost datagram of our flight (ServerHello … ServerHelloDone) costs this
/// instead of a second; a late answer costs a duplicate flight.
const FLIGHT_START_RTO: Duration = Duration::from_millis(250);
/// 250 ms doubling 6 times spans ~32 s, as dimpl's 1 s doubling 4 times does.
pub const FLIGHT_RETRIES: usize = 6;

/// str0m's crypto with our DTLS provider.
pub fn crypto_provider() -> CryptoProvider {
    static DTLS: ReorderTolerantDtls = ReorderTolerantDtls;
    let mut p = str0m::crypto::from_feature_flags();
    STR0M_DTLS.get_or_init(|| p.dtls_provider);
    p.dtls_provider = &DTLS;
    p
}

/// A session's sending SRTP master key, set by its DTLS instance when the
/// handshake exports the keying material (for `direct`: str0m keeps its
/// copy private). Shared between the instance inside the `Rtc` and the
/// viewer that owns that `Rtc`.
#[derive(Clone, Default)]
pub struct SrtpKeys(Arc<OnceLock<Option<MasterKey>>>);

impl SrtpKeys {
    /// The key, once DTLS completed (None for a profile we do not send).
    pub fn get(&self) -> Option<&MasterKey> {
        self.0.get()?.as_ref()
    }

    /// DTLS completed and exported its keying material (a key or not).
    pub fn exported(&self) -> bool {
        self.0.get().is_some()
    }

    #[cfg(test)]
    pub fn with(key: MasterKey) -> SrtpKeys {
        SrtpKeys(Arc::new(OnceLock::from(Some(key))))
    }
}

thread_local! {
    /// The keys of the DTLS instance made last on this thread: `Rtc`
    /// construction makes its instance synchronously (`build_rtc`).
    static MADE: RefCell<Option<SrtpKeys>> = const { RefCell::new(None) };
}

/// Builds an `Rtc` and returns the handle to its SRTP keys.
pub fn build_rtc(config: RtcConfig, now: Instant) -> (Rtc, Option<SrtpKeys>) {
    MADE.with(|m| m.borrow_mut().take());
    let rtc = config.build(now);
    (rtc, MADE.with(|m| m.borrow_mut().take()))
}

/// str0m's own provider: it makes the certificate.
static STR0M_DTLS: OnceLock<&'static dyn DtlsProvider> = OnceLock::new();

#[derive(Debug)]
struct ReorderTolerantDtls;

impl DtlsProvider for ReorderTolerantDtls {
    fn generate_certificate(&self) -> Option<DtlsCert> {
        STR0M_DTLS.get()?.generate_certificate()
    }

    fn new_dtls(
        &self,
        cert: &DtlsCert,
        now: Instant,
        version: DtlsVersion,
        mtu: Option<usize>,
    ) -> Result<Box<dyn DtlsInstance>, CryptoError> {
        let dtls = Dtls::new(cert, now, version, mtu)?;
        MADE.with(|m| *m.borrow_mut() = Some(dtls.keys.clone()));
        Ok(Box::new(dtls))
    }
}

/// The DTLS instance str0m gets from [`crypto_provider`] (public for the
/// `dtls_handshake` fuzz target, which drives one as str0m does).
pub struct Dtls {
    dtls: dimpl::Dtls,
    /// Handshake-time datagrams whose first record is past epoch 0.
    held: VecDeque<Vec<u8>>,
    connected: bool,
    keys: SrtpKeys,
}

impl Dtls {
    /// What the provider's `new_dtls` makes (str0m asks for DTLS 1.2 and
    /// its MTU, `str0m::DATAGRAM_MTU_TARGET`), unboxed.
    pub fn new(
        cert: &DtlsCert,
        now: Instant,
        version: DtlsVersion,
        mtu: Option<usize>,
    ) -> Result<Dtls, CryptoError> {
        // No server cookie: ICE has checked the return path (as str0m does).
        let mut builder = dimpl::Config::builder()
            .use_server_cookie(false)
            .flight_start_rto(FLIGHT_START_RTO)
            .flight_retries(FLIGHT_RETRIES);
        if let Some(mtu) = mtu {
            builder = builder.mtu(mtu);
        }
        let config = Arc::new(
            builder
                .build()
                .map_err(|e| CryptoError::Other(format!("DTLS config: {e}")))?,
        );
        let cert = cert.clone();
        let dtls = match version {
            DtlsVersion::Dtls12 => dimpl::Dtls::new_12(config, cert, now),
            DtlsVersion::Dtls13 => dimpl::Dtls::new_13(config, cert, now),
            DtlsVersion::Auto => dimpl::Dtls::new_auto(config, cert, now),
            v => {
                return Err(CryptoError::Other(format!(
                    "DTLS version {v} not supported"
                )));
            }
        };
        Ok(Dtls {
            dtls,
            held: VecDeque::new(),
            connected: false,
            keys: SrtpKeys::default(),
        })
    }

    /// How many early datagrams are held (at most [`HELD_DATAGRAMS`]).
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// The sending SRTP key this instance exports when it connects.
    pub fn keys(&self) -> &SrtpKeys {
        &self.keys
    }
}

/// The epoch of a datagram's first DTLS record (bytes 3..5 of its header).
pub fn first_epoch(datagram: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*datagram.get(3)?, *datagram.get(4)?]))
}

/// Whether any DTLS 1.2 record in the datagram is past epoch 0. A flight
/// packs several records into a datagram: ChangeCipherSpec (epoch 0) and
/// Finished (epoch 1), or a fragment of it, often share one, so looking
/// at the first record alone lost the Finished when that datagram came
/// before the rest of its flight.
pub fn has_later_epoch(datagram: &[u8]) -> bool {
    // type (1), version (2), epoch (2), sequence number (6), length (2).
    const HEADER: usize = 13;
    let mut rest = datagram;
    while rest.len() >= HEADER && (20..=25).contains(&rest[0]) {
        if u16::from_be_bytes([rest[3], rest[4]]) > 0 {
            return true;
        }
        let len = usize::from(u16::from_be_bytes([rest[11], rest[12]]));
        rest = rest.get(HEADER + len..).unwrap_or_default();
    }
    false
}

impl std::fmt::Debug for Dtls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dtls")
            .field("held", &self.held.len())
            .finish()
    }
}

impl DtlsInstance for Dtls {
    fn set_active(&mut self, active: bool) {
        self.dtls.set_active(active)
    }

    fn handle_packet(&mut self, packet: &[u8]) -> Result<(), DtlsImplError> {
        // The first record's epoch is read whatever its type, as before;
        // the walk finds a later epoch behind an epoch-0 record.
        let early = !self.connected
            && (first_epoch(packet).is_some_and(|e| e > 0) || has_later_epoch(packet));
        if early {
            if self.held.len() == HELD_DATAGRAMS {
                self.held.pop_front();
            }
            self.held.push_back(packet.to_vec());
        }
        self.dtls.handle_packet(packet)?;
        if !early {
            // What was held may be readable now (dimpl drops it again if not,
            // so it stays held until we connect; a duplicate is discarded,
            // never an error).
            for held in &self.held {
                self.dtls.handle_packet(held)?;
            }
        }
        Ok(())
    }

    fn poll_output<'a>(&mut self, buf: &'a mut [u8]) -> DtlsOutput<'a> {
        let out = self.dtls.poll_output(buf);
        match &out {
            DtlsOutput::Connected => {
                self.connected = true;
                self.held.clear();
            }
            DtlsOutput::KeyingMaterial(km, profile) => {
                let key = Profile::from_dtls(*profile).and_then(|p| {
                    MasterKey::from_keying_material(p, km.as_ref(), self.dtls.is_active())
                });
                let _ = self.keys.0.set(key);
            }
            _ => {}
        }
        out
    }

    fn handle_timeout(&mut self, now: Instant) -> Result<(), DtlsImplError> {
        self.dtls.handle_timeout(now)
    }

    fn send_application_data(&mut self, data: &[u8]) -> Result<usize, DtlsImplError> {
        self.dtls.send_application_data(data)
    }

    fn is_active(&self) -> bool {
        self.dtls.is_active()
    }

    fn protocol_version(&self) -> Option<ProtocolVersion> {
        self.dtls.protocol_version()
    }

    fn is_closing(&self) -> bool {
        self.dtls.is_closing()
    }

    fn is_closed(&self) -> bool {
        self.dtls.is_closed()
    }

    fn close(&mut self) -> Result<(), DtlsImplError> {
        self.dtls.close()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The datagrams a poll loop yields until its timeout, and whether it
    /// connected meanwhile.
    macro_rules! drain {
        ($poll:expr) => {{
            let mut buf = vec![0u8; 4096];
            let (mut out, mut connected) = (Vec::new(), false);
            loop {
                match $poll(&mut buf) {
                    DtlsOutput::Packet(p) => out.push(p.to_vec()),
                    DtlsOutput::Timeout(_) => break,
                    DtlsOutput::Connected => connected = true,
                    _ => {}
                }
            }
            (out, connected)
        }};
    }

    fn client_output(c: &mut dimpl::Dtls) -> (Vec<Vec<u8>>, bool) {
        drain!(|b| c.poll_output(b))
    }

    fn server_output(s: &mut dyn DtlsInstance) -> (Vec<Vec<u8>>, bool) {
        drain!(|b| s.poll_output(b))
    }

    /// The records of a datagram, each with its header.
    fn records(datagram: &[u8]) -> Vec<&[u8]> {
        let mut out = Vec::new();
        let mut rest = datagram;
        while rest.len() >= 13 {
            let len = 13 + usize::from(u16::from_be_bytes([rest[11], rest[12]]));
            out.push(&rest[..len]);
            rest = &rest[len..];
        }
        out
    }

    /// A DTLS 1.2 handshake with the client's flight 5 (Certificate,
    /// ClientKeyExchange, CertificateVerify, ChangeCipherSpec, Finished)
    /// packed into datagrams by `repack` and delivered last first; whether
    /// the server connected without any retransmission.
    fn connects_with_flight_5(repack: fn(Vec<Vec<u8>>) -> Vec<Vec<u8>>) -> bool {
        let now = Instant::now();
        let provider = crypto_provider();
        let cert = provider.dtls_provider.generate_certificate().unwrap();
        let mut server = provider
            .dtls_provider
            .new_dtls(&cert, now, DtlsVersion::Dtls12, None)
            .unwrap();
        server.set_active(false);
        server.handle_timeout(now).unwrap();
        // A small MTU spreads flight 5 over datagrams.
        let config = Arc::new(dimpl::Config::builder().mtu(300).build().unwrap());
        let mut client = dimpl::Dtls::new_12(config, cert.clone(), now);
        client.set_active(true);
        client.handle_timeout(now).unwrap();

        let mut connected = false;
        for flight in 0..4 {
            let (mut datagrams, _) = client_output(&mut client);
            if flight == 1 {
                assert!(
                    datagrams.iter().any(|d| has_later_epoch(d)),
                    "flight 5 has a record in epoch 1"
                );
                datagrams = repack(datagrams);
                datagrams.reverse();
            }
            for d in datagrams {
                server.handle_packet(&d).unwrap();
            }
            let (back, c) = server_output(server.as_mut());
            connected |= c;
            for d in back {
                client.handle_packet(&d).unwrap();
            }
        }
        connected
    }

    /// As dimpl packs it (where the Finished lands depends on the sizes of
    /// the certificate and signature).
    #[test]
    fn a_finished_that_overtakes_its_flight_is_not_lost() {
        assert!(
            connects_with_flight_5(|datagrams| datagrams),
            "the server did not connect without a retransmission"
        );
    }

    /// Every record in a datagram of its own: the Finished arrives first,
    /// alone.
    #[test]
    fn a_finished_alone_that_overtakes_its_flight_is_not_lost() {
        assert!(connects_with_flight_5(|datagrams| {
            datagrams
                .iter()
                .flat_map(|d| records(d))
                .map(<[u8]>::to_vec)
                .collect()
        }));
    }

    /// ChangeCipherSpec (epoch 0) and the Finished (epoch 1) in one
    /// datagram, as browsers send them, ahead of the rest: that datagram's
    /// first record is of epoch 0, and only its Finished was early. Before,
    /// only a datagram whose first record was past epoch 0 was held, and
    /// this one's Finished was lost (1 run in 100 of the test above, when
    /// the sizes put it there).
    #[test]
    fn a_change_cipher_spec_with_its_finished_that_overtakes_the_flight_is_not_lost() {
        assert!(connects_with_flight_5(|datagrams| {
            let all: Vec<Vec<u8>> = datagrams
                .iter()
                .flat_map(|d| records(d))
                .map(<[u8]>::to_vec)
                .collect();
            let ccs = all
                .iter()
                .position(|r| r[0] == 20)
                .expect("a ChangeCipherSpec");
            let mut out: Vec<Vec<u8>> = all[..ccs].to_vec();
            out.push(all[ccs..].concat());
            assert!(first_epoch(out.last().unwrap()) == Some(0));
            out
        }));
    }

    #[test]
    fn a_later_epoch_is_found_past_the_first_record() {
        let record = |kind: u8, epoch: u16, body: &[u8]| {
            let mut r = vec![kind, 0xfe, 0xfd];
            r.extend_from_slice(&epoch.to_be_bytes());
            r.extend_from_slice(&[0; 6]);
            r.extend_from_slice(&(body.len() as u16).to_be_bytes());
            r.extend_from_slice(body);
            r
        };
        let ccs = record(20, 0, &[1]);
        let finished = record(22, 1, &[9; 40]);
        assert!(!has_later_epoch(&ccs));
        assert!(has_later_epoch(&[ccs.clone(), finished.clone()].concat()));
        assert!(has_later_epoch(&finished));
        // A truncated or foreign datagram is not read past its end.
        assert!(!has_later_epoch(
            &[ccs.clone(), finished[..10].to_vec()].concat()
        ));
        assert!(!has_later_epoch(&[0x30; 40]));
        assert!(!has_later_epoch(&[]));
    }
}
