//! The real host-playd, started against a host daemon.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::{
    binaries::host_playd, process::ChildGuard, pulse::tail, HarnessError, PulseDaemon, TestDir,
    HOST_SINK,
};

const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A running host-playd, killed on drop.
#[derive(Debug)]
pub struct HostPlayd {
    child: ChildGuard,
    socket: PathBuf,
    log: PathBuf,
    _dir: TestDir,
}

impl HostPlayd {
    /// Starts host-playd listening on `socket`, playing into the host
    /// daemon's [`HOST_SINK`] (or into nothing with `backend = Some("null")`),
    /// and waits for the socket to appear.
    pub fn start(
        socket: &Path,
        host: &PulseDaemon,
        backend: Option<&str>,
    ) -> Result<Self, HarnessError> {
        match backend {
            // host-playd refuses --pulse-server and --sink with the null backend.
            Some("null") => Self::start_with(socket, None, &["--backend", "null"]),
            Some(b) => Self::start_with(socket, Some(host), &["--backend", b]),
            None => Self::start_with(socket, Some(host), &[]),
        }
    }

    /// Starts host-playd listening on `socket` with `extra_args`, playing
    /// into `host`'s [`HOST_SINK`] when a host daemon is given (leave it out
    /// for `--backend null`), and waits for the socket to appear.
    pub fn start_with(
        socket: &Path,
        host: Option<&PulseDaemon>,
        extra_args: &[&str],
    ) -> Result<Self, HarnessError> {
        let exe = host_playd()?;
        let dir = TestDir::new("playd")?;
        let log = dir.path().join("host-playd.log");
        let log_file = File::create(&log)
            .map_err(|e| HarnessError::io(format!("creating {}", log.display()), e))?;
        let mut cmd = Command::new(exe);
        cmd.arg("--listen")
            .arg(format!("unix:{}", socket.display()));
        // Clients of the host daemon share its HOME and runtime directory;
        // without one, host-playd gets a private HOME of its own.
        let home = match host {
            Some(host) => {
                cmd.arg("--pulse-server")
                    .arg(host.server())
                    .arg("--sink")
                    .arg(HOST_SINK)
                    .env("XDG_RUNTIME_DIR", host.dir().join("runtime"))
                    .env("PULSE_RUNTIME_PATH", host.dir().join("runtime"));
                host.dir().join("home")
            }
            None => dir.subdir("home")?,
        };
        cmd.args(extra_args);
        cmd.env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "debug".to_owned()),
        )
        .env("HOME", home)
        .env_remove("PULSE_SERVER")
        .stdin(Stdio::null())
        .stdout(
            log_file
                .try_clone()
                .map_err(|e| HarnessError::io("duplicating the log file", e))?,
        )
        .stderr(log_file);
        let child = ChildGuard::spawn("host-playd", &mut cmd)?;
        let mut playd = Self {
            child,
            socket: socket.to_path_buf(),
            log,
            _dir: dir,
        };
        playd.wait_ready()?;
        Ok(playd)
    }

    fn wait_ready(&mut self) -> Result<(), HarnessError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(status) = self.child.exit_status() {
                return Err(HarnessError::Died {
                    what: "host-playd".to_owned(),
                    status,
                    log_tail: self.log_tail(),
                });
            }
            if self.socket.exists() {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(20));
        }
        Err(HarnessError::Timeout {
            what: format!("host-playd to create {}", self.socket.display()),
            secs: READY_TIMEOUT.as_secs_f64(),
            log_tail: self.log_tail(),
        })
    }

    /// The daemon's process id (benchmarks read its CPU time in `/proc`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the daemon is still running.
    pub fn is_alive(&mut self) -> bool {
        self.child.exit_status().is_none()
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        crate::pulse::read_log(&self.log)
    }

    /// The last lines of the log.
    pub fn log_tail(&self) -> String {
        tail("host-playd", &self.log(), 60)
    }
}
