//! Multi-view layout files (`config/layouts/*.json`, `Layout::parse` in
//! src/http/pages.rs): JSON, then the page, slot and stream-name checks.
//! A layout that parses fits its page.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roomcast::http::pages::Layout;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(l) = Layout::parse(text) {
        for s in &l.slots {
            assert!(u64::from(s.x) + u64::from(s.width) <= u64::from(l.width));
            assert!(u64::from(s.y) + u64::from(s.height) <= u64::from(l.height));
        }
        // It survives the round trip the multiview page makes.
        let json = serde_json::to_string(&l).expect("a layout serializes");
        assert_eq!(Layout::parse(&json).as_ref(), Ok(&l));
    }
});
