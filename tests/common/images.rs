//! Checking pictures the server made (thumbnails) with ffmpeg, the decoder
//! every player trusts, not with roomcast's own code.

use std::io::Write;
use std::process::{Command, Stdio};

/// A decoded picture: its size and the spread of its luma (a flat grey or
/// black frame has almost none; a test pattern has a lot).
#[derive(Debug)]
pub struct Decoded {
    pub width: u32,
    pub height: u32,
    pub luma_stddev: f64,
}

/// Decodes `jpeg` with ffmpeg (`-f image2pipe`); panics when it cannot.
pub fn decode_jpeg(jpeg: &[u8]) -> Decoded {
    assert!(
        jpeg.starts_with(&[0xff, 0xd8]),
        "not a JPEG: {:02x?}",
        &jpeg[..jpeg.len().min(8)]
    );
    let probe = ffmpeg_pipe(
        &[
            "-v",
            "error",
            "-f",
            "image2pipe",
            "-i",
            "-",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "gray",
            "-",
        ],
        jpeg,
    );
    let size = ffprobe_size(jpeg);
    let (w, h) = size;
    assert_eq!(
        probe.len(),
        (w * h) as usize,
        "ffmpeg decoded {} bytes for {w}×{h}",
        probe.len()
    );
    let n = probe.len() as f64;
    let mean = probe.iter().map(|&b| f64::from(b)).sum::<f64>() / n;
    let var = probe
        .iter()
        .map(|&b| (f64::from(b) - mean).powi(2))
        .sum::<f64>()
        / n;
    Decoded {
        width: w,
        height: h,
        luma_stddev: var.sqrt(),
    }
}

fn ffprobe_size(jpeg: &[u8]) -> (u32, u32) {
    let out = run_with_stdin(
        Command::new("ffprobe").args([
            "-v",
            "error",
            "-f",
            "image2pipe",
            "-i",
            "-",
            "-show_entries",
            "stream=codec_name,width,height",
            "-of",
            "csv=p=0",
        ]),
        jpeg,
    );
    let text = String::from_utf8_lossy(&out);
    let parts: Vec<&str> = text.trim().split(',').collect();
    assert_eq!(parts.first(), Some(&"mjpeg"), "ffprobe: {text}");
    (parts[1].parse().unwrap(), parts[2].parse().unwrap())
}

fn ffmpeg_pipe(args: &[&str], input: &[u8]) -> Vec<u8> {
    run_with_stdin(Command::new("ffmpeg").args(args), input)
}

fn run_with_stdin(cmd: &mut Command, input: &[u8]) -> Vec<u8> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ffmpeg/ffprobe");
    let mut stdin = child.stdin.take().unwrap();
    let data = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let out = child.wait_with_output().expect("ffmpeg output");
    let _ = writer.join();
    assert!(
        out.status.success(),
        "decoding failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}
