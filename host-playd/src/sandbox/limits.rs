//! Resource limits: bounded descriptors, threads and memory, and no core
//! dumps (they would hold guest audio and daemon state).
#![forbid(unsafe_code)]

use nix::sys::resource::{setrlimit, Resource};

use super::Outcome;

/// The limits, soft and hard alike (so they cannot be raised again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceLimits {
    /// RLIMIT_NOFILE: open descriptors.
    pub files: u64,
    /// RLIMIT_NPROC: processes and threads of the (new) user, all counted.
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
            files: 64 + 2 * connections + listeners,
            threads: 16 + 2 * connections + listeners,
            memory_bytes: memory_mb.saturating_mul(1024 * 1024),
        }
    }
}

/// Default for RLIMIT_DATA, in MiB.
pub const DEFAULT_MEMORY_MB: u64 = 1024;

/// Threads the user `uid` runs already (RLIMIT_NPROC counts them all, so a
/// shared user needs room for its other processes).
pub fn tasks_of(uid: u32) -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut tasks = 0u64;
    for entry in dir.flatten() {
        if !entry
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
        };
        if field("Uid:") == Some(u64::from(uid)) {
            tasks += field("Threads:").unwrap_or(1);
        }
    }
    tasks
}

pub fn apply(limits: &ResourceLimits, user_tasks: u64) -> Result<Outcome, String> {
    let set = |resource, value: u64, what: &str| {
        setrlimit(resource, value, value).map_err(|e| format!("{what} = {value}: {e}"))
    };
    set(Resource::RLIMIT_NOFILE, limits.files, "RLIMIT_NOFILE")?;
    let nproc = limits.threads.saturating_add(user_tasks);
    set(Resource::RLIMIT_NPROC, nproc, "RLIMIT_NPROC")?;
    set(Resource::RLIMIT_DATA, limits.memory_bytes, "RLIMIT_DATA")?;
    set(Resource::RLIMIT_CORE, 0, "RLIMIT_CORE")?;
    Ok(Outcome::Applied(format!(
        "{} files, {} threads ({} more for the user's {user_tasks} running), \
         {} MiB data, no core dumps",
        limits.files,
        limits.threads,
        user_tasks,
        limits.memory_bytes / (1024 * 1024)
    )))
}
