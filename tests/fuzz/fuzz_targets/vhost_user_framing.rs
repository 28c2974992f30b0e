//! vhost-user framing: the fuzz input is the byte stream a frontend writes to the
//! socket (its first byte says how many eventfds ride along with the first message).
//! `vdpa::wire::Connection::recv` reads messages until it reports an error; every
//! message it returns must match an independent parse of the same bytes (header
//! fields, body of exactly `size <= MAX_BODY` bytes, version 1) and the error at the
//! end must fit where the stream stopped.
#![no_main]

use std::io::Write;
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

use libfuzzer_sys::fuzz_target;
use vdpa::wire::{Connection, WireError, FLAG_VERSION_MASK, HEADER_LEN, MAX_BODY, VERSION_1};
use vdpad_fuzz::{eventfd, Cursor};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// More than this stays in the socket buffer of one `UnixStream::pair()` without a
/// reader, so longer inputs are cut (the run script caps inputs below it anyway).
const MAX_STREAM: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let mut input = Cursor::new(data);
    let nfds = usize::from(input.u8() % 4);
    let stream = input.rest();
    let stream = &stream[..stream.len().min(MAX_STREAM)];
    let (ours, mut peer) = UnixStream::pair().expect("socketpair");
    let mut conn = Connection::new(ours).expect("socket timeouts");
    let passed: Vec<_> = (0..nfds).map(|_| eventfd()).collect();
    let raw: Vec<_> = passed.iter().map(|f| f.as_raw_fd()).collect();
    let mut sent = 0;
    if !stream.is_empty() {
        sent = peer.send_with_fds(&[stream], &raw).expect("sendmsg");
    }
    peer.write_all(&stream[sent..]).expect("write");
    peer.shutdown(Shutdown::Write).expect("shutdown");

    let mut at = 0;
    let mut first = true;
    loop {
        let got = conn.recv();
        match got {
            Ok(msg) => {
                let hdr = &stream[at..at + HEADER_LEN];
                let word = |i: usize| u32::from_ne_bytes(hdr[i..i + 4].try_into().unwrap());
                assert_eq!(msg.header.request, word(0));
                assert_eq!(msg.header.flags, word(4));
                assert_eq!(msg.header.size, word(8));
                assert_eq!(msg.header.flags & FLAG_VERSION_MASK, VERSION_1);
                let size = msg.header.size as usize;
                assert!(size <= MAX_BODY);
                at += HEADER_LEN;
                assert_eq!(msg.body, stream[at..at + size]);
                at += size;
                let expect_fds = if first && sent > 0 { nfds } else { 0 };
                assert_eq!(msg.fds.len(), expect_fds, "fds with message at {at}");
            }
            Err(WireError::Disconnected) => {
                assert_eq!(at, stream.len(), "clean end only at a message boundary");
                break;
            }
            Err(WireError::Truncated) => {
                let left = stream.len() - at;
                assert!(left > 0, "truncated with nothing left");
                if left >= HEADER_LEN {
                    let size = u32::from_ne_bytes(stream[at + 8..at + 12].try_into().unwrap());
                    assert!(left < HEADER_LEN + size as usize, "truncated, yet complete");
                }
                break;
            }
            Err(WireError::BadHeader { flags, size, .. }) => {
                assert!(stream.len() - at >= HEADER_LEN);
                assert!(flags & FLAG_VERSION_MASK != VERSION_1 || size as usize > MAX_BODY);
                break;
            }
            Err(WireError::Io(e)) => panic!("socket error on a healthy socket: {e}"),
            // The whole stream is written and the write side shut before reading, so
            // a message can never be waiting for bytes, and nothing aborts the read.
            Err(e @ (WireError::Timeout(_) | WireError::Aborted)) => {
                panic!("{e} on a stream that was complete before the read")
            }
        }
        first = false;
    }
});
