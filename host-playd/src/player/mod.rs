//! The player process: the only part of host-playd that holds a connection
//! to the host's sound server. The guest-facing process (listeners, guest
//! connections, sessions, policy) starts it by re-executing its own binary
//! with [`PLAYER_FLAG`] before entering its own sandbox, and talks to it
//! over one `SOCK_SEQPACKET` socketpair in the small fixed-format protocol
//! of [`wire`]. See docs/host-design.md for who holds what, and why.
#![forbid(unsafe_code)]

pub mod packet;
pub mod process;
pub mod serve;
pub mod spawn;
pub mod wire;

use serde::{Deserialize, Serialize};

use crate::backend::pulse::PulseConfig;
use crate::sandbox::SandboxConfig;
pub use serve::{Player, PlayerLimits};

/// argv\[1\] that makes host-playd the player (internal; not an option).
pub const PLAYER_FLAG: &str = "--internal-player";
/// argv\[1\] for the player's half of `--check-sandbox` (internal).
pub const PLAYER_CHECK_FLAG: &str = "--internal-player-check";

/// Everything the player needs, passed as JSON on its command line (no
/// secrets: a server address, a user name, paths and numbers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlayerConfig {
    pub pulse: PulseConfig,
    /// The guest-facing process's clock epoch (`CLOCK_MONOTONIC`, µs), so
    /// that both processes stamp the same host times.
    pub epoch_monotonic_usec: u64,
    /// Niceness for the player (the audio path); `None` leaves it.
    pub nice: Option<i32>,
    /// `log` level name (`error` … `trace`).
    pub log_level: String,
    pub limits: PlayerLimits,
    pub sandbox: SandboxConfig,
}
