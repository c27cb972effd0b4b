//! Appservice transactions as Synapse sends them (`PUT
//! /_matrix/app/v1/transactions/{txnId}`), through the handler's parser
//! (`parse_transaction`: ruma's request parsing, then roomcast's event shape),
//! and the `!live` command parser on every text message in them, as the bot
//! reads them (src/matrix/commands.rs).
//!
//! Input: the request body (JSON).
#![no_main]

use libfuzzer_sys::fuzz_target;
use roomcast::http::matrix::appservice::parse_transaction;
use roomcast::matrix::commands::{self, Parsed};

fuzz_target!(|data: &[u8]| {
    let req = http::Request::builder()
        .method(http::Method::PUT)
        .uri("/_matrix/app/v1/transactions/fuzz-txn")
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::AUTHORIZATION, "Bearer hs_token")
        .body(data)
        .unwrap();
    let Ok(events) = parse_transaction(req, "fuzz-txn") else {
        return;
    };
    for ev in &events {
        if ev.content["msgtype"].as_str() != Some("m.text") {
            continue;
        }
        let Some(body) = ev.content["body"].as_str() else {
            continue;
        };
        if let Parsed::Command(c) = commands::parse(body) {
            let _ = commands::needs_admin(&c);
        }
    }
    // The command parser on the raw text too: bodies need not come from JSON.
    if let Ok(body) = std::str::from_utf8(data)
        && let Parsed::Command(c) = commands::parse(body)
    {
        let _ = commands::needs_admin(&c);
    }
});
