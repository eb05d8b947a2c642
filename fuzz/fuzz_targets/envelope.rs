//! Any bytes as a message on the bus: the envelope's proof checked by a platform component and by
//! a member's agent, then the event decoded and its sender's permission checked. Nothing may
//! panic, and nothing unproven may pass.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nubo_envelope::{BusAuth, BusKey, ReplayGuard};
use nubo_events::Event;

fuzz_target!(|data: &[u8]| {
    let key = BusKey::from_hex(&"7".repeat(64)).expect("a key");
    let now = 1_800_000_000_000;
    let _ = Event::peek_name(data);
    let _ = Event::decode(data);
    for auth in [
        BusAuth::Platform(key.clone()),
        BusAuth::Member {
            member_id: "app.web.web-1".into(),
            key: key.member_key("app.web.web-1"),
        },
    ] {
        let mut guard = ReplayGuard::default();
        if let Ok(opened) = auth.open(&mut guard, data, now) {
            // Random bytes cannot carry a valid MAC: only what a member may take unchecked.
            assert!(!opened.checked, "random bytes passed the proof");
            if let Ok(e) = Event::decode(opened.body) {
                let _ = opened.permits(&e);
            }
        }
    }
});
