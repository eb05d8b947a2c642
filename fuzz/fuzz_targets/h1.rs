//! Any bytes as what a client sends the load balancer (a request head) and what a member answers
//! (a response head, a chunked body): nothing may panic, and the head the balancer writes for the
//! member is itself a head it would read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nubo_h1::{Chunked, Forwarded, Framing, HeadError, RequestHead, parse_request, parse_response};

fuzz_target!(|data: &[u8]| {
    let fwd = Forwarded {
        peer_ip: b"203.0.113.9",
        port: b"8280",
        secure: data.first().is_some_and(|b| b & 1 == 1),
    };
    let mut out = Vec::new();
    let parsed = parse_request(data, fwd, &mut out);
    if let Ok(Some(head)) = &parsed {
        assert!(head.head_len <= data.len());
        assert!(head.host.end <= data.len());
        let mut again = Vec::new();
        let reparsed = parse_request(&out, fwd, &mut again);
        assert!(
            matches!(reparsed, Ok(Some(_)) | Err(HeadError::TooLarge)),
            "the head written for the member does not read back: {reparsed:?} {:?}",
            String::from_utf8_lossy(&out)
        );
    }
    let req = match parsed {
        Ok(Some(h)) => h,
        _ => RequestHead {
            head_len: 0,
            host: 0..0,
            framing: Framing::None,
            minor: 1,
            keep_alive: true,
            idempotent: true,
            head_method: false,
            upgrade: false,
        },
    };
    let mut rout = Vec::new();
    let _ = parse_response(data, &req, &mut rout);
    let mut c = Chunked::default();
    let mut seen = 0usize;
    if let Ok(n) = c.advance(data, |chunk| seen += chunk.len()) {
        assert!(n <= data.len() && seen <= n);
    }
});
