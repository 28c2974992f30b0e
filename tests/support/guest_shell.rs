//! A command channel into a running guest: the host drops numbered shell snippets on
//! the guest's read-write share (`/lab/cmd.N`), the guest runs them one after the other
//! and leaves their output and exit status next to them (`/lab/out.N`, `/lab/rc.N`),
//! announcing each on the console (`VDPAD-CMD-DONE n=N rc=R`).
//!
//! A test can then interleave guest and host actions freely — ping from the guest,
//! restart the daemon on the host, ping again — without rebooting the guest or writing
//! the whole scenario into one script up front. The guest's loop is bounded (it gives
//! up after [`IDLE_LIMIT_S`] seconds without a command) and ends when the host creates
//! `/lab/stop`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::guest::{parse_kv, Guest};

/// Console line printed when the guest's command loop is listening.
pub const SHELL_READY: &str = "VDPAD-SHELL-READY";
/// Console line printed after each command.
pub const CMD_DONE: &str = "VDPAD-CMD-DONE";
/// The guest loop exits after this many seconds without a new command.
pub const IDLE_LIMIT_S: u32 = 600;

/// The guest script: runs `setup` (e.g. address configuration), prints
/// [`SHELL_READY`], then serves commands until `/lab/stop` appears.
pub fn shell_script(setup: &str) -> String {
    format!(
        r#"
{setup}
echo "{SHELL_READY}"
n=0
idle=0
while [ ! -e /lab/stop ] && [ $idle -lt {polls} ]; do
  if [ -e /lab/cmd.$n ]; then
    sh /lab/cmd.$n >/lab/out.$n 2>&1
    rc=$?
    echo $rc >/lab/rc.$n
    echo "{CMD_DONE} n=$n rc=$rc"
    n=$((n + 1))
    idle=0
  else
    sleep 0.1
    idle=$((idle + 1))
  fi
done
echo "VDPAD-SHELL-STOPPED n=$n"
"#,
        polls = IDLE_LIMIT_S * 10
    )
}

/// What a guest command produced.
#[derive(Clone, Debug)]
pub struct CmdResult {
    /// The command text.
    pub cmd: String,
    /// Its exit status.
    pub rc: i32,
    /// Its stdout and stderr.
    pub output: String,
    /// Host-side wall time from submission to completion.
    pub elapsed: Duration,
}

impl CmdResult {
    /// Panics (with the output) unless the command exited 0.
    pub fn ok(self) -> CmdResult {
        assert_eq!(
            self.rc, 0,
            "guest command failed: {}\n----- output -----\n{}",
            self.cmd, self.output
        );
        self
    }
}

/// A guest running [`shell_script`].
pub struct GuestShell {
    /// The guest (for console access and markers).
    pub guest: Guest,
    next: u32,
}

impl GuestShell {
    /// Wraps `guest` and waits (up to `boot_timeout`) until its command loop runs.
    pub fn attach(mut guest: Guest, boot_timeout: Duration) -> GuestShell {
        guest.wait_for(SHELL_READY, boot_timeout);
        GuestShell { guest, next: 0 }
    }

    fn share_file(&self, name: &str) -> PathBuf {
        self.guest.share().join(name)
    }

    /// Runs `cmd` (a shell snippet) in the guest and waits up to `timeout` for it.
    /// Panics with the console tail on timeout. The snippet should bound its own run
    /// time (`timeout N ...`) below `timeout`.
    pub fn run(&mut self, cmd: &str, timeout: Duration) -> CmdResult {
        let n = self.next;
        self.next += 1;
        let started = Instant::now();
        // Write under another name and rename, so the guest never sees half a file.
        let tmp = self.share_file(&format!(".cmd.{n}.tmp"));
        std::fs::write(&tmp, format!("{cmd}\n")).expect("write guest command");
        std::fs::rename(&tmp, self.share_file(&format!("cmd.{n}"))).expect("publish command");
        let marker = format!("{CMD_DONE} n={n} ");
        let line = match self.guest.try_wait_for(&marker, timeout) {
            Ok(line) => line,
            Err(why) => panic!(
                "guest command #{n} `{cmd}`: {why}\n----- output so far -----\n{}{}",
                super::read_log(&self.share_file(&format!("out.{n}"))),
                self.guest.tail()
            ),
        };
        let rc = parse_kv(&line, "rc").map_or(-1, |v| v as i32);
        CmdResult {
            cmd: cmd.to_string(),
            rc,
            output: super::read_log(&self.share_file(&format!("out.{n}"))),
            elapsed: started.elapsed(),
        }
    }

    /// Before the guest reboots (or is started again): removes the command files of
    /// this boot from the share, so that the next boot's loop, which counts from 0
    /// again, does not run them a second time. Then [`GuestShell::wait_ready`].
    pub fn forget_commands(&mut self) {
        let entries = std::fs::read_dir(self.guest.share()).expect("read the guest share");
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let numbered = ["cmd.", "out.", "rc.", ".cmd."]
                .iter()
                .any(|prefix| name.starts_with(prefix));
            if numbered || name == "stop" {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        self.next = 0;
    }

    /// Waits (up to `boot_timeout`) for the command loop of the next boot.
    pub fn wait_ready(&mut self, boot_timeout: Duration) -> String {
        self.guest.wait_for(SHELL_READY, boot_timeout)
    }

    /// Ends the command loop and waits for the guest to power off; returns the
    /// script's exit code.
    pub fn stop(mut self, timeout: Duration) -> i32 {
        std::fs::write(self.share_file("stop"), b"stop\n").expect("write stop file");
        self.guest.wait_exit(timeout)
    }
}
