//! systemd's readiness protocol (`sd_notify`), without libsystemd: when the service
//! manager sets `NOTIFY_SOCKET`, the daemon sends datagrams such as `READY=1` to it.
//!
//! `NOTIFY_SOCKET` is an absolute path of a Unix datagram socket, or an abstract
//! socket name written with a leading `@`. Without it (not run by systemd, or
//! `Type=` other than `notify`), every call does nothing.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// The environment variable systemd sets for `Type=notify` services.
pub const NOTIFY_SOCKET_ENV: &str = "NOTIFY_SOCKET";

/// Where notifications go.
#[derive(Debug)]
pub struct SdNotify {
    target: Option<SocketAddr>,
    display: String,
}

impl SdNotify {
    /// A notifier for `$NOTIFY_SOCKET`, or one that does nothing if it is not set.
    /// A malformed value is an error (systemd never sets one).
    pub fn from_env() -> io::Result<SdNotify> {
        match std::env::var_os(NOTIFY_SOCKET_ENV) {
            None => Ok(SdNotify::disabled()),
            Some(v) if v.is_empty() => Ok(SdNotify::disabled()),
            Some(v) => SdNotify::new(&v.to_string_lossy()),
        }
    }

    /// A notifier that does nothing.
    pub fn disabled() -> SdNotify {
        SdNotify {
            target: None,
            display: String::new(),
        }
    }

    /// A notifier for the socket `address`: an absolute path, or `@name` for an
    /// abstract socket.
    pub fn new(address: &str) -> io::Result<SdNotify> {
        let target = if let Some(name) = address.strip_prefix('@') {
            SocketAddr::from_abstract_name(name.as_bytes())?
        } else if address.starts_with('/') {
            SocketAddr::from_pathname(address)?
        } else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{NOTIFY_SOCKET_ENV}={address:?} is neither an absolute path nor an abstract name (@...)"
                ),
            ));
        };
        Ok(SdNotify {
            target: Some(target),
            display: address.to_owned(),
        })
    }

    /// The socket, as given.
    pub fn address(&self) -> &str {
        &self.display
    }

    /// Sends `state`: newline-separated `KEY=VALUE` assignments such as
    /// `"READY=1\nSTATUS=serving 2 devices"`. Returns whether it was sent (false when
    /// disabled).
    pub fn notify(&self, state: &str) -> io::Result<bool> {
        let Some(target) = &self.target else {
            return Ok(false);
        };
        let sock = UnixDatagram::unbound()?;
        let n = sock.send_to_addr(state.as_bytes(), target)?;
        if n != state.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!(
                    "short write to {}: {n} of {} bytes",
                    self.display,
                    state.len()
                ),
            ));
        }
        Ok(true)
    }

    /// `READY=1` with a status line.
    pub fn ready(&self, status: &str) -> io::Result<bool> {
        self.notify(&format!(
            "READY=1\nSTATUS={status}\nMAINPID={}",
            std::process::id()
        ))
    }

    /// `RELOADING=1` with the monotonic timestamp systemd 253+ asks for.
    pub fn reloading(&self) -> io::Result<bool> {
        self.notify(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading the configuration",
            monotonic_usec()
        ))
    }

    /// `STOPPING=1`.
    pub fn stopping(&self) -> io::Result<bool> {
        self.notify("STOPPING=1\nSTATUS=shutting down")
    }

    /// A `STATUS=` line alone.
    pub fn status(&self, status: &str) -> io::Result<bool> {
        self.notify(&format!("STATUS={status}"))
    }
}

/// CLOCK_MONOTONIC in microseconds.
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `ts`, which lives across the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn sends_to_a_path_and_an_abstract_name() {
        let dir = std::env::temp_dir().join(format!("vdpad-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let rx = UnixDatagram::bind(&path).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let n = SdNotify::new(path.to_str().unwrap()).unwrap();
        assert!(n.ready("serving 1 device").unwrap());
        let mut buf = [0u8; 512];
        let len = rx.recv(&mut buf).unwrap();
        let text = std::str::from_utf8(&buf[..len]).unwrap();
        assert!(
            text.starts_with("READY=1\nSTATUS=serving 1 device\nMAINPID="),
            "{text}"
        );
        std::fs::remove_dir_all(&dir).unwrap();

        let name = format!("vdpad-notify-test-{}", std::process::id());
        let rx = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
            .unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let n = SdNotify::new(&format!("@{name}")).unwrap();
        assert!(n.stopping().unwrap());
        let len = rx.recv(&mut buf).unwrap();
        assert!(buf[..len].starts_with(b"STOPPING=1"));
        assert!(n.reloading().unwrap());
        let len = rx.recv(&mut buf).unwrap();
        assert!(buf[..len].starts_with(b"RELOADING=1\nMONOTONIC_USEC="));
    }

    #[test]
    fn disabled_and_malformed() {
        assert!(!SdNotify::disabled().notify("READY=1").unwrap());
        assert!(SdNotify::new("relative/path").is_err());
    }
}
