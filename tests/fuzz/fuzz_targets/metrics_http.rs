//! The metrics endpoint's request-head parser (`vdpad::metrics::parse_head`) on
//! arbitrary bytes. It must never panic, and its answers must fit the bytes: more is
//! read only while no blank line has arrived and the head is within
//! `MAX_REQUEST_BYTES`; the metrics are served only for a GET or HEAD of `/metrics`
//! over HTTP/1.x; a refusal is a 4xx/5xx status.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vdpad::metrics::{parse_head, HeadParse, MAX_REQUEST_BYTES};

fn has_blank_line(b: &[u8]) -> bool {
    b.windows(2).any(|w| w == b"\n\n") || b.windows(4).any(|w| w == b"\r\n\r\n")
}

fuzz_target!(|data: &[u8]| {
    match parse_head(data) {
        HeadParse::Incomplete => {
            assert!(!has_blank_line(data));
            assert!(data.len() <= MAX_REQUEST_BYTES);
        }
        HeadParse::Metrics { head_only } => {
            // Only the head (up to the blank line) must be text: a body may follow.
            let head = data.split(|&b| b == b'\n').next().unwrap();
            let line = std::str::from_utf8(head).expect("served a non-UTF-8 request");
            let words: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(words[0], if head_only { "HEAD" } else { "GET" });
            assert!(
                words[1] == "/metrics"
                    || words[1].starts_with("/metrics?")
                    || words[1].starts_with("/metrics#")
            );
            assert!(words[2].starts_with("HTTP/1."));
        }
        HeadParse::Reject(r) => {
            assert!((400..600).contains(&r.status));
            assert!(!r.reason.is_empty() && r.body.ends_with('\n'));
        }
    }
});
