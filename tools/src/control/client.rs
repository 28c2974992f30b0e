//! The client side of the control protocol: connect, send a request, read the answer —
//! every step bounded in time.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::protocol::{Command, Request, Response};

/// Longest answer accepted (a `list` of many devices is still far below).
pub const MAX_RESPONSE_BYTES: u64 = 16 * 1024 * 1024;

/// Why a request got no answer from the daemon. (An answer with `"ok": false` is not
/// an error here: it is the daemon's refusal, returned as a [`Response`].)
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be connected to.
    #[error("cannot connect to the control socket {path}: {source}{hint}")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
        /// What to check, with a leading separator.
        hint: &'static str,
    },
    /// Sending or receiving failed (including timeouts).
    #[error("control socket {path}: {what}: {source}")]
    Io {
        /// Socket path.
        path: PathBuf,
        /// The step that failed.
        what: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// The daemon closed the connection without answering.
    #[error("control socket {0}: the daemon closed the connection without answering")]
    Closed(PathBuf),
    /// The answer is not a response of this protocol.
    #[error("control socket {path}: the answer is not a valid response ({why}): {line}")]
    BadResponse {
        /// Socket path.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
        /// The start of the answer.
        line: String,
    },
}

/// A connection to a daemon's control socket.
pub struct Client {
    path: PathBuf,
    writer: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Client {
    /// Connects to the control socket at `path`; every later read and write is
    /// bounded by `timeout`.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| {
            let hint = match source.kind() {
                io::ErrorKind::NotFound => {
                    " (is vdpad running? The socket is `control_socket` in its configuration; \
                     pass it with --socket)"
                }
                io::ErrorKind::ConnectionRefused => {
                    " (nothing accepts on it: vdpad is not running and left a stale socket)"
                }
                io::ErrorKind::PermissionDenied => {
                    " (run vdpactl as the user vdpad runs as, usually root)"
                }
                _ => "",
            };
            ClientError::Connect {
                path: path.to_owned(),
                source,
                hint,
            }
        })?;
        let io_err = |what, source| ClientError::Io {
            path: path.to_owned(),
            what,
            source,
        };
        stream
            .set_read_timeout(Some(timeout))
            .and_then(|_| stream.set_write_timeout(Some(timeout)))
            .map_err(|e| io_err("setting timeouts", e))?;
        let reader = stream
            .try_clone()
            .map_err(|e| io_err("duplicating the socket", e))?;
        Ok(Client {
            path: path.to_owned(),
            writer: stream,
            reader: BufReader::new(reader),
        })
    }

    /// Sends `command` and waits for the answer.
    pub fn request(&mut self, command: Command) -> Result<Response, ClientError> {
        self.request_raw(&Request::new(command).to_line())
            .and_then(|line| self.decode(&line))
    }

    /// Sends one raw line (a newline is added if missing) and returns the raw answer
    /// line, without its newline. For tests and debugging.
    pub fn request_raw(&mut self, line: &str) -> Result<String, ClientError> {
        let io_err = |what, source| ClientError::Io {
            path: self.path.clone(),
            what,
            source,
        };
        let mut out = line.to_owned();
        if !out.ends_with('\n') {
            out.push('\n');
        }
        self.writer
            .write_all(out.as_bytes())
            .map_err(|e| io_err("sending the request", e))?;
        let mut answer = String::new();
        let n = (&mut self.reader)
            .take(MAX_RESPONSE_BYTES)
            .read_line(&mut answer)
            .map_err(|e| io_err("reading the answer", e))?;
        if n == 0 {
            return Err(ClientError::Closed(self.path.clone()));
        }
        Ok(answer.trim_end_matches(['\n', '\r']).to_owned())
    }

    fn decode(&self, line: &str) -> Result<Response, ClientError> {
        serde_json::from_str(line).map_err(|e| ClientError::BadResponse {
            path: self.path.clone(),
            why: e.to_string(),
            line: line.chars().take(200).collect(),
        })
    }
}
