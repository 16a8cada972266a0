//! Child processes that cannot leak and commands that cannot hang.

use std::{
    io::Read,
    process::{Child, Command, ExitStatus, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::HarnessError;

const POLL: Duration = Duration::from_millis(20);

/// Owns a child process: SIGTERM, then SIGKILL after a grace period, on drop.
#[derive(Debug)]
pub(crate) struct ChildGuard {
    child: Child,
    name: String,
}

impl ChildGuard {
    pub(crate) fn spawn(name: &str, cmd: &mut Command) -> Result<Self, HarnessError> {
        let child = cmd.spawn().map_err(|source| HarnessError::Spawn {
            what: format!("{name} ({cmd:?})"),
            source,
        })?;
        Ok(Self {
            child,
            name: name.to_owned(),
        })
    }

    pub(crate) fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// The process id.
    pub(crate) fn id(&self) -> u32 {
        self.child.id()
    }

    /// `Some(status)` once the process has exited.
    pub(crate) fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub(crate) fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.exit_status() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(POLL);
        }
    }

    /// Asks politely, then insists. Always reaps the process.
    pub(crate) fn terminate(&mut self) {
        if self.exit_status().is_some() {
            return;
        }
        // `kill(1)` keeps this crate free of unsafe code; failure only means
        // the SIGKILL below does the work.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        if self.wait_timeout(Duration::from_secs(3)).is_none() {
            eprintln!("{} ignored SIGTERM; killing it", self.name);
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// Runs `cmd` to completion, killing it if it takes longer than `timeout`.
pub(crate) fn output_with_timeout(
    cmd: &mut Command,
    timeout: Duration,
) -> Result<Output, HarnessError> {
    let what = format!("{cmd:?}");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut guard = ChildGuard::spawn(&what, cmd)?;
    let out = drain(guard.child_mut().stdout.take());
    let err = drain(guard.child_mut().stderr.take());
    let Some(status) = guard.wait_timeout(timeout) else {
        guard.terminate();
        return Err(HarnessError::Timeout {
            what,
            secs: timeout.as_secs_f64(),
            log_tail: String::new(),
        });
    };
    Ok(Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        buf
    })
}
