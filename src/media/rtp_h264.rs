//! RFC 6184 H.264 RTP payloads, packetization-mode 1 (single NAL unit,
//! STAP-A aggregation, FU-A fragmentation). Runs once per stream; viewers
//! share the resulting payloads.

use bytes::{BufMut, Bytes, BytesMut};

use super::h264::{self, NAL_AUD, NAL_FILLER, NAL_FU_A, NAL_IDR, NAL_PPS, NAL_SPS, NAL_STAP_A};

/// Default largest RTP payload: leaves room for RTP/SRTP/TURN headers and
/// extensions under a 1280-byte path MTU.
pub const RTP_MTU_PAYLOAD: usize = 1200;

// FU-A needs two header bytes plus at least one byte of data; smaller limits
// cannot carry H.264 at all.
const MIN_PAYLOAD: usize = 16;
// STAP-A NAL sizes are 16-bit.
const MAX_PAYLOAD: usize = 65_535;

// Where a NAL unit of the packetized sequence comes from.
#[derive(Debug, Clone, Copy)]
enum Src {
    Frame(usize),
    Sps(usize),
    Pps(usize),
}

// One output packet covering order[start..end].
#[derive(Debug, Clone, Copy, PartialEq)]
enum Group {
    Single,
    StapA,
    FuA,
}

/// Turns access units into RTP payloads (RFC 6184 packetization-mode 1).
#[derive(Debug)]
pub struct H264Packetizer {
    max_payload: usize,
    // Reused between frames so steady-state packetization does not allocate
    // except for the one buffer that holds the copied payload bytes.
    order: Vec<Src>,
}

impl H264Packetizer {
    /// Packetizer whose payloads never exceed `max_payload` bytes (clamped to 16..=65535).
    pub fn new(max_payload: usize) -> Self {
        H264Packetizer {
            max_payload: max_payload.clamp(MIN_PAYLOAD, MAX_PAYLOAD),
            order: Vec::new(),
        }
    }

    /// The effective payload size limit.
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// Packetize one access unit (all NAL units of one frame) and append the
    /// payloads to `out` in order; the caller sets the RTP marker on the last.
    /// AUD and filler NAL units are dropped. For an IDR frame, `param_sets`
    /// (SPS list, PPS list) are put in front when the frame lacks them.
    pub fn packetize(
        &mut self,
        nalus: &[Bytes],
        param_sets: Option<(&[Bytes], &[Bytes])>,
        out: &mut Vec<Bytes>,
    ) {
        let mut order = std::mem::take(&mut self.order);
        order.clear();
        build_order(nalus, param_sets, &mut order);
        let (sps, pps) = param_sets.unwrap_or((&[], &[]));
        let nal = |s: Src| -> &Bytes {
            match s {
                Src::Frame(i) => &nalus[i],
                Src::Sps(i) => &sps[i],
                Src::Pps(i) => &pps[i],
            }
        };

        // First pass sizes the one shared buffer for STAP-A and FU-A bytes.
        let mut copied = 0;
        let mut start = 0;
        while start < order.len() {
            let (end, group) = self.next_group(&order, start, &nal);
            copied += match group {
                Group::Single => 0,
                Group::StapA => {
                    1 + order[start..end]
                        .iter()
                        .map(|&s| 2 + nal(s).len())
                        .sum::<usize>()
                }
                Group::FuA => {
                    let data = nal(order[start]).len() - 1;
                    data + 2 * data.div_ceil(self.max_payload - 2)
                }
            };
            start = end;
        }
        let mut buf = BytesMut::with_capacity(copied);

        let mut start = 0;
        while start < order.len() {
            let (end, group) = self.next_group(&order, start, &nal);
            match group {
                // Zero-copy: the payload is the NAL unit itself.
                Group::Single => out.push(nal(order[start]).clone()),
                Group::StapA => {
                    let members = &order[start..end];
                    let f = members.iter().fold(0, |a, &s| a | (nal(s)[0] & 0x80));
                    let nri = members.iter().map(|&s| nal(s)[0] & 0x60).max().unwrap_or(0);
                    buf.put_u8(f | nri | NAL_STAP_A);
                    for &s in members {
                        let n = nal(s);
                        // next_group only aggregates NALs shorter than max_payload <= 65535.
                        buf.put_u16(n.len() as u16);
                        buf.put_slice(n);
                    }
                    out.push(buf.split().freeze());
                }
                Group::FuA => {
                    let n = nal(order[start]);
                    let indicator = (n[0] & 0xe0) | NAL_FU_A;
                    let data = &n[1..];
                    // Equal-sized fragments avoid a tiny trailing packet.
                    let frags = data.len().div_ceil(self.max_payload - 2);
                    let size = data.len().div_ceil(frags);
                    let count = data.len().div_ceil(size);
                    for (i, chunk) in data.chunks(size).enumerate() {
                        let mut header = h264::nal_type(n);
                        if i == 0 {
                            header |= 0x80;
                        }
                        if i + 1 == count {
                            header |= 0x40;
                        }
                        buf.put_u8(indicator);
                        buf.put_u8(header);
                        buf.put_slice(chunk);
                        out.push(buf.split().freeze());
                    }
                }
            }
            start = end;
        }
        self.order = order;
    }

    // The packet starting at order[start]: a lone NAL, a run of small NALs
    // that fit one STAP-A, or one large NAL to fragment.
    fn next_group<'a>(
        &self,
        order: &[Src],
        start: usize,
        nal: &impl Fn(Src) -> &'a Bytes,
    ) -> (usize, Group) {
        let first = nal(order[start]).len();
        if first > self.max_payload {
            return (start + 1, Group::FuA);
        }
        let mut size = 1 + 2 + first;
        let mut end = start + 1;
        while end < order.len() {
            let len = nal(order[end]).len();
            if size + 2 + len > self.max_payload {
                break;
            }
            size += 2 + len;
            end += 1;
        }
        if end - start == 1 {
            (end, Group::Single)
        } else {
            (end, Group::StapA)
        }
    }
}

impl Default for H264Packetizer {
    /// Packetizer with [`RTP_MTU_PAYLOAD`].
    fn default() -> Self {
        Self::new(RTP_MTU_PAYLOAD)
    }
}

// The NAL sequence to send: the frame minus AUD/filler/empty NALs, with
// missing parameter sets added to IDR frames where a decoder expects them.
fn build_order(nalus: &[Bytes], param_sets: Option<(&[Bytes], &[Bytes])>, order: &mut Vec<Src>) {
    let is_idr = nalus.iter().any(|n| h264::nal_type(n) == NAL_IDR);
    let has = |t| nalus.iter().any(|n| h264::nal_type(n) == t);
    let (sps, pps) = match param_sets {
        Some(p) if is_idr => p,
        _ => (&[][..], &[][..]),
    };
    // An empty parameter set has no header byte to packetize.
    let usable = |n: &Bytes| !n.is_empty();
    let need_sps = !has(NAL_SPS);
    let mut need_pps = !has(NAL_PPS);
    if need_sps {
        order.extend((0..sps.len()).filter(|&i| usable(&sps[i])).map(Src::Sps));
        // With both missing, keep the usual SPS, PPS, SEI, slice order.
        if need_pps {
            order.extend((0..pps.len()).filter(|&i| usable(&pps[i])).map(Src::Pps));
            need_pps = false;
        }
    }
    for (i, n) in nalus.iter().enumerate() {
        let t = h264::nal_type(n);
        if n.is_empty() || t == NAL_AUD || t == NAL_FILLER {
            continue;
        }
        // A PPS must precede the slices that use it.
        if need_pps && h264::is_vcl(n) {
            order.extend((0..pps.len()).filter(|&i| usable(&pps[i])).map(Src::Pps));
            need_pps = false;
        }
        order.push(Src::Frame(i));
    }
}

/// Why a run of RTP payloads is not one decodable access unit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DepacketizeError {
    #[error("empty RTP payload")]
    Empty,
    #[error("truncated STAP-A")]
    TruncatedStapA,
    #[error("FU-A fragment without its start")]
    FuWithoutStart,
    #[error("FU-A unit not finished at the end of the frame")]
    UnfinishedFu,
    #[error("NAL unit type {0} is not allowed in packetization-mode 1")]
    Unsupported(u8),
}

/// Reassembles one access unit from its RFC 6184 payloads (single NAL unit,
/// STAP-A, FU-A) and hands each NAL unit (with its header byte) to `nal`,
/// in order. The receiver side of [`H264Packetizer`]; FU-A units are joined in
/// `scratch`, so steady-state reassembly does not allocate.
pub fn depacketize<'a>(
    payloads: impl IntoIterator<Item = &'a [u8]>,
    scratch: &mut Vec<u8>,
    mut nal: impl FnMut(&[u8]),
) -> Result<(), DepacketizeError> {
    let mut in_fu = false;
    for p in payloads {
        let Some(&first) = p.first() else {
            return Err(DepacketizeError::Empty);
        };
        let t = first & 0x1f;
        if in_fu && t != NAL_FU_A {
            return Err(DepacketizeError::UnfinishedFu);
        }
        match t {
            1..=23 => nal(p),
            NAL_STAP_A => {
                let mut rest = &p[1..];
                while !rest.is_empty() {
                    if rest.len() < 2 {
                        return Err(DepacketizeError::TruncatedStapA);
                    }
                    let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                    if len == 0 || rest.len() < 2 + len {
                        return Err(DepacketizeError::TruncatedStapA);
                    }
                    nal(&rest[2..2 + len]);
                    rest = &rest[2 + len..];
                }
            }
            NAL_FU_A => {
                if p.len() < 3 {
                    return Err(DepacketizeError::Empty);
                }
                let (start, end) = (p[1] & 0x80 != 0, p[1] & 0x40 != 0);
                if start {
                    if in_fu {
                        return Err(DepacketizeError::UnfinishedFu);
                    }
                    scratch.clear();
                    scratch.push((first & 0xe0) | (p[1] & 0x1f));
                    in_fu = true;
                } else if !in_fu {
                    return Err(DepacketizeError::FuWithoutStart);
                }
                scratch.extend_from_slice(&p[2..]);
                if end {
                    nal(scratch);
                    in_fu = false;
                }
            }
            other => return Err(DepacketizeError::Unsupported(other)),
        }
    }
    if in_fu {
        return Err(DepacketizeError::UnfinishedFu);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::h264::tests::{X264_720P, X264_BFRAMES, nals};
    use crate::media::h264::{NAL_SEI, NAL_SLICE};

    // Reassemble NAL units from payloads (the receiver side of RFC 6184).
    fn depacketize(payloads: &[Bytes]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut fu: Option<Vec<u8>> = None;
        for p in payloads {
            match p[0] & 0x1f {
                NAL_STAP_A => {
                    let mut pos = 1;
                    while pos < p.len() {
                        let len = usize::from(u16::from_be_bytes([p[pos], p[pos + 1]]));
                        out.push(p[pos + 2..pos + 2 + len].to_vec());
                        pos += 2 + len;
                    }
                    assert_eq!(pos, p.len());
                }
                NAL_FU_A => {
                    let (start, end) = (p[1] & 0x80 != 0, p[1] & 0x40 != 0);
                    if start {
                        assert!(fu.is_none());
                        fu = Some(vec![(p[0] & 0xe0) | (p[1] & 0x1f)]);
                    }
                    fu.as_mut().expect("FU-A start").extend_from_slice(&p[2..]);
                    if end {
                        out.push(fu.take().unwrap_or_default());
                    }
                }
                _ => out.push(p.to_vec()),
            }
        }
        assert!(fu.is_none(), "unterminated FU-A");
        out
    }

    // Group an Annex B NAL list into access units (a slice with
    // first_mb_in_slice 0, or a non-VCL NAL after a slice, starts a new one).
    fn access_units(all: Vec<Bytes>) -> Vec<Vec<Bytes>> {
        let mut aus: Vec<Vec<Bytes>> = Vec::new();
        let mut cur: Vec<Bytes> = Vec::new();
        for n in all {
            let vcl = h264::is_vcl(&n);
            let cur_has_vcl = cur.iter().any(|c| h264::is_vcl(c));
            let first_mb_zero = vcl && n.len() > 1 && n[1] & 0x80 != 0;
            if cur_has_vcl && (!vcl || first_mb_zero) {
                aus.push(std::mem::take(&mut cur));
            }
            cur.push(n);
        }
        if !cur.is_empty() {
            aus.push(cur);
        }
        aus
    }

    #[test]
    fn x264_stream_round_trips_within_mtu() {
        for stream in [X264_720P, X264_BFRAMES] {
            let aus = access_units(nals(stream));
            assert!(aus.len() >= 3);
            let mut p = H264Packetizer::new(RTP_MTU_PAYLOAD);
            let mut saw_fu = false;
            for au in &aus {
                let mut out = Vec::new();
                p.packetize(au, None, &mut out);
                assert!(
                    out.iter()
                        .all(|x| x.len() <= RTP_MTU_PAYLOAD && !x.is_empty())
                );
                saw_fu |= out.iter().any(|x| x[0] & 0x1f == NAL_FU_A);
                let back = depacketize(&out);
                let want: Vec<Vec<u8>> = au.iter().map(|n| n.to_vec()).collect();
                assert_eq!(back, want);
            }
            if stream == X264_720P {
                assert!(saw_fu, "720p IDR is larger than one packet");
            }
        }
    }

    #[test]
    fn idr_gets_parameter_sets_in_one_stap_a() {
        let all = nals(X264_720P);
        let sps: Vec<Bytes> = all
            .iter()
            .filter(|n| h264::nal_type(n) == NAL_SPS)
            .cloned()
            .collect();
        let pps: Vec<Bytes> = all
            .iter()
            .filter(|n| h264::nal_type(n) == NAL_PPS)
            .cloned()
            .collect();
        let idr = all
            .iter()
            .find(|n| h264::nal_type(n) == NAL_IDR)
            .unwrap()
            .clone();
        let aud = Bytes::from_static(&[0x09, 0xf0]);
        let mut p = H264Packetizer::default();

        let mut out = Vec::new();
        p.packetize(&[aud.clone(), idr.clone()], Some((&sps, &pps)), &mut out);
        assert_eq!(out[0][0] & 0x1f, NAL_STAP_A);
        assert_eq!(
            out[0][0] & 0x60,
            0x60,
            "STAP-A NRI is the highest of its NALs"
        );
        let back = depacketize(&out);
        assert_eq!(back.len(), 3, "AUD dropped, SPS + PPS + IDR");
        assert_eq!(back[0], sps[0].to_vec());
        assert_eq!(back[1], pps[0].to_vec());
        assert_eq!(back[2], idr.to_vec());

        // Already carried: not duplicated.
        let mut out2 = Vec::new();
        p.packetize(
            &[sps[0].clone(), pps[0].clone(), idr.clone()],
            Some((&sps, &pps)),
            &mut out2,
        );
        assert_eq!(out2, out);

        // Only the PPS missing: it goes right before the slice.
        let sei = Bytes::from_static(&[0x06, 0x05, 0x01, 0x00, 0x80]);
        let mut out3 = Vec::new();
        p.packetize(
            &[sps[0].clone(), sei.clone(), idr.clone()],
            Some((&sps, &pps)),
            &mut out3,
        );
        let types: Vec<u8> = depacketize(&out3)
            .iter()
            .map(|n| h264::nal_type(n))
            .collect();
        assert_eq!(types, vec![NAL_SPS, NAL_SEI, NAL_PPS, NAL_IDR]);

        // Not an IDR: nothing added.
        let p_slice = Bytes::from_static(&[0x41, 0x9a, 0x00]);
        let mut out4 = Vec::new();
        p.packetize(
            std::slice::from_ref(&p_slice),
            Some((&sps, &pps)),
            &mut out4,
        );
        assert_eq!(out4, vec![p_slice]);
    }

    #[test]
    fn aggregation_and_fragmentation_boundaries() {
        let mut p = H264Packetizer::new(100);
        let nal = |t: u8, len: usize| {
            let mut v = vec![0u8; len];
            v[0] = 0x40 | t;
            for (i, b) in v.iter_mut().enumerate().skip(1) {
                *b = i as u8;
            }
            Bytes::from(v)
        };
        // Exactly max_payload: single NAL unit packet, zero-copy.
        let exact = nal(NAL_SLICE, 100);
        let mut out = Vec::new();
        p.packetize(std::slice::from_ref(&exact), None, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].as_ptr(), exact.as_ptr());

        // One byte more: two FU-A fragments of balanced size.
        let big = nal(NAL_SLICE, 101);
        out.clear();
        p.packetize(std::slice::from_ref(&big), None, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].len(), out[1].len()), (52, 52));
        assert_eq!((out[0][1], out[1][1]), (0x80 | NAL_SLICE, 0x40 | NAL_SLICE));
        assert_eq!(out[0][0], 0x40 | NAL_FU_A);
        assert_eq!(depacketize(&out), vec![big.to_vec()]);

        // Small NALs fill one STAP-A up to the limit, then a new packet starts:
        // 1 + 3 * (2 + 30) = 97 fits, a fourth would not.
        let small: Vec<Bytes> = (0..5).map(|_| nal(NAL_SEI, 30)).collect();
        out.clear();
        p.packetize(&small, None, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].len(), 97);
        assert_eq!(out[1][0] & 0x1f, NAL_STAP_A);
        assert_eq!(depacketize(&out).len(), 5);

        // Filler and empty NALs vanish; an empty access unit gives nothing.
        out.clear();
        p.packetize(&[nal(NAL_FILLER, 50), Bytes::new()], None, &mut out);
        assert!(out.is_empty());

        // Tiny limits are clamped instead of dividing by zero.
        let mut tiny = H264Packetizer::new(0);
        assert_eq!(tiny.max_payload(), MIN_PAYLOAD);
        out.clear();
        tiny.packetize(&[nal(NAL_IDR, 1000)], None, &mut out);
        assert!(out.iter().all(|x| x.len() <= MIN_PAYLOAD));
        assert_eq!(depacketize(&out), vec![nal(NAL_IDR, 1000).to_vec()]);
    }

    #[test]
    fn payloads_of_a_frame_share_one_allocation() {
        let aus = access_units(nals(X264_720P));
        let mut p = H264Packetizer::default();
        let mut out = Vec::new();
        p.packetize(&aus[0], None, &mut out);
        // Copied payloads are contiguous slices of one buffer.
        let copied: Vec<&Bytes> = out
            .iter()
            .filter(|x| matches!(x[0] & 0x1f, NAL_STAP_A | NAL_FU_A))
            .collect();
        assert!(copied.len() > 2);
        for w in copied.windows(2) {
            assert_eq!(w[0].as_ptr() as usize + w[0].len(), w[1].as_ptr() as usize);
        }
    }

    #[test]
    fn depacketize_round_trips_single_stap_a_and_fu_a() {
        let mut p = H264Packetizer::new(100);
        let big = Bytes::from([&[0x65u8][..], &[7u8; 450][..]].concat());
        let small_a = Bytes::from_static(&[0x06, 1, 2, 3]);
        let small_b = Bytes::from_static(&[0x06, 4, 5]);
        let sps = [Bytes::from_static(&[0x67, 0x42, 0, 0x1f])];
        let pps = [Bytes::from_static(&[0x68, 0xce, 0x38])];
        let mut out = Vec::new();
        p.packetize(
            &[small_a.clone(), small_b.clone(), big.clone()],
            Some((&sps, &pps)),
            &mut out,
        );
        assert!(out.iter().any(|x| x[0] & 0x1f == NAL_STAP_A));
        assert!(out.iter().any(|x| x[0] & 0x1f == NAL_FU_A));
        let mut got = Vec::new();
        let mut scratch = Vec::new();
        super::depacketize(out.iter().map(|b| &b[..]), &mut scratch, |n| {
            got.push(n.to_vec())
        })
        .unwrap();
        let want: Vec<Vec<u8>> = [&sps[0], &pps[0], &small_a, &small_b, &big]
            .iter()
            .map(|b| b.to_vec())
            .collect();
        assert_eq!(got, want);
        // A frame cut off inside a fragmented unit is refused, not half-used.
        let fu: Vec<&[u8]> = out
            .iter()
            .filter(|x| x[0] & 0x1f == NAL_FU_A)
            .map(|b| &b[..])
            .collect();
        assert_eq!(
            super::depacketize(fu[..fu.len() - 1].iter().copied(), &mut scratch, |_| {}),
            Err(DepacketizeError::UnfinishedFu)
        );
        assert_eq!(
            super::depacketize(fu[1..].iter().copied(), &mut scratch, |_| {}),
            Err(DepacketizeError::FuWithoutStart)
        );
        assert_eq!(
            super::depacketize([&[0x19u8, 0][..]], &mut scratch, |_| {}),
            Err(DepacketizeError::Unsupported(25))
        );
    }
}
