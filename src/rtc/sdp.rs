//! What an offer can send or receive, read before str0m negotiates. roomcast
//! picks the one video payload type that fits (a viewer: the stream's codec,
//! with the same profile when offered; a publisher: its first codec roomcast
//! forwards) and configures str0m with exactly that entry's parameters, so the
//! answer never promises a codec the stream cannot send.

use crate::media::rtp_video::VideoCodec;

/// One `a=rtpmap:PT <codec>/90000` of a video section, with its `a=fmtp`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoOffer {
    pub pt: u8,
    pub rtx: Option<u8>,
    pub codec: VideoCodec,
    /// The `a=fmtp` parameters as written (`key=value;…`), empty when absent.
    pub fmtp: String,
}

impl VideoOffer {
    fn param(&self, name: &str) -> Option<&str> {
        fmtp_param(&self.fmtp, name)
    }

    /// H.264 `profile-level-id` (`0xPPCCLL`).
    pub fn profile_level_id(&self) -> Option<u32> {
        self.param("profile-level-id")
            .and_then(|v| u32::from_str_radix(v, 16).ok())
    }

    /// H.264 `packetization-mode` (0 when absent, RFC 6184).
    pub fn packetization_mode(&self) -> u8 {
        self.param("packetization-mode")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// VP9 `profile-id` or AV1 `profile` (0 when absent).
    pub fn profile(&self) -> u32 {
        let name = match self.codec {
            VideoCodec::Vp9 => "profile-id",
            VideoCodec::Av1 => "profile",
            _ => return 0,
        };
        self.param(name).and_then(|v| v.parse().ok()).unwrap_or(0)
    }

    /// Whether roomcast can forward this format from a publisher.
    pub fn forwardable(&self) -> bool {
        match self.codec {
            // Single-NAL mode cannot carry HD frames; every publisher offers mode 1.
            VideoCodec::H264 => self.packetization_mode() == 1,
            VideoCodec::Vp8 | VideoCodec::Vp9 | VideoCodec::Av1 => true,
        }
    }
}

/// The value of `name` in an fmtp parameter list.
pub fn fmtp_param<'a>(fmtp: &'a str, name: &str) -> Option<&'a str> {
    fmtp.split(';').find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k.trim().eq_ignore_ascii_case(name)).then_some(v.trim())
    })
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct OfferSummary {
    /// Video formats roomcast knows (H.264, VP8, VP9, AV1), in offer order.
    pub video: Vec<VideoOffer>,
    pub opus: Option<u8>,
    pub has_video: bool,
    pub has_audio: bool,
    /// `a=mid` of the first video and audio sections.
    pub video_mid: Option<String>,
    pub audio_mid: Option<String>,
    /// `a=sendonly`/`recvonly`/`sendrecv`/`inactive` of those sections.
    pub video_dir: Option<String>,
    pub audio_dir: Option<String>,
    /// Every codec name offered, for error messages.
    pub codec_names: Vec<String>,
}

impl OfferSummary {
    /// Whether the offerer sends in the first section of `video`/audio.
    pub fn sends(&self, video: bool) -> bool {
        let dir = if video {
            &self.video_dir
        } else {
            &self.audio_dir
        };
        // sendrecv is the SDP default.
        matches!(dir.as_deref(), None | Some("sendonly") | Some("sendrecv"))
    }

    pub fn offered(&self) -> String {
        if self.codec_names.is_empty() {
            "none".into()
        } else {
            self.codec_names.join(", ")
        }
    }
}

/// An offer larger than this is refused (the HTTP body cap's default).
pub const MAX_OFFER_BYTES: usize = 64 * 1024;
/// Real offers have a few hundred lines (Chromium's audio + video: ~150).
pub const MAX_OFFER_LINES: usize = 2_000;
/// The longest line accepted (real ones stay under 200 bytes).
pub const MAX_LINE_BYTES: usize = 2_048;
/// `a=rtpmap` lines in one media section (RTP has 128 payload types).
pub const MAX_PAYLOAD_TYPES: usize = 128;
/// Media sections in one offer.
pub const MAX_SECTIONS: usize = 64;
/// Codec names kept for error messages.
const MAX_CODEC_NAMES: usize = 32;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OfferError {
    #[error("the body is not an SDP offer (it must start with \"v=0\")")]
    NotSdp,
    #[error("the offer has no audio or video media section")]
    NoMedia,
    #[error("the offer is {0} bytes; at most {MAX_OFFER_BYTES} are accepted")]
    TooLarge(usize),
    #[error("the offer has more than {MAX_OFFER_LINES} lines")]
    TooManyLines,
    #[error("line {0} of the offer is longer than {MAX_LINE_BYTES} bytes")]
    LineTooLong(usize),
    #[error("a media section of the offer has more than {MAX_PAYLOAD_TYPES} payload types")]
    TooManyPayloadTypes,
    #[error("the offer has more than {MAX_SECTIONS} media sections")]
    TooManySections,
    /// The WebRTC library could not read it.
    #[error("{0}")]
    Malformed(String),
}

/// An offer read and checked, ready for negotiation. Parsing is pure and
/// bounded: callers run it before taking any shared lock and hand the result
/// to [`super::Engine::add_viewer_parsed`] or [`super::Engine::add_publisher_parsed`].
pub struct ParsedOffer {
    pub summary: OfferSummary,
    pub(super) sdp: str0m::change::SdpOffer,
}

impl std::fmt::Debug for ParsedOffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParsedOffer")
            .field("summary", &self.summary)
            .finish_non_exhaustive()
    }
}

/// Checks the caps, summarizes the offer, and parses it for str0m.
pub fn parse_offer(sdp: &str) -> Result<ParsedOffer, OfferError> {
    let summary = summarize_offer(sdp)?;
    // Within the caps, str0m's parser gets a bounded input.
    let sdp = str0m::change::SdpOffer::from_sdp_string(sdp)
        .map_err(|e| OfferError::Malformed(e.to_string()))?;
    Ok(ParsedOffer { summary, sdp })
}

/// Reads the media sections of an offer. Tolerant of CRLF and LF line endings.
/// One pass over the lines, with caps on size, lines and payload types.
pub fn summarize_offer(sdp: &str) -> Result<OfferSummary, OfferError> {
    summarize_counted(sdp, &mut 0)
}

/// Per video payload type of the first video section.
#[derive(Clone, Copy, Default)]
struct PtInfo<'a> {
    seen: bool,
    rtx: bool,
    fmtp: Option<&'a str>,
}

/// [`summarize_offer`], adding the steps taken to `work` (lines read plus
/// payload types resolved), so tests can check the cost is linear.
fn summarize_counted(sdp: &str, work: &mut usize) -> Result<OfferSummary, OfferError> {
    if sdp.len() > MAX_OFFER_BYTES {
        return Err(OfferError::TooLarge(sdp.len()));
    }
    if !sdp.trim_start().starts_with("v=0") {
        return Err(OfferError::NotSdp);
    }
    let mut out = OfferSummary::default();
    let mut kind: Option<&str> = None;
    // Only the first section of each kind counts.
    let mut first_of_kind = false;
    let mut sections = 0;
    let mut section_pts = 0;
    // The first video section's payload types, by number, and their order.
    let mut pts = [PtInfo::default(); 256];
    let mut video_order: Vec<(u8, VideoCodec)> = Vec::new();
    let mut rtx_order: Vec<u8> = Vec::new();
    for (n, line) in sdp.lines().enumerate() {
        *work += 1;
        if n >= MAX_OFFER_LINES {
            return Err(OfferError::TooManyLines);
        }
        if line.len() > MAX_LINE_BYTES {
            return Err(OfferError::LineTooLong(n + 1));
        }
        let line = line.trim_end();
        if let Some(m) = line.strip_prefix("m=") {
            sections += 1;
            if sections > MAX_SECTIONS {
                return Err(OfferError::TooManySections);
            }
            section_pts = 0;
            kind = m.split_whitespace().next().map(|k| match k {
                "video" => "video",
                "audio" => "audio",
                _ => "other",
            });
            first_of_kind = match kind {
                Some("video") => !std::mem::replace(&mut out.has_video, true),
                Some("audio") => !std::mem::replace(&mut out.has_audio, true),
                _ => false,
            };
            continue;
        }
        let Some(kind) = kind else { continue };
        if let Some(rest) = line.strip_prefix("a=rtpmap:") {
            // Counted in every section: str0m reads them all.
            section_pts += 1;
            if section_pts > MAX_PAYLOAD_TYPES {
                return Err(OfferError::TooManyPayloadTypes);
            }
            if !first_of_kind {
                continue;
            }
            let mut it = rest.splitn(2, ' ');
            let (Some(pt), Some(enc)) = (it.next(), it.next()) else {
                continue;
            };
            let Ok(pt) = pt.parse::<u8>() else { continue };
            let name = enc.split('/').next().unwrap_or("");
            let upper = |n: &str| n.to_ascii_uppercase();
            if out.codec_names.len() < MAX_CODEC_NAMES
                && !["RTX", "RED", "ULPFEC", "FLEXFEC-03"]
                    .iter()
                    .any(|x| x.eq_ignore_ascii_case(name))
                && !out.codec_names.iter().any(|c| c.eq_ignore_ascii_case(name))
            {
                out.codec_names.push(upper(name));
            }
            if kind == "audio" && name.eq_ignore_ascii_case("opus") && out.opus.is_none() {
                out.opus = Some(pt);
            }
            if kind == "video" {
                let info = &mut pts[pt as usize];
                if std::mem::replace(&mut info.seen, true) {
                    continue; // a second rtpmap for one payload type
                }
                if name.eq_ignore_ascii_case("rtx") {
                    info.rtx = true;
                    rtx_order.push(pt);
                } else if let Some(codec) = VideoCodec::from_name(name) {
                    video_order.push((pt, codec));
                }
            }
            continue;
        }
        if !first_of_kind {
            continue;
        }
        if let Some(mid) = line.strip_prefix("a=mid:") {
            let slot = match kind {
                "video" => &mut out.video_mid,
                "audio" => &mut out.audio_mid,
                _ => continue,
            };
            *slot = Some(mid.trim().to_string());
            continue;
        }
        if let Some(dir) = line
            .strip_prefix("a=")
            .filter(|d| matches!(*d, "sendonly" | "recvonly" | "sendrecv" | "inactive"))
        {
            match kind {
                "video" => out.video_dir = Some(dir.to_string()),
                "audio" => out.audio_dir = Some(dir.to_string()),
                _ => {}
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("a=fmtp:")
            && kind == "video"
        {
            let mut it = rest.splitn(2, ' ');
            if let (Some(pt), Some(params)) = (it.next(), it.next())
                && let Ok(pt) = pt.parse::<u8>()
            {
                // The first fmtp of a payload type counts.
                pts[pt as usize].fmtp.get_or_insert(params.trim());
            }
        }
    }
    if !out.has_video && !out.has_audio {
        return Err(OfferError::NoMedia);
    }
    // Each RTX format names its codec (apt); the first one listed wins.
    let mut rtx_of = [None::<u8>; 256];
    for &rpt in &rtx_order {
        *work += 1;
        let apt = pts[rpt as usize]
            .fmtp
            .and_then(|p| fmtp_param(p, "apt"))
            .and_then(|a| a.parse::<u8>().ok());
        if let Some(apt) = apt {
            rtx_of[apt as usize].get_or_insert(rpt);
        }
    }
    for (pt, codec) in video_order {
        *work += 1;
        out.video.push(VideoOffer {
            pt,
            rtx: rtx_of[pt as usize],
            codec,
            fmtp: pts[pt as usize].fmtp.unwrap_or("").to_string(),
        });
    }
    Ok(out)
}

/// The stream's video format as viewers must receive it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamVideo {
    pub codec: VideoCodec,
    /// H.264 profile from the SPS (`0xPPCCLL`).
    pub profile_level_id: Option<u32>,
    /// The publisher's fmtp (VP9 profile-id, AV1 profile).
    pub fmtp: String,
}

impl StreamVideo {
    fn profile(&self) -> u32 {
        let name = match self.codec {
            VideoCodec::Vp9 => "profile-id",
            VideoCodec::Av1 => "profile",
            _ => return 0,
        };
        fmtp_param(&self.fmtp, name)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// For error messages: "VP9 (profile-id 2)".
    pub fn describe(&self) -> String {
        match (self.codec, self.profile()) {
            (VideoCodec::Vp9, p) if p != 0 => format!("VP9 (profile-id {p})"),
            (VideoCodec::Av1, p) if p != 0 => format!("AV1 (profile {p})"),
            (VideoCodec::H264, _) => "H.264".into(),
            (c, _) => c.name().into(),
        }
    }
}

/// Picks the offered format a viewer receives the stream's video in, with the
/// fmtp to answer it with (H.264: the stream's own profile when it fits).
pub fn choose_video<'a>(offer: &'a OfferSummary, stream: &StreamVideo) -> Option<VideoPick<'a>> {
    match stream.codec {
        VideoCodec::H264 => choose_h264(offer, stream.profile_level_id),
        codec => offer
            .video
            .iter()
            .find(|v| v.codec == codec && v.profile() == stream.profile())
            .map(|offer| VideoPick {
                offer,
                fit: H264Fit::Exact,
                answer_fmtp: None,
            }),
    }
}

/// H.264 profiles as RFC 6184 (table 5) and browsers tell them apart: by
/// profile_idc and the constraint flags, which say that a stream also
/// conforms to a smaller profile (x264's baseline is `42c0`: Constrained
/// Baseline; its main `4d40`, its high `6400`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum H264Profile {
    ConstrainedBaseline,
    Baseline,
    Main,
    Extended,
    High,
    ConstrainedHigh,
}

impl H264Profile {
    /// The profile of a `profile-level-id` (`0xPPCCLL`); None for the
    /// profiles browsers do not negotiate (High 10, 4:2:2, 4:4:4…) and for
    /// flag combinations the table does not list (a browser would reject them).
    pub fn of(plid: u32) -> Option<H264Profile> {
        use H264Profile::*;
        let idc = (plid >> 16) as u8;
        let flags = (plid >> 8) as u8;
        let (set0, set1, set2) = (flags & 0x80 != 0, flags & 0x40 != 0, flags & 0x20 != 0);
        // constraint_set4/5 and the reserved bits: only Constrained High uses them.
        let low = flags & 0x0f;
        match idc {
            0x42 if low == 0 => Some(if set1 { ConstrainedBaseline } else { Baseline }),
            0x4d if low == 0 && set0 => Some(ConstrainedBaseline),
            0x4d if low == 0 && !set2 => Some(Main),
            0x58 if low == 0 => Some(match (set0, set1) {
                (true, true) => ConstrainedBaseline,
                (true, false) => Baseline,
                _ => Extended,
            }),
            0x64 if flags == 0 => Some(High),
            0x64 if flags == 0x0c => Some(ConstrainedHigh),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            H264Profile::ConstrainedBaseline => "Constrained Baseline",
            H264Profile::Baseline => "Baseline",
            H264Profile::Main => "Main",
            H264Profile::Extended => "Extended",
            H264Profile::High => "High",
            H264Profile::ConstrainedHigh => "Constrained High",
        }
    }

    /// Whether every stream of this profile is also a stream of `decoder`'s
    /// profile (a decoder of the larger profile plays it, per the standard).
    pub fn within(self, decoder: H264Profile) -> bool {
        use H264Profile::*;
        self == decoder
            || match self {
                ConstrainedBaseline => true,
                Baseline => decoder == Extended,
                Main | ConstrainedHigh => decoder == High,
                Extended | High => false,
            }
    }
}

/// "High", or the profile_idc's name when browsers do not negotiate it.
pub fn h264_profile_name(plid: u32) -> String {
    if let Some(p) = H264Profile::of(plid) {
        return p.name().into();
    }
    match plid >> 16 {
        0x42 => "Baseline".into(),
        0x4d => "Main".into(),
        0x58 => "Extended".into(),
        0x64 => "High".into(),
        0x6e => "High 10".into(),
        0x7a => "High 4:2:2".into(),
        0xf4 => "High 4:4:4 Predictive".into(),
        idc => format!("profile_idc {idc}"),
    }
}

/// How the chosen format fits the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum H264Fit {
    /// The stream's profile is offered (or the codec has no H.264 profile).
    Exact,
    /// The offered profile contains the stream's (Main to a High decoder).
    Within,
    /// No offered profile is known to play the stream; the closest one.
    Mismatch,
    /// The stream's profile is not known yet (no SPS): today's default.
    Unknown,
}

/// The offered video format chosen for a viewer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoPick<'a> {
    pub offer: &'a VideoOffer,
    pub fit: H264Fit,
    /// The fmtp the answer must carry instead of the offered one: the
    /// stream's `profile-level-id` when its profile is offered.
    pub answer_fmtp: Option<String>,
}

/// Picks the offered H.264 format to send a stream whose SPS gives
/// `stream_profile` (`0xPPCCLL`). Only packetization-mode 1 works for HD
/// frames. Preference: an entry of the stream's own profile (answered with the
/// stream's profile-level-id), then one whose profile contains the stream's
/// (answered as offered: the stream conforms to it); failing both, the closest
/// (the same profile_idc, then constrained baseline, then any), which browsers'
/// and libavcodec's decoders play although the offer did not list it.
pub fn choose_h264(offer: &OfferSummary, stream_profile: Option<u32>) -> Option<VideoPick<'_>> {
    let usable = || {
        offer
            .video
            .iter()
            .filter(|h| h.codec == VideoCodec::H264 && h.packetization_mode() == 1)
    };
    let class = |h: &VideoOffer| h.profile_level_id().and_then(H264Profile::of);
    let pick = |offer, fit, answer_fmtp| {
        Some(VideoPick {
            offer,
            fit,
            answer_fmtp,
        })
    };
    let known = stream_profile.and_then(|p| H264Profile::of(p).map(|c| (p, c)));
    if let Some((plid, sc)) = known {
        if let Some(h) = usable().find(|h| class(h) == Some(sc)) {
            return pick(h, H264Fit::Exact, Some(answer_h264_fmtp(h, plid)));
        }
        if let Some(h) = usable().find(|h| class(h).is_some_and(|o| sc.within(o))) {
            return pick(h, H264Fit::Within, None);
        }
    }
    let fit = if stream_profile.is_some() {
        H264Fit::Mismatch
    } else {
        H264Fit::Unknown
    };
    let same_idc = stream_profile.and_then(|sp| {
        usable().find(|h| h.profile_level_id().is_some_and(|p| p >> 16 == sp >> 16))
    });
    let h = same_idc
        .or_else(|| usable().find(|h| class(h) == Some(H264Profile::ConstrainedBaseline)))
        .or_else(|| usable().next())?;
    pick(h, fit, None)
}

/// The answer's fmtp for a stream of `stream_plid` sent in offered format `h`
/// of the same profile: the stream's profile and constraint flags; its level
/// when the offer allows level asymmetry (RFC 6184 §8.2.2), else at most the
/// offered level.
fn answer_h264_fmtp(h: &VideoOffer, stream_plid: u32) -> String {
    let asymmetric = h.param("level-asymmetry-allowed") == Some("1");
    let offered_level = h.profile_level_id().map_or(0x1f, |p| p & 0xff);
    let level = if asymmetric {
        stream_plid & 0xff
    } else {
        (stream_plid & 0xff).min(offered_level)
    };
    let plid = (stream_plid & 0xff_ff00) | level;
    if asymmetric {
        format!("level-asymmetry-allowed=1;packetization-mode=1;profile-level-id={plid:06x}")
    } else {
        format!("packetization-mode=1;profile-level-id={plid:06x}")
    }
}

/// The H.264 profiles an offer accepts (packetization-mode 1), for messages:
/// "Constrained Baseline and Baseline".
pub fn offered_h264_profiles(offer: &OfferSummary) -> String {
    let mut names: Vec<String> = Vec::new();
    for h in offer
        .video
        .iter()
        .filter(|h| h.codec == VideoCodec::H264 && h.packetization_mode() == 1)
    {
        let n = h
            .profile_level_id()
            .map_or_else(|| "Baseline".to_string(), h264_profile_name);
        if !names.contains(&n) {
            names.push(n);
        }
    }
    names.join(" and ")
}

/// `answer` with the video section's `a=fmtp:<pt>` line set to `fmtp`. str0m
/// echoes the fmtp it was configured with, and maps a configured format to the
/// offered one whose level is closest: configuring the offered entry and
/// correcting its one line keeps the chosen payload type.
pub fn set_answer_fmtp(answer: &str, pt: u8, fmtp: &str) -> String {
    let prefix = format!("a=fmtp:{pt} ");
    let mut out = String::with_capacity(answer.len() + fmtp.len());
    let mut in_video = false;
    for line in answer.split_inclusive('\n') {
        if line.starts_with("m=") {
            in_video = line.starts_with("m=video");
        }
        if in_video && line.starts_with(&prefix) {
            let eol = &line[line.trim_end_matches(['\r', '\n']).len()..];
            out.push_str(&prefix);
            out.push_str(fmtp);
            out.push_str(eol);
        } else {
            out.push_str(line);
        }
    }
    out
}

/// Picks the video format a publisher sends: its first offered format that
/// roomcast forwards (the publisher lists its preference first).
pub fn choose_publisher_video(offer: &OfferSummary) -> Option<&VideoOffer> {
    offer.video.iter().find(|v| v.forwardable())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHROME: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111 63\r\na=mid:0\r\na=recvonly\r\na=rtpmap:111 opus/48000/2\r\na=rtpmap:63 red/48000/2\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96 97 98 99 102 103 104 105 106 107 112 113 45\r\na=mid:1\r\na=recvonly\r\n\
a=rtpmap:96 VP8/90000\r\na=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\n\
a=rtpmap:98 VP9/90000\r\na=fmtp:98 profile-id=0\r\na=rtpmap:99 rtx/90000\r\na=fmtp:99 apt=98\r\n\
a=rtpmap:102 H264/90000\r\na=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f\r\n\
a=rtpmap:103 rtx/90000\r\na=fmtp:103 apt=102\r\n\
a=rtpmap:104 H264/90000\r\na=fmtp:104 level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42001f\r\n\
a=rtpmap:105 rtx/90000\r\na=fmtp:105 apt=104\r\n\
a=rtpmap:106 H264/90000\r\na=fmtp:106 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n\
a=rtpmap:107 rtx/90000\r\na=fmtp:107 apt=106\r\n\
a=rtpmap:112 H264/90000\r\na=fmtp:112 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=64001f\r\n\
a=rtpmap:113 rtx/90000\r\na=fmtp:113 apt=112\r\n\
a=rtpmap:45 AV1/90000\r\na=fmtp:45 level-idx=5;profile=0;tier=0\r\n";

    fn h264(o: &OfferSummary) -> Vec<&VideoOffer> {
        o.video
            .iter()
            .filter(|v| v.codec == VideoCodec::H264)
            .collect()
    }

    #[test]
    fn reads_chrome_offer() {
        let o = summarize_offer(CHROME).unwrap();
        assert_eq!(o.opus, Some(111));
        assert_eq!(o.audio_mid.as_deref(), Some("0"));
        assert_eq!(o.video_mid.as_deref(), Some("1"));
        assert_eq!(o.video_dir.as_deref(), Some("recvonly"));
        assert!(!o.sends(true));
        assert!(o.has_video && o.has_audio);
        assert_eq!(h264(&o).len(), 4);
        assert_eq!(h264(&o)[0].rtx, Some(103));
        assert_eq!(o.codec_names, vec!["OPUS", "VP8", "VP9", "H264", "AV1"]);
        // A High-profile stream (x264's default) picks the High entry.
        assert_eq!(choose_h264(&o, Some(0x64001f)).unwrap().offer.pt, 112);
        assert_eq!(choose_h264(&o, Some(0x640028)).unwrap().offer.pt, 112);
        // Main is not offered: the High entry plays it (High contains Main).
        let main = choose_h264(&o, Some(0x4d4028)).unwrap();
        assert_eq!((main.offer.pt, main.fit), (112, H264Fit::Within));
        assert_eq!(main.answer_fmtp, None);
        assert_eq!(choose_h264(&o, Some(0x42e01f)).unwrap().offer.pt, 106);
        // Other codecs: same codec, same profile.
        let vp9 = |fmtp: &str| StreamVideo {
            codec: VideoCodec::Vp9,
            profile_level_id: None,
            fmtp: fmtp.into(),
        };
        assert_eq!(choose_video(&o, &vp9("profile-id=0")).unwrap().offer.pt, 98);
        assert_eq!(choose_video(&o, &vp9("")).unwrap().offer.rtx, Some(99));
        assert!(choose_video(&o, &vp9("profile-id=2")).is_none());
        assert_eq!(vp9("profile-id=2").describe(), "VP9 (profile-id 2)");
        let av1 = StreamVideo {
            codec: VideoCodec::Av1,
            profile_level_id: None,
            fmtp: String::new(),
        };
        assert_eq!(choose_video(&o, &av1).unwrap().offer.pt, 45);
        // A publisher offering this list sends VP8 (its first).
        assert_eq!(choose_publisher_video(&o).unwrap().codec, VideoCodec::Vp8);
    }

    #[test]
    fn refuses_garbage_and_skips_mode_0() {
        assert_eq!(summarize_offer("hello").unwrap_err(), OfferError::NotSdp);
        assert_eq!(
            summarize_offer("v=0\r\ns=-\r\n").unwrap_err(),
            OfferError::NoMedia
        );
        let only_mode0 = "v=0\nm=video 9 UDP/TLS/RTP/SAVPF 104\na=sendonly\na=rtpmap:104 H264/90000\na=fmtp:104 packetization-mode=0;profile-level-id=42001f\n";
        let o = summarize_offer(only_mode0).unwrap();
        assert!(choose_h264(&o, None).is_none());
        assert!(choose_publisher_video(&o).is_none());
        assert!(o.sends(true));
        // HEVC only: nothing roomcast forwards, named in the list.
        let hevc = "v=0\nm=video 9 UDP/TLS/RTP/SAVPF 49\na=rtpmap:49 H265/90000\n";
        let o = summarize_offer(hevc).unwrap();
        assert!(o.video.is_empty());
        assert_eq!(o.offered(), "H265");
    }

    /// The summarizer before it was made linear, to check real offers read the same.
    fn reference(sdp: &str) -> OfferSummary {
        let mut out = OfferSummary::default();
        let mut kind: Option<&str> = None;
        let mut first_of_kind = false;
        let mut rtpmap: Vec<(u8, String)> = Vec::new();
        let mut fmtp: Vec<(u8, String)> = Vec::new();
        for line in sdp.lines().map(str::trim_end) {
            if let Some(m) = line.strip_prefix("m=") {
                kind = m.split_whitespace().next().map(|k| match k {
                    "video" => "video",
                    "audio" => "audio",
                    _ => "other",
                });
                first_of_kind = match kind {
                    Some("video") => !std::mem::replace(&mut out.has_video, true),
                    Some("audio") => !std::mem::replace(&mut out.has_audio, true),
                    _ => false,
                };
                continue;
            }
            let Some(kind) = kind else { continue };
            if !first_of_kind {
                continue;
            }
            if let Some(mid) = line.strip_prefix("a=mid:") {
                match kind {
                    "video" => out.video_mid = Some(mid.trim().to_string()),
                    "audio" => out.audio_mid = Some(mid.trim().to_string()),
                    _ => {}
                }
                continue;
            }
            if let Some(dir) = line
                .strip_prefix("a=")
                .filter(|d| matches!(*d, "sendonly" | "recvonly" | "sendrecv" | "inactive"))
            {
                match kind {
                    "video" => out.video_dir = Some(dir.to_string()),
                    "audio" => out.audio_dir = Some(dir.to_string()),
                    _ => {}
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
                    && !matches!(name.as_str(), "RTX" | "RED" | "ULPFEC" | "FLEXFEC-03")
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
                    fmtp.push((pt, params.trim().to_string()));
                }
            }
        }
        let params_of = |pt: u8| fmtp.iter().find(|(p, _)| *p == pt).map(|(_, s)| s.as_str());
        for (pt, name) in &rtpmap {
            let Some(codec) = VideoCodec::from_name(name) else {
                continue;
            };
            let rtx = rtpmap
                .iter()
                .filter(|(_, n)| n == "RTX")
                .find(|(rpt, _)| {
                    params_of(*rpt).is_some_and(|p| fmtp_param(p, "apt") == Some(&pt.to_string()))
                })
                .map(|(rpt, _)| *rpt);
            out.video.push(VideoOffer {
                pt: *pt,
                rtx,
                codec,
                fmtp: params_of(*pt).unwrap_or("").to_string(),
            });
        }
        out
    }

    const FIREFOX: &str = include_str!("testdata/firefox_offer.sdp");
    const AIORTC: &str = include_str!("testdata/aiortc_offer.sdp");

    #[test]
    fn real_offers_read_as_before() {
        for (name, sdp) in [
            ("chromium", CHROME),
            ("firefox", FIREFOX),
            ("aiortc", AIORTC),
        ] {
            let o = summarize_offer(sdp).unwrap();
            assert_eq!(o, reference(sdp), "{name}");
            assert!(!o.video.is_empty(), "{name}");
            assert!(o.opus.is_some(), "{name}");
            // str0m reads them too.
            parse_offer(sdp).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let ff = summarize_offer(FIREFOX).unwrap();
        assert_eq!(ff.opus, Some(109));
        let h264: Vec<_> = h264(&ff).iter().map(|v| (v.pt, v.rtx)).collect();
        assert_eq!(h264, vec![(126, Some(127)), (97, Some(98))]);
        assert_eq!(choose_h264(&ff, Some(0x64001f)).unwrap().offer.pt, 126);
        let ai = summarize_offer(AIORTC).unwrap();
        assert_eq!(ai.video_mid.as_deref(), Some("0"));
        assert_eq!(choose_h264(&ai, None).unwrap().offer.pt, 101);
    }

    /// Chromium's H.264 list (Linux, software codecs): every profile in both
    /// packetization modes.
    const CHROMIUM_H264: &str = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 102 103 104 105 106 107 108 109 127 125 39 40 112 113\r\n\
a=mid:0\r\na=recvonly\r\n\
a=rtpmap:102 H264/90000\r\na=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f\r\n\
a=rtpmap:103 rtx/90000\r\na=fmtp:103 apt=102\r\n\
a=rtpmap:104 H264/90000\r\na=fmtp:104 level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42001f\r\n\
a=rtpmap:105 rtx/90000\r\na=fmtp:105 apt=104\r\n\
a=rtpmap:106 H264/90000\r\na=fmtp:106 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n\
a=rtpmap:107 rtx/90000\r\na=fmtp:107 apt=106\r\n\
a=rtpmap:108 H264/90000\r\na=fmtp:108 level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42e01f\r\n\
a=rtpmap:109 rtx/90000\r\na=fmtp:109 apt=108\r\n\
a=rtpmap:127 H264/90000\r\na=fmtp:127 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=4d001f\r\n\
a=rtpmap:125 rtx/90000\r\na=fmtp:125 apt=127\r\n\
a=rtpmap:39 H264/90000\r\na=fmtp:39 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=f4001f\r\n\
a=rtpmap:40 rtx/90000\r\na=fmtp:40 apt=39\r\n\
a=rtpmap:112 H264/90000\r\na=fmtp:112 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=64001f\r\n\
a=rtpmap:113 rtx/90000\r\na=fmtp:113 apt=112\r\n";

    /// Safari: Constrained High and Constrained Baseline.
    const SAFARI_H264: &str = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96 98\r\na=mid:0\r\na=recvonly\r\n\
a=rtpmap:96 H264/90000\r\na=fmtp:96 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=640c1f\r\n\
a=rtpmap:98 H264/90000\r\na=fmtp:98 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n";

    #[test]
    fn h264_profiles_follow_rfc_6184_table_5() {
        use H264Profile::*;
        // x264's baseline, main and high SPS.
        assert_eq!(H264Profile::of(0x42c01f), Some(ConstrainedBaseline));
        assert_eq!(H264Profile::of(0x4d401f), Some(Main));
        assert_eq!(H264Profile::of(0x640028), Some(High));
        // What browsers offer.
        assert_eq!(H264Profile::of(0x42001f), Some(Baseline));
        assert_eq!(H264Profile::of(0x42e01f), Some(ConstrainedBaseline));
        assert_eq!(H264Profile::of(0x4d001f), Some(Main));
        assert_eq!(H264Profile::of(0x640c1f), Some(ConstrainedHigh));
        // Main with constraint_set0: also Constrained Baseline.
        assert_eq!(H264Profile::of(0x4d801f), Some(ConstrainedBaseline));
        assert_eq!(H264Profile::of(0x58c01f), Some(ConstrainedBaseline));
        assert_eq!(H264Profile::of(0x58001f), Some(Extended));
        // Not negotiated by browsers, or flags outside the table.
        assert_eq!(H264Profile::of(0xf4001f), None);
        assert_eq!(H264Profile::of(0x6e001f), None);
        assert_eq!(H264Profile::of(0x64081f), None);
        assert_eq!(h264_profile_name(0x6e001f), "High 10");
        assert!(ConstrainedBaseline.within(High) && Main.within(High));
        assert!(ConstrainedHigh.within(High) && !High.within(ConstrainedHigh));
        assert!(!Main.within(ConstrainedBaseline) && !Baseline.within(Main));
    }

    #[test]
    fn h264_answer_follows_the_sps() {
        let chromium = summarize_offer(CHROMIUM_H264).unwrap();
        let ai = summarize_offer(AIORTC).unwrap();
        let ff = summarize_offer(FIREFOX).unwrap();
        let safari = summarize_offer(SAFARI_H264).unwrap();
        let fit = |o: &OfferSummary, sps: Option<u32>| {
            let p = choose_h264(o, sps).unwrap();
            (p.offer.pt, p.fit, p.answer_fmtp)
        };
        let answer = |plid: &str| {
            Some(format!(
                "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id={plid}"
            ))
        };
        // Chromium: each of x264's profiles has its entry, answered with the
        // SPS's constraint flags and level.
        assert_eq!(
            fit(&chromium, Some(0x42c01e)),
            (106, H264Fit::Exact, answer("42c01e"))
        );
        assert_eq!(
            fit(&chromium, Some(0x4d401f)),
            (127, H264Fit::Exact, answer("4d401f"))
        );
        assert_eq!(
            fit(&chromium, Some(0x640028)),
            (112, H264Fit::Exact, answer("640028"))
        );
        // Not-constrained Baseline has its own entry too.
        assert_eq!(
            fit(&chromium, Some(0x42001e)),
            (102, H264Fit::Exact, answer("42001e"))
        );
        // No SPS yet: constrained baseline as offered, as before.
        assert_eq!(fit(&chromium, None), (106, H264Fit::Unknown, None));

        // aiortc offers Baseline and Constrained Baseline only.
        assert_eq!(
            fit(&ai, Some(0x42c01f)),
            (101, H264Fit::Exact, answer("42c01f"))
        );
        assert_eq!(fit(&ai, Some(0x640028)), (101, H264Fit::Mismatch, None));
        assert_eq!(fit(&ai, Some(0x4d401f)), (101, H264Fit::Mismatch, None));
        assert_eq!(fit(&ai, None), (101, H264Fit::Unknown, None));
        assert_eq!(
            offered_h264_profiles(&ai),
            "Baseline and Constrained Baseline"
        );
        // Firefox (OpenH264): Constrained Baseline only.
        assert_eq!(fit(&ff, Some(0x640028)), (126, H264Fit::Mismatch, None));
        assert_eq!(offered_h264_profiles(&ff), "Constrained Baseline");
        // Safari: a Constrained High stream fits; High gets the Constrained
        // High entry (same profile_idc), Main the Constrained Baseline one.
        assert_eq!(
            fit(&safari, Some(0x640c28)),
            (96, H264Fit::Exact, answer("640c28"))
        );
        assert_eq!(fit(&safari, Some(0x640028)), (96, H264Fit::Mismatch, None));
        assert_eq!(fit(&safari, Some(0x4d401f)), (98, H264Fit::Mismatch, None));
        // A Constrained Baseline stream plays everywhere.
        assert_eq!(fit(&safari, Some(0x42c01f)).1, H264Fit::Exact);
        // A profile browsers cannot name: the closest, never an exact claim.
        assert_eq!(
            fit(&chromium, Some(0x6e0028)),
            (106, H264Fit::Mismatch, None)
        );

        // Without level asymmetry the answer's level stays within the offer's.
        let sym = "v=0\nm=video 9 UDP/TLS/RTP/SAVPF 96\na=rtpmap:96 H264/90000\na=fmtp:96 packetization-mode=1;profile-level-id=64001f\n";
        let sym = summarize_offer(sym).unwrap();
        assert_eq!(
            fit(&sym, Some(0x640028)).2.as_deref(),
            Some("packetization-mode=1;profile-level-id=64001f")
        );
        assert_eq!(
            fit(&sym, Some(0x64001e)).2.as_deref(),
            Some("packetization-mode=1;profile-level-id=64001e")
        );
    }

    #[test]
    fn the_answer_fmtp_is_replaced_in_the_video_section_only() {
        let answer = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 112\r\na=fmtp:112 minptime=10\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 112 113\r\na=rtpmap:112 H264/90000\r\n\
a=fmtp:112 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=64001f\r\n\
a=fmtp:113 apt=112\r\n";
        let out = set_answer_fmtp(answer, 112, "packetization-mode=1;profile-level-id=640028");
        assert_eq!(
            out,
            answer.replace(
                "a=fmtp:112 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=64001f",
                "a=fmtp:112 packetization-mode=1;profile-level-id=640028"
            )
        );
        assert!(out.contains("a=fmtp:112 minptime=10\r\n"));
    }

    /// A video section with `n` formats, each with an RTX and fmtp lines.
    fn many_formats(n: usize) -> String {
        let mut s = String::from("v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\n");
        for i in 0..n {
            let pt = (i % 128) as u8;
            s += &format!(
                "a=rtpmap:{pt} H264/90000\r\na=fmtp:{pt} packetization-mode=1;profile-level-id=42e01f\r\n"
            );
            s += &format!("a=rtpmap:{pt} rtx/90000\r\na=fmtp:{pt} apt={pt}\r\n");
        }
        s
    }

    #[test]
    fn oversized_offers_are_refused_after_bounded_work() {
        // 100 000 lines: refused on its size, before reading a line.
        let huge = "v=0\r\n".to_string() + &"a=x\r\n".repeat(100_000);
        let mut work = 0;
        assert_eq!(
            summarize_counted(&huge, &mut work),
            Err(OfferError::TooLarge(huge.len()))
        );
        assert_eq!(work, 0);
        // 10 000 payload types, with RTX and fmtp each: the same.
        let pts = many_formats(10_000);
        let mut work = 0;
        assert!(matches!(
            summarize_counted(&pts, &mut work),
            Err(OfferError::TooLarge(_))
        ));
        assert_eq!(work, 0);
        // Under the size cap, too many lines: stops at the cap.
        let lines = "v=0\n".to_string() + &"a\n".repeat(10_000);
        let mut work = 0;
        assert_eq!(
            summarize_counted(&lines, &mut work),
            Err(OfferError::TooManyLines)
        );
        assert_eq!(work, MAX_OFFER_LINES + 1);
        // Too many payload types in one section: stops at the 129th.
        let pts = many_formats(65);
        let mut work = 0;
        assert_eq!(
            summarize_counted(&pts, &mut work),
            Err(OfferError::TooManyPayloadTypes)
        );
        assert!(work < 4 * 65 + 4, "{work}");
        // A long line.
        let long = format!("v=0\nm=video 9 RTP/AVP 96\na={}\n", "x".repeat(5000));
        assert_eq!(summarize_offer(&long), Err(OfferError::LineTooLong(3)));
        let sections = "v=0\n".to_string() + &"m=audio 9 RTP/AVP 0\n".repeat(65);
        assert_eq!(summarize_offer(&sections), Err(OfferError::TooManySections));
        assert!(matches!(parse_offer(&huge), Err(OfferError::TooLarge(_))));
    }

    #[test]
    fn a_parsed_offer_can_cross_threads() {
        // Callers parse in one place (a blocking task, before any lock) and
        // negotiate in another.
        fn send<T: Send + 'static>(_: &T) {}
        send(&parse_offer(AIORTC).unwrap());
    }

    #[test]
    fn work_is_linear_at_the_caps() {
        // The most an accepted offer can ask: 128 formats, half of them RTX.
        let mut s = String::from("v=0\nm=video 9 UDP/TLS/RTP/SAVPF 0\n");
        for pt in 0..64u8 {
            s += &format!("a=rtpmap:{pt} VP8/90000\na=fmtp:{pt} x=1\n");
            let r = pt + 64;
            s += &format!("a=rtpmap:{r} rtx/90000\na=fmtp:{r} apt={pt}\n");
        }
        let lines = s.lines().count();
        let mut work = 0;
        let o = summarize_counted(&s, &mut work).unwrap();
        assert_eq!(o.video.len(), 64);
        assert!(o.video.iter().all(|v| v.rtx == Some(v.pt + 64)));
        assert!(work <= lines + 128, "{work} steps for {lines} lines");
    }
}
