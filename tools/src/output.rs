//! Writing to standard output from the command-line tools without panicking when the
//! reader has gone away (`vdpad --check-config FILE | head`, `vdpactl list | head`).
//!
//! Rust ignores SIGPIPE, so a write to a closed pipe fails with `EPIPE`, and `print!`
//! turns that into a panic. The tools print through [`print`] instead, which reports a
//! closed pipe as [`Closed`]: the caller stops printing and exits with the status the
//! command would have had anyway (the output was the reader's to cut short).

use std::io::{self, Write};

/// The reader of standard output has closed it (or stdout is otherwise unwritable):
/// nothing more will be printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

/// Writes `text` to standard output and flushes it. A closed pipe (or any other
/// write error, which leaves nothing useful to do with the output) is [`Closed`].
pub fn print(text: &str) -> Result<(), Closed> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|_| Closed)
}

/// [`print`] followed by a newline.
pub fn println(text: &str) -> Result<(), Closed> {
    print(&format!("{text}\n"))
}
