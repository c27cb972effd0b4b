//! The config loader (src/config.rs, `Config::parse`, what `Config::load`
//! runs on the file's text): TOML, `ROOMCAST_…` environment overrides and
//! every validation rule.
//!
//! Input: the config file, then optionally a line `#--env--` and
//! `NAME=VALUE` lines for the environment.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use roomcast::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (file, env) = text.split_once("\n#--env--\n").unwrap_or((text, ""));
    let env: Vec<(String, String)> = env
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let _ = Config::parse(file, Some(Path::new("/etc/roomcast/roomcast.toml")), env);
});
