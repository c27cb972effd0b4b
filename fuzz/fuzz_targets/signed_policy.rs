//! SignedPolicy URLs (src/auth/signed_policy.rs) as the admission gate checks
//! them: the bases from the Host header and path (`bases_for`), then
//! `verify` (parameters, Base64URL, HMAC, the policy JSON, times, CIDRs).
//! Half the inputs are signed with the secret first (by `sign_url` on a
//! policy made of input fields, or by `signature` over input JSON), so the
//! checks after the signature are reached.
//!
//! Input: 8 bytes of clock (u64 BE ms), 4 of client IPv4, 4 of X-Real-IP
//! (0.0.0.0: none), one mode byte, then lines: Host header, path, and for the
//! raw mode the query, for the JSON mode the policy JSON and extra query
//! parameters, for the struct mode three numbers and two CIDRs.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use libfuzzer_sys::fuzz_target;
use roomcast::auth::signed_policy::{
    Client, Policy, PolicyError, QueryNames, bases_for, sign_url, signature, verify,
};

const SECRET: &[u8] = b"fuzz-secret-key";

fuzz_target!(|data: &[u8]| {
    if data.len() < 17 {
        return;
    }
    let now_ms = u64::from_be_bytes(data[..8].try_into().unwrap());
    let ip = IpAddr::V4(Ipv4Addr::new(data[8], data[9], data[10], data[11]));
    let real = Ipv4Addr::new(data[12], data[13], data[14], data[15]);
    let client = Client {
        ip,
        real_ip: (!real.is_unspecified()).then_some(IpAddr::V4(real)),
    };
    let mode = data[16] % 3;
    let text = String::from_utf8_lossy(&data[17..]);
    let mut lines = text.split('\n');
    let host = lines.next().unwrap_or("");
    let path = lines.next().unwrap_or("");
    let names = QueryNames::default();
    let bases = bases_for(&["rtmp", "rtmps", "http", "https"], host, path);
    let query = match mode {
        0 => lines.next().unwrap_or("").to_string(),
        1 => {
            let Some(base) = bases.first() else { return };
            let json = lines.next().unwrap_or("");
            let extra = lines.next().unwrap_or("");
            let unsigned = format!(
                "{base}?{extra}{}policy={}",
                if extra.is_empty() { "" } else { "&" },
                b64(json.as_bytes())
            );
            let sig = signature(SECRET, &unsigned);
            let q = unsigned.split_once('?').map_or("", |(_, q)| q);
            format!("{q}&signature={sig}")
        }
        _ => {
            let num = |s: Option<&str>| s.and_then(|s| s.trim().parse::<u64>().ok());
            let policy = Policy {
                url_expire: num(lines.next()),
                url_activate: num(lines.next()),
                stream_expire: num(lines.next()),
                allow_ip: lines.next().map(str::to_string),
                real_ip: lines.next().map(str::to_string),
            };
            let Some(base) = bases.first() else { return };
            let Ok(url) = sign_url(SECRET, base, &policy, &names) else {
                return;
            };
            url.split_once('?').map_or("", |(_, q)| q).to_string()
        }
    };
    let r = verify(SECRET, &bases, &query, &names, client, now_ms);
    // What `sign_url` signed for one of the bases verifies, for a Host header
    // and a path a URL can have (`sign_url` reads them back from the URL).
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
    let path_ok = path.starts_with('/')
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/-_.~".contains(&b));
    if mode == 2 && host_ok && path_ok {
        assert!(
            !matches!(r, Err(PolicyError::BadSignature)),
            "{bases:?} {query}"
        );
    }
});

fn b64(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}
