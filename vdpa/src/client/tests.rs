//! The backoff, and what `connect` makes of each kind of thing at the path.

use std::os::unix::net::UnixListener;
use std::path::PathBuf;

use super::*;

fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vdpa-client-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn backoff_doubles_from_100_ms_to_5_s_and_resets() {
    let mut b = Backoff::new(RECONNECT_FIRST, RECONNECT_MAX);
    assert_eq!(b.delay(), Duration::ZERO);
    let waits: Vec<u128> = (0..10).map(|_| b.fail().as_millis()).collect();
    assert_eq!(
        waits,
        [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000, 5000]
    );
    assert_eq!(b.failures(), 10);
    b.reset();
    assert_eq!((b.failures(), b.delay()), (0, Duration::ZERO));
    assert_eq!(b.fail(), RECONNECT_FIRST);
}

#[test]
fn backoff_never_overflows() {
    let mut b = Backoff::new(Duration::from_secs(3600), Duration::from_secs(7200));
    for _ in 0..100 {
        b.fail();
    }
    assert_eq!(b.delay(), Duration::from_secs(7200));
    let mut b = Backoff {
        first: Duration::from_millis(1),
        max: Duration::MAX,
        failures: u32::MAX - 1,
    };
    b.fail();
    b.fail();
    assert_eq!(b.failures(), u32::MAX);
    assert_eq!(b.delay(), Duration::from_millis(1) * (1u32 << 31));
}

#[test]
fn connects_to_a_listening_socket() {
    let dir = scratch("live");
    let path = dir.join("q.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let stream = connect(&path, CONNECT_TIMEOUT).unwrap();
    let (accepted, _) = listener.accept().unwrap();
    // The stream blocks as usual and talks to the listener's end.
    use std::io::{Read, Write};
    (&accepted).write_all(b"hi").unwrap();
    let mut buf = [0u8; 2];
    (&stream).read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hi");
    assert_eq!(peer_pid(&stream), Some(std::process::id() as i32));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_missing_or_stale_socket_means_the_peer_is_absent() {
    let dir = scratch("absent");
    let path = dir.join("q.sock");
    let e = connect(&path, CONNECT_TIMEOUT).unwrap_err();
    assert!(
        matches!(e, ConnectFailure::Missing) && e.peer_absent(),
        "{e}"
    );
    drop(UnixListener::bind(&path).unwrap());
    let e = connect(&path, CONNECT_TIMEOUT).unwrap_err();
    assert!(
        matches!(e, ConnectFailure::Refused) && e.peer_absent(),
        "{e}"
    );
    // The stale socket is the frontend's to replace, not ours to remove.
    assert!(path.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn anything_but_a_socket_is_refused_and_left_alone() {
    let dir = scratch("other");
    let file = dir.join("file.sock");
    std::fs::write(&file, b"keep me").unwrap();
    let e = connect(&file, CONNECT_TIMEOUT).unwrap_err();
    assert!(
        matches!(e, ConnectFailure::NotASocket("regular file")),
        "{e}"
    );
    assert!(!e.peer_absent());
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    let e = connect(&dir, CONNECT_TIMEOUT).unwrap_err();
    assert!(matches!(e, ConnectFailure::NotASocket("directory")), "{e}");
    // A symbolic link is not followed, even to a live socket.
    let real = dir.join("real.sock");
    let _listener = UnixListener::bind(&real).unwrap();
    let link = dir.join("link.sock");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let e = connect(&link, CONNECT_TIMEOUT).unwrap_err();
    assert!(
        matches!(e, ConnectFailure::NotASocket("symbolic link")),
        "{e}"
    );
    assert!(e.to_string().contains("leaves the path alone"), "{e}");
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_full_listen_queue_fails_at_once() {
    let dir = scratch("full");
    let path = dir.join("q.sock");
    let listener = UnixListener::bind(&path).unwrap();
    // SAFETY: listen on a socket we own, to shrink its queue to one connection.
    assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 0) }, 0);
    let mut kept = Vec::new();
    let started = Instant::now();
    let failure = loop {
        match connect(&path, CONNECT_TIMEOUT) {
            Ok(s) => kept.push(s),
            Err(e) => break e,
        }
        assert!(kept.len() < 8, "the listen queue never filled");
    };
    assert!(matches!(failure, ConnectFailure::NotAccepted), "{failure}");
    assert!(
        started.elapsed() < CONNECT_TIMEOUT,
        "{:?}",
        started.elapsed()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn failures_of_one_kind_share_a_key() {
    let a = ConnectFailure::Other("connecting", io::ErrorKind::PermissionDenied.into());
    let b = ConnectFailure::Other("connecting", io::ErrorKind::PermissionDenied.into());
    let c = ConnectFailure::Other("connecting", io::ErrorKind::InvalidInput.into());
    assert_eq!(a.key(), b.key());
    assert_ne!(a.key(), c.key());
    assert_eq!(ConnectFailure::Missing.key(), ConnectFailure::Missing.key());
    assert_ne!(ConnectFailure::Missing.key(), ConnectFailure::Refused.key());
    assert_eq!(
        ConnectFailure::NotASocket("directory").key(),
        ConnectFailure::NotASocket("regular file").key()
    );
}
