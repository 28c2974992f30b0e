//! Every request kind decoded, and every rejection the decoder makes.

use std::fs::File;
use std::os::fd::{FromRawFd, IntoRawFd};

use vhost::vhost_user::message::{
    FrontendReq as R, VhostUserConfig, VhostUserConfigFlags, VhostUserLog, VhostUserMemory,
    VhostUserMemoryRegion, VhostUserSingleMemoryRegion, VhostUserU64, VhostUserVringAddr,
    VhostUserVringAddrFlags, VhostUserVringState,
};
use vm_memory::ByteValued;
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::wire::{Header, Message};

const LIMITS: Limits = Limits {
    rings: 4,
    max_queue_size: 256,
    max_mtu: 9000,
};

fn msg(req: R, body: &[u8], fds: Vec<File>) -> Message {
    Message {
        header: Header {
            request: req as u32,
            flags: 1,
            size: body.len() as u32,
        },
        body: body.to_vec(),
        fds,
    }
}

fn dec(req: R, body: &[u8], fds: Vec<File>) -> Result<Request, RequestError> {
    decode(msg(req, body, fds), &LIMITS)
}

fn u64_body(v: u64) -> Vec<u8> {
    VhostUserU64::new(v).as_slice().to_vec()
}

fn state(index: u32, num: u32) -> Vec<u8> {
    VhostUserVringState::new(index, num).as_slice().to_vec()
}

fn eventfd_file() -> File {
    let e = EventFd::new(0).unwrap();
    // SAFETY: `into_raw_fd` hands over the eventfd, which the File owns from now on.
    unsafe { File::from_raw_fd(e.into_raw_fd()) }
}

fn pipe_file() -> File {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe(2) to fill.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: pipe(2) returned two open descriptors that nothing else owns.
    unsafe {
        drop(File::from_raw_fd(fds[1]));
        File::from_raw_fd(fds[0])
    }
}

fn region(gpa: u64, size: u64, user_addr: u64) -> VhostUserMemoryRegion {
    VhostUserMemoryRegion::new(gpa, size, user_addr, 0)
}

fn mem_table(regions: &[VhostUserMemoryRegion]) -> Vec<u8> {
    let mut b = VhostUserMemory::new(regions.len() as u32)
        .as_slice()
        .to_vec();
    for r in regions {
        b.extend_from_slice(r.as_slice());
    }
    b
}

fn tmpfile() -> File {
    tempfile_in_proc()
}

/// An anonymous memfd, standing in for guest memory (never mapped by the decoder).
fn tempfile_in_proc() -> File {
    // SAFETY: memfd_create with a valid NUL-terminated name; the fd it returns is new.
    let fd = unsafe { libc::memfd_create(c"t".as_ptr(), 0) };
    assert!(fd >= 0);
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    unsafe { File::from_raw_fd(fd) }
}

fn invalid_why(r: Result<Request, RequestError>) -> String {
    match r {
        Err(RequestError::Invalid { why, .. }) | Err(RequestError::BadFd { why, .. }) => why,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn requests_without_payload() {
    for (req, want) in [
        (R::GET_FEATURES, "GET_FEATURES"),
        (R::SET_OWNER, "SET_OWNER"),
        (R::RESET_OWNER, "RESET_DEVICE"),
        (R::RESET_DEVICE, "RESET_DEVICE"),
        (R::GET_PROTOCOL_FEATURES, "GET_PROTOCOL_FEATURES"),
        (R::GET_QUEUE_NUM, "GET_QUEUE_NUM"),
        (R::GET_MAX_MEM_SLOTS, "GET_MAX_MEM_SLOTS"),
        (R::GET_STATUS, "GET_STATUS"),
    ] {
        assert_eq!(dec(req, &[], vec![]).unwrap().name(), want);
        // A u64 of zero, as some frontends send, is accepted too.
        assert_eq!(dec(req, &u64_body(0), vec![]).unwrap().name(), want);
    }
}

#[test]
fn queries_are_told_apart() {
    assert!(dec(R::GET_FEATURES, &[], vec![]).unwrap().is_query());
    assert!(!dec(R::SET_OWNER, &[], vec![]).unwrap().is_query());
    let r = dec(R::GET_VRING_BASE, &state(0, 0), vec![]).unwrap();
    assert!(!r.is_query(), "GET_VRING_BASE stops a ring");
}

#[test]
fn feature_and_status_words() {
    assert!(matches!(
        dec(R::SET_FEATURES, &u64_body(0x1_0000_0000), vec![]),
        Ok(Request::SetFeatures(0x1_0000_0000))
    ));
    assert!(matches!(
        dec(R::SET_PROTOCOL_FEATURES, &u64_body(3), vec![]),
        Ok(Request::SetProtocolFeatures(3))
    ));
    assert!(matches!(
        dec(R::SET_STATUS, &u64_body(0xf), vec![]),
        Ok(Request::SetStatus(0xf))
    ));
    assert!(invalid_why(dec(R::SET_STATUS, &u64_body(0x100), vec![])).contains("byte"));
    assert!(matches!(
        dec(R::SET_FEATURES, &[0; 4], vec![]),
        Err(RequestError::BodySize {
            got: 4,
            want: 8,
            ..
        })
    ));
}

#[test]
fn unknown_and_unsupported_codes() {
    assert!(matches!(
        decode(
            Message {
                header: Header {
                    request: 9999,
                    flags: 1,
                    size: 0
                },
                body: vec![],
                fds: vec![]
            },
            &LIMITS
        ),
        Err(RequestError::Unsupported(9999))
    ));
    assert!(invalid_why(dec(R::SET_CONFIG, &[0; 12], vec![])).contains("read-only"));
    assert!(invalid_why(dec(R::GET_INFLIGHT_FD, &[0; 16], vec![])).contains("not supported"));
}

#[test]
fn vring_num_is_a_power_of_two_within_the_maximum() {
    assert!(matches!(
        dec(R::SET_VRING_NUM, &state(3, 256), vec![]),
        Ok(Request::SetVringNum { ring, size: 256 }) if ring.index() == 3
    ));
    for bad in [0, 3, 512] {
        assert!(invalid_why(dec(R::SET_VRING_NUM, &state(0, bad), vec![])).contains("power of two"));
    }
    assert!(matches!(
        dec(R::SET_VRING_NUM, &state(4, 256), vec![]),
        Err(RequestError::NoSuchRing {
            ring: 4,
            count: 4,
            ..
        })
    ));
}

#[test]
fn vring_base_fits_sixteen_bits() {
    assert!(matches!(
        dec(R::SET_VRING_BASE, &state(1, 65535), vec![]),
        Ok(Request::SetVringBase { base: 65535, .. })
    ));
    assert!(invalid_why(dec(R::SET_VRING_BASE, &state(1, 65536), vec![])).contains("65535"));
    assert!(matches!(
        dec(R::GET_VRING_BASE, &state(2, 0), vec![]),
        Ok(Request::GetVringBase { ring }) if ring.as_usize() == 2
    ));
    assert!(matches!(
        dec(R::GET_VRING_BASE, &state(9, 0), vec![]),
        Err(RequestError::NoSuchRing { .. })
    ));
}

#[test]
fn vring_enable_is_zero_or_one() {
    assert!(matches!(
        dec(R::SET_VRING_ENABLE, &state(0, 1), vec![]),
        Ok(Request::SetVringEnable { enable: true, .. })
    ));
    assert!(matches!(
        dec(R::SET_VRING_ENABLE, &state(0, 0), vec![]),
        Ok(Request::SetVringEnable { enable: false, .. })
    ));
    assert!(invalid_why(dec(R::SET_VRING_ENABLE, &state(0, 2), vec![])).contains("enable value"));
}

fn vring_addr(index: u32, desc: u64, avail: u64, used: u64, flags: u32) -> Vec<u8> {
    let a = VhostUserVringAddr::new(
        index,
        VhostUserVringAddrFlags::from_bits_retain(flags),
        desc,
        used,
        avail,
        0x9_3004,
    );
    a.as_slice().to_vec()
}

#[test]
fn vring_addresses_are_aligned_and_logged_on_request() {
    match dec(
        R::SET_VRING_ADDR,
        &vring_addr(1, 0x1000, 0x2002, 0x3004, 0),
        vec![],
    ) {
        Ok(Request::SetVringAddr { ring, location }) => {
            assert_eq!(ring.index(), 1);
            assert_eq!(location.space, AddrSpace::FrontendVirtual);
            assert_eq!(
                location.addrs,
                RingAddrs {
                    desc: 0x1000,
                    avail: 0x2002,
                    used: 0x3004
                }
            );
        }
        other => panic!("{other:?}"),
    }
    for (d, a, u) in [
        (0x1008, 0x2000, 0x3000),
        (0x1000, 0x2001, 0x3000),
        (0x1000, 0x2000, 0x3002),
    ] {
        let why = invalid_why(dec(R::SET_VRING_ADDR, &vring_addr(0, d, a, u, 0), vec![]));
        assert!(why.contains("misaligned"), "{why}");
    }
    match dec(R::SET_VRING_ADDR, &vring_addr(0, 0, 0, 0, 1), vec![]) {
        Ok(Request::SetVringAddr { location, .. }) => {
            assert_eq!(location.log_used, Some(0x9_3004))
        }
        other => panic!("{other:?}"),
    }
    let why = invalid_why(dec(R::SET_VRING_ADDR, &vring_addr(0, 0, 0, 0, 2), vec![]));
    assert!(why.contains("unknown flags 0x2"), "{why}");
}

#[test]
#[cfg_attr(miri, ignore = "memfd_create is not supported by Miri")]
fn migration_requests_decode() {
    let log = VhostUserLog::new(0x1000, 0x40);
    match dec(R::SET_LOG_BASE, log.as_slice(), vec![eventfd_file()]) {
        Ok(Request::SetLogBase(spec)) => {
            assert_eq!((spec.size, spec.offset), (0x1000, 0x40));
        }
        other => panic!("{other:?}"),
    }
    // Without LOG_SHMFD QEMU sends a u64 and no fd: a log this device cannot reach.
    assert!(matches!(
        dec(R::SET_LOG_BASE, &u64_body(0), vec![]),
        Err(RequestError::BodySize { .. })
    ));
    assert!(matches!(
        dec(R::SET_LOG_BASE, log.as_slice(), vec![]),
        Err(RequestError::BadFd { .. })
    ));
    let empty = VhostUserLog::new(0, 0);
    assert!(
        invalid_why(dec(R::SET_LOG_BASE, empty.as_slice(), vec![eventfd_file()]))
            .contains("log of 0x0 bytes")
    );
    let wraps = VhostUserLog::new(0x1000, u64::MAX);
    assert!(
        invalid_why(dec(R::SET_LOG_BASE, wraps.as_slice(), vec![eventfd_file()]))
            .contains("offset")
    );
    assert!(matches!(
        dec(R::SET_LOG_FD, &[], vec![eventfd_file()]),
        Ok(Request::SetLogFd)
    ));
    let mac = u64::from_le_bytes([0x52, 0x54, 0, 0x12, 0x34, 0x56, 0, 0]);
    assert!(matches!(
        dec(R::SEND_RARP, &u64_body(mac), vec![]),
        Ok(Request::SendRarp([0x52, 0x54, 0, 0x12, 0x34, 0x56]))
    ));
}

#[test]
#[cfg_attr(
    miri,
    ignore = "fd_kind reads /proc/self/fd, which Miri's isolation forbids"
)]
fn kick_and_call_take_eventfds_only() {
    assert!(matches!(
        dec(R::SET_VRING_KICK, &u64_body(1), vec![eventfd_file()]),
        Ok(Request::SetVringKick { ring, .. }) if ring.index() == 1
    ));
    assert!(matches!(
        dec(R::SET_VRING_CALL, &u64_body(2), vec![eventfd_file()]),
        Ok(Request::SetVringCall { fd: Some(_), .. })
    ));
    assert!(matches!(
        dec(R::SET_VRING_CALL, &u64_body(0x100 | 2), vec![]),
        Ok(Request::SetVringCall { fd: None, .. })
    ));
    let why = invalid_why(dec(R::SET_VRING_KICK, &u64_body(0), vec![pipe_file()]));
    assert!(
        why.contains("pipe") && why.contains("not an eventfd"),
        "{why}"
    );
    let why = invalid_why(dec(R::SET_VRING_CALL, &u64_body(0), vec![tmpfile()]));
    assert!(why.contains("not an eventfd"), "{why}");
    let why = invalid_why(dec(R::SET_VRING_KICK, &u64_body(0x100), vec![]));
    assert!(why.contains("polling mode"), "{why}");
    let why = invalid_why(dec(R::SET_VRING_CALL, &u64_body(0), vec![]));
    assert!(why.contains("no file descriptor"), "{why}");
    let why = invalid_why(dec(
        R::SET_VRING_CALL,
        &u64_body(0x200),
        vec![eventfd_file()],
    ));
    assert!(why.contains("unknown flag bits"), "{why}");
    assert!(matches!(
        dec(R::SET_VRING_KICK, &u64_body(7), vec![eventfd_file()]),
        Err(RequestError::NoSuchRing { ring: 7, .. })
    ));
}

#[test]
fn vring_err_takes_any_fd_or_none() {
    assert!(matches!(
        dec(R::SET_VRING_ERR, &u64_body(0), vec![pipe_file()]),
        Ok(Request::SetVringErr { fd: Some(_), .. })
    ));
    assert!(matches!(
        dec(R::SET_VRING_ERR, &u64_body(0x100), vec![]),
        Ok(Request::SetVringErr { fd: None, .. })
    ));
}

#[test]
#[cfg_attr(miri, ignore = "memfd_create is not available under Miri")]
fn a_memory_table_has_one_fd_per_region_and_no_overlaps() {
    let two = [
        region(0, 0x10000, 0x7000_0000),
        region(0x10000, 0x10000, 0x7001_0000),
    ];
    match dec(
        R::SET_MEM_TABLE,
        &mem_table(&two),
        vec![tmpfile(), tmpfile()],
    ) {
        Ok(Request::SetMemTable(specs)) => {
            assert_eq!(specs.len(), 2);
            assert_eq!(specs[1].gpa, 0x10000);
            assert_eq!(specs[1].user_addr, 0x7001_0000);
        }
        other => panic!("{other:?}"),
    }
    let why = invalid_why(dec(R::SET_MEM_TABLE, &mem_table(&two), vec![tmpfile()]));
    assert!(why.contains("2 regions but 1 file descriptors"), "{why}");
    let why = invalid_why(dec(R::SET_MEM_TABLE, &mem_table(&[]), vec![]));
    assert!(why.contains("0 regions"), "{why}");
    // Overlap in guest-physical space, and in the frontend's virtual space.
    for pair in [
        [
            region(0, 0x10000, 0x7000_0000),
            region(0x8000, 0x10000, 0x7100_0000),
        ],
        [
            region(0, 0x10000, 0x7000_0000),
            region(0x20000, 0x10000, 0x7000_8000),
        ],
    ] {
        let why = invalid_why(dec(
            R::SET_MEM_TABLE,
            &mem_table(&pair),
            vec![tmpfile(), tmpfile()],
        ));
        assert!(why.contains("overlaps"), "{why}");
    }
    // Empty or wrapping regions.
    for r in [
        region(0, 0, 0),
        region(u64::MAX - 10, 0x1000, 0),
        region(0, 0x1000, u64::MAX),
    ] {
        let why = invalid_why(dec(R::SET_MEM_TABLE, &mem_table(&[r]), vec![tmpfile()]));
        assert!(why.contains("wraps around"), "{why}");
    }
    // A header promising more regions than the body holds.
    let mut short = mem_table(&two);
    short.truncate(short.len() - 8);
    assert!(matches!(
        dec(R::SET_MEM_TABLE, &short, vec![tmpfile(), tmpfile()]),
        Err(RequestError::BodySize { .. })
    ));
    assert!(matches!(
        dec(R::SET_MEM_TABLE, &[0; 4], vec![]),
        Err(RequestError::BodySize { .. })
    ));
    let too_many = vec![region(0, 0x1000, 0); MAX_REGIONS + 1];
    let why = invalid_why(dec(R::SET_MEM_TABLE, &mem_table(&too_many), vec![]));
    assert!(why.contains("must be 1..="), "{why}");
}

#[test]
#[cfg_attr(miri, ignore = "memfd_create is not available under Miri")]
fn single_regions_are_added_and_removed() {
    let body = VhostUserSingleMemoryRegion::new(0x1000, 0x2000, 0x7000_1000, 0x1000)
        .as_slice()
        .to_vec();
    assert!(matches!(
        dec(R::ADD_MEM_REG, &body, vec![tmpfile()]),
        Ok(Request::AddMemReg(RegionSpec {
            gpa: 0x1000,
            size: 0x2000,
            mmap_offset: 0x1000,
            ..
        }))
    ));
    let why = invalid_why(dec(R::ADD_MEM_REG, &body, vec![]));
    assert!(why.contains("no file descriptor"), "{why}");
    assert!(matches!(
        dec(R::REM_MEM_REG, &body, vec![]),
        Ok(Request::RemMemReg(RegionId {
            gpa: 0x1000,
            size: 0x2000,
            user_addr: 0x7000_1000
        }))
    ));
    let wrap = VhostUserSingleMemoryRegion::new(1, u64::MAX, 0, 0)
        .as_slice()
        .to_vec();
    assert!(invalid_why(dec(R::ADD_MEM_REG, &wrap, vec![tmpfile()])).contains("wraps around"));
}

fn config_body(offset: u32, size: u32) -> Vec<u8> {
    let mut b = VhostUserConfig::new(offset, size, VhostUserConfigFlags::empty())
        .as_slice()
        .to_vec();
    b.resize(b.len() + size as usize, 0);
    b
}

#[test]
fn config_reads_stay_inside_the_config_space() {
    match dec(R::GET_CONFIG, &config_body(6, 4), vec![]) {
        Ok(Request::GetConfig(r)) => assert_eq!((r.offset, r.size), (6, 4)),
        other => panic!("{other:?}"),
    }
    for (off, size) in [(0, 0), (10, 4), (u32::MAX, 2)] {
        let why = invalid_why(dec(R::GET_CONFIG, &config_body(off, size), vec![]));
        assert!(why.contains("outside"), "{why}");
    }
    let mut body = config_body(0, 6);
    body.pop();
    assert!(matches!(
        dec(R::GET_CONFIG, &body, vec![]),
        Err(RequestError::BodySize { .. })
    ));
}

#[test]
fn mtu_is_within_bounds() {
    assert!(matches!(
        dec(R::NET_SET_MTU, &u64_body(1500), vec![]),
        Ok(Request::NetSetMtu(1500))
    ));
    for bad in [67, 9001] {
        assert!(invalid_why(dec(R::NET_SET_MTU, &u64_body(bad), vec![])).contains("outside"));
    }
}

#[test]
#[cfg_attr(
    miri,
    ignore = "fd_kind reads /proc/self/fd, which Miri's isolation forbids"
)]
fn the_backend_channel_must_be_one_socket() {
    let (ours, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
    let sock = File::from(std::os::fd::OwnedFd::from(ours));
    assert!(matches!(
        dec(R::SET_BACKEND_REQ_FD, &[], vec![sock]),
        Ok(Request::SetBackendReqFd(_))
    ));
    let why = invalid_why(dec(R::SET_BACKEND_REQ_FD, &[], vec![pipe_file()]));
    assert!(
        why.contains("pipe") && why.contains("not a socket"),
        "{why}"
    );
    let why = invalid_why(dec(R::SET_BACKEND_REQ_FD, &[], vec![]));
    assert!(why.contains("expected one socket"), "{why}");
}
