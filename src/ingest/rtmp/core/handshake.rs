//! The server side of the RTMP handshake (C0 C1 → S0 S1 S2 → C2), in fixed
//! buffers. A C1 carrying a Flash Player digest gets the digest-style answer
//! (players that verify the server need it); any other C1 is echoed as S2,
//! which is all the original specification asks.

use hmac::{Hmac, Mac};
use rand::Rng;
use sha2::Sha256;

pub const PACKET_SIZE: usize = 1536;
const VERSION: u8 = 3;
const DIGEST_LEN: usize = 32;
/// Published protocol constants of the digest handshake.
const FP_KEY: &[u8] = b"Genuine Adobe Flash Player 001";
const FMS_KEY: &[u8] = b"Genuine Adobe Flash Media Server 001";
const FMS_KEY_TAIL: [u8; 32] = [
    0xf0, 0xee, 0xc2, 0x4a, 0x80, 0x68, 0xbe, 0xe8, 0x2e, 0x00, 0xd0, 0xd1, 0x02, 0x9e, 0x7e, 0x57,
    0x6e, 0xec, 0x5d, 0x2d, 0x29, 0x80, 0x6f, 0xab, 0x93, 0xb8, 0xe6, 0x36, 0xcf, 0xeb, 0x31, 0xae,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("not RTMP (handshake version byte 0x{0:02x}, expected 0x03)")]
    BadVersion(u8),
}

enum Stage {
    /// Collecting C0 + C1 (`have` bytes so far).
    C0C1 {
        have: usize,
    },
    /// Skipping C2 (`left` bytes to go): only its arrival matters.
    C2 {
        left: usize,
    },
    Done,
}

pub struct Handshake {
    stage: Stage,
    c0c1: Box<[u8; PACKET_SIZE + 1]>,
}

impl Default for Handshake {
    fn default() -> Self {
        Handshake {
            stage: Stage::C0C1 { have: 0 },
            c0c1: Box::new([0; PACKET_SIZE + 1]),
        }
    }
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; DIGEST_LEN] {
    let mut out = [0u8; DIGEST_LEN];
    // HMAC takes keys of any length; the error branch cannot happen.
    if let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) {
        for p in parts {
            mac.update(p);
        }
        out.copy_from_slice(&mac.finalize().into_bytes());
    }
    out
}

/// Where the digest sits in a 1536-byte packet under the scheme whose offset
/// field starts at `base` (8 or 772).
fn digest_offset(p: &[u8; PACKET_SIZE], base: usize) -> usize {
    let sum: usize = p[base..base + 4].iter().map(|&b| usize::from(b)).sum();
    sum % 728 + base + 4
}

fn digest_of(p: &[u8; PACKET_SIZE], off: usize, key: &[u8]) -> [u8; DIGEST_LEN] {
    hmac(key, &[&p[..off], &p[off + DIGEST_LEN..]])
}

/// The client's digest and the scheme base it used, if C1 carries one.
fn client_digest(c1: &[u8; PACKET_SIZE]) -> Option<([u8; DIGEST_LEN], usize)> {
    [772, 8].into_iter().find_map(|base| {
        let off = digest_offset(c1, base);
        let expected = digest_of(c1, off, FP_KEY);
        (c1[off..off + DIGEST_LEN] == expected).then_some((expected, base))
    })
}

impl Handshake {
    pub fn is_done(&self) -> bool {
        matches!(self.stage, Stage::Done)
    }

    /// Consumes handshake bytes from the front of `data`, appends any reply to
    /// `out`, and returns how many bytes it used; the rest (once done) is
    /// already RTMP chunks.
    pub fn receive(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<usize, HandshakeError> {
        let mut used = 0;
        loop {
            match &mut self.stage {
                Stage::C0C1 { have } => {
                    let n = (self.c0c1.len() - *have).min(data.len() - used);
                    self.c0c1[*have..*have + n].copy_from_slice(&data[used..used + n]);
                    if *have == 0 && n > 0 && self.c0c1[0] != VERSION {
                        return Err(HandshakeError::BadVersion(self.c0c1[0]));
                    }
                    *have += n;
                    used += n;
                    if *have < self.c0c1.len() {
                        return Ok(used);
                    }
                    self.reply(out);
                    self.stage = Stage::C2 { left: PACKET_SIZE };
                }
                Stage::C2 { left } => {
                    let n = (*left).min(data.len() - used);
                    *left -= n;
                    used += n;
                    if *left > 0 {
                        return Ok(used);
                    }
                    self.stage = Stage::Done;
                }
                Stage::Done => return Ok(used),
            }
        }
    }

    fn reply(&self, out: &mut Vec<u8>) {
        let mut c1 = [0u8; PACKET_SIZE];
        c1.copy_from_slice(&self.c0c1[1..]);
        let mut rng = rand::rng();
        let mut s1 = [0u8; PACKET_SIZE];
        rng.fill(&mut s1[8..]);
        out.push(VERSION);
        match client_digest(&c1) {
            Some((digest, base)) => {
                // Version field non-zero marks the digest style; the digest goes
                // where the client's scheme puts it.
                s1[4..8].copy_from_slice(&[4, 5, 0, 1]);
                let off = digest_offset(&s1, base);
                let d = digest_of(&s1, off, FMS_KEY);
                s1[off..off + DIGEST_LEN].copy_from_slice(&d);
                out.extend_from_slice(&s1);
                let mut s2 = [0u8; PACKET_SIZE];
                rng.fill(&mut s2[..]);
                let key = hmac(&[FMS_KEY, &FMS_KEY_TAIL].concat(), &[&digest]);
                let sig = hmac(&key, &[&s2[..PACKET_SIZE - DIGEST_LEN]]);
                s2[PACKET_SIZE - DIGEST_LEN..].copy_from_slice(&sig);
                out.extend_from_slice(&s2);
            }
            None => {
                out.extend_from_slice(&s1);
                out.extend_from_slice(&c1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_c1_is_echoed_and_leftover_bytes_returned() {
        let mut h = Handshake::default();
        let mut out = Vec::new();
        let mut input = vec![3u8];
        input.extend((0..PACKET_SIZE).map(|i| (i % 7) as u8));
        // Byte by byte for the first few, then the rest.
        for b in &input[..10] {
            assert_eq!(h.receive(std::slice::from_ref(b), &mut out).unwrap(), 1);
        }
        assert_eq!(h.receive(&input[10..], &mut out).unwrap(), input.len() - 10);
        assert_eq!(out.len(), 1 + 2 * PACKET_SIZE);
        assert_eq!(&out[1 + PACKET_SIZE..], &input[1..]);
        assert!(!h.is_done());
        let mut rest = vec![0u8; PACKET_SIZE];
        rest.extend_from_slice(b"chunks");
        assert_eq!(h.receive(&rest, &mut out).unwrap(), PACKET_SIZE);
        assert!(h.is_done());
    }

    #[test]
    fn wrong_version_is_refused_at_the_first_byte() {
        let mut h = Handshake::default();
        assert_eq!(
            h.receive(b"GET / HTTP/1.1\r\n", &mut Vec::new()),
            Err(HandshakeError::BadVersion(b'G'))
        );
    }

    /// rml_rtmp's client sends a digest C1 and verifies our digest S1 and S2.
    #[test]
    fn a_verifying_client_accepts_the_digest_reply() {
        use rml_rtmp::handshake::{Handshake as Client, HandshakeProcessResult, PeerType};
        let mut client = Client::new(PeerType::Client);
        let c0c1 = client.generate_outbound_p0_and_p1().unwrap();
        let mut server = Handshake::default();
        let mut s = Vec::new();
        server.receive(&c0c1, &mut s).unwrap();
        let c2 = match client.process_bytes(&s).unwrap() {
            HandshakeProcessResult::Completed { response_bytes, .. } => response_bytes,
            HandshakeProcessResult::InProgress { response_bytes } => response_bytes,
        };
        assert_eq!(c2.len(), PACKET_SIZE);
        assert_eq!(server.receive(&c2, &mut s).unwrap(), PACKET_SIZE);
        assert!(server.is_done());
        assert!(client_digest(&c0c1[1..].try_into().unwrap()).is_some());
    }
}
