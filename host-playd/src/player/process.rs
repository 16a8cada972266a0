//! The player process's life: adopt the socket, connect to PulseAudio,
//! enter its own sandbox, then one loop in which libpulse's main loop
//! sleeps until the server or the guest-facing process has something.
//!
//! It ignores SIGINT and SIGTERM (a service manager or a terminal sends
//! them to the whole group): it ends when the guest-facing process closes
//! the socket, so that the guest-facing side decides when sound stops and
//! can say goodbye to its guests first.
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;
use signal_hook::consts::{SIGINT, SIGTERM};
use thiserror::Error;

use super::packet::{self, Received};
use super::serve::Player;
use super::wire::{Report, Request};
use super::PlayerConfig;
use crate::backend::pulse::PulseBackend;
use crate::backend::AudioBackend;
use crate::clock::HostClock;
use crate::engine;
use crate::sandbox;

pub use super::serve::STATUS_INTERVAL_USEC;
/// How often the player looks at its open streams at least, whether or not
/// a status is due: each look asks the server for fresh timing once the
/// last is `TIMING_UPDATE_USEC` (20 ms) old, so the timing base a report is
/// extrapolated from stays as fresh as when a status went out every 5 ms
/// (a base older than `MAX_EXTRAPOLATION_USEC` reads as a stalled host).
/// A look that finds nothing due sends nothing and wakes no one else.
pub const LOOK_INTERVAL_USEC: u64 = 5_000;
/// Status packets between the periodic ones are at least this far apart:
/// the requests of many streams coalesce into one packet (each wakes the
/// guest-facing engine, which then looks at every session).
pub const MIN_STATUS_GAP_USEC: u64 = 1_000;
/// The player's sleep when no stream is open.
pub const IDLE_WAIT: Duration = Duration::from_millis(200);
/// Requests handled before the player looks at its streams again.
pub const REQUESTS_PER_ROUND: usize = 256;
/// Reports (other than status) that may wait for the guest-facing side.
pub const MAX_PENDING_REPORTS: usize = 4096;
/// How long start-up waits for the sound server before the sandbox.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the player stopped (other than its peer closing the socket).
#[derive(Debug, Error)]
pub enum PlayerError {
    #[error("bad player arguments: {0}")]
    Arguments(String),
    #[error("cannot start the player: {0}")]
    Start(String),
    #[error("cannot enter the player's sandbox: {0}")]
    Sandbox(#[from] sandbox::SandboxError),
    #[error("the guest-facing process sent a malformed request: {0}")]
    Malformed(String),
    #[error("the player socket failed: {0}")]
    Socket(Errno),
    #[error("the guest-facing process does not read its reports")]
    Stuck,
}

/// Parses the player's arguments (descriptor number, JSON configuration).
pub fn parse_args(fd: &str, json: &str) -> Result<(i32, PlayerConfig), PlayerError> {
    let fd = fd
        .parse()
        .map_err(|_| PlayerError::Arguments(format!("descriptor {fd:?}")))?;
    let config = serde_json::from_str(json).map_err(|e| PlayerError::Arguments(e.to_string()))?;
    Ok((fd, config))
}

/// Ignores SIGINT and SIGTERM from now on (see the module comment).
pub fn ignore_group_signals() -> Result<(), PlayerError> {
    let ignored = Arc::new(AtomicBool::new(false));
    for signal in [SIGINT, SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&ignored))
            .map_err(|e| PlayerError::Start(format!("signal {signal}: {e}")))?;
    }
    Ok(())
}

/// Runs the player until the guest-facing process closes `sock`.
pub fn run(sock: OwnedFd, config: PlayerConfig) -> Result<(), PlayerError> {
    ignore_group_signals()?;
    // top and ps -o comm show the exec'd file's name, "exe" for
    // /proc/self/exe: name the process for what it is.
    let _ = nix::sys::prctl::set_name(c"playd-player");
    nix::fcntl::fcntl(
        sock.as_fd(),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .map_err(|e| PlayerError::Start(format!("non-blocking socket: {e}")))?;
    if let Some(nice) = config.nice {
        if let Err(e) = crate::sys::set_nice(nice) {
            log::info!(
                "player running at its inherited niceness: nice {nice} was refused ({e}); \
                 it needs CAP_SYS_NICE or a higher RLIMIT_NICE (systemd: LimitNICE=)"
            );
        }
    }
    let clock = HostClock::from_epoch_monotonic(config.epoch_monotonic_usec);
    // The backend's drive takes a wake-up it may wait on; the player's own
    // wake-up is the socket the main loop watches, so this one never fires.
    let (_never, _commands, idle_wake) =
        engine::channel().map_err(|e| PlayerError::Start(e.to_string()))?;
    let backend = PulseBackend::watching(
        config.pulse.clone(),
        clock,
        sock.as_raw_fd(),
        Box::new(|| {}),
    )
    .map_err(|e| PlayerError::Start(e.to_string()))?;
    let mut player = Player::new(backend, config.limits.clone());
    if !player.backend_mut().settle(SETTLE_TIMEOUT, &idle_wake) {
        log::warn!("player: not connected to the audio server yet; retrying inside the sandbox");
    }
    sandbox::apply(&config.sandbox)?;
    let mut link = Link::new(sock);
    let mut reachable = player.backend_mut().reachable();
    link.report(&Report::Server {
        connected: reachable,
    })?;
    let mut last_sent = 0u64;
    loop {
        let now = clock.now_usec();
        // Streams being opened or closed need no timer: their callbacks
        // wake libpulse's poll.
        let timeout = match player.next_status_usec() {
            Some(at) => Duration::from_micros(at.saturating_sub(now).min(LOOK_INTERVAL_USEC)),
            None if player.streams() > 0 => Duration::from_micros(STATUS_INTERVAL_USEC),
            None => IDLE_WAIT,
        };
        player.backend_mut().drive(timeout, &idle_wake);
        let now = clock.now_usec();
        for _ in 0..REQUESTS_PER_ROUND {
            match link.receive()? {
                Incoming::Request(request) => player.handle(now, request),
                Incoming::Nothing => break,
                Incoming::Closed => {
                    log::debug!("player: the guest-facing process closed the socket");
                    return Ok(());
                }
            }
        }
        player.collect_events();
        let now_reachable = player.backend_mut().reachable();
        if now_reachable != reachable {
            reachable = now_reachable;
            link.report(&Report::Server {
                connected: reachable,
            })?;
        }
        for report in player.take_outbox() {
            link.report(&report)?;
        }
        let now = clock.now_usec();
        let due = player.next_status_usec().is_some_and(|at| now >= at);
        if due || now >= last_sent + MIN_STATUS_GAP_USEC {
            if let Some(status) = player.status(now) {
                last_sent = now;
                link.status(&status)?;
            }
        }
        link.flush()?;
    }
}

enum Incoming {
    Request(Request),
    Nothing,
    Closed,
}

/// The player's end of the socket: non-blocking both ways.
struct Link {
    sock: OwnedFd,
    buf: Vec<u8>,
    out: Vec<u8>,
    pending: VecDeque<Vec<u8>>,
}

impl Link {
    fn new(sock: OwnedFd) -> Self {
        Link {
            sock,
            buf: packet::buffer(),
            out: Vec::new(),
            pending: VecDeque::new(),
        }
    }

    fn receive(&mut self) -> Result<Incoming, PlayerError> {
        match packet::try_recv(&self.sock, &mut self.buf).map_err(PlayerError::Malformed)? {
            Received::Packet(n) => Request::decode(&self.buf[..n])
                .map(Incoming::Request)
                .map_err(|e| PlayerError::Malformed(e.to_string())),
            Received::Empty => Ok(Incoming::Nothing),
            Received::Closed => Ok(Incoming::Closed),
        }
    }

    fn try_send(&self, packet: &[u8]) -> Result<bool, PlayerError> {
        match packet::try_send(&self.sock, packet) {
            // The peer is gone: the next receive sees the close.
            Err(Errno::EPIPE | Errno::ECONNRESET) => Ok(true),
            other => other.map_err(PlayerError::Socket),
        }
    }

    /// Sends a report that must not be lost, queueing it if need be.
    fn report(&mut self, report: &Report) -> Result<(), PlayerError> {
        report.encode(&mut self.out);
        if self.pending.is_empty() && self.try_send(&self.out)? {
            return Ok(());
        }
        if self.pending.len() >= MAX_PENDING_REPORTS {
            return Err(PlayerError::Stuck);
        }
        self.pending.push_back(self.out.clone());
        Ok(())
    }

    /// Sends a status snapshot, or drops it when the socket is full (the
    /// next one, 5 ms later, supersedes it).
    fn status(&mut self, report: &Report) -> Result<(), PlayerError> {
        if !self.pending.is_empty() {
            return Ok(());
        }
        report.encode(&mut self.out);
        self.try_send(&self.out).map(drop)
    }

    fn flush(&mut self) -> Result<(), PlayerError> {
        while let Some(packet) = self.pending.front() {
            if !self.try_send(packet)? {
                return Ok(());
            }
            self.pending.pop_front();
        }
        Ok(())
    }
}
