//! Counting events in a PulseAudio daemon's log (run at debug level).

use anyhow::{Context as _, Result};
use secure_tunnel_e2e::PulseDaemon;

/// What protocol-native logs each time it tells a client its playback
/// stream ran dry (the `UNDERFLOW` event; at error level, so always there).
pub const UNDERFLOW: &str = "signalling underflow";

/// A position in a daemon's log.
#[derive(Debug, Clone, Copy)]
pub struct LogMark(usize);

/// The log's end now.
pub fn mark(daemon: &PulseDaemon) -> Result<LogMark> {
    let len = std::fs::metadata(daemon.log_path())
        .with_context(|| format!("reading {}", daemon.log_path().display()))?
        .len();
    Ok(LogMark(usize::try_from(len).unwrap_or(usize::MAX)))
}

/// Lines containing `needle` logged since `since`.
pub fn count_since(daemon: &PulseDaemon, since: LogMark, needle: &str) -> Result<usize> {
    let bytes = std::fs::read(daemon.log_path())
        .with_context(|| format!("reading {}", daemon.log_path().display()))?;
    let tail = bytes.get(since.0..).unwrap_or_default();
    Ok(String::from_utf8_lossy(tail)
        .lines()
        .filter(|l| l.contains(needle))
        .count())
}
