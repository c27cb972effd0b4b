//! Stand-ins for restream destinations (tests/restream*.rs): Debian's nginx
//! with its RTMP module, recording what it gets, and ffmpeg in listen mode
//! writing what it gets to an FLV file; ffprobe on what they recorded.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::synapse::free_port;
use super::*;

const RTMP_MODULE: &str = "/usr/lib/nginx/modules/ngx_rtmp_module.so";

/// nginx with the RTMP module, recording every publish to `rec/` (a new
/// file per publish); stopped on drop.
pub struct NginxRtmp {
    child: Option<Child>,
    dir: TempDir,
    port: u16,
}

impl NginxRtmp {
    pub fn start() -> NginxRtmp {
        assert!(
            Path::new(RTMP_MODULE).exists(),
            "{RTMP_MODULE} not found: apt-get install -y libnginx-mod-rtmp"
        );
        let dir = TempDir::new("nginx-rtmp");
        let port = free_port();
        let d = dir.path().display().to_string();
        std::fs::create_dir_all(dir.path().join("rec")).unwrap();
        // nginx's workers drop to another user (nobody) when run as root.
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path, m| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m));
        mode(dir.path(), 0o755).unwrap();
        mode(&dir.path().join("rec"), 0o777).unwrap();
        std::fs::write(
            dir.path().join("nginx.conf"),
            format!(
                "load_module {RTMP_MODULE};\nworker_processes 1;\npid {d}/nginx.pid;\n\
                 error_log {d}/error.log info;\nevents {{ worker_connections 64; }}\n\
                 rtmp {{\n  server {{\n    listen 127.0.0.1:{port};\n    \
                 application live {{\n      live on;\n      record all;\n      \
                 record_path {d}/rec;\n      record_unique on;\n    }}\n  }}\n}}\n"
            ),
        )
        .unwrap();
        let mut n = NginxRtmp {
            child: None,
            dir,
            port,
        };
        n.run();
        n
    }

    pub fn run(&mut self) {
        let p = self.dir.path();
        let child =
            super::nginx::spawn(p, "run nginx (apt-get install -y nginx libnginx-mod-rtmp)");
        self.child = Some(child);
        let port = self.port;
        wait_until("nginx-rtmp listening", Duration::from_secs(20), || {
            if let Some(Ok(Some(s))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("nginx exited ({s}): {}", self.error_log());
            }
            std::net::TcpStream::connect(("127.0.0.1", port))
                .ok()
                .map(|_| ())
        });
    }

    /// SIGTERM (a graceful SIGQUIT would wait for the RTMP sessions to end).
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        if !poll_until(Duration::from_secs(10), || {
            matches!(child.try_wait(), Ok(Some(_)))
        }) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("rtmp://127.0.0.1:{}/live", self.port)
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    pub fn recordings(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.dir.path().join("rec"))
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        v.sort();
        v
    }
}

impl Drop for NginxRtmp {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `ffmpeg -listen 1`: an RTMP server for one publish, copied to an FLV file.
pub struct FfmpegListen {
    pub child: Child,
    port: u16,
    pub out: PathBuf,
    pub log: std::sync::Arc<Lines>,
    _dir: TempDir,
}

impl FfmpegListen {
    pub fn start(key: &str) -> FfmpegListen {
        Self::start_with(Path::new("ffmpeg"), key)
    }

    /// With another ffmpeg binary (ffmpeg 9 reads Enhanced RTMP).
    pub fn start_with(ffmpeg: &Path, key: &str) -> FfmpegListen {
        let dir = TempDir::new("ffmpeg-listen");
        let port = free_port();
        let out = dir.path().join("got.flv");
        let mut child = Command::new(ffmpeg)
            .args([
                "-hide_banner",
                "-nostats",
                "-loglevel",
                "info",
                "-listen",
                "1",
            ])
            .arg("-i")
            .arg(format!("rtmp://127.0.0.1:{port}/app/{key}"))
            .args(["-c", "copy", "-f", "flv", "-y"])
            .arg(&out)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ffmpeg");
        let log = std::sync::Arc::new(Lines::default());
        drain(child.stderr.take().unwrap(), log.clone());
        // Not by connecting: ffmpeg takes one connection only.
        wait_until("ffmpeg listening", Duration::from_secs(20), || {
            is_listening(port).then_some(())
        });
        FfmpegListen {
            child,
            port,
            out,
            log,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("rtmp://127.0.0.1:{}/app", self.port)
    }

    /// Waits for ffmpeg to finish its file once the push ended (its input
    /// closed); fails with its log.
    pub fn wait_finished(&mut self, timeout: Duration) {
        assert!(
            poll_until(timeout, || matches!(self.child.try_wait(), Ok(Some(_)))),
            "ffmpeg listen did not finish: {}",
            self.log.tail(20)
        );
    }
}

/// Whether a TCP socket listens on 127.0.0.1:`port` (from /proc/net/tcp).
pub fn is_listening(port: u16) -> bool {
    let want = format!("0100007F:{port:04X}");
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap_or_default()
        .lines()
        .any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1] == want && f[3] == "0A"
        })
}

impl Drop for FfmpegListen {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// ffprobe's view of a recording: codec names and the duration in seconds.
pub fn probe(file: &Path) -> (Vec<String>, f64, Value) {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-show_entries"])
        .arg("stream=codec_type,codec_name,sample_rate,profile:format=duration")
        .args(["-of", "json"])
        .arg(file)
        .output()
        .expect("run ffprobe");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let codecs = v["streams"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s["codec_name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let duration = v["format"]["duration"]
        .as_str()
        .and_then(|d| d.parse().ok())
        .unwrap_or(0.0);
    (codecs, duration, v)
}

/// ffprobe on a destination's recording: H.264 and AAC, at least
/// `min_seconds` long; ffprobe's JSON for more checks.
pub fn assert_h264_aac(file: &Path, min_seconds: f64) -> Value {
    let (codecs, duration, v) = probe(file);
    assert!(
        codecs.contains(&"h264".to_string()) && codecs.contains(&"aac".to_string()),
        "{}: {v}",
        file.display()
    );
    assert!(
        duration >= min_seconds,
        "{}: {duration} s: {v}",
        file.display()
    );
    v
}

/// An ffmpeg that reads Enhanced RTMP (AV1 in FLV): `ROOMCAST_TEST_FFMPEG9`,
/// else the static ffmpeg 9 of the test venv's `imageio-ffmpeg`
/// (tests/py/requirements.txt). Debian's ffmpeg 5.1 does not read it.
pub fn ffmpeg9() -> PathBuf {
    if let Some(p) = std::env::var_os("ROOMCAST_TEST_FFMPEG9") {
        return PathBuf::from(p);
    }
    let python = std::env::var_os("ROOMCAST_TEST_PYTHON").unwrap_or_else(|| "python3".into());
    let out = Command::new(&python)
        .args([
            "-c",
            "import imageio_ffmpeg; print(imageio_ffmpeg.get_ffmpeg_exe())",
        ])
        .output()
        .expect("run the test python");
    assert!(
        out.status.success(),
        "no ffmpeg 9: install imageio-ffmpeg (tests/py/requirements.txt) or set ROOMCAST_TEST_FFMPEG9: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// `ffmpeg` decodes a recording's first video stream: its codec name as
/// ffmpeg reports it and the frames decoded, or ffmpeg's errors.
pub fn decode_video(ffmpeg: &Path, file: &Path) -> Result<(String, u64), String> {
    let out = Command::new(ffmpeg)
        .args(["-hide_banner", "-nostats", "-i"])
        .arg(file)
        .args(["-map", "0:v:0", "-f", "null", "-progress", "pipe:1", "-"])
        .output()
        .expect("run ffmpeg");
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        return Err(log);
    }
    let codec = log
        .lines()
        .find_map(|l| l.split_once("Video: ").map(|(_, r)| r))
        .and_then(|r| r.split([' ', ',', '(']).next())
        .unwrap_or_default()
        .to_string();
    let frames = String::from_utf8_lossy(&out.stdout)
        .lines()
        .rev()
        .filter_map(|l| l.strip_prefix("frame="))
        .find_map(|n| n.trim().parse().ok())
        .unwrap_or(0);
    Ok((codec, frames))
}

/// A self-signed certificate for 127.0.0.1 (`{name}.crt`, `{name}.key`)
/// for the RTMPS destination.
pub fn make_cert(dir: &Path, name: &str) {
    super::tls::make_cert(dir, name, "roomcast-restream-test");
}

/// ffmpeg's complaints while decoding a recording's audio (empty: it decodes).
pub fn audio_decode_errors(file: &Path) -> String {
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-v", "error", "-i"])
        .arg(file)
        .args(["-map", "0:a", "-f", "null", "-"])
        .output()
        .expect("run ffmpeg");
    String::from_utf8_lossy(&out.stderr).into_owned()
}
