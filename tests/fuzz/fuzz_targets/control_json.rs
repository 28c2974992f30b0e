//! The control-socket request parser (`vdpad::control::protocol::Request::parse`) on
//! arbitrary lines. It must never panic; a request it accepts must serialize
//! (`to_line`) to a line that parses back to the same request; a refusal must carry a
//! message and serialize as a response.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vdpad::control::protocol::{Request, Response};

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    match Request::parse(line) {
        Ok(req) => {
            let again = req.to_line();
            assert!(again.ends_with('\n') && !again[..again.len() - 1].contains('\n'));
            assert_eq!(
                Request::parse(&again).expect("a serialized request parses"),
                req
            );
            let _ = (req.command.name(), req.command.changes_state());
        }
        Err(e) => {
            let resp = Response::refused(e);
            let _ = resp.to_line();
        }
    }
});
