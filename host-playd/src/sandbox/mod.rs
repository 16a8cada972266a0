//! The sandbox host-playd enters once its sockets are open and PulseAudio is
//! connected: a compromised daemon should be able to do almost nothing.
//!
//! Steps, in this order (each one needs the privileges the next removes):
//! resource limits, the capability bounding and ambient sets, the user
//! (`setgroups([])`, `setresgid`, `setresuid`), the remaining capability
//! sets, `PR_SET_DUMPABLE 0`, `PR_SET_NO_NEW_PRIVS`, Landlock, seccomp.
//!
//! Capabilities and Landlock are per thread, so [`apply`] insists on being
//! called while the process has a single thread: every thread started later
//! inherits all of it. Seccomp is installed with TSYNC anyway.
#![forbid(unsafe_code)]

pub mod check;
mod filesystem;
mod limits;
mod privileges;
pub mod seccomp;

use std::fmt;
use std::path::PathBuf;

use thiserror::Error;

pub use check::{run_probes, ProbeOutcome};
pub use limits::{ResourceLimits, DEFAULT_MEMORY_MB};

/// How strictly the sandbox is required.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum SandboxMode {
    /// Every step must be in force, or host-playd refuses to start.
    Require,
    /// Steps the running kernel lacks are logged and skipped.
    BestEffort,
    /// No sandbox at all, not even the user change (debugging only).
    Off,
}

impl fmt::Display for SandboxMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SandboxMode::Require => "require",
            SandboxMode::BestEffort => "best-effort",
            SandboxMode::Off => "off",
        })
    }
}

/// Which process a sandbox is for: each has its own seccomp allowlist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Listeners, guests, sessions: no new sockets, no files, ever.
    GuestFacing,
    /// The sound-server connection over a unix socket.
    Player,
    /// The sound-server connection to a TCP server.
    PlayerTcp,
}

/// What the sandbox needs to know.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SandboxConfig {
    pub mode: SandboxMode,
    pub role: Role,
    /// User to become; `None`: `nobody` when started as root, else stay.
    pub user: Option<String>,
    /// Paths left readable (not writable, not executable) under Landlock,
    /// e.g. what reconnecting to PulseAudio reads.
    pub read_only: Vec<PathBuf>,
    /// A pathname unix socket the daemon may still connect to (the host's
    /// PulseAudio), for kernels where Landlock governs that.
    pub connect_unix: Vec<PathBuf>,
    /// A TCP port the daemon may still connect to (a TCP PulseAudio server).
    pub connect_tcp: Vec<u16>,
    pub limits: ResourceLimits,
}

/// The user host-playd becomes when started as root without `--user`.
pub const DEFAULT_USER: &str = "nobody";

/// How one step went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// In force, with details for the log.
    Applied(String),
    /// The running system lacks it.
    Unavailable(String),
    /// Not needed here, with the reason.
    Skipped(String),
}

/// One step of the sandbox and how it went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub name: &'static str,
    pub outcome: Outcome,
}

/// What [`apply`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub steps: Vec<Step>,
}

impl Report {
    fn push(&mut self, name: &'static str, outcome: Outcome) {
        match &outcome {
            Outcome::Applied(details) => log::info!("sandbox: {name}: {details}"),
            Outcome::Unavailable(why) => log::warn!("sandbox: {name}: UNAVAILABLE: {why}"),
            Outcome::Skipped(why) => log::info!("sandbox: {name}: skipped: {why}"),
        }
        self.steps.push(Step { name, outcome });
    }

    /// Steps the running system could not provide.
    pub fn unavailable(&self) -> impl Iterator<Item = &Step> {
        self.steps
            .iter()
            .filter(|s| matches!(s.outcome, Outcome::Unavailable(_)))
    }
}

/// Why the sandbox could not be entered. host-playd does not start then.
#[derive(Debug, Error)]
pub enum SandboxError {
    #[error("the sandbox must be entered while the process has one thread, it has {0}")]
    Threads(usize),
    #[error("{step} failed: {reason}")]
    Step { step: &'static str, reason: String },
    #[error(
        "{step} is unavailable on this system ({reason}); refusing to start \
         (--sandbox best-effort runs without it)"
    )]
    Required { step: &'static str, reason: String },
}

fn step_err(step: &'static str) -> impl Fn(String) -> SandboxError {
    move |reason| SandboxError::Step { step, reason }
}

/// Enters the sandbox described by `config`, for the rest of the process's
/// life. Must run while the process has a single thread.
pub fn apply(config: &SandboxConfig) -> Result<Report, SandboxError> {
    let mut report = Report::default();
    if config.mode == SandboxMode::Off {
        log::warn!(
            "sandbox: OFF (--sandbox off): host-playd keeps every privilege it started with"
        );
        report.push("sandbox", Outcome::Skipped("--sandbox off".to_owned()));
        return Ok(report);
    }
    let threads = check::thread_count().map_err(step_err("counting threads"))?;
    if threads != 1 {
        return Err(SandboxError::Threads(threads));
    }
    let target = privileges::resolve_user(config.user.as_deref())
        .map_err(step_err("looking up the user"))?;

    report.push(
        "resource limits",
        limits::apply(&config.limits).map_err(step_err("resource limits"))?,
    );
    report.push(
        "capability bounding and ambient sets",
        privileges::drop_bounding_and_ambient().map_err(step_err("capability bounding set"))?,
    );
    report.push(
        "user",
        privileges::change_user(target.as_ref()).map_err(step_err("changing user"))?,
    );
    report.push(
        "capabilities",
        privileges::clear_capabilities().map_err(step_err("clearing capabilities"))?,
    );
    report.push(
        "no_new_privs",
        privileges::no_new_privs().map_err(step_err("no_new_privs"))?,
    );
    report.push(
        "landlock",
        filesystem::restrict(config).map_err(step_err("landlock"))?,
    );
    report.push(
        "seccomp",
        seccomp::install(config.role).map_err(step_err("seccomp"))?,
    );

    if config.mode == SandboxMode::Require {
        if let Some(step) = report.unavailable().next() {
            let reason = match &step.outcome {
                Outcome::Unavailable(why) => why.clone(),
                _ => String::new(),
            };
            return Err(SandboxError::Required {
                step: step.name,
                reason,
            });
        }
    }
    Ok(report)
}
