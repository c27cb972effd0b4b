//! Which video codecs a destination takes (sans-I/O).
//!
//! H.264 goes as legacy FLV to every destination. AV1 goes only over
//! Enhanced RTMP (Veovera E-RTMP v1/v2: FourCC `av01`), and only where the
//! destination accepts it: the destination's `codecs` setting when the owner
//! set one; otherwise the defaults for known services below, plus whatever
//! the destination's `connect` reply advertises (`fourCcList` or
//! `videoFourCcInfoMap`). HEVC never reaches roomcast (RTMP ingest reports it
//! unsupported and WHIP does not negotiate H.265), so it is not offered.

use crate::ingest::rtmp::core::amf0::Amf0Value;

/// A set of video codecs a destination accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PushCodecs(u8);

const H264: u8 = 1;
const AV1: u8 = 2;

/// The FourCCs roomcast offers in `connect` (it can send them).
pub const OFFERED_FOURCCS: &[&str] = &["av01", "avc1"];

/// Most FourCCs read from one reply (a hostile server cannot grow it).
const MAX_FOURCCS: usize = 32;

impl PushCodecs {
    pub const H264_ONLY: PushCodecs = PushCodecs(H264);

    pub fn with_av1(self) -> PushCodecs {
        PushCodecs(self.0 | AV1)
    }

    pub fn union(self, other: PushCodecs) -> PushCodecs {
        PushCodecs(self.0 | other.0)
    }

    /// Whether the hub's codec name (`H264`, `AV1`, `VP8`, …) can go.
    pub fn accepts(self, hub_codec: &str) -> bool {
        match hub_codec {
            "H264" => self.0 & H264 != 0,
            "AV1" => self.0 & AV1 != 0,
            _ => false,
        }
    }

    /// `h264, av1` for messages.
    pub fn describe(self) -> String {
        let mut v = Vec::new();
        if self.0 & H264 != 0 {
            v.push("h264");
        }
        if self.0 & AV1 != 0 {
            v.push("av1");
        }
        v.join(", ")
    }

    /// A destination's `codecs` setting: names from `h264`, `av1`. H.264 is
    /// always included (it needs no negotiation).
    pub fn parse_setting(names: &[String]) -> Result<PushCodecs, String> {
        let mut c = PushCodecs::H264_ONLY;
        for n in names {
            match n.to_ascii_lowercase().as_str() {
                "h264" | "avc" | "avc1" => {}
                "av1" | "av01" => c = c.with_av1(),
                "hevc" | "h265" | "hvc1" => {
                    return Err("HEVC never reaches roomcast (RTMP ingest and WHIP do not take it), so no push can carry it; use h264 or av1".into());
                }
                other => return Err(format!("unknown codec {other:?} (use h264 or av1)")),
            }
        }
        Ok(c)
    }

    /// Defaults for known services by the ingest host, from what they
    /// document: YouTube takes AV1 (and HEVC) over Enhanced RTMP; Twitch's
    /// HEVC is only through Enhanced Broadcasting's multitrack with its own
    /// configuration API, which a plain push is not, so Twitch stays H.264.
    /// Anything else: H.264 until its `connect` reply says more.
    pub fn known_service(host: &str) -> PushCodecs {
        let host = host.to_ascii_lowercase();
        if host == "youtube.com" || host.ends_with(".youtube.com") {
            PushCodecs::H264_ONLY.with_av1()
        } else {
            PushCodecs::H264_ONLY
        }
    }

    /// What a `connect` `_result` advertises: the `fourCcList` (strict array
    /// of FourCC strings, `*` for any) or the keys of `videoFourCcInfoMap`
    /// (FourCC → capability flags) of its command or info object. `None`
    /// when the reply says nothing about Enhanced RTMP.
    pub fn from_connect_reply(values: &[Amf0Value]) -> Option<PushCodecs> {
        let mut found = None;
        let mut add = |fourcc: &str| {
            let c: &mut PushCodecs = found.get_or_insert(PushCodecs::H264_ONLY);
            if fourcc == "av01" || fourcc == "*" {
                *c = c.with_av1();
            }
        };
        // `_result`, transaction id, then the properties and info objects.
        for v in values.iter().skip(2).take(2) {
            if let Some(Amf0Value::StrictArray(list)) = v.get("fourCcList") {
                for s in list.iter().take(MAX_FOURCCS).filter_map(Amf0Value::as_str) {
                    add(s);
                }
            }
            if let Some(Amf0Value::Object(map)) = v.get("videoFourCcInfoMap") {
                for (fourcc, flags) in map.iter().take(MAX_FOURCCS) {
                    // Any capability (decode, encode, forward) counts.
                    if flags.as_number().is_some_and(|f| f > 0.0) {
                        add(fourcc);
                    }
                }
            }
        }
        found
    }
}

/// Whether a destination's connect reply can add `codec` when asked with a
/// `fourCcList` (what [`OFFERED_FOURCCS`] carries beyond H.264).
pub fn negotiable(hub_codec: &str) -> bool {
    hub_codec == "AV1"
}

/// What a connected push does with a new publisher's frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Send,
    /// The connection was made without `fourCcList` (the stream was H.264
    /// then) to a destination without a setting: its reply said nothing
    /// because nothing was asked. Reconnect offering Enhanced RTMP and let
    /// that reply decide.
    ReconnectEnhanced,
    Refuse(String),
}

/// The decision for a frame of `codec` on a connection to `label`, made
/// with (`enhanced`) or without `fourCcList`; `setting` is the
/// destination's `codecs`, `accepted` what that connection may carry.
pub fn verdict(
    label: &str,
    setting: Option<PushCodecs>,
    accepted: PushCodecs,
    codec: &str,
    enhanced: bool,
) -> Verdict {
    if accepted.accepts(codec) {
        Verdict::Send
    } else if setting.is_none() && !enhanced && negotiable(codec) {
        Verdict::ReconnectEnhanced
    } else {
        Verdict::Refuse(refusal(
            label,
            accepted,
            codec,
            setting.is_none() && enhanced,
        ))
    }
}

/// Why `label` gets no push of a `codec` stream, per destination. `asked`:
/// the destination's connect reply was read and listed no `av01`.
pub fn refusal(label: &str, accepted: PushCodecs, codec: &str, asked: bool) -> String {
    let takes_av1 = accepted.accepts("AV1");
    let needs = if takes_av1 { "H.264 or AV1" } else { "H.264" };
    let mut s = format!(
        "{label} needs {needs} and this stream is {codec}: publish H.264 (RTMP, or WHIP with H.264{})",
        if takes_av1 { " or AV1" } else { "" }
    );
    if codec == "AV1" {
        s.push_str(if asked {
            "; its connect reply lists no av01 (Enhanced RTMP), so it does not take AV1"
        } else {
            "; if it takes AV1 over Enhanced RTMP, add av1 to its codecs"
        });
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::rtmp::core::amf0;

    fn s(v: &str) -> Amf0Value {
        Amf0Value::String(v.into())
    }

    #[test]
    fn settings_defaults_and_connect_replies() {
        let c = PushCodecs::parse_setting(&["av1".into()]).unwrap();
        assert!(c.accepts("H264") && c.accepts("AV1") && !c.accepts("VP8"));
        assert_eq!(c.describe(), "h264, av1");
        let e = PushCodecs::parse_setting(&["hevc".into()]).unwrap_err();
        assert!(e.contains("HEVC never reaches roomcast"), "{e}");
        assert!(PushCodecs::parse_setting(&["vp8".into()]).is_err());
        assert!(PushCodecs::known_service("a.rtmps.youtube.com").accepts("AV1"));
        assert!(!PushCodecs::known_service("live.twitch.tv").accepts("AV1"));
        assert!(!PushCodecs::known_service("notyoutube.com").accepts("AV1"));

        let reply = |props: Vec<(String, Amf0Value)>| {
            let values = vec![
                s("_result"),
                Amf0Value::Number(1.0),
                Amf0Value::Object(props),
                Amf0Value::Object(vec![("code".into(), s("NetConnection.Connect.Success"))]),
            ];
            // Through the wire format, as the push reads it.
            let mut wire = Vec::new();
            for v in &values {
                amf0::encode(v, &mut wire);
            }
            PushCodecs::from_connect_reply(&amf0::decode_all(&wire).unwrap())
        };
        assert_eq!(reply(vec![("fmsVer".into(), s("FMS/3,0,1,123"))]), None);
        let list = |l: &[&str]| {
            vec![(
                "fourCcList".to_string(),
                Amf0Value::StrictArray(l.iter().map(|x| s(x)).collect()),
            )]
        };
        assert_eq!(reply(list(&["hvc1"])), Some(PushCodecs::H264_ONLY));
        assert!(reply(list(&["hvc1", "av01"])).unwrap().accepts("AV1"));
        assert!(reply(list(&["*"])).unwrap().accepts("AV1"));
        let map = vec![(
            "videoFourCcInfoMap".to_string(),
            Amf0Value::Object(vec![
                ("av01".into(), Amf0Value::Number(4.0)),
                ("hvc1".into(), Amf0Value::Number(0.0)),
            ]),
        )];
        assert!(reply(map).unwrap().accepts("AV1"));
        // Not a list of strings: nothing beyond H.264.
        let odd = vec![("fourCcList".to_string(), s("av01"))];
        assert_eq!(reply(odd), None);

        let r = refusal("twitch", PushCodecs::H264_ONLY, "VP8", false);
        assert!(
            r.starts_with("twitch needs H.264 and this stream is VP8"),
            "{r}"
        );
        let r = refusal("listen", PushCodecs::H264_ONLY, "AV1", true);
        assert!(r.contains("lists no av01"), "{r}");
        let r = refusal("yt", PushCodecs::H264_ONLY.with_av1(), "VP9", false);
        assert!(
            r.starts_with("yt needs H.264 or AV1 and this stream is VP9"),
            "{r}"
        );
    }

    /// An H.264 push taken over by an AV1 publisher, to a destination
    /// without a setting that is not a known service: the legacy connection
    /// is no answer; the decision waits for a connect with `fourCcList`.
    #[test]
    fn a_takeover_to_av1_asks_again_with_a_fourcc_list_before_refusing() {
        let h264 = PushCodecs::H264_ONLY;
        let listed = PushCodecs::from_connect_reply(&[
            s("_result"),
            Amf0Value::Number(1.0),
            Amf0Value::Object(vec![(
                "fourCcList".into(),
                Amf0Value::StrictArray(vec![s("av01")]),
            )]),
        ])
        .unwrap();
        // Connected without fourCcList (H.264 then): H.264 goes, AV1 asks.
        assert_eq!(verdict("d", None, h264, "H264", false), Verdict::Send);
        assert_eq!(
            verdict("d", None, h264, "AV1", false),
            Verdict::ReconnectEnhanced
        );
        // Asked again: a reply listing av01 takes it, one without refuses
        // clearly (not "add av1 to its codecs").
        assert_eq!(
            verdict("d", None, h264.union(listed), "AV1", true),
            Verdict::Send
        );
        let Verdict::Refuse(r) = verdict("d", None, h264, "AV1", true) else {
            panic!()
        };
        assert!(r.contains("lists no av01") && !r.contains("add av1"), "{r}");
        // An owner's setting is final; VP8 cannot be negotiated.
        let Verdict::Refuse(r) = verdict("d", Some(h264), h264, "AV1", false) else {
            panic!()
        };
        assert!(r.contains("add av1 to its codecs"), "{r}");
        assert!(matches!(
            verdict("d", None, h264, "VP8", false),
            Verdict::Refuse(r) if r.starts_with("d needs H.264 and this stream is VP8")
        ));
    }
}
