//! `application/trickle-ice-sdpfrag` bodies (RFC 8840 §9): what a WHIP or
//! WHEP client `PATCH`es to its session for trickle ICE or an ICE restart
//! (RFC 9725 §4.3), and the fragment the server answers a restart with.
//! Pure functions; the HTTP shell bounds the body's size first.

use std::fmt::Write;

/// What a fragment says, as far as an ICE-lite server cares.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SdpFrag {
    /// `a=ice-ufrag` and `a=ice-pwd` (session or media level).
    pub ufrag: Option<String>,
    pub pwd: Option<String>,
    /// `a=candidate` lines (an ICE-lite server needs none: it answers checks
    /// from wherever they come).
    pub candidates: usize,
    pub end_of_candidates: bool,
    /// The `a=mid` of the fragment's media section, if any.
    pub mid: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FragError {
    #[error("the fragment is not UTF-8 text")]
    NotText,
    #[error("line {0} is not an SDP line (type=value)")]
    BadLine(usize),
    #[error("line {0}: {1}")]
    BadValue(usize, &'static str),
    #[error("a=ice-ufrag and a=ice-pwd must come together")]
    HalfCredentials,
    #[error("more than one a=ice-ufrag or a=ice-pwd")]
    TwoCredentials,
}

/// Lines accepted in one fragment; a browser's restart carries a few
/// candidates, a trickle one.
const MAX_LINES: usize = 200;

/// RFC 8839 §5.4: ice-char = ALPHA / DIGIT / "+" / "/".
fn ice_chars(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

/// Parses a fragment (RFC 8840 §9: `a=` lines and optional `m=` lines).
pub fn parse(body: &[u8]) -> Result<SdpFrag, FragError> {
    let text = std::str::from_utf8(body).map_err(|_| FragError::NotText)?;
    let mut frag = SdpFrag::default();
    for (n, line) in text.lines().enumerate() {
        let line_no = n + 1;
        if line_no > MAX_LINES {
            return Err(FragError::BadValue(line_no, "too many lines"));
        }
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            continue;
        }
        let (kind, value) = line
            .split_once('=')
            .filter(|(k, _)| k.len() == 1)
            .ok_or(FragError::BadLine(line_no))?;
        if kind != "a" {
            // m=, c=, … are allowed and say nothing an ICE-lite server uses.
            continue;
        }
        let (name, arg) = value.split_once(':').unwrap_or((value, ""));
        match name {
            "ice-ufrag" => {
                // RFC 8839: 4 to 256 ice-chars.
                if !(4..=256).contains(&arg.len()) || !ice_chars(arg) {
                    return Err(FragError::BadValue(
                        line_no,
                        "a=ice-ufrag must be 4 to 256 of A-Z a-z 0-9 + /",
                    ));
                }
                if frag.ufrag.replace(arg.to_string()).is_some() {
                    return Err(FragError::TwoCredentials);
                }
            }
            "ice-pwd" => {
                // RFC 8839: 22 to 256 ice-chars.
                if !(22..=256).contains(&arg.len()) || !ice_chars(arg) {
                    return Err(FragError::BadValue(
                        line_no,
                        "a=ice-pwd must be 22 to 256 of A-Z a-z 0-9 + /",
                    ));
                }
                if frag.pwd.replace(arg.to_string()).is_some() {
                    return Err(FragError::TwoCredentials);
                }
            }
            "candidate" => {
                if arg.split_whitespace().count() < 8 {
                    return Err(FragError::BadValue(line_no, "a malformed a=candidate"));
                }
                frag.candidates += 1;
            }
            "end-of-candidates" => frag.end_of_candidates = true,
            "mid" => frag.mid = Some(arg.to_string()),
            _ => {}
        }
    }
    if frag.ufrag.is_some() != frag.pwd.is_some() {
        return Err(FragError::HalfCredentials);
    }
    Ok(frag)
}

/// The first `a=ice-ufrag` of an SDP offer (with BUNDLE, every section
/// has the same).
pub fn ice_ufrag_of(sdp: &str) -> Option<&str> {
    sdp.lines()
        .find_map(|l| l.trim_end_matches('\r').strip_prefix("a=ice-ufrag:"))
}

/// The fragment answering an ICE restart: the server's new credentials and
/// its candidates (`a=candidate` values without `a=`), in the media section
/// the client named (RFC 8840 §4.4: fragments carry `m=` and `a=mid`).
pub fn answer(ufrag: &str, pwd: &str, mid: Option<&str>, candidates: &[String]) -> String {
    let mut s = String::from("a=ice-lite\r\n");
    if let Some(mid) = mid {
        let _ = write!(s, "m=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:{mid}\r\n");
    }
    let _ = write!(s, "a=ice-ufrag:{ufrag}\r\na=ice-pwd:{pwd}\r\n");
    for c in candidates {
        let _ = write!(s, "a={c}\r\n");
    }
    s.push_str("a=end-of-candidates\r\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ICE restart request body shaped as RFC 9725 §4.3.2 shows one
    /// (documentation addresses).
    const RESTART: &str = "a=ice-options:trickle ice2\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n\
        a=mid:0\r\n\
        a=ice-ufrag:ysXw\r\n\
        a=ice-pwd:vw5LmwG4y/e6dPP/zAP9Gp5k\r\n\
        a=candidate:1387637174 1 udp 2122260223 192.0.2.1 61764 typ host generation 0 ufrag EsAw network-id 1\r\n\
        a=candidate:3471623853 1 udp 2122194687 198.51.100.2 61765 typ host generation 0 ufrag EsAw network-id 2\r\n\
        a=candidate:473322822 1 tcp 1518280447 192.0.2.1 9 typ host tcptype active generation 0 ufrag EsAw network-id 1\r\n\
        a=candidate:2154773085 1 tcp 1518214911 198.51.100.2 9 typ host tcptype active generation 0 ufrag EsAw network-id 2\r\n\
        a=end-of-candidates\r\n";

    #[test]
    fn reads_a_restart_fragment() {
        let f = parse(RESTART.as_bytes()).unwrap();
        assert_eq!(f.ufrag.as_deref(), Some("ysXw"));
        assert_eq!(f.pwd.as_deref(), Some("vw5LmwG4y/e6dPP/zAP9Gp5k"));
        assert_eq!(f.candidates, 4);
        assert!(f.end_of_candidates);
        assert_eq!(f.mid.as_deref(), Some("0"));
    }

    #[test]
    fn reads_a_trickle_fragment_without_credentials() {
        let f = parse(b"a=mid:0\r\na=candidate:1 1 udp 2122260223 192.0.2.1 61764 typ host\r\n")
            .unwrap();
        assert_eq!((f.ufrag, f.pwd, f.candidates), (None, None, 1));
    }

    #[test]
    fn refuses_what_is_malformed() {
        let cases: [(&[u8], FragError); 6] = [
            (b"\xff\xfe", FragError::NotText),
            (b"hello\r\n", FragError::BadLine(1)),
            (b"a=ice-ufrag:abcd\r\n", FragError::HalfCredentials),
            (
                b"a=ice-ufrag:ab\r\na=ice-pwd:0123456789012345678901\r\n",
                FragError::BadValue(1, "a=ice-ufrag must be 4 to 256 of A-Z a-z 0-9 + /"),
            ),
            (
                b"a=ice-ufrag:abcd\r\na=ice-pwd:short\r\n",
                FragError::BadValue(2, "a=ice-pwd must be 22 to 256 of A-Z a-z 0-9 + /"),
            ),
            (
                b"a=ice-ufrag:abcd\r\na=ice-ufrag:efgh\r\n",
                FragError::TwoCredentials,
            ),
        ];
        for (body, want) in cases {
            assert_eq!(
                parse(body),
                Err(want),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
        let many = "a=end-of-candidates\r\n".repeat(MAX_LINES + 1);
        assert!(parse(many.as_bytes()).is_err());
        assert!(parse(b"a=candidate:1 1 udp\r\n").is_err());
    }

    #[test]
    fn an_answer_reads_back() {
        let a = answer(
            "Abcd",
            "0123456789abcdef012345",
            Some("0"),
            &["candidate:1 1 udp 2130706431 192.0.2.9 40000 typ host".into()],
        );
        let f = parse(a.as_bytes()).unwrap();
        assert_eq!(f.ufrag.as_deref(), Some("Abcd"));
        assert_eq!(f.mid.as_deref(), Some("0"));
        assert_eq!((f.candidates, f.end_of_candidates), (1, true));
    }
}
