//! A QEMU Machine Protocol client: enough to migrate a guest (`migrate`,
//! `query-migrate`) and stop QEMU (`quit`). One JSON object per line; asynchronous
//! events that arrive while waiting for an answer are kept in [`Qmp::events`].

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// A QMP session on QEMU's `-qmp unix:PATH,server=on,wait=off` socket.
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// Events received so far (`{"event": ...}` objects), oldest first.
    pub events: Vec<Value>,
}

impl Qmp {
    /// Connects (retrying for up to `timeout` while QEMU creates the socket), reads the
    /// greeting and leaves capabilities negotiation mode.
    pub fn connect(path: &Path, timeout: Duration) -> Qmp {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("QMP socket {}: {e}", path.display()),
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("QMP read timeout");
        let mut qmp = Qmp {
            reader: BufReader::new(stream.try_clone().expect("clone QMP socket")),
            writer: stream,
            events: Vec::new(),
        };
        let greeting = qmp.read();
        assert!(greeting.get("QMP").is_some(), "QMP greeting: {greeting}");
        qmp.execute("qmp_capabilities", json!({}));
        qmp
    }

    fn read(&mut self) -> Value {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).expect("read from QMP");
        assert!(n > 0, "QEMU closed its QMP socket");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("QMP sent {line:?}: {e}"))
    }

    /// Runs `command` with `arguments` and returns its `return` value; panics on an
    /// `error` answer.
    pub fn execute(&mut self, command: &str, arguments: Value) -> Value {
        match self.try_execute(command, arguments) {
            Ok(v) => v,
            Err(e) => panic!("QMP {command}: {e}"),
        }
    }

    /// Asks QEMU to exit; does not wait for an answer (QEMU may close the socket
    /// first).
    pub fn quit(mut self) {
        let _ = writeln!(self.writer, "{}", json!({ "execute": "quit" }));
    }

    /// Runs `command` with `arguments`: its `return` value, or its `error`.
    pub fn try_execute(&mut self, command: &str, arguments: Value) -> Result<Value, Value> {
        let msg = json!({ "execute": command, "arguments": arguments });
        writeln!(self.writer, "{msg}").expect("write to QMP");
        loop {
            let v = self.read();
            if v.get("event").is_some() {
                self.events.push(v);
                continue;
            }
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(e.clone());
            }
            panic!("QMP answered {command} with {v}");
        }
    }
}
