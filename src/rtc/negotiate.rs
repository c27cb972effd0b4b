//! Negotiation: from an offer (or to an offer, for players whose signalling
//! has the server offer) to a configured str0m `Rtc` and the SDP to send
//! back. Pure: no sockets, no threads, no engine state; the offer is read by
//! `sdp.rs` first (bounded, outside any lock), then checked against what the
//! stream sends. Tested with canned offers of real clients (`testdata/`).

use std::time::{Duration, Instant};

use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::config::DtlsCert;
use str0m::format::{Codec, FormatParams};
use str0m::media::{Direction, Frequency, MediaKind, Mid, Pt};
use str0m::net::Protocol;
use str0m::rtp::{Extension, ExtensionMap};
use str0m::{Candidate, Rtc, RtcConfig};
use tracing::info;

use super::dtls::{SrtpKeys, build_rtc};
use super::publish::VideoTrack;
use super::{PublishError, Transport, ViewerError, sdp};
use crate::hub::Stream;
use crate::log_every::LogEvery;
use crate::media::rtp_video::VideoCodec;

/// Viewers sent H.264 in a profile their offer did not list.
static H264_MISMATCH_LOG: LogEvery = LogEvery::new(Duration::from_secs(60));

/// What every session's negotiation shares: the DTLS certificate, the
/// server's candidates and the settings that decide answers.
pub struct Negotiator {
    pub cert: DtlsCert,
    pub candidates: Vec<Candidate>,
    /// Publishers get the TCP candidates only.
    pub tcp_force: bool,
    /// Refuse viewers whose offer lacks the stream's H.264 profile.
    pub strict_h264_profile: bool,
    /// Established viewers get their media from roomcast's own SRTP path
    /// (`direct`), not str0m's.
    pub direct_send: bool,
}

/// A negotiated viewer session, ready for a shard.
pub struct NegotiatedViewer {
    pub rtc: Rtc,
    /// The SDP answer (or, for a server-made offer, the viewer's answer).
    pub answer: String,
    pub video: Option<(Mid, Pt, VideoCodec)>,
    pub audio: Option<(Mid, Pt)>,
    /// With `direct_send`: the session's SRTP keys once DTLS is up.
    pub srtp_keys: Option<SrtpKeys>,
}

/// A negotiated WHIP publisher session.
pub struct NegotiatedPublisher {
    pub rtc: Rtc,
    pub answer: String,
    pub video: Option<VideoTrack>,
    pub audio: Option<(Mid, Pt)>,
}

/// A server-made offer for a viewer, waiting for its answer.
pub struct ServerOffer {
    pub rtc: Rtc,
    pub pending: SdpPendingOffer,
    pub sdp: String,
    /// `a=candidate` values (without `a=`).
    pub candidates: Vec<String>,
    /// The mid of the first section.
    pub mid: String,
    /// The video section and the payload types offered for it, preferred first.
    pub video: Option<(Mid, Vec<Pt>, VideoCodec)>,
    pub audio: Option<(Mid, Pt)>,
    pub srtp_keys: Option<SrtpKeys>,
}

impl Negotiator {
    /// Answers a viewer's offer for `stream`: the codec it can play of what
    /// the stream sends, and the candidates of `transport`.
    pub fn viewer(
        &self,
        stream: &Stream,
        offer: sdp::ParsedOffer,
        transport: Transport,
        now: Instant,
    ) -> Result<NegotiatedViewer, ViewerError> {
        let sdp::ParsedOffer {
            summary,
            sdp: parsed,
        } = offer;
        let media = stream.media_info();
        let stream_video = stream_video(&media);
        let sends = sends_description(&stream_video, media.audio.is_some());
        let offered = || summary.offered();

        let video = if summary.has_video {
            let sv = stream_video.clone().unwrap_or(sdp::StreamVideo {
                // Not known yet (no frame received): H.264, RTMP's codec.
                codec: VideoCodec::H264,
                profile_level_id: None,
                fmtp: String::new(),
            });
            match sdp::choose_video(&summary, &sv) {
                Some(pick) => {
                    if pick.fit == sdp::H264Fit::Mismatch {
                        self.h264_mismatch(stream, &summary, sv.profile_level_id)?;
                    }
                    Some((pick.offer.clone(), pick.answer_fmtp))
                }
                None => {
                    return Err(ViewerError::NoCodec {
                        stream: stream.name.clone(),
                        wanted: match sv.codec {
                            VideoCodec::H264 => "H.264 (packetization-mode=1)".into(),
                            _ => sv.describe(),
                        },
                        offered: offered(),
                        sends,
                    });
                }
            }
        } else {
            None
        };
        let opus = summary.opus;
        if summary.has_audio && opus.is_none() && video.is_none() {
            return Err(ViewerError::NoCodec {
                stream: stream.name.clone(),
                wanted: "Opus".into(),
                offered: offered(),
                sends,
            });
        }

        let mut config = self.viewer_config();
        if let Some((v, _)) = &video {
            add_offered_video(&mut config, v);
        }
        if opus.is_some() {
            config = config.enable_opus(true, false);
        }
        let (mut rtc, srtp_keys) = build_rtc(config, now);
        for c in self.candidates_for(transport) {
            rtc.add_local_candidate(c.clone());
        }
        let answer =
            no_panic(|| rtc.sdp_api().accept_offer(parsed)).map_err(ViewerError::Negotiation)?;

        let mut answer = answer.to_sdp_string();
        if let Some((v, Some(fmtp))) = &video {
            answer = sdp::set_answer_fmtp(&answer, v.pt, fmtp);
        }
        let video = video.as_ref().and_then(|(v, _)| {
            sending(&rtc, &summary.video_mid).map(|mid| (mid, v.pt.into(), v.codec))
        });
        let audio =
            opus.and_then(|pt| sending(&rtc, &summary.audio_mid).map(|mid| (mid, pt.into())));
        if video.is_none() && audio.is_none() {
            return Err(ViewerError::NothingToReceive);
        }
        Ok(NegotiatedViewer {
            rtc,
            answer,
            video,
            audio,
            srtp_keys: srtp_keys.filter(|_| self.direct_send),
        })
    }

    /// An offer whose H.264 profiles do not include the stream's: refused with
    /// `strict_h264_profile`, else sent the closest offered profile (logged),
    /// since the offerers that list only Constrained Baseline in practice
    /// (Firefox, aiortc/libavcodec, Safari's Constrained High) decode more.
    fn h264_mismatch(
        &self,
        stream: &Stream,
        offer: &sdp::OfferSummary,
        stream_plid: Option<u32>,
    ) -> Result<(), ViewerError> {
        let plid = stream_plid.unwrap_or_default();
        let offered = sdp::offered_h264_profiles(offer);
        let profile = sdp::h264_profile_name(plid);
        if self.strict_h264_profile {
            return Err(ViewerError::H264Profile {
                stream: stream.name.clone(),
                offered,
                profile,
            });
        }
        if let Some(suppressed) = H264_MISMATCH_LOG.allow() {
            info!(
                stream = %stream.name,
                stream_profile = %format!("{profile} ({plid:06x})"),
                offered = %offered,
                suppressed,
                "viewer offers no H.264 profile containing the stream's; sending it in the closest offered one"
            );
        }
        Ok(())
    }

    fn viewer_config(&self) -> RtcConfig {
        // No transport-wide congestion control: without bandwidth estimation it
        // only costs str0m a 1000-entry send history per viewer. Nor
        // abs-send-time on the direct path, which does not write it: it only
        // feeds the receiver's REMB estimate, and we ignore REMB.
        let mut exts = ExtensionMap::empty();
        if !self.direct_send {
            exts.set(2, Extension::AbsoluteSendTime);
        }
        exts.set(4, Extension::RtpMid);
        let config = Rtc::builder()
            .set_ice_lite(true)
            .set_rtp_mode(true)
            .set_dtls_cert(self.cert.clone())
            .set_extension_map(exts)
            .clear_codecs();
        if self.direct_send {
            super::direct::configure(config)
        } else {
            config
        }
    }

    /// Makes an offer for a viewer of `stream` (OvenPlayer's signalling has the
    /// server offer): the stream's video codec and Opus, sendonly, with the
    /// candidates of `transport`. [`accept_viewer_answer`] completes it.
    pub fn viewer_offer(
        &self,
        stream: &Stream,
        transport: Transport,
        now: Instant,
    ) -> Result<ServerOffer, ViewerError> {
        let media = stream.media_info();
        let sv = stream_video(&media);
        let mut config = self.viewer_config();
        let video_codec = sv.as_ref().map(|v| v.codec);
        let video_pt: Option<Vec<Pt>> = sv.as_ref().map(|v| {
            let mut pts = Vec::new();
            for (pt, rtx, fmtp) in offer_formats(v) {
                config.codec_config().add_config(
                    pt,
                    Some(rtx),
                    codec_of(v.codec),
                    Frequency::NINETY_KHZ,
                    None,
                    fmtp,
                );
                pts.push(pt);
            }
            pts
        });
        if video_pt.is_none() && media.audio.is_none() {
            return Err(ViewerError::Negotiation(format!(
                "stream '{}' has no media yet; try again in a moment",
                stream.name
            )));
        }
        config = config.enable_opus(true, false);
        let (mut rtc, srtp_keys) = build_rtc(config, now);
        let mut candidates = Vec::new();
        for c in self.candidates_for(transport) {
            candidates.push(c.to_sdp_string());
            rtc.add_local_candidate(c.clone());
        }
        let mut api = rtc.sdp_api();
        let msid = Some("roomcast".to_string());
        let video_mid = video_pt.as_ref().map(|_| {
            api.add_media(
                MediaKind::Video,
                Direction::SendOnly,
                msid.clone(),
                Some("video".into()),
                None,
            )
        });
        let audio_mid = api.add_media(
            MediaKind::Audio,
            Direction::SendOnly,
            msid,
            Some("audio".into()),
            None,
        );
        let Some((offer, pending)) = api.apply() else {
            return Err(ViewerError::Negotiation("no offer was made".into()));
        };
        let mid = video_mid.unwrap_or(audio_mid).to_string();
        let video_pt = video_pt.unwrap_or_default();
        let opus_pt = Pt::from(111);
        Ok(ServerOffer {
            rtc,
            pending,
            sdp: offer.to_sdp_string(),
            candidates,
            mid,
            video: video_mid.zip(video_codec).map(|(m, c)| (m, video_pt, c)),
            audio: Some((audio_mid, opus_pt)),
            srtp_keys: srtp_keys.filter(|_| self.direct_send),
        })
    }

    pub fn candidates_for(&self, t: Transport) -> impl Iterator<Item = &Candidate> {
        let only = match t {
            Transport::All => None,
            Transport::Udp => Some(Protocol::Udp),
            Transport::Tcp => Some(Protocol::Tcp),
        };
        let any_of = |p: Protocol| self.candidates.iter().any(|c| c.proto() == p);
        // A transport the server does not offer (UDP with tcp_force): all it has.
        let only = only.filter(|p| any_of(*p));
        self.candidates
            .iter()
            .filter(move |c| only.is_none_or(|p| c.proto() == p))
    }

    /// Answers a WHIP publisher's offer: the codecs roomcast forwards, and
    /// the UDP host candidates only (OBS breaks on several candidate kinds),
    /// or the TCP ones with `tcp_force`.
    pub fn publisher(
        &self,
        offer: sdp::ParsedOffer,
        now: Instant,
    ) -> Result<NegotiatedPublisher, PublishError> {
        let sdp::ParsedOffer {
            summary,
            sdp: parsed,
        } = offer;
        let video = if summary.has_video && summary.sends(true) {
            sdp::choose_publisher_video(&summary).cloned()
        } else {
            None
        };
        let opus = summary
            .opus
            .filter(|_| summary.has_audio && summary.sends(false));
        let video_unusable = summary.has_video && summary.sends(true) && video.is_none();
        if video_unusable || (video.is_none() && opus.is_none()) {
            if !summary.sends(true) && !summary.sends(false) {
                return Err(PublishError::NothingToSend);
            }
            return Err(PublishError::NoCodec {
                offered: summary.offered(),
            });
        }
        let mut config = Rtc::builder()
            .set_ice_lite(true)
            .set_rtp_mode(true)
            .set_dtls_cert(self.cert.clone())
            .set_extension_map(ExtensionMap::standard())
            .clear_codecs();
        if let Some(v) = &video {
            add_offered_video(&mut config, v);
        }
        if let Some(pt) = opus {
            config.codec_config().add_config(
                pt.into(),
                None,
                Codec::Opus,
                Frequency::FORTY_EIGHT_KHZ,
                Some(2),
                FormatParams {
                    min_p_time: Some(10),
                    use_inband_fec: Some(true),
                    ..Default::default()
                },
            );
        }
        let mut rtc = config.build(now);
        let transport = if self.tcp_force {
            Transport::Tcp
        } else {
            Transport::Udp
        };
        for c in self.candidates_for(transport) {
            rtc.add_local_candidate(c.clone());
        }
        let answer =
            no_panic(|| rtc.sdp_api().accept_offer(parsed)).map_err(PublishError::Negotiation)?;
        let receiving = |rtc: &Rtc, mid: &Option<String>| -> Option<Mid> {
            let mid = Mid::from(mid.as_deref()?);
            let m = rtc.media(mid)?;
            matches!(m.direction(), Direction::RecvOnly | Direction::SendRecv).then_some(mid)
        };
        let video = video.and_then(|v| {
            receiving(&rtc, &summary.video_mid).map(|mid| VideoTrack {
                mid,
                pt: v.pt.into(),
                codec: v.codec,
                fmtp: v.fmtp.clone(),
            })
        });
        let audio = opus.and_then(|pt| receiving(&rtc, &summary.audio_mid).map(|m| (m, pt.into())));
        if video.is_none() && audio.is_none() {
            return Err(PublishError::NothingToSend);
        }
        Ok(NegotiatedPublisher {
            rtc,
            answer: answer.to_sdp_string(),
            video,
            audio,
        })
    }
}

/// Applies the viewer's answer to a [`ServerOffer`]: the session's tracks,
/// the video in the first of our formats the answer lists (the viewer's
/// preference).
pub fn accept_viewer_answer(
    offer: ServerOffer,
    answer: &str,
) -> Result<NegotiatedViewer, ViewerError> {
    // The same caps as an offer, before str0m reads it.
    sdp::summarize_offer(answer).map_err(|e| ViewerError::BadAnswer(e.to_string()))?;
    let parsed =
        SdpAnswer::from_sdp_string(answer).map_err(|e| ViewerError::BadAnswer(e.to_string()))?;
    let ServerOffer {
        mut rtc,
        pending,
        video,
        audio,
        srtp_keys,
        ..
    } = offer;
    no_panic(|| rtc.sdp_api().accept_answer(pending, parsed)).map_err(ViewerError::Negotiation)?;
    // The first of our formats in the answer (the viewer's preference).
    let video = video.and_then(|(mid, offered, codec)| {
        if !sending_mid(&rtc, mid) {
            return None;
        }
        let answered = rtc.media(mid)?.remote_pts();
        let pt = answered.iter().find(|p| offered.contains(p))?;
        Some((mid, *pt, codec))
    });
    let audio = audio.filter(|(mid, _)| sending_mid(&rtc, *mid));
    if video.is_none() && audio.is_none() {
        return Err(ViewerError::NothingToReceive);
    }
    Ok(NegotiatedViewer {
        rtc,
        answer: answer.to_string(),
        video,
        audio,
        srtp_keys,
    })
}

/// Runs a str0m negotiation step, turning an assertion inside str0m (a
/// remote SDP it did not expect) into an error instead of a crash.
fn no_panic<T>(f: impl FnOnce() -> Result<T, str0m::RtcError>) -> Result<T, String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err("the SDP could not be negotiated (rejected by the WebRTC library)".into()),
    }
}

fn sending(rtc: &Rtc, mid: &Option<String>) -> Option<Mid> {
    let mid = Mid::from(mid.as_deref()?);
    sending_mid(rtc, mid).then_some(mid)
}

fn sending_mid(rtc: &Rtc, mid: Mid) -> bool {
    rtc.media(mid)
        .is_some_and(|m| matches!(m.direction(), Direction::SendOnly | Direction::SendRecv))
}

/// The session takes the offer's video format as offered: its payload type,
/// RTX payload type and fmtp.
fn add_offered_video(config: &mut RtcConfig, v: &sdp::VideoOffer) {
    config.codec_config().add_config(
        v.pt.into(),
        v.rtx.map(Into::into),
        codec_of(v.codec),
        Frequency::NINETY_KHZ,
        None,
        FormatParams::parse_line(&v.fmtp),
    );
}

fn codec_of(c: VideoCodec) -> Codec {
    match c {
        VideoCodec::H264 => Codec::H264,
        VideoCodec::Vp8 => Codec::Vp8,
        VideoCodec::Vp9 => Codec::Vp9,
        VideoCodec::Av1 => Codec::Av1,
    }
}

/// The video formats of a server-made offer: (payload type, RTX, fmtp). H.264
/// is offered in the stream's profile and in the profiles browsers list (a
/// browser may not list High, yet its decoder plays it): the viewer's answer
/// picks one, and the payloads are the same whichever it is.
fn offer_formats(v: &sdp::StreamVideo) -> Vec<(Pt, Pt, FormatParams)> {
    let h264 = |plid: u32| FormatParams {
        level_asymmetry_allowed: Some(true),
        packetization_mode: Some(1),
        profile_level_id: Some(plid),
        ..Default::default()
    };
    match v.codec {
        VideoCodec::H264 => {
            // The stream's profile first, as its SPS says when browsers can
            // read it, else its profile_idc at level 3.1 (levels are
            // asymmetric); one entry per profile_idc, or str0m maps two to one
            // answered PT.
            let own = v.profile_level_id.map(|p| {
                if sdp::H264Profile::of(p).is_some() {
                    p
                } else {
                    (p & 0xff_0000) | 0x1f
                }
            });
            let mut profiles: Vec<u32> = own.into_iter().collect();
            for p in [0x42e01f, 0x4d001f, 0x64001f] {
                if !profiles.iter().any(|q| q >> 16 == p >> 16) {
                    profiles.push(p);
                }
            }
            profiles
                .into_iter()
                .zip([
                    (102u8, 103u8),
                    (104, 105),
                    (106, 107),
                    (108, 109),
                    (112, 113),
                ])
                .map(|(p, (pt, rtx))| (pt.into(), rtx.into(), h264(p)))
                .collect()
        }
        codec => {
            let (pt, rtx) = match codec {
                VideoCodec::Vp8 => (96, 97),
                VideoCodec::Vp9 => (98, 99),
                _ => (45, 46),
            };
            vec![(pt.into(), rtx.into(), FormatParams::parse_line(&v.fmtp))]
        }
    }
}

/// The stream's video as negotiation needs it; None before its first frame.
fn stream_video(media: &crate::hub::MediaInfo) -> Option<sdp::StreamVideo> {
    let v = media.video.as_ref()?;
    Some(sdp::StreamVideo {
        codec: VideoCodec::from_name(v.codec)?,
        profile_level_id: v.profile_level_id,
        fmtp: v.fmtp.clone().unwrap_or_default(),
    })
}

fn sends_description(video: &Option<sdp::StreamVideo>, audio: bool) -> String {
    let v = video
        .as_ref()
        .map_or("H.264".to_string(), sdp::StreamVideo::describe);
    if audio {
        format!("{v} video and Opus audio")
    } else {
        format!("{v} video")
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use str0m::change::SdpOffer;
    use str0m::net::TcpType;

    use super::super::pair::publish_media;
    use super::*;
    use crate::hub::{Hub, Publisher};

    // Captured from the clients themselves: Chromium 156 headless (recvonly
    // transceivers as the play page makes them; sendonly canvas and
    // WebAudio tracks as a WHIP publisher), Firefox and aiortc (their WHEP
    // offers, captured in an earlier session).
    const CHROMIUM_WHEP: &str = include_str!("testdata/chromium_whep_offer.sdp");
    const CHROMIUM_WHIP: &str = include_str!("testdata/chromium_whip_offer.sdp");
    const FIREFOX: &str = include_str!("testdata/firefox_offer.sdp");
    const AIORTC: &str = include_str!("testdata/aiortc_offer.sdp");
    // Not captured (Debian's OBS 29 has no WHIP output): written for these
    // tests in the shape OBS 30–32 sends, libdatachannel's, as public
    // captures show it. ICE credentials, fingerprint and setup at session
    // level only, `a=group:LS`, `msid-semantic:WMS *`, `ice-options:ice2`,
    // Opus before H.264 and no candidates (OBS ≥ 30.2 gathers after the
    // answer). Values are our own.
    const OBS_WHIP: &str = include_str!("testdata/obs_whip_offer_modelled.sdp");
    // Not captured either (no Safari here): the play page's recvonly offer
    // in the shape Safari 17–18 makes it, from public captures. H.264 first
    // with Constrained High (640c1f) before Constrained Baseline, each also
    // with packetization-mode 0, then H.265, VP8, two VP9 profiles, RED and
    // ULPFEC; no AV1. Values are our own.
    const SAFARI_WHEP: &str = include_str!("testdata/safari_whep_offer_modelled.sdp");
    // OvenPlayer 0.10.54 (npm) in headless Chromium 156, answering roomcast's
    // OME-signalling offer for an H.264 stream (captured from `tests/ome.rs`,
    // ovenplayer_plays_over_udp_and_tcp, over UDP).
    const OVENPLAYER_ANSWER: &str = include_str!("testdata/ovenplayer_answer.sdp");

    const VIEWER_OFFERS: [(&str, &str); 4] = [
        ("chromium", CHROMIUM_WHEP),
        ("firefox", FIREFOX),
        ("aiortc", AIORTC),
        ("safari (modelled)", SAFARI_WHEP),
    ];

    fn negotiator(strict_h264_profile: bool) -> Negotiator {
        super::super::dtls::crypto_provider().install_process_default();
        let udp = "127.0.0.1:40000".parse().unwrap();
        let tcp = "127.0.0.1:40001".parse().unwrap();
        Negotiator {
            cert: super::super::dtls::crypto_provider()
                .dtls_provider
                .generate_certificate()
                .unwrap(),
            candidates: vec![
                Candidate::host(udp, "udp").unwrap(),
                Candidate::builder()
                    .tcp()
                    .host(tcp)
                    .tcptype(TcpType::Passive)
                    .build()
                    .unwrap(),
            ],
            tcp_force: false,
            strict_h264_profile,
            direct_send: true,
        }
    }

    /// A stream whose publisher sends `codec` video (`plid` for H.264) and Opus.
    fn stream(codec: &'static str, plid: Option<u32>) -> (Arc<Hub>, Arc<Stream>, Publisher) {
        let hub = Arc::new(Hub::new());
        let s = hub.ensure_stream("s", None);
        let p = publish_media(&hub, &s, codec, plid);
        (hub, s, p)
    }

    fn parse(sdp: &str) -> sdp::ParsedOffer {
        sdp::parse_offer(sdp).unwrap()
    }

    #[test]
    fn every_canned_viewer_offer_is_answered_in_the_streams_codec() {
        let n = negotiator(false);
        for (name, offer) in VIEWER_OFFERS {
            for (codec, plid) in [
                ("H264", Some(0x42e01f)),
                ("H264", Some(0x64001f)),
                ("VP8", None),
            ] {
                let (_hub, s, _p) = stream(codec, plid);
                let v = n
                    .viewer(&s, parse(offer), Transport::All, Instant::now())
                    .unwrap_or_else(|e| panic!("{name}, {codec}: {e}"));
                let (_, pt, c) = v.video.unwrap_or_else(|| panic!("{name}: no video"));
                assert_eq!(c.name(), codec, "{name}");
                assert!(v.audio.is_some(), "{name}, {codec}: no Opus");
                let rtpmap = format!("a=rtpmap:{} {codec}/90000", *pt);
                assert!(
                    v.answer.contains(&rtpmap),
                    "{name}: {rtpmap} in\n{}",
                    v.answer
                );
                assert!(v.answer.contains("a=ice-lite"), "{name}");
                assert!(v.answer.contains("127.0.0.1 40000 typ host"), "{name}");
                assert!(v.answer.contains("tcptype passive"), "{name}");
            }
        }
    }

    /// Safari lists Constrained High first and each H.264 profile twice:
    /// roomcast sends FU-A, so only packetization-mode 1 will do, and the
    /// stream's own profile is preferred when offered.
    #[test]
    fn safaris_h264_choice_is_the_streams_profile_in_packetization_mode_1() {
        let n = negotiator(false);
        for (plid, pt) in [(0x42e01f, 98), (0x640c1f, 96)] {
            let (_hub, s, _p) = stream("H264", Some(plid));
            let v = n
                .viewer(&s, parse(SAFARI_WHEP), Transport::All, Instant::now())
                .unwrap();
            let (_, chosen, _) = v.video.unwrap();
            assert_eq!(*chosen, pt, "profile {plid:06x}:\n{}", v.answer);
            assert!(!v.answer.contains("packetization-mode=0"), "{}", v.answer);
        }
    }

    /// The direct path writes no abs-send-time: it is not negotiated then.
    #[test]
    fn abs_send_time_is_offered_only_on_str0ms_path() {
        for direct_send in [false, true] {
            let n = Negotiator {
                direct_send,
                ..negotiator(false)
            };
            let (_hub, s, _p) = stream("H264", Some(0x42e01f));
            for (name, offer) in VIEWER_OFFERS {
                let v = n
                    .viewer(&s, parse(offer), Transport::All, Instant::now())
                    .unwrap();
                assert_eq!(
                    v.answer.contains("abs-send-time"),
                    !direct_send,
                    "{name}, direct_send {direct_send}"
                );
                assert!(v.answer.contains("sdes:mid"), "{name}");
            }
            let offer = n.viewer_offer(&s, Transport::All, Instant::now()).unwrap();
            assert_eq!(offer.sdp.contains("abs-send-time"), !direct_send);
        }
    }

    #[test]
    fn a_transport_choice_keeps_only_its_candidates() {
        let n = negotiator(false);
        let (_hub, s, _p) = stream("H264", Some(0x42e01f));
        let udp = n
            .viewer(&s, parse(CHROMIUM_WHEP), Transport::Udp, Instant::now())
            .unwrap();
        assert!(!udp.answer.contains("tcptype"));
        let tcp = n
            .viewer(&s, parse(CHROMIUM_WHEP), Transport::Tcp, Instant::now())
            .unwrap();
        assert!(!tcp.answer.contains("40000 typ host"));
        assert!(tcp.answer.contains("tcptype passive"));
    }

    #[test]
    fn an_offer_without_the_streams_codec_is_refused_naming_both() {
        let n = negotiator(false);
        let (_hub, s, _p) = stream("AV1", None);
        let v = n
            .viewer(&s, parse(CHROMIUM_WHEP), Transport::All, Instant::now())
            .unwrap();
        assert_eq!(v.video.unwrap().2, VideoCodec::Av1, "Chromium plays AV1");
        for (name, offer) in [("firefox", FIREFOX), ("aiortc", AIORTC)] {
            match n.viewer(&s, parse(offer), Transport::All, Instant::now()) {
                Err(ViewerError::NoCodec {
                    wanted, offered, ..
                }) => {
                    assert!(wanted.contains("AV1"), "{name}: {wanted}");
                    assert!(offered.contains("VP8"), "{name}: {offered}");
                }
                other => panic!("{name}: {:?}", other.map(|v| v.answer)),
            }
        }
    }

    #[test]
    fn strict_h264_profile_refuses_offers_without_the_streams_profile() {
        // Main 4.0. The Chromium build captured lists Constrained Baseline,
        // Baseline, Main and High 4:4:4 (not High); Firefox and aiortc list
        // Constrained Baseline only.
        let (_hub, s, _p) = stream("H264", Some(0x4d0028));
        let now = Instant::now();
        for (name, offer) in [("firefox", FIREFOX), ("aiortc", AIORTC)] {
            assert!(
                negotiator(false)
                    .viewer(&s, parse(offer), Transport::All, now)
                    .is_ok(),
                "{name}: sent in the closest profile"
            );
            assert!(
                matches!(
                    negotiator(true).viewer(&s, parse(offer), Transport::All, now),
                    Err(ViewerError::H264Profile { .. })
                ),
                "{name}: refused when strict"
            );
        }
        assert!(
            negotiator(true)
                .viewer(&s, parse(CHROMIUM_WHEP), Transport::All, now)
                .is_ok()
        );
    }

    #[test]
    fn a_chromium_whip_offer_is_answered_for_a_publisher_and_a_viewers_is_not() {
        let n = negotiator(false);
        let p = n.publisher(parse(CHROMIUM_WHIP), Instant::now()).unwrap();
        let v = p.video.expect("video");
        assert!(matches!(v.codec, VideoCodec::H264 | VideoCodec::Vp8));
        assert!(p.audio.is_some());
        assert!(p.answer.contains("a=recvonly"));
        // UDP host candidates only: OBS breaks on several candidate kinds.
        assert!(!p.answer.contains("tcptype"));
        assert!(matches!(
            n.publisher(parse(CHROMIUM_WHEP), Instant::now()),
            Err(PublishError::NothingToSend)
        ));
        for (name, offer) in VIEWER_OFFERS {
            assert!(
                n.publisher(parse(offer), Instant::now()).is_err(),
                "{name}'s viewer offer publishes nothing"
            );
        }
    }

    #[test]
    fn an_obs_shaped_whip_offer_with_session_level_ice_is_answered() {
        let n = negotiator(false);
        let p = n
            .publisher(parse(OBS_WHIP), Instant::now())
            .expect("OBS's offer is accepted");
        let v = p.video.expect("video");
        assert!(matches!(v.codec, VideoCodec::H264));
        assert!(p.audio.is_some(), "Opus is taken");
        // Both sections answered, in the offer's order, receiving only.
        assert_eq!(attr_values(&p.answer, "mid"), ["0", "1"]);
        assert_eq!(p.answer.matches("a=recvonly").count(), 2);
        assert!(p.answer.contains("a=rtpmap:111 opus/48000/2"));
        assert!(p.answer.contains("a=rtpmap:96 H264/90000"));
        // DTLS roles: OBS offers actpass, so the answer picks one side.
        let setup = attr_values(&p.answer, "setup");
        assert!(
            !setup.is_empty() && setup.iter().all(|r| *r == "passive" || *r == "active"),
            "{setup:?}"
        );
        // OBS breaks on several candidate kinds: UDP host candidates only.
        assert!(p.answer.contains("a=candidate:"));
        assert!(!p.answer.contains("tcptype"));
    }

    /// `a=<name>:` values of `sdp`, in order.
    fn attr_values<'a>(sdp: &'a str, name: &str) -> Vec<&'a str> {
        let prefix = format!("a={name}:");
        sdp.lines()
            .filter_map(|l| l.trim_end().strip_prefix(prefix.as_str()))
            .collect()
    }

    #[test]
    fn ovenplayers_answer_completes_a_server_offer() {
        let n = negotiator(false);
        let (_hub, s, _p) = stream("H264", Some(0x42e01f));
        let offer = n.viewer_offer(&s, Transport::Udp, Instant::now()).unwrap();
        // The captured answer names the sections of the offer it answered:
        // give it this offer's mids, in order.
        let mut answer = OVENPLAYER_ANSWER.to_string();
        let canned = attr_values(OVENPLAYER_ANSWER, "mid");
        let ours: Vec<String> = attr_values(&offer.sdp, "mid")
            .into_iter()
            .map(String::from)
            .collect();
        assert_eq!(
            canned.len(),
            ours.len(),
            "one section each for video and audio"
        );
        for (c, o) in canned.iter().zip(&ours) {
            answer = answer.replace(c, o.as_str());
        }
        let offer_sdp = offer.sdp.clone();
        // It was captured when roomcast still offered abs-send-time (no
        // longer with `direct_send`): a player answers only what is offered.
        answer = answer
            .split_inclusive('\n')
            .filter(|l| {
                l.strip_prefix("a=extmap:")
                    .and_then(|e| e.split_whitespace().nth(1))
                    .is_none_or(|uri| offer_sdp.contains(uri))
            })
            .collect();
        let offered: Vec<Pt> = offer.video.as_ref().unwrap().1.clone();
        let v = accept_viewer_answer(offer, &answer).unwrap();
        let (mid, pt, codec) = v.video.expect("video");
        assert_eq!(codec, VideoCodec::H264);
        assert_eq!(mid.to_string(), ours[0]);
        // The player kept both offered profiles (42e01f and 4d001f, each
        // with its RTX); the first one it lists is what is sent.
        let first: u8 = attr_values(&answer, "rtpmap")[0]
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(*pt, first);
        assert!(offered.contains(&pt));
        assert!(attr_values(&answer, "fmtp").contains(&"103 apt=102"));
        let (amid, apt) = v.audio.expect("Opus");
        assert_eq!(amid.to_string(), ours[1]);
        assert_eq!(*apt, 111);
        // The extensions it kept (mid; abs-send-time when offered) are the
        // offer's, with the offer's ids.
        for ext in attr_values(&answer, "extmap") {
            assert!(offer_sdp.contains(&format!("a=extmap:{ext}")), "{ext}");
        }
    }

    #[test]
    fn a_server_offer_completes_with_the_players_answer() {
        let n = negotiator(false);
        let (_hub, s, _p) = stream("H264", Some(0x64001f));
        let now = Instant::now();
        let offer = n.viewer_offer(&s, Transport::Udp, now).unwrap();
        assert!(!offer.candidates.iter().any(|c| c.contains("tcp")));
        assert!(offer.sdp.contains("a=sendonly"));
        // A player's answer (str0m answers as a browser would).
        let mut player = Rtc::builder().build(now);
        let answer = player
            .sdp_api()
            .accept_offer(SdpOffer::from_sdp_string(&offer.sdp).unwrap())
            .unwrap()
            .to_sdp_string();
        let v = accept_viewer_answer(offer, &answer).unwrap();
        assert_eq!(v.video.unwrap().2, VideoCodec::H264);
        assert!(v.audio.is_some());
        // An answer that is no SDP is refused, not a panic.
        let offer = n.viewer_offer(&s, Transport::All, now).unwrap();
        assert!(matches!(
            accept_viewer_answer(offer, "v=0\r\nnonsense"),
            Err(ViewerError::BadAnswer(_))
        ));
    }

    /// livewrk (live777 0.9.0's WHEP load tool, webrtc-rs 0.20 with its
    /// default codecs) offers every video codec with RTX, H.264 in both
    /// packetization modes, four audio codecs and a data channel. Captured by
    /// pointing `livewrk whep --sessions 1` at a one-shot HTTP listener.
    #[test]
    fn a_livewrk_offer_gets_the_streams_codec_its_rtx_and_opus() {
        const LIVEWRK: &str = include_str!("testdata/livewrk_whep_offer.sdp");
        let n = negotiator(false);
        // (stream codec, profile-level-id, PT and RTX PT livewrk offers for it)
        let cases = [
            // x264's High (bench/vs_live777.sh's source): livewrk's only High is
            // 640032, packetization-mode=1.
            ("H264", Some(0x64001f), 123, 124),
            // Constrained Baseline: 125 (mode 1), not 108 (mode 0).
            ("H264", Some(0x42e01f), 125, 105),
            ("VP8", None, 96, 97),
        ];
        for (codec, plid, pt, rtx) in cases {
            let (_hub, s, _p) = stream(codec, plid);
            let v = n
                .viewer(&s, parse(LIVEWRK), Transport::Udp, Instant::now())
                .unwrap_or_else(|e| panic!("{codec}: {e}"));
            let (_, got, c) = v.video.expect("video");
            assert_eq!((c.name(), *got), (codec, pt), "{}", v.answer);
            let (_, opus) = v.audio.expect("audio");
            assert_eq!(*opus, 111);
            let line = |prefix: &str| {
                v.answer
                    .lines()
                    .find(|l| l.starts_with(prefix))
                    .unwrap_or_else(|| panic!("{codec}: no {prefix} in\n{}", v.answer))
                    .to_string()
            };
            // Only the stream's format and its RTX, and only Opus.
            assert_eq!(
                line("m=video").split(' ').skip(3).collect::<Vec<_>>(),
                [pt.to_string(), rtx.to_string()],
                "{codec}"
            );
            assert_eq!(
                line(&format!("a=fmtp:{rtx} ")),
                format!("a=fmtp:{rtx} apt={pt}")
            );
            assert_eq!(
                line("m=audio").split(' ').skip(3).collect::<Vec<_>>(),
                ["111"]
            );
            assert_eq!(v.answer.matches("a=sendonly").count(), 2, "{codec}");
            // str0m accepts the data channel, though roomcast never uses one:
            // each livewrk viewer gets an SCTP association it does not need.
            assert!(
                line("m=application").starts_with("m=application 9 UDP/DTLS/SCTP"),
                "{codec}: {}",
                v.answer
            );
        }
    }
}
