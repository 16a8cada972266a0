//! The harness's one error type. Each message names what failed and, when a
//! process is involved, carries the tail of its log: that tail is usually the
//! only clue to why a module or daemon misbehaved.

use std::{io, path::PathBuf, process::ExitStatus};

/// Why a harness operation failed.
#[derive(thiserror::Error)]
pub enum HarnessError {
    /// A binary built by the workspace is not there.
    #[error("{} does not exist: run `cargo build --release --workspace` first (scripts/test.sh does)", .0.display())]
    MissingBinary(PathBuf),
    /// A process could not be started.
    #[error("cannot start {what}: {source}")]
    Spawn {
        /// The process, as the tests name it.
        what: String,
        /// The error from `spawn`.
        source: io::Error,
    },
    /// A file-system or pipe operation failed.
    #[error("{what}: {source}")]
    Io {
        /// The operation, with its path.
        what: String,
        /// The underlying error.
        source: io::Error,
    },
    /// A bounded wait ran out.
    #[error("timed out after {secs:.1} s waiting for {what}\n{log_tail}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long the wait was.
        secs: f64,
        /// Log tail of the process that should have answered.
        log_tail: String,
    },
    /// A process exited while it was still needed.
    #[error("{what} exited early with {status}\n{log_tail}")]
    Died {
        /// The process.
        what: String,
        /// Its exit status.
        status: ExitStatus,
        /// Its log tail.
        log_tail: String,
    },
    /// A condition the harness checks did not hold.
    #[error("{what}: {detail}")]
    Check {
        /// What was checked.
        what: String,
        /// What was found instead, with log tails.
        detail: String,
    },
    /// A command ran but reported failure.
    #[error("{what} failed with {status}: {stderr}")]
    Command {
        /// The command line.
        what: String,
        /// Its exit status.
        status: ExitStatus,
        /// Its standard error.
        stderr: String,
    },
}

/// `Debug` is what `expect` prints: the readable message, so log tails keep
/// their line breaks in a test failure.
impl std::fmt::Debug for HarnessError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl HarnessError {
    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }
}
