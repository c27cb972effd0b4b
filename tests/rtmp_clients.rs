//! RTMP publishers other than ffmpeg against roomcast's own RTMP core:
//! GStreamer's rtmp2sink (its own RTMP client, with repeated onMetaData)
//! goes live with H.264 and AAC, its repeated metadata is logged only when it changes, and its end of
//! stream takes the stream offline.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

struct Gst(Child);

impl Drop for Gst {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn gstreamer_rtmp2sink_publishes() {
    let _serial = serial();
    let server = Server::start("");
    let url = server.rtmp_url(server.key(STREAM));
    // 6 s of live test video and audio, then EOS (-e) ends the publish.
    let pipeline = format!(
        "videotestsrc is-live=true num-buffers=180 ! video/x-raw,width=320,height=180,framerate=30/1 \
         ! x264enc tune=zerolatency key-int-max=30 ! h264parse ! flvmux name=m streamable=true \
         ! rtmp2sink location={url} \
         audiotestsrc is-live=true num-buffers=260 ! audioconvert ! voaacenc ! aacparse ! m."
    );
    let child = Command::new("gst-launch-1.0")
        .arg("-e")
        .args(pipeline.split_whitespace())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "gst-launch-1.0: {e} (apt-get install gstreamer1.0-tools gstreamer1.0-plugins-good \
                 gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly; scripts/test.sh does)"
            )
        });
    let mut gst = Gst(child);
    let live = server.wait_live(STREAM, LIVE_TIMEOUT);
    assert_eq!(live["ingest"]["protocol"], "rtmp", "{live}");
    let video = wait_until("video properties", Duration::from_secs(20), || {
        server
            .api_stream(STREAM)
            .map(|v| v["video"].clone())
            .filter(|v| v["width"] == 320 && v["fps"].as_f64().is_some_and(|f| f > 20.0))
    });
    assert_eq!(video["codec"], "H264", "{video}");
    let audio = server.api_stream(STREAM).expect("stream API")["audio"].clone();
    assert_eq!(audio["codec"], "opus", "{audio}");
    assert_eq!(audio["transcoded"], true, "{audio}");
    wait_until("rtmp2sink to finish", Duration::from_secs(30), || {
        gst.0.try_wait().ok().flatten()
    });
    wait_until("the stream to go offline", Duration::from_secs(20), || {
        server.api_stream(STREAM).filter(|v| v["live"] == false)
    });
    let lines = server.log_lines();
    let meta = lines
        .iter()
        .filter(|l| l.contains("publisher metadata"))
        .count();
    // flvmux resends onMetaData about twice a second (~10 times here); only
    // changes are logged (the audio bitrate becomes known after the first).
    assert!(
        (1..=3).contains(&meta),
        "metadata logged {meta} times, expected once per change"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("rtmp publisher unpublished")),
        "EOS should end the publish with FCUnpublish/deleteStream"
    );
    server.assert_no_key_logged();
}
