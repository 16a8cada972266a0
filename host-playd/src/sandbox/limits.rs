//! Resource limits: bounded descriptors and memory, and no core
//! dumps (they would hold guest audio and daemon state).
#![forbid(unsafe_code)]

use nix::sys::resource::{setrlimit, Resource};

use super::Outcome;
use crate::listen::MAX_LINGERING;

/// The limits, soft and hard alike (so they cannot be raised again).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ResourceLimits {
    /// RLIMIT_NOFILE: open descriptors.
    pub files: u64,
    /// Threads the daemon needs at most (documentation and the log line).
    /// Not enforced with RLIMIT_NPROC: that counts every task of the user,
    /// so other programs of the same user would exhaust it, and a guest
    /// hitting it would take the daemon's ability to serve anyone with it.
    /// The daemon bounds its own threads: at most `max_connections`
    /// connections, refused at accept beyond that.
    pub threads: u64,
    /// RLIMIT_DATA: private writable memory (heap, anonymous maps, stacks).
    pub memory_bytes: u64,
}

impl ResourceLimits {
    /// Limits that fit `max_connections` guests (two descriptors and two
    /// threads each) and `listeners` acceptors, with room for PulseAudio.
    pub fn for_connections(max_connections: usize, listeners: usize, memory_mb: u64) -> Self {
        let connections = max_connections as u64;
        let listeners = listeners as u64;
        ResourceLimits {
            files: 64 + 2 * connections + listeners * (1 + MAX_LINGERING as u64),
            threads: 16 + 2 * connections + listeners,
            memory_bytes: memory_mb.saturating_mul(1024 * 1024),
        }
    }
}

/// Default for RLIMIT_DATA, in MiB.
pub const DEFAULT_MEMORY_MB: u64 = 1024;

pub fn apply(limits: &ResourceLimits) -> Result<Outcome, String> {
    let set = |resource, value: u64, what: &str| {
        setrlimit(resource, value, value).map_err(|e| format!("{what} = {value}: {e}"))
    };
    set(Resource::RLIMIT_NOFILE, limits.files, "RLIMIT_NOFILE")?;
    set(Resource::RLIMIT_DATA, limits.memory_bytes, "RLIMIT_DATA")?;
    set(Resource::RLIMIT_CORE, 0, "RLIMIT_CORE")?;
    Ok(Outcome::Applied(format!(
        "{} files, {} MiB data, no core dumps (threads: at most {}, bounded by the \
         connection limit, not by RLIMIT_NPROC)",
        limits.files,
        limits.memory_bytes / (1024 * 1024),
        limits.threads,
    )))
}
