//! SRTP and SRTCP protection (RFC 3711, RFC 7714) for the packets roomcast
//! sends itself, sans I/O: the caller writes a plaintext packet into its
//! send buffer (the shard's GSO batch) and this encrypts it there, in place,
//! and appends the tag. No allocation per packet; the keys are set up once
//! per viewer from the DTLS-SRTP keying material str0m's handshake exported.
//!
//! Only the sending side: str0m keeps decrypting what the viewer sends
//! (RTCP) with its own context. The three profiles are those dimpl (str0m's
//! DTLS) can negotiate: AES128_CM_HMAC_SHA1_80, AEAD_AES_128_GCM and
//! AEAD_AES_256_GCM.

use aws_lc_rs::cipher::{AES_128, AES_256, EncryptingKey, EncryptionContext, UnboundCipherKey};
use aws_lc_rs::{aead, hmac};

/// A DTLS-SRTP protection profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Aes128CmSha1_80,
    AeadAes128Gcm,
    AeadAes256Gcm,
}

impl Profile {
    pub fn from_dtls(p: str0m::crypto::dtls::SrtpProfile) -> Option<Profile> {
        use str0m::crypto::dtls::SrtpProfile as P;
        #[allow(unreachable_patterns)]
        match p {
            P::AES128_CM_SHA1_80 => Some(Profile::Aes128CmSha1_80),
            P::AEAD_AES_128_GCM => Some(Profile::AeadAes128Gcm),
            P::AEAD_AES_256_GCM => Some(Profile::AeadAes256Gcm),
            _ => None,
        }
    }

    pub fn keying_material_len(self) -> usize {
        2 * (self.key_len() + self.salt_len())
    }

    fn key_len(self) -> usize {
        match self {
            Profile::Aes128CmSha1_80 | Profile::AeadAes128Gcm => 16,
            Profile::AeadAes256Gcm => 32,
        }
    }

    fn salt_len(self) -> usize {
        match self {
            Profile::Aes128CmSha1_80 => 14,
            Profile::AeadAes128Gcm | Profile::AeadAes256Gcm => 12,
        }
    }

    /// Bytes SRTP adds to an RTP packet (the authentication tag).
    pub fn rtp_overhead(self) -> usize {
        match self {
            Profile::Aes128CmSha1_80 => HMAC_TAG_LEN,
            Profile::AeadAes128Gcm | Profile::AeadAes256Gcm => GCM_TAG_LEN,
        }
    }

    /// Bytes SRTCP adds to an RTCP packet (E flag and index, and the tag).
    pub fn rtcp_overhead(self) -> usize {
        4 + self.rtp_overhead()
    }
}

const HMAC_TAG_LEN: usize = 10;
const HMAC_KEY_LEN: usize = 20;
const GCM_TAG_LEN: usize = 16;
/// RFC 3711 §4.3.1 key derivation labels.
const LABEL_RTP_KEY: u8 = 0;
const LABEL_RTP_AUTH: u8 = 1;
const LABEL_RTP_SALT: u8 = 2;
const LABEL_RTCP_KEY: u8 = 3;
const LABEL_RTCP_AUTH: u8 = 4;
const LABEL_RTCP_SALT: u8 = 5;

/// Our sending master key and salt.
#[derive(Clone)]
pub struct MasterKey {
    profile: Profile,
    key: [u8; 32],
    salt: [u8; 14],
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKey")
            .field("profile", &self.profile)
            .finish_non_exhaustive()
    }
}

impl MasterKey {
    /// Our half of the exported keying material, laid out as RFC 5764 §4.2
    /// says (client key, server key, client salt, server salt): the DTLS
    /// client (`active`) sends with the client's.
    pub fn from_keying_material(profile: Profile, km: &[u8], active: bool) -> Option<MasterKey> {
        let (kl, sl) = (profile.key_len(), profile.salt_len());
        if km.len() != 2 * (kl + sl) {
            return None;
        }
        let (k, s) = if active {
            (0, 2 * kl)
        } else {
            (kl, 2 * kl + sl)
        };
        Some(MasterKey::new(profile, &km[k..k + kl], &km[s..s + sl]))
    }

    /// A master key and salt of the profile's lengths (panics otherwise).
    pub fn new(profile: Profile, key: &[u8], salt: &[u8]) -> MasterKey {
        assert_eq!(key.len(), profile.key_len());
        assert_eq!(salt.len(), profile.salt_len());
        let mut m = MasterKey {
            profile,
            key: [0; 32],
            salt: [0; 14],
        };
        m.key[..key.len()].copy_from_slice(key);
        m.salt[..salt.len()].copy_from_slice(salt);
        m
    }

    pub fn profile(&self) -> Profile {
        self.profile
    }

    /// RFC 3711 §4.3.1 with a key derivation rate of 0 (RFC 7714 §11 for
    /// GCM): the AES-CM keystream under the master key, from the IV
    /// `(master salt XOR label·2^48)·2^16`.
    fn derive(&self, label: u8, out: &mut [u8]) {
        let mut iv = [0u8; 16];
        iv[..self.profile.salt_len()].copy_from_slice(&self.salt[..self.profile.salt_len()]);
        iv[7] ^= label;
        out.fill(0);
        let key = ctr_key(&self.key[..self.profile.key_len()]);
        ctr(&key, iv, out);
    }
}

fn ctr_key(key: &[u8]) -> EncryptingKey {
    let alg = if key.len() == 32 { &AES_256 } else { &AES_128 };
    let unbound = UnboundCipherKey::new(alg, key).expect("AES key of 16 or 32 bytes");
    EncryptingKey::ctr(unbound).expect("AES-CTR")
}

/// XORs `buf` with the AES-CTR keystream starting at counter `iv`.
fn ctr(key: &EncryptingKey, iv: [u8; 16], buf: &mut [u8]) {
    if buf.is_empty() {
        return;
    }
    key.less_safe_encrypt(buf, EncryptionContext::Iv128(iv.into()))
        .expect("AES-CTR takes any length");
}

/// Session keys for RTP or for RTCP.
enum Session {
    /// Boxed: aws-lc's HMAC key holds its contexts (~1.7 KB).
    Cm(Box<CmSession>),
    Gcm {
        key: aead::LessSafeKey,
        salt: [u8; 12],
    },
}

impl Session {
    fn new(master: &MasterKey, labels: [u8; 3]) -> Session {
        let p = master.profile;
        let mut key = [0u8; 32];
        let key = &mut key[..p.key_len()];
        master.derive(labels[0], key);
        match p {
            Profile::Aes128CmSha1_80 => {
                let mut auth = [0u8; HMAC_KEY_LEN];
                master.derive(labels[1], &mut auth);
                let mut salt = [0u8; 14];
                master.derive(labels[2], &mut salt);
                Session::Cm(Box::new(CmSession {
                    key: ctr_key(key),
                    auth: hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &auth),
                    salt,
                }))
            }
            Profile::AeadAes128Gcm | Profile::AeadAes256Gcm => {
                let mut salt = [0u8; 12];
                master.derive(labels[2], &mut salt);
                let alg = if p == Profile::AeadAes256Gcm {
                    &aead::AES_256_GCM
                } else {
                    &aead::AES_128_GCM
                };
                let unbound = aead::UnboundKey::new(alg, key).expect("AES-GCM key");
                Session::Gcm {
                    key: aead::LessSafeKey::new(unbound),
                    salt,
                }
            }
        }
    }
}

struct CmSession {
    key: EncryptingKey,
    auth: hmac::Key,
    salt: [u8; 14],
}

/// RFC 3711 §4.1.1: `(salt·2^16) XOR (SSRC·2^64) XOR (index·2^16)`.
fn cm_iv(salt: &[u8; 14], ssrc: u32, index: u64) -> [u8; 16] {
    let mut iv = [0u8; 16];
    iv[4..8].copy_from_slice(&ssrc.to_be_bytes());
    iv[8..14].copy_from_slice(&index.to_be_bytes()[2..]);
    for (b, s) in iv.iter_mut().zip(salt) {
        *b ^= s;
    }
    iv
}

/// RFC 7714 §8.1 and §9.1: `(0x0000 || SSRC || high || low) XOR salt`.
fn gcm_iv(salt: &[u8; 12], ssrc: u32, high: u32, low: u16) -> aead::Nonce {
    let mut iv = [0u8; 12];
    iv[2..6].copy_from_slice(&ssrc.to_be_bytes());
    iv[6..10].copy_from_slice(&high.to_be_bytes());
    iv[10..12].copy_from_slice(&low.to_be_bytes());
    for (b, s) in iv.iter_mut().zip(salt) {
        *b ^= s;
    }
    aead::Nonce::assume_unique_for_key(iv)
}

/// The SSRC of an RTP or RTCP packet (bytes 8..12 and 4..8).
fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// One viewer's sending SRTP and SRTCP contexts.
pub struct SrtpTx {
    profile: Profile,
    rtp: Session,
    rtcp: Session,
    /// The next SRTCP index (31 bits).
    srtcp_index: u32,
}

impl SrtpTx {
    /// `first_srtcp_index`: where our SRTCP indexes start. str0m's own
    /// SRTCP context, sending with the same keys, counts from 1: ours start
    /// far above, so the receiver's replay window never sees a reuse.
    pub fn new(master: &MasterKey, first_srtcp_index: u32) -> SrtpTx {
        SrtpTx {
            profile: master.profile,
            rtp: Session::new(master, [LABEL_RTP_KEY, LABEL_RTP_AUTH, LABEL_RTP_SALT]),
            rtcp: Session::new(master, [LABEL_RTCP_KEY, LABEL_RTCP_AUTH, LABEL_RTCP_SALT]),
            srtcp_index: first_srtcp_index & 0x7fff_ffff,
        }
    }

    pub fn profile(&self) -> Profile {
        self.profile
    }

    /// Protects an RTP packet into `buf`, which holds its header
    /// (`buf[..header_len]`: fixed header, CSRCs, extensions) and then
    /// `prefix_len` plaintext bytes of payload already written (RTX's
    /// original sequence number, or none); `payload` is the rest of the
    /// payload, read from where it lies. `buf` is exactly `header_len +
    /// prefix_len + payload.len() + profile.rtp_overhead()` bytes: the
    /// ciphertext follows the header and the tag ends it. With AES-GCM the
    /// payload is encrypted straight from its source into `buf`, so a
    /// viewer's packet costs one pass over its bytes, not a copy and then a
    /// pass. `roc` is the rollover counter of the packet's sequence number.
    pub fn protect_rtp(
        &self,
        buf: &mut [u8],
        header_len: usize,
        prefix_len: usize,
        payload: &[u8],
        roc: u32,
    ) {
        let len = buf.len() - self.profile.rtp_overhead();
        debug_assert_eq!(len, header_len + prefix_len + payload.len());
        let ssrc = be32(&buf[8..12]);
        let seq = u16::from_be_bytes([buf[2], buf[3]]);
        match &self.rtp {
            Session::Cm(cm) => {
                let CmSession { key, auth, salt } = &**cm;
                buf[header_len + prefix_len..len].copy_from_slice(payload);
                let index = (u64::from(roc) << 16) | u64::from(seq);
                ctr(key, cm_iv(salt, ssrc, index), &mut buf[header_len..len]);
                let mut mac = hmac::Context::with_key(auth);
                mac.update(&buf[..len]);
                mac.update(&roc.to_be_bytes());
                let tag = mac.sign();
                buf[len..].copy_from_slice(&tag.as_ref()[..HMAC_TAG_LEN]);
            }
            Session::Gcm { key, salt } => {
                let nonce = gcm_iv(salt, ssrc, roc, seq);
                let (head, rest) = buf.split_at_mut(header_len);
                let (prefix, payload_and_tag) = rest.split_at_mut(prefix_len);
                key.seal_in_place_scatter(
                    nonce,
                    aead::Aad::from(&*head),
                    prefix,
                    payload,
                    payload_and_tag,
                )
                .expect("AES-GCM seal");
            }
        }
    }

    /// Protects the (compound) RTCP packet in `buf[..len]` in place: `buf`
    /// is `len + profile.rtcp_overhead()` bytes. Each call takes the next
    /// SRTCP index.
    pub fn protect_rtcp(&mut self, buf: &mut [u8]) {
        let len = buf.len() - self.profile.rtcp_overhead();
        let index = self.srtcp_index;
        self.srtcp_index = (self.srtcp_index + 1) & 0x7fff_ffff;
        // The E flag: the payload is encrypted.
        let e_index = (0x8000_0000 | index).to_be_bytes();
        let ssrc = be32(&buf[4..8]);
        match &self.rtcp {
            Session::Cm(cm) => {
                let CmSession { key, auth, salt } = &**cm;
                ctr(key, cm_iv(salt, ssrc, u64::from(index)), &mut buf[8..len]);
                buf[len..len + 4].copy_from_slice(&e_index);
                let tag = hmac::sign(auth, &buf[..len + 4]);
                buf[len + 4..].copy_from_slice(&tag.as_ref()[..HMAC_TAG_LEN]);
            }
            Session::Gcm { key, salt } => {
                // RFC 7714 §9.1: the AAD is the first 8 bytes and E||index,
                // which follows the tag.
                let nonce = gcm_iv(salt, ssrc, 0, 0);
                let nonce = {
                    // The index occupies the IV's last 32 bits.
                    let mut iv = [0u8; 12];
                    iv.copy_from_slice(nonce.as_ref());
                    for (b, i) in iv[8..].iter_mut().zip(index.to_be_bytes()) {
                        *b ^= i;
                    }
                    aead::Nonce::assume_unique_for_key(iv)
                };
                let mut aad = [0u8; 12];
                aad[..8].copy_from_slice(&buf[..8]);
                aad[8..].copy_from_slice(&e_index);
                let (body, rest) = buf[8..].split_at_mut(len - 8);
                let tag = key
                    .seal_in_place_separate_tag(nonce, aead::Aad::from(aad), body)
                    .expect("AES-GCM seal");
                rest[..GCM_TAG_LEN].copy_from_slice(tag.as_ref());
                rest[GCM_TAG_LEN..].copy_from_slice(&e_index);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// `packet` (a 12-byte header and its payload) protected, the first
    /// `prefix_len` bytes of the payload written into the buffer ahead and
    /// the rest read from the packet, as RTX writes its original sequence
    /// number.
    fn protect(tx: &SrtpTx, packet: &[u8], prefix_len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; packet.len() + tx.profile().rtp_overhead()];
        buf[..12 + prefix_len].copy_from_slice(&packet[..12 + prefix_len]);
        tx.protect_rtp(&mut buf, 12, prefix_len, &packet[12 + prefix_len..], 0);
        buf
    }

    /// Where the payload's bytes come from does not change the packet:
    /// a plaintext prefix written into the buffer ahead (RTX) and the rest
    /// read from its source give what the whole payload from its source
    /// gives, with either cipher, whatever the prefix's length.
    #[test]
    fn a_prefix_written_ahead_protects_as_part_of_the_payload() {
        let m = MasterKey::new(Profile::Aes128CmSha1_80, &[7; 16], &[9; 14]);
        let cm = SrtpTx::new(&m, 0);
        let gcm = gcm_tx(&[5; 32]);
        let packet: Vec<u8> = (0..1212u32).map(|i| (i * 7 + 3) as u8).collect();
        for tx in [&cm, &gcm] {
            let whole = protect(tx, &packet, 0);
            for prefix_len in [1, 2, 15, 16, 17, 600] {
                assert_eq!(protect(tx, &packet, prefix_len), whole, "{prefix_len}");
            }
        }
    }

    #[test]
    fn rfc3711_b2_aes_cm_keystream() {
        let key = ctr_key(&hex("2B7E151628AED2A6ABF7158809CF4F3C"));
        let salt: [u8; 14] = hex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD").try_into().unwrap();
        // SSRC and index zero: the IV is the salt shifted by 16 bits.
        let iv = cm_iv(&salt, 0, 0);
        assert_eq!(iv[..], hex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD0000")[..]);
        let mut stream = vec![0u8; 65282 * 16];
        ctr(&key, iv, &mut stream);
        assert_eq!(
            stream[..48],
            hex(
                "E03EAD0935C95E80E166B16DD92B4EB4 D23513162B02D0F72A43A2FE4A5F97AB
                 41E95B3BB0A2E8DD477901E4FCA894C0"
            )[..]
        );
        assert_eq!(
            stream[stream.len() - 48..],
            hex(
                "EC8CDF7398607CB0F2D21675EA9EA1E4 362B7C3C6773516318A077D7FC5073AE
                 6A2CC3787889374FBEB4C81B17BA6C44"
            )[..]
        );
    }

    #[test]
    fn rfc3711_b3_key_derivation() {
        let m = MasterKey::new(
            Profile::Aes128CmSha1_80,
            &hex("E1F97A0D3E018BE0D64FA32C06DE4139"),
            &hex("0EC675AD498AFEEBB6960B3AABE6"),
        );
        let mut key = [0u8; 16];
        m.derive(LABEL_RTP_KEY, &mut key);
        assert_eq!(key[..], hex("C61E7A93744F39EE10734AFE3FF7A087")[..]);
        let mut salt = [0u8; 14];
        m.derive(LABEL_RTP_SALT, &mut salt);
        assert_eq!(salt[..], hex("30CBBC08863D8C85D49DB34A9AE1")[..]);
        let mut auth = [0u8; 20];
        m.derive(LABEL_RTP_AUTH, &mut auth);
        assert_eq!(
            auth[..],
            hex("CEBE321F6FF7716B6FD4AB49AF256A156D38BAA4")[..]
        );
    }

    /// libsrtp's `srtp_validate` known answer (the RFC 3711 B.3 master key):
    /// the whole packet, cipher and HMAC tag.
    #[test]
    fn aes_cm_sha1_80_protects_a_whole_packet() {
        let m = MasterKey::new(
            Profile::Aes128CmSha1_80,
            &hex("E1F97A0D3E018BE0D64FA32C06DE4139"),
            &hex("0EC675AD498AFEEBB6960B3AABE6"),
        );
        let tx = SrtpTx::new(&m, 0);
        let buf = protect(
            &tx,
            &hex("800F1234DECAFBADCAFEBABE ABABABABABABABABABABABABABABABAB"),
            0,
        );
        assert_eq!(
            buf,
            hex("800F1234DECAFBADCAFEBABE 4E55DC4CE79978D88CA4D215949D2402
                 B78D6ACC99EA179B8DBB")
        );
    }

    /// RFC 7714 §16 (AES-128) and §17 (AES-256): the session key and salt
    /// are given, so the sessions are built directly.
    fn gcm_tx(key: &[u8]) -> SrtpTx {
        let alg = if key.len() == 32 {
            &aead::AES_256_GCM
        } else {
            &aead::AES_128_GCM
        };
        let salt: [u8; 12] = hex("517569642070726f2071756f").try_into().unwrap();
        let session = || Session::Gcm {
            key: aead::LessSafeKey::new(aead::UnboundKey::new(alg, key).unwrap()),
            salt,
        };
        SrtpTx {
            profile: if key.len() == 32 {
                Profile::AeadAes256Gcm
            } else {
                Profile::AeadAes128Gcm
            },
            rtp: session(),
            rtcp: session(),
            srtcp_index: 0x5d4,
        }
    }

    const RFC7714_RTP: &str = "8040f17b8041f8d35501a0b2 47616c6c696120657374206f6d6e6973
        2064697669736120696e207061727465732074726573";
    const RFC7714_RTCP: &str = "81c8000d4d617273 4e5450314e545032 52545020 0000042a 0000e930
        4c756e61 deadbeef deadbeef deadbeef deadbeef deadbeef";

    #[test]
    fn rfc7714_16_aead_aes_128_gcm() {
        let tx = gcm_tx(&hex("000102030405060708090a0b0c0d0e0f"));
        let rtp = protect(&tx, &hex(RFC7714_RTP), 0);
        assert_eq!(
            rtp,
            hex(
                "8040f17b8041f8d35501a0b2 f24de3a3fb34de6cacba861c9d7e4bcabe633bd5
                 0d294e6f42a5f47a51c7d19b36de3adf8833899d7f27beb16a9152cf765ee4390cce"
            )
        );
        let mut tx = tx;
        let mut rtcp = hex(RFC7714_RTCP);
        rtcp.resize(rtcp.len() + 20, 0);
        tx.protect_rtcp(&mut rtcp);
        assert_eq!(
            rtcp,
            hex(
                "81c8000d4d617273 63e94885dcdab67ca727d7662f6b7e997ff5c0f76c06f32dc676a5f1
                 730d6fda4ce09b4686303ded0bb9275bc84aa45896cf4d2fc5abf87245d9eade 800005d4"
            )
        );
    }

    #[test]
    fn rfc7714_17_aead_aes_256_gcm() {
        let tx = gcm_tx(&hex(
            "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
        ));
        let rtp = protect(&tx, &hex(RFC7714_RTP), 0);
        assert_eq!(
            rtp,
            hex(
                "8040f17b8041f8d35501a0b2 32b1de78a822fe12ef9f78fa332e33aab1801238
                 9a58e2f3b50b2a0276ffae0f1ba63799b87b7aa3db36dfffd6b0f9bb7878d7a76c13"
            )
        );
    }

    #[test]
    fn the_senders_half_of_the_keying_material_is_taken() {
        let p = Profile::AeadAes128Gcm;
        let km: Vec<u8> = (0..56).collect();
        let client = MasterKey::from_keying_material(p, &km, true).unwrap();
        assert_eq!(client.key[..16], km[..16]);
        assert_eq!(client.salt[..12], km[32..44]);
        let server = MasterKey::from_keying_material(p, &km, false).unwrap();
        assert_eq!(server.key[..16], km[16..32]);
        assert_eq!(server.salt[..12], km[44..56]);
        assert!(MasterKey::from_keying_material(p, &km[1..], true).is_none());
    }
}
