//! OBS profiles set up in one click (issue 16 item 1): a ZIP holding OBS
//! profile folders that OBS's Profile → Import accepts, with the server, the
//! key and the settings roomcast wants (Advanced output, x264 CBR, keyframe
//! interval 1 s, `bframes=0`, tune zerolatency, 30 fps, AAC 48 kHz).
//!
//! Pure: the archive is built in memory from [`Profile`]; the HTTP handlers
//! (`src/http/obs_profile.rs`) and the bot's one-time links (`link`) decide
//! which key goes in.
//!
//! Two folders: `roomcast-NAME` (custom RTMP, OBS 29 and later) and, as OBS
//! 30 added WHIP, `roomcast-NAME-whip` (WHIP with the key as Bearer token,
//! Opus audio, which OBS's WHIP output requires). Import the one that fits.

pub mod link;
pub mod zip;

use serde_json::json;

/// What goes into a profile.
#[derive(Debug, Clone)]
pub struct Profile {
    pub stream: String,
    pub key: String,
    /// `rtmp://host:port/app` (None when RTMP is off: only the WHIP folder).
    pub rtmp_server: Option<String>,
    /// `https://host/whip/NAME`.
    pub whip_url: String,
    pub video_kbps: u32,
    pub audio_kbps: u32,
    pub width: u32,
    pub height: u32,
}

/// The folder name (and OBS profile name) of the RTMP profile.
pub fn folder(stream: &str) -> String {
    format!("roomcast-{stream}")
}

/// `basic.ini`: the profile's name, Advanced output with x264, the
/// resolution and frame rate, audio at 48 kHz.
fn basic_ini(name: &str, p: &Profile, audio_encoder: Option<&str>) -> String {
    let (w, h) = (p.width, p.height);
    // OBS 30 reads `AudioEncoder`; OBS 29 ignores it (AAC is its only choice).
    let audio = audio_encoder
        .map(|e| format!("AudioEncoder={e}\n"))
        .unwrap_or_default();
    format!(
        "[General]\nName={name}\n\n\
         [Output]\nMode=Advanced\n\n\
         [AdvOut]\nEncoder=obs_x264\nTrackIndex=1\nVodTrackIndex=2\nApplyServiceSettings=false\n\
         Rescale=false\nTrack1Bitrate={ab}\nRecEncoder=none\n{audio}\n\
         [SimpleOutput]\nVBitrate={vb}\nABitrate={ab}\nStreamEncoder=x264\nPreset=veryfast\n\n\
         [Video]\nBaseCX={w}\nBaseCY={h}\nOutputCX={w}\nOutputCY={h}\nFPSType=1\nFPSInt=30\n\
         FPSCommon=30\nScaleType=bicubic\nColorFormat=NV12\n\n\
         [Audio]\nSampleRate=48000\nChannelSetup=Stereo\n",
        vb = p.video_kbps,
        ab = p.audio_kbps,
    )
}

/// `streamEncoder.json`: obs_x264's settings. `ApplyServiceSettings=false`
/// in basic.ini keeps a service from overriding them.
fn stream_encoder(p: &Profile) -> String {
    json!({
        "rate_control": "CBR",
        "bitrate": p.video_kbps,
        "keyint_sec": 1,
        "preset": "veryfast",
        "profile": "high",
        "tune": "zerolatency",
        "x264opts": "bframes=0",
    })
    .to_string()
}

/// The archive: one folder per way of publishing, plus a short README.
pub fn build_zip(p: &Profile) -> Vec<u8> {
    let mut files = Vec::new();
    let rtmp_name = folder(&p.stream);
    let whip_name = format!("{rtmp_name}-whip");
    if let Some(server) = &p.rtmp_server {
        let service = json!({
            "type": "rtmp_custom",
            "settings": { "server": server, "key": p.key, "use_auth": false, "bwtest": false },
        });
        files.push((
            format!("{rtmp_name}/basic.ini"),
            basic_ini(&rtmp_name, p, None).into_bytes(),
        ));
        files.push((
            format!("{rtmp_name}/service.json"),
            service.to_string().into_bytes(),
        ));
        files.push((
            format!("{rtmp_name}/streamEncoder.json"),
            stream_encoder(p).into_bytes(),
        ));
    }
    let whip = json!({
        "type": "whip_custom",
        "settings": { "server": p.whip_url, "bearer_token": p.key },
    });
    files.push((
        format!("{whip_name}/basic.ini"),
        basic_ini(&whip_name, p, Some("ffmpeg_opus")).into_bytes(),
    ));
    files.push((
        format!("{whip_name}/service.json"),
        whip.to_string().into_bytes(),
    ));
    files.push((
        format!("{whip_name}/streamEncoder.json"),
        stream_encoder(p).into_bytes(),
    ));
    files.push(("README.txt".to_string(), readme(p).into_bytes()));
    zip::build(&files)
}

fn readme(p: &Profile) -> String {
    let rtmp = if p.rtmp_server.is_some() {
        format!("  {}      RTMP (OBS 29 and later)\n", folder(&p.stream))
    } else {
        String::new()
    };
    format!(
        "OBS profile for the roomcast stream '{s}'.\n\n\
         Unzip, then in OBS: Profile → Import, and pick one folder:\n{rtmp}  {f}-whip WHIP (OBS 30 and later)\n\n\
         Then Profile → {f}: the server, the stream key and the settings are set\n\
         (x264 CBR {v} kbit/s, keyframe every 1 s, no B-frames, {w}x{h} at 30 fps, audio 48 kHz).\n\
         The folder holds the stream key: keep it private. A new key (`!live rotate`)\n\
         makes this profile stop working.\n",
        s = p.stream,
        f = folder(&p.stream),
        v = p.video_kbps,
        w = p.width,
        h = p.height,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(rtmp: bool) -> Profile {
        Profile {
            stream: "show".into(),
            key: "K3y".into(),
            rtmp_server: rtmp.then(|| "rtmp://live.example.org:1935/live".into()),
            whip_url: "https://live.example.org/whip/show".into(),
            video_kbps: 2500,
            audio_kbps: 160,
            width: 1280,
            height: 720,
        }
    }

    /// Names and contents of the stored entries, in order.
    fn entries(z: &[u8]) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut p = 0;
        while u32::from_le_bytes(z[p..p + 4].try_into().unwrap()) == 0x0403_4b50 {
            let size = u32::from_le_bytes(z[p + 18..p + 22].try_into().unwrap()) as usize;
            let n = u16::from_le_bytes(z[p + 26..p + 28].try_into().unwrap()) as usize;
            let name = String::from_utf8(z[p + 30..p + 30 + n].to_vec()).unwrap();
            let data = String::from_utf8(z[p + 30 + n..p + 30 + n + size].to_vec()).unwrap();
            out.push((name, data));
            p += 30 + n + size;
        }
        out
    }

    #[test]
    fn rtmp_and_whip_folders_with_the_key_and_settings() {
        let e = entries(&build_zip(&profile(true)));
        let get = |n: &str| e.iter().find(|(k, _)| k == n).unwrap().1.clone();
        let svc: serde_json::Value =
            serde_json::from_str(&get("roomcast-show/service.json")).unwrap();
        assert_eq!(svc["type"], "rtmp_custom");
        assert_eq!(
            svc["settings"]["server"],
            "rtmp://live.example.org:1935/live"
        );
        assert_eq!(svc["settings"]["key"], "K3y");
        let whip: serde_json::Value =
            serde_json::from_str(&get("roomcast-show-whip/service.json")).unwrap();
        assert_eq!(whip["type"], "whip_custom");
        assert_eq!(whip["settings"]["bearer_token"], "K3y");
        let enc: serde_json::Value =
            serde_json::from_str(&get("roomcast-show/streamEncoder.json")).unwrap();
        assert_eq!(enc["rate_control"], "CBR");
        assert_eq!(enc["bitrate"], 2500);
        assert_eq!(enc["keyint_sec"], 1);
        assert_eq!(enc["tune"], "zerolatency");
        assert_eq!(enc["x264opts"], "bframes=0");
        let ini = get("roomcast-show/basic.ini");
        for line in [
            "Name=roomcast-show",
            "Mode=Advanced",
            "Encoder=obs_x264",
            "OutputCX=1280",
            "OutputCY=720",
            "FPSInt=30",
            "SampleRate=48000",
            "Track1Bitrate=160",
        ] {
            assert!(ini.lines().any(|l| l == line), "{line} in\n{ini}");
        }
        assert!(!ini.contains("AudioEncoder"));
        assert!(get("roomcast-show-whip/basic.ini").contains("AudioEncoder=ffmpeg_opus"));
        assert!(get("README.txt").contains("Profile → Import"));
    }

    #[test]
    fn the_config_section() {
        use crate::config::Config;
        let parse = |t: &str| Config::parse(t, None, Vec::new());
        let c = parse("").unwrap();
        assert_eq!(c.obs_profile.size(), (1280, 720));
        assert_eq!(c.obs_profile.video_kbps, 2500);
        let c = parse("[obs_profile]\nheight = 1080\nvideo_kbps = 6000\n").unwrap();
        assert_eq!(c.obs_profile.size(), (1920, 1080));
        for (toml, key) in [
            ("[obs_profile]\nheight = 900\n", "obs_profile.height"),
            ("[obs_profile]\nvideo_kbps = 0\n", "obs_profile.video_kbps"),
            (
                "[obs_profile]\naudio_kbps = 9000\n",
                "obs_profile.audio_kbps",
            ),
            ("[obs_profile]\nfps = 60\n", "fps"),
        ] {
            let e = parse(toml).unwrap_err().to_string();
            assert!(e.contains(key), "{toml}: {e}");
        }
    }

    #[test]
    fn without_rtmp_only_the_whip_folder() {
        let e = entries(&build_zip(&profile(false)));
        assert!(e.iter().all(|(n, _)| !n.starts_with("roomcast-show/")));
        assert!(
            e.iter()
                .any(|(n, _)| n == "roomcast-show-whip/service.json")
        );
    }
}
