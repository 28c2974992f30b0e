//! The vhost-user request decoder: an arbitrary device (`Limits`), an arbitrary
//! header and body, and a fuzzer-chosen number of real file descriptors (memfds,
//! eventfds, pipes) through `vdpa::request::decode`. It must never panic, and what it
//! accepts must respect the limits it was given.
//!
//! Input: rings u16, max_queue_size u16, max_mtu u16, fd count u8 (low 3 bits), fd
//! kinds u16 (2 bits each), request u32, flags u32, then the body (at most MAX_BODY
//! bytes; the header's size field is the body length, as the framing guarantees).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vdpa::request::{decode, fd_kind, Limits, Request};
use vdpa::wire::{Header, Message, MAX_BODY};
use vdpad_fuzz::{fds, Cursor};

fuzz_target!(|data: &[u8]| {
    let mut input = Cursor::new(data);
    let limits = Limits {
        rings: input.u16(),
        max_queue_size: input.u16(),
        max_mtu: input.u16(),
    };
    let nfds = usize::from(input.u8() & 7);
    let kinds = input.u16();
    let request = input.u32();
    let flags = input.u32();
    let body = input.rest();
    let body = body[..body.len().min(MAX_BODY)].to_vec();
    let fds = fds(nfds, kinds);
    for f in &fds {
        let _ = fd_kind(f);
    }
    let msg = Message {
        header: Header {
            request,
            flags,
            size: body.len() as u32,
        },
        body,
        fds,
    };
    let req = match decode(msg, &limits) {
        Ok(req) => req,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let _ = (req.name(), req.is_query(), format!("{req:?}"));
    let in_range = |ring: vdpa::request::Ring| ring.index() < limits.rings;
    match &req {
        Request::SetMemTable(regions) => {
            assert!(!regions.is_empty() && regions.len() <= vdpa::memory::MAX_REGIONS);
            for r in regions {
                assert!(r.size > 0 && r.gpa.checked_add(r.size).is_some());
            }
        }
        Request::AddMemReg(r) => assert!(r.size > 0 && r.gpa.checked_add(r.size).is_some()),
        Request::SetVringNum { ring, size } => {
            assert!(in_range(*ring));
            assert!(size.is_power_of_two() && *size <= limits.max_queue_size);
        }
        Request::SetVringAddr { ring, .. }
        | Request::SetVringBase { ring, .. }
        | Request::GetVringBase { ring }
        | Request::SetVringKick { ring, .. }
        | Request::SetVringCall { ring, .. }
        | Request::SetVringErr { ring, .. }
        | Request::SetVringEnable { ring, .. } => assert!(in_range(*ring)),
        Request::NetSetMtu(mtu) => assert!((68..=limits.max_mtu).contains(mtu)),
        _ => {}
    }
});
