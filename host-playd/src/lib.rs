//! host-playd: plays secure-tunnel guest streams through the host's
//! PulseAudio and reports the host's playback clock back to each guest.
//!
//! Two processes (docs/host-design.md): the guest-facing one, and the
//! [`player`], which alone holds the connection to the host's PulseAudio.
//! Threads of the guest-facing process, whatever the number of guests: the
//! event loop (every listener and connection on one poll), a shutdown
//! watcher, and the main thread, which becomes the engine: it owns every
//! session and the backend, a [`backend::remote::RemoteBackend`] talking to
//! the player (or the in-process null test backend). All but the main
//! thread start after the sandbox. The player has one thread.
//!
//! `unsafe` is denied crate-wide and forbidden in every module but [`sys`],
//! which adopts systemd's listening sockets by descriptor number.
#![deny(unsafe_code)]

/// Admission at accept time: handshake slots per identity and in total.
pub mod admission;
/// Audio outputs: the trait, PulseAudio, and the null test backend.
pub mod backend;
/// Per-guest message budgets (token buckets on an injected clock).
pub mod budget;
/// The command line.
pub mod cli;
/// The host clock and the log rate limiter.
pub mod clock;
/// The configuration file.
pub mod config;
/// A guest connection's socket, of any listener kind.
pub mod connection;
/// The control socket and `host-playd ctl`.
pub mod control;
/// Wiring: listeners, engine thread, shutdown.
pub mod daemon;
/// Coalescing wake-ups between the guest-facing process's two loops.
pub mod doorbell;
/// The engine thread: sessions meet the backend.
pub mod engine;
/// The guest-facing event loop: accept, read, decode, write.
pub mod io;
/// Listen addresses and listening sockets.
pub mod listen;
/// The player process: the sound-server connection, on its own.
pub mod player;
/// Who a guest is and what it may do.
pub mod policy;
/// Privilege drop, Landlock, seccomp, resource limits, and the self-check.
pub mod sandbox;
/// The pure per-connection protocol state machine.
pub mod session;
/// Per-client statistics, logged on SIGUSR1.
pub mod stats;
/// The one module with `unsafe`: adopting systemd's sockets.
#[allow(unsafe_code)]
pub mod sys;
/// Guest text made safe for logs and host properties.
pub mod text;

pub use cli::Args;
pub use daemon::{BackendChoice, Daemon, DaemonConfig, DaemonError, SandboxSettings};
pub use listen::ListenAddr;
