//! Helpers for the robustness tests (issue 5): process memory from `/proc`,
//! signals, and finding where sound resumes in a recording.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::{HarnessError, Recording, FRAME_BYTES};

/// A process's resident memory, from `/proc/PID/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    /// `VmRSS`: resident now, in KiB.
    pub rss_kib: u64,
    /// `VmHWM`: the peak resident size so far, in KiB.
    pub hwm_kib: u64,
}

/// `pid`'s memory, or `None` if it is gone.
pub fn memory(pid: u32) -> Option<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    };
    Some(Memory {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
    })
}

/// Sends `signal` (a name such as `KILL`, `STOP`, `CONT`) to `pid` with
/// `kill(1)`, which keeps this crate free of unsafe code.
pub fn send_signal(pid: u32, signal: &str) -> Result<(), HarnessError> {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status()
        .map_err(|source| HarnessError::Spawn {
            what: format!("kill -{signal} {pid}"),
            source,
        })?;
    if status.success() {
        Ok(())
    } else {
        Err(HarnessError::Command {
            what: format!("kill -{signal} {pid}"),
            status,
            stderr: String::new(),
        })
    }
}

/// The first frame at or after byte `from` of `rec` that is not silence.
pub fn first_sound_frame(rec: &Recording, from: usize) -> Option<usize> {
    let start = from / FRAME_BYTES;
    rec.bytes
        .chunks_exact(FRAME_BYTES)
        .enumerate()
        .skip(start)
        .find(|(_, f)| f.iter().any(|&b| b != 0))
        .map(|(i, _)| i)
}

/// How long after `since` sound (any non-silent frame past byte `from`)
/// reached the recording, if it has.
pub fn sound_resumed_after(rec: &Recording, from: usize, since: Instant) -> Option<Duration> {
    let frame = first_sound_frame(rec, from)?;
    let at = rec.arrival_of_frame(frame)?;
    Some(at.saturating_duration_since(since))
}

/// Runs `f` and returns its result with the wall time it took.
pub fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let out = f();
    (out, start.elapsed())
}
