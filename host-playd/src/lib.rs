//! host-playd: plays secure-tunnel guest streams through the host's
//! PulseAudio and reports the host's playback clock back to each guest.
//!
//! Threads: one acceptor per listener, a reader and a writer per guest
//! connection, and one engine thread that owns every session and the audio
//! backend (libpulse objects never leave it).
#![forbid(unsafe_code)]

/// Audio outputs: the trait, PulseAudio, and the null test backend.
pub mod backend;
/// The command line.
pub mod cli;
/// The host clock and the log rate limiter.
pub mod clock;
/// Per-connection reader and writer threads.
pub mod connection;
/// Wiring: listeners, engine thread, shutdown.
pub mod daemon;
/// The engine thread: sessions meet the backend.
pub mod engine;
/// Listen addresses and acceptors.
pub mod listen;
/// The pure per-connection protocol state machine.
pub mod session;

pub use cli::Args;
pub use daemon::{BackendChoice, Daemon, DaemonConfig, DaemonError};
pub use listen::ListenAddr;
