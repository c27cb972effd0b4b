//! `roomcast serve` without a config: the standalone demo stream, its key shown
//! once and kept (hashed) across restarts; env overrides; config errors.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{FfmpegOpts, Publisher, TempDir};

struct Run {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Run {
    /// Starts `roomcast serve` (no config) in `dir`, every port picked by the OS
    /// through ROOMCAST_ environment overrides.
    fn start(dir: &TempDir) -> Run {
        let mut child = common::roomcast_cmd()
            .arg("serve")
            .current_dir(dir.path())
            .env("ROOMCAST_HTTP__LISTEN", "127.0.0.1:0")
            .env("ROOMCAST_RTMP__LISTEN", "127.0.0.1:0")
            .env("ROOMCAST_WEBRTC__UDP", "127.0.0.1:0")
            .env("ROOMCAST_WEBRTC__TCP", "127.0.0.1:0")
            .env("ROOMCAST_OME__LISTEN", "127.0.0.1:0")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        for r in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for l in BufReader::new(r).lines().map_while(Result::ok) {
                    let _ = tx.send(l);
                }
            });
        }
        let mut run = Run {
            child,
            lines,
            seen: vec![],
        };
        run.wait_for("roomcast ready");
        // The banner goes to stdout, the log to stderr: either may come first.
        if !run.seen.iter().any(|l| l.contains("Watch:")) {
            run.wait_for("Watch:");
        }
        run
    }

    fn wait_for(&mut self, needle: &str) -> String {
        loop {
            match self.lines.recv_timeout(Duration::from_secs(30)) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.contains(needle) {
                        return l;
                    }
                }
                Err(_) => panic!("no line with {needle:?}; got:\n{}", self.seen.join("\n")),
            }
        }
    }

    fn listening(&self, service: &str) -> String {
        self.seen
            .iter()
            .find_map(|l| common::parse_listening(l).filter(|(s, _)| s == service))
            .map(|(_, a)| a.to_string())
            .unwrap()
    }

    fn banner_key(&self) -> Option<String> {
        self.seen
            .iter()
            .find_map(|l| l.trim().strip_prefix("Stream Key:"))
            .map(|k| k.split_whitespace().next().unwrap_or("").to_string())
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn standalone_demo_stream_survives_restart_and_takes_the_printed_key() {
    let _serial = common::serial();
    let dir = TempDir::new("standalone");
    let key = {
        let run = Run::start(&dir);
        let key = run.banner_key().expect("banner with a stream key");
        assert_eq!(key.len(), 32, "a fresh random key: {key}");
        let banner = run.seen.join("\n");
        assert!(banner.contains("stream 'demo'"), "{banner}");
        assert!(banner.contains("Server:     rtmp://127.0.0.1:"), "{banner}");
        assert!(banner.contains("bframes=0"), "{banner}");
        assert!(
            banner.contains("/whep/demo") && banner.contains("/watch/demo"),
            "{banner}"
        );
        key
    };
    assert!(
        dir.path().join("roomcast.db").exists(),
        "SQLite file in the working directory"
    );

    // Restarted: same stream, the key is not shown again (only its hash is kept)
    // and publishing with it still works.
    let mut run = Run::start(&dir);
    let banner = run.seen.join("\n");
    assert!(!banner.contains(&key), "the key must not be printed again");
    assert!(banner.contains("only its hash is stored"), "{banner}");
    let http = run.listening("http");
    let rtmp = run.listening("rtmp");
    let _p = Publisher::ffmpeg(&format!("rtmp://{rtmp}/live/{key}"), FfmpegOpts::default());
    run.wait_for("rtmp publish started");
    common::wait_until("demo live in the API", Duration::from_secs(30), || {
        let r = common::http::request(
            "GET",
            &format!("http://{http}/api/v1/streams/demo"),
            &[],
            None,
        )
        .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&r.body).ok()?;
        (v["live"] == true).then_some(())
    });
    assert!(!run.seen.iter().any(|l| l.contains(&key)), "key logged");
}

#[test]
fn config_errors_name_the_key_and_exit_2() {
    let dir = TempDir::new("badcfg");
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "[[streams]]\nname = \"x\"\nkey = \"short\"\n").unwrap();
    let out = common::roomcast_cmd()
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("streams[0].key") && err.contains("too short"),
        "{err}"
    );

    let out = common::roomcast_cmd()
        .args(["serve"])
        .current_dir(dir.path())
        .env("ROOMCAST_HTTP__LISTEN", "not-an-address")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("listen"), "{err}");

    let out = common::roomcast_cmd()
        .args(["serve", "--config", "/nonexistent/roomcast.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read config file"));
}
