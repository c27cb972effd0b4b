//! What a viewer's offer can receive, read before str0m negotiates: roomcast
//! chooses the one H.264 payload type that fits the stream (same profile as the
//! publisher's SPS when offered) and configures str0m with exactly that, so the
//! answer never promises a codec the stream cannot send.

/// One `a=rtpmap:PT H264/90000` of an offer, with its fmtp parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct H264Offer {
    pub pt: u8,
    pub rtx: Option<u8>,
    pub profile_level_id: Option<u32>,
    pub packetization_mode: u8,
}

#[derive(Debug, Default)]
pub struct OfferSummary {
    pub h264: Vec<H264Offer>,
    pub opus: Option<u8>,
    pub has_video: bool,
    pub has_audio: bool,
    /// `a=mid` of the first video and audio sections.
    pub video_mid: Option<String>,
    pub audio_mid: Option<String>,
    /// Every codec name offered, for error messages.
    pub codec_names: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OfferError {
    #[error("the body is not an SDP offer (it must start with \"v=0\")")]
    NotSdp,
    #[error("the offer has no audio or video media section")]
    NoMedia,
}

/// Reads the media sections of an offer. Tolerant of CRLF and LF line endings.
pub fn summarize_offer(sdp: &str) -> Result<OfferSummary, OfferError> {
    if !sdp.trim_start().starts_with("v=0") {
        return Err(OfferError::NotSdp);
    }
    let mut out = OfferSummary::default();
    let mut kind: Option<&str> = None;
    // Per video section: PT → (codec, fmtp), collected and resolved at the end.
    let mut rtpmap: Vec<(u8, String)> = Vec::new();
    let mut fmtp: Vec<(u8, String)> = Vec::new();
    for line in sdp.lines().map(str::trim_end) {
        if let Some(m) = line.strip_prefix("m=") {
            kind = m.split_whitespace().next().map(|k| match k {
                "video" => "video",
                "audio" => "audio",
                _ => "other",
            });
            match kind {
                Some("video") => out.has_video = true,
                Some("audio") => out.has_audio = true,
                _ => {}
            }
            continue;
        }
        let Some(kind) = kind else { continue };
        if let Some(mid) = line.strip_prefix("a=mid:") {
            let slot = match kind {
                "video" => &mut out.video_mid,
                "audio" => &mut out.audio_mid,
                _ => continue,
            };
            if slot.is_none() {
                *slot = Some(mid.trim().to_string());
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("a=rtpmap:") {
            let mut it = rest.splitn(2, ' ');
            let (Some(pt), Some(enc)) = (it.next(), it.next()) else {
                continue;
            };
            let Ok(pt) = pt.parse::<u8>() else { continue };
            let name = enc.split('/').next().unwrap_or("").to_ascii_uppercase();
            if !out.codec_names.contains(&name)
                && name != "RTX"
                && name != "RED"
                && name != "ULPFEC"
            {
                out.codec_names.push(name.clone());
            }
            if kind == "audio" && name == "OPUS" && out.opus.is_none() {
                out.opus = Some(pt);
            }
            if kind == "video" {
                rtpmap.push((pt, name));
            }
        } else if let Some(rest) = line.strip_prefix("a=fmtp:")
            && kind == "video"
        {
            let mut it = rest.splitn(2, ' ');
            if let (Some(pt), Some(params)) = (it.next(), it.next())
                && let Ok(pt) = pt.parse::<u8>()
            {
                fmtp.push((pt, params.to_string()));
            }
        }
    }
    if !out.has_video && !out.has_audio {
        return Err(OfferError::NoMedia);
    }
    let params_of = |pt: u8| fmtp.iter().find(|(p, _)| *p == pt).map(|(_, s)| s.as_str());
    for (pt, name) in &rtpmap {
        if name != "H264" {
            continue;
        }
        let params = params_of(*pt).unwrap_or("");
        let mut profile_level_id = None;
        let mut packetization_mode = 0;
        for kv in params.split(';') {
            let mut it = kv.trim().splitn(2, '=');
            match (it.next(), it.next()) {
                (Some("profile-level-id"), Some(v)) => {
                    profile_level_id = u32::from_str_radix(v, 16).ok();
                }
                (Some("packetization-mode"), Some(v)) => {
                    packetization_mode = v.parse().unwrap_or(0);
                }
                _ => {}
            }
        }
        let rtx = rtpmap
            .iter()
            .filter(|(_, n)| n == "RTX")
            .find(|(rpt, _)| params_of(*rpt).is_some_and(|p| p.trim() == format!("apt={pt}")))
            .map(|(rpt, _)| *rpt);
        out.h264.push(H264Offer {
            pt: *pt,
            rtx,
            profile_level_id,
            packetization_mode,
        });
    }
    Ok(out)
}

/// Picks the offered H.264 format to send a stream whose SPS gives `stream_profile`
/// (`0xPPCCLL`). Only packetization-mode 1 works for HD frames. Preference: the
/// same profile and constraints, then the same profile, then constrained baseline
/// (every decoder offers it, and browsers' software decoders play any profile).
pub fn choose_h264(offer: &OfferSummary, stream_profile: Option<u32>) -> Option<&H264Offer> {
    let usable = || offer.h264.iter().filter(|h| h.packetization_mode == 1);
    let profile_of = |v: u32| v >> 16;
    let constraints_of = |v: u32| (v >> 8) & 0xff;
    if let Some(sp) = stream_profile {
        if let Some(h) = usable().find(|h| {
            h.profile_level_id.is_some_and(|p| {
                profile_of(p) == profile_of(sp) && constraints_of(p) == constraints_of(sp)
            })
        }) {
            return Some(h);
        }
        if let Some(h) = usable().find(|h| {
            h.profile_level_id
                .is_some_and(|p| profile_of(p) == profile_of(sp))
        }) {
            return Some(h);
        }
    }
    usable()
        .find(|h| h.profile_level_id.is_some_and(|p| p >> 8 == 0x42e0))
        .or_else(|| usable().next())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHROME: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111 63\r\na=mid:0\r\na=recvonly\r\na=rtpmap:111 opus/48000/2\r\na=rtpmap:63 red/48000/2\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103 104 105 106 107 112 113\r\na=mid:1\r\na=recvonly\r\n\
a=rtpmap:96 VP8/90000\r\na=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\n\
a=rtpmap:102 H264/90000\r\na=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f\r\n\
a=rtpmap:103 rtx/90000\r\na=fmtp:103 apt=102\r\n\
a=rtpmap:104 H264/90000\r\na=fmtp:104 level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42001f\r\n\
a=rtpmap:105 rtx/90000\r\na=fmtp:105 apt=104\r\n\
a=rtpmap:106 H264/90000\r\na=fmtp:106 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n\
a=rtpmap:107 rtx/90000\r\na=fmtp:107 apt=106\r\n\
a=rtpmap:112 H264/90000\r\na=fmtp:112 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=64001f\r\n\
a=rtpmap:113 rtx/90000\r\na=fmtp:113 apt=112\r\n";

    #[test]
    fn reads_chrome_offer() {
        let o = summarize_offer(CHROME).unwrap();
        assert_eq!(o.opus, Some(111));
        assert_eq!(o.audio_mid.as_deref(), Some("0"));
        assert_eq!(o.video_mid.as_deref(), Some("1"));
        assert!(o.has_video && o.has_audio);
        assert_eq!(o.h264.len(), 4);
        assert_eq!(o.h264[0].rtx, Some(103));
        assert_eq!(o.codec_names, vec!["OPUS", "VP8", "H264"]);
        // A High-profile stream (x264's default) picks the High entry.
        assert_eq!(choose_h264(&o, Some(0x64001f)).unwrap().pt, 112);
        assert_eq!(choose_h264(&o, Some(0x640028)).unwrap().pt, 112);
        // Main is not offered: constrained baseline.
        assert_eq!(choose_h264(&o, Some(0x4d0028)).unwrap().pt, 106);
        assert_eq!(choose_h264(&o, Some(0x42e01f)).unwrap().pt, 106);
    }

    #[test]
    fn refuses_garbage_and_skips_mode_0() {
        assert_eq!(summarize_offer("hello").unwrap_err(), OfferError::NotSdp);
        assert_eq!(
            summarize_offer("v=0\r\ns=-\r\n").unwrap_err(),
            OfferError::NoMedia
        );
        let only_mode0 = "v=0\nm=video 9 UDP/TLS/RTP/SAVPF 104\na=rtpmap:104 H264/90000\na=fmtp:104 packetization-mode=0;profile-level-id=42001f\n";
        let o = summarize_offer(only_mode0).unwrap();
        assert!(choose_h264(&o, None).is_none());
    }
}
